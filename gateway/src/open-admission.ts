/**
 * Fair admission of relayed OPENs to one agent instance.
 *
 * Every OPEN the gateway forwards makes the agent dial a target: work on the agent's one event loop, which every
 * client of that agent shares. Without admission one identity sending OPENs as fast as its socket drains (and
 * cancelling them at once) keeps the agent's queue full, and everyone else's OPEN waits behind thousands of its
 * dials until it times out (issue 10, class 4: every victim open failed). Rate limits alone do not help: twenty
 * sessions at a modest rate are still more than one agent can dial.
 *
 * So the gateway keeps, per agent instance, at most `perAgent` OPENs outstanding (sent, not yet answered by OPEN_OK
 * or RESET), at most `perIdentity` of them for one identity, and queues the rest per identity. A free slot goes to
 * the waiting identity with the fewest OPENs outstanding (round robin among equals), so an OPEN of a light user
 * goes before the queued OPENs of anyone already dialling, however many a heavy one has queued. An OPEN the
 * client cancels while the agent is dialling keeps its slot until the agent answers: the agent is still doing the
 * work, and releasing early is exactly what an OPEN-and-RESET flood would exploit.
 *
 * Nothing is refused here; what bounds the queues is the stream shares (an identity's queued OPENs are streams it
 * holds) and the open timeout. Pure bookkeeping: no sockets, no timers.
 */

/** Outstanding OPENs at one agent instance. */
export interface OpenAdmissionLimits {
  /** OPENs one agent instance may have outstanding in all. Default 64. */
  readonly perAgent: number;
  /** OPENs one identity may have outstanding at one agent instance. Default 16. */
  readonly perIdentity: number;
}

/**
 * Defaults: an agent answers OPENs in the order they arrive, so an OPEN admitted behind `perAgent` others waits for
 * all their dials: 64 keeps that under ~10 ms for loopback targets (~0.1 ms of agent CPU each, measured in the
 * abuse soak) while 64 dials in flight still give 1,000+ opens/s to a target 50 ms away. 16 per identity: a browser
 * opens 6 connections per host; `ab -c 100` or a connection pool opening many at once queue for a moment rather
 * than fail; four identities dialling blackholed targets are needed to fill an agent's slots.
 */
export const DEFAULT_OPEN_ADMISSION: OpenAdmissionLimits = { perAgent: 64, perIdentity: 16 };

/** An admitted OPEN's place among the outstanding ones. `release()` is idempotent. */
export interface AdmissionSlot {
  release(): void;
}

/** A queued or admitted request. `cancel()` takes a still-queued request out of the queue; otherwise a no-op. */
export interface AdmissionTicket {
  /** Whether the request is still waiting for a slot. */
  readonly queued: boolean;
  cancel(): void;
}

interface Waiting {
  readonly identity: string;
  readonly start: (slot: AdmissionSlot) => void;
  queued: boolean;
}

/**
 * One identity's waiting requests in arrival order. A cancelled request stays in the array, marked, and is skipped
 * when it reaches the head: removal from the middle of a queue would be O(n) per cancel, and a Set's iteration over
 * many deleted entries is too.
 */
class IdentityQueue {
  readonly #items: Waiting[] = [];
  #head = 0;
  /** Requests still waiting (not cancelled, not started). */
  live = 0;

  push(waiting: Waiting): void {
    this.#items.push(waiting);
    this.live++;
  }

  /** The oldest request still waiting, dropping cancelled ones from the head. */
  peek(): Waiting | undefined {
    while (this.#head < this.#items.length) {
      const item = this.#items[this.#head] as Waiting;
      if (item.queued) return item;
      this.#head++;
    }
    return undefined;
  }

  /** Takes the head (after peek returned it), compacting the array now and then. */
  shift(): void {
    this.#head++;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items.splice(0, this.#head);
      this.#head = 0;
    }
  }
}

/** The admission state of one agent instance (see the file header). */
export class OpenAdmission {
  readonly limits: OpenAdmissionLimits;
  #outstanding = 0;
  readonly #byIdentity = new Map<string, number>();
  /** Waiting requests per identity, in arrival order; the Map's key order is the round-robin order. */
  readonly #queues = new Map<string, IdentityQueue>();
  #queued = 0;
  #dispatching = false;

