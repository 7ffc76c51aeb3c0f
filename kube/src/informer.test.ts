import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';
import type { KubeClient, KubeObject, ListOptions, ResourceType, WatchEventType, WatchOptions } from './client.ts';
import { Resources } from './client.ts';
import { KubeError, KubeErrorCode } from './errors.ts';
import { Informer, type InformerEvent, type InformerOptions } from './informer.ts';

/** The largest value below 1: backoffDelayMs then returns exactly base * 2^failures. */
const high = () => 1 - Number.EPSILON;

/** Lets every pending promise continuation run (setImmediate is not mocked here). */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

interface ListCall {
  options: ListOptions | undefined;
  respond(items: KubeObject[], resourceVersion: string): void;
  fail(error: Error): void;
}

interface WatchCall {
  options: WatchOptions;
  emit(type: WatchEventType, object: KubeObject): void;
  /** The server ends the stream normally (watch timeout). */
  end(): void;
  fail(error: Error): void;
  /** True once the stream ended for any reason (including the informer aborting it). */
  readonly closed: boolean;
}

/**
 * A KubeClient whose list and watch calls the test answers one by one: `await fake.next()` returns the next
 * call (in order), which the test then responds to, streams events into, ends or fails.
 */
class ScriptedClient implements KubeClient {
  readonly calls: Array<{ kind: 'list'; call: ListCall } | { kind: 'watch'; call: WatchCall }> = [];
  #taken = 0;
  #waiter: (() => void) | undefined;

  #push(entry: { kind: 'list'; call: ListCall } | { kind: 'watch'; call: WatchCall }): void {
    this.calls.push(entry);
    this.#waiter?.();
    this.#waiter = undefined;
  }

  /** The next call the informer made (waits for it). */
  async next(): Promise<{ kind: 'list'; call: ListCall } | { kind: 'watch'; call: WatchCall }> {
    while (this.calls.length <= this.#taken) {
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
      });
    }
    return this.calls[this.#taken++] as { kind: 'list'; call: ListCall } | { kind: 'watch'; call: WatchCall };
  }

  async nextList(): Promise<ListCall> {
    const entry = await this.next();
    assert.equal(entry.kind, 'list', `expected a list, the informer made a ${entry.kind}`);
    return entry.call as ListCall;
  }

  async nextWatch(): Promise<WatchCall> {
    const entry = await this.next();
    assert.equal(entry.kind, 'watch', `expected a watch, the informer made a ${entry.kind}`);
    return entry.call as WatchCall;
  }

  /** Calls made but not yet taken with next(). */
  get pending(): number {
    return this.calls.length - this.#taken;
  }

  list(_type: ResourceType, options?: ListOptions): Promise<{ items: KubeObject[]; resourceVersion: string }> {
    return new Promise((resolve, reject) => {
      this.#push({
        kind: 'list',
        call: {
          options,
          respond: (items, resourceVersion) => resolve({ items: structuredClone(items), resourceVersion }),
          fail: reject,
        },
      });
    });
  }

  watch(_type: ResourceType, options: WatchOptions, onEvent: (type: WatchEventType, object: KubeObject) => void): Promise<void> {
    return new Promise((resolve, reject) => {
      let closed = false;
      const close = () => {
        closed = true;
        options.signal?.removeEventListener('abort', onAbort);
      };
      // Like RestKubeClient: an aborted watch resolves.
      const onAbort = () => {
        close();
        resolve();
      };
      options.signal?.addEventListener('abort', onAbort);
      this.#push({
        kind: 'watch',
        call: {
          options,
          emit: (type, object) => {
            assert.ok(!closed, 'event on a closed watch');
            onEvent(type, structuredClone(object));
          },
          end: () => {
            close();
            resolve();
          },
          fail: (error) => {
            close();
            reject(error);
          },
          get closed() {
            return closed;
          },
        },
      });
    });
  }

  get(): Promise<KubeObject | undefined> {
    throw new Error('not used by the informer');
  }
  apply(): Promise<KubeObject> {
    throw new Error('not used by the informer');
  }
  mergePatch(): Promise<KubeObject> {
    throw new Error('not used by the informer');
  }
  create(): Promise<KubeObject> {
    throw new Error('not used by the informer');
  }
  delete(): Promise<boolean> {
    throw new Error('not used by the informer');
  }
}

function agent(name: string, resourceVersion: string, namespace = 'default'): KubeObject {
  return {
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'NarrowlinkAgent',
    metadata: { name, namespace, resourceVersion },
    spec: { mode: 'auto' },
  };
}

const quietLog = { info() {}, warn() {}, debug() {} };

/** An informer on NarrowlinkAgents recording "event key@resourceVersion" strings. */
function makeInformer(client: KubeClient, options: Partial<InformerOptions> = {}) {
  const events: string[] = [];
  const informer = new Informer(client, Resources.narrowlinkAgent, {
    log: quietLog,
    onEvent(event: InformerEvent, object: KubeObject) {
      events.push(`${event} ${object.metadata.namespace}/${object.metadata.name}@${object.metadata.resourceVersion}`);
    },
    backoff: { baseMs: 40, maxMs: 1000, random: high },
    ...options,
  });
  return { informer, events };
}

