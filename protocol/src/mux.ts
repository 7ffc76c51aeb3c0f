/**
 * Sans-I/O stream multiplexer for one session. Frames come in through `receive()`; frames go out
 * through the `send` callback given at construction. No sockets, no timers: the adapter owns those.
 *
 * Flow control is per stream and credit based (like HTTP/2 and QUIC): a side may send at most the
 * bytes the receiver granted. The receiver grants more (WINDOW) only after its consumer took bytes
 * away, so a slow reader bounds what every hop buffers to one window per stream and direction,
 * and never stalls the other streams of the session.
 */
import { ErrorCode, FrameError, ProtocolError, StreamErrorCode } from './errors.ts';
import {
  type ControlLimits,
  decodeFrame,
  encodeData,
  encodeFrame,
  type Frame,
  GATEWAY_CONTROL_LIMITS,
  MAX_STREAM_ID,
  PEER_CONTROL_LIMITS,
} from './frame-codec.ts';
import type { ControlMessage, OpenOk, OpenPayload, ResetPayload } from './messages.ts';

/** Default bytes a stream may have in flight towards a receiver before it must wait for credit. */
// 4 MiB measured 25 % faster than 1 MiB on the TLS relay (fewer credit stalls, fewer WINDOW frames, less CPU
// per MB) while a stalled reader still pins at most one window per hop and direction.
export const DEFAULT_STREAM_WINDOW = 4 * 1024 * 1024;
/**
 * Receive window a gateway stream starts with before auto-tuning grows it to the full window (MuxOptions.initialWindow):
 * what a peer that never reads can make the far sender push into the gateway per stream.
 */
export const DEFAULT_INITIAL_STREAM_WINDOW = 256 * 1024;
/** Largest DATA payload this side sends in one frame. */
export const DEFAULT_MAX_DATA_FRAME = 256 * 1024;
/** Credits are never allowed to exceed this (keeps arithmetic in safe 32-bit range). */
const MAX_CREDIT = 0x7fff_ffff;

export type MuxRole = 'initiator' | 'acceptor';

export interface MuxHandlers {
  /** The peer opened a stream. Call `stream.accept()` or `stream.reset()`. */
  onOpen?(stream: MuxStream, payload: OpenPayload): void;
  onControl?(message: ControlMessage): void;
  /**
   * A PING arrived; return false to leave it unanswered (a gateway's PING rate limit: a PONG per PING is work a
   * flooding peer would otherwise get for free). Without this handler every PING is answered.
   */
  onPing?(): boolean;
  /** A PONG arrived; `rttMs` measured against the matching PING, when one is known. */
  onPong?(rttMs: number | undefined): void;
  /** The peer broke session-level framing; the adapter must close the transport. */
  onSessionError?(error: FrameError | ProtocolError): void;
  /**
   * `open()` just used the last stream id of this side's parity (2^30 opens on one session): every further
   * `open()` throws ProtocolError(NL_ERR_PROTOCOL_STREAM_IDS_EXHAUSTED). Called once; the adapter should end the
   * session (a new session starts its ids afresh).
   */
  onStreamIdsExhausted?(error: ProtocolError): void;
}

export interface MuxOptions {
  role: MuxRole;
  /** Writes one encoded frame to the transport. */
  send: (bytes: Buffer) => void;
  /**
   * Bytes we let the peer send on each stream before it must wait for our WINDOW update: the most a stream's
   * receive window grows to (see `initialWindow`).
   */
  localWindow?: number;
  /**
   * The receive window each stream starts with, which is what this side must announce to the peer (its initial send
   * credit per stream). Default `localWindow`: fixed windows. Smaller: the window is auto-tuned — it doubles each
   * time the consumer has taken a whole window since it last grew, up to `localWindow` — so a stream whose consumer
   * does not read (a relay towards a client that stopped reading) never draws more than this from its sender, while
   * one that keeps up reaches the full window after a few windows' worth of bytes (receive-window auto-tuning as
   * in quic-go and Linux's tcp_rcv_space_adjust).
   */
  initialWindow?: number;
  /** Bytes the peer lets us send on each new stream (from its hello); can be set later. */
  peerWindow?: number;
  maxStreams?: number;
  maxDataFrame?: number;
  maxFramePayload?: number;
  /**
   * Largest CONTROL payload by message type. Default by role: a gateway (`acceptor`) takes what peers send
   * ({@link GATEWAY_CONTROL_LIMITS}), a peer (`initiator`) what gateways send ({@link PEER_CONTROL_LIMITS}).
   */
  controlLimits?: ControlLimits;
  /** Test only: the first stream id this side opens (must have the role's parity). Default 1 or 2. */
  firstLocalId?: number;
  /** Monotonic clock in milliseconds, used only to measure heartbeat round trips. */
  now?: () => number;
  handlers?: MuxHandlers;
}

