/**
 * The direct path as the agent and client adapters see it: a connection that carries many bidirectional byte
 * streams. Deliberately small so the QUIC stack behind it can be swapped (today: quiche driven by our own packet
 * loop, see endpoint.ts).
 */
import type { Duplex } from 'node:stream';
import type { DirectError } from './errors.ts';

/**
 * One bidirectional stream. A node:stream Duplex with backpressure both ways (the peer's flow-control window
 * stops our writes; not reading stops the peer), half-close via `end()` (a QUIC FIN: the other direction stays
 * open), and resets: a stream the peer resets or stops reading is destroyed with a `DirectError`
 * `NL_ERR_DIRECT_STREAM_RESET`. `destroy()` on an unfinished stream resets it towards the peer.
 *
 * A stream opened here becomes visible to the peer's `onStream` handler with its first byte (or FIN).
 */
export interface DirectStream extends Duplex {
  /** QUIC stream id (client-initiated even, server-initiated odd). */
  readonly id: number;
  /** Abort both directions with an application error code the peer sees in `streamCode`. */
  reset(code: number): void;
}

export interface DirectTransportStats {
  /** Smoothed round-trip time of the active path, ms. */
  rttMs: number;
  /** UDP payload bytes sent / received, including QUIC overhead and retransmissions. */
  bytesSent: number;
  bytesReceived: number;
  packetsSent: number;
  packetsReceived: number;
  /** Packets declared lost. */
  lost: number;
}

export interface DirectTransport {
  /** The peer's certificate fingerprint (sha256 hex), verified against the expected one. */
  readonly peerFingerprint: string;
  /** The peer's UDP address as last seen. */
  readonly remote: { address: string; port: number };
  /** Whether the connection is closing or closed. */
  readonly closed: boolean;
  /** Opens a stream; waits for stream credit if the peer's limit is reached; rejects once closed. */
  openStream(): Promise<DirectStream>;
  /** Receives streams the peer opens. Streams that arrive before a handler is set are queued for it. */
  onStream(handler: (stream: DirectStream) => void): void;
  /** Closes the connection (unsent data is dropped: end streams first for a clean finish). Resolves when closed. */
  close(reason?: string): Promise<void>;
  stats(): DirectTransportStats;
  /** `error` is undefined for a graceful close by either side. */
  on(event: 'closed', listener: (error: DirectError | undefined) => void): this;
  once(event: 'closed', listener: (error: DirectError | undefined) => void): this;
  off(event: 'closed', listener: (error: DirectError | undefined) => void): this;
}
