import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createOperatorMetrics } from './metrics.ts';

/** Label names whose values come from small fixed sets (never ids, names or namespaces of objects). */
const BOUNDED_LABELS = new Set(['kind', 'result']);

describe('operator metrics', () => {
  const metrics = createOperatorMetrics({ defaultMetrics: false });
  const all = metrics.registry.getMetricsAsArray() as unknown as Array<{ name: string; help: string; type: string; labelNames?: string[] }>;

  test('the registry holds exactly the documented metrics', () => {
    assert.deepEqual(all.map((m) => m.name).sort(), ['narrowlink_operator_leader', 'narrowlink_operator_reconcile_seconds', 'narrowlink_operator_reconciles_total']);
  });

  test('every name follows Prometheus naming: narrowlink_operator_<what>[_unit]', () => {
    for (const metric of all) {
      assert.match(metric.name, /^narrowlink_operator_[a-z_]+$/, metric.name);
      assert.doesNotMatch(metric.name, /__|_$/, `${metric.name}: no empty name parts`);
      assert.ok(metric.help.length > 0, `${metric.name} has help text`);
    }
  });

  test('counters end in _total, and only counters do', () => {
    for (const metric of all) {
      if (metric.type === 'counter') assert.match(metric.name, /_total$/, metric.name);
      else assert.doesNotMatch(metric.name, /_total$/, `${metric.name} is a ${metric.type}`);
    }
  });

  test('histograms measure durations in seconds', () => {
    const histograms = all.filter((m) => m.type === 'histogram');
    assert.ok(histograms.length > 0);
    for (const metric of histograms) assert.match(metric.name, /_seconds$/, metric.name);
  });

  test('labels are bounded sets', () => {
    assert.deepEqual(Object.fromEntries(all.filter((m) => (m.labelNames ?? []).length > 0).map((m) => [m.name, m.labelNames])), {
      narrowlink_operator_reconciles_total: ['kind', 'result'],
      narrowlink_operator_reconcile_seconds: ['kind'],
    });
    for (const metric of all) {
      for (const label of metric.labelNames ?? []) assert.ok(BOUNDED_LABELS.has(label), `${metric.name}{${label}} is not a bounded label`);
    }
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