export interface StreamHandlers {
  onOpenOk?(payload: OpenOk): void;
  onData?(data: Uint8Array): void;
  /** The peer half-closed: no more data will arrive. */
  onFin?(): void;
  /** The stream ended abnormally. `local` is true when this side reset it. */
  onReset?(reset: ResetPayload, local: boolean): void;
  /**
   * Writing may go on: the peer granted more send credit (every WINDOW update), or the session's transport drained
   * after a `write()` met it blocked (see {@link Mux.setTransportBlocked}).
   */
  onCredit?(): void;
  /** Both directions finished or the stream was reset: forget it. */
  onClose?(): void;
}

export type StreamState = 'opening' | 'open' | 'closed';

export class MuxStream {
  readonly id: number;
  readonly session: Mux;
  /** True when this side opened the stream (only the opener may receive OPEN_OK). */
  readonly local: boolean;
  handlers: StreamHandlers = {};
  state: StreamState;
  /** Bytes we may still send before the peer grants more. */
  sendCredit: number;
  /** Bytes the peer may still send us. */
  recvRemaining: number;
  /** Bytes consumed locally but not yet granted back to the peer. */
  #unacknowledged = 0;
  /** The receive window granted now (starts at the session's initialWindow, grows to its localWindow). */
  #recvWindow: number;
  /** Bytes consumed since the receive window last grew. */
  #consumedSinceGrowth = 0;
  localFin = false;
  remoteFin = false;
  bytesIn = 0;
  bytesOut = 0;

  constructor(session: Mux, id: number, state: StreamState, sendCredit: number, recvWindow: number) {
    this.session = session;
    this.id = id;
    this.local = session._isLocalId(id);
    this.state = state;
    this.sendCredit = sendCredit;
    this.recvRemaining = recvWindow;
    this.#recvWindow = recvWindow;
  }

  /** The receive window this stream grants now (bytes the peer may have in flight towards us). */
  get recvWindow(): number {
    return this.#recvWindow;
  }

  /** Accepts an incoming open. */
  accept(payload: OpenOk = {}): void {
    if (this.state !== 'opening') return;
    this.state = 'open';
    this.session._send(encodeFrame({ type: 'open_ok', streamId: this.id, payload }));
  }

  /**
   * Sends as much of `data` as the credit allows, in frames of at most maxDataFrame bytes, while the session's
   * transport is not blocked. Returns the number of bytes sent; the caller keeps the rest until `onCredit`.
   */
  write(data: Uint8Array): number {
    if (this.state === 'closed' || this.localFin) return 0;
    const session = this.session;
    const limit = Math.min(data.length, this.sendCredit);
    const maxFrame = session.maxDataFrame;
    let sent = 0;
    // Checked per frame: the adapter blocks the transport from inside _send as soon as its buffer is full.
    while (sent < limit && !session.transportBlocked) {
      const n = Math.min(maxFrame, limit - sent);
      session._send(encodeData(this.id, sent === 0 && n === data.length ? data : data.subarray(sent, sent + n)));
      sent += n;
    }
    if (sent < limit) session._waitForTransport(this);
    this.sendCredit -= sent;
    this.bytesOut += sent;
    return sent;
  }

