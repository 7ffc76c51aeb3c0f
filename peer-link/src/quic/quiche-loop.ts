/**
 * The direct path's QUIC stack: the native quiche binding shipped in `@matrixai/quic`, driven by a lean packet
 * loop of our own. The library's QUICServer/QUICClient API spends ~150 µs of JS per packet (3-8 MB/s); this loop
 * does one `conn.recv()` per datagram and, once per event-loop turn, ONE flush per connection that services
 * stream reads and writes, drains `conn.send()` into the socket and re-arms a single quiche timer (see
 * ../shared/notes/quic.md: flushing per packet instead costs 4×).
 *
 * One `QuicheEndpoint` owns one UDP socket. The socket is shared: datagrams whose first byte is 0x00 are not
 * QUIC (QUIC always sets the 0x40 fixed bit) and go to `onRawDatagram` (NAT probes, punch packets); `sendRaw`
 * sends them from the same port, so the NAT mapping punched is the one QUIC uses. QUIC datagrams are routed by
 * destination connection id, so one socket can host an outgoing connection and accept incoming ones.
 *
 * TLS: each peer presents its own self-signed certificate (identity.ts) and requests the other's; quiche is told
 * to accept any chain, and once the handshake completes we compare the peer's leaf fingerprint with the one the
 * gateway handed over, closing with TLS alert bad_certificate (and NL_ERR_DIRECT_PEER_MISMATCH) if it differs.
 * The client considers the connection up only after the server's first 1-RTT packet, which the server sends only
 * after it has checked the client's certificate, so a rejected client sees the rejection from `connect()`.
 */
import { randomBytes } from 'node:crypto';
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import { Duplex } from 'node:stream';
import quiche from '@matrixai/quic/native/quiche.js';
import type { Config, Connection, Host as HostPort, RecvInfo } from '@matrixai/quic/native/types.js';
import { closeReasonOf, QUIC_APPLICATION_ERROR, QUIC_BAD_CERTIFICATE } from './close-reason.ts';
import { DirectError, DirectErrorCode } from './errors.ts';
import type { PeerIdentity } from './identity.ts';
import { fingerprint } from './identity.ts';
import { LivenessMonitor } from './liveness.ts';
import type { DirectStream, DirectTransport, DirectTransportStats } from './transport.ts';

const MIB = 1024 * 1024;
/** Length of the connection ids we issue: short-header packets are routed on this many bytes. */
const CID_LEN = 20;
const ALPN = 'narrowlink-direct/1';
const READ_CHUNK = 64 * 1024;
/** A read that filled less than this is copied out so the 64 KiB read buffer can be reused. */
const COPY_BELOW = 16 * 1024;
const EMPTY = Buffer.alloc(0);
/** Largest UDP payload we accept: the Ethernet-MTU case, or what we send if that is larger (loopback, jumbo LANs). */
const MIN_UDP_RECV = 1500;

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

export interface ConnectOptions {
  address: string;
  port: number;
  /** sha256 hex of the peer's certificate, as handed over by the gateway. */
  expectedFingerprint: string;
  /** Give up the handshake after this long. Default 5 000. */
  timeoutMs?: number;
}

export interface AcceptOptions {
  expectedFingerprint: string;
  /** Only accept a handshake from this address (default: the first one to arrive). */
  from?: { address: string; port: number };
  /** Give up after this long without a verified connection. Default 5 000. */
  timeoutMs?: number;
}

type Role = 'client' | 'server';

interface Pending {
  resolve: (t: QuicheConnection) => void;
  reject: (e: DirectError) => void;
}

interface PendingAccept extends Pending {
  options: AcceptOptions;
  timer: NodeJS.Timeout;
  conn: QuicheConnection | undefined;
}

/** One UDP socket hosting QUIC connections (both roles) and raw 0x00 datagrams. */
export class QuicheEndpoint {
  readonly socket: Socket;
  readonly options: Readonly<QuicheEndpointOptions>;
  readonly #config: Config;
  readonly #local: HostPort;
  /** Connection-id (latin1 string of its bytes) → connection. */
  readonly #routes = new Map<string, QuicheConnection>();
  readonly #connections = new Set<QuicheConnection>();
  readonly #accepts: PendingAccept[] = [];
  #flushScheduled = false;
  #closed = false;
  /** Datagrams that were neither raw nor routable (stray, or for a connection already gone). */
  dropped = 0;

