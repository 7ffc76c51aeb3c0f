/**
 * The dialing side of a session, shared by the agent and the client: connects to the gateway
 * with a bearer token, says hello, keeps the session alive with heartbeats and reconnects with
 * jittered, capped exponential backoff (short for a peer whose session ended a moment ago, see reconnectDelayMs; a
 * caller waiting for the session, e.g. a user's connection, triggers an attempt at once). States: connecting → open → (connecting …) → closing → closed;
 * see docs/lifecycle/peer-link.md.
 */
import type { KeyObject } from 'node:crypto';
import type dgram from 'node:dgram';
import { EventEmitter } from 'node:events';
import {
  type AgentSummary,
  type ReconnectBackoffOptions,
  type ClientOpen,
  type ControlMessage,
  checkVersion,
  createProof,
  DEFAULT_STREAM_WINDOW,
  DIRECT_PATH_MINOR,
  ErrorCode,
  HEARTBEAT_DEAD_AFTER_MS,
  HEARTBEAT_INTERVAL_MS,
  type Hello,
  type HelloOk,
  isAuthRefusalCode,
  Mux,
  type MuxStream,
  type OpenOk,
  type OpenPayload,
  PROTOCOL_VERSION,
  parseRateLimitRefusal,
  peerSupportsMinor,
  REAUTH_PROOF_METHOD,
  reconnectDelayMs,
  SendBuffer,
  StreamErrorCode,
  StreamResetError,
} from '@narrowlink/protocol';
import WebSocket from 'ws';
import { LinkError, LinkErrorCode } from './errors.ts';
import { checkGatewayUrl, classifyHttpAnswer, classifySocketError } from './link/dial-failure.ts';
import { type LinkLogger, silentLogger } from './link/logger.ts';
import { type LinkNatStatus, type NatProbeTuning, NatSession } from './link/nat-session.ts';
import { ReauthScheduler } from './link/reauth.ts';

export type { LinkLogger } from './link/logger.ts';
export type { LinkNatStatus } from './link/nat-session.ts';

export type LinkState = 'connecting' | 'open' | 'closing' | 'closed';

function zeroMask(mask: Buffer): void {
  mask.fill(0);
}

function maskingUseless(url: URL): boolean {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return url.protocol === 'wss:' || host === 'localhost' || host === '::1' || host.startsWith('127.');
}

export interface GatewayLinkOptions {
  /** Gateway base URL, `ws://` or `wss://` host and port; the endpoint path is appended. */
  url: string;
  role: 'agent' | 'client';
  /** Bearer token, or a function returning a fresh one per attempt. */
  token: string | (() => string | Promise<string>);
  /**
   * The private Ed25519 key a key-bound token (`cnf.jkt`, from `narrowlink login`) is bound to: every dial sends a
   * `DPoP` proof made for that dial's token and URL, and every `reauth` a fresh one. Never sent anywhere itself.
   */
  proofKey?: KeyObject;
  /** Extra CA certificates (PEM) to trust for `wss://`. */
  caPem?: string;
  /**
   * Agents authenticating with a ServiceAccount token name the agent they are (`namespace/name`);
   * sent as the `X-Narrowlink-Agent` header.
   */
  agentRef?: string;
  /** Sent in the agent's hello. */
  agent?: Hello['agent'];
  /** Agents only: the gateway opened a stream. */
  onOpenStream?: (stream: MuxStream, payload: OpenPayload) => void;
  log?: LinkLogger;
  /** Keep reconnecting after the session drops (default true). */
  reconnect?: boolean;
  /** Keep retrying when the gateway refuses our credentials (default false: such errors are fatal). */
  retryAuthFailures?: boolean;
  /**
   * One-shot users (a CLI `ls`): a definitive answer (connection refused, no such host, TLS verification failure,
   * an HTTP answer that is not the upgrade) ends the link at once with `fatal` instead of being retried. Default
   * false: agents and long-running clients keep retrying, since a gateway that is restarting answers like that too.
   */
  failFast?: boolean;
  backoff?: ReconnectBackoffOptions;
  /** Wall clock for the reconnect policy (epoch ms); injected by tests. Default Date.now. */
  now?: () => number;
  /** Per-stream window this side grants, bytes. */
  streamWindow?: number;
  /** High-water mark of the WebSocket's unsent bytes: above it stream writes wait. Default 1 MiB (SendBuffer). */
  sendHighWaterBytes?: number;
  /** Max time for TCP + TLS + upgrade + hello, ms. Default 10 s. */
  connectTimeoutMs?: number;
  software?: string;
  /**
   * The UDP socket the direct path's QUIC endpoint uses (bound). With it, the link answers the gateway's
   * `nat_probe_info` by probing from this socket and reporting; without it, no probing happens.
   */
  udpSocket?: dgram.Socket;
  /** sha256 hex of the QUIC endpoint's certificate, sent with the NAT report (the gateway forwards it to peers). */
  certFingerprint?: string;
  /** Tuning of the probe exchange (timeouts, tries); see NatProbeOptions. */
  natProbe?: NatProbeTuning;
}