  /**
   * Forwards a DATA frame received on another session without copying its payload: rewrites the
   * stream id in place. The caller must have checked `frame.length - 9 <= sendCredit`.
   */
  forwardDataMessage(message: Buffer, payloadLength: number): void {
    message.writeUInt32BE(this.id, 1);
    this.sendCredit -= payloadLength;
    this.bytesOut += payloadLength;
    this.session._send(message);
  }

  /** Tells the peer that `n` received bytes were consumed, granting credit in batches. */
  consumed(n: number): void {
    if (this.state === 'closed' || this.remoteFin) return;
    this.#unacknowledged += n;
    this.#consumedSinceGrowth += n;
    // Grant in batches of a quarter window: fewer WINDOW frames, the sender still never idles.
    if (this.#unacknowledged >= this.#recvWindow / 4) {
      let increment = this.#unacknowledged;
      this.#unacknowledged = 0;
      // The consumer took a whole window since the last growth: the window, not the consumer, limits the stream.
      const most = this.session.localWindow;
      if (this.#recvWindow < most && this.#consumedSinceGrowth >= this.#recvWindow) {
        const growth = Math.min(this.#recvWindow, most - this.#recvWindow);
        this.#recvWindow += growth;
        this.#consumedSinceGrowth = 0;
        increment += growth;
      }
      this.recvRemaining += increment;
      this.session._send(encodeFrame({ type: 'window', streamId: this.id, increment }));
    }
  }

  /** Half-closes our sending direction. */
  fin(): void {
    if (this.state === 'closed' || this.localFin) return;
    this.localFin = true;
    this.session._send(encodeFrame({ type: 'fin', streamId: this.id }));
    this.#closeIfDone();
  }

  /** Aborts the stream in both directions and tells the peer why. */
  reset(code: StreamErrorCode, message: string): void {
    if (this.state === 'closed') return;
    const payload = { code, message: message.slice(0, 1024) };
    this.session._send(encodeFrame({ type: 'reset', streamId: this.id, payload }));
    this._terminate(payload, true);
  }

  /** @internal */
  _receive(frame: Frame): void {
    switch (frame.type) {
      case 'open_ok':
        if (this.state !== 'opening' || !this.local) return this.reset(StreamErrorCode.PROTOCOL_ERROR, 'unexpected OPEN_OK');
        this.state = 'open';
        this.handlers.onOpenOk?.(frame.payload);
        return;
      case 'data':
        if (this.remoteFin) return this.reset(StreamErrorCode.PROTOCOL_ERROR, 'DATA after FIN');
        if (frame.data.length > this.recvRemaining) {
          return this.reset(StreamErrorCode.FLOW_CONTROL, `peer sent ${frame.data.length} bytes with ${this.recvRemaining} of credit`);
        }
        this.recvRemaining -= frame.data.length;
        this.bytesIn += frame.data.length;
        this.handlers.onData?.(frame.data);
        return;
      case 'window': {
        const before = this.sendCredit;
        if (before + frame.increment > MAX_CREDIT) return this.reset(StreamErrorCode.FLOW_CONTROL, 'credit overflow');
        this.sendCredit = before + frame.increment;
        this.handlers.onCredit?.();
        return;
      }
      case 'fin':
        if (this.remoteFin) return;
        this.remoteFin = true;
        this.handlers.onFin?.();
        this.#closeIfDone();
        return;
      case 'reset':
        this._terminate(frame.payload, false);
        return;
      default:
        return this.reset(StreamErrorCode.PROTOCOL_ERROR, `unexpected ${frame.type} frame on a stream`);
    }
  }

  /** @internal Ends the stream without telling the peer (it told us, or the session is gone). */
  _terminate(reset: ResetPayload, local: boolean): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.session._forget(this.id);
    this.handlers.onReset?.(reset, local);
    this.handlers.onClose?.();
  }

