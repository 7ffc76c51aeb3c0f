/** Every Prometheus metric the operator exports, in one place (bounded labels only). */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

export interface OperatorMetrics {
  registry: Registry;
  reconciles: Counter<'kind' | 'result'>;
  reconcileSeconds: Histogram<'kind'>;
  leader: Gauge;
  /** ClientLoginRequests by outcome: issued, denied, invalid, rate_limited, collected. */
  loginRequests: Counter<'outcome'>;
  /** Login admission reviews by outcome (stamped, identity-supplied, spec-changed, unchanged, invalid, skipped). */
  loginReviews: Counter<'outcome'>;
}

export function createOperatorMetrics(options: { defaultMetrics?: boolean } = {}): OperatorMetrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'narrowlink_operator_' });
  const registers = [registry];
  return {
    registry,
    reconciles: new Counter({
      name: 'narrowlink_operator_reconciles_total',
      help: 'Reconciles by kind (gateway-config, agent, policy) and result (ok, error).',
      labelNames: ['kind', 'result'],
      registers,
    }),
    reconcileSeconds: new Histogram({
      name: 'narrowlink_operator_reconcile_seconds',
      help: 'Time one reconcile took, by kind.',
      labelNames: ['kind'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers,
    }),
    leader: new Gauge({ name: 'narrowlink_operator_leader', help: '1 while this replica holds the leader Lease.', registers }),
    loginRequests: new Counter({
      name: 'narrowlink_operator_login_requests_total',
      help: 'ClientLoginRequests decided or collected by the leader, by outcome (issued, denied, invalid, rate_limited, collected).',
      labelNames: ['outcome'],
      registers,
    }),
    loginReviews: new Counter({
      name: 'narrowlink_operator_login_reviews_total',
      help: 'ClientLoginRequest admission reviews answered by this replica, by outcome (stamped, identity-supplied, spec-changed, unchanged, invalid, skipped).',
      labelNames: ['outcome'],
      registers,
    }),
  };
}
