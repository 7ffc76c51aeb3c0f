/**
 * The gateway's core, independent of HTTP: runs peer sessions (handshake, control dispatch, one detach path),
 * applies configuration reloads to live sessions, sweeps for dead peers and expired tokens, and drains on
 * shutdown. The jobs it wires together live in their own modules: authentication (`auth.ts`), the attached
 * agents (`agent-registry.ts`), NAT classifications (`nat-registry.ts`), the relay-open decision
 * (`relay-open.ts`), the relayed streams' lifecycle (`relay-streams.ts`: shares, open timer, splice, re-check, idle
 * limit), per-session rate limits (`rate-limit.ts`) and the direct-path broker (`direct-broker.ts`).
 */
import { randomUUID } from 'node:crypto';
import {
  agentKey,
  type ClientOpen,
  type CompiledPolicy,
  type ControlMessage,
  type DirectRefusalReason,
  checkVersion,
  compilePolicy,
  DEFAULT_INITIAL_STREAM_WINDOW,
  DEFAULT_STREAM_WINDOW,
  ErrorCode,
  type GatewayConfig,
  type GatewayStatusReport,
  HEARTBEAT_DEAD_AFTER_MS,
  HEARTBEAT_INTERVAL_MS,
  type Hello,
  type MuxStream,
  NAT_PROBING_MINOR,
  type NatClassification,
  type NatReport,
  type OpenPayload,
  PROTOCOL_VERSION,
  ProtocolError,
  peerSupportsMinor,
  formatRateLimitRefusal,
  type RateLimitedRequest,
  StreamErrorCode,
} from '@narrowlink/protocol';
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import { type AgentAttachment, AgentRegistry, normalizeAgentRef } from './agent-registry.ts';
import { Authenticator, closeRevokedSessions, type ProofContext } from './auth.ts';
import { DirectPathBroker } from './direct-broker.ts';
import { type BudgetScope, BufferBudget } from './buffer-budget.ts';
import { GatewayError, GatewayErrorCode } from './errors.ts';
import type { GatewayMetrics } from './metrics.ts';
import type { NatProbeServer } from './nat-probe.ts';
import { NatRegistry, natStatusMessage, type PeerNat } from './nat-registry.ts';
import { PeerSession, SessionCloseCode, type SessionIdentity, type SessionKind } from './peer-session.ts';
import type { OpenAdmissionLimits } from './open-admission.ts';
import {
  DEFAULT_IDENTITY_RATE_LIMITS,
  DEFAULT_RATE_LIMITS,
  type IdentityBuckets,
  type IdentityRateLimits,
  IdentityRateLimiters,
  RATE_LIMIT_CLOSE_CODE,
  type RateLimitKind,
  type RateLimits,
  SessionRateLimiter,
} from './rate-limit.ts';
import { decideRelayOpen } from './relay-open.ts';
import { type RelayClient, type RelayedStream, RelayStreams } from './relay-streams.ts';
import { limitCode, type StreamShareLimits } from './stream-shares.ts';
import type { TokenReviewer } from './token-review.ts';

