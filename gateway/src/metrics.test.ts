import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { assertCountersEndInTotal, assertHistogramsInSeconds, assertLabelsBounded, assertNamesFollowPrometheus, type MetricShape } from '../../test/helpers/metrics-naming.ts';
import {
  AUTH_FAILURE_REASONS,
  BUFFER_SCOPES,
  CONFIG_RELOAD_RESULTS,
  createMetrics,
  DIRECT_PATH_RESULTS,
  DIRECT_REQUEST_RESULTS,
  NAT_PROBE_RESULTS,
  NAT_TYPES,
  PROTOCOL_ERROR_REASONS,
  RATE_LIMIT_KINDS,
  RELAY_DIRECTIONS,
  SESSION_KINDS,
  SHARE_KINDS,
  STREAM_RESULTS,
} from './metrics.ts';

/** The `process_*` / `nodejs_*` names prom-client's default collectors register (what Node dashboards query). */
const STANDARD_NAMES = [
  'process_cpu_seconds_total',
  'process_cpu_user_seconds_total',
  'process_cpu_system_seconds_total',
  'process_start_time_seconds',
  'process_resident_memory_bytes',
  'process_virtual_memory_bytes',
  'process_heap_bytes',
  'process_open_fds',
  'process_max_fds',
  'nodejs_eventloop_lag_seconds',
  'nodejs_eventloop_lag_p99_seconds',
  'nodejs_eventloop_active_seconds_total',
  'nodejs_eventloop_idle_seconds_total',
  'nodejs_heap_size_total_bytes',
  'nodejs_heap_size_used_bytes',
  'nodejs_external_memory_bytes',
  'nodejs_active_handles',
  'nodejs_gc_duration_seconds',
  'nodejs_version_info',
];

/** Samples of one exposition, `name{labels}` → value (label order as written). */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    out.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return out;
}

/** Label names whose values come from small fixed sets (never ids, addresses or user names). */
const BOUNDED_LABELS = new Set(['kind', 'direction', 'result', 'reason', 'type', 'scope', 'client_nat', 'agent_nat']);

