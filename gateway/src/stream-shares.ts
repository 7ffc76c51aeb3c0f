/**
 * Fair shares of each agent's relayed streams, and the idle-stream rule.
 *
 * An agent session accepts a bounded number of streams (4096 by default, the agent's own mux limit), and every
 * client reaching that agent draws from the same pool. Without shares one client session, allowed a single port,
 * could hold all of them and lock every other user out of the agent. So the gateway counts, per agent
 * (`namespace/name`, all its instances together), the relayed streams each client session and each identity
 * (token `sub`, over all its sessions) holds, opening or open, and refuses an OPEN beyond either share with
 * `SHARE_EXCEEDED`. With the defaults (256 per session, 1024 per identity) one identity can hold at most a quarter
 * of an agent's streams.
 *
 * Per-identity shares alone still let a handful of identities (four at 1,024, or sixteen sessions at 256) fill the
 * agent between them. So the last quarter of each agent's pool is a reserve that only light holders may draw on: an
 * identity already holding `reserveFloor` (64) streams to the agent may not open more once the agent is past
 * three quarters of its capacity. However many heavy identities there are, everyone holding fewer than 64 streams
 * (an ssh session, a browser, a connection pool) still gets in; filling the reserve too takes sixteen more
 * identities at 64 streams each, which is a question for whoever issues the tokens, not for the gateway.
 *
 * Everything here is pure bookkeeping (no sockets, no timers): the gateway acquires a lease before it opens the
 * agent leg and releases it exactly once when the relayed stream ends, however it ends.
 */
import { LIMITS_MINOR, peerSupportsMinor } from '@narrowlink/protocol';

/** How many relayed streams a client may hold to one agent. */
export interface StreamShareLimits {
  /** Streams (opening or open) one client session may hold to one agent. Default 256. */
  readonly perSession: number;
  /** Streams one identity (token `sub`), over all its client sessions, may hold to one agent. Default 1024. */
  readonly perIdentity: number;
  /**
   * The part of an agent's capacity only identities holding fewer than `reserveFloor` streams may use, at most a
   * quarter of the capacity. Default 1024 (a quarter of one instance's 4,096). 0 turns the reserve off.
   */
  readonly reserve: number;
  /** Identities holding at least this many streams to an agent may not draw on its reserve. Default 64. */
  readonly reserveFloor: number;
}

/**
 * Defaults: a quarter of the agent's 4096-stream limit per identity, so that at least four identities must hold
 * everything they may before anyone is locked out; a quarter of that per session, so that one runaway process
 * (a leak, a loop) leaves its user's other sessions room. 256 concurrent connections to one agent is far above what
 * browsers (6 per host), database pools (10–100) or interactive tools open.
 */
export const DEFAULT_STREAM_SHARES: StreamShareLimits = { perSession: 256, perIdentity: 1024, reserve: 1024, reserveFloor: 64 };

/**
 * Default idle limit of a relayed stream, ms: 4 h, the kubelet's default `streamingConnectionIdleTimeout` (what cuts
 * an idle `kubectl port-forward`, the closest relative of a relayed stream). Longer than Envoy's `tcp_proxy` (1 h)
 * and nginx's `proxy_timeout` (10 min); OpenSSH's `ChannelTimeout` and cloudflared and frp have none by default. An
 * ssh or psql session left open over lunch or a meeting survives; a connection forgotten overnight is reclaimed.
 */
export const DEFAULT_STREAM_IDLE_TIMEOUT_MS = 4 * 60 * 60 * 1000;

/** Which share refused an OPEN (also the `kind` label of the refusal metric): `reserve` is the agent's reserve. */
export type ShareKind = 'session' | 'identity' | 'reserve';

/** A share held by one relayed stream. `release()` is idempotent. */
export interface ShareLease {
  release(): void;
}

/** The OPEN was refused: which share is full and its limit. */
export interface ShareRefusal {
  readonly refused: ShareKind;
  readonly limit: number;
}

export interface StreamSharesOptions {
  limits?: Partial<StreamShareLimits>;
  /** A share became full (+1) or stopped being full (-1); drives the `stream_shares_full{kind}` gauge. */
  onFullChanged?(kind: ShareKind, delta: 1 | -1): void;
}

/** Agent keys are `namespace/name` (no NUL), so `agent NUL x` names one pair without ambiguity. */
function pairKey(agent: string, holder: string): string {
  return `${agent}\u0000${holder}`;
}

/** The per-agent stream counts of every client session and identity; entries vanish at zero. */
export class StreamShares {
  readonly limits: StreamShareLimits;
  readonly #bySession = new Map<string, number>();
  readonly #byIdentity = new Map<string, number>();
  /** Streams held to each agent by everyone, the agent's capacity when last seen, and whether its reserve is in use. */
  readonly #byAgent = new Map<string, { held: number; capacity: number; reserved: boolean }>();
  readonly #onFullChanged: ((kind: ShareKind, delta: 1 | -1) => void) | undefined;

  constructor(options: StreamSharesOptions = {}) {
    const limits = { ...DEFAULT_STREAM_SHARES, ...options.limits };
    for (const [name, value] of Object.entries(limits)) {
      const least = name === 'reserve' ? 0 : 1;
      if (!Number.isInteger(value) || value < least) throw new RangeError(`stream share ${name} must be an integer >= ${least}, got ${value}`);
    }
    this.limits = limits;
    this.#onFullChanged = options.onFullChanged;
  }

