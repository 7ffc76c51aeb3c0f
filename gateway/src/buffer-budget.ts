/**
 * The gateway's memory budgets for bytes it holds on a peer's behalf: what a session's WebSocket has not sent yet
 * (its SendBuffer) and, for a client session, what its relayed streams hold in the splice's queues in either
 * direction (bytes an agent sent that the client has not taken yet, bytes the client sent that the agent's target
 * has not). Both are bounded per stream by the windows the gateway grants, but a session with many streams, or
 * many sessions, could still add up to more than the process has.
 *
 * What happens at a limit depends on whether the session is reading (ADR 0011). A session that reads holds at
 * most what the windows allow (its streams' credit both ways) and drains it; pausing it would even stop the
 * WINDOW frames that let its queues drain. So:
 * - A session over its budget **and stalled** (the gateway's sends to it made no progress for `stallGraceMs`: its
 *   send buffer is full, so the gateway already stopped reading it, and nothing leaves) is reported once through
 *   `onExceeded`: the gateway resets its streams, which frees what they held, and closes it 4413.
 * - Over {@link HARD_LIMIT_FACTOR} times its budget a session is reported whatever it does (a burst of streams it
 *   cannot drain).
 * - Over the process budget the largest stalled session is reported (stalled for {@link PROCESS_STALL_GRACE_MS}
 *   here: the process is short of memory); over twice the process budget the largest, whatever it does.
 * Reports are deferred to a microtask so that they never run inside the relay code that added the bytes.
 */

/** Default per-session budget: 16 fully stalled streams at the default 4 MiB window. */
export const DEFAULT_SESSION_BUFFER_BYTES = 64 * 1024 * 1024;
/** Default per-process budget: well inside the chart's 1 GiB memory limit, with room for everything else. */
export const DEFAULT_PROCESS_BUFFER_BYTES = 64 * 1024 * 1024;
/** A session over its budget that took nothing for this long does not read: it is closed. */
export const DEFAULT_BUFFER_STALL_GRACE_MS = 1000;
/**
 * Over the process budget the gateway is less patient: a session that took nothing for this long counts as stalled
 * (a reading session makes progress every few milliseconds, so this still spares every session that reads).
 */
export const PROCESS_STALL_GRACE_MS = 250;
/** Over this many times its budget a session is closed even while it reads (a burst of streams it cannot drain). */
export const HARD_LIMIT_FACTOR = 4;

export type BudgetScope = 'session' | 'process';

export interface BufferBudgetOptions<Owner> {
  /** Bytes one session may hold while it does not read. Default {@link DEFAULT_SESSION_BUFFER_BYTES}. */
  sessionBytes?: number;
  /** Bytes all sessions together may hold. Default {@link DEFAULT_PROCESS_BUFFER_BYTES}. */
  processBytes?: number;
  /** How long a session over a budget may make no progress before it is closed. Default 1 s. */
  stallGraceMs?: number;
  /** How long the owner's sends have made no progress, ms (0 while it reads). */
  stalledForMs: (owner: Owner) => number;
  /** A session went over a limit it may not stay over: called once per account. */
  onExceeded: (owner: Owner, scope: BudgetScope, heldBytes: number) => void;
  /** Called with every change of the total held (for the `buffered_bytes` gauge). */
  onTotalChanged?: (delta: number) => void;
}

/** One session's share of the budget. */
export class BufferAccount<Owner> {
  readonly owner: Owner;
  /** Bytes held for this session right now. */
  heldBytes = 0;
  /** Reported over a limit already (the session is on its way out). */
  exceeded = false;
  readonly #budget: BufferBudget<Owner>;
  #closed = false;

  constructor(budget: BufferBudget<Owner>, owner: Owner) {
    this.#budget = budget;
    this.owner = owner;
  }