  #closeIfDone(): void {
    if (this.localFin && this.remoteFin && this.state !== 'closed') {
      this.state = 'closed';
      this.session._forget(this.id);
      this.handlers.onClose?.();
    }
  }
}

function idsExhausted(): ProtocolError {
  return new ProtocolError(ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED, 'this session has used all of its stream ids; open a new session');
}

/** One multiplexed session: the stream table, id allocation, PING/PONG and control dispatch. */
export class Mux {
  readonly role: MuxRole;
  readonly localWindow: number;
  /** The receive window a new stream starts with (what this side announces); see MuxOptions.initialWindow. */
  readonly initialWindow: number;
  peerWindow: number;
  readonly maxStreams: number;
  readonly maxDataFrame: number;
  readonly maxFramePayload: number;
  readonly controlLimits: ControlLimits;
  handlers: MuxHandlers;
  readonly #send: (bytes: Buffer) => void;
  readonly #now: () => number;
  readonly #streams = new Map<number, MuxStream>();
  #nextLocalId: number;
  #lastPeerId = 0;
  #pingSeq = 0;
  readonly #pingsInFlight = new Map<bigint, number>();
  #closed = false;
  /** The transport's send buffer is over its high-water mark: stream writes wait (control frames still go). */
  #transportBlocked = false;
  /** Streams whose write met the transport blocked; told `onCredit` when it drains. */
  readonly #waitingForTransport = new Set<MuxStream>();
  /** Total bytes of frames handed to the transport. */
  bytesSent = 0;
  bytesReceived = 0;

  constructor(options: MuxOptions) {
    this.role = options.role;
    this.#send = options.send;
    this.localWindow = options.localWindow ?? DEFAULT_STREAM_WINDOW;
    this.initialWindow = Math.min(options.initialWindow ?? this.localWindow, this.localWindow);
    if (!(this.initialWindow > 0)) throw new RangeError('initialWindow must be positive');
    this.peerWindow = options.peerWindow ?? DEFAULT_STREAM_WINDOW;
    this.maxStreams = options.maxStreams ?? 4096;
    this.maxDataFrame = options.maxDataFrame ?? DEFAULT_MAX_DATA_FRAME;
    this.maxFramePayload = options.maxFramePayload ?? 1024 * 1024;
    this.controlLimits = options.controlLimits ?? (this.role === 'acceptor' ? GATEWAY_CONTROL_LIMITS : PEER_CONTROL_LIMITS);
    this.#now = options.now ?? (() => performance.now());
    this.handlers = options.handlers ?? {};
    this.#nextLocalId = this.role === 'initiator' ? 1 : 2;
    if (options.firstLocalId !== undefined) {
      if (!Number.isInteger(options.firstLocalId) || options.firstLocalId < 1 || options.firstLocalId % 2 !== this.#nextLocalId % 2) {
        throw new RangeError(`firstLocalId must be a positive integer of the ${this.role}'s parity`);
      }
      this.#nextLocalId = options.firstLocalId;
    }
  }

  get streamCount(): number {
    return this.#streams.size;
  }

  get closed(): boolean {
    return this.#closed;
  }

  streams(): IterableIterator<MuxStream> {
    return this.#streams.values();
  }

  getStream(id: number): MuxStream | undefined {
    return this.#streams.get(id);
  }

  /** True while the adapter reports its transport's send buffer full (see {@link setTransportBlocked}). */
  get transportBlocked(): boolean {
    return this.#transportBlocked;
  }

