/**
 * Per-session rate limits on the control requests whose cost the gateway pays on its one event loop: OPEN,
 * `list_agents` (every port of every agent against the client's rules), `direct_request` (policy, NAT plan,
 * messages to an agent) and `reauth` (signature check or a TokenReview call, then a policy recompile).
 *
 * Each kind is a token bucket: `burst` requests at once, refilled at `perSecond`. A request over the limit is
 * refused with a typed answer and the session stays (a burst from a real client costs it a retry, nothing more).
 * Refusals themselves draw from one more bucket per session, `abuse`: a session refused faster than
 * `abuse.perSecond` for longer than `abuse.burst` refusals is not a client having a burst but a loop, and the
 * gateway closes it (close code {@link RATE_LIMIT_CLOSE_CODE}).
 *
 * Pure bookkeeping over an injected clock (milliseconds); no timers, no allocation per request.
 */

/** A token bucket's shape: `burst` requests at once, then `perSecond` on average. `perSecond` 0 turns it off. */
export interface RateLimit {
  readonly perSecond: number;
  readonly burst: number;
}

/** The limited request kinds (also the `kind` label of `narrowlink_gateway_rate_limited_total`). */
export const RateLimitKind = {
  OPEN: 'open',
  LIST_AGENTS: 'list_agents',
  DIRECT_REQUEST: 'direct_request',
  REAUTH: 'reauth',
} as const;
export type RateLimitKind = (typeof RateLimitKind)[keyof typeof RateLimitKind];

/** The limits of one session, per kind, and how many refusals it may collect before it is closed. */
export interface RateLimits {
  readonly open: RateLimit;
  readonly listAgents: RateLimit;
  readonly directRequest: RateLimit;
  readonly reauth: RateLimit;
  /** Refusals: `burst` in a row are tolerated, refilled at `perSecond`; once spent, the session is closed. */
  readonly abuse: RateLimit;
}

/**
 * Defaults, per session, generous for every real client:
 * - OPEN 1,000/s with a burst of 2,000: a browser behind `narrowlink socks` opens dozens of connections per page,
 *   an HTTP load test through one `forward` a few hundred per second; the stream-open bench opens 1,050 back to
 *   back. At the gateway's ~20–50 µs of CPU per OPEN, 1,000/s is at most a few percent of a core per session.
 * - `list_agents` 5/s, burst 20: `narrowlink ls` asks once; each answer walks the whole configuration.
 * - `direct_request` 10/s, burst 50: a client asks once per agent when a stream opens and no path is up, and
 *   waits before asking again after a failure; at most 8 attempts are in flight anyway.
 * - `reauth` one per 5 s, burst 10: tokens rotate every few minutes; a client resends an unanswered `reauth`
 *   every 15 s at most.
 * - abuse: 1,000 refusals tolerated, refilled at 100/s: a flood at full speed is closed within milliseconds, a
 *   client a little over a limit is only refused.
 */
export const DEFAULT_RATE_LIMITS: RateLimits = {
  open: { perSecond: 1000, burst: 2000 },
  listAgents: { perSecond: 5, burst: 20 },
  directRequest: { perSecond: 10, burst: 50 },
  reauth: { perSecond: 0.2, burst: 10 },
  abuse: { perSecond: 100, burst: 1000 },
};

/** WebSocket close code of a session closed for sustained rate-limit abuse ("too many requests"). */
export const RATE_LIMIT_CLOSE_CODE = 4429;

/**
 * A token bucket over an injected clock. Full at creation. A clock that steps back refills nothing (and does not
 * take tokens away). With `perSecond` 0 every request is allowed.
 */
export class TokenBucket {
  readonly limit: RateLimit;
  #tokens: number;
  #lastMs: number;

  constructor(limit: RateLimit, nowMs: number) {
    this.limit = limit;
    this.#tokens = limit.burst;
    this.#lastMs = nowMs;
  }

  /** Takes one token if there is one; false (taking nothing) when the bucket is empty. */
  take(nowMs: number): boolean {
    if (this.limit.perSecond <= 0) return true;
    this.#refill(nowMs);
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  /** Milliseconds until a token is there (0 when one is), for the refusal message. */
  retryAfterMs(nowMs: number): number {
    if (this.limit.perSecond <= 0) return 0;
    this.#refill(nowMs);
    return this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) * 1000) / this.limit.perSecond);
  }

  #refill(nowMs: number): void {
    const elapsedMs = nowMs - this.#lastMs;
    this.#lastMs = nowMs;
    if (elapsedMs > 0) this.#tokens = Math.min(this.limit.burst, this.#tokens + (elapsedMs * this.limit.perSecond) / 1000);
  }
}

/** What became of one request: go ahead, refuse it (the session stays), or refuse it and close the session. */
export type RateDecision = 'allowed' | 'refused' | 'abusive';

/** The buckets of one session; a bucket is created on the first request of its kind. */
export class SessionRateLimiter {
  readonly #limits: RateLimits;
  readonly #now: () => number;
  readonly #buckets = new Map<RateLimitKind, TokenBucket>();
  #abuse: TokenBucket | undefined;

  constructor(limits: RateLimits, now: () => number) {
    this.#limits = limits;
    this.#now = now;
  }

  /** Counts one request of `kind` against its bucket (and a refusal against the abuse bucket). */
  check(kind: RateLimitKind): RateDecision {
    const nowMs = this.#now();
    if (this.#bucket(kind, nowMs).take(nowMs)) return 'allowed';
    this.#abuse ??= new TokenBucket(this.#limits.abuse, nowMs);
    return this.#abuse.take(nowMs) ? 'refused' : 'abusive';
  }

  /** Milliseconds until a request of `kind` would be allowed. */
  retryAfterMs(kind: RateLimitKind): number {
    const nowMs = this.#now();
    return this.#bucket(kind, nowMs).retryAfterMs(nowMs);
  }

  #bucket(kind: RateLimitKind, nowMs: number): TokenBucket {
    let bucket = this.#buckets.get(kind);
    if (!bucket) {
      bucket = new TokenBucket(limitOf(this.#limits, kind), nowMs);
      this.#buckets.set(kind, bucket);
    }
    return bucket;
  }
}

function limitOf(limits: RateLimits, kind: RateLimitKind): RateLimit {
  switch (kind) {
    case 'open':
      return limits.open;
    case 'list_agents':
      return limits.listAgents;
    case 'direct_request':
      return limits.directRequest;
    case 'reauth':
      return limits.reauth;
  }
}

/**
 * Parses a `PER_SECOND:BURST` flag value (`1000:2000`, `0.2:10`; `0` alone turns the limit off). Undefined when
 * the text is not of that form, for the caller's usage error.
 */
export function parseRateLimit(text: string): RateLimit | undefined {
  const match = /^(\d+(?:\.\d+)?)(?::(\d+))?$/.exec(text.trim());
  if (!match) return undefined;
  const perSecond = Number(match[1]);
  if (match[2] === undefined) return perSecond === 0 ? { perSecond: 0, burst: 0 } : undefined;
  const burst = Number(match[2]);
  if (!Number.isFinite(perSecond) || burst < 1 || !Number.isSafeInteger(burst)) return undefined;
  return { perSecond, burst };
}