export interface GatewayOptions {
  log: Logger;
  metrics: GatewayMetrics;
  /** Per-stream window this gateway grants peers, bytes. Default DEFAULT_STREAM_WINDOW (4 MiB). */
  streamWindow?: number;
  /**
   * The window each stream starts with (what hello_ok announces); it doubles as the stream's consumer keeps up, up
   * to `streamWindow`. Default DEFAULT_INITIAL_STREAM_WINDOW (256 KiB), capped at `streamWindow`: a client that
   * opens streams and never reads makes each agent push at most this into the gateway, not a full window.
   */
  initialStreamWindow?: number;
  maxStreamsPerSession?: number;
  /** How long an agent has to accept an OPEN before the client gets TIMEOUT. Default 10 s. */
  openTimeoutMs?: number;
  /** Rate limits of each identity over all its sessions, and of its new sessions (rate-limit.ts). */
  identityRateLimits?: Partial<IdentityRateLimits>;
  /** Outstanding OPENs per agent instance and per identity; the rest queue fairly (open-admission.ts). */
  openAdmission?: Partial<OpenAdmissionLimits>;
  /** Shares of each agent's relayed streams per client session and per identity. Default 256 and 1024. */
  streamShares?: Partial<StreamShareLimits>;
  /** A relayed stream without a byte either way for this long is reset IDLE_TIMEOUT; 0 turns it off. Default 4 h. */
  streamIdleTimeoutMs?: number;
  /** How long a new session has to send its hello. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Wall clock, ms since epoch (token expiry, policy expiry). */
  now?: () => number;
  /** Checks ServiceAccount tokens of injected sidecars; absent outside Kubernetes. */
  tokenReviewer?: TokenReviewer;
  /** The UDP probe ports (direct path); absent: peers are not asked to probe. The caller closes it. */
  natProbe?: NatProbeServer;
  /** Called whenever what {@link Gateway.attachedAgents} reports may have changed (the status reporter listens). */
  onAgentsChanged?: () => void;
  /** Per-session rate limits of OPEN, list_agents, direct_request and reauth; default DEFAULT_RATE_LIMITS. */
  rateLimits?: Partial<RateLimits>;
  /** How far a key-bound token's proof `iat` may lie from the gateway's clock, either way, seconds. Default 60. */
  proofMaxAgeSeconds?: number;
  /** Bytes one session may hold in the gateway (unsent + relay queues). Default 64 MiB; see buffer-budget.ts. */
  sessionBufferBytes?: number;
  /** Bytes all sessions together may hold. Default 64 MiB. */
  processBufferBytes?: number;
  /** High-water mark of each session's unsent bytes. Default 1 MiB; see protocol's send-buffer.ts. */
  sendHighWaterBytes?: number;
  /** PING a session that sent nothing for this long (told to peers in hello_ok). Default HEARTBEAT_INTERVAL_MS. */
  heartbeatIntervalMs?: number;
  /**
   * A peer is dead once it sent nothing, read nothing while its send buffer was full, or left a PING unanswered for
   * this long. Default HEARTBEAT_DEAD_AFTER_MS (three intervals).
   */
  deadPeerAfterMs?: number;
}

/**
 * Largest per-stream window of a peer the gateway honours (what it may send before the peer's WINDOW). Peers may
 * announce up to 64 MiB; honouring less is safe as long as it is at least a quarter of the announced window,
 * because a receiver grants credit in batches of a quarter of its own window (MuxStream.consumed).
 */
export const MAX_HONOURED_STREAM_WINDOW = 16 * 1024 * 1024;

/** The client-side role of a session. */
interface ClientState extends RelayClient {
  readonly kind: 'client';
  /** Protocol version from the client's hello. */
  readonly version: string;
  policy: CompiledPolicy;
  /** Relayed streams, opening or open, with the target they were allowed for, re-checked on reload. */
  readonly streams: Map<MuxStream, RelayedStream>;
}

/** What a session is once its hello succeeded. */
type SessionRole = AgentAttachment<PeerSession> | ClientState;

export class Gateway {
  readonly log: Logger;
  readonly metrics: GatewayMetrics;
  readonly streamWindow: number;
  readonly initialStreamWindow: number;
  readonly maxStreamsPerSession: number;
  readonly openTimeoutMs: number;
  readonly handshakeTimeoutMs: number;
  readonly rateLimits: RateLimits;
  readonly sendHighWaterBytes: number | undefined;
  readonly heartbeatIntervalMs: number;
  readonly deadPeerAfterMs: number;
  /** What the gateway holds on peers' behalf, per session and in all (see buffer-budget.ts). */
  readonly bufferBudget: BufferBudget<PeerSession>;
  /** Each session's rate-limit buckets, created on its first limited request. */
  readonly #limiters = new WeakMap<PeerSession, SessionRateLimiter>();
  /** Each identity's buckets over all its sessions (they outlive a reconnect), and which one each session holds. */
  readonly #identityLimiters: IdentityRateLimiters;
  readonly #identityBuckets = new WeakMap<PeerSession, IdentityBuckets>();
  /** When the sweep last forgot idle identities' buckets (performance.now ms). */
  #identitySweepAt = 0;
  /** Relayed streams: shares, open timer, splice, re-check, idle limit. */
  readonly #relay: RelayStreams;
  /** Called whenever an agent instance attaches or leaves, is classified, or its direct paths change. */
  readonly #onAgentsChanged: (() => void) | undefined;
  readonly #now: () => number;
  readonly #auth: Authenticator;
  readonly #nat: NatRegistry;
  readonly #agents: AgentRegistry<PeerSession>;
  /** The direct-path broker: plans, per-path policies, closes. */
  readonly #direct: DirectPathBroker;
  readonly #sessions = new Set<PeerSession>();
  /** The role of each session whose hello succeeded (those are the ones in the `sessions` gauge). */
  readonly #roles = new Map<PeerSession, SessionRole>();
  #config: GatewayConfig | undefined;
  #shuttingDown = false;
  #sweepTimer: NodeJS.Timeout | undefined;