/** Payload of the `retry` event: the next attempt is due in `delayMs`. */
export interface LinkRetry {
  /** 1-based number of the attempt that failed (since the last open session). */
  attempt: number;
  delayMs: number;
  /** Why the last attempt or session ended, when known. */
  error: { code: string; message: string } | undefined;
}

/** reconnectNow() never starts attempts closer together than this (a burst of user connections is one attempt). */
export const MIN_ATTEMPT_GAP_MS = 100;

export interface LinkStats {
  state: LinkState;
  url: string;
  connectedAt: number | undefined;
  attempts: number;
  reconnects: number;
  rttMs: number | undefined;
  lastError: { code: string; message: string } | undefined;
  helloOk: HelloOk | undefined;
  /** NAT classification of the current session, once the gateway sent it. */
  nat: LinkNatStatus | undefined;
  /** Bytes handed to the session's WebSocket and not sent yet (bounded by the send high-water mark plus a frame). */
  unsentBytes: number;
}

/**
 * Events: `state` (LinkState), `open` (HelloOk), `goaway` (reason), `nat` (LinkNatStatus, after probing),
 * `direct` (a direct-path control message: punch_plan, direct_refused, direct_policy, direct_close), `retry` (LinkRetry,
 * when a reconnect is scheduled),
 * `error` is never emitted; `fatal` (LinkError) when credentials are refused and retrying cannot help.
 */
export class GatewayLink extends EventEmitter {
  readonly options: GatewayLinkOptions;
  state: LinkState = 'closed';
  mux: Mux | undefined;
  #ws: WebSocket | undefined;
  readonly #log: LinkLogger;
  #attempt = 0;
  #reconnects = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  /** When the pending retry is due (performance.now() ms); undefined while an attempt runs or none is scheduled. */
  #retryDueAt: number | undefined;
  /** When the latest attempt started (performance.now() ms). */
  #attemptStartedAt = Number.NEGATIVE_INFINITY;
  /** When the last open session ended (wall clock ms); undefined before the first session and while one is open. */
  #lostAt: number | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #lastReceivedAt = 0;
  #lastSentAt = 0;
  #rttMs: number | undefined;
  /** The current session's count of unsent bytes (see SendBuffer). */
  #sendBuffer: SendBuffer | undefined;
  #connectedAt: number | undefined;
  #lastError: LinkError | undefined;
  #helloOk: HelloOk | undefined;
  /** An `error` message the gateway sent during this attempt's handshake: the failure to report when it closes. */
  #handshakeError: LinkError | undefined;
  /** Settles the current attempt's handshake on hello_ok (set by #awaitHello). */
  #onHelloOk: (() => void) | undefined;
  #requestSeq = 0;
  /** Unanswered `list_agents` requests by id, oldest first (a rate-limit refusal fails the oldest). */
  readonly #pendingLists = new Map<number, { resolve: (agents: AgentSummary[]) => void; reject: (error: LinkError) => void }>();
  #stopped = false;
  readonly #reauth: ReauthScheduler;
  /** NAT probing state of the current session. */
  readonly #nat: NatSession;

  constructor(options: GatewayLinkOptions) {
    super();
    // Before anything can dial: a cleartext ws:// URL off loopback would carry the token unencrypted.
    checkGatewayUrl(options.url);
    this.options = options;
    this.#log = options.log ?? silentLogger;
    this.#reauth = new ReauthScheduler({
      readToken: () => this.#token(),
      send: (token, proof) => this.mux?.sendControl({ type: 'reauth', token, ...(proof ? { proof } : {}) }),
      makeProof: options.proofKey
        ? (token) => createProof(options.proofKey as KeyObject, { token, htm: REAUTH_PROOF_METHOD, htu: this.#endpoint().href })
        : undefined,
      log: this.#log,
    });
    this.#nat = new NatSession(options, this.#log, this);
  }

