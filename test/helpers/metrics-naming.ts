/**
 * The Prometheus naming rules every binary's metrics follow (CONVENTIONS.md §10), checked by each binary's
 * `metrics.test.ts` on its own registry: one copy of the rules, so the gateway and the operator cannot drift apart.
 */
import assert from 'node:assert/strict';

/** What the checks read of a metric (prom-client's `getMetricsAsArray()` entries). */
export interface MetricShape {
  name: string;
  help: string;
  type: string;
  labelNames?: string[];
}

/** `<prefix><what>[_unit]`: lowercase words, no empty parts, and help text. */
export function assertNamesFollowPrometheus(metrics: readonly MetricShape[], prefix: string): void {
  const pattern = new RegExp(`^${prefix}[a-z_]+$`);
  for (const metric of metrics) {
    assert.match(metric.name, pattern, metric.name);
    assert.doesNotMatch(metric.name, /__|_$/, `${metric.name}: no empty name parts`);
    assert.ok(metric.help.length > 0, `${metric.name} has help text`);
  }
}

/** Counters end in `_total`, and only counters do. */
export function assertCountersEndInTotal(metrics: readonly MetricShape[]): void {
  for (const metric of metrics) {
    if (metric.type === 'counter') assert.match(metric.name, /_total$/, metric.name);
    else assert.doesNotMatch(metric.name, /_total$/, `${metric.name} is a ${metric.type}`);
  }
}

/** There are histograms, and each measures a duration in seconds. */
export function assertHistogramsInSeconds(metrics: readonly MetricShape[]): void {
  const histograms = metrics.filter((m) => m.type === 'histogram');
  assert.ok(histograms.length > 0);
  for (const metric of histograms) assert.match(metric.name, /_seconds$/, metric.name);
}

/** Every label name is one of `bounded` (values from small fixed sets, never ids, names or addresses). */
export function assertLabelsBounded(metrics: readonly MetricShape[], bounded: ReadonlySet<string>): void {
  for (const metric of metrics) {
    for (const label of metric.labelNames ?? []) assert.ok(bounded.has(label), `${metric.name}{${label}} is not a bounded label`);
  }
}
