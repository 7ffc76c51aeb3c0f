/**
 * A keyed work queue like client-go's: a key waiting is queued once however often it is added, a
 * key is never processed by two workers at once (an add during processing re-queues it after),
 * and failed keys come back after a per-key exponential delay until `forget`.
 */
import { backoffDelayMs } from '@narrowlink/protocol';

export interface WorkQueueOptions {
  /** Retry delay for the first failure of a key, ms (doubles per failure). Default 200. */
  baseDelayMs?: number;
  /** Retry delay ceiling, ms. Default 60 s. */
  maxDelayMs?: number;
  random?: () => number;
}

export class WorkQueue {
  readonly #queue: string[] = [];
  readonly #queued = new Set<string>();
  readonly #processing = new Set<string>();
  readonly #dirty = new Set<string>();
  readonly #failures = new Map<string, number>();
  readonly #timers = new Map<string, NodeJS.Timeout>();
  readonly #options: WorkQueueOptions;
  #waiters: Array<() => void> = [];
  #shutDown = false;

  constructor(options: WorkQueueOptions = {}) {
    this.#options = options;
  }

  get length(): number {
    return this.#queue.length;
  }

  add(key: string): void {
    if (this.#shutDown) return;
    if (this.#processing.has(key)) {
      this.#dirty.add(key);
      return;
    }
    if (this.#queued.has(key)) return;
    this.#queued.add(key);
    this.#queue.push(key);
    this.#waiters.shift()?.();
  }

  /** Re-adds `key` after its backoff delay; returns the delay. */
  addRateLimited(key: string): number {
    const failures = this.#failures.get(key) ?? 0;
    this.#failures.set(key, failures + 1);
    const delay = backoffDelayMs(failures, {
      baseMs: this.#options.baseDelayMs ?? 200,
      maxMs: this.#options.maxDelayMs ?? 60_000,
      ...(this.#options.random ? { random: this.#options.random } : {}),
    });
    clearTimeout(this.#timers.get(key));
    const timer = setTimeout(() => {
      this.#timers.delete(key);
      this.add(key);
    }, delay);
    timer.unref();
    this.#timers.set(key, timer);
    return delay;
  }

  /** Clears the failure count of `key` (it succeeded, or retrying is pointless). */
  forget(key: string): void {
    this.#failures.delete(key);
  }

  failures(key: string): number {
    return this.#failures.get(key) ?? 0;
  }

  /** Next key to process, or undefined once shut down. Call `done(key)` afterwards. */
  async get(): Promise<string | undefined> {
    while (this.#queue.length === 0) {
      if (this.#shutDown) return undefined;
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    const key = this.#queue.shift() as string;
    this.#queued.delete(key);
    this.#processing.add(key);
    return key;
  }

  done(key: string): void {
    this.#processing.delete(key);
    if (this.#dirty.delete(key)) this.add(key);
  }

  shutDown(): void {
    this.#shutDown = true;
    for (const timer of this.#timers.values()) clearTimeout(timer);
    for (const resolve of this.#waiters.splice(0)) resolve();
  }
}
