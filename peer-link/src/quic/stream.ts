/**
 * One QUIC bidirectional stream as a node Duplex (the DirectStream adapters see). Writes are queued here and handed
 * to quiche in the connection's per-turn flush (`service()`); reads are pushed in by the connection. The stream
 * reaches its connection only through `StreamHost`.
 */
import { Duplex } from 'node:stream';
import { quicheBinding } from './native.ts';
import type { Connection } from '@matrixai/quic/native/types.js';
import { DirectError, DirectErrorCode } from './errors.ts';
import type { DirectStream } from './transport.ts';

/** What a stream needs from the connection that carries it (QuicheConnection implements it). */
export interface StreamHost {
  /** Whether the connection is closing or closed: then there is no stream shutdown left to send. */
  readonly closed: boolean;
  /** Moves readable bytes of the stream into it until it pushes back (a paused read that resumed). */
  readInto(stream: QuicheStream): void;
  /** Stops reading the stream (STOP_SENDING with `code`). */
  stopReading(id: number, code: number): void;
  /** The stream has writes, a FIN or a resumed read for the next flush. */
  markDirty(stream: QuicheStream): void;
  /** The stream has nothing left for the flush. */
  clean(stream: QuicheStream): void;
  /** The stream is finished both ways, or destroyed: the connection drops it. */
  forget(stream: QuicheStream): void;
  /** Arms a flush (to send what a destroy queued). */
  flushSoon(): void;
}

/** The part of quiche's connection a stream calls itself: sending and shutting down its write side. */
export type StreamIo = Pick<Connection, 'streamSend' | 'streamShutdown'>;

/** The STREAM_RESET error for a quiche read error that says the peer reset the stream; `undefined` otherwise. */
export function peerResetError(id: number, err: unknown): DirectError | undefined {
  const code = matchCode(err, /StreamReset\((\d+)\)/);
  return code === undefined ? undefined : new DirectError(DirectErrorCode.STREAM_RESET, `the peer reset stream ${id} (code ${code})`, { streamCode: code, byPeer: true });
}

function matchCode(err: unknown, re: RegExp): number | undefined {
  const m = err instanceof Error ? re.exec(err.message) : null;
  return m ? Number(m[1]) : undefined;
}

/** A QUIC bidirectional stream as a node Duplex. */
export class QuicheStream extends Duplex implements DirectStream {
  readonly id: number;
  readonly #owner: StreamHost;
  /** quiche's side of this stream: writes and write shutdowns (reads go through the owner, see readInto). */
  readonly #io: StreamIo;
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

  constructor(owner: StreamHost, io: StreamIo, id: number) {
    super({ allowHalfOpen: true, readableHighWaterMark: 256 * 1024, writableHighWaterMark: 256 * 1024 });
    this.#owner = owner;
    this.#io = io;
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
    const conn = this.#io;
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
    const conn = this.#io;
    const code = this.#resetCode || (err ? 1 : 0);
    if (!this.#owner.closed) {
      if (!this.#readEnded) this.#owner.stopReading(this.id, code);
      try {
        if (!this.#finSent) conn.streamShutdown(this.id, quicheBinding().Shutdown.Write, code);
      } catch {}
    }
    this.#owner.forget(this);
    this.#owner.flushSoon();
    cb(err);
  }
}
