/**
 * Sans-I/O state machine for one punch attempt on one peer. The adapter owns the UDP socket and the clock: it
 * calls `start`, `receive` (for every datagram `rawDatagramKind` calls a punch) and `tick` (at the returned
 * deadline), sends the returned datagrams, and reacts to the events.
 *
 *   idle --start--> punching --valid punch carrying ACK--> established
 *                       \--deadline (start + budgetMs)--> failed {reason: 'Timeout'}
 *
 * Handshake: every `intervalMs` a round of punches goes to the learned remotes (addresses valid punches came
 * from) and then to the plan's candidates. Once we have heard the peer, our punches carry ACK (the highest seq
 * we received). A punch carrying ACK proves both directions at once: it came from the peer (we hear them) and
 * acknowledges one of ours (they hear us), so the first one establishes the path with its source as `remote`.
 * Every valid punch whose sender is not yet established (no DONE flag) is answered at once with an ACK punch
 * (with DONE once we are established), so the peer completes within one round trip; DONE punches are never
 * answered, so answers cannot ping-pong. While punching the deadline is always returned: it never hangs.
 *
 * After `established` keep routing punch datagrams here: it answers the peer's late punches so the peer can
 * complete too. Bad datagrams are dropped and counted by code in `stats.dropped`; nothing from the network
 * makes a method throw.
 */
import { ErrorCode, NatError } from '../errors.ts';
import { type Endpoint, endpoint, formatEndpoint, isValidPort } from './endpoint.ts';
import { ATTEMPT_ID_BYTES, decodePunch, encodePunch, MIN_NAT_KEY_BYTES, type PeerRole, type PunchPacket } from './probe-codec.ts';
import type { CandidateKind, PunchCandidate } from './punch-plan.ts';
import { ReplayWindow } from './replay-window.ts';

/** The part of a `PunchSidePlan` the session uses; a side plan can be passed as is. */
export interface PunchSessionConfig {
  role: PeerRole;
  attemptId: Uint8Array;
  punchKey: Uint8Array;
  candidates: readonly PunchCandidate[];
  intervalMs: number;
  budgetMs: number;
  /** Delay after `start` before the first round; default 0. */
  initialDelayMs?: number;
  /** Peer-reflexive remotes (sources of valid punches not among the candidates) kept at most; default 8. */
  maxLearnedRemotes?: number;
}

export type PunchState = 'idle' | 'punching' | 'established' | 'failed';

export type PunchEvent =
  | {
      type: 'established';
      /** Where the peer is reachable: source of the first acknowledging punch. Run QUIC towards it. */
      remote: Endpoint;
      /** How `remote` was known: a plan candidate's kind, or learned from the peer's traffic. */
      via: CandidateKind | 'peer-reflexive';
      atMs: number;
      /** Time since `start` (0 when established before `start`). */
      elapsedMs: number;
    }
  | { type: 'failed'; reason: 'Timeout'; atMs: number };

export interface PunchTransmit {
  to: Endpoint;
  bytes: Uint8Array;
}

export interface PunchOutput {
  transmits: PunchTransmit[];
  events: PunchEvent[];
  /** When to call `tick` next; `undefined` when not punching (idle, established, failed). */
  deadlineMs: number | undefined;
}

export interface PunchStats {
  sent: number;
  /** Valid punches received. */
  received: number;
  /** Rejected datagrams by NL_ERR_NAT_* code. */
  dropped: Record<string, number>;
}

const MAX_SEQ = 0xffff_ffff;

export class PunchSession {
  readonly role: PeerRole;
  #attemptId: Uint8Array;
  #key: Uint8Array;
  #candidates: PunchCandidate[];
  #intervalMs: number;
  #budgetMs: number;
  #initialDelayMs: number;
  #maxLearned: number;
  #state: PunchState = 'idle';
  #startMs: number | undefined;
  #failAtMs = 0;
  #nextRoundMs = 0;
  #seq = 0;
  /** Highest seq heard from the peer; 0 = nothing heard yet. */
  #heardSeq = 0;
  #learned: Endpoint[] = [];
  #replay = new ReplayWindow();
  #remote: Endpoint | undefined;
  #stats: PunchStats = { sent: 0, received: 0, dropped: {} };

