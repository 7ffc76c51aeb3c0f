#!/usr/bin/env node
/**
 * Reconcile benchmark: N NarrowlinkAgents + M AccessPolicies (default 500 + 500) already in a real
 * kube-apiserver 1.20 (test/k8s/cluster.ts) when the operator starts, then one policy edit.
 *
 *   npx node test/bench/reconcile.ts [--agents N] [--policies M]   prints one JSON object
 *   measureReconcile({ agents, policies })                          what `npm run bench` calls
 *
 * The operator runs in this process exactly as operator/src/main.ts builds it (a RestKubeClient from the
 * kubeconfig, the signing key Secret, `new Operator(...)`), with leader election off. Its client is wrapped
 * in a pass-through that names every call (`apply narrowlinkagents/status`, `list pods`, ...) so the
 * requests can be split into the initial list/watch and the writes; `RestKubeClient.requests` gives the
 * same total by HTTP verb.
 *
 * Clock: from `operator.start()` (informers list) until the operator is converged: the config Secret it wrote
 * lists every agent and policy, every agent carries the finalizer and Ready=True and every policy Ready=True
 * at the current generation (read from the operator's own caches, so the watch echo of the last status
 * write has arrived), and `operator.idle()`. The stored Secret is read back at the end with a separate
 * admin client (not counted). `reconcile_secret_seconds` is the moment the complete Secret was written.
 *
 * Incremental: merge-patch one policy's subjects, then the time until the operator's apply of the config
 * Secret carrying the change returned (the Secret is stored), and every request until it is idle again.
 */
import { Writable } from 'node:stream';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  type KubeClient,
  type KubeObject,
  type ListOptions,
  type ResourceType,
  Resources,
  RestKubeClient,
  type WatchEventType,
  type WatchOptions,
} from '@narrowlink/kube';
import { DEFAULT_GATEWAY_CONFIG_SECRET_NAME, GATEWAY_CONFIG_SECRET_KEY, parseGatewayConfig } from '@narrowlink/protocol';
import { pino } from 'pino';
import { parseAllDocuments } from 'yaml';
import { FINALIZER } from '@narrowlink/operator';
import { createOperatorMetrics, ensureSigningKey, Operator } from '@narrowlink/operator/testing';
import { startApiServer } from '../k8s/cluster.ts';
import { applyCrd, installCertificateCrd } from '../k8s/fixtures/fake-cert-manager.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SYSTEM_NS = 'narrowlink-system';
const CONFIG_SECRET = DEFAULT_GATEWAY_CONFIG_SECRET_NAME;
const CONFIG_KEY = GATEWAY_CONFIG_SECRET_KEY;
const NAMESPACES = 10;
/** Every PUBLISH_EVERY-th agent publishes one domain (one Certificate; no issuer runs, so it stays Issuing). */
const PUBLISH_EVERY = 50;
const PORTS = [
  { name: 'http', port: 8080 },
  { name: 'metrics', port: 9090 },
  { name: 'grpc', port: 50051 },
];

export interface ReconcileOptions {
  agents?: number;
  policies?: number;
  /** Give up after this long waiting for convergence, ms (default 100 s). */
  timeoutMs?: number;
  /** Parallel creates while seeding (default 16). */
  seedConcurrency?: number;
  log?: (line: string) => void;
}

export interface ReconcileResult {
  reconcile_seconds: number;
  reconcile_secret_seconds: number;
  reconcile_requests: number;
  reconcile_requests_by_verb: Record<string, number>;
  /** The informers' first lists and watches. */
  reconcile_requests_initial: Record<string, number>;
  /** Everything else the operator sent (writes, and any re-list or GET), by call. */
  reconcile_requests_writes: Record<string, number>;
  /** Reconciles run until converged, by queue key kind (gateway-config, agent, policy) and result. */
  reconcile_reconciles: Record<string, number>;
  /** Time the worker spent in reconciles, s, by queue key kind (the sum of the operator's histogram). */
  reconcile_worker_seconds: Record<string, number>;
  /** CPU seconds used during the reconcile window: this process (operator), kube-apiserver, etcd. */
  reconcile_cpu_seconds: { operator: number; apiserver: number; etcd: number };
  reconcile_incremental_ms: number;
  reconcile_incremental_requests: number;
  reconcile_incremental_requests_by_verb: Record<string, number>;
  reconcile_incremental_calls: Record<string, number>;
  reconcile_objects: { agents: number; policies: number; namespaces: number; certificates: number };
  reconcile_setup_seconds: number;
}

