/**
 * The control plane end to end on a real kube-apiserver 1.20 (see ./cluster.ts), every component a real process:
 *
 * 1. agent status from what gateway replicas report: the gateway's per-replica status ConfigMap
 *    (`narrowlink-gateway-<identity>`) → the operator's `status.connectedInstances` and `Connected` condition;
 *    a SIGKILLed gateway stops counting when its report expires, a SIGTERMed one at once;
 * 2. injected workloads: a Pod labelled `narrowlink.io/agent` (owned by a ReplicaSet owned by a Deployment) →
 *    a NarrowlinkAgent owned by the Deployment, listing the pods' ServiceAccounts, in the gateway config; a
 *    hand-made agent of the same name is left alone with a Warning Event;
 * 3. the Helm chart's RBAC is enough: `helm install`, then the operator and the gateway run impersonating the
 *    chart's ServiceAccounts, with the chart's flags, and converge without a single Forbidden;
 * 4. webhook TLS without cert-manager: the operator's own CA in a Secret, patched into the chart's
 *    MutatingWebhookConfiguration, served by the webhook, reused on a second call, one Secret after a race.
 *
 * One apiserver for the file; the tests run in order and build on each other (the chart test reuses the
 * injected workload of test 2 and the agent of test 1, so the operator under the chart's RBAC sees every kind
 * of object there is).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it, type TestContext } from 'node:test';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { type KubeClient, type KubeObject, type ResourceType, RestKubeClient, Resources } from '@narrowlink/kube';
import { type GatewayConfig, parseGatewayConfig, verifyToken } from '@narrowlink/protocol';
import { parseAllDocuments } from 'yaml';
import { ensureWebhookCertificate, mutatingWebhookConfigurations } from '@narrowlink/operator/testing';
import { type StartedProcess, startProcess, stopAll } from '../helpers/processes.ts';
import { type ApiServer, useApiServer } from './cluster.ts';
import { applyCrd } from './fixtures/fake-cert-manager.ts';
import { helmPath, toolsUnavailableReason } from './tools.ts';
import { ROOT, SCRIPTS } from '../helpers/paths.ts';
import { waitFor } from '../helpers/wait.ts';

const run = promisify(execFile);

const CHART = path.join(ROOT, 'charts', 'narrowlink');

/** The operator of tests 1–2 (not the chart's namespace: helm must not find objects it did not make). */
const DEV_NS = 'narrowlink-dev';
/** The chart's release namespace (tests 3–4). */
const SYSTEM_NS = 'narrowlink-system';
const NS = 'shop';
const CONFIG_SECRET = 'narrowlink-gateway-config';
const WEBHOOK = 'narrowlink-sidecar-injector';
const WEBHOOK_SECRET = 'narrowlink-webhook-tls';
const WEBHOOK_SERVERNAME = `narrowlink-operator.${SYSTEM_NS}.svc`;
const OPERATOR_SA = `system:serviceaccount:${SYSTEM_NS}:narrowlink-operator`;
const GATEWAY_SA = `system:serviceaccount:${SYSTEM_NS}:narrowlink-gateway`;
const MANAGED_BY = 'app.kubernetes.io/managed-by';

const serviceAccounts: ResourceType = { group: '', version: 'v1', plural: 'serviceaccounts', kind: 'ServiceAccount', namespaced: true };
const deployments: ResourceType = { group: 'apps', version: 'v1', plural: 'deployments', kind: 'Deployment', namespaced: true };
const replicaSets: ResourceType = { group: 'apps', version: 'v1', plural: 'replicasets', kind: 'ReplicaSet', namespaced: true };

interface Condition {
  type: string;
  status: string;
  reason: string;
  observedGeneration?: number;
}
interface AgentStatus {
  conditions?: Condition[];
  connectedInstances?: number;
  natType?: string;
}

function condition(object: KubeObject | undefined, type: string): Condition | undefined {
  return (object?.status as AgentStatus | undefined)?.conditions?.find((c) => c.type === type);
}


function decode(secret: KubeObject | undefined, key: string): string | undefined {
  const b64 = (secret?.data as Record<string, string> | undefined)?.[key];
  return b64 === undefined ? undefined : Buffer.from(b64, 'base64').toString('utf8');
}

function timing(what: string, ms: number): void {
  process.stderr.write(`control-plane: ${what}: ${ms} ms\n`);
}

/** A kubeconfig with the admin token that impersonates `user` (the apiserver adds a ServiceAccount's groups). */
function impersonatingKubeconfig(api: ApiServer, dir: string, user: string): string {
  const file = path.join(dir, `kubeconfig-${user.split(':').pop()}.json`);
  const config = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'local', cluster: { server: api.server, 'certificate-authority-data': Buffer.from(api.caPem).toString('base64') } }],
    users: [{ name: 'impersonated', user: { token: api.token, as: user } }],
    contexts: [{ name: 'impersonated', context: { cluster: 'local', user: 'impersonated' } }],
    'current-context': 'impersonated',
  };
  writeFileSync(file, JSON.stringify(config));
  return file;
}