  constructor(config: PunchSessionConfig) {
    if (config.role !== 'client' && config.role !== 'agent') throw new NatError(ErrorCode.NAT_INVALID_INPUT, 'role must be client or agent');
    if (!(config.attemptId instanceof Uint8Array) || config.attemptId.length !== ATTEMPT_ID_BYTES) {
      throw new NatError(ErrorCode.NAT_INVALID_INPUT, `attempt id must be ${ATTEMPT_ID_BYTES} bytes`);
    }
    if (!(config.punchKey instanceof Uint8Array) || config.punchKey.length < MIN_NAT_KEY_BYTES) {
      throw new NatError(ErrorCode.NAT_INVALID_INPUT, `punch key must be at least ${MIN_NAT_KEY_BYTES} bytes`);
    }
    for (const [name, value, min] of [
      ['intervalMs', config.intervalMs, 1],
      ['budgetMs', config.budgetMs, 1],
      ['initialDelayMs', config.initialDelayMs ?? 0, 0],
      ['maxLearnedRemotes', config.maxLearnedRemotes ?? 8, 0],
    ] as const) {
      if (!Number.isInteger(value) || value < min) throw new NatError(ErrorCode.NAT_INVALID_INPUT, `${name} must be an integer ≥ ${min}, got ${value}`);
    }
    this.role = config.role;
    this.#attemptId = Uint8Array.from(config.attemptId);
    this.#key = Uint8Array.from(config.punchKey);
    const seen = new Set<string>();
    this.#candidates = [];
    for (const c of config.candidates) {
      const e = endpoint(c.endpoint.address, c.endpoint.port);
      if (seen.has(formatEndpoint(e))) continue;
      seen.add(formatEndpoint(e));
      this.#candidates.push({ endpoint: e, kind: c.kind });
    }
    this.#intervalMs = config.intervalMs;
    this.#budgetMs = config.budgetMs;
    this.#initialDelayMs = config.initialDelayMs ?? 0;
    this.#maxLearned = config.maxLearnedRemotes ?? 8;
  }

  get state(): PunchState {
    return this.#state;
  }

  /** The established remote, once established. */
  get remote(): Endpoint | undefined {
    return this.#remote;
  }

