import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { assertCountersEndInTotal, assertHistogramsInSeconds, assertLabelsBounded, assertNamesFollowPrometheus, type MetricShape } from '../../test/helpers/metrics-naming.ts';
import { createOperatorMetrics } from './metrics.ts';

/** Label names whose values come from small fixed sets (never ids, names or namespaces of objects). */
const BOUNDED_LABELS = new Set(['kind', 'result', 'outcome']);

describe('operator metrics', () => {
  const metrics = createOperatorMetrics({ defaultMetrics: false });
  const all = metrics.registry.getMetricsAsArray() as unknown as MetricShape[];

  test('the registry holds exactly the documented metrics', () => {
    assert.deepEqual(all.map((m) => m.name).sort(), [
      'narrowlink_operator_leader',
      'narrowlink_operator_login_requests_total',
      'narrowlink_operator_login_reviews_total',
      'narrowlink_operator_reconcile_seconds',
      'narrowlink_operator_reconciles_total',
    ]);
  });

  test('every name follows Prometheus naming: narrowlink_operator_<what>[_unit]', () => {
    assertNamesFollowPrometheus(all, 'narrowlink_operator_');
  });

  test('counters end in _total, and only counters do', () => {
    assertCountersEndInTotal(all);
  });

  test('histograms measure durations in seconds', () => {
    assertHistogramsInSeconds(all);
  });

  test('labels are bounded sets', () => {
    assert.deepEqual(Object.fromEntries(all.filter((m) => (m.labelNames ?? []).length > 0).map((m) => [m.name, m.labelNames])), {
      narrowlink_operator_reconciles_total: ['kind', 'result'],
      narrowlink_operator_reconcile_seconds: ['kind'],
      narrowlink_operator_login_requests_total: ['outcome'],
      narrowlink_operator_login_reviews_total: ['outcome'],
    });
    assertLabelsBounded(all, BOUNDED_LABELS);
  });

  test('default process metrics share the prefix', () => {
    const withDefaults = createOperatorMetrics();
    const names = withDefaults.registry.getMetricsAsArray().map((m) => m.name);
    assert.ok(names.length > all.length, 'default metrics are registered');
    for (const name of names) assert.match(name, /^narrowlink_operator_[a-z0-9_]+$/, name);
  });

  test('two instances do not share a registry', async () => {
    const a = createOperatorMetrics({ defaultMetrics: false });
    const b = createOperatorMetrics({ defaultMetrics: false });
    a.reconciles.inc({ kind: 'agent', result: 'ok' });
    assert.equal((await a.reconciles.get()).values[0]?.value, 1);
    assert.equal((await b.reconciles.get()).values[0]?.value ?? 0, 0);
  });
});
