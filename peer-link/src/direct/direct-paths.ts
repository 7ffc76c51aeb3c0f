/**
 * The direct (peer-to-peer) paths of one peer, client or agent: the QUIC endpoint whose UDP socket also carries
 * the NAT probes and the punch packets, the punch sessions the gateway's plans start, and the fingerprint-pinned
 * QUIC connections they lead to. See docs/lifecycle/direct-path.md.
 *
 * Client: `request(agent)` asks the gateway for a path (it checks policy and plans the punch); `transport(agent)`
 * is the connection once up; `openStream` carries one stream over it; `waitUp` waits for one (mode `direct`).
 * A failed attempt is retried no sooner than `retryAfterMs` (a path that was up and died, at once).
 *
 * Agent: keeps the compiled policy the gateway sent per path (`direct_policy`), runs the punch the plan asks for,
 * accepts the QUIC connection and checks every stream against that policy before `serve` sees it; a narrower
 * policy resets the streams it no longer allows.
 */
import { EventEmitter } from 'node:events';
import {
  DIRECT_PATH_MINOR,
  type DirectAllow,
  type DirectClose,
  type DirectOpenReply,
  type DirectPolicy,
  type DirectRefused,
  directOpenReader,
  directOpenReplyReader,
  encodeDirectOpen,
  encodeDirectOpenReply,
  formatEndpoint,
  type PunchOutput,
  type PunchPlanMessage,
  PunchSession,
  peerSupportsMinor,
  rawDatagramKind,
  StreamErrorCode,
  StreamResetError,
} from '@narrowlink/protocol';
import type { GatewayLink, LinkLogger } from '../gateway-link.ts';
import { DirectError, DirectErrorCode } from '../quic/errors.ts';
import type { PeerIdentity } from '../quic/identity.ts';
import { QuicheEndpoint, type QuicheEndpointOptions } from '../quic/quiche-loop.ts';
import type { DirectStream, DirectTransport } from '../quic/transport.ts';
import { HeaderReadError, readHeader } from './read-header.ts';

export type DirectPathState = 'requesting' | 'punching' | 'connecting' | 'up' | 'failed';

/** What `narrowlink status` and the agent's status show of one path. */
export interface DirectPathStatus {
  /** Client: the agent as asked for; agent: the client's identity. */
  peer: string;
  pathId: string | undefined;
  state: DirectPathState;
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

export interface DirectPathsOptions {
  role: 'client' | 'agent';
  identity: PeerIdentity;
  /** Address and port to bind the UDP socket to; default 0.0.0.0, any port. */
  host?: string;
  port?: number;
  log?: LinkLogger;
  /** Client: wait this long before asking again for a path that could not be set up. Default 60 000. */
  retryAfterMs?: number;
  /** Client: give up on a direct_request the gateway does not answer. Default 5 000. */
  requestTimeoutMs?: number;
  /** Agent: how long a `direct_policy` waits for its `punch_plan` before the record is dropped. Default 30 000. */
  planWaitMs?: number;
  /** QUIC handshake after a successful punch. Default 3 000. */
  handshakeTimeoutMs?: number;
  /** A stream's open header (agent) or the agent's answer to it (client) must arrive within this. Default 10 000. */
  headerTimeoutMs?: number;
  /** Endpoint tuning (keep-alive, idle timeout, windows). */
  endpoint?: Omit<QuicheEndpointOptions, 'identity' | 'host' | 'port' | 'onRawDatagram'>;
  /**
   * Agent: serve a direct stream the gateway's policy allows for this client. Call `reply({ok: true})` once the
   * target is connected (payload may flow then), or `reply({code, message})` to refuse; the stream is the caller's.
   */
  serve?: (request: { target: DirectAllow; client: string; pathId: string }, stream: DirectStream, reply: (reply: DirectOpenReply) => void) => void;
}

/** The application error code a stream is reset with when the policy no longer allows it. */
export const DIRECT_STREAM_REVOKED = 0x10;

interface Waiter {
  resolve: (transport: DirectTransport) => void;
  reject: (error: DirectError) => void;
  timer: NodeJS.Timeout;
}

interface Path {
  peer: string;
  pathId: string | undefined;
  state: DirectPathState;
  requestId: number | undefined;
  requestTimer: NodeJS.Timeout | undefined;
  punch: PunchSession | undefined;
  attemptKey: string | undefined;
  punchTimer: NodeJS.Timeout | undefined;
  plan: PunchPlanMessage | undefined;
  planAt: number;
  transport: DirectTransport | undefined;
  /** Agent: what the gateway allows this client here. */
  allow: DirectAllow[];
  /** Agent: streams being served, with the target they were allowed for. */
  streams: Map<DirectStream, DirectAllow>;
  reason: string | undefined;
  message: string | undefined;
  retryAt: number;
  via: string | undefined;
  readyInMs: number | undefined;
  waiters: Waiter[];
}

/**
 * Events: `path` (DirectPathStatus) whenever a path comes up or fails; `error` is never emitted.
 */
export class DirectPaths extends EventEmitter {
  readonly endpoint: QuicheEndpoint;
  readonly options: DirectPathsOptions;
  readonly #log: LinkLogger;
  #link: GatewayLink | undefined;
  /** Client: by the agent as asked for; agent: by path id. */
  readonly #paths = new Map<string, Path>();
  readonly #byPathId = new Map<string, Path>();
  readonly #byRequest = new Map<number, Path>();
  readonly #byAttempt = new Map<string, Path>();
  #requestSeq = 0;
  #closed = false;
  #serve: DirectPathsOptions['serve'];

