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
 * Modules: endpoint.ts (this: socket, routing, accept queue, the per-turn flush), connection.ts (one connection,
 * its handshake check and packet drain), stream.ts (one stream as a Duplex), config.ts (quiche config from the
 * options), liveness.ts and close-reason.ts (pure rules the connection applies). ADR 0007 explains the cut.
 */
import { randomBytes } from 'node:crypto';
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { isIP } from 'node:net';
import { quicheBinding } from './native.ts';
import type { Config, Host as HostPort } from '@matrixai/quic/native/types.js';
import { buildConfig, DEFAULT_MAX_UDP_PAYLOAD_BYTES, DEFAULT_SOCKET_BUFFER_BYTES, type QuicheEndpointOptions } from './config.ts';
import { type ConnectionHost, type Pending, QuicheConnection, type Role } from './connection.ts';
import { DirectError, DirectErrorCode } from './errors.ts';
import type { DirectTransport } from './transport.ts';

export type { QuicheEndpointOptions } from './config.ts';

/** Length of the connection ids we issue: short-header packets are routed on this many bytes. */
const CID_LEN = 20;

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

/** An accept() waiting for a connection; once an Initial matched it, `conn` settles it through `resolve`/`reject`. */
interface PendingAccept extends Pending {
  options: AcceptOptions;
  timer: NodeJS.Timeout;
  conn: QuicheConnection | undefined;
}

/** One UDP socket hosting QUIC connections (both roles) and raw 0x00 datagrams. */
export class QuicheEndpoint {
  readonly socket: Socket;
  readonly options: Readonly<QuicheEndpointOptions>;
  /**
   * Built on the first connection, not at bind: building it loads the native binding (~6 MiB of RSS), and an agent
   * sidecar binds its endpoint at start but may never see a direct path.
   */
  #configBuilt: Config | undefined;
  readonly #local: HostPort;
  /** All a connection may use of this endpoint (see ConnectionHost); one object, shared by its connections. */
  readonly #host: ConnectionHost;
  /** Connection-id (latin1 string of its bytes) → connection. */
  readonly #routes = new Map<string, QuicheConnection>();
  /** Live connections → the route keys (connection ids) that lead to them. */
  readonly #connections = new Map<QuicheConnection, string[]>();
  readonly #accepts: PendingAccept[] = [];
  #flushScheduled = false;
  #closed = false;
  /** Datagrams that were neither raw nor routable (stray, or for a connection already gone). */
  dropped = 0;
  /**
   * Datagrams whose handling threw (a raw-datagram callback, or a bug on a connection's receive path). Each is
   * dropped and counted: datagrams come from anyone, and a throw in a socket handler would end the process.
   */
  handlerErrors = 0;