describe('gateway metrics', () => {
  const metrics = createMetrics({ defaultMetrics: false });
  const all = metrics.registry.getMetricsAsArray() as unknown as MetricShape[];
  const own = all.filter((m) => m.name !== 'narrowlink_build_info');

  test('the registry holds exactly the documented metrics', () => {
    assert.deepEqual(all.map((m) => m.name).sort(), [
      'narrowlink_build_info',
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
      'narrowlink_gateway_relay_opens_queued',
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
    assertNamesFollowPrometheus(own, 'narrowlink_gateway_');
  });

  test('counters end in _total, and only counters do', () => {
    assertCountersEndInTotal(all);
  });

  test('histograms measure durations in seconds', () => {
    assertHistogramsInSeconds(all);
  });

  test('labels are bounded sets and units sit at the end of the name', () => {
    assert.deepEqual(
      Object.fromEntries(own.filter((m) => (m.labelNames ?? []).length > 0).map((m) => [m.name, m.labelNames])),
      {
        narrowlink_gateway_sessions: ['kind'],
        narrowlink_gateway_streams_total: ['result'],
        narrowlink_gateway_relay_bytes_total: ['direction'],
        narrowlink_gateway_auth_failures_total: ['reason'],
        narrowlink_gateway_config_reloads_total: ['result'],
        narrowlink_gateway_nat_probes_total: ['result'],
        narrowlink_gateway_nat_classifications_total: ['type'],
        narrowlink_gateway_direct_requests_total: ['result'],
        narrowlink_gateway_direct_paths_total: ['result', 'client_nat', 'agent_nat'],
        narrowlink_gateway_rate_limited_total: ['kind'],
        narrowlink_gateway_stream_share_refusals_total: ['kind'],
        narrowlink_gateway_stream_shares_full: ['kind'],
        narrowlink_gateway_buffer_limit_closes_total: ['scope'],
        narrowlink_gateway_protocol_errors_total: ['reason'],
      },
    );
    assertLabelsBounded(own, BOUNDED_LABELS);
    for (const metric of all) {
      if (metric.name.includes('bytes')) assert.match(metric.name, /_bytes(_total)?$/, `${metric.name}: unit at the end`);
    }
  });

  test('default metrics carry the standard process_* and nodejs_* names, none of them a gauge named _total', () => {
    const withDefaults = createMetrics().registry.getMetricsAsArray() as unknown as MetricShape[];
    const names = new Set(withDefaults.map((m) => m.name));
    for (const name of STANDARD_NAMES) assert.ok(names.has(name), `${name} is registered`);
    for (const metric of withDefaults) {
      assert.match(metric.name, /^(narrowlink_|process_|nodejs_)[a-z0-9_]+$/, metric.name);
      if (metric.type !== 'counter') assert.doesNotMatch(metric.name, /_total$/, `${metric.name} is a ${metric.type}`);
    }
  });

  test('narrowlink_build_info is 1 with the version, a hex commit, the Node version and the component', async () => {
    const text = await createMetrics({ defaultMetrics: false, env: { NARROWLINK_COMMIT: '0123ABCdef' } }).registry.metrics();
    const version = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version as string;
    const key = `narrowlink_build_info{version="${version}",commit="0123abcdef",node_version="${process.version.slice(1)}",component="gateway"}`;
    assert.equal(samples(text).get(key), 1, text.split('\n').filter((l) => l.startsWith('narrowlink_build_info')).join('\n'));
    // Free text in the variable (a typo, a secret pasted into the wrong field) is never exported.
    for (const bad of ['main', 'v0.1.0', 'abc', '0123abc"} 2\nx{', 'a'.repeat(41)]) {
      const exposed = await createMetrics({ defaultMetrics: false, env: { NARROWLINK_COMMIT: bad } }).registry.metrics();
      assert.match(exposed, /narrowlink_build_info\{[^}]*commit="",/, bad);
      assert.ok(!exposed.includes(bad), `${JSON.stringify(bad)} does not appear in the exposition`);
    }
  });

  test('every known label value of every labelled metric is exported at zero before the first event', async () => {
    const text = samples(await createMetrics({ defaultMetrics: false }).registry.metrics());
    const expected: Array<[string, string, readonly string[]]> = [
      ['narrowlink_gateway_sessions', 'kind', SESSION_KINDS],
      ['narrowlink_gateway_streams_total', 'result', STREAM_RESULTS],
      ['narrowlink_gateway_relay_bytes_total', 'direction', RELAY_DIRECTIONS],
      ['narrowlink_gateway_auth_failures_total', 'reason', AUTH_FAILURE_REASONS],
      ['narrowlink_gateway_config_reloads_total', 'result', CONFIG_RELOAD_RESULTS],
      ['narrowlink_gateway_protocol_errors_total', 'reason', PROTOCOL_ERROR_REASONS],
      ['narrowlink_gateway_buffer_limit_closes_total', 'scope', BUFFER_SCOPES],
      ['narrowlink_gateway_stream_share_refusals_total', 'kind', SHARE_KINDS],
      ['narrowlink_gateway_stream_shares_full', 'kind', SHARE_KINDS],
      ['narrowlink_gateway_rate_limited_total', 'kind', RATE_LIMIT_KINDS],
      ['narrowlink_gateway_nat_probes_total', 'result', NAT_PROBE_RESULTS],
      ['narrowlink_gateway_nat_classifications_total', 'type', NAT_TYPES],
      ['narrowlink_gateway_direct_requests_total', 'result', DIRECT_REQUEST_RESULTS],
    ];
    // Every labelled metric is in the table (a new one must say which values it starts with).
    assert.deepEqual(
      expected.map(([name]) => name).sort(),
      own.filter((m) => m.labelNames?.length === 1 && m.type !== 'histogram').map((m) => m.name).sort(),
    );
    for (const [name, label, values] of expected) {
      assert.ok(values.length >= 2, `${name}: more than one value`);
      for (const value of values) assert.equal(text.get(`${name}{${label}="${value}"}`), 0, `${name}{${label}="${value}"} starts at 0`);
      const series = [...text.keys()].filter((k) => k.startsWith(`${name}{`));
      assert.equal(series.length, new Set(values).size, `${name}: exactly the known values`);
    }
    // direct_paths_total: every outcome for every pair of NAT types (success by NAT type).
    for (const result of DIRECT_PATH_RESULTS) {
      for (const client of NAT_TYPES) {
        for (const agent of NAT_TYPES) {
          const key = `narrowlink_gateway_direct_paths_total{result="${result}",client_nat="${client}",agent_nat="${agent}"}`;
          assert.equal(text.get(key), 0, key);
        }
      }
    }
    // The values are the codes the gateway really counts with (spot checks against the code lists they come from).
    assert.ok(AUTH_FAILURE_REASONS.includes('NL_ERR_TOKEN_EXPIRED') && AUTH_FAILURE_REASONS.includes('NL_ERR_AUTH_MISSING_TOKEN'));
    assert.ok(AUTH_FAILURE_REASONS.includes('NL_ERR_TOKEN_REVIEW_REJECTED') && AUTH_FAILURE_REASONS.includes('NL_ERR_GATEWAY_NOT_READY'));
    assert.ok(STREAM_RESULTS.includes('SHARE_EXCEEDED') && NAT_PROBE_RESULTS.includes('NL_ERR_NAT_REPLAYED'));
    assert.ok(DIRECT_REQUEST_RESULTS.includes('BothSymmetric') && PROTOCOL_ERROR_REASONS.includes('NL_ERR_FRAME_TOO_LARGE'));
  });

  test('two instances do not share a registry', async () => {
    const a = createMetrics({ defaultMetrics: false });
    const b = createMetrics({ defaultMetrics: false });
    a.policyResets.inc();
    assert.equal((await b.policyResets.get()).values[0]?.value ?? 0, 0);
  });
});
