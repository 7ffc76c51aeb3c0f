/**
 * One peer's WebSocket bound to a Mux. Owns the explicit session state
 * (handshaking → open → closing → closed; see docs/lifecycle/gateway-session.md).
 */
import {
  type ControlMessage,
  ErrorCode,
  type Identity,
  Mux,
  type MuxHandlers,
  type ProtocolError,
  SendBuffer,
  StreamErrorCode,
} from '@narrowlink/protocol';
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import type { BufferAccount, BufferBudget } from './buffer-budget.ts';
import type { BrokerPeer } from './direct-broker.ts';
import { GatewayErrorCode } from './errors.ts';

export type SessionKind = 'agent' | 'client';
export type SessionState = 'handshaking' | 'open' | 'closing' | 'closed';

/** ws's readyState of an open socket (WebSocket.OPEN; the type-only import cannot name it). */
const WS_OPEN = 1;

export interface SessionIdentity extends Identity {
  typ: SessionKind;
  /** Token expiry, milliseconds since the epoch (extended by a successful `reauth`). */
  expiresAtMs: number;
  /** The agent authenticated with a ServiceAccount token naming itself (re-authentication must too). */
  viaServiceAccount?: boolean;
  /** `jti` of the Narrowlink token that authenticated the session (absent for ServiceAccount tokens): the denylist matches it. */
  jti?: string;
}

/**
 * WebSocket close codes of a gateway session besides the protocol's 4400/4401/4403/4408 (see
 * docs/lifecycle/gateway-session.md).
 */
export const SessionCloseCode = {
  /** The session used all of its stream ids; the peer reconnects. */
  STREAM_IDS_EXHAUSTED: 4409,
  /** A handler threw while processing this session's input: only this session ends. */
  INTERNAL_ERROR: 1011,
  /** The session held more unsent bytes than its buffer budget (or the most, when the process was over its own). */
  BUFFER_LIMIT: 4413,
  /** The peer stopped reading (its send buffer made no progress) or stopped answering PINGs. */
  PEER_STALLED: 4408,
  /** No hello within the handshake timeout (the same "timed out" code as a stalled peer). */
  HANDSHAKE_TIMEOUT: 4408,
} as const;

export class PeerSession implements BrokerPeer {
  readonly id: string;
  readonly kind: SessionKind;
  readonly identity: SessionIdentity;
  readonly ws: WebSocket;
  readonly mux: Mux;
  readonly log: Logger;
  /** What this session's WebSocket has not sent yet; while over its high-water mark, the peer's socket is not read. */
  readonly sendBuffer: SendBuffer;
  /** This session's share of the gateway's buffer budget (its send buffer, and for a client its relay queues). */
  readonly bufferAccount: BufferAccount<PeerSession>;
  /** performance.now() when the oldest unanswered PING went out; `undefined` when none is outstanding. */
  pingOutstandingSince: number | undefined;
  /** performance.now() of the last PONG (or of the session's start): the peer's reading, as heartbeats see it. */
  lastPongAt: number;
  state: SessionState = 'handshaking';
  /** performance.now() of the last message received, for heartbeats. */
  lastReceivedAt: number;
  readonly #onClosed: (session: PeerSession) => void;
  readonly #onIdsExhausted: ((code: string) => void) | undefined;
  /** A handler threw on this session's input: what else arrives is dropped (the session is closing). */
  #failed = false;