  /**
   * The adapter reports whether bytes handed to `send` are piling up in the transport (its buffer over a high-water
   * mark). While blocked, stream writes send nothing and wait, so a peer that does not read pins at most the
   * transport's buffer, not every stream's window; when unblocked, every waiting stream gets `onCredit`. Control
   * frames are not held back: the adapter bounds those by reading less (the gateway stops reading the peer).
   */
  setTransportBlocked(blocked: boolean): void {
    if (blocked === this.#transportBlocked) return;
    this.#transportBlocked = blocked;
    if (blocked || this.#waitingForTransport.size === 0) return;
    const waiting = [...this.#waitingForTransport];
    this.#waitingForTransport.clear();
    for (const stream of waiting) {
      if (stream.state === 'closed') continue;
      // A stream's write may block the transport again: the ones not yet told keep waiting for the next drain.
      if (this.#transportBlocked) this.#waitingForTransport.add(stream);
      else stream.handlers.onCredit?.();
    }
  }

  /** @internal A stream's write stopped at a blocked transport. */
  _waitForTransport(stream: MuxStream): void {
    if (this.#transportBlocked) this.#waitingForTransport.add(stream);
  }

  /** False once this side has used every stream id of its parity (see `onStreamIdsExhausted`). */
  get canOpen(): boolean {
    return !this.#closed && this.#nextLocalId <= MAX_STREAM_ID;
  }

  /**
   * Opens a stream towards the peer; the answer arrives as `onOpenOk` or `onReset`. Throws ProtocolError:
   * NL_ERR_PROTOCOL_UNEXPECTED when the session is closed, NL_ERR_PROTOCOL_STREAM_IDS_EXHAUSTED when this side
   * has used all of its 2^30 stream ids (a new session is needed; `onStreamIdsExhausted` said so already).
   */
  open(payload: OpenPayload, handlers: StreamHandlers = {}): MuxStream {
    if (this.#closed) throw new ProtocolError(ErrorCode.PROTOCOL_UNEXPECTED, 'session is closed');
    const id = this.#nextLocalId;
    if (id > MAX_STREAM_ID) throw idsExhausted();
    this.#nextLocalId += 2;
    const stream = new MuxStream(this, id, 'opening', this.peerWindow, this.initialWindow);
    stream.handlers = handlers;
    this.#streams.set(id, stream);
    this._send(encodeFrame({ type: 'open', streamId: id, payload }));
    // Told as soon as the last id is gone, not at the next open: the adapter ends the session before any caller
    // (a relay choosing this session for its next stream) has to meet the refusal.
    if (this.#nextLocalId > MAX_STREAM_ID) this.handlers.onStreamIdsExhausted?.(idsExhausted());
    return stream;
  }

  sendControl(message: ControlMessage): void {
    this._send(encodeFrame({ type: 'control', message }));
  }

  /** Sends a PING; the round trip is reported through `onPong`. */
  ping(): void {
    const opaque = Buffer.alloc(8);
    const seq = BigInt(++this.#pingSeq);
    opaque.writeBigUInt64BE(seq);
    this.#pingsInFlight.set(seq, this.#now());
    if (this.#pingsInFlight.size > 16) this.#pingsInFlight.delete(this.#pingsInFlight.keys().next().value as bigint);
    this._send(encodeFrame({ type: 'ping', opaque }));
  }

  /** Feeds one transport message (exactly one frame). Never throws for bad input. */
  receive(message: Uint8Array): void {
    if (this.#closed) return;
    this.bytesReceived += message.length;
    let frame: Frame;
    try {
      frame = decodeFrame(message, this.maxFramePayload, this.controlLimits);
    } catch (err) {
      const error = err instanceof FrameError ? err : new FrameError(ErrorCode.FRAME_BAD_PAYLOAD, 'undecodable frame', { cause: err });
      const stream = error.streamId === 0 ? undefined : this.#streams.get(error.streamId);
      // A bad payload on a known stream costs that stream only; anything else breaks the session.
      if (stream && error.code === ErrorCode.FRAME_BAD_PAYLOAD) stream.reset(StreamErrorCode.PROTOCOL_ERROR, error.message);
      else if (error.code === ErrorCode.FRAME_BAD_PAYLOAD && error.streamId > this.#lastPeerId && this.#isPeerId(error.streamId)) {
        // A refused OPEN still uses up its id, so the peer cannot retry the same id.
        this.#lastPeerId = error.streamId;
        this._send(encodeFrame({ type: 'reset', streamId: error.streamId, payload: { code: StreamErrorCode.PROTOCOL_ERROR, message: error.message.slice(0, 1024) } }));
      } else this.handlers.onSessionError?.(error);
      return;
    }
    this.receiveFrame(frame, message);
  }

  /** Dispatches one decoded frame; `raw` is the encoded message, kept for zero-copy forwarding. */
  receiveFrame(frame: Frame, raw?: Uint8Array): void {
    switch (frame.type) {
      case 'control':
        this.handlers.onControl?.(frame.message);
        return;
      case 'ping':
        if (this.handlers.onPing?.() === false) return;
        this._send(encodeFrame({ type: 'pong', opaque: frame.opaque }));
        return;
      case 'pong': {
        const seq = Buffer.from(frame.opaque.buffer, frame.opaque.byteOffset, 8).readBigUInt64BE(0);
        const sentAt = this.#pingsInFlight.get(seq);
        this.#pingsInFlight.delete(seq);
        this.handlers.onPong?.(sentAt === undefined ? undefined : this.#now() - sentAt);
        return;
      }
      case 'open':
        this.#acceptOpen(frame.streamId, frame.payload);
        return;
      default: {
        const stream = this.#streams.get(frame.streamId);
        // Frames for a stream we already forgot are the tail of a race with our RESET: drop them.
        if (!stream) return;
        if (frame.type === 'data' && raw) this.lastRawData = raw;
        stream._receive(frame);
        this.lastRawData = undefined;
      }
    }
  }

  /**
   * The encoded DATA message being dispatched right now, if any; a relay may forward it as is
   * (see `MuxStream.forwardDataMessage`) instead of re-encoding the payload.
   */
  lastRawData: Uint8Array | undefined;

  /**
   * Resets every stream locally (the transport is gone) and refuses further use. A stream handler that throws
   * does not keep the other streams open: every stream is terminated, then the first error is rethrown.
   */
  close(code: StreamErrorCode = StreamErrorCode.PEER_GONE, message = 'session closed'): void {
    if (this.#closed) return;
    this.#closed = true;
    let failed = false;
    let failure: unknown;
    for (const stream of [...this.#streams.values()]) {
      try {
        stream._terminate({ code, message }, false);
      } catch (error) {
        if (!failed) failure = error;
        failed = true;
      }
    }
    if (failed) throw failure;
  }

  /** Resets every stream, telling the peer, without closing the session. */
  resetAll(code: StreamErrorCode, message: string): void {
    for (const stream of [...this.#streams.values()]) stream.reset(code, message);
  }

  #isPeerId(id: number): boolean {
    return (id % 2 === 1) === (this.role === 'acceptor');
  }

  /** @internal */
  _isLocalId(id: number): boolean {
    return !this.#isPeerId(id);
  }

  #acceptOpen(id: number, payload: OpenPayload): void {
    if (!this.#isPeerId(id) || id <= this.#lastPeerId) {
      this.handlers.onSessionError?.(
        new ProtocolError(ErrorCode.PROTOCOL_UNEXPECTED, `peer opened stream ${id}, which is not a new id of its parity`),
      );
      return;
    }
    this.#lastPeerId = id;
    if (this.#streams.size >= this.maxStreams) {
      this._send(encodeFrame({ type: 'reset', streamId: id, payload: { code: StreamErrorCode.TOO_MANY_STREAMS, message: `limit is ${this.maxStreams} streams per session` } }));
      return;
    }
    const stream = new MuxStream(this, id, 'opening', this.peerWindow, this.initialWindow);
    this.#streams.set(id, stream);
    if (this.handlers.onOpen) this.handlers.onOpen(stream, payload);
    else stream.reset(StreamErrorCode.PROTOCOL_ERROR, 'this side accepts no streams');
  }

  /** @internal */
  _send(bytes: Buffer): void {
    if (this.#closed) return;
    this.bytesSent += bytes.length;
    this.#send(bytes);
  }

  /** @internal */
  _forget(id: number): void {
    const stream = this.#streams.get(id);
    if (stream) this.#waitingForTransport.delete(stream);
    this.#streams.delete(id);
  }
}
