/**
 * The control loop against an in-memory KubeClient: a stale write (409 Conflict) on the finalizer patch is
 * retried through the work queue's per-key backoff, and the finalizer lands.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type KubeClient, KubeError, KubeErrorCode, type KubeObject, type ListOptions, type ResourceType, Resources, type WatchEventType, type WatchOptions } from '@narrowlink/kube';
import { generateSigningKeyPair } from '@narrowlink/protocol';
import { pino } from 'pino';
import { Operator } from './controller.ts';
import { FINALIZER } from './labels.ts';
import { createOperatorMetrics } from './metrics.ts';
import { makeAgent } from './reconcilers/test-fixtures.ts';

interface Call {
  verb: 'list' | 'watch' | 'get' | 'apply' | 'mergePatch' | 'create' | 'delete';
  plural: string;
  name?: string;
  body?: unknown;
  atMs: number;
}

function conflict(what: string): KubeError {
  return new KubeError(KubeErrorCode.API, `${what}: HTTP 409 Conflict: the object has been modified; please apply your changes to the latest version and try again`, {
    status: 409,
    reason: 'Conflict',
  });
}

function notFound(what: string): KubeError {
  return new KubeError(KubeErrorCode.API, `${what}: HTTP 404 NotFound`, { status: 404, reason: 'NotFound' });
}

function matchesSelector(labels: Record<string, string> | undefined, selector: string | undefined): boolean {
  if (!selector) return true;
  return selector.split(',').every((term) => {
    const [key, value] = term.split('=');
    return labels?.[key as string] === value;
  });
}

/**
 * Just enough of an API server: objects by resource and namespace/name, resourceVersions with the
 * precondition of a merge patch, watches fed by every write, status subresource applies. `conflicts` makes
 * the next N finalizer patches of a NarrowlinkAgent fail with 409 as if someone else had written first.
 */
class FakeKube implements KubeClient {
  readonly calls: Call[] = [];
  readonly #objects = new Map<string, KubeObject>();
  readonly #watchers = new Set<{ plural: string; onEvent: (type: WatchEventType, object: KubeObject) => void }>();
  #rv = 1;
  conflicts = 0;

