/**
 * List-then-watch cache of one resource type, with the failure handling client-node's informer
 * leaves to its users: watches restart from the last resourceVersion when the server ends them,
 * `410 Gone` triggers a fresh list, other errors retry the list with capped backoff, a periodic
 * resync re-delivers every object (so a missed event is repaired), and every watch carries a server
 * timeout plus a socket timeout so a silent connection cannot stall the cache.
 */
import { backoffDelayMs } from '@narrowlink/protocol';
import type { KubeClient, KubeObject, ListOptions, ResourceType } from './client.ts';
import { KubeError } from './errors.ts';

export type InformerEvent = 'added' | 'updated' | 'deleted' | 'resync';

export interface InformerLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

export interface InformerOptions extends ListOptions {
  /** Re-deliver every cached object this often, ms. Default 5 min. */
  resyncMs?: number;
  /** Server-side watch timeout, s. Default 240. */
  watchTimeoutSeconds?: number;
  log: InformerLogger;
  /** Called for every change; `object` is the new state (the last known state for `deleted`). */
  onEvent(event: InformerEvent, object: KubeObject): void;
  backoff?: { baseMs?: number; maxMs?: number; random?: () => number };
}

export function objectKey(object: KubeObject): string {
  return object.metadata.namespace ? `${object.metadata.namespace}/${object.metadata.name}` : String(object.metadata.name);
}

export class Informer {
  readonly type: ResourceType;
  readonly #client: KubeClient;
  readonly #options: InformerOptions;
  readonly #cache = new Map<string, KubeObject>();
  #resourceVersion = '';
  #abort: AbortController | undefined;
  #stopped = true;
  #synced = false;
  #resyncTimer: NodeJS.Timeout | undefined;
  #failures = 0;
  /** Counts, for tests and metrics: lists done, watches started, 410s seen. */
  readonly stats = { lists: 0, watches: 0, gone: 0, errors: 0 };
  #syncWaiters: Array<() => void> = [];
  #sleep: { timer: NodeJS.Timeout; resolve: () => void } | undefined;

  constructor(client: KubeClient, type: ResourceType, options: InformerOptions) {
    this.#client = client;
    this.type = type;
    this.#options = options;
  }

  get synced(): boolean {
    return this.#synced;
  }

  /** Snapshot of the cache. */
  list(): KubeObject[] {
    return [...this.#cache.values()];
  }

  get(key: string): KubeObject | undefined {
    return this.#cache.get(key);
  }

  /** Resolves once the first list has been delivered. */
  waitForSync(): Promise<void> {
    if (this.#synced) return Promise.resolve();
    return new Promise((resolve) => this.#syncWaiters.push(resolve));
  }

  start(): this {
    if (!this.#stopped) return this;
    this.#stopped = false;
    void this.#run();
    const resyncMs = this.#options.resyncMs ?? 5 * 60_000;
    this.#resyncTimer = setInterval(() => {
      for (const object of this.#cache.values()) this.#options.onEvent('resync', object);
    }, resyncMs);
    this.#resyncTimer.unref();
    return this;
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#resyncTimer);
    this.#abort?.abort();
    if (this.#sleep) {
      clearTimeout(this.#sleep.timer);
      this.#sleep.resolve();
    }
  }

  async #run(): Promise<void> {
    let needList = true;
    while (!this.#stopped) {
      try {
        if (needList) {
          await this.#relist();
          needList = false;
        }
        this.#abort = new AbortController();
        this.stats.watches++;
        await this.#client.watch(
          this.type,
          {
            ...this.#listOptions(),
            resourceVersion: this.#resourceVersion,
            timeoutSeconds: this.#options.watchTimeoutSeconds ?? 240,
            signal: this.#abort.signal,
          },
          (type, object) => this.#apply(type, object),
        );
        this.#failures = 0;
        // The server ended the watch (timeout): resume from the last resourceVersion.
      } catch (error) {
        if (this.#stopped) return;
        if (error instanceof KubeError && error.gone) {
          this.stats.gone++;
          this.#options.log.info({ resource: this.type.plural }, 'watch expired (410 Gone); re-listing');
          needList = true;
          continue;
        }
        this.stats.errors++;
        needList = true;
        const delay = backoffDelayMs(this.#failures++, { baseMs: 200, maxMs: 30_000, ...this.#options.backoff });
        this.#options.log.warn({ resource: this.type.plural, err: (error as Error).message, retryInMs: delay }, 'list/watch failed; retrying');
        // Interruptible and unref'd: stop() must not wait out a 30 s backoff.
        await new Promise<void>((resolve) => {
          this.#sleep = { timer: setTimeout(resolve, delay), resolve };
          this.#sleep.timer.unref();
        });
        this.#sleep = undefined;
      }
    }
  }

  #listOptions(): ListOptions {
    const { namespace, labelSelector, fieldSelector } = this.#options;
    return { ...(namespace ? { namespace } : {}), ...(labelSelector ? { labelSelector } : {}), ...(fieldSelector ? { fieldSelector } : {}) };
  }

  async #relist(): Promise<void> {
    const { items, resourceVersion } = await this.#client.list(this.type, this.#listOptions());
    this.stats.lists++;
    const seen = new Set<string>();
    for (const item of items) {
      const key = objectKey(item);
      seen.add(key);
      const previous = this.#cache.get(key);
      this.#cache.set(key, item);
      if (!previous) this.#options.onEvent('added', item);
      else if (previous.metadata.resourceVersion !== item.metadata.resourceVersion) this.#options.onEvent('updated', item);
    }
    // Objects deleted while we were not watching.
    for (const [key, object] of this.#cache) {
      if (!seen.has(key)) {
        this.#cache.delete(key);
        this.#options.onEvent('deleted', object);
      }
    }
    this.#resourceVersion = resourceVersion;
    if (!this.#synced) {
      this.#synced = true;
      for (const resolve of this.#syncWaiters.splice(0)) resolve();
    }
  }

  #apply(type: string, object: KubeObject): void {
    if (object.metadata.resourceVersion) this.#resourceVersion = object.metadata.resourceVersion;
    if (type === 'BOOKMARK') return;
    const key = objectKey(object);
    if (type === 'DELETED') {
      this.#cache.delete(key);
      this.#options.onEvent('deleted', object);
      return;
    }
    const existed = this.#cache.has(key);
    this.#cache.set(key, object);
    this.#options.onEvent(existed ? 'updated' : 'added', object);
  }
}
