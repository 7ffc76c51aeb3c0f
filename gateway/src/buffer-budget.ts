/**
 * The gateway's memory budgets for bytes it holds on a peer's behalf: what a session's WebSocket has not sent yet
 * (its SendBuffer) and, for a client session, what its relayed streams hold in the splice's queues in either
 * direction (bytes an agent sent that the client does not read, bytes the client sent that the agent's target does
 * not take). Both are bounded per stream by the windows the gateway grants, but a session with many streams, or many
 * sessions, could still add up to more than the process has: so each session has a budget, and so has the process.
 *
 * At a limit the session over it (for the process budget: the session holding most) is reported once through
 * `onExceeded`; the gateway stops reading it, resets its streams (which frees what they held) and closes it with
 * 4413 NL_ERR_GATEWAY_BUFFER_LIMIT. The report is deferred to a microtask so it never runs inside the relay code
 * that added the bytes.
 */

/** Default per-session budget: 16 fully stalled streams at the default 4 MiB window. */
export const DEFAULT_SESSION_BUFFER_BYTES = 64 * 1024 * 1024;
/** Default per-process budget: well inside the chart's 1 GiB memory limit, with room for everything else. */
export const DEFAULT_PROCESS_BUFFER_BYTES = 128 * 1024 * 1024;

export type BudgetScope = 'session' | 'process';

export interface BufferBudgetOptions<Owner> {
  /** Bytes one session may hold. Default {@link DEFAULT_SESSION_BUFFER_BYTES}. */
  sessionBytes?: number;
  /** Bytes all sessions together may hold. Default {@link DEFAULT_PROCESS_BUFFER_BYTES}. */
  processBytes?: number;
  /** A session went over a budget: called once per account. */
  onExceeded: (owner: Owner, scope: BudgetScope, heldBytes: number) => void;
  /** Called with every change of the total held (for the `buffered_bytes` gauge). */
  onTotalChanged?: (delta: number) => void;
}

/** One session's share of the budget. */
export class BufferAccount<Owner> {
  readonly owner: Owner;
  /** Bytes held for this session right now. */
  heldBytes = 0;
  readonly #budget: BufferBudget<Owner>;
  /** Reported over a budget already (the session is on its way out). */
  exceeded = false;
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
  /** Bytes held for all sessions. */
  totalBytes = 0;
  readonly #accounts = new Set<BufferAccount<Owner>>();
  readonly #onExceeded: (owner: Owner, scope: BudgetScope, heldBytes: number) => void;
  readonly #onTotalChanged: ((delta: number) => void) | undefined;
  /** A process-budget check is already queued. */
  #processCheckQueued = false;

  constructor(options: BufferBudgetOptions<Owner>) {
    this.sessionBytes = options.sessionBytes ?? DEFAULT_SESSION_BUFFER_BYTES;
    this.processBytes = options.processBytes ?? DEFAULT_PROCESS_BUFFER_BYTES;
    if (!(this.sessionBytes > 0) || !(this.processBytes > 0)) throw new RangeError('buffer budgets must be positive');
    this.#onExceeded = options.onExceeded;
    this.#onTotalChanged = options.onTotalChanged;
  }

  /** Opens the account of a new session. */
  open(owner: Owner): BufferAccount<Owner> {
    const account = new BufferAccount(this, owner);
    this.#accounts.add(account);
    return account;
  }

  /** @internal */
  _changed(account: BufferAccount<Owner>, delta: number): void {
    this.totalBytes += delta;
    this.#onTotalChanged?.(delta);
    if (delta <= 0) return;
    if (account.heldBytes > this.sessionBytes && !account.exceeded) this.#exceed(account, 'session');
    else if (this.totalBytes > this.processBytes && !this.#processCheckQueued) {
      this.#processCheckQueued = true;
      queueMicrotask(() => this.#checkProcess());
    }
  }

  /** @internal */
  _forget(account: BufferAccount<Owner>): void {
    this.#accounts.delete(account);
  }

  #exceed(account: BufferAccount<Owner>, scope: BudgetScope): void {
    account.exceeded = true;
    queueMicrotask(() => this.#onExceeded(account.owner, scope, account.heldBytes));
  }

  /** Over the process budget: the session holding most goes (one at a time; each close frees what it held). */
  #checkProcess(): void {
    this.#processCheckQueued = false;
    if (this.totalBytes <= this.processBytes) return;
    let largest: BufferAccount<Owner> | undefined;
    for (const account of this.#accounts) {
      if (!account.exceeded && (largest === undefined || account.heldBytes > largest.heldBytes)) largest = account;
    }
    if (largest && largest.heldBytes > 0) this.#exceed(largest, 'process');
  }
}