  /** Binds the UDP socket (QUIC + probes + punches) and returns the paths manager on it. */
  static async create(options: DirectPathsOptions): Promise<DirectPaths> {
    let self: DirectPaths | undefined;
    const endpoint = await QuicheEndpoint.bind({
      ...options.endpoint,
      identity: options.identity,
      ...(options.host ? { host: options.host } : {}),
      ...(options.port ? { port: options.port } : {}),
      onRawDatagram: (data, from) => self?.onRawDatagram(data, from),
    });
    self = new DirectPaths(endpoint, options);
    return self;
  }

  private constructor(endpoint: QuicheEndpoint, options: DirectPathsOptions) {
    super();
    this.endpoint = endpoint;
    this.options = options;
    this.#log = options.log ?? { debug() {}, info() {}, warn() {} };
    this.#serve = options.serve;
  }

  /** Agent: sets who serves allowed direct streams (see the `serve` option). */
  setServe(serve: NonNullable<DirectPathsOptions['serve']>): void {
    this.#serve = serve;
  }

  /** The socket to give the gateway link (`udpSocket`) so NAT probes leave from the QUIC port. */
  get socket(): QuicheEndpoint['socket'] {
    return this.endpoint.socket;
  }

  /** sha256 of this peer's certificate (the link's `certFingerprint`). */
  get fingerprint(): string {
    return this.options.identity.fingerprint;
  }