  get stats(): PunchStats {
    return { sent: this.#stats.sent, received: this.#stats.received, dropped: { ...this.#stats.dropped } };
  }

  /** When `tick` must be called next; `undefined` unless punching. */
  nextDeadline(): number | undefined {
    return this.#state === 'punching' ? Math.min(this.#nextRoundMs, this.#failAtMs) : undefined;
  }

  /** Starts punching (at the plan's start time, on the local clock). Later calls do nothing. */
  start(nowMs: number): PunchOutput {
    const out = this.#output();
    if (this.#state !== 'idle') return this.#finish(out);
    this.#startMs = nowMs;
    this.#state = 'punching';
    this.#failAtMs = nowMs + this.#budgetMs;
    this.#nextRoundMs = nowMs + this.#initialDelayMs;
    return this.#tick(nowMs, out);
  }

  /** Advances timers: sends a round when due, fails at the deadline. Safe to call at any time. */
  tick(nowMs: number): PunchOutput {
    return this.#tick(nowMs, this.#output());
  }

  #tick(nowMs: number, out: PunchOutput): PunchOutput {
    if (this.#state !== 'punching') return this.#finish(out);
    if (nowMs >= this.#failAtMs) {
      this.#state = 'failed';
      out.events.push({ type: 'failed', reason: 'Timeout', atMs: nowMs });
      return this.#finish(out);
    }
    if (nowMs >= this.#nextRoundMs) {
      for (const to of this.#roundTargets()) this.#send(out, to, false);
      // Keep the cadence, but never burst to catch up after a late tick.
      this.#nextRoundMs += this.#intervalMs;
      if (this.#nextRoundMs <= nowMs) this.#nextRoundMs = nowMs + this.#intervalMs;
    }
    return this.#finish(out);
  }

  /** Handles one datagram that claims to be a punch packet. `from` is its source as the socket reported it. */
  receive(bytes: Uint8Array, from: Endpoint, nowMs: number): PunchOutput {
    const out = this.#output();
    if (this.#state === 'failed') return this.#drop(out, ErrorCode.NAT_UNEXPECTED);
    let packet: PunchPacket;
    let source: Endpoint;
    try {
      packet = decodePunch(bytes, this.#key);
      source = endpoint(from.address, from.port);
    } catch (error) {
      return this.#drop(out, error instanceof NatError ? error.code : ErrorCode.NAT_INVALID_INPUT);
    }
    if (!equalBytes(packet.attemptId, this.#attemptId)) return this.#drop(out, ErrorCode.NAT_UNEXPECTED);
    // Same key on both sides: a packet carrying our own role is one of ours reflected back.
    if (packet.role === this.role) return this.#drop(out, ErrorCode.NAT_UNEXPECTED);
    if (packet.ackSeq !== undefined && packet.ackSeq > this.#seq) return this.#drop(out, ErrorCode.NAT_UNEXPECTED);
    if (!this.#replay.accept(packet.seq)) return this.#drop(out, ErrorCode.NAT_REPLAYED);

    this.#stats.received++;
    if (packet.seq > this.#heardSeq) this.#heardSeq = packet.seq;
    const key = formatEndpoint(source);
    const known = this.#learned.some((e) => formatEndpoint(e) === key) || this.#candidates.some((c) => formatEndpoint(c.endpoint) === key);
    if (!known && this.#learned.length < this.#maxLearned) this.#learned.push(source);

    if (packet.ackSeq !== undefined && (this.#state === 'punching' || this.#state === 'idle')) {
      this.#state = 'established';
      this.#remote = source;
      const via = this.#candidates.find((c) => formatEndpoint(c.endpoint) === key)?.kind ?? 'peer-reflexive';
      out.events.push({ type: 'established', remote: source, via, atMs: nowMs, elapsedMs: this.#startMs === undefined ? 0 : nowMs - this.#startMs });
    }
    if (!packet.done) this.#send(out, source, this.#state === 'established');
    return this.#finish(out);
  }

  #roundTargets(): Endpoint[] {
    const seen = new Set<string>();
    const targets: Endpoint[] = [];
    for (const e of [...this.#learned, ...this.#candidates.map((c) => c.endpoint)]) {
      const key = formatEndpoint(e);
      if (seen.has(key)) continue;
      seen.add(key);
      targets.push(e);
    }
    return targets;
  }

  #send(out: PunchOutput, to: Endpoint, done: boolean): void {
    // 2^32 punches would take years at any sane interval; stop sending rather than wrap.
    if (this.#seq >= MAX_SEQ || !isValidPort(to.port)) return;
    this.#seq++;
    const ackSeq = this.#heardSeq > 0 ? this.#heardSeq : undefined;
    const bytes = encodePunch({ attemptId: this.#attemptId, role: this.role, seq: this.#seq, ackSeq, done: done && ackSeq !== undefined }, this.#key);
    out.transmits.push({ to, bytes });
    this.#stats.sent++;
  }

  #drop(out: PunchOutput, code: string): PunchOutput {
    this.#stats.dropped[code] = (this.#stats.dropped[code] ?? 0) + 1;
    return this.#finish(out);
  }

  #output(): PunchOutput {
    return { transmits: [], events: [], deadlineMs: undefined };
  }

  #finish(out: PunchOutput): PunchOutput {
    out.deadlineMs = this.nextDeadline();
    return out;
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