  /**
   * Takes one stream of `agent`'s pool for client session `session` of identity `sub`, or says which share is
   * full. `capacity` is how many streams the agent takes in all right now (its instances' limits together); without
   * it there is no reserve. The session share is checked first: it is the smaller one, and the one a single
   * process hits.
   */
  acquire(agent: string, session: string, sub: string, capacity = Number.POSITIVE_INFINITY): ShareLease | ShareRefusal {
    const sessionKey = pairKey(agent, session);
    const identityKey = pairKey(agent, sub);
    const inSession = this.#bySession.get(sessionKey) ?? 0;
    if (inSession >= this.limits.perSession) return { refused: 'session', limit: this.limits.perSession };
    const inIdentity = this.#byIdentity.get(identityKey) ?? 0;
    if (inIdentity >= this.limits.perIdentity) return { refused: 'identity', limit: this.limits.perIdentity };
    const pool = this.#byAgent.get(agent) ?? { held: 0, capacity, reserved: false };
    pool.capacity = capacity;
    const unreserved = capacity - this.#reserveOf(capacity);
    if (inIdentity >= this.limits.reserveFloor && pool.held >= unreserved) return { refused: 'reserve', limit: Math.max(0, unreserved) };
    this.#add(this.#bySession, sessionKey, 1, 'session', this.limits.perSession);
    this.#add(this.#byIdentity, identityKey, 1, 'identity', this.limits.perIdentity);
    this.#byAgent.set(agent, pool);
    this.#addToPool(agent, pool, 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.#add(this.#bySession, sessionKey, -1, 'session', this.limits.perSession);
        this.#add(this.#byIdentity, identityKey, -1, 'identity', this.limits.perIdentity);
        this.#addToPool(agent, pool, -1);
      },
    };
  }

  /** The reserve of an agent of `capacity` streams: the configured one, at most a quarter of the capacity. */
  #reserveOf(capacity: number): number {
    return Math.min(this.limits.reserve, Math.floor(capacity / 4));
  }

  /** Moves an agent's count; the `reserve` gauge follows whether the agent is into its reserve (beyond the rest). */
  #addToPool(agent: string, pool: { held: number; capacity: number; reserved: boolean }, delta: 1 | -1): void {
    pool.held += delta;
    const reserved = pool.held > 0 && pool.held >= pool.capacity - this.#reserveOf(pool.capacity);
    if (reserved !== pool.reserved) {
      pool.reserved = reserved;
      this.#onFullChanged?.('reserve', reserved ? 1 : -1);
    }
    if (pool.held <= 0) this.#byAgent.delete(agent);
  }

  /** Streams `session` holds to `agent`. */
  heldBySession(agent: string, session: string): number {
    return this.#bySession.get(pairKey(agent, session)) ?? 0;
  }

  /** Streams identity `sub` holds to `agent`, over all its sessions. */
  heldByIdentity(agent: string, sub: string): number {
    return this.#byIdentity.get(pairKey(agent, sub)) ?? 0;
  }

  /** Streams everyone holds to `agent`. */
  heldByAll(agent: string): number {
    return this.#byAgent.get(agent)?.held ?? 0;
  }

  /** (agent, holder) pairs and agents with at least one stream: zero once every lease is released (nothing leaks). */
  get entries(): number {
    return this.#bySession.size + this.#byIdentity.size + this.#byAgent.size;
  }

  #add(map: Map<string, number>, key: string, delta: 1 | -1, kind: ShareKind, limit: number): void {
    const before = map.get(key) ?? 0;
    const after = before + delta;
    if (after <= 0) map.delete(key);
    else map.set(key, after);
    if (after === limit) this.#onFullChanged?.(kind, 1);
    else if (before === limit) this.#onFullChanged?.(kind, -1);
  }
}

/** Whether a lease or a refusal came back. */
export function isShareRefusal(result: ShareLease | ShareRefusal): result is ShareRefusal {
  return 'refused' in result;
}

/**
 * The code to send a peer that said `version` in its hello: `code` (one of the limit codes of protocol 1.3: a
 * stream code, or a `direct_refused` reason) when it knows it, else `fallback`, the nearest older one (an unknown
 * stream code would be a PROTOCOL_ERROR there, an unknown reason a malformed message).
 */
export function limitCode<C extends string>(version: string, code: C, fallback: C): C {
  return peerSupportsMinor(version, LIMITS_MINOR) ? code : fallback;
}

/** The idle bookkeeping of one relayed stream: its byte total when last seen moving, and when that was. */
export interface IdleState {
  lastBytes: number;
  lastActiveAt: number;
}

/**
 * Updates `state` with the stream's current byte total (both legs, both directions) and says whether it has been
 * idle, no byte either way, for at least `timeoutMs` at `now`. A timeout of 0 or less never calls a stream idle.
 * Called from the gateway's periodic sweep, so the relay's per-frame path does no extra work.
 */
export function checkIdle(state: IdleState, bytes: number, now: number, timeoutMs: number): boolean {
  if (bytes !== state.lastBytes) {
    state.lastBytes = bytes;
    state.lastActiveAt = now;
    return false;
  }
  return timeoutMs > 0 && now - state.lastActiveAt >= timeoutMs;
}

/**
 * How often the sweep looks for idle streams, ms: an eighth of the timeout (a stream is reset at most 12.5 % past
 * it), at most once a minute (a scan walks every relayed stream), at least once a second (the sweep's own period).
 */
export function idleScanIntervalMs(timeoutMs: number): number {
  return Math.max(1000, Math.min(60_000, Math.floor(timeoutMs / 8)));
}
