/**
 * A node:stream Duplex over one MuxStream, so ordinary sockets can be piped through a session.
 * Writes wait for send credit; credit is granted back to the peer only as the reader consumes
 * what was pushed, so a consumer that stops reading stops the far sender within one window.
 */
import { Duplex } from 'node:stream';
import { StreamErrorCode, StreamResetError } from './errors.ts';
import type { MuxStream } from './mux.ts';

export class MuxDuplex extends Duplex {
  readonly stream: MuxStream;
  #pendingWrite: { data: Uint8Array; callback: (error?: Error | null) => void } | undefined;
  #pushed = 0;
  #credited = 0;
  #finalCallback: ((error?: Error | null) => void) | undefined;
  /** The reset that ended the stream, if it did not end cleanly. */
  resetReason: StreamResetError | undefined;

  constructor(stream: MuxStream, options: { highWaterMark?: number } = {}) {
    super({ allowHalfOpen: true, readableHighWaterMark: options.highWaterMark ?? 256 * 1024 });
    this.stream = stream;
    stream.handlers = {
      ...stream.handlers,
      onData: (data) => {
        this.#pushed += data.length;
        this.push(data);
        this.#grantConsumed();
      },
      onFin: () => this.push(null),
      onCredit: () => this.#flushPending(),
      onReset: (reset, local) => {
        this.resetReason = new StreamResetError(reset.code, reset.message);
        const pending = this.#pendingWrite;
        this.#pendingWrite = undefined;
        pending?.callback(this.resetReason);
        this.#finalCallback?.(this.resetReason);
        this.#finalCallback = undefined;
        // A reset we sent ourselves was already reported by whoever called reset().
        if (!local || !this.destroyed) this.destroy(this.resetReason);
      },
    };
  }

  #grantConsumed(): void {
    const consumed = this.#pushed - this.readableLength - this.#credited;
    if (consumed > 0) {
      this.#credited += consumed;
      this.stream.consumed(consumed);
    }
  }

  override _read(): void {
    this.#grantConsumed();
  }

  // Readable calls _read() before it takes the chunk out of the buffer, and not again until the
  // next push, so crediting only there never grants what was just read: once the window was
  // buffered, the peer would wait for credit forever. Credit after every read() instead.
  override read(size?: number): ReturnType<Duplex['read']> {
    const chunk: unknown = super.read(size);
    this.#grantConsumed();
    return chunk;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.stream.state === 'closed') {
      callback(this.resetReason ?? new StreamResetError(StreamErrorCode.CANCELLED, 'stream is closed'));
      return;
    }
    this.#pendingWrite = { data: chunk, callback };
    this.#flushPending();
  }

  #flushPending(): void {
    const pending = this.#pendingWrite;
    if (!pending) return;
    const sent = this.stream.write(pending.data);
    if (sent === pending.data.length) {
      this.#pendingWrite = undefined;
      pending.callback();
    } else {
      pending.data = pending.data.subarray(sent);
    }
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.stream.fin();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.stream.state !== 'closed') {
      // Closed early with no error: treat as cancellation so the far end is not left waiting.
      const code = error instanceof StreamResetError ? error.streamCode : StreamErrorCode.CANCELLED;
      this.stream.reset(code, error ? error.message : 'closed by the local side');
    }
    callback(error);
  }
}