  #key(type: ResourceType, namespace: string | undefined, name: string): string {
    return `${type.plural}/${namespace ?? ''}/${name}`;
  }

  #record(call: Omit<Call, 'atMs'>): void {
    this.calls.push({ ...call, atMs: performance.now() });
  }

  #store(type: ResourceType, object: KubeObject, event: WatchEventType): KubeObject {
    const stored = structuredClone({ ...object, metadata: { ...object.metadata, resourceVersion: String(++this.#rv) } });
    this.#objects.set(this.#key(type, stored.metadata.namespace, stored.metadata.name ?? ''), stored);
    for (const w of this.#watchers) if (w.plural === type.plural) w.onEvent(event, structuredClone(stored));
    return structuredClone(stored);
  }

  seed(type: ResourceType, object: KubeObject): void {
    this.#store(type, object, 'ADDED');
  }

  peek(type: ResourceType, namespace: string, name: string): KubeObject | undefined {
    return this.#objects.get(this.#key(type, namespace, name));
  }

  async list(type: ResourceType, options: ListOptions = {}): Promise<{ items: KubeObject[]; resourceVersion: string }> {
    this.#record({ verb: 'list', plural: type.plural });
    const items = [...this.#objects.entries()]
      .filter(([key]) => key.startsWith(`${type.plural}/`))
      .map(([, o]) => o)
      .filter((o) => !options.namespace || o.metadata.namespace === options.namespace)
      .filter((o) => matchesSelector(o.metadata.labels, options.labelSelector));
    return { items: structuredClone(items), resourceVersion: String(this.#rv) };
  }

  async watch(type: ResourceType, options: WatchOptions, onEvent: (type: WatchEventType, object: KubeObject) => void): Promise<void> {
    this.#record({ verb: 'watch', plural: type.plural });
    const watcher = {
      plural: type.plural,
      onEvent: (event: WatchEventType, object: KubeObject) => {
        if (matchesSelector(object.metadata.labels, options.labelSelector)) onEvent(event, object);
      },
    };
    this.#watchers.add(watcher);
    await new Promise<void>((resolve) => {
      if (options.signal?.aborted) resolve();
      options.signal?.addEventListener('abort', () => resolve(), { once: true });
    });
    this.#watchers.delete(watcher);
  }

  async get(type: ResourceType, namespace: string | undefined, name: string): Promise<KubeObject | undefined> {
    this.#record({ verb: 'get', plural: type.plural, name });
    const found = this.#objects.get(this.#key(type, namespace, name));
    return found === undefined ? undefined : structuredClone(found);
  }

  async apply(type: ResourceType, object: KubeObject, options: { fieldManager: string; subresource?: 'status' }): Promise<KubeObject> {
    this.#record({ verb: 'apply', plural: type.plural, name: object.metadata.name ?? '', body: object });
    const existing = this.#objects.get(this.#key(type, object.metadata.namespace, object.metadata.name ?? ''));
    if (options.subresource === 'status') {
      if (!existing) throw notFound(`apply ${type.plural}/${object.metadata.name}/status`);
      return this.#store(type, { ...existing, status: object.status }, 'MODIFIED');
    }
    const metadata = { ...existing?.metadata, ...object.metadata };
    return this.#store(type, { ...existing, ...object, metadata }, existing ? 'MODIFIED' : 'ADDED');
  }

  async mergePatch(type: ResourceType, namespace: string | undefined, name: string, patch: unknown): Promise<KubeObject> {
    this.#record({ verb: 'mergePatch', plural: type.plural, name, body: patch });
    const existing = this.#objects.get(this.#key(type, namespace, name));
    if (!existing) throw notFound(`PATCH ${type.plural}/${name}`);
    const meta = (patch as { metadata?: { resourceVersion?: string; finalizers?: string[] } }).metadata ?? {};
    if (type.plural === Resources.narrowlinkAgent.plural && meta.finalizers !== undefined && this.conflicts > 0) {
      this.conflicts--;
      throw conflict(`PATCH ${type.plural}/${name}`);
    }
    if (meta.resourceVersion !== undefined && meta.resourceVersion !== existing.metadata.resourceVersion) throw conflict(`PATCH ${type.plural}/${name}`);
    const { resourceVersion: _precondition, ...metadataPatch } = meta;
    return this.#store(type, { ...existing, metadata: { ...existing.metadata, ...metadataPatch } }, 'MODIFIED');
  }

  async create(type: ResourceType, object: KubeObject): Promise<KubeObject> {
    const name = object.metadata.name ?? `${object.metadata.generateName ?? 'x-'}${this.#rv}`;
    this.#record({ verb: 'create', plural: type.plural, name, body: object });
    if (this.#objects.has(this.#key(type, object.metadata.namespace, name))) throw conflict(`POST ${type.plural}/${name}`);
    return this.#store(type, { ...object, metadata: { ...object.metadata, name } }, 'ADDED');
  }

  async delete(type: ResourceType, namespace: string | undefined, name: string): Promise<boolean> {
    this.#record({ verb: 'delete', plural: type.plural, name });
    const key = this.#key(type, namespace, name);
    const existing = this.#objects.get(key);
    if (!existing) return false;
    this.#objects.delete(key);
    for (const w of this.#watchers) if (w.plural === type.plural) w.onEvent('DELETED', structuredClone(existing));
    return true;
  }
}

async function until(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('Operator control loop', () => {
  it('retries a key whose finalizer patch hit 409 (stale write) after the queue backoff, and the finalizer lands', async () => {
    const kube = new FakeKube();
    kube.seed(Resources.narrowlinkAgent, makeAgent('web', {}, { namespace: 'apps' }) as unknown as KubeObject);
    kube.conflicts = 1;
    const metrics = createOperatorMetrics({ defaultMetrics: false });
    const retryBaseMs = 100;
    const operator = new Operator({
      client: kube,
      log: pino({ level: 'silent' }),
      metrics,
      signingKey: await generateSigningKeyPair(),
      settings: { namespace: 'narrowlink-system', gatewayConfigSecret: 'narrowlink-gateway-config', allowCrossNamespacePolicies: false },
      retryBaseMs,
    });
    await operator.start();
    try {
      await until('the finalizer', () => kube.peek(Resources.narrowlinkAgent, 'apps', 'web')?.metadata.finalizers?.includes(FINALIZER) === true);
      const patches = kube.calls.filter((c) => c.verb === 'mergePatch' && c.plural === Resources.narrowlinkAgent.plural);
      assert.equal(patches.length, 2, 'one rejected attempt, one retry');
      const [first, second] = patches as [Call, Call];
      // The first retry of a key waits between half and all of retryBaseMs (jittered), never less.
      assert.ok(second.atMs - first.atMs >= retryBaseMs / 2 - 5, `retried after ${second.atMs - first.atMs} ms`);
      // The retry carried the resourceVersion precondition it read (the write is still guarded).
      const precondition = (second.body as { metadata: { resourceVersion?: string } }).metadata.resourceVersion;
      assert.ok(precondition !== undefined);

      // The finalizer's update event brings the agent back: it reaches Ready and the failure is forgotten.
      await until('agent Ready', () => {
        const status = kube.peek(Resources.narrowlinkAgent, 'apps', 'web')?.status as { conditions?: Array<{ type: string; status: string }> } | undefined;
        return status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;
      });
      await operator.idle();
      assert.equal(operator.queue.failures('agent/apps/web'), 0);
      const errors = (await metrics.reconciles.get()).values.find((v) => v.labels.kind === 'agent' && v.labels.result === 'error');
      assert.equal(errors?.value, 1);
    } finally {
      await operator.stop();
    }
  });

  it('keeps retrying while the conflicts last, with growing delays, and still converges', async () => {
    const kube = new FakeKube();
    kube.seed(Resources.narrowlinkAgent, makeAgent('api', {}, { namespace: 'apps' }) as unknown as KubeObject);
    kube.conflicts = 3;
    const operator = new Operator({
      client: kube,
      log: pino({ level: 'silent' }),
      signingKey: await generateSigningKeyPair(),
      settings: { namespace: 'narrowlink-system', gatewayConfigSecret: 'narrowlink-gateway-config', allowCrossNamespacePolicies: false },
      retryBaseMs: 20,
    });
    await operator.start();
    try {
      await until('the finalizer', () => kube.peek(Resources.narrowlinkAgent, 'apps', 'api')?.metadata.finalizers?.includes(FINALIZER) === true);
      const times = kube.calls.filter((c) => c.verb === 'mergePatch' && c.plural === Resources.narrowlinkAgent.plural).map((c) => c.atMs);
      assert.equal(times.length, 4);
      // Delays are drawn from [b/2, b] with b = 20, 40, 80 ms: the third wait is at least the first's ceiling.
      const gaps = times.slice(1).map((t, i) => t - (times[i] as number));
      assert.ok((gaps[2] as number) >= 40 - 5, `gaps ${gaps.map((g) => g.toFixed(0)).join(', ')} ms`);
    } finally {
      await operator.stop();
    }
  });
});