async function clientFor(kubeconfig: string): Promise<RestKubeClient> {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfig);
  return RestKubeClient.fromKubeConfig(kc);
}

/**
 * The container args of a chart Deployment, with `drop` flags (and their values) removed, `set` flags replaced or
 * added, and `$(POD_NAME)` filled in: the chart's own command line, runnable outside a pod.
 */
function chartArgs(deployment: KubeObject, drop: (flag: string) => boolean, set: Record<string, string>, podName: string): string[] {
  const args = ((deployment.spec as { template: { spec: { containers: Array<{ args?: string[] }> } } }).template.spec.containers[0]?.args ?? []).map((a) =>
    a.replaceAll('$(POD_NAME)', podName),
  );
  const out: string[] = [];
  const pending = new Map(Object.entries(set));
  for (let i = 0; i < args.length; i++) {
    const flag = args[i] as string;
    const value = args[i + 1];
    const hasValue = flag.startsWith('--') && value !== undefined && !value.startsWith('--');
    if (hasValue) i++;
    if (drop(flag)) continue;
    if (pending.has(flag)) {
      out.push(flag, pending.get(flag) as string);
      pending.delete(flag);
    } else out.push(flag, ...(hasValue ? [value as string] : []));
  }
  for (const [flag, value] of pending) out.push(flag, value);
  return out;
}

/** Log lines (stdout JSON and stderr) of a process that mention Forbidden / 403. */
function forbiddenLines(p: StartedProcess): string[] {
  return [...p.lines.map((l) => JSON.stringify(l)), ...p.stderrLines].filter((l) => /forbidden|HTTP 403/i.test(l));
}