  constructor(options: GatewayOptions) {
    this.log = options.log;
    this.metrics = options.metrics;
    this.streamWindow = options.streamWindow ?? DEFAULT_STREAM_WINDOW;
    this.initialStreamWindow = Math.min(options.initialStreamWindow ?? DEFAULT_INITIAL_STREAM_WINDOW, this.streamWindow);
    this.maxStreamsPerSession = options.maxStreamsPerSession ?? 4096;
    this.openTimeoutMs = options.openTimeoutMs ?? 10_000;
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000;
    this.rateLimits = { ...DEFAULT_RATE_LIMITS, ...options.rateLimits };
    this.#now = options.now ?? Date.now;
    this.#identityLimiters = new IdentityRateLimiters({ ...DEFAULT_IDENTITY_RATE_LIMITS, ...options.identityRateLimits }, this.#now);
    this.sendHighWaterBytes = options.sendHighWaterBytes;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? HEARTBEAT_INTERVAL_MS;
    this.deadPeerAfterMs = options.deadPeerAfterMs ?? HEARTBEAT_DEAD_AFTER_MS;
    this.bufferBudget = new BufferBudget<PeerSession>({
      ...(options.sessionBufferBytes === undefined ? {} : { sessionBytes: options.sessionBufferBytes }),
      ...(options.processBufferBytes === undefined ? {} : { processBytes: options.processBufferBytes }),
      onTotalChanged: (delta) => this.metrics.bufferedBytes.inc(delta),
      stalledForMs: (session) => session.sendBuffer.stalledForMs(),
      onExceeded: (session, scope, heldBytes) => this.#overBudget(session, scope, heldBytes),
    });
    this.#onAgentsChanged = options.onAgentsChanged;
    const config = (): GatewayConfig | undefined => this.#config;
    this.#auth = new Authenticator({
      config,
      shuttingDown: () => this.#shuttingDown,
      now: this.#now,
      tokenReviewer: options.tokenReviewer,
      authFailures: this.metrics.authFailures,
      proofMaxAgeSeconds: options.proofMaxAgeSeconds,
    });
    this.#nat = new NatRegistry({ probe: options.natProbe, now: this.#now });
    this.#agents = new AgentRegistry({ config });
    this.#relay = new RelayStreams({
      metrics: this.metrics,
      now: this.#now,
      openTimeoutMs: this.openTimeoutMs,
      ...(options.streamShares ? { shares: options.streamShares } : {}),
      ...(options.openAdmission ? { openAdmission: options.openAdmission } : {}),
      ...(options.streamIdleTimeoutMs !== undefined ? { idleTimeoutMs: options.streamIdleTimeoutMs } : {}),
      findAgent: (key) => this.#agents.findAgent(key),
      agentCapacity: (key) => {
        let instances = 0;
        for (const _ of this.#agents.instancesOf(key)) instances++;
        return instances * this.maxStreamsPerSession;
      },
    });
    this.#direct = new DirectPathBroker({
      metrics: this.metrics,
      now: this.#now,
      host: {
        probing: this.#nat.probing,
        resolveAgent: (policy, ref) => this.#agents.resolveVisible(policy, ref),
        instancesOf: (key) => this.#agents.instancesOf(key),
        findAgent: (key) => this.#agents.findAgent(key),
        natOf: (sessionId) => this.#nat.get(sessionId),
        onPathsChanged: () => this.#onAgentsChanged?.(),
      },
    });
    // One sweep for all sessions (heartbeats, dead peers, token expiry): a timer per idle session
    // would cost memory at thousands of sessions.
    this.#sweepTimer = setInterval(() => this.#sweep(), Math.min(1000, this.heartbeatIntervalMs / 4));
    this.#sweepTimer.unref();
  }

  get ready(): boolean {
    return this.#config !== undefined && !this.#shuttingDown;
  }

  get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  get openStreams(): number {
    return this.#relay.openCount;
  }

  /** A relayed stream without a byte either way for this long is reset IDLE_TIMEOUT; 0: no limit. */
  get streamIdleTimeoutMs(): number {
    return this.#relay.idleTimeoutMs;
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  get config(): GatewayConfig | undefined {
    return this.#config;
  }

  /** The direct-path broker (read-only use: paths for diagnostics and tests). */
  get directBroker(): DirectPathBroker {
    return this.#direct;
  }

  /**
   * Attached instances per agent (`namespace/name`) for the control plane's agent status, with the NAT type
   * of the instance classified last (absent until one was) and the direct paths up (absent when none).
   */
  attachedAgents(): GatewayStatusReport {
    return this.#agents.snapshot((ids) => this.#nat.latestType(ids), this.#direct.upByAgent());
  }

  /** The NAT classification of a session, once its peer probed and reported. */
  natOf(sessionId: string): PeerNat | undefined {
    return this.#nat.get(sessionId);
  }

  /** Installs a configuration; on a reload, recompiles every client's policy and resets revoked streams. */
  applyConfig(config: GatewayConfig): void {
    const first = this.#config === undefined;
    this.#config = config;
    if (first) return;
    // Tokens and subjects the configuration now denies (tokens.deny) lose their sessions at once.
    const revoked = closeRevokedSessions(config, this.#sessions);
    if (revoked > 0) this.metrics.sessionsRevoked.inc(revoked);
    // Agents removed from the configuration lose their sessions; the rest pick up new settings.
    for (const removed of this.#agents.reconfigure()) removed.session.close(4403, 'agent removed from configuration');
    for (const role of this.#roles.values()) if (role.kind === 'client') this.#recompile(role);
  }

  #recompile(client: ClientState): void {
    const config = this.#config;
    if (!config) return;
    client.policy = compilePolicy(config, client.session.identity, this.#now());
    this.#relay.recheck(client);
    // Direct paths of this client: a new allow list for the agent, or closed when nothing is allowed any more.
    this.#direct.policyChanged(client);
  }

  /**
   * Authenticates an upgrade request before any WebSocket exists (`proof`: the `DPoP` header and the URL it must
   * name, for key-bound tokens). Throws GatewayError with the HTTP status to answer; never logs the token.
   */
  authenticate(kind: SessionKind, authorization: string | undefined, agentRef?: string, proof?: ProofContext): Promise<SessionIdentity> {
    return this.#auth.authenticate(kind, authorization, agentRef, proof);
  }

  /** Takes over an authenticated WebSocket. */
  attach(kind: SessionKind, identity: SessionIdentity, ws: WebSocket): PeerSession {
    const id = randomUUID();
    const log = this.log.child({ component: 'session', session: id, kind, sub: identity.sub });
    const session: PeerSession = new PeerSession({
      id,
      kind,
      identity,
      ws,
      log,
      localWindow: this.streamWindow,
      initialWindow: this.initialStreamWindow,
      maxStreams: this.maxStreamsPerSession,
      budget: this.bufferBudget,
      onIdsExhausted: (code) => this.metrics.protocolErrors.inc({ reason: code }),
      ...(this.sendHighWaterBytes === undefined ? {} : { sendHighWaterBytes: this.sendHighWaterBytes }),
      handlers: {
        onControl: (message) => this.#onControl(session, message),
        // Unanswered over the limit: the peer's heartbeat needs one PONG per interval, a flood gets none.
        onPing: () => this.#rateLimit(session, 'ping') === 'allowed',
        onSessionError: (error) => {
          this.metrics.protocolErrors.inc({ reason: error.code });
          log.warn({ code: error.code, msg: error.message }, 'peer broke the protocol; closing session');
          session.mux.sendControl({ type: 'error', code: error.code, message: error.message.slice(0, 1024) });
          session.close(4400, error.code);
        },
        // A stream before the hello breaks the handshake like any other early message: end the session,
        // not only the stream, so a peer cannot sit in `handshaking` probing OPENs until the timeout.
        onOpen: (stream) => {
          stream.reset(StreamErrorCode.PROTOCOL_ERROR, 'no stream before hello');
          this.#protocolViolation(session, 'OPEN before hello');
        },
      },
      onClosed: () => this.#detach(session),
    });
    this.#sessions.add(session);
    // Before anything else the session may cost: an identity reconnecting faster than its connect limit goes at once.
    const identityBuckets = this.#identityLimiters.acquire(`${identity.typ}\u0000${identity.sub}`);
    if (!identityBuckets) {
      this.metrics.rateLimited.inc({ kind: 'connect' });
      this.metrics.rateLimitCloses.inc();
      log.warn('identity opens sessions faster than its connect limit; closing session');
      session.mux.sendControl({ type: 'error', code: GatewayErrorCode.RATE_LIMITED, message: 'too many new sessions for this identity; reconnect more slowly' });
      session.close(RATE_LIMIT_CLOSE_CODE, GatewayErrorCode.RATE_LIMITED);
      return session;
    }
    this.#identityBuckets.set(session, identityBuckets);
    setTimeout(() => {
      if (session.state === 'handshaking') {
        session.mux.sendControl({ type: 'error', code: GatewayErrorCode.HANDSHAKE_TIMEOUT, message: 'no hello received in time' });
        session.close(SessionCloseCode.HANDSHAKE_TIMEOUT, 'handshake timeout');
      }
    }, this.handshakeTimeoutMs).unref();
    return session;
  }

  /** The one way out of the gateway's books for a session, whatever its role (by now `state` is 'closed'). */
  #detach(session: PeerSession): void {
    this.#sessions.delete(session);
    const identityBuckets = this.#identityBuckets.get(session);
    if (identityBuckets) this.#identityLimiters.release(identityBuckets);
    this.#identityBuckets.delete(session);
    const role = this.#roles.get(session);
    this.#roles.delete(session);
    // Only sessions that completed the hello were counted.
    if (role) this.metrics.sessions.dec({ kind: session.kind });
    this.#nat.forget(session.id);
    // The other side of each direct path hears direct_close (an agent instance or a client went away).
    this.#direct.sessionClosed(session);
    if (role?.kind === 'agent') {
      this.#agents.detach(role);
      this.#onAgentsChanged?.();
    }
    session.log.info('session closed');
  }

  #onControl(session: PeerSession, message: ControlMessage): void {
    if (message.type === 'hello') return this.#onHello(session, message);
    if (session.state !== 'open') return this.#protocolViolation(session, `${message.type} before hello`);
    const role = this.#roles.get(session);
    switch (message.type) {
      case 'reauth': {
        // Over the limit the session keeps its current credential (as when the check is deferred); the peer resends.
        const limited = this.#rateLimit(session, 'reauth');
        if (limited === 'refused') this.#sendRateLimited(session, 'reauth');
        else if (limited === 'allowed') void this.#reauthenticate(session, message.token, message.proof);
        return;
      }
      case 'nat_report':
        return this.#onNatReport(session, message);
      case 'nat_reprobe': {
        const info = this.#nat.reprobe(session.id);
        if (info) session.mux.sendControl(info);
        return;
      }
      case 'direct_request': {
        if (session.kind !== 'client') break;
        const limited = this.#rateLimit(session, 'direct_request');
        if (limited === 'refused' && role?.kind === 'client') {
          const reason = limitCode<DirectRefusalReason>(role.version, 'RateLimited', 'TooManyAttempts');
          const retryMs = this.#limiters.get(session)?.retryAfterMs('direct_request') ?? 0;
          session.mux.sendControl({ type: 'direct_refused', requestId: message.requestId, reason, message: `direct_request rate limit; retry in ${retryMs} ms` });
        } else if (limited === 'allowed' && role?.kind === 'client') this.#direct.request(role, message);
        return;
      }
      // Both sides report what became of a path; a report for a path they are not part of is ignored there.
      case 'direct_state':
        return this.#direct.state(session, message);
      case 'list_agents': {
        if (session.kind !== 'client') break;
        const limited = this.#rateLimit(session, 'list_agents');
        if (limited === 'refused') this.#sendRateLimited(session, 'list_agents');
        else if (limited === 'allowed' && role?.kind === 'client') session.mux.sendControl({ type: 'agents', requestId: message.requestId, agents: this.#agents.summaries(role.policy) });
        return;
      }
    }
    return this.#protocolViolation(session, `unexpected ${message.type} message from a ${session.kind}`);
  }

  /**
   * Counts one request against the session's rate limit (rate-limit.ts). `refused`: the caller answers with its
   * typed refusal, the session stays. `closed`: the session kept going past its limits and is being closed with
   * 4429 and NL_ERR_GATEWAY_RATE_LIMITED; nothing more is sent.
   */
  #rateLimit(session: PeerSession, kind: RateLimitKind): 'allowed' | 'refused' | 'closed' {
    let limiter = this.#limiters.get(session);
    if (!limiter) {
      limiter = new SessionRateLimiter(this.rateLimits, this.#now, this.#identityBuckets.get(session));
      this.#limiters.set(session, limiter);
    }
    const decision = limiter.check(kind);
    if (decision === 'allowed') return 'allowed';
    this.metrics.rateLimited.inc({ kind });
    if (decision === 'refused') return 'refused';
    if (session.state === 'open') {
      this.metrics.rateLimitCloses.inc();
      session.log.warn({ kind }, 'peer keeps going past its rate limits; closing session');
      session.mux.sendControl({ type: 'error', code: GatewayErrorCode.RATE_LIMITED, message: `too many ${kind} requests for too long; reconnect and slow down` });
      session.close(RATE_LIMIT_CLOSE_CODE, GatewayErrorCode.RATE_LIMITED);
    }
    return 'closed';
  }

  /** The typed refusal of a `list_agents` or `reauth` over the limit: a session error that does not end the session. */
  #sendRateLimited(session: PeerSession, kind: RateLimitedRequest): void {
    const retryMs = this.#limiters.get(session)?.retryAfterMs(kind) ?? 0;
    session.mux.sendControl({ type: 'error', code: GatewayErrorCode.RATE_LIMITED, message: formatRateLimitRefusal(kind, retryMs) });
  }

  #onHello(session: PeerSession, message: Hello): void {
    if (session.state !== 'handshaking') return this.#protocolViolation(session, 'hello sent twice');
    try {
      checkVersion(message.version);
      if (message.role !== session.kind) {
        throw new ProtocolError(ErrorCode.PROTOCOL_UNEXPECTED, `hello says role ${message.role} on the ${session.kind} endpoint`);
      }
    } catch (error) {
      const e = error as ProtocolError;
      session.mux.sendControl({ type: 'error', code: e.code, message: e.message });
      session.close(4400, e.code);
      return;
    }
    session.mux.peerWindow = Math.min(message.streamWindow, MAX_HONOURED_STREAM_WINDOW);
    const role = session.kind === 'agent' ? this.#helloAgent(session, message) : this.#helloClient(session, message);
    // The agent may have been refused (the session is closing then).
    if (!role) return;
    this.#roles.set(session, role);
    session.transition('open');
    if (role.kind === 'agent') {
      this.#onAgentsChanged?.();
      session.log.info({ agent: role.key, instance: role.instanceId, announced: message.agent?.expose.length }, 'agent attached');
    }
    this.metrics.sessions.inc({ kind: session.kind });
    session.mux.sendControl({
      type: 'hello_ok',
      version: PROTOCOL_VERSION,
      sessionId: session.id,
      identity: { sub: session.identity.sub, groups: session.identity.groups, typ: session.kind, expiresAt: session.identity.expiresAtMs },
      // Each stream's starting window (the peer's initial credit); auto-tuning grows it (MuxOptions.initialWindow).
      streamWindow: this.initialStreamWindow,
      heartbeatIntervalMs: this.heartbeatIntervalMs,
    });
    // Only peers that know the probing messages get them (an older 1.x peer would reject an unknown one).
    if (peerSupportsMinor(message.version, NAT_PROBING_MINOR)) {
      const info = this.#nat.register(session.id);
      if (info) session.mux.sendControl(info);
    }
    session.log.info('session open');
  }

  #helloAgent(session: PeerSession, hello: Hello): AgentAttachment<PeerSession> | undefined {
    const attachment = hello.agent ? this.#agents.attach(session, normalizeAgentRef(session.identity.sub), hello.agent.instanceId, hello.version) : undefined;
    if (!attachment) {
      session.mux.sendControl({ type: 'error', code: GatewayErrorCode.AUTH_UNKNOWN_AGENT, message: 'agent hello without agent section or unknown agent' });
      session.close(4403, GatewayErrorCode.AUTH_UNKNOWN_AGENT);
      return undefined;
    }
    session.mux.handlers.onOpen = (stream) => stream.reset(StreamErrorCode.PROTOCOL_ERROR, 'agents do not open streams');
    return attachment;
  }

  #helloClient(session: PeerSession, hello: Hello): ClientState {
    const config = this.#config as GatewayConfig;
    const client: ClientState = { kind: 'client', session, version: hello.version, policy: compilePolicy(config, session.identity, this.#now()), streams: new Map() };
    session.mux.handlers.onOpen = (stream, payload) => this.#openFromClient(client, stream, payload);
    return client;
  }

  /** Classifies the peer's NAT from what the probe ports saw plus its report, and tells the peer. */
  #onNatReport(session: PeerSession, report: NatReport): void {
    let classification: NatClassification | undefined;
    try {
      classification = this.#nat.report(session.id, report);
    } catch (error) {
      return this.#protocolViolation(session, `nat_report rejected: ${(error as Error).message}`);
    }
    if (!classification) return;
    this.metrics.natClassifications.inc({ type: classification.type });
    session.log.info({ natType: classification.type, filtering: classification.filtering, destinations: classification.destinations }, 'peer NAT classified');
    session.mux.sendControl(natStatusMessage(classification));
    if (session.kind === 'agent') this.#onAgentsChanged?.();
  }

  /** Accepts a fresh credential for the same identity and extends the session; anything else closes it. */
  async #reauthenticate(session: PeerSession, token: string, proof: string | undefined): Promise<void> {
    const identity = session.identity;
    const outcome = await this.#auth.reauthenticate(session.kind, identity, token, proof);
    if (outcome.result === 'deferred') {
      // The API server blinked (TokenReview unavailable): the current credential is still good, so
      // keep the session and its streams; the peer retries, and the sweep ends it at expiry if not.
      session.log.warn({ reason: outcome.error.reason }, 'could not re-authenticate now; keeping the session until its token expires');
      return;
    }
    let refusal = outcome.result === 'refused' ? outcome.error : undefined;
    if (outcome.result === 'renewed') {
      try {
        identity.expiresAtMs = outcome.identity.expiresAtMs;
        identity.jti = outcome.identity.jti;
        // Group membership may have changed with the new token: the client's policy follows (only then: the
        // same identity under the same configuration compiles to the same policy).
        const groupsChanged = outcome.identity.groups.length !== identity.groups.length || outcome.identity.groups.some((g, i) => g !== identity.groups[i]);
        identity.groups = outcome.identity.groups;
        const role = this.#roles.get(session);
        if (role?.kind === 'client' && groupsChanged) this.#recompile(role);
        session.mux.sendControl({ type: 'reauth_ok', expiresAt: outcome.identity.expiresAtMs });
        session.log.debug({ expiresAtMs: outcome.identity.expiresAtMs }, 'session re-authenticated');
      } catch (error) {
        // Nothing here is expected to throw; if it does, the session ends rather than the (un-awaited) promise rejecting.
        refusal = new GatewayError(GatewayErrorCode.INTERNAL, 500, 'internal error', { cause: error });
      }
    }
    if (refusal) {
      session.mux.sendControl({ type: 'error', code: refusal.code, message: refusal.message });
      session.close(4401, refusal.reason);
    }
  }

  #protocolViolation(session: PeerSession, what: string): void {
    this.metrics.protocolErrors.inc({ reason: ErrorCode.PROTOCOL_UNEXPECTED });
    session.mux.sendControl({ type: 'error', code: ErrorCode.PROTOCOL_UNEXPECTED, message: what });
    session.close(4400, ErrorCode.PROTOCOL_UNEXPECTED);
  }

  #openFromClient(client: ClientState, stream: MuxStream, payload: OpenPayload): void {
    const startedAt = performance.now();
    const fail = (code: StreamErrorCode, message: string): void => {
      this.metrics.streamsTotal.inc({ result: code });
      stream.reset(code, message);
    };
    if (this.#shuttingDown) return fail(StreamErrorCode.GATEWAY_SHUTTING_DOWN, 'gateway is shutting down; retry on reconnect');
    if (this.#rateLimit(client.session, 'open') !== 'allowed') {
      return fail(limitCode(client.version, StreamErrorCode.RATE_LIMITED, StreamErrorCode.TOO_MANY_STREAMS), 'stream open rate limit; retry shortly');
    }
    if (!('agent' in payload)) return fail(StreamErrorCode.PROTOCOL_ERROR, 'client OPEN needs agent and port');
    const request = payload as ClientOpen;
    // An agent the client may not see at all is reported as absent, so names do not leak.
    const agent = this.#agents.resolveVisible(client.policy, request.agent);
    const decision = decideRelayOpen(client.policy, agent, request);
    if (!('exposed' in decision)) return fail(decision.code, decision.message);
    const instance = this.#agents.leastLoaded(agentKey(decision.agent.namespace, decision.agent.name));
    if (!instance) return fail(StreamErrorCode.NO_AGENT, `agent "${decision.agent.name}" has no connected instance`);
    this.#relay.open(client, stream, decision, instance, startedAt, fail);
  }

  /** A session over a buffer budget: counted, logged, then closed by the session itself (see closeOverBudget). */
  #overBudget(session: PeerSession, scope: BudgetScope, heldBytes: number): void {
    if (session.state === 'closing' || session.state === 'closed') return;
    const limitBytes = scope === 'session' ? this.bufferBudget.sessionBytes : this.bufferBudget.processBytes;
    this.metrics.bufferLimitCloses.inc({ scope });
    session.log.warn({ scope, heldBytes, limitBytes }, 'session over its buffer budget (it does not read what it is sent); closing it');
    session.closeOverBudget(
      scope === 'session'
        ? `this session held ${heldBytes} bytes and did not read, over its budget of ${limitBytes}`
        : `the gateway is over its buffer budget of ${limitBytes} bytes and this session, not reading, held the most (${heldBytes})`,
    );
  }

  /** The client roles of the open sessions. */
  *#clients(): Generator<ClientState> {
    for (const role of this.#roles.values()) if (role.kind === 'client') yield role;
  }

  #sweep(): void {
    const now = performance.now();
    const wall = this.#now();
    for (const session of this.#sessions) {
      // A closing session is terminated by its own close timer; judging it again would only repeat the verdict.
      if (session.state === 'closed' || session.state === 'closing') continue;
      const deadAfterMs = this.deadPeerAfterMs;
      if (session.sendBuffer.stalledForMs(now) > deadAfterMs || now - (session.pingOutstandingSince ?? now) > deadAfterMs) {
        // Alive means reading too: a peer that sends (PINGs, say) but takes nothing the gateway sends is dead. Checked
        // first so that such a peer is told why (the silence rule below would also fire: a blocked peer is not read).
        this.metrics.stalledSessions.inc();
        session.log.warn({ unsentBytes: session.sendBuffer.unflushedBytes }, 'peer stopped reading or answering PINGs; dropping session');
        session.mux.sendControl({ type: 'error', code: GatewayErrorCode.PEER_STALLED, message: 'the peer stopped reading what the gateway sends' });
        session.close(SessionCloseCode.PEER_STALLED, GatewayErrorCode.PEER_STALLED);
      } else if (now - session.lastReceivedAt > deadAfterMs) {
        session.log.warn('peer silent past the heartbeat deadline; dropping session');
        session.terminate();
      } else if (wall >= session.identity.expiresAtMs) {
        session.mux.sendControl({ type: 'error', code: ErrorCode.TOKEN_EXPIRED, message: 'session token expired; reconnect with a fresh token' });
        session.close(4401, ErrorCode.TOKEN_EXPIRED);
      } else if (session.state === 'open' && session.pingOutstandingSince === undefined && now - session.lastPongAt > this.heartbeatIntervalMs) {
        // Every interval, whatever else is sent: a peer that floods the gateway but never reads would otherwise keep
        // it busy answering and never be asked to prove it reads.
        session.ping(now);
      }
    }
    // Policies with expiresAt lapse without a reload: recompile those clients when due.
    for (const role of this.#roles.values()) {
      if (role.kind !== 'client') continue;
      const due = role.policy.nextExpiryMs;
      if (due !== undefined && due <= wall) this.#recompile(role);
    }
    this.#relay.resetIdle(this.#clients(), wall);
    if (now - this.#identitySweepAt >= 10_000) {
      this.#identitySweepAt = now;
      this.#identityLimiters.sweep();
    }
    this.bufferBudget.sweep();
    this.#direct.sweep();
  }

  /**
   * Stops taking sessions and streams, tells every peer to go away, waits up to `drainMs` for open
   * streams to finish, then closes what is left.
   */
  async shutdown(drainMs: number): Promise<void> {
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    this.log.info({ drainMs, streams: this.#relay.openCount }, 'draining');
    for (const session of this.#sessions) {
      if (session.state === 'open') session.mux.sendControl({ type: 'goaway', reason: 'gateway shutting down', drainMs });
    }
    const deadline = performance.now() + drainMs;
    while (this.#relay.openCount > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const session of this.#sessions) {
      session.mux.resetAll(StreamErrorCode.GATEWAY_SHUTTING_DOWN, 'gateway shut down');
      session.close(1001, 'gateway shutting down');
    }
    clearInterval(this.#sweepTimer);
    const closeDeadline = performance.now() + 2000;
    while (this.#sessions.size > 0 && performance.now() < closeDeadline) await new Promise((r) => setTimeout(r, 20));
    for (const session of this.#sessions) session.terminate();
  }
}
