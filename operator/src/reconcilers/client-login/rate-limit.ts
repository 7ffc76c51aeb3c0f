/**
 * Per-user token bucket for login requests: `perMinute` tokens of burst, refilled continuously at `perMinute`
 * per minute. Kept in the leader's memory only (a new leader starts with full buckets: at worst one extra
 * burst per failover, which is cheaper than a write per login). Buckets that are full again are dropped, so the
 * map holds only users who logged in within the last minute or so.
 */

/** Outcome of {@link LoginRateLimiter.take}. */
export type RateDecision = { allowed: true } | { allowed: false; retryAfterMs: number };

const MINUTE_MS = 60_000;
/** Prune full buckets once the map grows past this many users. */
const PRUNE_AT_USERS = 1024;

export class LoginRateLimiter {
  readonly #perMinute: number;
  readonly #buckets = new Map<string, { tokens: number; atMs: number }>();

  /** @param perMinute - tokens per user per minute, and the burst; 0 turns the limit off. */
  constructor(perMinute: number) {
    if (!Number.isInteger(perMinute) || perMinute < 0) throw new RangeError('LoginRateLimiter: perMinute must be a non-negative integer');
    this.#perMinute = perMinute;
  }

  /** Number of users with a bucket that is not full (tests). */
  get size(): number {
    return this.#buckets.size;
  }

  #level(user: string, nowMs: number): number {
    const bucket = this.#buckets.get(user);
    if (!bucket) return this.#perMinute;
    const refilled = bucket.tokens + ((nowMs - bucket.atMs) * this.#perMinute) / MINUTE_MS;
    return Math.min(this.#perMinute, refilled);
  }

  /** Takes one token for `user` at `nowMs` if there is one. */
  take(user: string, nowMs: number): RateDecision {
    if (this.#perMinute === 0) return { allowed: true };
    const level = this.#level(user, nowMs);
    // Rounded to the ms: the float refill must not turn an exact 10 s into 10.000000000002 s.
    if (level < 1) return { allowed: false, retryAfterMs: Math.max(1, Math.round(((1 - level) * MINUTE_MS) / this.#perMinute)) };
    this.#buckets.set(user, { tokens: level - 1, atMs: nowMs });
    if (this.#buckets.size > PRUNE_AT_USERS) {
      for (const name of [...this.#buckets.keys()]) if (this.#level(name, nowMs) >= this.#perMinute) this.#buckets.delete(name);
    }
    return { allowed: true };
  }
}
