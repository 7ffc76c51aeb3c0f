/**
 * The gateway's core, independent of HTTP: authenticates peers, runs their sessions, keeps the
 * registry of attached agent instances, answers client OPENs (policy, instance choice, relay),
 * applies configuration reloads to live sessions and drains on shutdown.
 */
import { randomUUID } from 'node:crypto';
import {
  type AgentConfig,
  type AgentSummary,
  agentKey,
  type ClientOpen,
  type CompiledPolicy,
  type ControlMessage,
  checkVersion,
  classifyNat,
  compilePolicy,
  DEFAULT_STREAM_WINDOW,
  type Endpoint,
  type ExposedPort,
  type GatewayConfig,
  type GatewayStatusReport,
  HEARTBEAT_DEAD_AFTER_MS,
  HEARTBEAT_INTERVAL_MS,
  type Hello,
  type MuxStream,
  NAT_PROBING_MINOR,
  type NatClassification,
  type NatReport,
  type NatStatus,
  type OpenPayload,
  PROTOCOL_VERSION,
  ProtocolError,
  peerSupportsMinor,
  StreamErrorCode,
  TokenError,
  verifyToken,
} from '@narrowlink/protocol';
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import { DirectPaths } from './direct-paths.ts';
import { GatewayError, GatewayErrorCode } from './errors.ts';
import type { GatewayMetrics } from './metrics.ts';
import type { NatProbeServer } from './nat-probe.ts';
import { PeerSession, type SessionIdentity, type SessionKind } from './peer-session.ts';
import { splice } from './relay.ts';
import type { TokenReviewer } from './token-review.ts';

export interface GatewayOptions {
  log: Logger;
  metrics: GatewayMetrics;
  /** Per-stream window this gateway grants peers, bytes. Default DEFAULT_STREAM_WINDOW (4 MiB). */
  streamWindow?: number;
  maxStreamsPerSession?: number;
  /** How long an agent has to accept an OPEN before the client gets TIMEOUT. Default 10 s. */
  openTimeoutMs?: number;
  /** How long a new session has to send its hello. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Wall clock, ms since epoch (token expiry, policy expiry). */
  now?: () => number;
  /** Checks ServiceAccount tokens of injected sidecars; absent outside Kubernetes. */
  tokenReviewer?: TokenReviewer;
  /** The UDP probe ports (direct path); absent: peers are not asked to probe. The caller closes it. */
  natProbe?: NatProbeServer;
}

/** A peer's NAT as classified from its probes and its report: what punch planning starts from. */
export interface PeerNat {
  classification: NatClassification;
  /** Local endpoints of the peer's QUIC socket, from its report (LAN candidates). */
  localEndpoints: Endpoint[];
  /** Wall clock of the classification, ms. */
  atMs: number;
  /** sha256 hex of the certificate the peer generated for its QUIC endpoint (from its last report); forwarded in punch plans. */
  certFingerprint?: string;
}

/** nat_report messages a session may send (each re-classifies); more are ignored. */
const MAX_NAT_REPORTS = 8;

interface AgentInstance {
  session: PeerSession;
  instanceId: string;
  agent: AgentConfig;
  /** Protocol version from the instance's hello (direct paths need 1.2). */
  version: string;
}

interface ClientState {
  session: PeerSession;
  /** Protocol version from the client's hello. */
  version: string;
  policy: CompiledPolicy;
  /** Open relayed streams with the target they were allowed for, re-checked on reload. */
  streams: Map<MuxStream, { agent: AgentConfig; host: string; port: number; agentStream: MuxStream }>;
}

