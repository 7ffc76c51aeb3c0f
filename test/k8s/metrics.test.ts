/**
 * The operator's /metrics as a running operator serves it (a real process against a real kube-apiserver, leading
 * and reconciling an agent and a policy): every operator metric the chart's Grafana dashboard queries is there
 * with its labels, the reconcile histogram has observations of real reconciles, the build info names the
 * operator, and `promtool check metrics` finds nothing (skipped with the reason when promtool is missing). The
 * gateway side of the same checks runs in the unit tier (test/unit/dashboard.test.ts, promtool.test.ts).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { type KubeObject, RestKubeClient, Resources } from '@narrowlink/kube';
import { parseAllDocuments } from 'yaml';
import { ROOT, SCRIPTS } from '../helpers/paths.ts';
import { type StartedProcess, startProcess, stopAll } from '../helpers/processes.ts';
import { waitFor } from '../helpers/wait.ts';
import { dashboardQueries, findPromtool, parseExposition, promqlNames, promtoolCheckMetrics, TARGET_LABELS } from '../unit/metrics-fixtures.ts';
import { useApiServer } from './cluster.ts';
import { applyCrd } from './fixtures/fake-cert-manager.ts';

const SYSTEM_NS = 'narrowlink-system';
const NS = 'shop';

describe('a running operator exposes what the dashboard queries, and promtool accepts it', () => {
  let tmp: string | undefined;
  after(async () => {
    await stopAll('SIGTERM', 3_000);
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });
  const k8s = useApiServer();
  let operator: StartedProcess | undefined;
  let metricsUrl = '';

  it('setup: CRDs, an agent and a policy; the operator leads and reconciles them', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    tmp = await mkdtemp(path.join(os.tmpdir(), 'nl-k8s-metrics-'));
    const env: Record<string, string | undefined> = { XDG_CONFIG_HOME: path.join(tmp, 'xdg'), KUBECONFIG: api.kubeconfigPath };
    for (const key of Object.keys(process.env)) if (key.startsWith('NARROWLINK_')) env[key] = undefined;
    const client = await RestKubeClient.fromKubeConfig(api.kubeConfig());
    for (const name of [SYSTEM_NS, NS]) await client.create(Resources.namespace, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
    const crdDir = path.join(ROOT, 'crds');
    for (const file of readdirSync(crdDir).filter((f) => f.endsWith('.yaml'))) {
      for (const doc of parseAllDocuments(readFileSync(path.join(crdDir, file), 'utf8'))) {
        const crd = doc.toJS() as KubeObject | null;
        if (crd) await applyCrd(client, crd);
      }
    }
    operator = await startProcess(
      'operator',
      [SCRIPTS.operator, '--kubeconfig', api.kubeconfigPath, '--namespace', SYSTEM_NS, '--listen', '127.0.0.1:0', '--identity', 'op-metrics'],
      { env, timeoutMs: 20_000 },
    );
    await operator.waitFor((l) => l.event === 'leading', 20_000);
    metricsUrl = `http://127.0.0.1:${Number(operator.readyLine.port)}/metrics`;
    await client.create(Resources.narrowlinkAgent, {
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'NarrowlinkAgent',
      metadata: { name: 'orders', namespace: NS },
      spec: { external: true, expose: [{ name: 'http', port: 8080, host: '127.0.0.1' }] },
    });
    await client.create(Resources.accessPolicy, {
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'AccessPolicy',
      metadata: { name: 'devs', namespace: NS },
      spec: { subjects: [{ kind: 'User', name: 'alice' }], rules: [{ action: 'Allow', agents: { names: ['orders'] } }] },
    });
    // Reconciled: the agent's and the policy's reconciles were counted as ok.
    await waitFor('agent and policy reconciles counted', async () => {
      const text = await (await fetch(metricsUrl)).text();
      const ok = (kind: string): number => Number(/ (\S+)$/.exec(text.split('\n').find((l) => l.startsWith(`narrowlink_operator_reconciles_total{kind="${kind}",result="ok"} `)) ?? '')?.[1] ?? 0);
      return ok('agent') >= 1 && ok('policy') >= 1 && ok('gateway-config') >= 1;
    }, 30_000);
  });

  it('every operator and shared metric the dashboard queries is served, with the labels it groups by', async (t) => {
    if (!k8s.require(t) || !operator) return;
    const exposition = parseExposition(await (await fetch(metricsUrl)).text());
    const problems: string[] = [];
    let checked = 0;
    for (const q of dashboardQueries()) {
      const { metrics, labels } = promqlNames(q.expr);
      const mine = metrics.filter((m) => !m.startsWith('narrowlink_gateway_'));
      if (mine.length === 0) continue;
      const available = new Set<string>([...TARGET_LABELS, 'le']);
      for (const metric of mine) {
        checked++;
        if (!exposition.samples.has(metric)) problems.push(`${q.panel} ${q.refId}: ${metric} is not served by the operator`);
        for (const label of exposition.samples.get(metric) ?? []) available.add(label);
      }
      // Expressions that mix in gateway metrics have their labels checked against the gateway in the unit tier.
      if (mine.length === metrics.length) for (const label of labels) if (!available.has(label)) problems.push(`${q.panel} ${q.refId}: label ${label} is on none of ${mine.join(', ')}`);
    }
    assert.deepEqual(problems, []);
    assert.ok(checked >= 10, `${checked} operator metric references checked`);
  });

  it('the reconcile histogram holds real reconciles, and the build info names the operator', async (t) => {
    if (!k8s.require(t) || !operator) return;
    const lines = (await (await fetch(metricsUrl)).text()).split('\n');
    const value = (prefix: string): number => Number(lines.find((l) => l.startsWith(prefix))?.split(' ').at(-1) ?? Number.NaN);
    assert.ok(value('narrowlink_operator_reconcile_seconds_count{kind="agent"} ') >= 1);
    assert.ok(value('narrowlink_operator_reconcile_seconds_sum{kind="agent"} ') > 0);
    assert.equal(value('narrowlink_operator_leader '), 1);
    // Kinds that did not run yet are there at zero (a dashboard shows 0, and rate() sees the first one).
    assert.equal(value('narrowlink_operator_reconciles_total{kind="login",result="error"} '), 0);
    const buildInfo = lines.filter((l) => l.startsWith('narrowlink_build_info{'));
    assert.equal(buildInfo.length, 1);
    assert.match(buildInfo[0] as string, /component="operator"\} 1$/);
    assert.ok(value('process_resident_memory_bytes ') > 0);
  });

  it('promtool check metrics finds nothing', async (t) => {
    if (!k8s.require(t) || !operator) return;
    const promtool = await findPromtool();
    if ('reason' in promtool) {
      t.diagnostic(`promtool: SKIPPED (${promtool.reason})`);
      t.skip(promtool.reason);
      return;
    }
    const result = await promtoolCheckMetrics(promtool.path, await (await fetch(metricsUrl)).text());
    assert.equal(result.findings, '');
    assert.ok(result.ok);
  });
});
