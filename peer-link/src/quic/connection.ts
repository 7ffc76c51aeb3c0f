/**
 * One QUIC connection (either role) over an endpoint's socket: the DirectTransport the adapters use. It feeds
 * datagrams to quiche, runs the per-turn flush the endpoint asks for (stream reads and writes, draining
 * `conn.send()` into the socket with one reused buffer, re-arming quiche's timer), checks the peer's certificate,
 * and applies the liveness rules (liveness.ts) on its keep-alive timer.
 *
 * TLS: each peer presents its own self-signed certificate (identity.ts) and requests the other's; quiche is told
 * to accept any chain, and once the handshake completes we compare the peer's leaf fingerprint with the one the
 * gateway handed over, closing with TLS alert bad_certificate (and NL_ERR_DIRECT_PEER_MISMATCH) if it differs.
 * The client considers the connection up only after the server's first 1-RTT packet, which the server sends only
 * after it has checked the client's certificate, so a rejected client sees the rejection from `connect()`.
 */
import type { RemoteInfo, Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { quicheBinding } from './native.ts';
import type { Connection, Host as HostPort, RecvInfo } from '@matrixai/quic/native/types.js';
import { closeReasonOf, QUIC_APPLICATION_ERROR, QUIC_BAD_CERTIFICATE } from './close-reason.ts';
import { DirectError, DirectErrorCode } from './errors.ts';
import { fingerprint } from './identity.ts';
import { LivenessMonitor } from './liveness.ts';
import { peerResetError, QuicheStream, type StreamHost } from './stream.ts';
import type { DirectStream, DirectTransport, DirectTransportStats } from './transport.ts';

const READ_CHUNK = 64 * 1024;
/** A read that filled less than this is copied out so the 64 KiB read buffer can be reused. */
const COPY_BELOW = 16 * 1024;
const EMPTY = Buffer.alloc(0);

export type Role = 'client' | 'server';

/** How a connection settles the connect() or accept() that created it. */
export interface Pending {
  resolve: (t: QuicheConnection) => void;
  reject: (e: DirectError) => void;
}

/** All a connection uses of the endpoint that hosts it (QuicheEndpoint builds one per socket). */
export interface ConnectionHost {
  readonly socket: Socket;
  /** The socket's bound address (the `to` of every RecvInfo). */
  readonly local: HostPort;
  /** Size of every outgoing datagram (the `maxUdpPayloadBytes` option after its default). */
  readonly maxUdpPayloadBytes: number;
  /** The endpoint's `keepAliveMs` option as given (LivenessMonitor applies default and cap). */
  readonly keepAliveMs: number | undefined;
  /** The socket is gone (closed by us or by whoever else holds it): packets are no longer sent. */
  socketClosed: boolean;
  /** Arms the endpoint's one flush of this event-loop turn. */
  scheduleFlush(): void;
  /** The connection finished: stop routing datagrams to it. */
  unregister(conn: QuicheConnection): void;
}

type ConnState = 'handshaking' | 'open' | 'closing' | 'closed';

/**
 * One QUIC connection (either role); the DirectTransport the adapters use, and the StreamHost its streams use.
 *
 *   handshaking ──(established, fingerprint ok; client: + server's first 1-RTT packet)──> open
 *   handshaking ──(fingerprint mismatch, timeout, close())──> closing      connect()/accept() reject at once
 *   open ──(close(), peer close, idle timeout, QUIC error)──> closing ──(quiche drained)──> closed ('closed' event)
 */
export class QuicheConnection extends EventEmitter implements DirectTransport, StreamHost {
  readonly #host: ConnectionHost;
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
  /** The buffer quiche writes the next outgoing packet into (reused while sends complete synchronously). */
  #sendBuf: Buffer = Buffer.alloc(0);
  /** The connect() (client) or accept() (server) to settle once verified or failed; undefined once settled. */
  #pending: Pending | undefined;
  peerFingerprint = '';
  remote: { address: string; port: number };

  constructor(host: ConnectionHost, conn: Connection, role: Role, remote: HostPort, expectedFingerprint: string, pending: Pending) {
    super();
    this.#host = host;
    this.#pending = pending;
    this.#conn = conn;
    this.#role = role;
    this.#expected = expectedFingerprint.toLowerCase();
    this.remote = { address: remote.host, port: remote.port };
    this.#recvInfo = { from: remote, to: host.local };
    this.#nextLocalStream = role === 'client' ? 0 : 1;
    this.#peerMax = role === 'client' ? -3 : -4;
  }

  get closed(): boolean {
    return this.#state === 'closing' || this.#state === 'closed';
  }

  /** For the endpoint: one datagram routed here (quiche takes it now; the flush follows in this turn). */
  onDatagram(msg: Buffer, rinfo: RemoteInfo): void {
    if (this.#state === 'closed') return;
    this.#packetsIn++;
    this.#lastHeardAt = performance.now();
    let info = this.#recvInfo;
    if (info.from.port !== rinfo.port || info.from.host !== rinfo.address) {
      // The peer's address changed (NAT rebinding): quiche validates the new path itself.
      info = this.#recvInfo = { from: { host: rinfo.address, port: rinfo.port }, to: this.#host.local };
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

  /** For the endpoint: the per-turn flush. */
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
    const sock = this.#host.socket;
    const size = this.#host.maxUdpPayloadBytes;
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
      if (this.#host.socketClosed) continue;
      sock.send(out.subarray(0, result[0]), to.port, to.host);
      // An empty send queue means the datagram went to the kernel synchronously (libuv's try-send): the buffer
      // is ours again. Otherwise libuv holds it until the queued send completes, so the next packet gets a new one.
      if (sock.getSendQueueCount() !== 0) out = Buffer.allocUnsafe(size);
    }
    this.#sendBuf = out;
  }

  readonly #onTimeout = (): void => {
    this.#timer = undefined;
    this.#conn.onTimeout();
    this.#host.scheduleFlush();
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
    const liveness = new LivenessMonitor({ keepAliveMs: this.#host.keepAliveMs, openedAtMs: performance.now(), packetsIn: this.#packetsIn });
    this.#liveness = liveness;
    this.#keepAlive = setInterval(this.#onLivenessTick, liveness.tickMs);
    const p = this.#pending;
    this.#pending = undefined;
    p?.resolve(this);
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
      this.#host.scheduleFlush();
    }
  };

  /** Settles connect()/accept() with an error now, without waiting for the close to drain. */
  #rejectHandshake(error: DirectError): void {
    const p = this.#pending;
    this.#pending = undefined;
    p?.reject(error);
  }

  /** For the endpoint: abort the handshake (connect/accept timeout). */
  failHandshake(error: DirectError): void {
    if (this.#state !== 'handshaking') return;
    this.#localError = error;
    this.#state = 'closing';
    try {
      this.#conn.close(false, QUIC_APPLICATION_ERROR, Buffer.from(error.code));
    } catch {}
    this.#rejectHandshake(error);
    this.#host.scheduleFlush();
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
        stream = new QuicheStream(this, this.#conn, id);
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

  /** StreamHost: moves readable bytes of one stream into its Duplex until it pushes back. */
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
   * StreamHost: stops reading a stream (STOP_SENDING with `code`). quiche drops what is buffered for it without
   * counting it as consumed, which the unbounded connection window absorbs (see buildConfig).
   */
  stopReading(id: number, code: number): void {
    try {
      this.#conn.streamShutdown(id, quicheBinding().Shutdown.Read, code);
    } catch {}
  }

  /** StreamHost: the stream has work for the next flush. */
  markDirty(stream: QuicheStream): void {
    this.#dirty.add(stream);
    this.#host.scheduleFlush();
  }

  /** StreamHost */
  flushSoon(): void {
    this.#host.scheduleFlush();
  }

  /** StreamHost */
  clean(stream: QuicheStream): void {
    this.#dirty.delete(stream);
  }

  /** StreamHost */
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
      const stream = new QuicheStream(this, this.#conn, id);
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
      this.#host.scheduleFlush();
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
    this.#host.unregister(this);
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