  private constructor(socket: Socket, options: QuicheEndpointOptions) {
    this.socket = socket;
    this.options = options;
    const addr = socket.address();
    this.#local = { host: addr.address, port: addr.port };
    this.#host = {
      socket,
      local: this.#local,
      maxUdpPayloadBytes: options.maxUdpPayloadBytes ?? DEFAULT_MAX_UDP_PAYLOAD_BYTES,
      keepAliveMs: options.keepAliveMs,
      socketClosed: false,
      scheduleFlush: this.#scheduleFlush,
      unregister: (conn) => this.#unregister(conn),
    };
    socket.on('message', (msg, rinfo) => {
      try {
        this.#onMessage(msg, rinfo);
      } catch {
        this.dropped++;
        this.handlerErrors++;
      }
    });
    socket.once('close', () => {
      this.#host.socketClosed = true;
    });
  }

  #config(): Config {
    this.#configBuilt ??= buildConfig(this.options);
    return this.#configBuilt;
  }

  /** Binds the socket. Rejects with NL_ERR_DIRECT_SOCKET (e.g. port in use). */
  static async bind(options: QuicheEndpointOptions): Promise<QuicheEndpoint> {
    const type = options.type ?? 'udp4';
    // Addresses we send to are always IP literals: a synchronous lookup spares a dns.lookup + nextTick per packet.
    const socket = createSocket({ type, reuseAddr: false, lookup: ipLiteralLookup });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', (err) => reject(new DirectError(DirectErrorCode.SOCKET, `cannot bind UDP ${options.host ?? ''}:${options.port ?? 0}: ${err.message}`, { cause: err })));
      socket.bind({ port: options.port ?? 0, address: options.host ?? (type === 'udp6' ? '::' : '0.0.0.0'), exclusive: true }, () => resolve());
    });
    const buf = options.socketBufferBytes ?? DEFAULT_SOCKET_BUFFER_BYTES;
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
    if (this.#closed || this.#host.socketClosed) throw new DirectError(DirectErrorCode.CLOSED, 'endpoint is closed');
    if (data[0] !== 0x00) throw new DirectError(DirectErrorCode.SOCKET, 'raw datagrams must start with 0x00');
    this.socket.send(data, to.port, to.address);
  }

  /** Opens a QUIC connection as client and verifies the peer's fingerprint. */
  connect(options: ConnectOptions): Promise<DirectTransport> {
    if (this.#closed) return Promise.reject(new DirectError(DirectErrorCode.CLOSED, 'endpoint is closed'));
    if (isIP(options.address) === 0) return Promise.reject(new DirectError(DirectErrorCode.SOCKET, `not an IP address: ${options.address}`));
    const scid = randomBytes(CID_LEN);
    const remote = { host: options.address, port: options.port };
    const native = quicheBinding().Connection.connect(null, scid, this.#local, remote, this.#config());
    const timeoutMs = options.timeoutMs ?? 5_000;
    return new Promise<DirectTransport>((resolve, reject) => {
      const pending: Pending = {
        resolve: (t) => {
          clearTimeout(timer);
          resolve(t);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const conn = new QuicheConnection(this.#host, native, 'client', remote, options.expectedFingerprint, pending);
      this.#register(conn, scid);
      const timer = setTimeout(() => conn.failHandshake(new DirectError(DirectErrorCode.TIMEOUT, `QUIC handshake with ${options.address}:${options.port} did not complete in ${timeoutMs} ms`)), timeoutMs);
      this.#scheduleFlush();
    });
  }

  /** Waits for a peer to connect to this endpoint (QUIC server role) and verifies its fingerprint. */
  accept(options: AcceptOptions): Promise<DirectTransport> {
    if (this.#closed) return Promise.reject(new DirectError(DirectErrorCode.CLOSED, 'endpoint is closed'));
    try {
      // The binding loads here the first time: where it cannot, the accept fails at once with why
      // (NL_ERR_DIRECT_NATIVE_UNAVAILABLE) instead of dropping the peer's Initial and timing out.
      this.#config();
    } catch (error) {
      return Promise.reject(error);
    }
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
    await Promise.all([...this.#connections.keys()].map((c) => c.close('endpoint closed')));
    this.#closed = true;
    if (!this.#host.socketClosed) await new Promise<void>((resolve) => this.socket.close(() => resolve()));
  }

  #removeAccept(entry: PendingAccept): void {
    const i = this.#accepts.indexOf(entry);
    if (i >= 0) this.#accepts.splice(i, 1);
  }

  #register(conn: QuicheConnection, ...ids: Uint8Array[]): void {
    const keys: string[] = [];
    this.#connections.set(conn, keys);
    for (const id of ids) {
      const key = Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('latin1');
      this.#routes.set(key, conn);
      keys.push(key);
    }
  }

  /** A connection finished: datagrams for its ids are no longer routed (they count as dropped). */
  #unregister(conn: QuicheConnection): void {
    const keys = this.#connections.get(conn) ?? [];
    this.#connections.delete(conn);
    for (const key of keys) if (this.#routes.get(key) === conn) this.#routes.delete(key);
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
    this.#scheduleFlush();
  }

  #acceptInitial(msg: Buffer, rinfo: RemoteInfo, odcidKey: string): QuicheConnection | undefined {
    const entry = this.#accepts.find(
      (a) => a.conn === undefined && (!a.options.from || (a.options.from.address === rinfo.address && a.options.from.port === rinfo.port)),
    );
    if (!entry) return undefined;
    const version = msg.readUInt32BE(1);
    if (!quicheBinding().versionIsSupported(version)) return undefined;
    const scid = randomBytes(CID_LEN);
    const odcid = Buffer.from(odcidKey, 'latin1');
    const remote = { host: rinfo.address, port: rinfo.port };
    const native = quicheBinding().Connection.accept(scid, odcid, this.#local, remote, this.#config());
    // The connection settles the accept() itself once it passed or failed verification.
    const conn = new QuicheConnection(this.#host, native, 'server', remote, entry.options.expectedFingerprint, entry);
    entry.conn = conn;
    this.#register(conn, scid, odcid);
    return conn;
  }

  /** Arms the one flush of this event-loop turn. */
  readonly #scheduleFlush = (): void => {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(this.#flush);
  };

  readonly #flush = (): void => {
    this.#flushScheduled = false;
    for (const conn of this.#connections.keys()) conn.service();
  };
}

/** dgram `lookup` for IP literals only (the peers' addresses come from the gateway as IPs). */
function ipLiteralLookup(address: string, _family: unknown, callback: (err: Error | null, address: string, family: number) => void): void {
  const fam = isIP(address);
  if (fam === 0) callback(new DirectError(DirectErrorCode.SOCKET, `not an IP address: ${address}`), address, 4);
  else callback(null, address, fam);
}