  /** Adds `delta` bytes (negative: released). Cheap: called for every queued or sent chunk. */
  add(delta: number): void {
    if (this.#closed) return;
    this.heldBytes += delta;
    this.#budget._changed(this, delta);
  }

  /** The session is gone: releases whatever is still counted. */
  close(): void {
    if (this.#closed) return;
    const held = this.heldBytes;
    this.heldBytes = 0;
    this.#budget._changed(this, -held);
    this.#closed = true;
    this.#budget._forget(this);
  }
}

/** See the file header. */
export class BufferBudget<Owner> {
  readonly sessionBytes: number;
  readonly processBytes: number;
  readonly stallGraceMs: number;
  /** Bytes held for all sessions. */
  totalBytes = 0;
  readonly #accounts = new Set<BufferAccount<Owner>>();
  readonly #options: BufferBudgetOptions<Owner>;
  /** A process-budget check is already queued. */
  #processCheckQueued = false;

  constructor(options: BufferBudgetOptions<Owner>) {
    this.sessionBytes = options.sessionBytes ?? DEFAULT_SESSION_BUFFER_BYTES;
    this.processBytes = options.processBytes ?? DEFAULT_PROCESS_BUFFER_BYTES;
    this.stallGraceMs = options.stallGraceMs ?? DEFAULT_BUFFER_STALL_GRACE_MS;
    if (!(this.sessionBytes > 0) || !(this.processBytes > 0) || !(this.stallGraceMs >= 0)) throw new RangeError('buffer budgets must be positive');
    this.#options = options;
  }

  /** Opens the account of a new session. */
  open(owner: Owner): BufferAccount<Owner> {
    const account = new BufferAccount(this, owner);
    this.#accounts.add(account);
    return account;
  }

  /**
   * Closes what may not stay: sessions over their budget that stalled since, and the largest stalled one while the
   * process is over its budget. Called from the gateway's sweep (a stalled session adds no bytes that would check).
   */
  sweep(): void {
    for (const account of this.#accounts) if (account.heldBytes > this.sessionBytes) this.#checkSession(account);
    if (this.totalBytes > this.processBytes) this.#checkProcess();
  }

  /** @internal */
  _changed(account: BufferAccount<Owner>, delta: number): void {
    this.totalBytes += delta;
    this.#options.onTotalChanged?.(delta);
    if (delta <= 0) return;
    if (account.heldBytes > this.sessionBytes) this.#checkSession(account);
    if (this.totalBytes > this.processBytes && !this.#processCheckQueued) {
      this.#processCheckQueued = true;
      queueMicrotask(() => {
        this.#processCheckQueued = false;
        this.#checkProcess();
      });
    }
  }

  /** @internal */
  _forget(account: BufferAccount<Owner>): void {
    this.#accounts.delete(account);
  }

  #checkSession(account: BufferAccount<Owner>): void {
    if (account.exceeded) return;
    const hard = account.heldBytes > HARD_LIMIT_FACTOR * this.sessionBytes;
    if (hard || this.#options.stalledForMs(account.owner) >= this.stallGraceMs) this.#exceed(account, 'session');
  }

  /** Over the process budget: the largest stalled session goes; far over, the largest. */
  #checkProcess(): void {
    if (this.totalBytes <= this.processBytes) return;
    let largest: BufferAccount<Owner> | undefined;
    let largestStalled: BufferAccount<Owner> | undefined;
    for (const account of this.#accounts) {
      if (account.exceeded || account.heldBytes === 0) continue;
      if (largest === undefined || account.heldBytes > largest.heldBytes) largest = account;
      const stalled = this.#options.stalledForMs(account.owner) >= Math.min(this.stallGraceMs, PROCESS_STALL_GRACE_MS);
      if (stalled && (largestStalled === undefined || account.heldBytes > largestStalled.heldBytes)) largestStalled = account;
    }
    const victim = largestStalled ?? (this.totalBytes > 2 * this.processBytes ? largest : undefined);
    if (victim) this.#exceed(victim, 'process');
  }

  #exceed(account: BufferAccount<Owner>, scope: BudgetScope): void {
    account.exceeded = true;
    queueMicrotask(() => this.#options.onExceeded(account.owner, scope, account.heldBytes));
  }
}
