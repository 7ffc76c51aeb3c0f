/**
 * Counts the bytes a session handed to its transport (a WebSocket) that have not left the process yet, and blocks
 * the session's Mux while they are over a high-water mark. Credit then flows back to the far sender only as bytes
 * really leave: a peer that stops reading pins this buffer, not one window per stream (see docs/adr/0011).
 *
 * Hysteresis (block at `highWaterBytes`, unblock at `lowWaterBytes`) keeps a transport hovering at the mark from
 * flapping every frame. The transport reports each message as flushed through the callback `track()` returns
 * (ws calls a send callback once the socket took the bytes, or with an error when the socket is gone).
 */

/** Default high-water mark: 1 MiB is several kernel socket buffers' worth on loopback, so throughput never waits on it. */
export const DEFAULT_SEND_HIGH_WATER_BYTES = 1024 * 1024;

/**
 * What each message handed to the transport costs besides its bytes while it waits, counted with them: a WebSocket
 * send that the socket cannot take at once holds a write request, the frame's header buffer, a callback and queue
 * entries. Measured with ws 8 on Node 24 (`--max-semi-space-size=1`): 58,000 sends of 18 bytes (1 MiB counted by
 * bytes alone) grew RSS by 60 MiB, ≈ 1 KiB each. Without it, a flood of tiny replies (PONGs, RESETs) to a peer that
 * does not read pinned 60× the high-water mark before the session stopped reading it.
 */
export const SEND_MESSAGE_OVERHEAD_BYTES = 1024;

export interface SendBufferOptions {
  /** Block at or above this many unflushed bytes. Default {@link DEFAULT_SEND_HIGH_WATER_BYTES}. */
  highWaterBytes?: number;
  /** Unblock at or below this many. Default half the high-water mark. */
  lowWaterBytes?: number;
  /** Counted per message on top of its bytes (see {@link SEND_MESSAGE_OVERHEAD_BYTES}, the default). */
  messageOverheadBytes?: number;
  /** Called on every change of the blocked state (the adapter calls `Mux.setTransportBlocked`, pauses reading, …). */
  onBlockedChange: (blocked: boolean) => void;
  /** Called with every change of the unflushed bytes (positive when sent, negative when flushed), for budgets. */
  onBytes?: (delta: number) => void;
  /** Monotonic clock, ms. Default `performance.now`. */
  now?: () => number;
}

/** See the file header. */
export class SendBuffer {
  readonly highWaterBytes: number;
  readonly lowWaterBytes: number;
  readonly messageOverheadBytes: number;
  /** Bytes handed to the transport and not yet flushed, each message counted with its overhead. */
  unflushedBytes = 0;
  /** Monotonic ms when the buffer last blocked; `undefined` while not blocked. */
  blockedSinceMs: number | undefined;
  /** Monotonic ms of the last flush (bytes leaving), or of the block when none flushed since. */
  #lastProgressMs = 0;
  readonly #onBlockedChange: (blocked: boolean) => void;
  readonly #onBytes: ((delta: number) => void) | undefined;
  readonly #now: () => number;
  /** Set once the transport is gone: late flush callbacks change nothing any more. */
  #released = false;

  constructor(options: SendBufferOptions) {
    this.highWaterBytes = options.highWaterBytes ?? DEFAULT_SEND_HIGH_WATER_BYTES;
    this.lowWaterBytes = options.lowWaterBytes ?? Math.floor(this.highWaterBytes / 2);
    this.messageOverheadBytes = options.messageOverheadBytes ?? SEND_MESSAGE_OVERHEAD_BYTES;
    if (!(this.messageOverheadBytes >= 0)) throw new RangeError('SendBuffer needs messageOverheadBytes >= 0');
    if (!(this.highWaterBytes > 0) || !(this.lowWaterBytes >= 0) || this.lowWaterBytes >= this.highWaterBytes) {
      throw new RangeError('SendBuffer needs 0 <= lowWaterBytes < highWaterBytes');
    }
    this.#onBlockedChange = options.onBlockedChange;
    this.#onBytes = options.onBytes;
    this.#now = options.now ?? (() => performance.now());
  }

  get blocked(): boolean {
    return this.blockedSinceMs !== undefined;
  }

  /**
   * How long the buffer has been blocked without a byte leaving, ms (0 while not blocked): the peer's reading, as
   * liveness sees it. A peer that sends but does not read is not alive.
   */
  stalledForMs(nowMs: number = this.#now()): number {
    return this.blockedSinceMs === undefined ? 0 : nowMs - this.#lastProgressMs;
  }

  /**
   * Counts one message of `length` bytes handed to the transport (with its overhead); returns the callback to give
   * the transport's send, which counts it flushed (whether or not it reports an error: either way it no longer sits
   * in this process).
   */
  track(length: number): () => void {
    const bytes = length + this.messageOverheadBytes;
    this.unflushedBytes += bytes;
    this.#onBytes?.(bytes);
    if (this.blockedSinceMs === undefined && this.unflushedBytes >= this.highWaterBytes && !this.#released) {
      this.blockedSinceMs = this.#lastProgressMs = this.#now();
      this.#onBlockedChange(true);
    }
    return () => this.#flushed(bytes);
  }

  /** The transport is gone: forgets what is still counted (reported through `onBytes`) and never blocks again. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    if (this.unflushedBytes !== 0) this.#onBytes?.(-this.unflushedBytes);
    this.unflushedBytes = 0;
    this.blockedSinceMs = undefined;
  }

  #flushed(bytes: number): void {
    if (this.#released) return;
    this.unflushedBytes -= bytes;
    this.#onBytes?.(-bytes);
    if (this.blockedSinceMs === undefined) return;
    this.#lastProgressMs = this.#now();
    if (this.unflushedBytes <= this.lowWaterBytes) {
      this.blockedSinceMs = undefined;
      this.#onBlockedChange(false);
    }
  }
}