export class Gateway {
  readonly log: Logger;
  readonly metrics: GatewayMetrics;
  readonly streamWindow: number;
  readonly maxStreamsPerSession: number;
  readonly openTimeoutMs: number;
  readonly handshakeTimeoutMs: number;
  readonly #now: () => number;
  readonly #tokenReviewer: TokenReviewer | undefined;
  readonly #natProbe: NatProbeServer | undefined;
  /** Classified peers by session id; an entry goes with its session. */
  readonly #nat = new Map<string, PeerNat & { reports: number; reprobes: number }>();
  #config: GatewayConfig | undefined;
  /** agentKey → attached instances */
  readonly #agents = new Map<string, Set<AgentInstance>>();
  /** Open client sessions and their compiled policies. */
  readonly #clients = new Map<PeerSession, ClientState>();
  readonly #sessions = new Set<PeerSession>();
  /** Sessions included in the `sessions` gauge (those whose hello succeeded). */
  readonly #countedSessions = new Set<PeerSession>();
  /** The direct-path broker: plans, per-path policies, closes. */
  readonly #direct: DirectPaths;
  #shuttingDown = false;
  #sweepTimer: NodeJS.Timeout | undefined;
  #openStreams = 0;

  constructor(options: GatewayOptions) {
    this.log = options.log;
    this.metrics = options.metrics;
    this.streamWindow = options.streamWindow ?? DEFAULT_STREAM_WINDOW;
    this.maxStreamsPerSession = options.maxStreamsPerSession ?? 4096;
    this.openTimeoutMs = options.openTimeoutMs ?? 10_000;
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000;
    this.#now = options.now ?? Date.now;
    this.#tokenReviewer = options.tokenReviewer;
    this.#natProbe = options.natProbe;
    this.#direct = new DirectPaths({
      metrics: this.metrics,
      now: this.#now,
      host: {
        probing: this.#natProbe !== undefined,
        resolveAgent: (policy, ref) => this.#resolveAgent(policy, ref),
        instancesOf: (key) => this.#agents.get(key) ?? [],
        findAgent: (key) => this.#findAgent(key),
        natOf: (sessionId) => this.natOf(sessionId),
        onPathsChanged: () => this.onAgentsChanged?.(),
      },
    });
    // One sweep for all sessions (heartbeats, dead peers, token expiry): a timer per idle session
    // would cost memory at thousands of sessions.
    this.#sweepTimer = setInterval(() => this.#sweep(), Math.min(1000, HEARTBEAT_INTERVAL_MS / 4));
    this.#sweepTimer.unref();
  }

  get ready(): boolean {
    return this.#config !== undefined && !this.#shuttingDown;
  }

  get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  get openStreams(): number {
    return this.#openStreams;
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  get config(): GatewayConfig | undefined {
    return this.#config;
  }

  /** The direct-path broker (read-only use: paths for diagnostics and tests). */
  get directPaths(): DirectPaths {
    return this.#direct;
  }

  /**
   * Attached instances per agent (`namespace/name`) for the control plane's agent status, with the NAT type
   * of the instance classified last (absent until one was) and the direct paths up (absent when none).
   */
  attachedAgents(): GatewayStatusReport {
    const out: GatewayStatusReport = {};
    const up = this.#direct.upByAgent();
    for (const [key, instances] of this.#agents) {
      let latest: PeerNat | undefined;
      for (const instance of instances) {
        const nat = this.#nat.get(instance.session.id);
        if (nat && (!latest || nat.atMs >= latest.atMs)) latest = nat;
      }
      const paths = up.get(key);
      out[key] = { instances: instances.size, ...(latest ? { nat: latest.classification.type } : {}), ...(paths ? { directPaths: paths } : {}) };
    }
    return out;
  }

  /** The NAT classification of a session, once its peer probed and reported. */
  natOf(sessionId: string): PeerNat | undefined {
    const nat = this.#nat.get(sessionId);
    if (!nat) return undefined;
    return {
      classification: nat.classification,
      localEndpoints: nat.localEndpoints,
      atMs: nat.atMs,
      ...(nat.certFingerprint !== undefined ? { certFingerprint: nat.certFingerprint } : {}),
    };
  }

  /** Called whenever an agent instance attaches or leaves. */
  onAgentsChanged: (() => void) | undefined;

  /** Installs a configuration; on a reload, recompiles every client's policy and resets revoked streams. */
  applyConfig(config: GatewayConfig): void {
    const first = this.#config === undefined;
    this.#config = config;
    if (first) return;
    // Agents removed from the configuration lose their sessions; the rest pick up new settings.
    for (const [key, instances] of this.#agents) {
      const updated = this.#findAgent(key);
      for (const instance of [...instances]) {
        if (!updated) instance.session.close(4403, 'agent removed from configuration');
        else instance.agent = updated;
      }
    }
    for (const client of this.#clients.values()) this.#recompile(client);
  }

  #findAgent(key: string): AgentConfig | undefined {
    return this.#config?.agents.find((a) => agentKey(a.namespace, a.name) === key);
  }

  #recompile(client: ClientState): void {
    const config = this.#config;
    if (!config) return;
    client.policy = compilePolicy(config, client.session.identity, this.#now());
    for (const [stream, target] of client.streams) {
      const agent = this.#findAgent(agentKey(target.agent.namespace, target.agent.name));
      const decision = agent ? client.policy.evaluate({ agent, host: target.host, port: target.port, path: 'Relay' }) : undefined;
      if (!decision?.allowed) {
        this.metrics.policyResets.inc();
        client.session.log.info({ agent: target.agent.name, port: target.port }, 'access revoked; resetting stream');
        stream.reset(StreamErrorCode.DENIED, 'access revoked by a policy change');
      }
    }
    // Direct paths of this client: a new allow list for the agent, or closed when nothing is allowed any more.
    this.#direct.policyChanged(client);
  }

  /**
   * Authenticates an upgrade request before any WebSocket exists. Throws GatewayError with the
   * HTTP status to answer; never logs the token.
   */
  async authenticate(kind: SessionKind, authorization: string | undefined, agentRef?: string): Promise<SessionIdentity> {
    try {
      if (this.#shuttingDown) throw new GatewayError(GatewayErrorCode.SHUTTING_DOWN, 503, 'gateway is shutting down; reconnect shortly');
      const config = this.#config;
      if (!config) throw new GatewayError(GatewayErrorCode.NOT_READY, 503, 'gateway has no configuration yet');
      const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
      if (!match) throw new GatewayError(GatewayErrorCode.AUTH_MISSING_TOKEN, 401, 'send "Authorization: Bearer <token>"');
      // An agent naming itself presents a ServiceAccount token (injected sidecar), checked by TokenReview.
      if (kind === 'agent' && agentRef !== undefined) return await this.#authenticateServiceAccount(config, match[1] as string, agentRef);
      let claims: Awaited<ReturnType<typeof verifyToken>>;
      try {
        claims = await verifyToken(match[1] as string, {
          publicKeysPem: config.signingPublicKeys,
          audience: config.audience,
          expectedType: kind,
          nowMs: this.#now(),
        });
      } catch (error) {
        if (!(error instanceof TokenError)) throw error;
        const wrongType = error.code === 'NL_ERR_TOKEN_WRONG_TYPE';
        throw new GatewayError(
          wrongType ? GatewayErrorCode.AUTH_WRONG_ENDPOINT : GatewayErrorCode.AUTH_INVALID_TOKEN,
          wrongType ? 403 : 401,
          wrongType ? `this endpoint takes ${kind} tokens` : `token rejected: ${error.message}`,
          { reason: error.code, cause: error },
        );
      }
      // verifyToken allows 30 s of skew past `exp`, but the sweep closes a session at `exp` itself: accepting such a
      // token would let a peer reconnect and be closed again, in a loop, for those 30 s.
      if (claims.exp * 1000 <= this.#now()) {
        throw new GatewayError(GatewayErrorCode.AUTH_INVALID_TOKEN, 401, 'token rejected: token has expired', { reason: 'NL_ERR_TOKEN_EXPIRED' });
      }
      if (kind === 'agent' && !this.#findAgent(normalizeAgentRef(claims.sub))) {
        throw new GatewayError(GatewayErrorCode.AUTH_UNKNOWN_AGENT, 403, `agent "${claims.sub}" is not configured on this gateway`);
      }
      return { sub: claims.sub, groups: claims.groups, typ: kind, expiresAtMs: claims.exp * 1000 };
    } catch (error) {
      const gatewayError =
        error instanceof GatewayError ? error : new GatewayError(GatewayErrorCode.INTERNAL, 500, 'internal error', { cause: error });
      this.metrics.authFailures.inc({ reason: gatewayError.reason });
      throw gatewayError;
    }
  }

  async #authenticateServiceAccount(config: GatewayConfig, token: string, agentRef: string): Promise<SessionIdentity> {
    if (!this.#tokenReviewer) {
      throw new GatewayError(GatewayErrorCode.AUTH_INVALID_TOKEN, 401, 'this gateway does not accept ServiceAccount tokens (it runs without Kubernetes)', {
        reason: 'NL_ERR_TOKEN_REVIEW_UNAVAILABLE',
      });
    }
    let result: Awaited<ReturnType<TokenReviewer['review']>>;
    try {
      result = await this.#tokenReviewer.review(token, config.audience);
    } catch (error) {
      throw new GatewayError(GatewayErrorCode.NOT_READY, 503, 'cannot verify ServiceAccount tokens right now (TokenReview failed); retry', {
        reason: 'NL_ERR_TOKEN_REVIEW_UNAVAILABLE',
        cause: error,
      });
    }
    if (!result.authenticated) throw new GatewayError(GatewayErrorCode.AUTH_INVALID_TOKEN, 401, 'ServiceAccount token rejected by the TokenReview', { reason: result.reason });
    // Only an authenticated caller learns whether the agent exists (no name oracle before authentication).
    const key = normalizeAgentRef(agentRef);
    const agent = this.#findAgent(key);
    if (!agent) throw new GatewayError(GatewayErrorCode.AUTH_UNKNOWN_AGENT, 403, `agent "${agentRef}" is not configured on this gateway`);
    if (result.namespace !== agent.namespace || !agent.serviceAccounts.includes(result.serviceAccount)) {
      throw new GatewayError(
        GatewayErrorCode.AUTH_SERVICE_ACCOUNT_NOT_ALLOWED,
        403,
        `ServiceAccount ${result.namespace}/${result.serviceAccount} may not attach as agent ${key}`,
      );
    }
    return { sub: key, groups: [], typ: 'agent', expiresAtMs: result.expiresAtMs, viaServiceAccount: true };
  }

  /** Takes over an authenticated WebSocket. */
  attach(kind: SessionKind, identity: SessionIdentity, ws: WebSocket): PeerSession {
    const id = randomUUID();
    const log = this.log.child({ component: 'session', session: id, kind, sub: identity.sub });
    let onClosedExtra: (() => void) | undefined;
    const session: PeerSession = new PeerSession({
      id,
      kind,
      identity,
      ws,
      log,
      localWindow: this.streamWindow,
      maxStreams: this.maxStreamsPerSession,
      handlers: {
        onControl: (message) => this.#onControl(session, message, (extra) => (onClosedExtra = extra)),
        onSessionError: (error) => {
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
      onClosed: () => {
        this.#sessions.delete(session);
        // Only sessions that completed the hello were counted; by now `state` is always 'closed'.
        if (this.#countedSessions.delete(session)) this.metrics.sessions.dec({ kind });
        this.#natProbe?.unregister(id);
        this.#nat.delete(id);
        // The other side of each direct path hears direct_close (an agent instance or a client went away).
        this.#direct.sessionClosed(session);
        onClosedExtra?.();
        log.info('session closed');
      },
    });
    this.#sessions.add(session);
    setTimeout(() => {
      if (session.state === 'handshaking') {
        session.mux.sendControl({ type: 'error', code: GatewayErrorCode.HANDSHAKE_TIMEOUT, message: 'no hello received in time' });
        session.close(4408, 'handshake timeout');
      }
    }, this.handshakeTimeoutMs).unref();
    return session;
  }

  #onControl(session: PeerSession, message: ControlMessage, setOnClosed: (fn: () => void) => void): void {
    if (message.type === 'hello') {
      if (session.state !== 'handshaking') return this.#protocolViolation(session, 'hello sent twice');
      try {
        checkVersion(message.version);
        if (message.role !== session.kind) {
          throw new ProtocolError('NL_ERR_PROTOCOL_UNEXPECTED', `hello says role ${message.role} on the ${session.kind} endpoint`);
        }
      } catch (error) {
        const e = error as ProtocolError;
        session.mux.sendControl({ type: 'error', code: e.code, message: e.message });
        session.close(4400, e.code);
        return;
      }
      session.mux.peerWindow = message.streamWindow;
      if (session.kind === 'agent') this.#helloAgent(session, message, setOnClosed);
      else this.#helloClient(session, message, setOnClosed);
      // The hello handlers may have refused the session (state moved on to closing).
      if ((session.state as string) !== 'open') return;
      this.metrics.sessions.inc({ kind: session.kind });
      this.#countedSessions.add(session);
      session.mux.sendControl({
        type: 'hello_ok',
        version: PROTOCOL_VERSION,
        sessionId: session.id,
        identity: { sub: session.identity.sub, groups: session.identity.groups, typ: session.kind, expiresAt: session.identity.expiresAtMs },
        streamWindow: this.streamWindow,
        heartbeatIntervalMs: HEARTBEAT_INTERVAL_MS,
      });
      // Only peers that know the probing messages get them (an older 1.x peer would reject an unknown one).
      if (this.#natProbe && peerSupportsMinor(message.version, NAT_PROBING_MINOR)) session.mux.sendControl(this.#natProbe.register(session.id));
      session.log.info('session open');
      return;
    }
    if (session.state !== 'open') return this.#protocolViolation(session, `${message.type} before hello`);
    if (message.type === 'reauth') {
      void this.#reauthenticate(session, message.token);
      return;
    }
    if (message.type === 'nat_report') {
      this.#onNatReport(session, message);
      return;
    }
    if (message.type === 'nat_reprobe') {
      this.#onNatReprobe(session);
      return;
    }
    if (message.type === 'direct_request' && session.kind === 'client') {
      const client = this.#clients.get(session);
      if (client) this.#direct.request(client, message);
      return;
    }
    // Both sides report what became of a path; a report for a path they are not part of is ignored there.
    if (message.type === 'direct_state') {
      this.#direct.state(session, message);
      return;
    }
    if (message.type === 'list_agents' && session.kind === 'client') {
      const client = this.#clients.get(session);
      if (client) session.mux.sendControl({ type: 'agents', requestId: message.requestId, agents: this.#listAgents(client) });
      return;
    }
    return this.#protocolViolation(session, `unexpected ${message.type} message from a ${session.kind}`);
  }

  /**
   * Starts probing afresh for a peer whose mapping may have changed: a new key and no old observations (mixed
   * with the new ones they would read as an unstable mapping). The last classification stays until the new
   * report replaces it. Bounded per session, like reports.
   */
  #onNatReprobe(session: PeerSession): void {
    const natProbe = this.#natProbe;
    const previous = this.#nat.get(session.id);
    if (!natProbe?.has(session.id) || !previous || previous.reprobes >= MAX_NAT_REPORTS) return;
    previous.reprobes++;
    session.mux.sendControl(natProbe.register(session.id));
  }

  /** Classifies the peer's NAT from what the probe ports saw plus its report, and tells the peer. */
  #onNatReport(session: PeerSession, report: NatReport): void {
    // A report without probe info (probing off, a peer that was not asked) has nothing to classify against.
    if (!this.#natProbe?.has(session.id)) return;
    const previous = this.#nat.get(session.id);
    if ((previous?.reports ?? 0) >= MAX_NAT_REPORTS) return;
    let classification: NatClassification;
    let localEndpoints: Endpoint[];
    try {
      localEndpoints = report.localEndpoints.map((e) => ({ address: e.address, port: e.port }));
      classification = classifyNat({
        observations: this.#natProbe.observations(session.id),
        localEndpoints,
        ...(report.filtering ? { filtering: report.filtering } : {}),
      });
    } catch (error) {
      return this.#protocolViolation(session, `nat_report rejected: ${(error as Error).message}`);
    }
    this.#nat.set(session.id, {
      classification,
      localEndpoints,
      atMs: this.#now(),
      reports: (previous?.reports ?? 0) + 1,
      reprobes: previous?.reprobes ?? 0,
      ...(report.certFingerprint ? { certFingerprint: report.certFingerprint } : {}),
    });
    this.metrics.natClassifications.inc({ type: classification.type });
    session.log.info(
      { natType: classification.type, filtering: classification.filtering, destinations: classification.destinations },
      'peer NAT classified',
    );
    session.mux.sendControl(natStatusMessage(classification));
    if (session.kind === 'agent') this.onAgentsChanged?.();
  }

  /** Accepts a fresh credential for the same identity and extends the session; anything else closes it. */
  async #reauthenticate(session: PeerSession, token: string): Promise<void> {
    const identity = session.identity;
    try {
      const next = await this.authenticate(session.kind, `Bearer ${token}`, identity.viaServiceAccount ? identity.sub : undefined);
      if (next.sub !== identity.sub) {
        throw new GatewayError(GatewayErrorCode.AUTH_INVALID_TOKEN, 401, 'a session cannot change identity; reconnect instead', { reason: 'NL_ERR_AUTH_IDENTITY_CHANGED' });
      }
      identity.expiresAtMs = next.expiresAtMs;
      identity.groups = next.groups;
      // Group membership may have changed with the new token: the client's policy follows.
      const client = this.#clients.get(session);
      if (client) this.#recompile(client);
      session.mux.sendControl({ type: 'reauth_ok', expiresAt: next.expiresAtMs });
      session.log.debug({ expiresAtMs: next.expiresAtMs }, 'session re-authenticated');
    } catch (error) {
      const e = error instanceof GatewayError ? error : new GatewayError(GatewayErrorCode.INTERNAL, 500, 'internal error', { cause: error });
      if (e.statusCode === 503 && this.#now() < identity.expiresAtMs) {
        // The API server blinked (TokenReview unavailable): the current credential is still good, so
        // keep the session and its streams; the peer retries, and the sweep ends it at expiry if not.
        session.log.warn({ reason: e.reason }, 'could not re-authenticate now; keeping the session until its token expires');
        return;
      }
      session.mux.sendControl({ type: 'error', code: e.code, message: e.message });
      session.close(4401, e.reason);
    }
  }

  #protocolViolation(session: PeerSession, what: string): void {
    session.mux.sendControl({ type: 'error', code: 'NL_ERR_PROTOCOL_UNEXPECTED', message: what });
    session.close(4400, 'NL_ERR_PROTOCOL_UNEXPECTED');
  }

  #helloAgent(session: PeerSession, hello: Hello, setOnClosed: (fn: () => void) => void): void {
    const key = normalizeAgentRef(session.identity.sub);
    const agent = this.#findAgent(key);
    if (!agent || !hello.agent) {
      session.mux.sendControl({ type: 'error', code: GatewayErrorCode.AUTH_UNKNOWN_AGENT, message: 'agent hello without agent section or unknown agent' });
      session.close(4403, GatewayErrorCode.AUTH_UNKNOWN_AGENT);
      return;
    }
    const instance: AgentInstance = { session, instanceId: hello.agent.instanceId, agent, version: hello.version };
    const instances = this.#agents.get(key) ?? new Set<AgentInstance>();
    this.#agents.set(key, instances);
    instances.add(instance);
    this.onAgentsChanged?.();
    session.mux.handlers.onOpen = (stream) => stream.reset(StreamErrorCode.PROTOCOL_ERROR, 'agents do not open streams');
    session.transition('open');
    session.log.info({ agent: key, instance: instance.instanceId, announced: hello.agent.expose.length }, 'agent attached');
    setOnClosed(() => {
      instances.delete(instance);
      if (instances.size === 0) this.#agents.delete(key);
      this.onAgentsChanged?.();
    });
  }

  #helloClient(session: PeerSession, hello: Hello, setOnClosed: (fn: () => void) => void): void {
    const config = this.#config as GatewayConfig;
    const client: ClientState = { session, version: hello.version, policy: compilePolicy(config, session.identity, this.#now()), streams: new Map() };
    this.#clients.set(session, client);
    session.mux.handlers.onOpen = (stream, payload) => this.#openFromClient(client, stream, payload);
    session.transition('open');
    setOnClosed(() => this.#clients.delete(session));
  }

  #listAgents(client: ClientState): AgentSummary[] {
    return client.policy.visibleAgents().map(({ agent, ports }) => ({
      name: agent.name,
      namespace: agent.namespace,
      mode: agent.mode,
      instances: this.#agents.get(agentKey(agent.namespace, agent.name))?.size ?? 0,
      ports: ports.map((p: ExposedPort) => ({ name: p.name, port: p.port, host: p.host })),
    }));
  }

  /** Resolves an agent reference (`name` or `namespace/name`) among the agents the client's policy lets it see. */
  #resolveAgent(policy: CompiledPolicy, ref: string): AgentConfig | undefined {
    const visible = policy.visibleAgents().map((v) => v.agent);
    if (ref.includes('/')) return visible.find((a) => agentKey(a.namespace, a.name) === ref);
    const byName = visible.filter((a) => a.name === ref);
    return byName.length === 1 ? byName[0] : undefined;
  }

  #openFromClient(client: ClientState, stream: MuxStream, payload: OpenPayload): void {
    const startedAt = performance.now();
    const fail = (code: StreamErrorCode, message: string): void => {
      this.metrics.streamsTotal.inc({ result: code });
      stream.reset(code, message);
    };
    if (this.#shuttingDown) return fail(StreamErrorCode.GATEWAY_SHUTTING_DOWN, 'gateway is shutting down; retry on reconnect');
    if (!('agent' in payload)) return fail(StreamErrorCode.PROTOCOL_ERROR, 'client OPEN needs agent and port');
    const request = payload as ClientOpen;
    // An agent the client may not see at all is reported as absent, so names do not leak.
    const agent = this.#resolveAgent(client.policy, request.agent);
    if (!agent) return fail(StreamErrorCode.NO_AGENT, `no agent "${request.agent}" that you may reach`);
    const exposed =
      typeof request.port === 'number'
        ? agent.expose.find((p) => p.port === request.port && (request.host === undefined || p.host === request.host))
        : agent.expose.find((p) => p.name === request.port);
    if (!exposed) return fail(StreamErrorCode.DENIED, `agent "${agent.name}" exposes no port ${request.port}${request.host ? ` on ${request.host}` : ''}`);
    if (request.mode === 'direct') {
      // The relay never carries a direct-mode stream: it travels on the direct path the client sets up itself.
      return fail(
        StreamErrorCode.DIRECT_UNAVAILABLE,
        'direct-mode streams travel on the direct path (ask for one with direct_request); the relay does not carry them. Use mode auto or relay to go through the gateway',
      );
    }
    if (agent.mode === 'direct') {
      return fail(StreamErrorCode.RELAY_NOT_OFFERED, `agent "${agent.name}" offers direct paths only (mode direct); use mode auto or direct`);
    }
    const decision = client.policy.evaluate({ agent, host: exposed.host, port: exposed.port, path: 'Relay' });
    if (!decision.allowed) {
      // Allowed over Direct but not over Relay: say so, so that an auto-mode client waits for its direct path.
      if (client.policy.evaluate({ agent, host: exposed.host, port: exposed.port, path: 'Direct' }).allowed) {
        return fail(StreamErrorCode.RELAY_NOT_OFFERED, `policy allows ${agent.name}:${exposed.port} over the direct path only`);
      }
      return fail(StreamErrorCode.DENIED, `policy denies ${agent.name}:${exposed.port} (${decision.reason})`);
    }
    const instance = this.#leastLoaded(agentKey(agent.namespace, agent.name));
    if (!instance) return fail(StreamErrorCode.NO_AGENT, `agent "${agent.name}" has no connected instance`);

    const target = { agent, host: exposed.host, port: exposed.port };
    const agentStream = instance.session.mux.open({ host: exposed.host, port: exposed.port, client: client.session.identity.sub });
    const timer = setTimeout(() => {
      // Detach first: the agent leg's onReset would otherwise fail the client stream (and count it) a second time.
      agentStream.handlers = {};
      agentStream.reset(StreamErrorCode.TIMEOUT, 'gateway gave up waiting for the agent');
      fail(StreamErrorCode.TIMEOUT, `agent did not answer within ${this.openTimeoutMs} ms`);
    }, this.openTimeoutMs);
    // While the agent dials, a client reset must cancel the agent leg.
    stream.handlers = {
      onReset: () => {
        clearTimeout(timer);
        agentStream.reset(StreamErrorCode.CANCELLED, 'client cancelled the open');
      },
    };
    agentStream.handlers = {
      onReset: (reset) => {
        clearTimeout(timer);
        if (stream.state !== 'closed') fail(reset.code, reset.message);
      },
      onOpenOk: () => {
        clearTimeout(timer);
        if (stream.state === 'closed') return agentStream.reset(StreamErrorCode.CANCELLED, 'client went away');
        this.metrics.streamOpenSeconds.observe((performance.now() - startedAt) / 1000);
        this.metrics.streamsTotal.inc({ result: 'ok' });
        this.metrics.streamsOpen.inc();
        this.#openStreams++;
        client.streams.set(stream, { ...target, agentStream });
        stream.accept({ path: 'relay' });
        splice(stream, agentStream, {
          onBytes: (direction, bytes) => this.metrics.relayBytes.inc({ direction }, bytes),
          onQueued: (delta) => this.metrics.relayQueuedBytes.inc(delta),
          onClosed: () => {
            this.metrics.streamsOpen.dec();
            this.#openStreams--;
            client.streams.delete(stream);
          },
        });
      },
    };
  }

  #leastLoaded(key: string): AgentInstance | undefined {
    let best: AgentInstance | undefined;
    for (const instance of this.#agents.get(key) ?? []) {
      if (instance.session.state !== 'open') continue;
      if (!best || instance.session.mux.streamCount < best.session.mux.streamCount) best = instance;
    }
    return best;
  }

  #sweep(): void {
    const now = performance.now();
    const wall = this.#now();
    for (const session of this.#sessions) {
      if (session.state === 'closed') continue;
      if (now - session.lastReceivedAt > HEARTBEAT_DEAD_AFTER_MS) {
        session.log.warn('peer silent past the heartbeat deadline; dropping session');
        session.terminate();
      } else if (wall >= session.identity.expiresAtMs) {
        session.mux.sendControl({ type: 'error', code: 'NL_ERR_TOKEN_EXPIRED', message: 'session token expired; reconnect with a fresh token' });
        session.close(4401, 'NL_ERR_TOKEN_EXPIRED');
      } else if (session.state === 'open' && now - session.lastSentAt > HEARTBEAT_INTERVAL_MS) {
        session.mux.ping();
      }
    }
    // Policies with expiresAt lapse without a reload: recompile those clients when due.
    for (const client of this.#clients.values()) {
      const due = client.policy.nextExpiryMs;
      if (due !== undefined && due <= wall) this.#recompile(client);
    }
    this.#direct.sweep();
  }

  /**
   * Stops taking sessions and streams, tells every peer to go away, waits up to `drainMs` for open
   * streams to finish, then closes what is left.
   */
  async shutdown(drainMs: number): Promise<void> {
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    this.log.info({ drainMs, streams: this.#openStreams }, 'draining');
    for (const session of this.#sessions) {
      if (session.state === 'open') session.mux.sendControl({ type: 'goaway', reason: 'gateway shutting down', drainMs });
    }
    const deadline = performance.now() + drainMs;
    while (this.#openStreams > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
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

/** The `nat_status` control message for a classification. */
export function natStatusMessage(nat: NatClassification): NatStatus {
  const out: NatStatus = { type: 'nat_status', natType: nat.type, filtering: nat.filtering, destinations: nat.destinations };
  if (nat.publicEndpoint) out.publicEndpoint = { address: nat.publicEndpoint.address, port: nat.publicEndpoint.port };
  if (nat.type === 'endpoint-independent') out.portPreserving = nat.portPreserving;
  if (nat.type === 'endpoint-dependent-predictable') out.delta = nat.delta;
  if (nat.type === 'unknown') out.reason = nat.reason;
  return out;
}

/** Agent token subjects are `namespace/name`, or a bare name in the `default` namespace. */
export function normalizeAgentRef(sub: string): string {
  return sub.includes('/') ? sub : agentKey('default', sub);
}
