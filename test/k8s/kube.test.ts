/**
 * The `kube/` workspace and the generated CRDs on a real kube-apiserver 1.20.2 (one server for this file):
 * (a) crds/*.yaml install, validate, default, have a status subresource, explain and print well;
 * (b) RestKubeClient verbs and their errors; (c) Informer across watch ends, apiserver kill -9 + restart and
 * 410 Gone; (d) LeaderElector with two replicas, a clean hand-over and a crashed (SIGKILLed) leader.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import {
  Informer,
  type InformerEvent,
  KubeError,
  KubeErrorCode,
  type KubeClient,
  type KubeObject,
  LeaderElector,
  type ListOptions,
  type ResourceType,
  Resources,
  RestKubeClient,
  type WatchEventType,
  type WatchOptions,
} from '@narrowlink/kube';
import { parse } from 'yaml';
import { startProcess, stopAll } from '../helpers/processes.ts';
import { type ApiServer, useApiServer } from './cluster.ts';
import { kubectlPath, toolsUnavailableReason } from './tools.ts';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..');
const electorScript = join(here, 'fixtures', 'elector.ts');

const FIELD_MANAGER = 'narrowlink-kube-test';
/** Status is written by a different manager, as the operator does (1.20 has no per-subresource managedFields). */
const STATUS_MANAGER = 'narrowlink-kube-test-status';
const API_VERSION = 'narrowlink.io/v1alpha1';
const CRD_FILES = ['narrowlink.io_narrowlinkagents.yaml', 'narrowlink.io_accesspolicies.yaml'] as const;
const configMaps: ResourceType = { group: '', version: 'v1', plural: 'configmaps', kind: 'ConfigMap', namespaced: true };
const quietLog = { info() {}, warn() {}, debug() {} };

interface Crd extends KubeObject {
  spec: { versions: Array<{ schema: { openAPIV3Schema: SchemaNode } }> };
}
interface SchemaNode {
  description?: string;
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
}

function readCrd(file: string): Crd {
  return parse(readFileSync(join(repoRoot, 'crds', file), 'utf8')) as Crd;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000, everyMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** The KubeError a promise rejects with (fails when it resolves or rejects with something else). */
async function kubeError(promise: Promise<unknown>): Promise<KubeError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof KubeError, `expected a KubeError, got ${String(error)}`);
    return error;
  }
  assert.fail('expected a KubeError, the request succeeded');
}

/**
 * A spec with at least one field the applier owns: on 1.20 an apply whose fields are all defaulted records no
 * managedFields, and the next apply then conflicts with "before-first-apply".
 */
const HTTP = { expose: [{ name: 'http', port: 8080 }] };

function agent(namespace: string, name: string, spec: Record<string, unknown>, labels?: Record<string, string>): KubeObject {
  return { apiVersion: API_VERSION, kind: 'NarrowlinkAgent', metadata: { name, namespace, ...(labels ? { labels } : {}) }, spec };
}

function policy(namespace: string, name: string, spec: Record<string, unknown>): KubeObject {
  return { apiVersion: API_VERSION, kind: 'AccessPolicy', metadata: { name, namespace }, spec };
}

function specOf(object: KubeObject | undefined): Record<string, unknown> {
  return (object?.spec ?? {}) as Record<string, unknown>;
}

function statusOf(object: KubeObject | undefined): Record<string, unknown> {
  return (object?.status ?? {}) as Record<string, unknown>;
}

/** RFC 3339 without fractions, as metav1.Time serialises. */
function rfc3339(ms = Date.now()): string {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
}

function condition(type: string, status: string): Record<string, unknown> {
  // Not '': this tier's 1.20 build (Go 1.19) rejects empty strings in custom resources as null
  // (kubernetes/kubernetes#99804, fixed in 1.21 by kube-openapi#230).
  return { type, status, lastTransitionTime: rfc3339(), reason: 'Observed', message: `${type} is ${status}` };
}

/** An informer that records `event name` strings. */
function recordingInformer(client: KubeClient, type: ResourceType, options: ListOptions & { watchTimeoutSeconds?: number } = {}) {
  const events: string[] = [];
  const informer = new Informer(client, type, {
    ...options,
    log: quietLog,
    resyncMs: 10 * 60_000,
    backoff: { baseMs: 100, maxMs: 1000 },
    onEvent(event: InformerEvent, object: KubeObject) {
      if (event !== 'resync') events.push(`${event} ${object.metadata.name}`);
    },
  });
  return { informer, events };
}

/**
 * Delegates to a real client, but list and watch calls wait while the gate is closed: the test decides when
 * the informer's next call reaches the server (e.g. only after the apiserver restarted).
 */
class GatedClient implements KubeClient {
  readonly #inner: KubeClient;
  #gate: Promise<void> | undefined;
  #open: () => void = () => {};
  /** Kinds of the calls waiting at the closed gate. */
  readonly waiting: Array<'list' | 'watch'> = [];

  constructor(inner: KubeClient) {
    this.#inner = inner;
  }

