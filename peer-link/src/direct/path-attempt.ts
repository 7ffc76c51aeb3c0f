/**
 * One direct path as either peer sees it, from the gateway's plan to up or failed: punch from the shared UDP
 * socket until one punch gets through each way, the fingerprint-pinned QUIC handshake, and the one way it ends
 * (`fail`), which stops punching, closes the connection and tells the gateway. Role-specific parts (the client's
 * request and waiters, the agent's policy and streams) live in client-paths.ts and agent-paths.ts, which own the
 * paths and are told when one comes up or fails (PathOwner). See docs/lifecycle/direct-path.md.
 */
import { formatEndpoint, type PunchOutput, type PunchPlanMessage, PunchSession } from '@narrowlink/protocol';
import type { GatewayLink } from '../gateway-link.ts';
import type { QuicheEndpoint } from '../quic/endpoint.ts';
import { DirectError, DirectErrorCode } from '../quic/errors.ts';
import type { DirectTransport } from '../quic/transport.ts';
import type { LinkLogger } from '../link/logger.ts';

export type PathAttemptState = 'requesting' | 'punching' | 'connecting' | 'up' | 'failed';

/** What `narrowlink status` and the agent's status show of one path. */
export interface DirectPathStatus {
  /** Client: the agent as asked for; agent: the client's identity. */
  peer: string;
  pathId: string | undefined;
  state: PathAttemptState;
  /** Why the path is not up (failed): a direct_refused reason, `PunchTimeout`, `PathLost`, an NL_ERR_DIRECT_* code. */
  reason: string | undefined;
  message: string | undefined;
  /** The peer's UDP endpoint the connection runs to. */
  remote: { address: string; port: number } | undefined;
  /** The punch candidate kind that won (`public`, `lan`, `predicted`, `peer-reflexive`, …). */
  via: string | undefined;
  strategy: string | undefined;
  /** From receiving the plan to a verified QUIC connection, ms. */
  readyInMs: number | undefined;
  rttMs: number | undefined;
  /** Client: when a failed path may be asked for again, ms from now. */
  retryInMs: number | undefined;
  streams: number;
}

/** What a path needs of the manager (client or agent side) that owns it. */
export interface PathOwner {
  readonly endpoint: QuicheEndpoint;
  readonly log: LinkLogger;
  /** The gateway session paths report to (`direct_state`, `nat_reprobe`); undefined before `attach`. */
  readonly link: GatewayLink | undefined;
  /** The manager is closed: a connection that comes up now is closed at once. */
  readonly closed: boolean;
  readonly handshakeTimeoutMs: number;
  /** The default wait before a failed path may be asked for again. */
  readonly retryAfterMs: number;
  /** Paths being punched, by attempt id (hex): where punch datagrams go. */
  readonly attempts: Map<string, PathAttempt>;
  /** The path is up on `transport`: wire the role's side of it, then report. */
  pathUp(path: PathAttempt, transport: DirectTransport): void;
  /** The path failed: drop it from the role's indexes, then report. */
  pathFailed(path: PathAttempt): void;
}

export class PathAttempt {
  /** Client: the agent as asked for; agent: the client's identity (`path:<id>` until the plan names it). */
  peer: string;
  pathId: string | undefined;
  state: PathAttemptState = 'requesting';
  /** Client: the direct_request's deadline; agent: how long the policy waits for its plan. */
  waitTimer: NodeJS.Timeout | undefined;
  transport: DirectTransport | undefined;
  reason: string | undefined;
  message: string | undefined;
  /** performance.now() from which a failed path may be asked for again. */
  retryAt = 0;
  readonly #owner: PathOwner;
  #plan: PunchPlanMessage | undefined;
  /** performance.now() when the plan came (until then, when the record was made). */
  #planAt = performance.now();
  #punch: PunchSession | undefined;
  #attemptKey: string | undefined;
  #punchTimer: NodeJS.Timeout | undefined;
  #via: string | undefined;
  #readyInMs: number | undefined;

  constructor(owner: PathOwner, peer: string, pathId: string | undefined) {
    this.#owner = owner;
    this.peer = peer;
    this.pathId = pathId;
  }

  /** Whether a plan is being run (punching, connecting or up). */
  get planned(): boolean {
    return this.#punch !== undefined;
  }

  /** Streams this path carries, as the status shows them (the agent counts the ones it serves). */
  get streamCount(): number {
    return 0;
  }

