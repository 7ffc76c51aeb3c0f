import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { assertCountersEndInTotal, assertHistogramsInSeconds, assertLabelsBounded, assertNamesFollowPrometheus, type MetricShape } from '../../test/helpers/metrics-naming.ts';
import { createOperatorMetrics, LOGIN_OUTCOMES, LOGIN_REVIEW_OUTCOMES, RECONCILE_KINDS, RECONCILE_RESULTS } from './metrics.ts';

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

/** Label names whose values come from small fixed sets (never ids, names or namespaces of objects). */
const BOUNDED_LABELS = new Set(['kind', 'result', 'outcome']);

describe('operator metrics', () => {
  const metrics = createOperatorMetrics({ defaultMetrics: false });
  const all = metrics.registry.getMetricsAsArray() as unknown as MetricShape[];
  const own = all.filter((m) => m.name !== 'narrowlink_build_info');

  test('the registry holds exactly the documented metrics', () => {
    assert.deepEqual(all.map((m) => m.name).sort(), [
      'narrowlink_build_info',
      'narrowlink_operator_leader',
      'narrowlink_operator_login_requests_total',
      'narrowlink_operator_login_reviews_total',
      'narrowlink_operator_reconcile_seconds',
      'narrowlink_operator_reconciles_total',
    ]);
  });

  test('every name follows Prometheus naming: narrowlink_operator_<what>[_unit]', () => {
    assertNamesFollowPrometheus(own, 'narrowlink_operator_');
  });

  test('counters end in _total, and only counters do', () => {
    assertCountersEndInTotal(all);
  });

  test('histograms measure durations in seconds', () => {
    assertHistogramsInSeconds(all);
  });

  test('labels are bounded sets', () => {
    assert.deepEqual(Object.fromEntries(own.filter((m) => (m.labelNames ?? []).length > 0).map((m) => [m.name, m.labelNames])), {
      narrowlink_operator_reconciles_total: ['kind', 'result'],
      narrowlink_operator_reconcile_seconds: ['kind'],
      narrowlink_operator_login_requests_total: ['outcome'],
      narrowlink_operator_login_reviews_total: ['outcome'],
    });
    assertLabelsBounded(own, BOUNDED_LABELS);
  });

  test('default metrics carry the standard process_* and nodejs_* names, none of them a gauge named _total', () => {
    const withDefaults = createOperatorMetrics().registry.getMetricsAsArray() as unknown as MetricShape[];
    const names = new Set(withDefaults.map((m) => m.name));
    for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'process_start_time_seconds', 'process_open_fds', 'nodejs_heap_size_used_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_eventloop_active_seconds_total']) {
      assert.ok(names.has(name), `${name} is registered`);
    }
    for (const metric of withDefaults) {
      assert.match(metric.name, /^(narrowlink_|process_|nodejs_)[a-z0-9_]+$/, metric.name);
      if (metric.type !== 'counter') assert.doesNotMatch(metric.name, /_total$/, `${metric.name} is a ${metric.type}`);
    }
  });

  test('narrowlink_build_info is 1 with the version, a hex commit, the Node version and component operator', async () => {
    const version = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version as string;
    const text = samples(await createOperatorMetrics({ defaultMetrics: false, env: { NARROWLINK_COMMIT: 'deadbeef' } }).registry.metrics());
    assert.equal(text.get(`narrowlink_build_info{version="${version}",commit="deadbeef",node_version="${process.version.slice(1)}",component="operator"}`), 1);
    const unset = samples(await createOperatorMetrics({ defaultMetrics: false, env: {} }).registry.metrics());
    assert.equal(unset.get(`narrowlink_build_info{version="${version}",commit="",node_version="${process.version.slice(1)}",component="operator"}`), 1);
  });

  test('every known label value is exported at zero before the first event (histograms too)', async () => {
    const text = samples(await createOperatorMetrics({ defaultMetrics: false }).registry.metrics());
    assert.equal(text.get('narrowlink_operator_leader'), 0);
    for (const kind of RECONCILE_KINDS) {
      for (const result of RECONCILE_RESULTS) assert.equal(text.get(`narrowlink_operator_reconciles_total{kind="${kind}",result="${result}"}`), 0, `${kind} ${result}`);
      assert.equal(text.get(`narrowlink_operator_reconcile_seconds_count{kind="${kind}"}`), 0, `reconcile_seconds ${kind}`);
      assert.equal(text.get(`narrowlink_operator_reconcile_seconds_bucket{le="+Inf",kind="${kind}"}`), 0, `reconcile_seconds ${kind} +Inf`);
    }
    for (const outcome of LOGIN_OUTCOMES) assert.equal(text.get(`narrowlink_operator_login_requests_total{outcome="${outcome}"}`), 0, outcome);
    for (const outcome of LOGIN_REVIEW_OUTCOMES) assert.equal(text.get(`narrowlink_operator_login_reviews_total{outcome="${outcome}"}`), 0, outcome);
  });

  test('the reconcile kinds are the work queue key kinds the controller enqueues', () => {
    // The controller names a key's kind by its prefix (`agent/ns/name`) or by a whole-key constant; both are
    // read from its source, so a new kind of key fails here until it is listed (and initialised at zero).
    const source = readFileSync(new URL('./controller.ts', import.meta.url), 'utf8');
    const prefixes = new Set([...source.matchAll(/queue\.add\(`([a-z][a-z-]*)\//g)].map((m) => m[1]));
    const constants = [...source.matchAll(/export const [A-Z_]+_QUEUE_KEY = '([a-z-]+)'/g)].map((m) => m[1]);
    assert.ok(constants.length > 0 && prefixes.size > 0, 'the patterns still find the keys');
    assert.deepEqual([...new Set([...prefixes, ...constants])].sort(), [...RECONCILE_KINDS].sort());
  });

  test('two instances do not share a registry', async () => {
    const a = createOperatorMetrics({ defaultMetrics: false });
    const b = createOperatorMetrics({ defaultMetrics: false });
    a.reconciles.inc({ kind: 'agent', result: 'ok' });
    const agentOk = async (m: typeof a): Promise<number | undefined> =>
      (await m.reconciles.get()).values.find((v) => v.labels.kind === 'agent' && v.labels.result === 'ok')?.value;
    assert.equal(await agentOk(a), 1);
    assert.equal(await agentOk(b), 0);
  });
});