  close(): void {
    this.#gate = new Promise((resolve) => {
      this.#open = resolve;
    });
  }

  open(): void {
    this.#gate = undefined;
    this.#open();
  }

  async #pass(kind: 'list' | 'watch'): Promise<void> {
    const gate = this.#gate;
    if (!gate) return;
    this.waiting.push(kind);
    await gate;
    this.waiting.splice(this.waiting.indexOf(kind), 1);
  }

  async list(type: ResourceType, options?: ListOptions): Promise<{ items: KubeObject[]; resourceVersion: string }> {
    await this.#pass('list');
    return this.#inner.list(type, options);
  }
  async watch(type: ResourceType, options: WatchOptions, onEvent: (type: WatchEventType, object: KubeObject) => void): Promise<void> {
    await this.#pass('watch');
    return this.#inner.watch(type, options, onEvent);
  }
  get: KubeClient['get'] = (...args) => this.#inner.get(...args);
  apply: KubeClient['apply'] = (...args) => this.#inner.apply(...args);
  mergePatch: KubeClient['mergePatch'] = (...args) => this.#inner.mergePatch(...args);
  create: KubeClient['create'] = (...args) => this.#inner.create(...args);
  delete: KubeClient['delete'] = (...args) => this.#inner.delete(...args);
}