  /** Listens to the link's direct-path messages. Call once, before the link starts. */
  attach(link: GatewayLink): this {
    this.#link = link;
    link.on('direct', (message: PunchPlanMessage | DirectRefused | DirectPolicy | DirectClose) => this.#onMessage(message));
    // A path belongs to the gateway session that planned it: the gateway keeps its policy current only through
    // that session. When the session ends (gateway restart, network change), so do its paths; the client uses
    // the relay once reconnected and asks again.
    link.on('state', (state: string) => {
      if (state === 'open') return;
      for (const path of [...this.#paths.values()]) {
        if (path.state !== 'failed') this.#fail(path, 'SessionLost', 'the gateway session that set up this path ended', 1000, false);
      }
    });
    return this;
  }

  // ------------------------------------------------------------------------------------------------------------
  // Client side

  /** The verified connection to `agent`, when a path is up. */
  transport(agent: string): DirectTransport | undefined {
    const path = this.#paths.get(agent);
    return path?.state === 'up' && path.transport && !path.transport.closed ? path.transport : undefined;
  }

  /**
   * Asks the gateway for a path to `agent` unless one is up or under way, or a failed one is still in its retry
   * wait (then returns that failure). Never throws; the outcome arrives as a `path` event.
   */
  request(agent: string): DirectPathStatus {
    const existing = this.#paths.get(agent);
    const now = performance.now();
    if (existing && (existing.state !== 'failed' || now < existing.retryAt)) return this.#status(existing);
    const path = this.#newPath(agent, undefined);
    this.#paths.set(agent, path);
    const link = this.#link;
    const helloOk = link?.stats.helloOk;
    if (this.#closed || !link || link.state !== 'open' || !helloOk) {
      this.#fail(path, 'NoSession', 'no gateway session to ask for a direct path', 1000);
      return this.#status(path);
    }
    if (!peerSupportsMinor(helloOk.version, DIRECT_PATH_MINOR)) {
      this.#fail(path, 'GatewayTooOld', `the gateway speaks protocol ${helloOk.version}; direct paths need 1.${DIRECT_PATH_MINOR}`);
      return this.#status(path);
    }
    path.requestId = ++this.#requestSeq;
    this.#byRequest.set(path.requestId, path);
    path.requestTimer = setTimeout(() => this.#fail(path, 'Timeout', 'the gateway did not answer the direct_request in time'), this.options.requestTimeoutMs ?? 5000);
    const send = (): void => {
      if (path.state === 'requesting' && link.state === 'open') link.sendControl({ type: 'direct_request', requestId: path.requestId as number, agent });
    };
    // The gateway plans from our NAT classification: right after connecting it is still being probed (≤ 2 s),
    // so the request waits for it rather than being refused as NotProbed.
    if (link.stats.nat || !link.options.udpSocket) send();
    else {
      const onNat = (): void => {
        clearTimeout(fallback);
        send();
      };
      const fallback = setTimeout(() => {
        link.off('nat', onNat);
        send();
      }, 2500);
      link.once('nat', onNat);
    }
    return this.#status(path);
  }

  /**
   * Resolves with the connection to `agent` once up (asking for one if needed); rejects with
   * NL_ERR_DIRECT_UNAVAILABLE (with the reason) when it cannot be set up or `timeoutMs` passes. Bounded: the
   * gateway's plan has a deadline and so does the handshake.
   */
  waitUp(agent: string, timeoutMs: number): Promise<DirectTransport> {
    const up = this.transport(agent);
    if (up) return Promise.resolve(up);
    const status = this.request(agent);
    const path = this.#paths.get(agent) as Path;
    if (status.state === 'failed') return Promise.reject(this.#unavailable(path));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          path.waiters = path.waiters.filter((w) => w !== waiter);
          reject(new DirectError(DirectErrorCode.UNAVAILABLE, `no direct path to ${agent} within ${timeoutMs} ms (${path.state})`, { reason: 'Timeout' }));
        }, timeoutMs),
      };
      path.waiters.push(waiter);
    });
  }

  /**
   * Opens a stream to `port` (number or exposed name) on the agent over the direct path and waits for the agent's
   * answer. Rejects with StreamResetError (the agent refused: DENIED, DIAL_FAILED, …) or DirectError (the path
   * failed before the agent answered: such a stream sent nothing and can be retried on the relay).
   */
  async openStream(agent: string, target: { port: number | string; host?: string }): Promise<DirectStream> {
    const transport = this.transport(agent);
    if (!transport) throw new DirectError(DirectErrorCode.UNAVAILABLE, `no direct path to ${agent} is up`, { reason: 'NotUp' });
    const stream = await transport.openStream();
    stream.write(encodeDirectOpen({ port: target.port, ...(target.host ? { host: target.host } : {}) }));
    let reply: DirectOpenReply;
    try {
      reply = await readHeader(stream, directOpenReplyReader(), this.options.headerTimeoutMs ?? 10_000);
    } catch (error) {
      stream.destroy();
      const cause = error instanceof HeaderReadError && error.cause instanceof DirectError ? error.cause : error;
      if (cause instanceof DirectError) throw cause;
      throw new DirectError(DirectErrorCode.CLOSED, `agent did not answer the direct stream: ${(error as Error).message}`, { cause: error });
    }
    if ('code' in reply) {
      stream.destroy();
      throw new StreamResetError(reply.code, reply.message);
    }
    return stream;
  }

