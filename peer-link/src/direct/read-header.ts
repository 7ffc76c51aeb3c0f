/**
 * Reads one length-prefixed header (protocol/src/direct-open.ts) off the front of a Duplex and leaves the bytes
 * after it in the stream, paused, for whoever takes the stream next (a pipe resumes it).
 */
import type { Duplex } from 'node:stream';
import type { DirectHeaderReader } from '@narrowlink/protocol';

export class HeaderReadError extends Error {
  readonly reason: 'timeout' | 'ended' | 'invalid' | 'stream-error';
  constructor(reason: HeaderReadError['reason'], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HeaderReadError';
    this.reason = reason;
  }
}

export function readHeader<T>(stream: Duplex, reader: DirectHeaderReader<T>, timeoutMs: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const cleanup = (): void => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
      stream.off('close', onEnd);
    };
    const fail = (error: HeaderReadError): void => {
      cleanup();
      reject(error);
    };
    const onData = (chunk: Buffer): void => {
      let result: { value: T; rest: Buffer } | undefined;
      try {
        result = reader.push(chunk);
      } catch (error) {
        stream.pause();
        fail(new HeaderReadError('invalid', (error as Error).message, { cause: error }));
        return;
      }
      if (!result) return;
      stream.pause();
      cleanup();
      if (result.rest.length > 0) stream.unshift(result.rest);
      resolve(result.value);
    };
    const onEnd = (): void => fail(new HeaderReadError('ended', 'the stream ended before its header was complete'));
    const onError = (error: Error): void => fail(new HeaderReadError('stream-error', error.message, { cause: error }));
    const timer = setTimeout(() => fail(new HeaderReadError('timeout', `no complete header within ${timeoutMs} ms`)), timeoutMs);
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('close', onEnd);
    stream.once('error', onError);
  });
}