describe('kube/ on a real kube-apiserver 1.20', () => {
  const k8s = useApiServer();
  let clientPromise: Promise<RestKubeClient> | undefined;
  let crdsPromise: Promise<void> | undefined;
  const namespaces = new Set<string>();
  const stopOnExit: Array<{ stop(): unknown }> = [];

  after(async () => {
    for (const s of stopOnExit) await s.stop();
    await stopAll('SIGKILL');
  });

  /** The apiserver and an admin RestKubeClient, or undefined (test skipped) when the tier cannot run here. */
  async function setup(t: TestContext): Promise<{ api: ApiServer; client: RestKubeClient } | undefined> {
    const api = k8s.require(t);
    if (!api) return undefined;
    clientPromise ??= RestKubeClient.fromKubeConfig(api.kubeConfig(), { requestTimeoutMs: 10_000 });
    return { api, client: await clientPromise };
  }

  async function namespace(client: KubeClient, name: string): Promise<string> {
    if (!namespaces.has(name)) {
      await client.apply(Resources.namespace, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } }, { fieldManager: FIELD_MANAGER });
      namespaces.add(name);
    }
    return name;
  }

  /** Applies both generated CRDs (once for the file) and waits until they are Established. */
  function installCrds(client: KubeClient): Promise<void> {
    crdsPromise ??= (async () => {
      for (const file of CRD_FILES) {
        await client.apply(Resources.customResourceDefinition, readCrd(file), { fieldManager: FIELD_MANAGER });
      }
      for (const file of CRD_FILES) {
        const name = String(readCrd(file).metadata.name);
        await waitUntil(`CRD ${name} Established`, async () => {
          const crd = await client.get(Resources.customResourceDefinition, undefined, name);
          const conditions = (statusOf(crd).conditions ?? []) as Array<{ type: string; status: string }>;
          return conditions.some((c) => c.type === 'Established' && c.status === 'True');
        });
      }
    })();
    return crdsPromise;
  }

  async function kubectl(api: ApiServer, args: string[]): Promise<string> {
    const { stdout } = await run(kubectlPath(), ['--kubeconfig', api.kubeconfigPath, ...args], { timeout: 30_000 });
    return stdout;
  }

  function toolsOrSkip(t: TestContext): boolean {
    const reason = toolsUnavailableReason();
    if (reason) t.skip(`k8s tier: SKIPPED (${reason})`);
    return reason === undefined;
  }

  describe('(a) the generated CRDs', () => {
    it('both crds/*.yaml apply (server-side, one field manager) and become Established with their names', async (t) => {
      const env = await setup(t);
      if (!env) return;
      await installCrds(env.client);
      for (const [file, plural, shortName] of [
        [CRD_FILES[0], 'narrowlinkagents', 'nla'],
        [CRD_FILES[1], 'accesspolicies', 'nlap'],
      ] as const) {
        const stored = await env.client.get(Resources.customResourceDefinition, undefined, String(readCrd(file).metadata.name));
        const conditions = (statusOf(stored).conditions ?? []) as Array<{ type: string; status: string }>;
        assert.ok(conditions.some((c) => c.type === 'NamesAccepted' && c.status === 'True'), JSON.stringify(conditions));
        const accepted = statusOf(stored).acceptedNames as { plural?: string; shortNames?: string[] };
        assert.equal(accepted.plural, plural);
        assert.deepEqual(accepted.shortNames, [shortName]);
        const managers = ((stored?.metadata.managedFields ?? []) as Array<{ manager: string; operation: string }>).map((f) => `${f.manager}/${f.operation}`);
        assert.ok(managers.includes(`${FIELD_MANAGER}/Apply`), managers.join(','));
      }
    });

    it('accepts a valid NarrowlinkAgent and AccessPolicy and applies the schema defaults', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client } = env;
      await installCrds(client);
      const ns = await namespace(client, 'crd-valid');

      const created = await client.apply(
        Resources.narrowlinkAgent,
        agent(ns, 'web', {
          expose: [{ name: 'http', port: 8080 }, { name: 'metrics', port: 9090, host: 'metrics.internal' }],
          publish: [{ domain: 'web.example.com', port: 8080 }],
          issuerRef: { name: 'letsencrypt' },
        }),
        { fieldManager: FIELD_MANAGER },
      );
      assert.deepEqual(specOf(created), {
        expose: [
          { name: 'http', port: 8080, host: '127.0.0.1' },
          { name: 'metrics', port: 9090, host: 'metrics.internal' },
        ],
        publish: [{ domain: 'web.example.com', port: 8080, tls: 'Terminate' }],
        issuerRef: { name: 'letsencrypt', kind: 'Issuer', group: 'cert-manager.io' },
        mode: 'auto',
        external: false,
      });
      const minimal = await client.apply(Resources.narrowlinkAgent, agent(ns, 'minimal', {}), { fieldManager: FIELD_MANAGER });
      assert.deepEqual(specOf(minimal), { expose: [], mode: 'auto', external: false });

      const policySpec = {
        subjects: [
          { kind: 'User', name: 'alice@example.com' },
          { kind: 'Group', name: 'developers' },
          { kind: 'ServiceAccount', name: 'ci', namespace: 'build' },
        ],
        rules: [
          { action: 'Allow', agents: { names: ['web'] }, ports: [8080, '9000-9100'], paths: ['Relay'] },
          { action: 'Deny', agents: { selector: { matchLabels: { tier: 'db' } } }, hosts: ['*.internal'] },
        ],
        expiresAt: '2030-01-01T00:00:00Z',
      };
      const storedPolicy = await client.apply(Resources.accessPolicy, policy(ns, 'devs', policySpec), { fieldManager: FIELD_MANAGER });
      assert.deepEqual(specOf(storedPolicy), policySpec);
      assert.equal(storedPolicy.metadata.generation, 1);
    });

    it('rejects invalid objects with 422 and KubeError.fields naming the field', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client } = env;
      await installCrds(client);
      const ns = await namespace(client, 'crd-invalid');
      const okRule = { action: 'Allow', agents: { names: ['web'] } };
      // 1.20 names list items without an index (spec.expose.port); newer servers add it (spec.expose[0].port).
      const cases: Array<{ what: string; type: ResourceType; object: KubeObject; field: RegExp }> = [
        {
          what: 'port 70000',
          type: Resources.narrowlinkAgent,
          object: agent(ns, 'bad-port', { expose: [{ name: 'http', port: 70000 }] }),
          field: /^spec\.expose(\[0\])?\.port$/,
        },
        {
          what: 'port 0',
          type: Resources.narrowlinkAgent,
          object: agent(ns, 'zero-port', { expose: [{ name: 'http', port: 0 }] }),
          field: /^spec\.expose(\[0\])?\.port$/,
        },
        {
          what: 'a published domain that is not a DNS name',
          type: Resources.narrowlinkAgent,
          object: agent(ns, 'bad-domain', { expose: [{ name: 'http', port: 80 }], publish: [{ domain: 'Not_A.Domain', port: 80 }] }),
          field: /^spec\.publish(\[0\])?\.domain$/,
        },
        {
          what: 'an issuer name that is not a DNS subdomain',
          type: Resources.narrowlinkAgent,
          object: agent(ns, 'bad-issuer', { issuerRef: { name: 'Lets_Encrypt' } }),
          field: /^spec\.issuerRef\.name$/,
        },
        {
          what: 'a port name that is not an IANA service name',
          type: Resources.narrowlinkAgent,
          object: agent(ns, 'bad-port-name', { expose: [{ name: 'HTTP_8080', port: 80 }] }),
          field: /^spec\.expose(\[0\])?\.name$/,
        },
        {
          what: 'mode outside the enum',
          type: Resources.narrowlinkAgent,
          object: agent(ns, 'bad-mode', { mode: 'fast' }),
          field: /^spec\.mode$/,
        },
        {
          what: "rule action 'Maybe'",
          type: Resources.accessPolicy,
          object: policy(ns, 'bad-action', { subjects: [{ kind: 'User', name: 'alice' }], rules: [{ ...okRule, action: 'Maybe' }] }),
          field: /^spec\.rules(\[0\])?\.action$/,
        },
        {
          what: 'empty subjects',
          type: Resources.accessPolicy,
          object: policy(ns, 'no-subjects', { subjects: [], rules: [okRule] }),
          field: /^spec\.subjects$/,
        },
        {
          what: 'a subject kind outside the enum',
          type: Resources.accessPolicy,
          object: policy(ns, 'bad-kind', { subjects: [{ kind: 'Robot', name: 'r2' }], rules: [okRule] }),
          field: /^spec\.subjects(\[0\])?\.kind$/,
        },
      ];
      for (const c of cases) {
        for (const verb of ['create', 'apply'] as const) {
          const request =
            verb === 'create' ? client.create(c.type, c.object, { fieldManager: FIELD_MANAGER }) : client.apply(c.type, c.object, { fieldManager: FIELD_MANAGER });
          const error = await kubeError(request);
          assert.equal(error.status, 422, `${c.what} (${verb}): ${error.message}`);
          assert.equal(error.reason, 'Invalid', c.what);
          assert.equal(error.code, KubeErrorCode.API);
          assert.equal(error.fields.length, 1, `${c.what} (${verb}): ${JSON.stringify(error.fields)}`);
          assert.match(error.fields[0] ?? '', c.field, `${c.what} (${verb}): ${error.message}`);
        }
        assert.equal(await client.get(c.type, ns, String(c.object.metadata.name)), undefined, `${c.what} was stored`);
      }
    });

    it('has a status subresource: status applies under its own manager, spec changes through it are ignored', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client } = env;
      await installCrds(client);
      const ns = await namespace(client, 'crd-status');
      const created = await client.apply(Resources.narrowlinkAgent, agent(ns, 'web', { expose: [{ name: 'http', port: 8080 }] }), {
        fieldManager: FIELD_MANAGER,
      });
      assert.equal(created.metadata.generation, 1);

      const status = {
        conditions: [condition('Ready', 'True'), condition('Connected', 'True')],
        observedGeneration: 1,
        connectedInstances: 2,
        natType: 'EndpointIndependent',
      };
      const applied = await client.apply(
        Resources.narrowlinkAgent,
        { apiVersion: API_VERSION, kind: 'NarrowlinkAgent', metadata: { name: 'web', namespace: ns }, status },
        { fieldManager: STATUS_MANAGER, subresource: 'status' },
      );
      assert.deepEqual(statusOf(applied), status);
      assert.equal(specOf(applied).mode, 'auto');
      assert.equal(applied.metadata.generation, 1, 'a status write bumped the generation');

      // A spec change sent to /status (forced, so field ownership cannot refuse it) is ignored.
      const sneaky = await client.apply(
        Resources.narrowlinkAgent,
        { ...agent(ns, 'web', { mode: 'relay', expose: [{ name: 'http', port: 1 }] }), status: { ...status, natType: 'Symmetric' } },
        { fieldManager: STATUS_MANAGER, subresource: 'status', force: true },
      );
      assert.equal(statusOf(sneaky).natType, 'Symmetric');
      const stored = await client.get(Resources.narrowlinkAgent, ns, 'web');
      assert.equal(specOf(stored).mode, 'auto');
      assert.deepEqual(specOf(stored).expose, [{ name: 'http', port: 8080, host: '127.0.0.1' }]);
      assert.equal(stored?.metadata.generation, 1);

      // A merge patch on /status with a spec change: same.
      await client.mergePatch(Resources.narrowlinkAgent, ns, 'web', { spec: { mode: 'direct' }, status: { connectedInstances: 3 } }, { subresource: 'status' });
      const patched = await client.get(Resources.narrowlinkAgent, ns, 'web');
      assert.equal(specOf(patched).mode, 'auto');
      assert.equal(statusOf(patched).connectedInstances, 3);

      // And status sent to the main resource is dropped.
      const mainPatched = await client.mergePatch(Resources.narrowlinkAgent, ns, 'web', { status: { natType: 'Ignored' } });
      assert.equal(statusOf(mainPatched).natType, 'Symmetric');
      assert.equal(mainPatched.metadata.generation, 1);

      // Invalid status is validated too.
      const invalid = await kubeError(
        client.apply(
          Resources.narrowlinkAgent,
          { apiVersion: API_VERSION, kind: 'NarrowlinkAgent', metadata: { name: 'web', namespace: ns }, status: { ...status, connectedInstances: -1 } },
          // Forced: the merge patches above made their manager own connectedInstances.
          { fieldManager: STATUS_MANAGER, subresource: 'status', force: true },
        ),
      );
      assert.equal(invalid.status, 422);
      assert.deepEqual(invalid.fields, ['status.connectedInstances']);
    });

    it('kubectl explain narrowlinkagent.spec.expose prints the field descriptions', async (t) => {
      const env = await setup(t);
      if (!env || !toolsOrSkip(t)) return;
      await installCrds(env.client);
      const schema = readCrd(CRD_FILES[0]).spec.versions[0]?.schema.openAPIV3Schema;
      const expose = schema?.properties?.spec?.properties?.expose;
      const port = expose?.items?.properties?.port?.description;
      assert.ok(expose?.description && port, 'the CRD source lost its descriptions');

      // The published OpenAPI picks a new CRD up asynchronously.
      let text = '';
      await waitUntil(
        'kubectl explain to know the CRD',
        async () => {
          try {
            text = (await kubectl(env.api, ['explain', 'narrowlinkagent.spec.expose'])).replace(/\s+/g, ' ');
            return text.includes(expose.description ?? '');
          } catch {
            return false;
          }
        },
        30_000,
        500,
      );
      assert.match(text, /KIND: NarrowlinkAgent/);
      assert.match(text, /VERSION: narrowlink\.io\/v1alpha1/);
      assert.ok(text.includes(port), text);
      assert.match(text, /FIELDS: host <string>/);
      assert.match(text, /name <string> -required-/);
      assert.match(text, /port <integer> -required-/);
    });

    it('kubectl get nla / nlap shows the printer columns', async (t) => {
      const env = await setup(t);
      if (!env || !toolsOrSkip(t)) return;
      const { client, api } = env;
      await installCrds(client);
      const ns = await namespace(client, 'crd-printer');
      await client.apply(Resources.narrowlinkAgent, agent(ns, 'web', { expose: [{ name: 'http', port: 8080 }] }), { fieldManager: FIELD_MANAGER });
      await client.apply(
        Resources.narrowlinkAgent,
        {
          apiVersion: API_VERSION,
          kind: 'NarrowlinkAgent',
          metadata: { name: 'web', namespace: ns },
          status: { conditions: [condition('Ready', 'True'), condition('Connected', 'False')], connectedInstances: 2, natType: 'EndpointIndependent', directPaths: 3 },
        },
        { fieldManager: STATUS_MANAGER, subresource: 'status' },
      );
      await client.apply(
        Resources.accessPolicy,
        policy(ns, 'devs', {
          subjects: [
            { kind: 'User', name: 'alice' },
            { kind: 'Group', name: 'developers' },
          ],
          rules: [
            { action: 'Allow', agents: { names: ['web'] } },
            { action: 'Deny', agents: { names: ['*'] } },
          ],
        }),
        { fieldManager: FIELD_MANAGER },
      );

      const table = (out: string) =>
        out
          .trim()
          .split('\n')
          .map((line) => line.trim().split(/\s+/));
      const agents = table(await kubectl(api, ['get', 'nla', '-n', ns]));
      assert.deepEqual(agents[0], ['NAME', 'READY', 'CONNECTED', 'INSTANCES', 'NAT', 'DIRECT', 'AGE']);
      assert.deepEqual(agents[1]?.slice(0, 6), ['web', 'True', 'False', '2', 'EndpointIndependent', '3']);
      assert.match(agents[1]?.[6] ?? '', /^\d+s$/);
      assert.equal(agents.length, 2);

      const policies = table(await kubectl(api, ['get', 'nlap', '-n', ns]));
      assert.deepEqual(policies[0], ['NAME', 'SUBJECTS', 'RULES', 'AGE']);
      // The 1.20 server-side table printer shows only the first match of a [*] column path.
      assert.deepEqual(policies[1]?.slice(0, 3), ['devs', 'alice', 'Allow']);
      assert.match(policies[1]?.[3] ?? '', /^\d+s$/);

      // The category groups both kinds.
      const all = await kubectl(api, ['get', 'narrowlink', '-n', ns, '-o', 'name']);
      assert.deepEqual(all.trim().split('\n').sort(), ['accesspolicy.narrowlink.io/devs', 'narrowlinkagent.narrowlink.io/web']);
    });
  });

  describe('(b) RestKubeClient', () => {
    it('apply creates, then updates (generation bumps only on a spec change); create records its field manager', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client } = env;
      await installCrds(client);
      const ns = await namespace(client, 'client-apply');
      const desired = (port: number) => agent(ns, 'web', { expose: [{ name: 'http', port }] });

      const created = await client.apply(Resources.narrowlinkAgent, desired(8080), { fieldManager: FIELD_MANAGER });
      assert.equal(created.metadata.generation, 1);
      assert.equal(created.apiVersion, API_VERSION);
      const managers = (o: KubeObject) => ((o.metadata.managedFields ?? []) as Array<{ manager: string; operation: string }>).map((f) => `${f.manager}/${f.operation}`);
      assert.deepEqual(managers(created), [`${FIELD_MANAGER}/Apply`]);

      const same = await client.apply(Resources.narrowlinkAgent, desired(8080), { fieldManager: FIELD_MANAGER });
      assert.equal(same.metadata.generation, 1);
      assert.equal(same.metadata.resourceVersion, created.metadata.resourceVersion, 'an identical apply wrote');

      const updated = await client.apply(Resources.narrowlinkAgent, desired(9090), { fieldManager: FIELD_MANAGER });
      assert.equal(updated.metadata.generation, 2);
      assert.notEqual(updated.metadata.resourceVersion, created.metadata.resourceVersion);
      assert.deepEqual(specOf(await client.get(Resources.narrowlinkAgent, ns, 'web')).expose, [{ name: 'http', port: 9090, host: '127.0.0.1' }]);

      // A dry run validates and answers without storing.
      const dry = await client.apply(Resources.narrowlinkAgent, desired(7070), { fieldManager: FIELD_MANAGER, dryRun: true });
      assert.deepEqual(specOf(dry).expose, [{ name: 'http', port: 7070, host: '127.0.0.1' }]);
      assert.equal((await client.get(Resources.narrowlinkAgent, ns, 'web'))?.metadata.generation, 2);

      // Another manager applying an owned field conflicts (409); force takes it over.
      const conflict = await kubeError(client.apply(Resources.narrowlinkAgent, desired(6060), { fieldManager: 'someone-else' }));
      assert.equal(conflict.conflict, true);
      const forced = await client.apply(Resources.narrowlinkAgent, desired(6060), { fieldManager: 'someone-else', force: true });
      assert.equal(forced.metadata.generation, 3);

      const made = await client.create(configMaps, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'made', namespace: ns }, data: { a: '1' } }, { fieldManager: FIELD_MANAGER });
      assert.deepEqual(managers(made), [`${FIELD_MANAGER}/Update`]);
      const again = await kubeError(client.create(configMaps, { metadata: { name: 'made', namespace: ns } }));
      assert.equal(again.status, 409);
      assert.equal(again.reason, 'AlreadyExists');
    });

    it('a merge patch with a stale metadata.resourceVersion gets 409 (KubeError.conflict)', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client } = env;
      await installCrds(client);
      const ns = await namespace(client, 'client-conflict');
      const first = await client.apply(Resources.narrowlinkAgent, agent(ns, 'web', {}), { fieldManager: FIELD_MANAGER });
      const staleVersion = first.metadata.resourceVersion;

      const second = await client.mergePatch(Resources.narrowlinkAgent, ns, 'web', { metadata: { resourceVersion: staleVersion }, spec: { mode: 'relay' } });
      assert.equal(specOf(second).mode, 'relay');
      assert.notEqual(second.metadata.resourceVersion, staleVersion);

      const error = await kubeError(client.mergePatch(Resources.narrowlinkAgent, ns, 'web', { metadata: { resourceVersion: staleVersion }, spec: { mode: 'direct' } }));
      assert.equal(error.conflict, true);
      assert.equal(error.status, 409);
      assert.equal(error.reason, 'Conflict');
      assert.equal(error.code, KubeErrorCode.API);
      assert.equal(specOf(await client.get(Resources.narrowlinkAgent, ns, 'web')).mode, 'relay');

      // Without the precondition the patch goes through (last writer wins).
      await client.mergePatch(Resources.narrowlinkAgent, ns, 'web', { spec: { mode: 'direct' } });
      assert.equal(specOf(await client.get(Resources.narrowlinkAgent, ns, 'web')).mode, 'direct');

      // A patch of a missing object is a 404, not a create.
      const missing = await kubeError(client.mergePatch(Resources.narrowlinkAgent, ns, 'nobody', { spec: { mode: 'relay' } }));
      assert.equal(missing.notFound, true);
    });

    it('get answers undefined and delete false for a missing object; delete honours a uid precondition', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client } = env;
      await installCrds(client);
      const ns = await namespace(client, 'client-delete');
      assert.equal(await client.get(Resources.narrowlinkAgent, ns, 'ghost'), undefined);
      assert.equal(await client.delete(Resources.narrowlinkAgent, ns, 'ghost'), false);
      assert.equal(await client.delete(Resources.secret, 'no-such-namespace', 'ghost'), false);

      const made = await client.apply(Resources.narrowlinkAgent, agent(ns, 'doomed', {}), { fieldManager: FIELD_MANAGER });
      const wrongUid = await kubeError(client.delete(Resources.narrowlinkAgent, ns, 'doomed', { uid: '00000000-0000-0000-0000-000000000000' }));
      assert.equal(wrongUid.conflict, true);
      assert.ok(await client.get(Resources.narrowlinkAgent, ns, 'doomed'));

      assert.equal(await client.delete(Resources.narrowlinkAgent, ns, 'doomed', { uid: made.metadata.uid as string }), true);
      assert.equal(await client.get(Resources.narrowlinkAgent, ns, 'doomed'), undefined);
      assert.equal(await client.delete(Resources.narrowlinkAgent, ns, 'doomed'), false);
    });

    it('list filters by labelSelector, per namespace or across all, and fills in apiVersion/kind', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client } = env;
      await installCrds(client);
      const ns = await namespace(client, 'client-list');
      const other = await namespace(client, 'client-list-2');
      for (const [n, name, tier] of [
        [ns, 'a', 'web'],
        [ns, 'b', 'web'],
        [ns, 'c', 'db'],
        [other, 'd', 'web'],
      ] as const) {
        await client.apply(Resources.narrowlinkAgent, agent(n, name, {}, { tier, suite: 'client-list' }), { fieldManager: FIELD_MANAGER });
      }
      const names = (items: KubeObject[]) => items.map((o) => `${o.metadata.namespace}/${o.metadata.name}`).sort();

      const web = await client.list(Resources.narrowlinkAgent, { namespace: ns, labelSelector: 'tier=web' });
      assert.deepEqual(names(web.items), [`${ns}/a`, `${ns}/b`]);
      assert.match(web.resourceVersion, /^\d+$/);
      for (const item of web.items) {
        assert.equal(item.apiVersion, API_VERSION);
        assert.equal(item.kind, 'NarrowlinkAgent');
      }
      assert.deepEqual(names((await client.list(Resources.narrowlinkAgent, { namespace: ns, labelSelector: 'tier!=web' })).items), [`${ns}/c`]);
      assert.deepEqual(names((await client.list(Resources.narrowlinkAgent, { labelSelector: 'suite=client-list,tier in (web)' })).items), [
        `${ns}/a`,
        `${ns}/b`,
        `${other}/d`,
      ].sort());
      assert.deepEqual(names((await client.list(Resources.narrowlinkAgent, { namespace: ns, fieldSelector: 'metadata.name=c' })).items), [`${ns}/c`]);
      assert.deepEqual((await client.list(Resources.narrowlinkAgent, { labelSelector: 'tier=nothing' })).items, []);
    });
  });

  describe('(c) Informer on the real server', () => {
    it('sees add, update and delete', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client } = env;
      await installCrds(client);
      const ns = await namespace(client, 'informer-basic');
      await client.apply(Resources.narrowlinkAgent, agent(ns, 'existing', {}), { fieldManager: FIELD_MANAGER });
      const { informer, events } = recordingInformer(client, Resources.narrowlinkAgent, { namespace: ns });
      stopOnExit.push(informer);
      informer.start();
      await informer.waitForSync();
      assert.deepEqual(events, ['added existing']);

      await client.apply(Resources.narrowlinkAgent, agent(ns, 'web', HTTP), { fieldManager: FIELD_MANAGER });
      await waitUntil('added web', () => events.includes('added web'));
      await client.apply(Resources.narrowlinkAgent, agent(ns, 'web', { ...HTTP, mode: 'relay' }), { fieldManager: FIELD_MANAGER });
      await waitUntil('updated web', () => events.includes('updated web'));
      assert.equal(specOf(informer.get(`${ns}/web`)).mode, 'relay');
      assert.equal(informer.get(`${ns}/web`)?.metadata.generation, 2);
      await client.delete(Resources.narrowlinkAgent, ns, 'web');
      await waitUntil('deleted web', () => events.includes('deleted web'));
      assert.equal(informer.get(`${ns}/web`), undefined);
      assert.deepEqual(events, ['added existing', 'added web', 'updated web', 'deleted web']);
      assert.deepEqual(informer.stats, { lists: 1, watches: 1, gone: 0, errors: 0 });
      informer.stop();
    });

    it('a watch the server ends (timeoutSeconds) resumes without a list and misses nothing', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client } = env;
      await installCrds(client);
      const ns = await namespace(client, 'informer-timeout');
      const { informer, events } = recordingInformer(client, Resources.narrowlinkAgent, { namespace: ns, watchTimeoutSeconds: 1 });
      stopOnExit.push(informer);
      informer.start();
      await informer.waitForSync();
      for (let i = 0; i < 4; i++) {
        await client.apply(Resources.narrowlinkAgent, agent(ns, `a${i}`, {}), { fieldManager: FIELD_MANAGER });
        await sleep(700);
      }
      await waitUntil('4 adds', () => events.length === 4);
      assert.deepEqual(events, ['added a0', 'added a1', 'added a2', 'added a3']);
      assert.ok(informer.stats.watches >= 3, JSON.stringify(informer.stats));
      assert.equal(informer.stats.lists, 1);
      assert.equal(informer.stats.errors, 0);
      informer.stop();
    });

    it('recovers from kill -9 + restart of the apiserver (watch error → re-list) and keeps seeing changes', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client, api } = env;
      await installCrds(client);
      const ns = await namespace(client, 'informer-restart');
      const { informer, events } = recordingInformer(client, Resources.narrowlinkAgent, { namespace: ns });
      stopOnExit.push(informer);
      informer.start();
      await informer.waitForSync();
      await client.apply(Resources.narrowlinkAgent, agent(ns, 'before', {}), { fieldManager: FIELD_MANAGER });
      await waitUntil('added before', () => events.includes('added before'));

      await api.restart();
      await client.apply(Resources.narrowlinkAgent, agent(ns, 'after', {}), { fieldManager: FIELD_MANAGER });
      await waitUntil('added after (informer recovered)', () => events.includes('added after'), 30_000);
      await client.delete(Resources.narrowlinkAgent, ns, 'before');
      await waitUntil('deleted before', () => events.includes('deleted before'));

      // The broken watch was an error (not a clean end), so the informer re-listed.
      assert.ok(informer.stats.errors >= 1, JSON.stringify(informer.stats));
      assert.ok(informer.stats.lists >= 2, JSON.stringify(informer.stats));
      assert.deepEqual(
        informer.list().map((o) => o.metadata.name),
        ['after'],
      );
      informer.stop();
    });

    it('a watch resumed from a resourceVersion older than the restarted watch cache gets 410 → re-list, which repairs missed changes', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client, api } = env;
      await installCrds(client);
      const ns = await namespace(client, 'informer-gone');
      const fillers = await namespace(client, 'informer-gone-fillers');
      await client.apply(Resources.narrowlinkAgent, agent(ns, 'vanishes', {}), { fieldManager: FIELD_MANAGER });
      await client.apply(Resources.narrowlinkAgent, agent(ns, 'changes', HTTP), { fieldManager: FIELD_MANAGER });
      const gated = new GatedClient(client);
      // Watches end every second, so the informer's next call is a plain watch from its last resourceVersion.
      const { informer, events } = recordingInformer(gated, Resources.narrowlinkAgent, { namespace: ns, watchTimeoutSeconds: 1 });
      stopOnExit.push(informer);
      informer.start();
      await informer.waitForSync();
      events.length = 0;

      gated.close();
      await waitUntil('the informer to wait at the gate', () => gated.waiting.length === 1, 10_000);
      assert.deepEqual(gated.waiting, ['watch']);
      const before = { ...informer.stats };

      // Many writes elsewhere move etcd on, so the restarted watch cache starts after the informer's version.
      for (let i = 0; i < 20; i++) {
        await client.apply(configMaps, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: `filler-${i}`, namespace: fillers } }, { fieldManager: FIELD_MANAGER });
      }
      await api.restart();
      // Changes the informer cannot see: it only learns about them from the re-list.
      await client.delete(Resources.narrowlinkAgent, ns, 'vanishes');
      await client.apply(Resources.narrowlinkAgent, agent(ns, 'changes', { ...HTTP, mode: 'relay' }), { fieldManager: FIELD_MANAGER });
      await client.apply(Resources.narrowlinkAgent, agent(ns, 'appears', {}), { fieldManager: FIELD_MANAGER });
      gated.open();

      await waitUntil('the re-list', () => events.length === 3, 15_000);
      assert.equal(informer.stats.gone, before.gone + 1, JSON.stringify(informer.stats));
      assert.equal(informer.stats.errors, before.errors, JSON.stringify(informer.stats));
      assert.equal(informer.stats.lists, before.lists + 1);
      assert.deepEqual(events.slice().sort(), ['added appears', 'deleted vanishes', 'updated changes']);
      assert.equal(specOf(informer.get(`${ns}/changes`)).mode, 'relay');

      // And it watches again.
      await client.apply(Resources.narrowlinkAgent, agent(ns, 'later', {}), { fieldManager: FIELD_MANAGER });
      await waitUntil('added later', () => events.includes('added later'));
      informer.stop();
    });
  });

  describe('(d) LeaderElector on a Lease', () => {
    const timing = { leaseDurationSeconds: 2, retryPeriodMs: 200, renewDeadlineMs: 1000 };

    interface LeaseSample {
      holder: string | undefined;
      renewMs: number;
      acquireMs: number;
      transitions: number;
    }

    /** Records every version of one Lease (from a watch, so no intermediate state is missed). */
    function leaseHistory(client: KubeClient, namespaceName: string, name: string) {
      const history: LeaseSample[] = [];
      const informer = new Informer(client, Resources.lease, {
        namespace: namespaceName,
        fieldSelector: `metadata.name=${name}`,
        log: quietLog,
        onEvent(event, object) {
          if (event === 'resync' || event === 'deleted') return;
          const spec = (object.spec ?? {}) as { holderIdentity?: string; renewTime?: string; acquireTime?: string; leaseTransitions?: number };
          history.push({
            holder: spec.holderIdentity,
            renewMs: spec.renewTime ? Date.parse(spec.renewTime) : Number.NaN,
            acquireMs: spec.acquireTime ? Date.parse(spec.acquireTime) : Number.NaN,
            transitions: spec.leaseTransitions ?? 0,
          });
        },
      });
      return { history, informer };
    }

    /** Every change of holder between two identities happened only after the previous holder's lease expired. */
    function assertNoOverlap(history: LeaseSample[]): void {
      let last: LeaseSample | undefined;
      for (const sample of history) {
        if (last?.holder && sample.holder && sample.holder !== last.holder) {
          assert.ok(
            sample.acquireMs >= last.renewMs + timing.leaseDurationSeconds * 1000,
            `${sample.holder} acquired at ${sample.acquireMs}, ${last.holder} renewed at ${last.renewMs}: overlap`,
          );
        }
        if (sample.holder) last = sample;
        else last = undefined; // released: anyone may take it at once
      }
    }

    function elector(client: KubeClient, name: string, identity: string) {
      const changes: Array<{ leading: boolean; atMs: number }> = [];
      const e = new LeaderElector(client, {
        namespace: 'default',
        name,
        identity,
        ...timing,
        log: quietLog,
        onStartedLeading: () => changes.push({ leading: true, atMs: Date.now() }),
        onStoppedLeading: () => changes.push({ leading: false, atMs: Date.now() }),
      });
      stopOnExit.push(e);
      return { e, changes };
    }

    it('two electors: exactly one leads at every sample over 3 s; stop() releases and the other leads within 1 s', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client } = env;
      const { history, informer } = leaseHistory(client, 'default', 'pair');
      stopOnExit.push(informer);
      informer.start();
      await informer.waitForSync();
      const a = elector(client, 'pair', 'a');
      const b = elector(client, 'pair', 'b');
      a.e.start();
      b.e.start();
      await waitUntil('a leader', () => a.e.leading || b.e.leading, 5000, 10);

      const end = Date.now() + 3000;
      let samples = 0;
      while (Date.now() < end) {
        assert.equal(Number(a.e.leading) + Number(b.e.leading), 1, `sample ${samples}: a=${a.e.leading} b=${b.e.leading}`);
        samples++;
        await sleep(25);
      }
      assert.ok(samples > 50);
      const [leader, standby] = a.e.leading ? [a, b] : [b, a];
      assert.deepEqual(
        leader.changes.map((c) => c.leading),
        [true],
      );
      assert.equal(standby.changes.length, 0);
      const lease = await client.get(Resources.lease, 'default', 'pair');
      assert.equal((lease?.spec as { holderIdentity?: string } | undefined)?.holderIdentity, leader === a ? 'a' : 'b');

      const stoppedAt = Date.now();
      await leader.e.stop();
      assert.equal(leader.e.leading, false);
      await waitUntil('the standby to lead', () => standby.e.leading, 3000, 10);
      const handover = Date.now() - stoppedAt;
      assert.ok(handover < 1000, `hand-over took ${handover} ms`);
      assert.deepEqual(
        leader.changes.map((c) => c.leading),
        [true, false],
      );
      // The standby started leading only after the old leader had stepped down.
      assert.ok((standby.changes[0]?.atMs ?? 0) >= (leader.changes[1]?.atMs ?? Number.POSITIVE_INFINITY));

      await sleep(500);
      await standby.e.stop();
      informer.stop();
      assert.ok(history.some((s) => s.holder === undefined), 'no release in the lease history');
      assertNoOverlap(history);
    });

    it('a SIGKILLed leader (no release) is replaced once its lease expires, never overlapping', async (t) => {
      const env = await setup(t);
      if (!env) return;
      const { client, api } = env;
      const { history, informer } = leaseHistory(client, 'default', 'crash');
      stopOnExit.push(informer);
      informer.start();
      await informer.waitForSync();

      const crasher = await startProcess('elector', [
        electorScript,
        '--kubeconfig',
        api.kubeconfigPath,
        '--namespace',
        'default',
        '--name',
        'crash',
        '--identity',
        'crasher',
        '--lease-seconds',
        String(timing.leaseDurationSeconds),
        '--retry-ms',
        String(timing.retryPeriodMs),
        '--renew-deadline-ms',
        String(timing.renewDeadlineMs),
      ], { readyEvent: 'started' });
      await crasher.waitFor((line) => line.event === 'leading' && line.leading === true, 10_000);

      const survivor = elector(client, 'crash', 'survivor');
      survivor.e.start();
      // While the crasher renews, the survivor never leads.
      for (let i = 0; i < 40; i++) {
        assert.equal(survivor.e.leading, false);
        await sleep(25);
      }

      const killedAt = Date.now();
      await crasher.kill9();
      await waitUntil('the survivor to lead', () => survivor.e.leading, 10_000, 10);
      const takeover = Date.now() - killedAt;
      // The crasher renewed at most one retry period before it died; the lease is then valid for 2 s more.
      const earliest = timing.leaseDurationSeconds * 1000 - timing.retryPeriodMs - 100;
      const latest = timing.leaseDurationSeconds * 1000 + timing.retryPeriodMs + 1000;
      assert.ok(takeover >= earliest && takeover <= latest, `took over after ${takeover} ms, expected ${earliest}..${latest}`);

      // The crasher never stepped down by itself: it led until it was killed.
      const crasherChanges = crasher.lines.filter((l) => l.event === 'leading').map((l) => l.leading);
      assert.deepEqual(crasherChanges, [true]);
      assert.ok((survivor.changes[0]?.atMs ?? 0) > killedAt);

      await waitUntil('the lease history to show the survivor', () => history.some((s) => s.holder === 'survivor'), 5000);
      informer.stop();
      const holders = history.map((s) => s.holder).filter((h, i, all) => h !== all[i - 1]);
      assert.deepEqual(holders, ['crasher', 'survivor']);
      const lastCrasher = history.filter((s) => s.holder === 'crasher').at(-1);
      const firstSurvivor = history.find((s) => s.holder === 'survivor');
      assert.ok(lastCrasher && firstSurvivor);
      assert.ok(lastCrasher.renewMs <= killedAt, 'the crasher renewed after it was killed');
      assert.equal(firstSurvivor.transitions, lastCrasher.transitions + 1);
      assertNoOverlap(history);
      await survivor.e.stop();
    });
  });
});