  /** Runs the gateway's plan: punching starts after its lead time, from the shared socket. */
  begin(plan: PunchPlanMessage): void {
    this.#plan = plan;
    this.#planAt = performance.now();
    this.state = 'punching';
    const attemptId = Buffer.from(plan.attemptId, 'base64');
    this.#attemptKey = attemptId.toString('hex');
    this.#owner.attempts.set(this.#attemptKey, this);
    this.#punch = new PunchSession({
      role: plan.role,
      attemptId,
      punchKey: Buffer.from(plan.punchKey, 'base64'),
      candidates: plan.candidates.map((c) => ({ endpoint: { address: c.address, port: c.port }, kind: c.kind })),
      intervalMs: plan.intervalMs,
      budgetMs: plan.budgetMs,
      initialDelayMs: plan.initialDelayMs,
    });
    this.#owner.log.debug({ event: 'punch-plan', peer: this.peer, strategy: plan.strategy, candidates: plan.candidates.length }, 'punching');
    const session = this.#punch;
    this.#punchTimer = setTimeout(() => {
      if (this.#punch === session) this.#applyPunch(session.start(performance.now()));
    }, plan.leadMs);
  }

  /** A punch datagram for this attempt (routed by its attempt id). */
  receivePunch(data: Buffer, from: { address: string; port: number }): void {
    if (!this.#punch) return;
    this.#applyPunch(this.#punch.receive(data, from, performance.now()));
  }

  #applyPunch(output: PunchOutput): void {
    for (const t of output.transmits) {
      try {
        this.#owner.endpoint.sendRaw(t.bytes, t.to);
      } catch {
        // The endpoint is closing; the punch fails by its deadline.
      }
    }
    clearTimeout(this.#punchTimer);
    const session = this.#punch;
    if (output.deadlineMs !== undefined && session) {
      this.#punchTimer = setTimeout(() => {
        if (this.#punch === session) this.#applyPunch(session.tick(performance.now()));
      }, Math.max(0, output.deadlineMs - performance.now()));
    }
    for (const event of output.events) {
      if (event.type === 'failed') {
        this.fail('PunchTimeout', `no punch packet got through in ${this.#plan?.budgetMs ?? 0} ms (strategy ${this.#plan?.strategy})`);
      } else if (this.state === 'punching') {
        this.state = 'connecting';
        this.#via = event.via;
        void this.#handshake(event.remote);
      }
    }
  }

  async #handshake(remote: { address: string; port: number }): Promise<void> {
    const owner = this.#owner;
    const plan = this.#plan as PunchPlanMessage;
    let transport: DirectTransport;
    try {
      transport = await owner.endpoint.dial(plan.quicRole, {
        address: remote.address,
        port: remote.port,
        expectedFingerprint: plan.peerFingerprint,
        timeoutMs: owner.handshakeTimeoutMs,
      });
    } catch (error) {
      const code = error instanceof DirectError ? error.code : DirectErrorCode.QUIC;
      this.fail(code, `QUIC handshake with ${formatEndpoint(remote)} failed: ${(error as Error).message}`);
      return;
    }
    if (this.state !== 'connecting' || owner.closed) {
      void transport.close('path abandoned');
      return;
    }
    this.transport = transport;
    this.state = 'up';
    this.#readyInMs = Math.round(performance.now() - this.#planAt);
    this.reason = undefined;
    this.message = undefined;
    owner.link?.sendControl({
      type: 'direct_state',
      pathId: plan.pathId,
      state: 'up',
      ...(this.#via ? { via: this.#via } : {}),
      elapsedMs: this.#readyInMs,
    });
    owner.log.info(
      { event: 'direct-up', peer: this.peer, remote: formatEndpoint(remote), via: this.#via, strategy: plan.strategy, ms: this.#readyInMs },
      'direct path up',
    );
    transport.once('closed', (error) => {
      if (this.transport !== transport) return;
      // A path that was up and died (NAT rebinding, peer gone) may be asked for again at once.
      this.fail('PathLost', `direct path lost: ${error?.message ?? 'closed by the peer'}`, 0);
    });
    owner.pathUp(this, transport);
  }

  /** Ends the path: stops punching, closes the connection, tells the gateway (unless it told us), reports. */
  fail(reason: string, message: string, retryAfterMs = this.#owner.retryAfterMs, tellGateway = true): void {
    if (this.state === 'failed') return;
    const owner = this.#owner;
    const wasUp = this.state === 'up';
    // Whichever side noticed first, an up path that died may have died of a changed mapping (NAT rebinding, a
    // flushed table): the next plan must aim at the mapping as it is now, not the one the gateway saw at connect.
    if (wasUp && reason !== 'Closed') owner.link?.reprobeNat();
    this.state = 'failed';
    this.reason = reason;
    this.message = message;
    this.retryAt = performance.now() + retryAfterMs;
    clearTimeout(this.waitTimer);
    clearTimeout(this.#punchTimer);
    if (this.#attemptKey) owner.attempts.delete(this.#attemptKey);
    this.#punch = undefined;
    const transport = this.transport;
    this.transport = undefined;
    if (transport && !transport.closed) void transport.close(reason);
    if (tellGateway && this.pathId) {
      owner.link?.sendControl({ type: 'direct_state', pathId: this.pathId, state: wasUp ? 'closed' : 'failed', reason: reason.slice(0, 64) });
    }
    const log = wasUp ? owner.log.info : owner.log.warn;
    log.call(owner.log, { event: 'direct-failed', peer: this.peer, reason, msg: message }, wasUp ? 'direct path lost' : 'no direct path');
    owner.pathFailed(this);
  }

  status(): DirectPathStatus {
    const now = performance.now();
    return {
      peer: this.peer,
      pathId: this.pathId,
      state: this.state,
      reason: this.reason,
      message: this.message,
      remote: this.transport?.remote,
      via: this.#via,
      strategy: this.#plan?.strategy,
      readyInMs: this.#readyInMs,
      rttMs: this.transport ? Math.round(this.transport.stats().rttMs * 100) / 100 : undefined,
      retryInMs: this.state === 'failed' ? Math.max(0, Math.round(this.retryAt - now)) : undefined,
      streams: this.streamCount,
    };
  }
}
