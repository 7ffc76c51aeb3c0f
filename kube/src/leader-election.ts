/**
 * Leader election on a coordination.k8s.io/v1 Lease, the way client-go does it: the holder renews
 * the lease every `retryPeriodMs`; a candidate takes it over only once `renewTime` is older than
 * `leaseDurationSeconds`; every write carries the resourceVersion it read, so of two racing replicas
 * exactly one wins (the other gets 409). A leader that cannot renew within `renewDeadlineMs` steps
 * down, so two replicas never both act as leader for longer than the lease allows.
 */
import type { KubeClient, KubeObject } from './client.ts';
import { Resources } from './client.ts';
import { KubeError } from './errors.ts';

export interface LeaderElectionOptions {
  namespace: string;
  name: string;
  /** This replica's identity (pod name). */
  identity: string;
  leaseDurationSeconds?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  /** Wall clock, ms since epoch. */
  now?: () => number;
  log: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void };
  onStartedLeading(): void;
  onStoppedLeading(): void;
}

interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

/** Kubernetes MicroTime: RFC 3339 with microseconds. */
function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

export class LeaderElector {
  readonly #client: KubeClient;
  readonly #options: LeaderElectionOptions;
  #leading = false;
  #stopped = false;
  #lastRenewMs = 0;
  #timer: NodeJS.Timeout | undefined;
  /** The tick in progress: stop() waits for it, or its renew could land after the release (which then 409s). */
  #inflight: Promise<void> | undefined;

  constructor(client: KubeClient, options: LeaderElectionOptions) {
    this.#client = client;
    this.#options = options;
  }

  get leading(): boolean {
    return this.#leading;
  }

  #now(): number {
    return (this.#options.now ?? Date.now)();
  }

  start(): this {
    this.#stopped = false;
    this.#inflight = this.#tick();
    return this;
  }

  /** Stops campaigning; a leader releases the lease so a standby takes over at once. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#inflight;
    if (this.#leading) {
      try {
        const lease = await this.#client.get(Resources.lease, this.#options.namespace, this.#options.name);
        if (lease && (lease.spec as LeaseSpec | undefined)?.holderIdentity === this.#options.identity) {
          await this.#client.mergePatch(Resources.lease, this.#options.namespace, this.#options.name, {
            metadata: { resourceVersion: lease.metadata.resourceVersion },
            spec: { holderIdentity: null, renewTime: null, acquireTime: null },
          });
        }
      } catch {
        // best effort: the lease expires anyway
      }
      this.#setLeading(false);
    }
  }

  #setLeading(leading: boolean): void {
    if (leading === this.#leading) return;
    this.#leading = leading;
    this.#options.log.info({ identity: this.#options.identity, leading }, leading ? 'became leader' : 'stopped leading');
    if (leading) this.#options.onStartedLeading();
    else this.#options.onStoppedLeading();
  }

  async #tick(): Promise<void> {
    if (this.#stopped) return;
    const renewDeadlineMs = this.#options.renewDeadlineMs ?? 10_000;
    // A request that hangs must not keep a leader leading: step down at the renew deadline even while it is
    // still in flight, since another replica takes the lease over once it expires.
    const watchdog = this.#leading
      ? setTimeout(() => this.#setLeading(false), Math.max(0, this.#lastRenewMs + renewDeadlineMs - this.#now())).unref()
      : undefined;
    const startedMs = this.#now();
    try {
      const acquired = await this.#tryAcquireOrRenew();
      // A write that landed only after the deadline carries a renewTime others may already treat as expired.
      const inTime = this.#now() - startedMs <= renewDeadlineMs;
      if (acquired && inTime) this.#lastRenewMs = startedMs;
      this.#setLeading(acquired && inTime);
    } catch (error) {
      this.#options.log.warn({ err: (error as Error).message }, 'lease update failed');
      // A leader that cannot renew in time must assume someone else took over.
      if (this.#leading && this.#now() - this.#lastRenewMs > renewDeadlineMs) this.#setLeading(false);
    } finally {
      clearTimeout(watchdog);
    }
    if (!this.#stopped) {
      this.#timer = setTimeout(() => {
        this.#inflight = this.#tick();
      }, this.#options.retryPeriodMs ?? 2000);
      this.#timer.unref();
    }
  }

  async #tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, name, identity } = this.#options;
    const duration = this.#options.leaseDurationSeconds ?? 15;
    const now = this.#now();
    const lease = await this.#client.get(Resources.lease, namespace, name);
    if (!lease) {
      try {
        await this.#client.create(Resources.lease, {
          apiVersion: 'coordination.k8s.io/v1',
          kind: 'Lease',
          metadata: { name, namespace },
          spec: { holderIdentity: identity, leaseDurationSeconds: duration, acquireTime: microTime(now), renewTime: microTime(now), leaseTransitions: 0 },
        } as KubeObject);
        return true;
      } catch (error) {
        if (error instanceof KubeError && error.status === 409) return false; // someone else created it first
        throw error;
      }
    }
    const spec = (lease.spec ?? {}) as LeaseSpec;
    const held = spec.holderIdentity && spec.holderIdentity.length > 0;
    const renewedAt = spec.renewTime ? Date.parse(spec.renewTime) : 0;
    const expired = !held || now > renewedAt + (spec.leaseDurationSeconds ?? duration) * 1000;
    if (spec.holderIdentity !== identity && !expired) return false;
    const takingOver = spec.holderIdentity !== identity;
    try {
      await this.#client.mergePatch(Resources.lease, namespace, name, {
        // The resourceVersion we read is a precondition: a concurrent writer makes this a 409.
        metadata: { resourceVersion: lease.metadata.resourceVersion },
        spec: {
          holderIdentity: identity,
          leaseDurationSeconds: duration,
          renewTime: microTime(now),
          ...(takingOver ? { acquireTime: microTime(now), leaseTransitions: (spec.leaseTransitions ?? 0) + 1 } : {}),
        },
      });
      return true;
    } catch (error) {
      if (error instanceof KubeError && error.conflict) return false;
      throw error;
    }
  }
}