const gone = () => new KubeError(KubeErrorCode.WATCH, 'watch narrowlinkagents: Expired: too old resource version', { status: 410, reason: 'Expired' });

describe('Informer (scripted client)', () => {
  let stopMe: Informer | undefined;
  afterEach(() => {
    stopMe?.stop();
    stopMe = undefined;
  });

  it('delivers the initial list as added, then watches from the list resourceVersion with the same selectors', async () => {
    const client = new ScriptedClient();
    const { informer, events } = makeInformer(client, { namespace: 'shop', labelSelector: 'tier=web', watchTimeoutSeconds: 33 });
    stopMe = informer.start();

    const list = await client.nextList();
    assert.deepEqual(list.options, { namespace: 'shop', labelSelector: 'tier=web' });
    assert.equal(informer.synced, false);
    list.respond([agent('a', '10', 'shop'), agent('b', '11', 'shop')], '12');
    await informer.waitForSync();
    assert.equal(informer.synced, true);
    assert.deepEqual(events, ['added shop/a@10', 'added shop/b@11']);
    assert.deepEqual(
      informer
        .list()
        .map((o) => o.metadata.name)
        .sort(),
      ['a', 'b'],
    );
    assert.equal(informer.get('shop/a')?.metadata.resourceVersion, '10');

    const watch = await client.nextWatch();
    assert.equal(watch.options.resourceVersion, '12');
    assert.equal(watch.options.timeoutSeconds, 33);
    assert.equal(watch.options.namespace, 'shop');
    assert.equal(watch.options.labelSelector, 'tier=web');
    assert.ok(watch.options.signal instanceof AbortSignal);
    assert.deepEqual(informer.stats, { lists: 1, watches: 1, gone: 0, errors: 0 });
  });

  it('applies watch events to the cache: added, updated, deleted; bookmarks only move the resourceVersion', async () => {
    const client = new ScriptedClient();
    const { informer, events } = makeInformer(client);
    stopMe = informer.start();
    (await client.nextList()).respond([agent('a', '1')], '1');
    const watch = await client.nextWatch();
    events.length = 0;

    watch.emit('ADDED', agent('b', '2'));
    watch.emit('MODIFIED', agent('a', '3'));
    // An ADDED for a key already cached is an update (e.g. replayed after a watch restart).
    watch.emit('ADDED', agent('b', '4'));
    watch.emit('DELETED', agent('a', '5'));
    watch.emit('BOOKMARK', { metadata: { resourceVersion: '6' } });
    assert.deepEqual(events, ['added default/b@2', 'updated default/a@3', 'updated default/b@4', 'deleted default/a@5']);
    assert.equal(informer.get('default/a'), undefined);
    assert.equal(informer.get('default/b')?.metadata.resourceVersion, '4');
    assert.equal(informer.list().length, 1);

    // The next watch resumes from the bookmark's resourceVersion.
    watch.end();
    const again = await client.nextWatch();
    assert.equal(again.options.resourceVersion, '6');
  });

  it('a watch the server ends normally resumes from the last resourceVersion without listing', async () => {
    const client = new ScriptedClient();
    const { informer, events } = makeInformer(client);
    stopMe = informer.start();
    (await client.nextList()).respond([], '100');
    const first = await client.nextWatch();
    first.emit('ADDED', agent('a', '101'));
    first.end();

    const second = await client.nextWatch();
    assert.equal(second.options.resourceVersion, '101');
    second.end();
    const third = await client.nextWatch();
    assert.equal(third.options.resourceVersion, '101');
    assert.deepEqual(informer.stats, { lists: 1, watches: 3, gone: 0, errors: 0 });
    assert.deepEqual(events, ['added default/a@101']);
  });

  it('410 Gone re-lists at once (stats.gone, not an error); the re-list reconciles the cache', async () => {
    const client = new ScriptedClient();
    const { informer, events } = makeInformer(client, { backoff: { baseMs: 60_000, maxMs: 60_000, random: high } });
    stopMe = informer.start();
    (await client.nextList()).respond([agent('keep', '1'), agent('change', '2'), agent('vanish', '3')], '3');
    const watch = await client.nextWatch();
    events.length = 0;
    watch.fail(gone());

    // No backoff on 410 (the pinned backoff is a minute): the re-list comes straight away.
    const relist = await client.nextList();
    assert.equal(informer.stats.gone, 1);
    assert.equal(informer.stats.errors, 0);
    relist.respond([agent('keep', '1'), agent('change', '7'), agent('new', '8')], '9');
    const resumed = await client.nextWatch();
    assert.equal(resumed.options.resourceVersion, '9');

    // Unchanged objects are not re-delivered; changed ones are updated; vanished ones are deleted with
    // their last known state; new ones are added.
    assert.deepEqual(events.slice().sort(), ['added default/new@8', 'deleted default/vanish@3', 'updated default/change@7'].sort());
    assert.deepEqual(
      informer
        .list()
        .map((o) => `${o.metadata.name}@${o.metadata.resourceVersion}`)
        .sort(),
      ['change@7', 'keep@1', 'new@8'],
    );
    assert.deepEqual(informer.stats, { lists: 2, watches: 2, gone: 1, errors: 0 });
  });

  describe('with mock timers', () => {
    beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'setInterval'] }));
    afterEach(() => mock.timers.reset());

    it('other watch and list errors back off (growing, pinned by options.backoff) and then re-list', async () => {
      const client = new ScriptedClient();
      const { informer, events } = makeInformer(client, { backoff: { baseMs: 100, maxMs: 1000, random: high } });
      stopMe = informer.start();
      (await client.nextList()).respond([agent('a', '1'), agent('b', '2')], '2');
      const watch = await client.nextWatch();
      events.length = 0;

      watch.fail(new KubeError(KubeErrorCode.TRANSPORT, 'watch narrowlinkagents broke: socket hang up'));
      await settle();
      assert.equal(informer.stats.errors, 1);
      assert.equal(informer.stats.gone, 0);
      // First failure: 100 ms before anything else happens.
      mock.timers.tick(99);
      await settle();
      assert.equal(client.pending, 0, 'retried before the backoff delay');
      mock.timers.tick(1);
      // The retry is a list (the watch may have missed events), not a watch.
      const list = await client.nextList();

      // The list fails too: second consecutive failure → 200 ms.
      list.fail(new KubeError(KubeErrorCode.API, 'GET: HTTP 503', { status: 503 }));
      await settle();
      assert.equal(informer.stats.errors, 2);
      mock.timers.tick(199);
      await settle();
      assert.equal(client.pending, 0, 'retried before the second backoff delay');
      mock.timers.tick(1);
      const relist = await client.nextList();
      relist.respond([agent('a', '1')], '5');
      const resumed = await client.nextWatch();
      assert.equal(resumed.options.resourceVersion, '5');
      assert.deepEqual(events, ['deleted default/b@2']);

      // A watch that ran and ended normally resets the failure count: the next error waits the base delay again.
      resumed.end();
      const next = await client.nextWatch();
      next.fail(new KubeError(KubeErrorCode.TRANSPORT, 'connect ECONNREFUSED'));
      await settle();
      mock.timers.tick(99);
      await settle();
      assert.equal(client.pending, 0);
      mock.timers.tick(1);
      await client.nextList();
      assert.equal(informer.stats.errors, 3);
    });

    it('resync re-delivers every cached object every resyncMs, and stops with the informer', async () => {
      const client = new ScriptedClient();
      const { informer, events } = makeInformer(client, { resyncMs: 1000 });
      informer.start();
      (await client.nextList()).respond([agent('a', '1'), agent('b', '2')], '2');
      const watch = await client.nextWatch();
      watch.emit('ADDED', agent('c', '3'));
      watch.emit('DELETED', agent('a', '4'));
      events.length = 0;

      mock.timers.tick(999);
      assert.deepEqual(events, []);
      mock.timers.tick(1);
      assert.deepEqual(events.slice().sort(), ['resync default/b@2', 'resync default/c@3']);
      mock.timers.tick(1000);
      assert.equal(events.length, 4);

      informer.stop();
      await settle();
      assert.equal(watch.closed, true, 'stop() did not abort the watch');
      mock.timers.tick(5000);
      assert.equal(events.length, 4);
      await settle();
      assert.equal(client.pending, 0, 'a stopped informer made another call');
    });
  });

  it('waitForSync() waits for the first successful list, even across a failed one', async () => {
    const client = new ScriptedClient();
    const { informer } = makeInformer(client, { backoff: { baseMs: 5, maxMs: 5, random: high } });
    stopMe = informer.start();
    let synced = false;
    const waiting = informer.waitForSync().then(() => {
      synced = true;
    });
    (await client.nextList()).fail(new KubeError(KubeErrorCode.TRANSPORT, 'connect ECONNREFUSED'));
    await settle();
    assert.equal(synced, false);
    assert.equal(informer.synced, false);
    (await client.nextList()).respond([agent('a', '1')], '1');
    await waiting;
    assert.equal(synced, true);
    // Once synced, it resolves at once.
    await informer.waitForSync();
    assert.equal(informer.stats.errors, 1);
  });

  it('stop() ends the watch and makes no further calls', async () => {
    const client = new ScriptedClient();
    const { informer } = makeInformer(client);
    informer.start();
    (await client.nextList()).respond([], '1');
    const watch = await client.nextWatch();
    informer.stop();
    await settle();
    assert.equal(watch.closed, true);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(client.pending, 0);
  });
});
