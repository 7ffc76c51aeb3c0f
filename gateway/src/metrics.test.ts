import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createMetrics } from './metrics.ts';

/** Label names whose values come from small fixed sets (never ids, addresses or user names). */
const BOUNDED_LABELS = new Set(['kind', 'direction', 'result', 'reason', 'type']);

describe('gateway metrics', () => {
  const metrics = createMetrics({ defaultMetrics: false });
  const all = metrics.registry.getMetricsAsArray() as unknown as Array<{ name: string; help: string; type: string; labelNames?: string[] }>;

  test('the registry holds exactly the documented metrics', () => {
    assert.deepEqual(all.map((m) => m.name).sort(), [
      'narrowlink_gateway_auth_failures_total',
      'narrowlink_gateway_config_reloads_total',
      'narrowlink_gateway_direct_paths_total',
      'narrowlink_gateway_direct_paths_up',
      'narrowlink_gateway_direct_ready_seconds',
      'narrowlink_gateway_direct_requests_total',
      'narrowlink_gateway_nat_classifications_total',
      'narrowlink_gateway_nat_probes_total',
      'narrowlink_gateway_policy_resets_total',
      'narrowlink_gateway_rate_limit_closes_total',
      'narrowlink_gateway_rate_limited_total',
      'narrowlink_gateway_relay_bytes_total',
      'narrowlink_gateway_relay_queued_bytes',
      'narrowlink_gateway_sessions',
      'narrowlink_gateway_sessions_revoked_total',
      'narrowlink_gateway_stream_idle_resets_total',
      'narrowlink_gateway_stream_open_seconds',
      'narrowlink_gateway_stream_share_refusals_total',
      'narrowlink_gateway_stream_shares_full',
      'narrowlink_gateway_streams_open',
      'narrowlink_gateway_streams_total',
    ]);
  });

  test('every name follows Prometheus naming: narrowlink_gateway_<what>[_unit]', () => {
    for (const metric of all) {
      assert.match(metric.name, /^narrowlink_gateway_[a-z_]+$/, metric.name);
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

  test('labels are bounded sets and units sit at the end of the name', () => {
    assert.deepEqual(
      Object.fromEntries(all.filter((m) => (m.labelNames ?? []).length > 0).map((m) => [m.name, m.labelNames])),
      {
        narrowlink_gateway_sessions: ['kind'],
        narrowlink_gateway_streams_total: ['result'],
        narrowlink_gateway_relay_bytes_total: ['direction'],
        narrowlink_gateway_auth_failures_total: ['reason'],
        narrowlink_gateway_config_reloads_total: ['result'],
        narrowlink_gateway_nat_probes_total: ['result'],
        narrowlink_gateway_nat_classifications_total: ['type'],
        narrowlink_gateway_direct_requests_total: ['result'],
        narrowlink_gateway_direct_paths_total: ['result'],
        narrowlink_gateway_rate_limited_total: ['kind'],
        narrowlink_gateway_stream_share_refusals_total: ['kind'],
        narrowlink_gateway_stream_shares_full: ['kind'],
      },
    );
    for (const metric of all) {
      for (const label of metric.labelNames ?? []) assert.ok(BOUNDED_LABELS.has(label), `${metric.name}{${label}} is not a bounded label`);
      if (metric.name.includes('bytes')) assert.match(metric.name, /_bytes(_total)?$/, `${metric.name}: unit at the end`);
    }
  });

  test('default process metrics share the prefix', () => {
    const withDefaults = createMetrics();
    const names = withDefaults.registry.getMetricsAsArray().map((m) => m.name);
    assert.ok(names.length > all.length, 'default metrics are registered');
    for (const name of names) assert.match(name, /^narrowlink_gateway_[a-z0-9_]+$/, name);
  });

  test('two instances do not share a registry', async () => {
    const a = createMetrics({ defaultMetrics: false });
    const b = createMetrics({ defaultMetrics: false });
    a.policyResets.inc();
    assert.equal((await b.policyResets.get()).values[0]?.value ?? 0, 0);
  });
});
