/**
 * How every QUIC connection of an endpoint is configured: the options an endpoint takes and the one quiche
 * `Config` built from them (TLS identity, ALPN, payload sizes, flow-control windows).
 */
import { quicheBinding } from './native.ts';
import type { Config } from '@matrixai/quic/native/types.js';
import type { PeerIdentity } from './identity.ts';

const MIB = 1024 * 1024;
const ALPN = 'narrowlink-direct/1';
/** Largest UDP payload we accept: the Ethernet-MTU case, or what we send if that is larger (loopback, jumbo LANs). */
const MIN_UDP_RECV = 1500;
/** Largest UDP payload we send unless `maxUdpPayloadBytes` says otherwise (safe across the internet). */
export const DEFAULT_MAX_UDP_PAYLOAD_BYTES = 1350;
/** SO_SNDBUF/SO_RCVBUF asked for unless `socketBufferBytes` says otherwise. */
export const DEFAULT_SOCKET_BUFFER_BYTES = 4 * MIB;

export interface QuicheEndpointOptions {
  /** This peer's key and certificate (generateIdentity()). */
  identity: PeerIdentity;
  /** UDP port to bind; 0 (default) picks one. */
  port?: number;
  /** Address to bind; default 0.0.0.0 (or :: for udp6). */
  host?: string;
  type?: 'udp4' | 'udp6';
  /** Datagrams whose first byte is 0x00 (punch, probe replies). The buffer is the caller's to keep. */
  onRawDatagram?: (data: Buffer, from: { address: string; port: number }) => void;
  /** Close a connection after this long without a packet from the peer. Default 30 000. */
  idleTimeoutMs?: number;
  /** Send an ack-eliciting PING this often on an open connection to hold NAT mappings. Default 15 000 (≤ 25 000). */
  keepAliveMs?: number;
  /**
   * Largest UDP payload we send. Default 1350 (safe across the internet). 1452 fits a 1500-byte Ethernet MTU;
   * larger values only make sense on loopback or jumbo-frame LANs (quiche here has no path-MTU discovery).
   */
  maxUdpPayloadBytes?: number;
  /**
   * Per-stream receive window. Default 16 MiB, also the default `maxStreamWindowBytes` (no growth): with the
   * connection window unlimited (see buildConfig), these windows times `maxStreams` bound what a peer can make
   * us buffer, 16 GiB at most by default, like the relay's 4,096 streams × 4 MiB.
   */
  streamWindowBytes?: number;
  /** Connection receive window. Default 2^50 bytes, i.e. none (see buildConfig for why). */
  connectionWindowBytes?: number;
  maxStreamWindowBytes?: number;
  maxConnectionWindowBytes?: number;
  /** Concurrent streams the peer may open. Default 1024. */
  maxStreams?: number;
  /** SO_SNDBUF/SO_RCVBUF to ask for (the kernel caps them). Default 4 MiB. */
  socketBufferBytes?: number;
}

/** The quiche configuration shared by every connection (both roles) of one endpoint. */
export function buildConfig(options: QuicheEndpointOptions): Config {
  const { identity } = options;
  // verifyPeer: request and receive the peer's certificate; verifyAllowFail: accept any chain (self-signed).
  // The fingerprint is checked after the handshake (QuicheConnection.#checkHandshake).
  const config = quicheBinding().Config.withBoringSslCtx(true, true, null, [Buffer.from(identity.keyPem)], [Buffer.from(identity.certPem)], null);
  const payload = options.maxUdpPayloadBytes ?? DEFAULT_MAX_UDP_PAYLOAD_BYTES;
  config.setApplicationProtos([ALPN]);
  config.setMaxIdleTimeout(options.idleTimeoutMs ?? 30_000);
  config.setMaxRecvUdpPayloadSize(Math.max(MIN_UDP_RECV, payload));
  config.setMaxSendUdpPayloadSize(payload);
  const streamWindow = options.streamWindowBytes ?? 16 * MIB;
  // The connection-level window is effectively unlimited: this quiche leaks connection credit on every stream
  // reset (bytes buffered or in flight for a reset stream are never counted as consumed), so a finite window
  // shrinks with each reset until no stream can send; measured on loopback: 5 resets of streams with 8 MiB
  // coming in wedged a 32 MiB window. Memory stays bounded by the per-stream windows times maxStreams, as on
  // the relay (per-stream credit only).
  const connWindow = options.connectionWindowBytes ?? 2 ** 50;
  config.setInitialMaxData(connWindow);
  config.setInitialMaxStreamDataBidiLocal(streamWindow);
  config.setInitialMaxStreamDataBidiRemote(streamWindow);
  config.setInitialMaxStreamDataUni(0);
  config.setInitialMaxStreamsBidi(options.maxStreams ?? 1024);
  config.setInitialMaxStreamsUni(0);
  config.setMaxStreamWindow(Math.max(streamWindow, options.maxStreamWindowBytes ?? streamWindow));
  config.setMaxConnectionWindow(Math.max(connWindow, options.maxConnectionWindowBytes ?? 2 ** 50));
  config.enablePacing(false);
  config.grease(false);
  config.enableDgram(false, 0, 0);
  return config;
}