  constructor(options: {
    id: string;
    kind: SessionKind;
    identity: SessionIdentity;
    ws: WebSocket;
    log: Logger;
    localWindow: number;
    /** The window each stream starts with (MuxOptions.initialWindow); default `localWindow`. */
    initialWindow?: number;
    maxStreams: number;
    handlers: MuxHandlers;
    onClosed: (session: PeerSession) => void;
    /** The gateway's buffer budget; this session opens its account there. */
    budget: BufferBudget<PeerSession>;
    /** High-water mark of the WebSocket's unsent bytes (see SendBuffer). */
    sendHighWaterBytes?: number;
    /** Counts a session closed for using all of its stream ids (metrics). */
    onIdsExhausted?: (code: string) => void;
    /** Test only: the first stream id the gateway opens on this session (see MuxOptions.firstLocalId). */
    firstLocalId?: number;
  }) {
    this.id = options.id;
    this.kind = options.kind;
    this.identity = options.identity;
    this.ws = options.ws;
    this.log = options.log;
    this.#onClosed = options.onClosed;
    this.#onIdsExhausted = options.onIdsExhausted;
    this.lastReceivedAt = this.lastPongAt = performance.now();
    const ws = options.ws;
    this.bufferAccount = options.budget.open(this);
    // Over the high-water mark: stream writes wait (credit reaches the far sender only as bytes leave), and the
    // peer's socket is not read, so the replies its input would cause (PONGs, RESETs, agent lists) cannot pile up
    // either. Only the gateway stops reading: peers always read, so the two sides can never wait on each other.
    this.sendBuffer = new SendBuffer({
      ...(options.sendHighWaterBytes === undefined ? {} : { highWaterBytes: options.sendHighWaterBytes }),
      onBytes: (delta) => this.bufferAccount.add(delta),
      onBlockedChange: (blocked) => {
        this.mux.setTransportBlocked(blocked);
        if (blocked) ws.pause();
        else if (!this.#failed && this.state !== 'closing') ws.resume();
      },
    });
    const handlers = options.handlers;
    this.mux = new Mux({
      role: 'acceptor',
      localWindow: options.localWindow,
      ...(options.initialWindow === undefined ? {} : { initialWindow: options.initialWindow }),
      maxStreams: options.maxStreams,
      ...(options.firstLocalId === undefined ? {} : { firstLocalId: options.firstLocalId }),
      handlers: {
        onStreamIdsExhausted: (error) => this.#idsExhausted(error),
        ...handlers,
        onPong: (rttMs) => {
          this.pingOutstandingSince = undefined;
          this.lastPongAt = performance.now();
          handlers.onPong?.(rttMs);
        },
      },
      send: (bytes) => {
        // Nothing goes out once the close started: ws would build an Error (with its stack) per message, the
        // costliest thing a flood arriving after the close could make the gateway do.
        if (ws.readyState !== undefined && ws.readyState !== WS_OPEN) return;
        ws.send(bytes, { binary: true }, this.sendBuffer.track(bytes.length));
      },
    });
    // The handler boundary: anything thrown while handling this session's input (a bug, an unexpected state)
    // ends this session with 1011, never the process and every other tenant's sessions with it.
    ws.on('message', (data, isBinary) => {
      // Closing is final: what still arrives (the rest of a flood that got the session closed) is not processed.
      if (this.#failed || this.state === 'closing' || this.state === 'closed') return;
      this.lastReceivedAt = performance.now();
      try {
        if (!isBinary) {
          this.close(4400, 'text messages are not part of the protocol');
          return;
        }
        this.mux.receive(data as Buffer);
      } catch (error) {
        this.#handlerFailed(error);
      }
    });
    ws.on('close', () => this.#closed());
    ws.on('error', (err) => {
      this.log.debug({ err }, 'session socket error');
      this.#closed();
    });
  }

  /** The authenticated subject. */
  get sub(): string {
    return this.identity.sub;
  }

  /** Streams open on the session's mux. */
  get streamCount(): number {
    return this.mux.streamCount;
  }

  /** Sends a control message on the session's mux. */
  sendControl(message: ControlMessage): void {
    this.mux.sendControl(message);
  }

  /** Sends a heartbeat PING; liveness then waits for its PONG (see `pingOutstandingSince`). */
  ping(now: number): void {
    this.pingOutstandingSince ??= now;
    this.mux.ping();
  }

  /**
   * Over a buffer budget: stops reading the peer, resets its streams (which frees what the relay held for them),
   * tells it why and closes with 4413. Its other sessions and every other tenant are untouched.
   */
  closeOverBudget(message: string): void {
    if (this.state === 'closing' || this.state === 'closed') return;
    this.ws.pause();
    this.mux.sendControl({ type: 'error', code: GatewayErrorCode.BUFFER_LIMIT, message });
    this.mux.resetAll(StreamErrorCode.FLOW_CONTROL, message);
    this.close(SessionCloseCode.BUFFER_LIMIT, GatewayErrorCode.BUFFER_LIMIT);
  }

  /** Moves to `next` if that is a forward transition; returns whether it did. */
  transition(next: SessionState): boolean {
    const order: SessionState[] = ['handshaking', 'open', 'closing', 'closed'];
    if (order.indexOf(next) <= order.indexOf(this.state)) return false;
    this.state = next;
    return true;
  }

  /** Starts a WebSocket close; streams are reset once the socket is gone. */
  close(code: number, reason: string): void {
    if (!this.transition('closing')) return;
    this.ws.close(code, reason.slice(0, 120));
    // A peer that never answers the close handshake must not keep the session alive.
    setTimeout(() => this.ws.terminate(), 2000).unref();
  }

  /** Drops the socket at once (dead peer). */
  terminate(): void {
    this.ws.terminate();
    this.#closed();
  }

  /** Logs once, tells the peer (masked) and closes this session only. */
  #handlerFailed(error: unknown): void {
    if (this.#failed) return;
    this.#failed = true;
    this.log.error({ err: error }, 'handler failed on session input; closing this session');
    try {
      this.mux.sendControl({ type: 'error', code: GatewayErrorCode.INTERNAL, message: 'internal gateway error' });
    } catch {
      // The socket may be gone already; the close below still ends the session.
    }
    this.close(SessionCloseCode.INTERNAL_ERROR, GatewayErrorCode.INTERNAL);
  }

  /** The gateway opened its last stream id towards this peer: end the session so the peer reconnects afresh. */
  #idsExhausted(error: ProtocolError): void {
    this.log.warn({ code: error.code }, 'session used all of its stream ids; closing it so the peer reconnects');
    this.#onIdsExhausted?.(error.code);
    this.mux.sendControl({ type: 'error', code: ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED, message: error.message });
    this.close(SessionCloseCode.STREAM_IDS_EXHAUSTED, ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED);
  }

  #closed(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.sendBuffer.release();
    try {
      this.mux.close(StreamErrorCode.PEER_GONE, `${this.kind} session closed`);
    } catch (error) {
      // A stream's clean-up threw: every stream was still reset (Mux.close); the session's books must close too.
      this.log.error({ err: error }, 'stream clean-up failed while closing the session');
    }
    // After the streams' resets: those release the relay queues charged to this account first.
    this.bufferAccount.close();
    // Runs from the socket's close/error events: a throw here would be uncaught.
    try {
      this.#onClosed(this);
    } catch (error) {
      this.log.error({ err: error }, 'session clean-up failed');
    }
  }
}