describe('control plane on a real kube-apiserver: agent status, injected workloads, chart RBAC, webhook CA', () => {
  // Registered before useApiServer's hooks so the processes stop before the apiserver does.
  let tmp: string | undefined;
  after(async () => {
    await stopAll('SIGTERM', 3_000);
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });
  const k8s = useApiServer();

  let client: RestKubeClient;
  let env: Record<string, string | undefined>;
  let devOperator: StartedProcess | undefined;
  let deploymentUid = '';

  const agentOf = (name: string): Promise<KubeObject | undefined> => client.get(Resources.narrowlinkAgent, NS, name);
  const presence = async (name: string): Promise<{ instances: number | undefined; connected: string | undefined; agent: KubeObject | undefined }> => {
    const agent = await agentOf(name);
    return { instances: (agent?.status as AgentStatus | undefined)?.connectedInstances, connected: condition(agent, 'Connected')?.status, agent };
  };
  const statusIs = (name: string, instances: number, connected: 'True' | 'False', timeoutMs = 10_000): Promise<KubeObject> =>
    waitFor(
      `agent ${name}: connectedInstances ${instances}, Connected=${connected}`,
      async () => {
        const p = await presence(name);
        return p.instances === instances && p.connected === connected ? p.agent : undefined;
      },
      timeoutMs,
    );
  const gatewayConfig = async (namespace: string): Promise<GatewayConfig | undefined> => {
    const text = decode(await client.get(Resources.secret, namespace, CONFIG_SECRET), 'config.yaml');
    return text === undefined ? undefined : parseGatewayConfig(text);
  };
  const startGateway = (name: string, args: string[], kubeconfig: string): Promise<StartedProcess> =>
    startProcess(name, [SCRIPTS.gateway, '--kubeconfig', kubeconfig, '--listen', '127.0.0.1:0', '--drain-ms', '200', ...args], {
      env: { ...env, KUBECONFIG: kubeconfig },
      timeoutMs: 20_000,
    });
  const startAgent = (name: string, url: string, auth: string[], agentPort = 18080): Promise<StartedProcess> =>
    startProcess(name, [SCRIPTS.agent, '--gateway', url, ...auth, '--expose', `http=127.0.0.1:${agentPort}`], { env });

  const toolsOrSkip = (t: TestContext): ApiServer | undefined => {
    const reason = toolsUnavailableReason();
    if (reason) {
      t.skip(`k8s tier: SKIPPED (${reason})`);
      return undefined;
    }
    return k8s.require(t);
  };

  it('setup: namespaces, the CRDs from crds/, and an operator for tests 1–2', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    tmp = await mkdtemp(path.join(os.tmpdir(), 'nl-k8s-control-plane-'));
    // Children must not pick up a developer's settings or credentials.
    env = { XDG_CONFIG_HOME: path.join(tmp, 'xdg'), KUBECONFIG: api.kubeconfigPath };
    for (const key of Object.keys(process.env)) if (key.startsWith('NARROWLINK_')) env[key] = undefined;
    client = await RestKubeClient.fromKubeConfig(api.kubeConfig());
    for (const name of [DEV_NS, NS]) await client.create(Resources.namespace, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
    const crdDir = path.join(ROOT, 'crds');
    for (const file of readdirSync(crdDir).filter((f) => f.endsWith('.yaml'))) {
      for (const doc of parseAllDocuments(readFileSync(path.join(crdDir, file), 'utf8'))) {
        const crd = doc.toJS() as KubeObject | null;
        if (crd) await applyCrd(client, crd);
      }
    }
    devOperator = await startProcess(
      'operator (dev)',
      [SCRIPTS.operator, '--kubeconfig', api.kubeconfigPath, '--namespace', DEV_NS, '--listen', '127.0.0.1:0', '--identity', 'op-dev'],
      { env, timeoutMs: 20_000 },
    );
    await devOperator.waitFor((l) => l.event === 'leading', 20_000);
  });

  it('agent status from gateway reports: instances attach and count, a SIGKILLed gateway expires, a SIGTERMed one drops at once', async (t) => {
    const api = k8s.require(t);
    if (!api || !tmp) return;
    await client.create(Resources.narrowlinkAgent, {
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'NarrowlinkAgent',
      metadata: { name: 'orders', namespace: NS },
      spec: { external: true, expose: [{ name: 'http', port: 18080, host: '127.0.0.1' }] },
    });
    const token = decode(await waitFor('the token Secret', () => client.get(Resources.secret, NS, 'orders-narrowlink-token')), 'token') ?? '';
    await waitFor('orders in the gateway config', async () => (await gatewayConfig(DEV_NS))?.agents.some((a) => a.name === 'orders'));
    const before = await statusIs('orders', 0, 'False');
    assert.equal(condition(before, 'Connected')?.reason, 'NotAttached');

    // Gateway gw-a renews its report every second (so it lasts 3 s).
    const gwA = await startGateway('gateway gw-a', ['--config-source', 'kubernetes', '--config-namespace', DEV_NS, '--identity', 'gw-a', '--status-period-ms', '1000'], api.kubeconfigPath);
    const urlA = String(gwA.readyLine.url);
    const report = await waitFor('the status ConfigMap of gw-a', () => client.get(Resources.configMap, DEV_NS, 'narrowlink-gateway-gw-a'));
    assert.equal(report.metadata.labels?.['app.kubernetes.io/component'], 'gateway-status');
    assert.equal(report.metadata.annotations?.['narrowlink.io/lease-duration-seconds'], '3');

    let started = Date.now();
    const first = await startAgent('agent orders #1', urlA, ['--token', token]);
    const attached = await statusIs('orders', 1, 'True', 5_000);
    timing('first instance attached → status 1', Date.now() - started);
    assert.equal(condition(attached, 'Connected')?.reason, 'Attached');
    assert.equal(condition(attached, 'Connected')?.observedGeneration, attached.metadata.generation);
    const reported = await client.get(Resources.configMap, DEV_NS, 'narrowlink-gateway-gw-a');
    // The agent probes its NAT on attach (the gateway runs probe ports on its loopback listen address): the
    // classification may already be in the report, and on loopback it can only be no-nat.
    const { nat, ...entry } = (JSON.parse(reported?.metadata.annotations?.['narrowlink.io/agents'] ?? '{}') as Record<string, { nat?: string }>)['shop/orders'] ?? {};
    assert.deepEqual(entry, { instances: 1 });
    assert.ok(nat === undefined || nat === 'no-nat', String(nat));

    started = Date.now();
    const second = await startAgent('agent orders #2', urlA, ['--token', token]);
    await statusIs('orders', 2, 'True', 5_000);
    timing('second instance attached → status 2', Date.now() - started);

    // SIGKILL: the ConfigMap stays and is no longer renewed; the operator drops it when it expires.
    await gwA.kill9();
    const killedAt = Date.now();
    const stale = await client.get(Resources.configMap, DEV_NS, 'narrowlink-gateway-gw-a');
    assert.ok(stale, 'the ConfigMap of a killed gateway stays');
    const renewedAt = Date.parse(stale.metadata.annotations?.['narrowlink.io/renew-time'] ?? '');
    const expiresAt = renewedAt + 1000 * Number(stale.metadata.annotations?.['narrowlink.io/lease-duration-seconds']);
    assert.ok(expiresAt > killedAt, 'the report was still valid when the gateway died');
    await statusIs('orders', 0, 'False', 10_000);
    const droppedAt = Date.now();
    timing(`SIGKILL → status 0 (report expired ${expiresAt - killedAt} ms after the kill)`, droppedAt - killedAt);
    assert.ok(droppedAt >= expiresAt, `dropped ${expiresAt - droppedAt} ms before the report expired`);
    assert.ok(droppedAt <= expiresAt + 3_000, `dropped ${droppedAt - expiresAt} ms after the report expired`);
    const after = await client.get(Resources.configMap, DEV_NS, 'narrowlink-gateway-gw-a');
    assert.equal(after?.metadata.annotations?.['narrowlink.io/renew-time'], stale.metadata.annotations?.['narrowlink.io/renew-time'], 'not renewed');
    await Promise.all([first.stop(), second.stop()]);

    // SIGTERM: gw-b reports with a 60 s lease, so only the deletion of its ConfigMap can drop the status quickly.
    const gwB = await startGateway('gateway gw-b', ['--config-source', 'kubernetes', '--config-namespace', DEV_NS, '--identity', 'gw-b', '--status-period-ms', '20000'], api.kubeconfigPath);
    const third = await startAgent('agent orders #3', String(gwB.readyLine.url), ['--token', token]);
    await statusIs('orders', 1, 'True', 5_000);
    const reportB = await client.get(Resources.configMap, DEV_NS, 'narrowlink-gateway-gw-b');
    assert.equal(reportB?.metadata.annotations?.['narrowlink.io/lease-duration-seconds'], '60');
    const stoppedAt = Date.now();
    assert.equal(await gwB.stop('SIGTERM', 10_000), 0);
    assert.equal(await client.get(Resources.configMap, DEV_NS, 'narrowlink-gateway-gw-b'), undefined, 'a stopped gateway deletes its ConfigMap');
    await statusIs('orders', 0, 'False', 5_000);
    timing('SIGTERM → status 0', Date.now() - stoppedAt);
    await third.stop();
  });

  it('an injected workload becomes a NarrowlinkAgent owned by its Deployment; a hand-made agent of that name is left alone', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    for (const name of ['web-sa', 'api-sa']) await client.create(serviceAccounts, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace: NS } });
    const template = (app: string, extraLabels: Record<string, string> = {}) => ({
      metadata: { labels: { app, ...extraLabels } },
      spec: { containers: [{ name: 'app', image: 'nginx:1.27' }] },
    });
    // No controller-manager here: the Deployment makes no ReplicaSet, so the test writes the chain itself.
    const deployment = await client.create(deployments, {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'web', namespace: NS },
      spec: { replicas: 1, selector: { matchLabels: { app: 'web' } }, template: template('web') },
    });
    deploymentUid = deployment.metadata.uid ?? '';
    const hash = '5d4c8b7f9';
    const replicaSet = await client.create(replicaSets, {
      apiVersion: 'apps/v1',
      kind: 'ReplicaSet',
      metadata: {
        name: `web-${hash}`,
        namespace: NS,
        labels: { app: 'web', 'pod-template-hash': hash },
        ownerReferences: [{ apiVersion: 'apps/v1', kind: 'Deployment', name: 'web', uid: deploymentUid, controller: true, blockOwnerDeletion: true }],
      },
      spec: { replicas: 1, selector: { matchLabels: { app: 'web', 'pod-template-hash': hash } }, template: template('web', { 'pod-template-hash': hash }) },
    });
    const started = Date.now();
    await client.create(Resources.pod, {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: `web-${hash}-x7k2p`,
        namespace: NS,
        labels: { app: 'web', 'pod-template-hash': hash, 'narrowlink.io/agent': 'web' },
        annotations: { 'narrowlink.io/inject': 'true', 'narrowlink.io/expose': 'http=8080' },
        ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `web-${hash}`, uid: replicaSet.metadata.uid, controller: true, blockOwnerDeletion: true }],
      },
      spec: { serviceAccountName: 'web-sa', containers: [{ name: 'app', image: 'nginx:1.27' }] },
    });

    const agent = await waitFor('NarrowlinkAgent shop/web', () => agentOf('web'));
    timing('injected pod → NarrowlinkAgent', Date.now() - started);
    const spec = agent.spec as { expose: Array<{ name: string; port: number }>; serviceAccounts: string[]; external?: boolean };
    assert.deepEqual(
      spec.expose.map(({ name, port }) => ({ name, port })),
      [{ name: 'http', port: 8080 }],
    );
    assert.deepEqual(spec.serviceAccounts, ['web-sa']);
    assert.notEqual(spec.external, true);
    assert.equal(agent.metadata.labels?.[MANAGED_BY], 'narrowlink-operator');
    const owners = (agent.metadata.ownerReferences ?? []) as Array<{ apiVersion: string; kind: string; name: string; uid: string; controller?: boolean }>;
    assert.deepEqual(
      owners.map(({ apiVersion, kind, name, uid }) => ({ apiVersion, kind, name, uid })),
      [{ apiVersion: 'apps/v1', kind: 'Deployment', name: 'web', uid: deploymentUid }],
    );
    assert.notEqual(owners[0]?.controller, true, 'owned, not controlled (the Deployment controller must not adopt it)');

    const config = await waitFor('agent web in the gateway config', async () => (await gatewayConfig(DEV_NS))?.agents.find((a) => a.name === 'web' && a.namespace === NS));
    assert.deepEqual(config.serviceAccounts, ['web-sa']);
    assert.deepEqual(
      config.expose.map(({ name, port }) => ({ name, port })),
      [{ name: 'http', port: 8080 }],
    );

    // A NarrowlinkAgent "api" made by hand, then pods of an injected workload named "api".
    const handMade = await client.create(Resources.narrowlinkAgent, {
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'NarrowlinkAgent',
      metadata: { name: 'api', namespace: NS, labels: { team: 'platform' } },
      spec: { expose: [{ name: 'grpc', port: 9000 }] },
    });
    await client.create(Resources.pod, {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: 'api-0',
        namespace: NS,
        labels: { app: 'api', 'narrowlink.io/agent': 'api' },
        annotations: { 'narrowlink.io/inject': 'true', 'narrowlink.io/expose': 'http=8080' },
      },
      spec: { serviceAccountName: 'api-sa', containers: [{ name: 'app', image: 'nginx:1.27' }] },
    });
    const warning = await waitFor('a Warning Event AgentNotManaged on NarrowlinkAgent api', async () => {
      const { items } = await client.list(Resources.event, { namespace: NS, fieldSelector: 'involvedObject.kind=NarrowlinkAgent,involvedObject.name=api' });
      return items.find((e) => e.type === 'Warning' && e.reason === 'AgentNotManaged');
    });
    assert.equal((warning.involvedObject as { uid?: string }).uid, handMade.metadata.uid);
    assert.match(String(warning.message), /api-sa/);
    // The operator went through the agent's reconcile too (it is in the config), and never touched its spec.
    await waitFor('agent api in the gateway config', async () => (await gatewayConfig(DEV_NS))?.agents.some((a) => a.name === 'api'));
    const untouched = await agentOf('api');
    assert.deepEqual(untouched?.spec, handMade.spec);
    assert.equal(untouched?.metadata.generation, handMade.metadata.generation);
    assert.deepEqual(untouched?.metadata.labels, { team: 'platform' });
    assert.equal(untouched?.metadata.ownerReferences, undefined);

    // Tests 3–4 run the chart's operator against the same objects: this one steps down.
    assert.equal(await devOperator?.stop('SIGTERM', 10_000), 0);
  });

  it("helm install, then the operator and the gateway impersonating the chart's ServiceAccounts converge without a Forbidden", async (t) => {
    const api = toolsOrSkip(t);
    if (!api || !tmp) return;
    await client.create(Resources.namespace, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: SYSTEM_NS } });
    const values = path.join(tmp, 'values.json');
    writeFileSync(values, JSON.stringify({ certManager: { enabled: false } }));
    let started = Date.now();
    const { stdout } = await run(helmPath(), ['--kubeconfig', api.kubeconfigPath, 'install', 'narrowlink', CHART, '--namespace', SYSTEM_NS, '--values', values, '--timeout', '60s'], {
      timeout: 120_000,
    });
    assert.match(stdout, /STATUS: deployed/);
    timing('helm install', Date.now() - started);
    const hook = await client.get(mutatingWebhookConfigurations, undefined, WEBHOOK);
    assert.ok(hook, 'the chart installed the MutatingWebhookConfiguration');
    assert.deepEqual(
      (hook.webhooks as Array<{ clientConfig: { caBundle?: string } }>).map((w) => w.clientConfig.caBundle ?? ''),
      ['', ''],
      'no caBundle before the operator runs (sidecar injector and login requests)',
    );

    // The operator with the chart's flags, minus the webhook (test 4), as the chart's ServiceAccount. It keeps the
    // gateway certificate and the CA copies (ADR 0015): their RBAC is checked too.
    const operatorKubeconfig = impersonatingKubeconfig(api, tmp, OPERATOR_SA);
    const operatorDeployment = await client.get(deployments, SYSTEM_NS, 'narrowlink-operator');
    assert.ok(operatorDeployment);
    const operatorArgs = chartArgs(
      operatorDeployment,
      (f) => (f.startsWith('--webhook-') && f !== '--webhook-configuration') || (f.startsWith('--sidecar-') && f !== '--sidecar-ca-configmap'),
      { '--listen': '127.0.0.1:0', '--kubeconfig': operatorKubeconfig },
      'op-rbac',
    );
    assert.ok(operatorArgs.includes('--gateway-tls-secret') && operatorArgs.includes('--distribute-ca-from'), `chart operator args: ${operatorArgs.join(' ')}`);
    assert.deepEqual(operatorArgs.slice(0, 2), ['--namespace', SYSTEM_NS]);
    started = Date.now();
    const operator = await startProcess('operator (chart RBAC)', [SCRIPTS.operator, ...operatorArgs], { env: { ...env, KUBECONFIG: operatorKubeconfig }, timeoutMs: 20_000 });
    await operator.waitFor((l) => l.event === 'leading', 20_000);

    await client.create(Resources.narrowlinkAgent, {
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'NarrowlinkAgent',
      metadata: { name: 'billing', namespace: NS },
      spec: { external: true, expose: [{ name: 'http', port: 18080, host: '127.0.0.1' }] },
    });
    await client.create(Resources.accessPolicy, {
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'AccessPolicy',
      metadata: { name: 'billing-devs', namespace: NS },
      spec: { subjects: [{ kind: 'User', name: 'carol' }], rules: [{ action: 'Allow', agents: { names: ['billing', 'web'] } }] },
    });
    const config = await waitFor('billing, web and billing-devs in the chart namespace gateway config', async () => {
      const c = await gatewayConfig(SYSTEM_NS);
      return c?.agents.some((a) => a.name === 'billing') && c.agents.some((a) => a.name === 'web') && c.policies.some((p) => p.name === 'billing-devs') ? c : undefined;
    });
    assert.deepEqual(config.agents.map((a) => `${a.namespace}/${a.name}`).sort(), ['shop/api', 'shop/billing', 'shop/orders', 'shop/web']);
    assert.deepEqual(config.agents.find((a) => a.name === 'web')?.serviceAccounts, ['web-sa']);
    // The token is signed with the key helm generated (the chart's signing key Secret), and so is the config.
    const signing = await client.get(Resources.secret, SYSTEM_NS, 'narrowlink-signing-key');
    const publicKeyPem = decode(signing, 'public.pem') ?? '';
    assert.deepEqual(config.signingPublicKeys.map((k) => k.trim()), [publicKeyPem.trim()]);
    const billingToken = decode(await waitFor('the billing token Secret', () => client.get(Resources.secret, NS, 'billing-narrowlink-token')), 'token') ?? '';
    assert.equal((await verifyToken(billingToken, { publicKeysPem: [publicKeyPem], expectedType: 'agent' })).sub, 'shop/billing');
    await waitFor('billing Ready=True', async () => condition(await agentOf('billing'), 'Ready')?.status === 'True');
    await waitFor('billing-devs Ready=True', async () => condition(await client.get(Resources.accessPolicy, NS, 'billing-devs'), 'Ready')?.status === 'True');
    timing('operator start → converged under the chart RBAC', Date.now() - started);
    // Without cert-manager: the gateway certificate from the operator's CA, and that CA copied into the namespace
    // of the injected pods (shop), owned by the chart's webhook configuration.
    const gatewayTls = await waitFor('the operator-issued gateway TLS Secret', () => client.get(Resources.secret, SYSTEM_NS, 'narrowlink-gateway-tls'));
    const gatewayCa = decode(gatewayTls, 'ca.crt') ?? '';
    assert.equal(gatewayCa, decode(await client.get(Resources.secret, SYSTEM_NS, 'narrowlink-ca'), 'tls.crt'));
    assert.ok(new X509Certificate(decode(gatewayTls, 'tls.crt') ?? '').verify(new X509Certificate(gatewayCa).publicKey));
    const copy = await waitFor('the CA copy in shop', async () => {
      const cm = await client.get(Resources.configMap, NS, 'narrowlink-ca');
      return (cm?.data as Record<string, string> | undefined)?.['ca.crt'] === gatewayCa ? cm : undefined;
    });
    assert.equal((copy.metadata.ownerReferences as Array<{ uid: string }> | undefined)?.[0]?.uid, hook.metadata.uid);

    // The gateway with the chart's flags (no TLS files outside a pod; loopback), as the chart's ServiceAccount.
    const gatewayKubeconfig = impersonatingKubeconfig(api, tmp, GATEWAY_SA);
    const gatewayDeployment = await client.get(deployments, SYSTEM_NS, 'narrowlink-gateway');
    assert.ok(gatewayDeployment);
    const gatewayArgs = chartArgs(gatewayDeployment, (f) => f === '--tls-cert' || f === '--tls-key' || f === '--listen' || f === '--drain-ms', { '--identity': 'gw-rbac', '--status-period-ms': '1000' }, 'gw-rbac');
    assert.ok(gatewayArgs.includes('kubernetes'), `chart gateway args: ${gatewayArgs.join(' ')}`);
    const gateway = await startGateway('gateway (chart RBAC)', gatewayArgs, gatewayKubeconfig);
    const url = String(gateway.readyLine.url);
    await waitFor('the status ConfigMap of gw-rbac', () => client.get(Resources.configMap, SYSTEM_NS, 'narrowlink-gateway-gw-rbac'));

    // An external agent with its operator-issued token, and the injected agent with a projected-style
    // ServiceAccount token the gateway checks with a TokenReview.
    const billing = await startAgent('agent billing', url, ['--token', billingToken]);
    const tokenRequest: ResourceType = { group: '', version: 'v1', plural: 'serviceaccounts/web-sa/token', kind: 'TokenRequest', namespaced: true };
    const answer = await client.create(tokenRequest, {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenRequest',
      metadata: { namespace: NS },
      spec: { audiences: ['narrowlink'], expirationSeconds: 600 },
    });
    const saTokenFile = path.join(tmp, 'web-sa.token');
    writeFileSync(saTokenFile, (answer.status as { token: string }).token);
    const web = await startAgent('agent web (ServiceAccount token)', url, ['--token-file', saTokenFile, '--agent-name', `${NS}/web`], 8080);
    await statusIs('billing', 1, 'True', 5_000);
    await statusIs('web', 1, 'True', 5_000);

    // A SIGTERMed gateway deletes its ConfigMap (RBAC delete) and the operator sees it.
    assert.equal(await gateway.stop('SIGTERM', 10_000), 0);
    assert.equal(await client.get(Resources.configMap, SYSTEM_NS, 'narrowlink-gateway-gw-rbac'), undefined);
    await statusIs('billing', 0, 'False', 5_000);
    await Promise.all([billing.stop(), web.stop()]);
    assert.equal(await operator.stop('SIGTERM', 10_000), 0);

    assert.deepEqual(forbiddenLines(operator), [], 'the operator was refused something');
    assert.deepEqual(forbiddenLines(gateway), [], 'the gateway was refused something');
    assert.equal(
      operator.lines.filter((l) => l.msg === 'reconcile failed; will retry').length,
      0,
      `failed reconciles: ${JSON.stringify(operator.lines.filter((l) => l.msg === 'reconcile failed; will retry'))}`,
    );
  });

  it('webhook TLS without cert-manager: own CA in a Secret, in caBundle, served by the webhook, reused, one Secret after a race', async (t) => {
    const api = toolsOrSkip(t);
    if (!api || !tmp) return;
    const operatorKubeconfig = impersonatingKubeconfig(api, tmp, OPERATOR_SA);
    const operatorDeployment = await client.get(deployments, SYSTEM_NS, 'narrowlink-operator');
    assert.ok(operatorDeployment, 'the chart was installed by the previous test');
    // The chart's flags with the webhook (--webhook-ca-secret, --webhook-configuration, --sidecar-image ...).
    const args = chartArgs(
      operatorDeployment,
      (f) => f === '--webhook-cert-file' || f === '--webhook-key-file',
      { '--listen': '127.0.0.1:0', '--webhook-listen': '127.0.0.1:0', '--kubeconfig': operatorKubeconfig },
      'op-webhook',
    );
    for (const flag of ['--webhook-ca-secret', '--webhook-configuration', '--sidecar-image']) assert.ok(args.includes(flag), `chart passes ${flag}`);
    let started = Date.now();
    const operator = await startProcess('operator (webhook)', [SCRIPTS.operator, ...args], { env: { ...env, KUBECONFIG: operatorKubeconfig }, timeoutMs: 20_000 });
    const listening = await operator.waitFor((l) => l.event === 'webhook-listening' && typeof l.url === 'string');
    timing('operator start → webhook listening with its own CA', Date.now() - started);
    const webhookPort = Number(new URL(String(listening.url)).port);

    const secret = await client.get(Resources.secret, SYSTEM_NS, WEBHOOK_SECRET);
    assert.ok(secret);
    assert.equal(secret.type, 'kubernetes.io/tls');
    assert.deepEqual(Object.keys(secret.data as object).sort(), ['ca.crt', 'tls.crt', 'tls.key']);
    const caPem = decode(secret, 'ca.crt') ?? '';
    const certPem = decode(secret, 'tls.crt') ?? '';
    const ca = new X509Certificate(caPem);
    assert.ok(ca.ca, 'ca.crt is a CA');
    assert.ok(new X509Certificate(certPem).verify(ca.publicKey), 'tls.crt is signed by ca.crt');
    const caBundle = (): Promise<string[]> =>
      client.get(mutatingWebhookConfigurations, undefined, WEBHOOK).then((h) => ((h?.webhooks ?? []) as Array<{ clientConfig: { caBundle?: string } }>).map((w) => w.clientConfig.caBundle ?? ''));
    // Every webhook of the configuration (sidecar injector, login requests) trusts the CA.
    assert.deepEqual(await caBundle(), [(secret.data as Record<string, string>)['ca.crt'], (secret.data as Record<string, string>)['ca.crt']]);

    // A TLS client trusting only ca.crt accepts the webhook's certificate for the Service name, and no other name.
    const handshake = (servername: string): Promise<Buffer> =>
      new Promise((resolve, reject) => {
        const socket = tls.connect({ host: '127.0.0.1', port: webhookPort, servername, ca: caPem }, () => {
          const raw = socket.getPeerCertificate().raw;
          socket.end();
          resolve(raw);
        });
        socket.once('error', reject);
      });
    assert.deepEqual(await handshake(WEBHOOK_SERVERNAME), new X509Certificate(certPem).raw);
    await assert.rejects(handshake('narrowlink-operator.elsewhere.svc'), { code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    assert.equal(await operator.stop('SIGTERM', 10_000), 0);
    assert.deepEqual(forbiddenLines(operator), []);

    // A second call (a restart, another replica) reuses the Secret: nothing is written.
    const asOperator = await clientFor(operatorKubeconfig);
    const options = { namespace: SYSTEM_NS, secretName: WEBHOOK_SECRET, serviceName: 'narrowlink-operator', webhookConfiguration: WEBHOOK };
    const hookVersion = (await client.get(mutatingWebhookConfigurations, undefined, WEBHOOK))?.metadata.resourceVersion;
    const again = await ensureWebhookCertificate(asOperator, { ...options, nowMs: Date.now() });
    assert.equal(again.caPem, caPem);
    assert.equal(again.certPem, certPem);
    assert.equal((await client.get(Resources.secret, SYSTEM_NS, WEBHOOK_SECRET))?.metadata.resourceVersion, secret.metadata.resourceVersion);
    assert.equal((await client.get(mutatingWebhookConfigurations, undefined, WEBHOOK))?.metadata.resourceVersion, hookVersion);

    // Two replicas racing on a cluster without the Secret: both read "absent" (a barrier holds the first read
    // until both have it), both create, one wins; both end with the winner's certificate, and so does caBundle.
    assert.equal(await client.delete(Resources.secret, SYSTEM_NS, WEBHOOK_SECRET), true);
    const creates: string[] = [];
    let arrived = 0;
    let releaseReads: () => void = () => undefined;
    const bothRead = new Promise<void>((resolve) => {
      releaseReads = resolve;
    });
    const replica = (name: string, inner: KubeClient): KubeClient => {
      let firstRead = true;
      return {
        list: (type, opts) => inner.list(type, opts),
        watch: (type, opts, onEvent) => inner.watch(type, opts, onEvent),
        apply: (type, object, opts) => inner.apply(type, object, opts),
        mergePatch: (type, namespace, objectName, patch, opts) => inner.mergePatch(type, namespace, objectName, patch, opts),
        delete: (type, namespace, objectName, opts) => inner.delete(type, namespace, objectName, opts),
        get: async (type, namespace, objectName) => {
          const value = await inner.get(type, namespace, objectName);
          if (type.plural === 'secrets' && firstRead) {
            firstRead = false;
            if (++arrived === 2) releaseReads();
            await bothRead;
          }
          return value;
        },
        create: async (type, object, opts) => {
          try {
            const made = await inner.create(type, object, opts);
            creates.push(`${name}: created`);
            return made;
          } catch (error) {
            creates.push(`${name}: ${(error as { status?: number }).status}`);
            throw error;
          }
        },
      };
    };
    started = Date.now();
    const [a, b] = await Promise.all([
      ensureWebhookCertificate(replica('a', await clientFor(operatorKubeconfig)), { ...options, nowMs: Date.now() }),
      ensureWebhookCertificate(replica('b', await clientFor(operatorKubeconfig)), { ...options, nowMs: Date.now() }),
    ]);
    timing('two racing replicas', Date.now() - started);
    assert.deepEqual(creates.map((c) => c.replace(/^[ab]: /, '')).sort(), ['409', 'created'], `creates: ${creates.join(', ')}`);
    const winner = await client.get(Resources.secret, SYSTEM_NS, WEBHOOK_SECRET);
    assert.equal(a.caPem, decode(winner, 'ca.crt'));
    assert.equal(b.caPem, a.caPem);
    assert.equal(b.certPem, a.certPem);
    assert.equal(b.keyPem, a.keyPem);
    assert.notEqual(a.caPem, caPem, 'a new CA after the Secret was deleted');
    const winnerCa = (winner?.data as Record<string, string> | undefined)?.['ca.crt'];
    assert.deepEqual(await caBundle(), [winnerCa, winnerCa]);
  });
});