  /** The state of every path (client: per agent asked for; agent: per client path). */
  status(): DirectPathStatus[] {
    return [...this.#paths.values()].map((p) => this.#status(p));
  }

  // ------------------------------------------------------------------------------------------------------------
  // Messages from the gateway

  #onMessage(message: PunchPlanMessage | DirectRefused | DirectPolicy | DirectClose): void {
    if (this.#closed) return;
    switch (message.type) {
      case 'direct_refused': {
        const path = this.#byRequest.get(message.requestId);
        if (path?.state !== 'requesting') return;
        this.#fail(path, message.reason, message.message);
        return;
      }
      case 'direct_policy':
        if (this.options.role === 'agent') this.#onPolicy(message);
        return;
      case 'punch_plan':
        this.#onPlan(message);
        return;
      case 'direct_close': {
        const path = this.#byPathId.get(message.pathId);
        if (!path) return;
        this.#log.info({ event: 'direct-closed', peer: path.peer, reason: message.reason }, 'gateway closed the direct path');
        this.#fail(path, 'ClosedByGateway', message.reason, 5000, false);
        return;
      }
    }
  }

  #onPolicy(message: DirectPolicy): void {
    let path = this.#byPathId.get(message.pathId);
    if (!path) {
      const created = this.#newPath(`path:${message.pathId}`, message.pathId);
      this.#paths.set(message.pathId, created);
      this.#byPathId.set(message.pathId, created);
      // The plan follows at once; a policy for a path that ended meanwhile (the update crossed our failure
      // report) gets none and must not linger.
      created.requestTimer = setTimeout(() => {
        if (created.state === 'requesting') this.#forget(created);
      }, this.options.planWaitMs ?? 30_000);
      created.requestTimer.unref();
      path = created;
    }
    path.allow = message.allow;
    for (const [stream, target] of path.streams) {
      if (!findAllowed(path.allow, { port: target.port, host: target.host })) {
        this.#log.info({ event: 'direct-revoked', client: path.peer, host: target.host, port: target.port }, 'policy no longer allows a direct stream');
        stream.reset(DIRECT_STREAM_REVOKED);
      }
    }
  }