  private constructor(socket: Socket, options: QuicheEndpointOptions) {
    this.socket = socket;
    this.options = options;
    const addr = socket.address();
    this.#local = { host: addr.address, port: addr.port };
    this.#config = buildConfig(options);
    socket.on('message', (msg, rinfo) => this.#onMessage(msg, rinfo));
    socket.once('close', () => {
      this.socketClosed = true;
    });
  }

  /** @internal The socket is gone (closed by us or by whoever else holds it): packets are no longer sent. */
  socketClosed = false;

  /** Binds the socket. Rejects with NL_ERR_DIRECT_SOCKET (e.g. port in use). */
  static async bind(options: QuicheEndpointOptions): Promise<QuicheEndpoint> {
    const type = options.type ?? 'udp4';
    // Addresses we send to are always IP literals: a synchronous lookup spares a dns.lookup + nextTick per packet.
    const socket = createSocket({ type, reuseAddr: false, lookup: ipLiteralLookup });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', (err) => reject(new DirectError(DirectErrorCode.SOCKET, `cannot bind UDP ${options.host ?? ''}:${options.port ?? 0}: ${err.message}`, { cause: err })));
      socket.bind({ port: options.port ?? 0, address: options.host ?? (type === 'udp6' ? '::' : '0.0.0.0'), exclusive: true }, () => resolve());
    });
    const buf = options.socketBufferBytes ?? 4 * MIB;
    try {
      socket.setRecvBufferSize(buf);
      socket.setSendBufferSize(buf);
    } catch {
      // Capped or refused by the kernel: the loop still works, with more loss under load.
    }
    const endpoint = new QuicheEndpoint(socket, options);
    socket.on('error', () => {
      // Sends to unreachable addresses surface here on some platforms; QUIC recovers by itself.
    });
    return endpoint;
  }

  get port(): number {
    return this.#local.port;
  }

  address(): { address: string; port: number } {
    return { address: this.#local.host, port: this.#local.port };
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Sends a raw datagram (first byte must be 0x00 so the peer does not take it for QUIC). */
  sendRaw(data: Uint8Array, to: { address: string; port: number }): void {
    if (this.#closed || this.socketClosed) throw new DirectError(DirectErrorCode.CLOSED, 'endpoint is closed');
    if (data[0] !== 0x00) throw new DirectError(DirectErrorCode.SOCKET, 'raw datagrams must start with 0x00');
    this.socket.send(data, to.port, to.address);
  }

  /** Opens a QUIC connection as client and verifies the peer's fingerprint. */
  connect(options: ConnectOptions): Promise<DirectTransport> {
    if (this.#closed) return Promise.reject(new DirectError(DirectErrorCode.CLOSED, 'endpoint is closed'));
    if (isIP(options.address) === 0) return Promise.reject(new DirectError(DirectErrorCode.SOCKET, `not an IP address: ${options.address}`));
    const scid = randomBytes(CID_LEN);
    const remote = { host: options.address, port: options.port };
    const native = quiche.Connection.connect(null, scid, this.#local, remote, this.#config);
    const conn = new QuicheConnection(this, native, 'client', remote, options.expectedFingerprint);
    this.#register(conn, scid);
    const timeoutMs = options.timeoutMs ?? 5_000;
    return new Promise<DirectTransport>((resolve, reject) => {
      const timer = setTimeout(() => conn.failHandshake(new DirectError(DirectErrorCode.TIMEOUT, `QUIC handshake with ${options.address}:${options.port} did not complete in ${timeoutMs} ms`)), timeoutMs);
      conn.pending = {
        resolve: (t) => {
          clearTimeout(timer);
          resolve(t);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.scheduleFlush();
    });
  }

  /** Waits for a peer to connect to this endpoint (QUIC server role) and verifies its fingerprint. */
  accept(options: AcceptOptions): Promise<DirectTransport> {
    if (this.#closed) return Promise.reject(new DirectError(DirectErrorCode.CLOSED, 'endpoint is closed'));
    const timeoutMs = options.timeoutMs ?? 5_000;
    return new Promise<DirectTransport>((resolve, reject) => {
      const entry: PendingAccept = {
        options,
        conn: undefined,
        timer: setTimeout(() => {
          const err = new DirectError(DirectErrorCode.TIMEOUT, `no verified QUIC connection from the peer in ${timeoutMs} ms`);
          if (entry.conn) entry.conn.failHandshake(err);
          else {
            this.#removeAccept(entry);
            reject(err);
          }
        }, timeoutMs),
        resolve: (t) => {
          clearTimeout(entry.timer);
          this.#removeAccept(entry);
          resolve(t);
        },
        reject: (e) => {
          clearTimeout(entry.timer);
          this.#removeAccept(entry);
          reject(e);
        },
      };
      this.#accepts.push(entry);
    });
  }

  /** Connects (role 'client') or accepts (role 'server'), as the punch plan says. */
  dial(role: Role, options: ConnectOptions): Promise<DirectTransport> {
    if (role === 'client') return this.connect(options);
    return this.accept({ expectedFingerprint: options.expectedFingerprint, from: { address: options.address, port: options.port }, timeoutMs: options.timeoutMs });
  }

  /** Closes every connection (waiting for their close to be sent) and frees the socket. */
  async close(): Promise<void> {
    if (this.#closed) return;
    for (const a of [...this.#accepts]) a.reject(new DirectError(DirectErrorCode.CLOSED, 'endpoint closed'));
    await Promise.all([...this.#connections].map((c) => c.close('endpoint closed')));
    this.#closed = true;
    if (!this.socketClosed) await new Promise<void>((resolve) => this.socket.close(() => resolve()));
  }

  #removeAccept(entry: PendingAccept): void {
    const i = this.#accepts.indexOf(entry);
    if (i >= 0) this.#accepts.splice(i, 1);
  }

  #register(conn: QuicheConnection, ...ids: Uint8Array[]): void {
    this.#connections.add(conn);
    for (const id of ids) {
      const key = Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('latin1');
      this.#routes.set(key, conn);
      conn.routeKeys.push(key);
    }
  }

  /** @internal */
  unregister(conn: QuicheConnection): void {
    this.#connections.delete(conn);
    for (const key of conn.routeKeys) if (this.#routes.get(key) === conn) this.#routes.delete(key);
  }

  /** @internal Called by a server connection that passed or failed verification. */
  settleAccept(conn: QuicheConnection, error: DirectError | undefined): void {
    const entry = this.#accepts.find((a) => a.conn === conn);
    if (!entry) return;
    if (error) entry.reject(error);
    else entry.resolve(conn);
  }

  #onMessage(msg: Buffer, rinfo: RemoteInfo): void {
    if (msg.length === 0) return;
    const first = msg[0] as number;
    if (first === 0x00) {
      this.options.onRawDatagram?.(msg, { address: rinfo.address, port: rinfo.port });
      return;
    }
    let key: string;
    const long = (first & 0x80) !== 0;
    if (long) {
      // Long header: flags(1) version(4) dcid_len(1) dcid.
      if (msg.length < 7) return void this.dropped++;
      const dcidLen = msg[5] as number;
      if (msg.length < 6 + dcidLen) return void this.dropped++;
      key = msg.toString('latin1', 6, 6 + dcidLen);
    } else {
      if (msg.length < 1 + CID_LEN) return void this.dropped++;
      key = msg.toString('latin1', 1, 1 + CID_LEN);
    }
    let conn = this.#routes.get(key);
    if (!conn) {
      // Only a client Initial (long header, type 0) may open a connection, and only while someone accepts.
      if (!long || (first & 0x30) !== 0 || msg.length < 1200) return void this.dropped++;
      conn = this.#acceptInitial(msg, rinfo, key);
      if (!conn) return void this.dropped++;
    }
    conn.onDatagram(msg, rinfo);
    this.scheduleFlush();
  }

  #acceptInitial(msg: Buffer, rinfo: RemoteInfo, odcidKey: string): QuicheConnection | undefined {
    const entry = this.#accepts.find(
      (a) => a.conn === undefined && (!a.options.from || (a.options.from.address === rinfo.address && a.options.from.port === rinfo.port)),
    );
    if (!entry) return undefined;
    const version = msg.readUInt32BE(1);
    if (!quiche.versionIsSupported(version)) return undefined;
    const scid = randomBytes(CID_LEN);
    const odcid = Buffer.from(odcidKey, 'latin1');
    const remote = { host: rinfo.address, port: rinfo.port };
    const native = quiche.Connection.accept(scid, odcid, this.#local, remote, this.#config);
    const conn = new QuicheConnection(this, native, 'server', remote, entry.options.expectedFingerprint);
    entry.conn = conn;
    this.#register(conn, scid, odcid);
    return conn;
  }

  /** @internal Arms the one flush of this event-loop turn. */
  scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(this.#flush);
  }

  readonly #flush = (): void => {
    this.#flushScheduled = false;
    for (const conn of this.#connections) conn.service();
  };

  /** @internal */
  get local(): HostPort {
    return this.#local;
  }
}

/** dgram `lookup` for IP literals only (the peers' addresses come from the gateway as IPs). */
function ipLiteralLookup(address: string, _family: unknown, callback: (err: Error | null, address: string, family: number) => void): void {
  const fam = isIP(address);
  if (fam === 0) callback(new DirectError(DirectErrorCode.SOCKET, `not an IP address: ${address}`), address, 4);
  else callback(null, address, fam);
}

function buildConfig(options: QuicheEndpointOptions): Config {
  const { identity } = options;
  // verifyPeer: request and receive the peer's certificate; verifyAllowFail: accept any chain (self-signed).
  // The fingerprint is checked after the handshake (QuicheConnection.#verify).
  const config = quiche.Config.withBoringSslCtx(true, true, null, [Buffer.from(identity.keyPem)], [Buffer.from(identity.certPem)], null);
  const payload = options.maxUdpPayloadBytes ?? 1350;
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

type ConnState = 'handshaking' | 'open' | 'closing' | 'closed';

/**
 * One QUIC connection (either role); the DirectTransport the adapters use.
 *
 *   handshaking ──(established, fingerprint ok; client: + server's first 1-RTT packet)──> open
 *   handshaking ──(fingerprint mismatch, timeout, close())──> closing      connect()/accept() reject at once
 *   open ──(close(), peer close, idle timeout, QUIC error)──> closing ──(quiche drained)──> closed ('closed' event)
 */
class QuicheConnection extends EventEmitter implements DirectTransport {
  readonly #endpoint: QuicheEndpoint;
  readonly #conn: Connection;
  readonly #role: Role;
  readonly #expected: string;
  readonly #streams = new Map<number, QuicheStream>();
  /** Streams with buffered writes, a pending FIN, or a read the consumer asked for. */
  readonly #dirty = new Set<QuicheStream>();
  readonly #opens: Array<{ resolve: (s: DirectStream) => void; reject: (e: DirectError) => void }> = [];
  #handler: ((stream: DirectStream) => void) | undefined;
  readonly #unclaimed: QuicheStream[] = [];
  #state: ConnState = 'handshaking';
  #timer: NodeJS.Timeout | undefined;
  #keepAlive: NodeJS.Timeout | undefined;
  /** Keep-alive and path probing, once open: rules in liveness.ts, timer here. */
  #liveness: LivenessMonitor | undefined;
  /** Datagrams received, and when the last one came (liveness probing after a NAT flush). */
  #packetsIn = 0;
  #lastHeardAt = performance.now();
  #nextLocalStream: number;
  /** Highest peer-initiated stream id seen, and ids below it not yet seen (peers may open out of order). */
  #peerMax: number;
  readonly #peerGaps = new Set<number>();
  #sawShortHeader = false;
  #closeAfterFlush = false;
  #closedLocally = false;
  /** Why the connection ended (undefined while open, or for a graceful close). */
  #endError: DirectError | undefined;
  #localError: DirectError | undefined;
  #closedWaiters: Array<() => void> = [];
  #finalStats: DirectTransportStats | undefined;
  #recvInfo: RecvInfo;
  #readBuf = Buffer.allocUnsafe(READ_CHUNK);
  peerFingerprint = '';
  remote: { address: string; port: number };
  /** @internal connection ids routed to this connection */
  readonly routeKeys: string[] = [];
  /** @internal the connect() promise (client role) */
  pending: Pending | undefined;

  constructor(endpoint: QuicheEndpoint, conn: Connection, role: Role, remote: HostPort, expectedFingerprint: string) {
    super();
    this.#endpoint = endpoint;
    this.#conn = conn;
    this.#role = role;
    this.#expected = expectedFingerprint.toLowerCase();
    this.remote = { address: remote.host, port: remote.port };
    this.#recvInfo = { from: remote, to: endpoint.local };
    this.#nextLocalStream = role === 'client' ? 0 : 1;
    this.#peerMax = role === 'client' ? -3 : -4;
  }

  get closed(): boolean {
    return this.#state === 'closing' || this.#state === 'closed';
  }

  /** @internal */
  onDatagram(msg: Buffer, rinfo: RemoteInfo): void {
    if (this.#state === 'closed') return;
    this.#packetsIn++;
    this.#lastHeardAt = performance.now();
    let info = this.#recvInfo;
    if (info.from.port !== rinfo.port || info.from.host !== rinfo.address) {
      // The peer's address changed (NAT rebinding): quiche validates the new path itself.
      info = this.#recvInfo = { from: { host: rinfo.address, port: rinfo.port }, to: this.#endpoint.local };
      this.remote = { address: rinfo.address, port: rinfo.port };
    }
    if (((msg[0] as number) & 0x80) === 0) this.#sawShortHeader = true;
    try {
      this.#conn.recv(msg, info);
    } catch {
      // Undecryptable or stray packets are dropped by quiche; a fatal error sets localError and closes the
      // connection, which service() notices.
    }
  }

  /** @internal The per-turn flush. */
  service(): void {
    if (this.#state === 'closed') return;
    const conn = this.#conn;
    if (this.#state === 'handshaking') {
      this.#checkHandshake();
      // The peer refused us (e.g. our fingerprint): report it now rather than after the drain period.
      if ((this.#state as ConnState) !== 'open' && conn.peerError() !== null) this.#rejectHandshake(this.#closeReason() ?? new DirectError(DirectErrorCode.CLOSED, 'the peer closed the connection during the handshake', { byPeer: true }));
    }
    if (this.#state === 'open') {
      this.#serviceReads();
      for (const s of this.#dirty) s.service();
      if (this.#opens.length > 0) this.#serviceOpens();
    }
    this.#drain();
    if (this.#closeAfterFlush) {
      this.#closeAfterFlush = false;
      conn.close(false, QUIC_BAD_CERTIFICATE, Buffer.from(DirectErrorCode.PEER_MISMATCH));
      this.#drain();
    }
    if (conn.isClosed()) {
      this.#finish();
      return;
    }
    // Re-arm the one quiche timer.
    const t = conn.timeout();
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = t === null ? undefined : setTimeout(this.#onTimeout, t);
  }

  /** Drains quiche's outgoing packets into the socket. */
  #drain(): void {
    const conn = this.#conn;
    const sock = this.#endpoint.socket;
    const size = this.#endpoint.options.maxUdpPayloadBytes ?? 1350;
    let out = this.#sendBuf.length === size ? this.#sendBuf : Buffer.allocUnsafe(size);
    for (;;) {
      let result: ReturnType<Connection['send']>;
      try {
        result = conn.send(out);
      } catch {
        break;
      }
      if (result === null) break;
      const to = result[1].to;
      if (this.#endpoint.socketClosed) continue;
      sock.send(out.subarray(0, result[0]), to.port, to.host);
      // An empty send queue means the datagram went to the kernel synchronously (libuv's try-send): the buffer
      // is ours again. Otherwise libuv holds it until the queued send completes, so the next packet gets a new one.
      if (sock.getSendQueueCount() !== 0) out = Buffer.allocUnsafe(size);
    }
    this.#sendBuf = out;
  }

  /** The buffer quiche writes the next outgoing packet into (reused while sends complete synchronously). */
  #sendBuf: Buffer = Buffer.alloc(0);

  readonly #onTimeout = (): void => {
    this.#timer = undefined;
    this.#conn.onTimeout();
    this.#endpoint.scheduleFlush();
  };

  #checkHandshake(): void {
    const conn = this.#conn;
    if (conn.isClosed() || conn.isDraining() || !conn.isEstablished()) return;
    if (!this.peerFingerprint) {
      const chain = conn.peerCertChain();
      const leaf = chain?.[0];
      const got = leaf ? fingerprint(leaf) : '';
      if (got !== this.#expected) {
        this.#localError = new DirectError(
          DirectErrorCode.PEER_MISMATCH,
          `the peer's certificate fingerprint ${got || '(none)'} is not the expected ${this.#expected}`,
        );
        this.#state = 'closing';
        // A client is already established here and quiche would send the close in a 1-RTT packet, which the
        // server cannot read before our Finished: let this flush send the Finished first (see service()).
        if (this.#role === 'client') this.#closeAfterFlush = true;
        else conn.close(false, QUIC_BAD_CERTIFICATE, Buffer.from(DirectErrorCode.PEER_MISMATCH));
        this.#rejectHandshake(this.#localError);
        return;
      }
      this.peerFingerprint = got;
    }
    // The client waits for the server's first 1-RTT packet: the server sends one only after checking our certificate.
    if (this.#role === 'client' && !this.#sawShortHeader) return;
    if (conn.peerError() !== null) return;
    this.#state = 'open';
    const liveness = new LivenessMonitor({ keepAliveMs: this.#endpoint.options.keepAliveMs, openedAtMs: performance.now(), packetsIn: this.#packetsIn });
    this.#liveness = liveness;
    this.#keepAlive = setInterval(this.#onLivenessTick, liveness.tickMs);
    if (this.#role === 'client') {
      const p = this.pending;
      this.pending = undefined;
      p?.resolve(this);
    } else this.#endpoint.settleAccept(this, undefined);
  }

  /** The keep-alive timer: asks the liveness rules what to do now and does it. */
  readonly #onLivenessTick = (): void => {
    if (this.#state !== 'open' || !this.#liveness) return;
    const now = performance.now();
    const action = this.#liveness.tick(now, this.#packetsIn, this.#lastHeardAt);
    if (action === 'dead') {
      const silentMs = now - this.#lastHeardAt;
      this.#localError ??= new DirectError(DirectErrorCode.IDLE, `the peer stopped answering (${Math.round(silentMs / 1000)} s without a packet despite probes): the direct path is gone`);
      void this.close('path dead');
      // Nobody is there to hear the close: send it once and report now, instead of after quiche's draining
      // period (three probe timeouts, backed off by the loss: seconds).
      this.#drain();
      this.#finish();
      return;
    }
    if (action !== 'none') {
      this.#conn.sendAckEliciting();
      this.#endpoint.scheduleFlush();
    }
  };

  /** Settles connect()/accept() with an error now, without waiting for the close to drain. */
  #rejectHandshake(error: DirectError): void {
    if (this.#role === 'client') {
      const p = this.pending;
      this.pending = undefined;
      p?.reject(error);
    } else this.#endpoint.settleAccept(this, error);
  }

  /** @internal Abort the handshake (timeout). */
  failHandshake(error: DirectError): void {
    if (this.#state !== 'handshaking') return;
    this.#localError = error;
    this.#state = 'closing';
    try {
      this.#conn.close(false, QUIC_APPLICATION_ERROR, Buffer.from(error.code));
    } catch {}
    this.#rejectHandshake(error);
    this.#endpoint.scheduleFlush();
  }

  #serviceReads(): void {
    for (const id of this.#conn.readable()) {
      let stream = this.#streams.get(id);
      if (!stream) {
        if (!this.#isNewPeerStream(id)) {
          // Data for a stream we already dropped: discard it.
          this.stopReading(id, 0);
          continue;
        }
        stream = new QuicheStream(this, id);
        this.#streams.set(id, stream);
        this.#deliver(stream);
      }
      if (!stream.readPaused) this.readInto(stream);
      else this.#checkReset(stream);
    }
  }

  /**
   * A stream whose reader is backed up is not read, but a reset by the peer must still end it: until it does,
   * the bytes buffered for it hold the connection's flow-control window. An empty read reports the reset (quiche
   * checks for one before copying anything) and takes nothing otherwise.
   */
  #checkReset(stream: QuicheStream): void {
    try {
      this.#conn.streamRecv(stream.id, EMPTY);
    } catch (err) {
      const reset = peerResetError(stream.id, err);
      if (reset) stream.fail(reset);
    }
  }

  #isNewPeerStream(id: number): boolean {
    if ((id & 1) === (this.#role === 'client' ? 0 : 1)) return false;
    if (id > this.#peerMax) {
      for (let gap = this.#peerMax + 4; gap < id; gap += 4) this.#peerGaps.add(gap);
      this.#peerMax = id;
      return true;
    }
    return this.#peerGaps.delete(id);
  }

  #deliver(stream: QuicheStream): void {
    if (this.#handler) this.#handler(stream);
    else this.#unclaimed.push(stream);
  }

  /** @internal Moves readable bytes of one stream into its Duplex until it pushes back. */
  readInto(stream: QuicheStream): void {
    const conn = this.#conn;
    for (;;) {
      let result: [number, boolean] | null;
      const buf = this.#readBuf;
      try {
        result = conn.streamRecv(stream.id, buf);
      } catch (err) {
        stream.fail(peerResetError(stream.id, err) ?? new DirectError(DirectErrorCode.QUIC, `stream ${stream.id} read failed`, { cause: err }));
        return;
      }
      if (result === null) return;
      const [n, fin] = result;
      let more = true;
      if (n > 0) {
        let chunk: Buffer;
        if (n < COPY_BELOW) chunk = Buffer.from(buf.subarray(0, n));
        else {
          chunk = buf.subarray(0, n);
          this.#readBuf = Buffer.allocUnsafe(READ_CHUNK);
        }
        more = stream.push(chunk);
      }
      if (fin) {
        stream.readFinished();
        return;
      }
      if (!more) {
        stream.readPaused = true;
        return;
      }
    }
  }

  /**
   * @internal Stops reading a stream (STOP_SENDING with `code`). quiche drops what is buffered for it without
   * counting it as consumed, which the unbounded connection window absorbs (see buildConfig).
   */
  stopReading(id: number, code: number): void {
    try {
      this.#conn.streamShutdown(id, quiche.Shutdown.Read, code);
    } catch {}
  }

  /** @internal */
  markDirty(stream: QuicheStream): void {
    this.#dirty.add(stream);
    this.#endpoint.scheduleFlush();
  }

  /** @internal */
  flushSoon(): void {
    this.#endpoint.scheduleFlush();
  }

  /** @internal */
  clean(stream: QuicheStream): void {
    this.#dirty.delete(stream);
  }

  /** @internal */
  get native(): Connection {
    return this.#conn;
  }

  /** @internal */
  forget(stream: QuicheStream): void {
    this.#streams.delete(stream.id);
    this.#dirty.delete(stream);
  }

  openStream(): Promise<DirectStream> {
    if (this.closed) return Promise.reject(this.#closedError());
    return new Promise<DirectStream>((resolve, reject) => {
      this.#opens.push({ resolve, reject });
      this.#serviceOpens();
    });
  }

  #serviceOpens(): void {
    while (this.#opens.length > 0 && this.#conn.peerStreamsLeftBidi() > 0) {
      const id = this.#nextLocalStream;
      this.#nextLocalStream += 4;
      try {
        // A zero-length send creates quiche's stream state without sending anything.
        this.#conn.streamSend(id, new Uint8Array(0), false);
      } catch {
        // StreamLimit: wait for MAX_STREAMS from the peer.
        this.#nextLocalStream -= 4;
        return;
      }
      const stream = new QuicheStream(this, id);
      this.#streams.set(id, stream);
      this.#opens.shift()?.resolve(stream);
    }
  }

  onStream(handler: (stream: DirectStream) => void): void {
    this.#handler = handler;
    for (const s of this.#unclaimed.splice(0)) handler(s);
  }

  close(reason = ''): Promise<void> {
    if (this.#state === 'closed') return Promise.resolve();
    const done = new Promise<void>((resolve) => this.#closedWaiters.push(resolve));
    this.#closedLocally = true;
    if (this.#state !== 'closing') {
      const wasOpen = this.#state === 'open';
      this.#state = 'closing';
      if (!wasOpen) this.#localError ??= new DirectError(DirectErrorCode.CLOSED, 'closed during the handshake');
      try {
        this.#conn.close(wasOpen, wasOpen ? 0 : QUIC_APPLICATION_ERROR, Buffer.from(reason));
      } catch {
        // Already closing.
      }
      this.#endpoint.scheduleFlush();
    }
    return done;
  }

  stats(): DirectTransportStats {
    if (this.#finalStats) return this.#finalStats;
    const s = this.#conn.stats();
    const path = this.#conn.pathStats()[0];
    return {
      rttMs: path ? path.rtt : 0,
      bytesSent: s.sentBytes,
      bytesReceived: s.recvBytes,
      packetsSent: s.sent,
      packetsReceived: s.recv,
      lost: s.lost,
    };
  }

  #closedError(): DirectError {
    return this.#endError ?? this.#localError ?? new DirectError(DirectErrorCode.CLOSED, 'the direct connection is closed');
  }

  /** Works out why the connection ended (closeReasonOf). Undefined for a graceful close. */
  #closeReason(): DirectError | undefined {
    const conn = this.#conn;
    return closeReasonOf({
      localError: this.#localError,
      peerError: conn.peerError(),
      quicLocalError: conn.localError(),
      timedOut: conn.isTimedOut(),
      handshaking: this.#state === 'handshaking',
    });
  }

  #finish(): void {
    const error = this.#closeReason();
    this.#endError = error;
    this.#finalStats = this.stats();
    this.#state = 'closed';
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#keepAlive) clearInterval(this.#keepAlive);
    this.#endpoint.unregister(this);
    const streamError = error ?? new DirectError(DirectErrorCode.CLOSED, 'the direct connection closed');
    // On a graceful close by the peer, a stream that has all its input and nothing left to send just closes; any other
    // stream was cut short and errors.
    // A local close() cuts streams like destroy() would, quietly.
    for (const s of [...this.#streams.values()]) s.fail(error === undefined && (s.complete || this.#closedLocally) ? undefined : streamError, false);
    for (const o of this.#opens.splice(0)) o.reject(streamError);
    this.#rejectHandshake(error ?? new DirectError(DirectErrorCode.CLOSED, 'the connection closed during the handshake'));
    for (const w of this.#closedWaiters.splice(0)) w();
    this.emit('closed', error);
  }
}

/** The STREAM_RESET error for a quiche read error that says the peer reset the stream; `undefined` otherwise. */
function peerResetError(id: number, err: unknown): DirectError | undefined {
  const code = matchCode(err, /StreamReset\((\d+)\)/);
  return code === undefined ? undefined : new DirectError(DirectErrorCode.STREAM_RESET, `the peer reset stream ${id} (code ${code})`, { streamCode: code, byPeer: true });
}

function matchCode(err: unknown, re: RegExp): number | undefined {
  const m = err instanceof Error ? re.exec(err.message) : null;
  return m ? Number(m[1]) : undefined;
}

/** A QUIC bidirectional stream as a node Duplex. */
class QuicheStream extends Duplex implements DirectStream {
  readonly id: number;
  readonly #owner: QuicheConnection;
  /** Chunks handed to us by _write/_writev, not yet accepted by quiche. */
  #queue: Buffer[] = [];
  #queueCb: ((err?: Error | null) => void) | undefined;
  #finCb: ((err?: Error | null) => void) | undefined;
  #finSent = false;
  #readEnded = false;
  #wantRead = false;
  #resetCode = 0;
  /** @internal set when push() returned false; cleared by _read */
  readPaused = false;

  constructor(owner: QuicheConnection, id: number) {
    super({ allowHalfOpen: true, readableHighWaterMark: 256 * 1024, writableHighWaterMark: 256 * 1024 });
    this.#owner = owner;
    this.id = id;
  }

  override _read(): void {
    if (!this.readPaused) return;
    this.readPaused = false;
    this.#wantRead = true;
    this.#owner.markDirty(this);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#queue.push(chunk);
    this.#queueCb = cb;
    this.#owner.markDirty(this);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    for (const c of chunks) this.#queue.push(c.chunk);
    this.#queueCb = cb;
    this.#owner.markDirty(this);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.#finCb = cb;
    this.#owner.markDirty(this);
  }

  /** @internal Called from the flush: hands queued bytes (and FIN) to quiche, resumes a paused read. */
  service(): void {
    if (this.destroyed) return void this.#owner.clean(this);
    const conn = this.#owner.native;
    if (this.#wantRead) {
      this.#wantRead = false;
      this.#owner.readInto(this);
      if (this.destroyed) return;
    }
    for (;;) {
      while (this.#queue.length > 0) {
        const chunk = this.#queue[0] as Buffer;
        if (chunk.length === 0) {
          // quiche takes 0 bytes of an empty write, which would read as "no capacity" and stall the stream.
          this.#queue.shift();
          continue;
        }
        let n: number | null;
        try {
          n = conn.streamSend(this.id, chunk, false);
        } catch (err) {
          this.#writeFailed(err);
          return;
        }
        if (n === null || n === 0) return;
        if (n < chunk.length) {
          this.#queue[0] = chunk.subarray(n);
          return;
        }
        this.#queue.shift();
      }
      const cb = this.#queueCb;
      if (!cb) break;
      this.#queueCb = undefined;
      // May synchronously call _write/_writev with the next buffered chunks: keep going while quiche takes them.
      cb();
      if (this.destroyed) return;
    }
    if (this.#finCb && this.#queue.length === 0) {
      try {
        conn.streamSend(this.id, new Uint8Array(0), true);
      } catch (err) {
        this.#writeFailed(err);
        return;
      }
      this.#finSent = true;
      const cb = this.#finCb;
      this.#finCb = undefined;
      cb();
      this.#maybeDone();
    }
    if (this.#queue.length === 0 && !this.#queueCb && !this.#finCb) this.#owner.clean(this);
  }

  #writeFailed(err: unknown): void {
    const code = matchCode(err, /StreamStopped\((\d+)\)/);
    this.fail(
      code === undefined
        ? new DirectError(DirectErrorCode.QUIC, `stream ${this.id} write failed`, { cause: err })
        : new DirectError(DirectErrorCode.STREAM_RESET, `the peer stopped reading stream ${this.id} (code ${code})`, { streamCode: code, byPeer: true }),
    );
  }

  /** @internal FIN received and delivered. */
  readFinished(): void {
    this.#readEnded = true;
    this.push(null);
    this.#maybeDone();
  }

  #maybeDone(): void {
    if (this.#readEnded && this.#finSent) this.#owner.forget(this);
  }

  /** @internal Whether all input arrived and nothing is left to send. */
  get complete(): boolean {
    return this.#readEnded && this.#queue.length === 0 && !this.#queueCb && !this.#finCb;
  }

  /** @internal Destroys the stream; `shutdown` false when the connection is already gone. */
  fail(error: DirectError | undefined, shutdown = true): void {
    if (!shutdown) this.#finSent = this.#readEnded = true;
    this.destroy(error);
  }

  reset(code: number): void {
    this.#resetCode = code;
    this.destroy();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const conn = this.#owner.native;
    const code = this.#resetCode || (err ? 1 : 0);
    if (!this.#owner.closed) {
      if (!this.#readEnded) this.#owner.stopReading(this.id, code);
      try {
        if (!this.#finSent) conn.streamShutdown(this.id, quiche.Shutdown.Write, code);
      } catch {}
    }
    this.#owner.forget(this);
    this.#owner.flushSoon();
    cb(err);
  }
}
