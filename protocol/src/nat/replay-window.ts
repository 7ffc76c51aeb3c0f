/**
 * Sliding anti-replay window over 32-bit sequence numbers (the IPsec scheme): a sequence is accepted once,
 * and sequences more than `size` behind the highest accepted one are refused. Used by the punch session and
 * meant for the gateway's probe server (one window per session), so that a captured, authenticated datagram
 * replayed from another address can neither fake a mapping nor make us answer it again.
 */
export class ReplayWindow {
  readonly size: number;
  #highest = -1;
  #seen = new Set<number>();

  /** @param size how far behind the highest sequence a late datagram may arrive; default 128. */
  constructor(size = 128) {
    this.size = size;
  }

  /** Whether `seq` would be accepted, without recording it. */
  check(seq: number): boolean {
    if (seq > this.#highest) return true;
    if (seq <= this.#highest - this.size) return false;
    return !this.#seen.has(seq);
  }

  /** Records `seq`; returns false (and records nothing) when it is a replay or too old. */
  accept(seq: number): boolean {
    if (!this.check(seq)) return false;
    this.#seen.add(seq);
    if (seq > this.#highest) {
      this.#highest = seq;
      for (const old of this.#seen) if (old <= seq - this.size) this.#seen.delete(old);
    }
    return true;
  }
}