  #onPlan(plan: PunchPlanMessage): void {
    let path: Path | undefined;
    if (this.options.role === 'client') {
      path = plan.requestId === undefined ? undefined : this.#byRequest.get(plan.requestId);
      if (path?.state !== 'requesting') return;
      clearTimeout(path.requestTimer);
      path.pathId = plan.pathId;
      this.#byPathId.set(plan.pathId, path);
    } else {
      path = this.#byPathId.get(plan.pathId);
      // The policy comes first; a plan without one is not ours to run.
      if (!path || path.punch) return;
      clearTimeout(path.requestTimer);
      path.peer = plan.peer;
    }
    path.plan = plan;
    path.planAt = performance.now();
    path.state = 'punching';
    const attemptId = Buffer.from(plan.attemptId, 'base64');
    path.attemptKey = attemptId.toString('hex');
    this.#byAttempt.set(path.attemptKey, path);
    path.punch = new PunchSession({
      role: plan.role,
      attemptId,
      punchKey: Buffer.from(plan.punchKey, 'base64'),
      candidates: plan.candidates.map((c) => ({ endpoint: { address: c.address, port: c.port }, kind: c.kind })),
      intervalMs: plan.intervalMs,
      budgetMs: plan.budgetMs,
      initialDelayMs: plan.initialDelayMs,
    });
    this.#log.debug({ event: 'punch-plan', peer: path.peer, strategy: plan.strategy, candidates: plan.candidates.length }, 'punching');
    const session = path.punch;
    path.punchTimer = setTimeout(() => {
      if (path.punch === session) this.#applyPunch(path, session.start(performance.now()));
    }, plan.leadMs);
  }

  /** Punch datagrams from the shared socket (probe replies are the NAT prober's). */
  onRawDatagram(data: Buffer, from: { address: string; port: number }): void {
    if (rawDatagramKind(data) !== 'punch' || data.length < 12) return;
    const path = this.#byAttempt.get(data.toString('hex', 4, 12));
    if (!path?.punch) return;
    this.#applyPunch(path, path.punch.receive(data, from, performance.now()));
  }

  #applyPunch(path: Path, output: PunchOutput): void {
    for (const t of output.transmits) {
      try {
        this.endpoint.sendRaw(t.bytes, t.to);
      } catch {
        // The endpoint is closing; the punch fails by its deadline.
      }
    }
    clearTimeout(path.punchTimer);
    const session = path.punch;
    if (output.deadlineMs !== undefined && session) {
      path.punchTimer = setTimeout(() => {
        if (path.punch === session) this.#applyPunch(path, session.tick(performance.now()));
      }, Math.max(0, output.deadlineMs - performance.now()));
    }
    for (const event of output.events) {
      if (event.type === 'failed') {
        this.#fail(path, 'PunchTimeout', `no punch packet got through in ${path.plan?.budgetMs ?? 0} ms (strategy ${path.plan?.strategy})`);
      } else if (path.state === 'punching') {
        path.state = 'connecting';
        path.via = event.via;
        void this.#handshake(path, event.remote);
      }
    }
  }

  async #handshake(path: Path, remote: { address: string; port: number }): Promise<void> {
    const plan = path.plan as PunchPlanMessage;
    let transport: DirectTransport;
    try {
      transport = await this.endpoint.dial(plan.quicRole, {
        address: remote.address,
        port: remote.port,
        expectedFingerprint: plan.peerFingerprint,
        timeoutMs: this.options.handshakeTimeoutMs ?? 3000,
      });
    } catch (error) {
      const code = error instanceof DirectError ? error.code : DirectErrorCode.QUIC;
      this.#fail(path, code, `QUIC handshake with ${formatEndpoint(remote)} failed: ${(error as Error).message}`);
      return;
    }
    if (path.state !== 'connecting' || this.#closed) {
      void transport.close('path abandoned');
      return;
    }
    path.transport = transport;
    path.state = 'up';
    path.readyInMs = Math.round(performance.now() - path.planAt);
    path.reason = undefined;
    path.message = undefined;
    this.#link?.sendControl({
      type: 'direct_state',
      pathId: plan.pathId,
      state: 'up',
      ...(path.via ? { via: path.via } : {}),
      elapsedMs: path.readyInMs,
    });
    this.#log.info(
      { event: 'direct-up', peer: path.peer, remote: formatEndpoint(remote), via: path.via, strategy: plan.strategy, ms: path.readyInMs },
      'direct path up',
    );
    transport.once('closed', (error) => {
      if (path.transport !== transport) return;
      // A path that was up and died (NAT rebinding, peer gone) may be asked for again at once.
      this.#fail(path, 'PathLost', `direct path lost: ${error?.message ?? 'closed by the peer'}`, 0);
    });
    if (this.options.role === 'agent') transport.onStream((stream) => void this.#serveStream(path, stream));
    for (const w of path.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.resolve(transport);
    }
    this.emit('path', this.#status(path));
  }

  // ------------------------------------------------------------------------------------------------------------
  // Agent side: every stream is checked against the policy the gateway sent for this client

  async #serveStream(path: Path, stream: DirectStream): Promise<void> {
    stream.on('error', () => {});
    let open: { port: number | string; host?: string | undefined };
    try {
      open = await readHeader(stream, directOpenReader(), this.options.headerTimeoutMs ?? 10_000);
    } catch (error) {
      this.#log.warn({ event: 'direct-bad-open', client: path.peer, err: (error as Error).message }, 'refusing a direct stream without a valid open header');
      if (!stream.destroyed) stream.reset(0x01);
      return;
    }
    const target = findAllowed(path.allow, open);
    const refuse = (code: StreamErrorCode, message: string): void => {
      stream.end(encodeDirectOpenReply({ code, message }));
    };
    if (!target || path.state !== 'up') {
      this.#log.warn({ event: 'direct-denied', client: path.peer, port: open.port, host: open.host }, 'policy denies a direct stream');
      refuse(StreamErrorCode.DENIED, `policy denies port ${open.port}${open.host ? ` on ${open.host}` : ''} on the direct path`);
      return;
    }
    const serve = this.#serve;
    if (!serve) return refuse(StreamErrorCode.DENIED, 'this peer serves no streams');
    path.streams.set(stream, target);
    stream.once('close', () => path.streams.delete(stream));
    let replied = false;
    serve({ target, client: path.peer, pathId: path.pathId as string }, stream, (reply) => {
      if (replied || stream.destroyed) return;
      replied = true;
      if ('code' in reply) stream.end(encodeDirectOpenReply(reply));
      else stream.write(encodeDirectOpenReply(reply));
    });
  }

  // ------------------------------------------------------------------------------------------------------------

  #newPath(peer: string, pathId: string | undefined): Path {
    return {
      peer,
      pathId,
      state: 'requesting',
      requestId: undefined,
      requestTimer: undefined,
      punch: undefined,
      attemptKey: undefined,
      punchTimer: undefined,
      plan: undefined,
      planAt: performance.now(),
      transport: undefined,
      allow: [],
      streams: new Map(),
      reason: undefined,
      message: undefined,
      retryAt: 0,
      via: undefined,
      readyInMs: undefined,
      waiters: [],
    };
  }

  /** Ends a path: stops punching, closes the connection, tells the gateway (unless it told us), wakes waiters. */
  #fail(path: Path, reason: string, message: string, retryAfterMs = this.options.retryAfterMs ?? 60_000, tellGateway = true): void {
    if (path.state === 'failed') return;
    const wasUp = path.state === 'up';
    // Whichever side noticed first, an up path that died may have died of a changed mapping (NAT rebinding, a
    // flushed table): the next plan must aim at the mapping as it is now, not the one the gateway saw at connect.
    if (wasUp && reason !== 'Closed') this.#link?.reprobeNat();
    path.state = 'failed';
    path.reason = reason;
    path.message = message;
    path.retryAt = performance.now() + retryAfterMs;
    clearTimeout(path.requestTimer);
    clearTimeout(path.punchTimer);
    if (path.requestId !== undefined) this.#byRequest.delete(path.requestId);
    if (path.attemptKey) this.#byAttempt.delete(path.attemptKey);
    path.punch = undefined;
    const transport = path.transport;
    path.transport = undefined;
    if (transport && !transport.closed) void transport.close(reason);
    if (tellGateway && path.pathId) {
      this.#link?.sendControl({ type: 'direct_state', pathId: path.pathId, state: wasUp ? 'closed' : 'failed', reason: reason.slice(0, 64) });
    }
    if (path.pathId) this.#byPathId.delete(path.pathId);
    // An agent keeps no memory of failed paths: the next plan brings a new path id.
    if (this.options.role === 'agent') this.#forget(path);
    const log = wasUp ? this.#log.info : this.#log.warn;
    log.call(this.#log, { event: 'direct-failed', peer: path.peer, reason, msg: message }, wasUp ? 'direct path lost' : 'no direct path');
    for (const w of path.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(this.#unavailable(path));
    }
    this.emit('path', this.#status(path));
  }

  /** Drops an agent-side record (agents key their paths by path id). */
  #forget(path: Path): void {
    if (!path.pathId) return;
    if (this.#paths.get(path.pathId) === path) this.#paths.delete(path.pathId);
    if (this.#byPathId.get(path.pathId) === path) this.#byPathId.delete(path.pathId);
  }

  #unavailable(path: Path): DirectError {
    return new DirectError(DirectErrorCode.UNAVAILABLE, `no direct path to ${path.peer}: ${path.reason}: ${path.message}`, { reason: path.reason ?? 'Unknown' });
  }

  #status(path: Path): DirectPathStatus {
    const now = performance.now();
    return {
      peer: path.peer,
      pathId: path.pathId,
      state: path.state,
      reason: path.reason,
      message: path.message,
      remote: path.transport?.remote,
      via: path.via,
      strategy: path.plan?.strategy,
      readyInMs: path.readyInMs,
      rttMs: path.transport ? Math.round(path.transport.stats().rttMs * 100) / 100 : undefined,
      retryInMs: path.state === 'failed' ? Math.max(0, Math.round(path.retryAt - now)) : undefined,
      streams: this.options.role === 'agent' ? path.streams.size : 0,
    };
  }

  /** Closes every path and the socket. */
  async close(): Promise<void> {
    if (this.#closed) return;
    for (const path of [...this.#paths.values()]) this.#fail(path, 'Closed', 'closing', 0);
    this.#closed = true;
    await this.endpoint.close();
  }
}

/** The allowed target a stream asks for: by exposed name, or by port (and host when given). */
export function findAllowed(allow: readonly DirectAllow[], open: { port: number | string; host?: string | undefined }): DirectAllow | undefined {
  if (typeof open.port === 'string') return allow.find((a) => a.name === open.port && (open.host === undefined || a.host === open.host));
  return allow.find((a) => a.port === open.port && (open.host === undefined || a.host === open.host));
}