  readonly #onQueuedChanged: ((delta: 1 | -1) => void) | undefined;

  /** `onQueuedChanged` follows the number of waiting requests (the queued-opens gauge). */
  constructor(limits: Partial<OpenAdmissionLimits> = {}, onQueuedChanged?: (delta: 1 | -1) => void) {
    this.#onQueuedChanged = onQueuedChanged;
    const merged = { ...DEFAULT_OPEN_ADMISSION, ...limits };
    for (const [name, value] of Object.entries(merged)) {
      if (!Number.isInteger(value) || value < 1) throw new RangeError(`open admission ${name} must be an integer >= 1, got ${value}`);
    }
    this.limits = merged;
  }

  /** OPENs sent to the agent and not answered yet. */
  get outstanding(): number {
    return this.#outstanding;
  }

  /** OPENs waiting for a slot. */
  get queued(): number {
    return this.#queued;
  }

  /** Outstanding OPENs of `identity`. */
  outstandingOf(identity: string): number {
    return this.#byIdentity.get(identity) ?? 0;
  }

  /**
   * Asks for a slot for an OPEN of `identity`. `start` runs with the slot, at once when one is free for this
   * identity and nobody is waiting ahead of it, or later from another request's `release()`. `start` must not
   * throw; it may release its slot synchronously.
   */
  request(identity: string, start: (slot: AdmissionSlot) => void): AdmissionTicket {
    const waiting: Waiting = { identity, start, queued: true };
    let queue = this.#queues.get(identity);
    if (!queue) {
      queue = new IdentityQueue();
      this.#queues.set(identity, queue);
    }
    queue.push(waiting);
    this.#queued++;
    this.#onQueuedChanged?.(1);
    this.#dispatch();
    return {
      get queued() {
        return waiting.queued;
      },
      cancel: () => {
        if (waiting.queued) this.#unqueue(waiting);
      },
    };
  }

  /** Marks `waiting` as no longer queued (started or cancelled); an identity with nothing left leaves the round. */
  #unqueue(waiting: Waiting): void {
    waiting.queued = false;
    this.#queued--;
    this.#onQueuedChanged?.(-1);
    const queue = this.#queues.get(waiting.identity);
    if (queue && --queue.live === 0) this.#queues.delete(waiting.identity);
  }

  /** Hands free slots to waiting requests, one identity at a time in turn. A loop, not recursion: `start` may release. */
  #dispatch(): void {
    if (this.#dispatching) return;
    this.#dispatching = true;
    try {
      while (this.#queued > 0 && this.#outstanding < this.limits.perAgent) {
        const next = this.#nextEligible();
        if (!next) return;
        this.#queues.get(next.identity)?.shift();
        this.#unqueue(next);
        // Rotate: this identity goes to the back of the round, behind everyone else waiting.
        const rest = this.#queues.get(next.identity);
        if (rest) {
          this.#queues.delete(next.identity);
          this.#queues.set(next.identity, rest);
        }
        next.start(this.#take(next.identity));
      }
    } finally {
      this.#dispatching = false;
    }
  }

  /**
   * The next request to start: of the identities under their own cap, the one with the fewest OPENs outstanding
   * (a light user goes before one already dialling), ties in round-robin order. A scan over the identities waiting
   * at this agent, which are few next to the requests.
   */
  #nextEligible(): Waiting | undefined {
    let best: Waiting | undefined;
    let bestOutstanding = Number.POSITIVE_INFINITY;
    for (const [identity, queue] of this.#queues) {
      const outstanding = this.#byIdentity.get(identity) ?? 0;
      if (outstanding >= this.limits.perIdentity || outstanding >= bestOutstanding) continue;
      const first = queue.peek();
      if (!first) continue;
      best = first;
      bestOutstanding = outstanding;
      if (outstanding === 0) break;
    }
    return best;
  }

  #take(identity: string): AdmissionSlot {
    this.#outstanding++;
    this.#byIdentity.set(identity, (this.#byIdentity.get(identity) ?? 0) + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.#outstanding--;
        const left = (this.#byIdentity.get(identity) ?? 1) - 1;
        if (left <= 0) this.#byIdentity.delete(identity);
        else this.#byIdentity.set(identity, left);
        this.#dispatch();
      },
    };
  }
}
