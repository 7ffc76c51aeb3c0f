/**
 * One peer's WebSocket bound to a Mux. Owns the explicit session state
 * (handshaking → open → closing → closed; see docs/lifecycle/gateway-session.md).
 */
import { type ControlMessage, type Identity, Mux, type MuxHandlers, StreamErrorCode } from '@narrowlink/protocol';
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import type { BrokerPeer } from './direct-broker.ts';

export type SessionKind = 'agent' | 'client';
export type SessionState = 'handshaking' | 'open' | 'closing' | 'closed';

export interface SessionIdentity extends Identity {
  typ: SessionKind;
  /** Token expiry, milliseconds since the epoch (extended by a successful `reauth`). */
  expiresAtMs: number;
  /** The agent authenticated with a ServiceAccount token naming itself (re-authentication must too). */
  viaServiceAccount?: boolean;
}

export class PeerSession implements BrokerPeer {
  readonly id: string;
  readonly kind: SessionKind;
  readonly identity: SessionIdentity;
  readonly ws: WebSocket;
  readonly mux: Mux;
  readonly log: Logger;
  state: SessionState = 'handshaking';
  /** performance.now() of the last message received / sent, for heartbeats. */
  lastReceivedAt: number;
  lastSentAt: number;
  readonly #onClosed: (session: PeerSession) => void;

  constructor(options: {
    id: string;
    kind: SessionKind;
    identity: SessionIdentity;
    ws: WebSocket;
    log: Logger;
    localWindow: number;
    maxStreams: number;
    handlers: MuxHandlers;
    onClosed: (session: PeerSession) => void;
  }) {
    this.id = options.id;
    this.kind = options.kind;
    this.identity = options.identity;
    this.ws = options.ws;
    this.log = options.log;
    this.#onClosed = options.onClosed;
    this.lastReceivedAt = this.lastSentAt = performance.now();
    const ws = options.ws;
    this.mux = new Mux({
      role: 'acceptor',
      localWindow: options.localWindow,
      maxStreams: options.maxStreams,
      handlers: options.handlers,
      send: (bytes) => {
        this.lastSentAt = performance.now();
        ws.send(bytes, { binary: true });
      },
    });
    ws.on('message', (data, isBinary) => {
      this.lastReceivedAt = performance.now();
      if (!isBinary) {
        this.close(4400, 'text messages are not part of the protocol');
        return;
      }
      this.mux.receive(data as Buffer);
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

  #closed(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.mux.close(StreamErrorCode.PEER_GONE, `${this.kind} session closed`);
    this.#onClosed(this);
  }
}