export type ReconcileOutcome = ReconcileResult | { skipped: string };

type Counts = Record<string, number>;

function bump(counts: Counts, key: string, by = 1): void {
  counts[key] = (counts[key] ?? 0) + by;
}

function diff(after: Counts, before: Counts): Counts {
  const out: Counts = {};
  for (const [k, v] of Object.entries(after)) if (v - (before[k] ?? 0) > 0) out[k] = v - (before[k] ?? 0);
  return out;
}

function sum(counts: Counts): number {
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

function sorted(counts: Counts): Counts {
  return Object.fromEntries(Object.entries(counts).sort(([a], [b]) => a.localeCompare(b)));
}

/** A config Secret write seen on the way out: when it was stored and what it says. */
interface SecretWrite {
  atMs: number;
  text: string;
}

/**
 * The operator's client with every call named (`verb plural[/subresource]`); behaviour unchanged. The
 * first list and watch per resource are "initial"; later ones (re-lists, watch restarts) count as other.
 */
class NamingClient implements KubeClient {
  readonly inner: RestKubeClient;
  readonly calls: Counts = {};
  readonly initial: Counts = {};
  readonly secretWrites: SecretWrite[] = [];
  readonly #listed = new Set<string>();
  readonly #watched = new Set<string>();
  #onSecretWrite: ((write: SecretWrite) => void) | undefined;

  constructor(inner: RestKubeClient) {
    this.inner = inner;
  }

  onSecretWrite(listener: ((write: SecretWrite) => void) | undefined): void {
    this.#onSecretWrite = listener;
  }

  #name(verb: string, type: ResourceType, subresource?: string): string {
    return `${verb} ${type.plural}${subresource ? `/${subresource}` : ''}`;
  }

  #first(seen: Set<string>, name: string, options: ListOptions = {}): void {
    const key = `${name} ${options.namespace ?? ''} ${options.labelSelector ?? ''}`;
    if (seen.has(key)) bump(this.calls, name);
    else {
      seen.add(key);
      bump(this.initial, name);
    }
  }

  list(type: ResourceType, options?: ListOptions): Promise<{ items: KubeObject[]; resourceVersion: string }> {
    this.#first(this.#listed, this.#name('list', type), options);
    return this.inner.list(type, options);
  }

  watch(type: ResourceType, options: WatchOptions, onEvent: (type: WatchEventType, object: KubeObject) => void): Promise<void> {
    this.#first(this.#watched, this.#name('watch', type), options);
    return this.inner.watch(type, options, onEvent);
  }

  get(type: ResourceType, namespace: string | undefined, name: string): Promise<KubeObject | undefined> {
    bump(this.calls, this.#name('get', type));
    return this.inner.get(type, namespace, name);
  }

  async apply(type: ResourceType, object: KubeObject, options: { fieldManager: string; force?: boolean; subresource?: 'status'; dryRun?: boolean }): Promise<KubeObject> {
    const isConfig = type === Resources.secret && object.metadata.name === CONFIG_SECRET && object.metadata.namespace === SYSTEM_NS;
    bump(this.calls, isConfig ? 'apply secrets (gateway config)' : this.#name('apply', type, options.subresource));
    const stored = await this.inner.apply(type, object, options);
    if (isConfig) {
      const b64 = (object.data as Record<string, string> | undefined)?.[CONFIG_KEY] ?? '';
      const write = { atMs: performance.now(), text: Buffer.from(b64, 'base64').toString('utf8') };
      this.secretWrites.push(write);
      this.#onSecretWrite?.(write);
    }
    return stored;
  }

  mergePatch(type: ResourceType, namespace: string | undefined, name: string, patch: unknown, options?: { subresource?: 'status'; fieldManager?: string }): Promise<KubeObject> {
    const finalizer = type === Resources.narrowlinkAgent && !options?.subresource && JSON.stringify(patch).includes('"finalizers"');
    bump(this.calls, finalizer ? 'merge-patch narrowlinkagents (finalizer)' : this.#name('merge-patch', type, options?.subresource));
    return this.inner.mergePatch(type, namespace, name, patch, options);
  }

  create(type: ResourceType, object: KubeObject, options?: { fieldManager?: string }): Promise<KubeObject> {
    bump(this.calls, this.#name('create', type));
    return this.inner.create(type, object, options);
  }

  delete(type: ResourceType, namespace: string | undefined, name: string, options?: { uid?: string; resourceVersion?: string }): Promise<boolean> {
    bump(this.calls, this.#name('delete', type));
    return this.inner.delete(type, namespace, name, options);
  }
}

/** Runs `work` over `items` with at most `limit` in flight. */
async function pool<T>(items: T[], limit: number, work: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await work(items[next++] as T);
  });
  await Promise.all(runners);
}

/** CPU seconds (user + system) a process has used so far, from /proc (0 where /proc is missing). */
function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function namespaceOf(i: number): string {
  return `bench-${i % NAMESPACES}`;
}

/** Agent i: 1-3 exposed ports, labels for selectors, every PUBLISH_EVERY-th publishes a domain. */
function agentObject(i: number): KubeObject {
  const expose = PORTS.slice(0, 1 + (i % 3));
  return {
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'NarrowlinkAgent',
    metadata: { name: `svc-${i}`, namespace: namespaceOf(i), labels: { app: `svc-${i}`, team: `team-${i % 25}`, tier: i % 2 ? 'backend' : 'frontend' } },
    spec: {
      external: false,
      expose,
      ...(i % PUBLISH_EVERY === 0 ? { publish: [{ domain: `svc-${i}.bench.example`, port: 8080, tls: 'Terminate' }] } : {}),
    },
  };
}

/**
 * Policy i, in the namespace of agent i (cross-namespace policies are off by default): a user and a group;
 * Allow by name for agent i and its namespace neighbour, Allow by label selector with ports, and a Deny
 * on a port range for every other policy.
 */
function policyObject(i: number, agents: number): KubeObject {
  const neighbour = (i + NAMESPACES) % agents;
  const rules: unknown[] = [
    { action: 'Allow', agents: { names: [`svc-${i % agents}`, `svc-${neighbour}`] } },
    { action: 'Allow', agents: { selector: { matchLabels: { team: `team-${i % 25}` } } }, ports: [8080, '9000-9100'], paths: ['Relay'] },
  ];
  if (i % 2 === 1) rules.push({ action: 'Deny', ports: ['50000-50100'], hosts: ['*.internal'] });
  return {
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'AccessPolicy',
    metadata: { name: `access-${i}`, namespace: namespaceOf(i % agents) },
    spec: {
      subjects: [
        { kind: 'User', name: `user-${i}@example.com` },
        { kind: 'Group', name: `team-${i % 25}` },
      ],
      rules,
    },
  };
}

interface Conditioned {
  metadata: KubeObject['metadata'];
  status?: { conditions?: Array<{ type: string; status: string; observedGeneration?: number }> };
}

function readyAtGeneration(object: KubeObject): boolean {
  const o = object as Conditioned;
  const ready = o.status?.conditions?.find((c) => c.type === 'Ready');
  return ready?.status === 'True' && ready.observedGeneration === o.metadata.generation;
}

function configCounts(text: string): { agents: number; policies: number } {
  const config = parseGatewayConfig(text);
  return { agents: config.agents.length, policies: config.policies.length };
}

async function installCrds(client: RestKubeClient): Promise<void> {
  const dir = join(ROOT, 'crds');
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.yaml'))) {
    for (const doc of parseAllDocuments(readFileSync(join(dir, file), 'utf8'))) {
      const crd = doc.toJS() as KubeObject | null;
      if (crd) await applyCrd(client, crd);
    }
  }
  // The Certificate API, as with cert-manager installed (no issuer runs: Certificates stay unissued).
  await installCertificateCrd(client);
}

/** Seeds the objects, runs the operator until converged, edits one policy; see the file comment. */
export async function measureReconcile(options: ReconcileOptions = {}): Promise<ReconcileOutcome> {
  const agentCount = options.agents ?? 500;
  const policyCount = options.policies ?? 500;
  const timeoutMs = options.timeoutMs ?? 100_000;
  const say = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const setupStarted = performance.now();
  const api = await startApiServer();
  if ('skipped' in api) return { skipped: api.skipped };
  let operator: Operator | undefined;
  try {
    const admin = await RestKubeClient.fromKubeConfig(api.kubeConfig());
    const namespaces = [SYSTEM_NS, ...Array.from({ length: Math.min(NAMESPACES, agentCount) }, (_, i) => `bench-${i}`)];
    for (const name of namespaces) await admin.create(Resources.namespace, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
    await installCrds(admin);
    say(`  seeding ${agentCount} agents and ${policyCount} policies…`);
    const concurrency = options.seedConcurrency ?? 16;
    await pool(Array.from({ length: agentCount }, (_, i) => i), concurrency, (i) => admin.create(Resources.narrowlinkAgent, agentObject(i)));
    await pool(Array.from({ length: policyCount }, (_, i) => i), concurrency, (i) => admin.create(Resources.accessPolicy, policyObject(i, agentCount)));
    const certificates = Math.ceil(agentCount / PUBLISH_EVERY);
    const setupSeconds = (performance.now() - setupStarted) / 1000;

    // The operator as main.ts builds it, leader election off.
    const client = new NamingClient(await RestKubeClient.fromKubeConfig(api.kubeConfig()));
    const signingKey = await ensureSigningKey(client, SYSTEM_NS, 'narrowlink-signing-key');
    const metrics = createOperatorMetrics({ defaultMetrics: false });
    let retries = 0;
    const logSink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString('utf8').split('\n')) {
          if (line.includes('reconcile failed')) retries++;
          if (line.length > 0 && process.env.NARROWLINK_BENCH_VERBOSE === '1') process.stderr.write(`${line}\n`);
        }
        done();
      },
    });
    operator = new Operator({
      client,
      log: pino({ level: 'warn', base: { component: 'operator' } }, logSink),
      metrics,
      signingKey,
      settings: {
        namespace: SYSTEM_NS,
        gatewayConfigSecret: CONFIG_SECRET,
        allowCrossNamespacePolicies: false,
        defaultIssuerRef: { name: 'bench-issuer', kind: 'ClusterIssuer', group: 'cert-manager.io' },
      },
    });
    const { caches } = operator.context;
    const before = { ...client.inner.requests };
    const callsBefore = { ...client.calls };

    say('  operator running…');
    const cpuBefore = { operator: process.cpuUsage(), apiserver: cpuSeconds(api.apiserverPid), etcd: cpuSeconds(api.etcdPid) };
    const started = performance.now();
    const deadline = Date.now() + timeoutMs;
    await operator.start();
    // Parsed once per write, outside the operator's path (the polling loop runs between reconciles).
    const completeness = new WeakMap<SecretWrite, boolean>();
    const complete = (w: SecretWrite): boolean => {
      let known = completeness.get(w);
      if (known === undefined) {
        const c = configCounts(w.text);
        known = c.agents === agentCount && c.policies === policyCount;
        completeness.set(w, known);
      }
      return known;
    };
    for (;;) {
      await operator.idle();
      const agents = caches.agents.list();
      const policies = caches.policies.list();
      const converged =
        client.secretWrites.some(complete) &&
        agents.length === agentCount &&
        policies.length === policyCount &&
        agents.every((a) => a.metadata.finalizers?.includes(FINALIZER) && readyAtGeneration(a)) &&
        policies.every(readyAtGeneration);
      if (converged && operator.queue.length === 0) break;
      if (Date.now() > deadline) {
        const notReady = agents.filter((a) => !readyAtGeneration(a)).length + policies.filter((p) => !readyAtGeneration(p)).length;
        throw new Error(`not converged within ${timeoutMs} ms: ${notReady} objects not Ready, ${client.secretWrites.length} config writes`);
      }
      await sleep(10);
    }
    const convergedAt = performance.now();
    const operatorCpu = process.cpuUsage(cpuBefore.operator);
    const cpu = {
      operator: (operatorCpu.user + operatorCpu.system) / 1e6,
      apiserver: cpuSeconds(api.apiserverPid) - cpuBefore.apiserver,
      etcd: cpuSeconds(api.etcdPid) - cpuBefore.etcd,
    };
    const workerSeconds: Counts = {};
    for (const value of (await metrics.reconcileSeconds.get()).values) {
      if (value.metricName?.endsWith('_sum')) bump(workerSeconds, String(value.labels.kind), Math.round(value.value * 1000) / 1000);
    }
    const reconcileSeconds = (convergedAt - started) / 1000;
    const secretWrite = client.secretWrites.find(complete) as SecretWrite;
    const byVerb = diff({ ...client.inner.requests }, before);
    const writes = diff({ ...client.calls }, callsBefore);
    const reconciles: Counts = {};
    for (const value of (await metrics.reconciles.get()).values) bump(reconciles, `${value.labels.kind}/${value.labels.result}`, value.value);
    if (retries > 0) reconciles.retried = retries;

    // The stored Secret, read back by someone else.
    const stored = await admin.get(Resources.secret, SYSTEM_NS, CONFIG_SECRET);
    const storedText = Buffer.from((stored?.data as Record<string, string> | undefined)?.[CONFIG_KEY] ?? '', 'base64').toString('utf8');
    const storedCounts = configCounts(storedText);
    if (storedCounts.agents !== agentCount || storedCounts.policies !== policyCount) {
      throw new Error(`stored config Secret lists ${storedCounts.agents} agents and ${storedCounts.policies} policies`);
    }

    // Incremental: one policy gains a subject.
    say('  incremental policy edit…');
    await sleep(500); // let any stray watch echo land before the next window opens
    await operator.idle();
    const marker = 'incremental@example.com';
    const target = policyObject(0, agentCount);
    const incBefore = { ...client.inner.requests };
    const incCallsBefore = { ...client.calls };
    const written = new Promise<SecretWrite>((resolve) => client.onSecretWrite((w) => w.text.includes(marker) && resolve(w)));
    const editAt = performance.now();
    const patched = await admin.mergePatch(Resources.accessPolicy, target.metadata.namespace, target.metadata.name ?? '', {
      spec: { subjects: [...((target.spec as { subjects: unknown[] }).subjects), { kind: 'User', name: marker }] },
    });
    const incrementalWrite = await Promise.race([
      written,
      sleep(30_000).then(() => {
        throw new Error('the policy edit never reached the config Secret');
      }),
    ]);
    const incrementalMs = incrementalWrite.atMs - editAt;
    for (;;) {
      await operator.idle();
      const p = caches.policies.get(`${target.metadata.namespace}/${target.metadata.name}`);
      if (p && p.metadata.generation === patched.metadata.generation && readyAtGeneration(p) && operator.queue.length === 0) break;
      if (Date.now() > deadline + 30_000) throw new Error('the edited policy never became Ready at its new generation');
      await sleep(10);
    }
    const incByVerb = diff({ ...client.inner.requests }, incBefore);
    const incCalls = diff({ ...client.calls }, incCallsBefore);
    const afterEdit = await admin.get(Resources.secret, SYSTEM_NS, CONFIG_SECRET);
    if (!Buffer.from((afterEdit?.data as Record<string, string> | undefined)?.[CONFIG_KEY] ?? '', 'base64').toString('utf8').includes(marker)) {
      throw new Error('the stored config Secret does not carry the policy edit');
    }

    const round = (x: number, digits: number): number => Math.round(x * 10 ** digits) / 10 ** digits;
    return {
      reconcile_seconds: round(reconcileSeconds, 2),
      reconcile_secret_seconds: round((secretWrite.atMs - started) / 1000, 2),
      reconcile_requests: sum(byVerb),
      reconcile_requests_by_verb: sorted(byVerb),
      reconcile_requests_initial: sorted(client.initial),
      reconcile_requests_writes: sorted(writes),
      reconcile_reconciles: sorted(reconciles),
      reconcile_worker_seconds: sorted(workerSeconds),
      reconcile_cpu_seconds: { operator: round(cpu.operator, 2), apiserver: round(cpu.apiserver, 2), etcd: round(cpu.etcd, 2) },
      reconcile_incremental_ms: round(incrementalMs, 1),
      reconcile_incremental_requests: sum(incByVerb),
      reconcile_incremental_requests_by_verb: sorted(incByVerb),
      reconcile_incremental_calls: sorted(incCalls),
      reconcile_objects: { agents: agentCount, policies: policyCount, namespaces: namespaces.length - 1, certificates },
      reconcile_setup_seconds: round(setupSeconds, 1),
    };
  } finally {
    await operator?.stop();
    await api.stop();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { values } = parseArgs({ options: { agents: { type: 'string' }, policies: { type: 'string' } } });
  measureReconcile({
    ...(values.agents ? { agents: Number(values.agents) } : {}),
    ...(values.policies ? { policies: Number(values.policies) } : {}),
  })
    .then((result) => {
      process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
      process.exit(0);
    })
    .catch((error: unknown) => {
      process.stderr.write(`reconcile bench failed: ${(error as Error).stack ?? String(error)}\n`);
      process.exit(1);
    });
}
