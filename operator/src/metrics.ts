/**
 * Every Prometheus metric the operator exports, in one place (bounded labels only).
 *
 * Besides its own `narrowlink_operator_*` metrics the registry carries `narrowlink_build_info` and the standard
 * `process_*` / `nodejs_*` metrics under prom-client's names (what Node dashboards and alerts expect). Every
 * labelled series is created at zero up front (the lists below), so `rate()` counts the first event and a
 * dashboard shows 0 instead of "no data".
 */
import { BUILD_INFO_LABEL_NAMES, buildInfoLabels, EVENT_LOOP_TIME_METRICS, eventLoopSeconds, OMITTED_DEFAULT_METRICS } from '@narrowlink/protocol';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { LoginOutcome } from './reconcilers/client-login/reconcile.ts';
import type { LoginReviewOutcome } from './webhook/login-request.ts';

/**
 * `allOf<T>()(list)`: `list` unchanged, but a type error when it misses a member of the union `T`, so the label
 * values initialised at zero cannot fall behind a type that gains a member.
 */
function allOf<T extends string>() {
  return <const L extends readonly T[]>(list: L & ([Exclude<T, L[number]>] extends [never] ? unknown : { missing: Exclude<T, L[number]> })): L => list;
}

/**
 * `reconciles_total{kind}` and `reconcile_seconds{kind}`: the work queue's key kinds (the part of a queue key
 * before the first `/`, see controller.ts): the gateway config Secret, the discovery ConfigMap, NarrowlinkAgents,
 * AccessPolicies, injected workloads' agents, ClientLoginRequests.
 */
export const RECONCILE_KINDS = ['gateway-config', 'discovery', 'agent', 'policy', 'injected', 'login'] as const;
/** `reconciles_total{result}`. */
export const RECONCILE_RESULTS = ['ok', 'error'] as const;
/** `login_requests_total{outcome}`. */
export const LOGIN_OUTCOMES = allOf<LoginOutcome>()(['issued', 'denied', 'invalid', 'rate_limited', 'collected']);
/** `login_reviews_total{outcome}`. */
export const LOGIN_REVIEW_OUTCOMES = allOf<LoginReviewOutcome>()(['stamped', 'identity-supplied', 'spec-changed', 'unchanged', 'invalid', 'skipped']);

/** The operator's metrics (one registry per process; names and labels in the README's Metrics section). */
export interface OperatorMetrics {
  registry: Registry;
  /** `narrowlink_build_info{version, commit, node_version, component="operator"} 1`. */
  buildInfo: Gauge<(typeof BUILD_INFO_LABEL_NAMES)[number]>;
  reconciles: Counter<'kind' | 'result'>;
  reconcileSeconds: Histogram<'kind'>;
  leader: Gauge;
  /** ClientLoginRequests by outcome: issued, denied, invalid, rate_limited, collected. */
  loginRequests: Counter<'outcome'>;
  /** Login admission reviews by outcome (stamped, identity-supplied, spec-changed, unchanged, invalid, skipped). */
  loginReviews: Counter<'outcome'>;
}

/**
 * A fresh registry with every operator metric, its labelled series at zero. `defaultMetrics: false` leaves out
 * the `process_*` / `nodejs_*` collectors (tests that compare registries). `env` is read for the build commit
 * (see buildInfoLabels).
 */
export function createOperatorMetrics(options: { defaultMetrics?: boolean; env?: NodeJS.ProcessEnv } = {}): OperatorMetrics {
  const registry = new Registry();
  // No prefix: process_* and nodejs_* are the names every Node dashboard and alert expects.
  if (options.defaultMetrics ?? true) {
    collectDefaultMetrics({ register: registry });
    for (const name of OMITTED_DEFAULT_METRICS) registry.removeSingleMetric(name);
    registerEventLoopTime([registry]);
  }
  const registers = [registry];
  const metrics: OperatorMetrics = {
    registry,
    buildInfo: new Gauge({
      name: 'narrowlink_build_info',
      help: 'Always 1; the labels say which version, commit and Node.js this component runs.',
      labelNames: BUILD_INFO_LABEL_NAMES,
      registers,
    }),
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
  metrics.buildInfo.set(buildInfoLabels('operator', options.env), 1);
  metrics.leader.set(0);
  for (const kind of RECONCILE_KINDS) {
    for (const result of RECONCILE_RESULTS) metrics.reconciles.inc({ kind, result }, 0);
    metrics.reconcileSeconds.zero({ kind });
  }
  for (const outcome of LOGIN_OUTCOMES) metrics.loginRequests.inc({ outcome }, 0);
  for (const outcome of LOGIN_REVIEW_OUTCOMES) metrics.loginReviews.inc({ outcome }, 0);
  return metrics;
}

/** The two event loop time counters (see EVENT_LOOP_TIME_METRICS), brought up to date on every scrape. */
function registerEventLoopTime(registers: Registry[]): void {
  for (const which of ['active', 'idle'] as const) {
    let counted = 0;
    new Counter({
      ...EVENT_LOOP_TIME_METRICS[which],
      registers,
      collect() {
        const total = eventLoopSeconds()[which];
        // Cumulative and monotonic: add what accrued since the last scrape.
        if (total > counted) this.inc(total - counted);
        counted = Math.max(counted, total);
      },
    });
  }
}