  /** Starts connecting (and reconnecting) in the background. */
  start(): this {
    this.#stopped = false;
    if (this.state === 'closed') this.#connect();
    return this;
  }

  get stats(): LinkStats {
    return {
      state: this.state,
      url: this.options.url,
      connectedAt: this.#connectedAt,
      attempts: this.#attempt,
      reconnects: this.#reconnects,
      rttMs: this.#rttMs,
      lastError: this.#lastError ? { code: this.#lastError.gatewayCode ?? this.#lastError.code, message: this.#lastError.message } : undefined,
      helloOk: this.#helloOk,
      nat: this.#nat.status,
      unsentBytes: this.#sendBuffer?.unflushedBytes ?? 0,
    };
  }

  #setState(state: LinkState): void {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state);
  }

  async #token(): Promise<string> {
    const { token } = this.options;
    return typeof token === 'function' ? await token() : token;
  }

  #connect(): void {
    this.#setState('connecting');
    this.#retryDueAt = undefined;
    this.#attemptStartedAt = performance.now();
    this.#attempt++;
    void this.#dial().catch((error: unknown) => this.#onFailure(error));
  }

  /** One attempt: a WebSocket with the current token, the Mux over it, and the hello exchange. */
  async #dial(): Promise<void> {
    // An error from an earlier attempt must not be reported for this one.
    this.#handshakeError = undefined;
    const token = await this.#token();
    this.#reauth.opened(token);
    // A proof per dial: the gateway accepts each one once, for this token and this URL only.
    const { proofKey } = this.options;
    const proof = proofKey ? await createProof(proofKey, { token, htm: 'GET', htu: this.#endpoint().href }) : undefined;
    if (this.#stopped) return;
    const ws = this.#openSocket(token, proof);
    const streamWindow = this.options.streamWindow ?? DEFAULT_STREAM_WINDOW;
    const mux = this.#bindMux(ws, streamWindow);
    this.#awaitHello(ws, mux, streamWindow);
  }

  /** The endpoint this link dials (also the `htu` of its proofs). */
  #endpoint(): URL {
    return new URL(`/v1/${this.options.role}`, this.options.url);
  }

  #openSocket(token: string, proof: string | undefined): WebSocket {
    const endpoint = this.#endpoint();
    // Again at each dial: `options` is a public object, and the token must never leave in cleartext.
    checkGatewayUrl(endpoint.href);
    this.#log.debug({ url: endpoint.href, attempt: this.#attempt }, 'dialing the gateway');
    const ws = new WebSocket(endpoint, {
      headers: {
        authorization: `Bearer ${token}`,
        ...(proof ? { dpop: proof } : {}),
        ...(this.options.agentRef ? { 'x-narrowlink-agent': this.options.agentRef } : {}),
      },
      perMessageDeflate: false,
      maxPayload: 1024 * 1024 + 9,
      handshakeTimeout: this.options.connectTimeoutMs ?? 10_000,
      // Masking defends proxies that parse cleartext WebSocket frames from browser-written payloads.
      // Inside TLS (or on loopback) no intermediary parses our frames, so an all-zero mask (which ws
      // recognises and skips) saves a copy and an XOR of every byte. See docs/adr/0002.
      ...(maskingUseless(endpoint) ? { generateMask: zeroMask } : {}),
      ...(this.options.caPem ? { ca: this.options.caPem } : {}),
    });
    this.#ws = ws;
    return ws;
  }

  /** The session's Mux over `ws`: frames both ways, control messages to #onControl, streams to `onOpenStream`. */
  #bindMux(ws: WebSocket, streamWindow: number): Mux {
    // Stream writes wait while the socket holds more than the high-water mark of unsent bytes, so a slow gateway
    // connection pins that much here, not one window per stream (the agent's bridges and the client's forwards stop
    // reading their local sockets instead). This side never stops reading the gateway.
    const sendBuffer = new SendBuffer({
      ...(this.options.sendHighWaterBytes === undefined ? {} : { highWaterBytes: this.options.sendHighWaterBytes }),
      onBlockedChange: (blocked) => mux.setTransportBlocked(blocked),
    });
    this.#sendBuffer = sendBuffer;
    ws.once('close', () => sendBuffer.release());
    const mux = new Mux({
      role: 'initiator',
      localWindow: streamWindow,
      send: (bytes) => {
        this.#lastSentAt = performance.now();
        ws.send(bytes, { binary: true }, sendBuffer.track(bytes.length));
      },
      handlers: {
        onControl: (message) => this.#onControl(mux, message),
        onPong: (rtt) => {
          if (rtt !== undefined) this.#rttMs = rtt;
        },
        onOpen: (stream, payload) => {
          if (this.options.onOpenStream && this.state === 'open') this.options.onOpenStream(stream, payload);
          else stream.reset(StreamErrorCode.PROTOCOL_ERROR, 'this side accepts no streams');
        },
        onSessionError: (error) => {
          this.#log.warn({ code: error.code, msg: error.message }, 'gateway broke the protocol; reconnecting');
          ws.terminate();
        },
        // 2^30 streams opened on this session: a new session starts its ids afresh (open() throws typed meanwhile).
        onStreamIdsExhausted: (error) => {
          this.#log.info({ code: error.code }, 'session used all of its stream ids; reconnecting');
          ws.close(4409, error.code);
        },
      },
    });
    // The handler boundary: a throw while handling the gateway's input (a bug in a control or stream handler)
    // costs this session (closed 1011, logged once, then the link reconnects), never the process.
    let failed = false;
    ws.on('message', (data, isBinary) => {
      if (failed) return;
      this.#lastReceivedAt = performance.now();
      try {
        if (isBinary) mux.receive(data as Buffer);
      } catch (error) {
        failed = true;
        this.#log.warn({ err: error }, 'handler failed on gateway input; closing this session');
        ws.close(1011, 'internal error');
      }
    });
    this.mux = mux;
    return mux;
  }

  /**
   * Sends hello once the socket opens and settles the attempt exactly once: by hello_ok (see #onControl), an HTTP
   * refusal, a socket error, a close during the handshake, or the connect timeout. A close after that ends the
   * session (and reconnects).
   */
  #awaitHello(ws: WebSocket, mux: Mux, streamWindow: number): void {
    let settled = false;
    /** Marks the handshake settled; false when it already was. */
    const settle = (): boolean => {
      if (settled) return false;
      settled = true;
      clearTimeout(handshakeTimer);
      return true;
    };
    const handshakeTimer = setTimeout(() => {
      if (!settle()) return;
      ws.terminate();
      this.#onFailure(new LinkError(LinkErrorCode.TIMEOUT, 'no hello_ok from the gateway in time', { retryable: true }));
    }, this.options.connectTimeoutMs ?? 10_000);

    ws.on('unexpected-response', (_request, response) => {
      const chunks: Buffer[] = [];
      response.on('data', (c: Buffer) => chunks.push(c));
      response.on('end', () => {
        let body: { code?: string; message?: string } = {};
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof body;
        } catch {
          // not a Narrowlink gateway, or a proxy in between: report the status alone
        }
        settle();
        ws.terminate();
        this.#onFailure(
          classifyHttpAnswer(response.statusCode ?? 0, body, this.#endpoint(), {
            failFast: this.options.failFast ?? false,
            retryAuthFailures: this.options.retryAuthFailures ?? false,
          }),
        );
      });
    });
    ws.on('open', () => {
      this.#lastReceivedAt = performance.now();
      mux.sendControl({
        type: 'hello',
        version: PROTOCOL_VERSION,
        role: this.options.role,
        software: this.options.software ?? 'narrowlink',
        streamWindow,
        ...(this.options.agent ? { agent: this.options.agent } : {}),
      });
    });
    ws.on('error', (error) => {
      if (!settle()) return;
      // Classified (DNS, refused, TLS with the certificate's names) before the failure is acted on.
      void classifySocketError(error, this.#endpoint(), this.options.failFast ?? false).then((linkError) => this.#onFailure(linkError));
    });
    ws.on('close', (code, reason) => {
      clearTimeout(handshakeTimer);
      const wasOpen = this.#endSession(ws, mux);
      if (settle()) {
        this.#onFailure(
          this.#handshakeError ??
            new LinkError(LinkErrorCode.HANDSHAKE, `gateway closed the session during the handshake (${code} ${reason.toString()})`, { retryable: true }),
        );
        return;
      }
      if (wasOpen) {
        this.#lostAt = this.#now();
        this.#log.info({ code, reason: reason.toString() }, 'gateway session lost; reconnecting');
        this.#scheduleReconnect();
      }
    });
    this.#onHelloOk = () => {
      settle();
    };
  }

  /** `ws` closed: its streams and pending requests end; when it is the current socket, so do its timers. */
  #endSession(ws: WebSocket, mux: Mux): boolean {
    mux.close(StreamErrorCode.PEER_GONE, 'gateway session lost');
    const wasOpen = this.state === 'open' && this.#ws === ws;
    if (this.#ws === ws) {
      this.#ws = undefined;
      this.mux = undefined;
      clearInterval(this.#heartbeat);
      this.#reauth.stop();
    }
    for (const pending of this.#pendingLists.values()) pending.resolve([]);
    this.#pendingLists.clear();
    return wasOpen;
  }

  #onControl(mux: Mux, message: ControlMessage): void {
    switch (message.type) {
      case 'hello_ok': {
        try {
          checkVersion(message.version);
        } catch (error) {
          this.#handshakeError = new LinkError(LinkErrorCode.HANDSHAKE, (error as Error).message, { retryable: false });
          this.#ws?.close(4400, 'version');
          return;
        }
        mux.peerWindow = message.streamWindow;
        this.#helloOk = message;
        this.#nat.reset();
        this.#onHelloOk?.();
        this.#attempt = 0;
        this.#lostAt = undefined;
        this.#lastError = undefined;
        this.#handshakeError = undefined;
        this.#connectedAt = Date.now();
        this.#setState('open');
        this.#startHeartbeat();
        this.#reauth.schedule(message.identity.expiresAt);
        this.#log.info({ event: 'connected', session: message.sessionId }, 'gateway session open');
        this.emit('open', message);
        return;
      }
      case 'error': {
        // A `list_agents` over the gateway's rate limit: fail the oldest pending one now, not at its timeout.
        const refusal = parseRateLimitRefusal(message.message);
        if (refusal?.kind === 'list_agents') {
          const [oldest] = this.#pendingLists.values();
          if (oldest) {
            oldest.reject(
              new LinkError(LinkErrorCode.RATE_LIMITED, `gateway refused list_agents over its rate limit; retry in ${refusal.retryAfterMs} ms`, {
                gatewayCode: message.code,
                retryable: true,
              }),
            );
            return;
          }
        }
        const fatal = message.code === ErrorCode.PROTOCOL_VERSION || isAuthRefusalCode(message.code);
        this.#handshakeError = new LinkError(LinkErrorCode.HANDSHAKE, `${message.code}: ${message.message}`, {
          gatewayCode: message.code,
          retryable: !fatal || (this.options.retryAuthFailures ?? false),
        });
        this.#lastError = this.#handshakeError;
        this.#log.warn({ code: message.code, msg: message.message }, 'gateway reported an error');
        return;
      }
      case 'reauth_ok':
        this.#reauth.schedule(message.expiresAt);
        return;
      case 'goaway':
        this.#log.info({ reason: message.reason, drainMs: message.drainMs }, 'gateway is going away');
        this.emit('goaway', message.reason);
        return;
      case 'nat_probe_info': {
        const helloOk = this.#helloOk;
        if (helloOk && this.#nat.wantsProbe()) void this.#nat.probe(mux, helloOk.sessionId, message, () => this.mux === mux && this.state === 'open');
        return;
      }
      case 'nat_status':
        this.emit('nat', this.#nat.classified(message));
        return;
      case 'punch_plan':
      case 'direct_refused':
      case 'direct_policy':
      case 'direct_close':
        // The direct path (ClientDirectPaths, AgentDirectPaths) acts on these; the link only carries them.
        this.emit('direct', message);
        return;
      case 'agents': {
        const pending = this.#pendingLists.get(message.requestId);
        this.#pendingLists.delete(message.requestId);
        pending?.resolve(message.agents);
        return;
      }
      default:
        this.#log.debug({ type: message.type }, 'ignoring control message');
    }
  }

  /**
   * Asks the gateway to probe our NAT again (after a direct path died: the mapping may have changed). The new
   * classification arrives as a `nat` event; until then `stats.nat` is undefined. False when this session cannot
   * (no UDP socket, not open, or a gateway older than protocol 1.2).
   */
  reprobeNat(): boolean {
    const hello = this.#helloOk;
    if (!this.options.udpSocket || this.state !== 'open' || !this.mux || !hello || !peerSupportsMinor(hello.version, DIRECT_PATH_MINOR)) return false;
    this.#nat.reprobe(this.mux);
    return true;
  }

  /** Whether the current session is probing (the gateway sent probe info and we have a UDP socket). */
  get natProbing(): boolean {
    return this.#nat.probing;
  }

  /**
   * Resolves with the gateway's classification of our NAT once it arrives, or `undefined` when this session
   * is not probing (no UDP socket, or the gateway does not probe) or `timeoutMs` passes. The probe info follows
   * `hello_ok` at once, so call this after one round trip on the session (e.g. a `ping`).
   */
  waitNat(timeoutMs: number): Promise<LinkNatStatus | undefined> {
    return this.#nat.wait(timeoutMs);
  }

  #startHeartbeat(): void {
    clearInterval(this.#heartbeat);
    this.#heartbeat = setInterval(() => {
      const now = performance.now();
      if (now - this.#lastReceivedAt > HEARTBEAT_DEAD_AFTER_MS) {
        this.#log.warn({}, 'gateway silent past the heartbeat deadline; reconnecting');
        this.#ws?.terminate();
      } else if (now - this.#lastSentAt > HEARTBEAT_INTERVAL_MS / 2 || now - this.#lastReceivedAt > HEARTBEAT_INTERVAL_MS / 2) {
        this.mux?.ping();
      }
    }, HEARTBEAT_INTERVAL_MS / 2);
    this.#heartbeat.unref();
  }

  #onFailure(error: unknown): void {
    const linkError =
      error instanceof LinkError ? error : new LinkError(LinkErrorCode.UNREACHABLE, (error as Error).message ?? String(error), { retryable: true, cause: error });
    this.#lastError = linkError;
    if (this.#stopped) return;
    if (!linkError.retryable) {
      this.#log.warn({ code: linkError.gatewayCode ?? linkError.code, msg: linkError.message }, 'gateway refused this peer; not retrying');
      this.#setState('closed');
      this.emit('fatal', linkError);
      return;
    }
    this.#log.info({ code: linkError.gatewayCode ?? linkError.code, msg: linkError.message, attempt: this.#attempt }, 'cannot connect; will retry');
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    if (this.#stopped || this.options.reconnect === false) {
      this.#setState('closed');
      return;
    }
    this.#setState('connecting');
    const delayMs = reconnectDelayMs(Math.max(0, this.#attempt - 1), this.#now(), this.#lostAt, this.options.backoff);
    this.#armRetry(delayMs);
    const last = this.#lastError;
    this.emit('retry', {
      attempt: Math.max(1, this.#attempt),
      delayMs,
      error: last ? { code: last.gatewayCode ?? last.code, message: last.message } : undefined,
    } satisfies LinkRetry);
  }

  #now(): number {
    return (this.options.now ?? Date.now)();
  }

  #armRetry(delayMs: number): void {
    clearTimeout(this.#retryTimer);
    this.#retryDueAt = performance.now() + delayMs;
    this.#retryTimer = setTimeout(() => {
      this.#reconnects++;
      this.#connect();
    }, delayMs);
  }

  /**
   * Someone is waiting for the session (a user's connection on `forward` or `socks`, a list request): when a retry
   * is pending, make it now instead of at the end of the backoff (but at least MIN_ATTEMPT_GAP_MS after the last
   * attempt started, so a burst of connections to a gateway that is still down costs one attempt, not one each).
   * Called by waitOpen, openStream, listAgents and ping. True when it moved an attempt earlier.
   */
  reconnectNow(): boolean {
    if (this.#stopped || this.state !== 'connecting' || this.#retryDueAt === undefined) return false;
    const now = performance.now();
    const earliest = Math.max(now, this.#attemptStartedAt + MIN_ATTEMPT_GAP_MS);
    if (earliest >= this.#retryDueAt) return false;
    this.#armRetry(earliest - now);
    return true;
  }

  /**
   * Resolves once the session is open; rejects with LinkError on timeout or a fatal refusal. A pending retry is made
   * at once (reconnectNow): the caller is waiting.
   */
  waitOpen(timeoutMs: number): Promise<void> {
    if (this.state === 'open') return Promise.resolve();
    this.reconnectNow();
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        this.off('open', onOpen);
        this.off('fatal', onFatal);
      };
      const onOpen = (): void => {
        cleanup();
        resolve();
      };
      const onFatal = (error: LinkError): void => {
        cleanup();
        reject(error);
      };
      const timer = setTimeout(() => {
        cleanup();
        const last = this.#lastError;
        reject(
          new LinkError(LinkErrorCode.TIMEOUT, `no gateway session within ${timeoutMs} ms${last ? ` (last error: ${last.message})` : ''}`, {
            retryable: true,
            ...(last ? { cause: last } : {}),
          }),
        );
      }, timeoutMs);
      this.on('open', onOpen);
      this.on('fatal', onFatal);
      if (this.state === 'closed' && this.#lastError && !this.#lastError.retryable) onFatal(this.#lastError);
    });
  }

  /**
   * Opens a stream through the gateway. Waits up to `timeoutMs` for a session (the gateway may be
   * restarting) and for the far side to accept; rejects with StreamResetError or LinkError.
   */
  async openStream(request: ClientOpen, timeoutMs = 15_000): Promise<{ stream: MuxStream; ok: OpenOk }> {
    const deadline = performance.now() + timeoutMs;
    await this.waitOpen(timeoutMs);
    const mux = this.mux;
    if (!mux) throw new LinkError(LinkErrorCode.CLOSED, 'session closed while opening', { retryable: true });
    return await new Promise((resolve, reject) => {
      const stream = mux.open(request, {
        onOpenOk: (ok) => {
          clearTimeout(timer);
          resolve({ stream, ok });
        },
        onReset: (reset) => {
          clearTimeout(timer);
          reject(new StreamResetError(reset.code, reset.message));
        },
      });
      const timer = setTimeout(
        () => {
          stream.reset(StreamErrorCode.TIMEOUT, 'no answer in time');
        },
        Math.max(1, deadline - performance.now()),
      );
    });
  }

  /**
   * Sends a control message on the current session; false when there is none (the message is dropped: callers
   * of direct-path messages treat a lost session as a lost path anyway).
   */
  sendControl(message: ControlMessage): boolean {
    if (this.state !== 'open' || !this.mux) return false;
    this.mux.sendControl(message);
    return true;
  }

  /** Asks the gateway which agents this client may reach. */
  async listAgents(timeoutMs = 10_000): Promise<AgentSummary[]> {
    await this.waitOpen(timeoutMs);
    const mux = this.mux;
    if (!mux) throw new LinkError(LinkErrorCode.CLOSED, 'session closed', { retryable: true });
    const requestId = ++this.#requestSeq;
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pendingLists.delete(requestId);
        reject(new LinkError(LinkErrorCode.TIMEOUT, 'gateway did not answer list_agents in time', { retryable: true }));
      }, timeoutMs);
      this.#pendingLists.set(requestId, {
        resolve: (agents) => {
          clearTimeout(timer);
          resolve(agents);
        },
        reject: (error) => {
          clearTimeout(timer);
          this.#pendingLists.delete(requestId);
          reject(error);
        },
      });
      mux.sendControl({ type: 'list_agents', requestId });
    });
  }

  /** Measures one round trip to the gateway. */
  async ping(timeoutMs = 5000): Promise<number> {
    await this.waitOpen(timeoutMs);
    const mux = this.mux as Mux;
    return await new Promise((resolve, reject) => {
      const previous = mux.handlers.onPong;
      const timer = setTimeout(() => {
        mux.handlers.onPong = previous;
        reject(new LinkError(LinkErrorCode.TIMEOUT, 'no PONG in time', { retryable: true }));
      }, timeoutMs);
      mux.handlers.onPong = (rtt) => {
        mux.handlers.onPong = previous;
        previous?.(rtt);
        clearTimeout(timer);
        resolve(rtt ?? Number.NaN);
      };
      mux.ping();
    });
  }

  /** Closes the session and stops reconnecting. Open streams are reset. */
  async close(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    this.#retryDueAt = undefined;
    this.#reauth.stop();
    clearInterval(this.#heartbeat);
    const ws = this.#ws;
    if (!ws) {
      this.#setState('closed');
      return;
    }
    this.#setState('closing');
    this.mux?.resetAll(StreamErrorCode.CANCELLED, 'client closing');
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        ws.terminate();
        resolve();
      }, 1000);
      ws.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      ws.close(1000, 'bye');
    });
    this.#setState('closed');
  }
}
