import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { assertCountersEndInTotal, assertHistogramsInSeconds, assertLabelsBounded, assertNamesFollowPrometheus, type MetricShape } from '../../test/helpers/metrics-naming.ts';
import { createMetrics } from './metrics.ts';

/** Label names whose values come from small fixed sets (never ids, addresses or user names). */
const BOUNDED_LABELS = new Set(['kind', 'direction', 'result', 'reason', 'type', 'scope']);

describe('gateway metrics', () => {
  const metrics = createMetrics({ defaultMetrics: false });
  const all = metrics.registry.getMetricsAsArray() as unknown as MetricShape[];

  test('the registry holds exactly the documented metrics', () => {
    assert.deepEqual(all.map((m) => m.name).sort(), [
      'narrowlink_gateway_auth_failures_total',
      'narrowlink_gateway_buffer_limit_closes_total',
      'narrowlink_gateway_buffered_bytes',
      'narrowlink_gateway_config_reloads_total',
      'narrowlink_gateway_direct_paths_total',
      'narrowlink_gateway_direct_paths_up',
      'narrowlink_gateway_direct_ready_seconds',
      'narrowlink_gateway_direct_requests_total',
      'narrowlink_gateway_nat_classifications_total',
      'narrowlink_gateway_nat_probes_total',
      'narrowlink_gateway_policy_resets_total',
      'narrowlink_gateway_protocol_errors_total',
      'narrowlink_gateway_rate_limit_closes_total',
      'narrowlink_gateway_rate_limited_total',
      'narrowlink_gateway_relay_bytes_total',
      'narrowlink_gateway_relay_queued_bytes',
      'narrowlink_gateway_sessions',
      'narrowlink_gateway_sessions_revoked_total',
      'narrowlink_gateway_stalled_sessions_total',
      'narrowlink_gateway_stream_idle_resets_total',
      'narrowlink_gateway_stream_open_seconds',
      'narrowlink_gateway_stream_share_refusals_total',
      'narrowlink_gateway_stream_shares_full',
      'narrowlink_gateway_streams_open',
      'narrowlink_gateway_streams_total',
    ]);
  });

  test('every name follows Prometheus naming: narrowlink_gateway_<what>[_unit]', () => {
    assertNamesFollowPrometheus(all, 'narrowlink_gateway_');
  });

  test('counters end in _total, and only counters do', () => {
    assertCountersEndInTotal(all);
  });

  test('histograms measure durations in seconds', () => {
    assertHistogramsInSeconds(all);
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
        narrowlink_gateway_buffer_limit_closes_total: ['scope'],
        narrowlink_gateway_protocol_errors_total: ['reason'],
      },
    );
    assertLabelsBounded(all, BOUNDED_LABELS);
    for (const metric of all) {
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
