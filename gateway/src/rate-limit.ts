/**
 * Per-session rate limits on the control requests whose cost the gateway pays on its one event loop: OPEN,
 * `list_agents` (every port of every agent against the client's rules), `direct_request` (policy, NAT plan,
 * messages to an agent), `reauth` (signature check or a TokenReview call, then a policy recompile) and PING (a PONG
 * written to the socket each: a PING over the limit is left unanswered).
 *
 * Each kind is a token bucket: `burst` requests at once, refilled at `perSecond`. A request over the limit is
 * refused with a typed answer and the session stays (a burst from a real client costs it a retry, nothing more).
 * Refusals themselves draw from one more bucket per session, `abuse`: a session refused faster than
 * `abuse.perSecond` for longer than `abuse.burst` refusals is not a client having a burst but a loop, and the
 * gateway closes it (close code {@link RATE_LIMIT_CLOSE_CODE}).
 *
 * Per-session buckets alone are escaped by reconnecting: a closed flooder comes back with fresh buckets. So every
 * identity (token type and `sub`) has buckets of its own over all its sessions ({@link IdentityRateLimiters}), with
 * the same kinds, one more for new sessions (`connect`), and the abuse bucket: refusals collected by any session of
 * an identity count against it, so a flooder that reconnects is closed at its first refusal until the bucket refills.
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
  PING: 'ping',
} as const;
export type RateLimitKind = (typeof RateLimitKind)[keyof typeof RateLimitKind];

/** The limits of one session, per kind, and how many refusals it may collect before it is closed. */
export interface RateLimits {
  readonly open: RateLimit;
  readonly listAgents: RateLimit;
  readonly directRequest: RateLimit;
  readonly reauth: RateLimit;
  readonly ping: RateLimit;
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
 * - PING 10/s, burst 100: peers ping once per heartbeat interval (15 s) and `rtt()` on demand; each PONG is a TLS
 *   record and a write to the socket, so a PING flood from a peer that never reads cost the gateway a write per
 *   16 bytes until its kernel buffers filled (the abuse soak's flood class: 60 % of the gateway's CPU in writev).
 * - abuse: 1,000 refusals tolerated, refilled at 100/s: a flood at full speed is closed within milliseconds, a
 *   client a little over a limit is only refused.
 */
export const DEFAULT_RATE_LIMITS: RateLimits = {
  open: { perSecond: 1000, burst: 2000 },
  listAgents: { perSecond: 5, burst: 20 },
  directRequest: { perSecond: 10, burst: 50 },
  reauth: { perSecond: 0.2, burst: 10 },
  ping: { perSecond: 10, burst: 100 },
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

/** Buckets by kind, each created on the first request of its kind, and the abuse bucket. */
export class BucketSet {
  readonly #limits: RateLimits;
  readonly #buckets = new Map<RateLimitKind, TokenBucket>();
  #abuse: TokenBucket | undefined;

  constructor(limits: RateLimits) {
    this.#limits = limits;
  }

  bucket(kind: RateLimitKind, nowMs: number): TokenBucket {
    let bucket = this.#buckets.get(kind);
    if (!bucket) {
      bucket = new TokenBucket(limitOf(this.#limits, kind), nowMs);
      this.#buckets.set(kind, bucket);
    }
    return bucket;
  }

  abuse(nowMs: number): TokenBucket {
    this.#abuse ??= new TokenBucket(this.#limits.abuse, nowMs);
    return this.#abuse;
  }
}

/** The buckets of one session, and of its identity over all its sessions when it has one. */
export class SessionRateLimiter {
  readonly #now: () => number;
  readonly #own: BucketSet;
  readonly #identity: IdentityBuckets | undefined;

  constructor(limits: RateLimits, now: () => number, identity?: IdentityBuckets) {
    this.#now = now;
    this.#own = new BucketSet(limits);
    this.#identity = identity;
  }

  /**
   * Counts one request of `kind` against the session's bucket and the identity's, and a refusal against both abuse
   * buckets (the identity's follows it across reconnects).
   */
  check(kind: RateLimitKind): RateDecision {
    const nowMs = this.#now();
    if (this.#own.bucket(kind, nowMs).take(nowMs) && (this.#identity?.buckets.bucket(kind, nowMs).take(nowMs) ?? true)) return 'allowed';
    // Both tolerances count the refusal: the session's (a loop in one process) and the identity's (the same loop
    // reconnecting). Either spent closes the session.
    const ownTolerates = this.#own.abuse(nowMs).take(nowMs);
    const identityTolerates = this.#identity?.buckets.abuse(nowMs).take(nowMs) ?? true;
    return ownTolerates && identityTolerates ? 'refused' : 'abusive';
  }

  /** Milliseconds until a request of `kind` would be allowed (by the session's bucket and the identity's). */
  retryAfterMs(kind: RateLimitKind): number {
    const nowMs = this.#now();
    const own = this.#own.bucket(kind, nowMs).retryAfterMs(nowMs);
    return Math.max(own, this.#identity?.buckets.bucket(kind, nowMs).retryAfterMs(nowMs) ?? 0);
  }
}

/** The limits of one identity over all its sessions: the session kinds, and how often it may open a session. */
export interface IdentityRateLimits extends RateLimits {
  /** New sessions (after authentication); over it the session is closed 4429 before its hello. */
  readonly connect: RateLimit;
}

/**
 * Defaults, per identity over all its sessions: twice a session's OPEN, `list_agents` and `direct_request` rates
 * (a user runs a few CLI processes at once; it is the sum of many that must stop) and PINGs, reauth 0.5/s burst 20 (agents'
 * replicas share one identity and renew together), the same abuse tolerance as one session (it is what a
 * reconnecting flooder must not get afresh), and 10 sessions per second with a burst of 200 (a Deployment's
 * replicas reattaching after a gateway restart; a CLI reconnects at most once a second).
 */
export const DEFAULT_IDENTITY_RATE_LIMITS: IdentityRateLimits = {
  open: { perSecond: 2000, burst: 4000 },
  listAgents: { perSecond: 10, burst: 40 },
  directRequest: { perSecond: 20, burst: 100 },
  reauth: { perSecond: 0.5, burst: 20 },
  ping: { perSecond: 20, burst: 200 },
  abuse: DEFAULT_RATE_LIMITS.abuse,
  connect: { perSecond: 10, burst: 200 },
};

/** One identity's buckets, shared by its sessions. */
export interface IdentityBuckets {
  readonly buckets: BucketSet;
  readonly connect: TokenBucket;
  /** Sessions holding these buckets. */
  sessions: number;
  /** When the last session let go (ms), for forgetting an identity whose buckets are full again. */
  releasedAtMs: number;
}

/**
 * The buckets of every identity with a session, and of those that left recently (their buckets must outlive a
 * reconnect). Entries are forgotten by {@link sweep} once no session holds them and every bucket would be full again.
 */
export class IdentityRateLimiters {
  readonly limits: IdentityRateLimits;
  readonly #now: () => number;
  readonly #entries = new Map<string, IdentityBuckets>();
  /** How long after its last session an identity's buckets are kept: until the slowest bucket refilled. */
  readonly #forgetAfterMs: number;

  constructor(limits: IdentityRateLimits, now: () => number) {
    this.limits = limits;
    this.#now = now;
    const kinds = [limits.open, limits.listAgents, limits.directRequest, limits.reauth, limits.ping, limits.abuse, limits.connect];
    this.#forgetAfterMs = Math.max(0, ...kinds.map((l) => (l.perSecond > 0 ? (l.burst / l.perSecond) * 1000 : 0)));
  }

  /**
   * A new session of `identity`: false when the identity opens sessions faster than its `connect` limit (the caller
   * closes the session). Otherwise the identity's buckets, held until {@link release}.
   */
  acquire(identity: string): IdentityBuckets | undefined {
    const nowMs = this.#now();
    let entry = this.#entries.get(identity);
    if (!entry) {
      entry = { buckets: new BucketSet(this.limits), connect: new TokenBucket(this.limits.connect, nowMs), sessions: 0, releasedAtMs: nowMs };
      this.#entries.set(identity, entry);
    }
    if (!entry.connect.take(nowMs)) return undefined;
    entry.sessions++;
    return entry;
  }

  /** A session of that identity ended. */
  release(entry: IdentityBuckets): void {
    entry.sessions = Math.max(0, entry.sessions - 1);
    if (entry.sessions === 0) entry.releasedAtMs = this.#now();
  }

  /** Forgets identities without sessions whose buckets have refilled. */
  sweep(): void {
    const nowMs = this.#now();
    for (const [identity, entry] of this.#entries) {
      if (entry.sessions === 0 && nowMs - entry.releasedAtMs >= this.#forgetAfterMs) this.#entries.delete(identity);
    }
  }

  /** Identities remembered right now. */
  get size(): number {
    return this.#entries.size;
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
    case 'ping':
      return limits.ping;
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
