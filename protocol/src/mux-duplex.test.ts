import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, test } from 'node:test';
import { setImmediate as tick } from 'node:timers/promises';
import { StreamErrorCode, StreamResetError } from './errors.ts';
import type { OpenPayload } from './messages.ts';
import { Mux, type MuxOptions, type MuxStream } from './mux.ts';
import { MuxDuplex } from './mux-duplex.ts';

const target: OpenPayload = { agent: 'db', port: 5432 };

/**
 * Two muxes back to back; frames are delivered in order on a later turn of the event loop
 * (setImmediate), like a transport would.
 */
function pair(options: { window?: number; maxDataFrame?: number; highWaterMark?: number } = {}) {
  const queue: { to: Mux; bytes: Buffer }[] = [];
  let scheduled = false;
  const drain = () => {
    scheduled = false;
    while (queue.length > 0) {
      const next = queue.shift() as { to: Mux; bytes: Buffer };
      next.to.receive(next.bytes);
    }
  };
  const enqueue = (to: () => Mux) => (bytes: Buffer) => {
    queue.push({ to: to(), bytes });
    if (!scheduled) {
      scheduled = true;
      setImmediate(drain);
    }
  };
  const common: Partial<MuxOptions> = {
    ...(options.window === undefined ? {} : { localWindow: options.window, peerWindow: options.window }),
    ...(options.maxDataFrame === undefined ? {} : { maxDataFrame: options.maxDataFrame }),
  };
  const serverStreams: MuxDuplex[] = [];
  const waiting: ((d: MuxDuplex) => void)[] = [];
  const initiator: Mux = new Mux({ role: 'initiator', send: enqueue(() => acceptor), ...common });
  const acceptor: Mux = new Mux({
    role: 'acceptor',
    send: enqueue(() => initiator),
    ...common,
    handlers: {
      onOpen: (stream: MuxStream) => {
        stream.accept();
        const duplex = new MuxDuplex(stream, options.highWaterMark === undefined ? {} : { highWaterMark: options.highWaterMark });
        const waiter = waiting.shift();
        if (waiter) waiter(duplex);
        else serverStreams.push(duplex);
      },
    },
  });
  /** Opens a stream and resolves with both Duplex ends once the acceptor has seen it. */
  async function connect(): Promise<{ client: MuxDuplex; server: MuxDuplex }> {
    const client = new MuxDuplex(initiator.open(target), options.highWaterMark === undefined ? {} : { highWaterMark: options.highWaterMark });
    const server = serverStreams.shift() ?? (await new Promise<MuxDuplex>((resolve) => waiting.push(resolve)));
    return { client, server };
  }
  /** Waits until no frame is in flight for a few turns of the event loop. */
  async function settle(): Promise<void> {
    for (let quiet = 0; quiet < 5; ) {
      await tick();
      quiet = queue.length === 0 && !scheduled ? quiet + 1 : 0;
    }
  }
  return { initiator, acceptor, connect, settle };
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A sink that hashes what it receives. */
function hashingSink() {
  const hash = createHash('sha256');
  const sink = Object.assign(
    new Writable({
      write(chunk: Buffer, _encoding, callback) {
        hash.update(chunk);
        sink.bytes += chunk.length;
        callback();
      },
    }),
    { bytes: 0, digest: () => hash.digest('hex') },
  );
  return sink;
}

/** Yields `data` in chunks of varying sizes. */
function* chunks(data: Buffer): Generator<Buffer> {
  const sizes = [1, 7, 1000, 16_384, 65_536, 300_000, 4096];
  let offset = 0;
  for (let i = 0; offset < data.length; i++) {
    const n = sizes[i % sizes.length] as number;
    yield data.subarray(offset, offset + n);
    offset += n;
  }
}

async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

describe('MuxDuplex', () => {
  for (const window of [undefined, 64 * 1024]) {
    test(`pipes 8 MiB intact one way (${window === undefined ? 'default window' : `${window / 1024} KiB window`})`, async () => {
      const p = pair(window === undefined ? {} : { window });
      const { client, server } = await p.connect();
      const data = randomBytes(8 * 1024 * 1024);
      const sink = hashingSink();
      await Promise.all([pipeline(Readable.from(chunks(data)), client), pipeline(server, sink)]);
      assert.equal(sink.bytes, data.length);
      assert.equal(sink.digest(), sha256(data));
      assert.equal(client.stream.bytesOut, data.length);
      await p.settle();
      assert.equal(p.initiator.streamCount, 1, 'the server has not ended its side yet');
      server.end();
      await p.settle();
      assert.equal(p.initiator.streamCount + p.acceptor.streamCount, 0);
    });
  }

  test('a consumer that pauses and then reads with read() still gets everything', async () => {
    const window = 64 * 1024;
    const p = pair({ window, highWaterMark: 16 * 1024 });
    const { client, server } = await p.connect();
    const data = randomBytes(1024 * 1024);
    const writing = pipeline(Readable.from(chunks(data)), client);
    const parts: Buffer[] = [];
    let ended = false;
    server.on('end', () => {
      ended = true;
    });
    // Pull with read() on 'readable' only every few turns, so data piles up in the buffer first.
    while (!ended) {
      await tick();
      await tick();
      for (let chunk = server.read() as Buffer | null; chunk !== null; chunk = server.read() as Buffer | null) parts.push(chunk);
      if (!ended && server.readableLength === 0) {
        await new Promise<void>((resolve) => {
          const done = () => {
            server.off('readable', done);
            server.off('end', done);
            resolve();
          };
          server.on('readable', done);
          server.on('end', done);
        });
      }
    }
    await writing;
    const received = Buffer.concat(parts);
    assert.equal(received.length, data.length);
    assert.equal(sha256(received), sha256(data));
  });

  test('half-close: after one side ends, the other still writes back', async () => {
    const p = pair();
    const { client, server } = await p.connect();
    client.end(Buffer.from('request'));
    const request = await readAll(server);
    assert.equal(request.toString(), 'request');
    assert.equal(server.writable, true, 'the server can still answer');
    const response = readAll(client);
    server.end(Buffer.from('response'));
    assert.equal((await response).toString(), 'response');
    await p.settle();
    assert.equal(client.resetReason, undefined);
    assert.equal(server.resetReason, undefined);
    assert.equal(p.initiator.streamCount + p.acceptor.streamCount, 0);
  });

  test('a reader that never reads stops the writer within window + highWaterMark', async () => {
    const window = 64 * 1024;
    const highWaterMark = 16 * 1024;
    const maxDataFrame = 16 * 1024;
    const p = pair({ window, highWaterMark, maxDataFrame });
    const { client, server } = await p.connect();
    const data = randomBytes(2 * 1024 * 1024);
    let offered = 0;
    const writing = pipeline(
      Readable.from(
        (function* () {
          for (const chunk of chunks(data)) {
            offered += chunk.length;
            yield chunk;
          }
        })(),
      ),
      client,
    );
    await p.settle();
    const sent = client.stream.bytesOut;
    assert.ok(sent <= window + highWaterMark + maxDataFrame, `writer sent ${sent} bytes`);
    assert.ok(sent > 0);
    assert.ok(offered < data.length, 'backpressure reached the source');
    assert.equal(server.readableLength, sent, 'everything sent sits in the reader, nothing was lost');
    // Still stuck after more turns of the event loop.
    await p.settle();
    assert.equal(client.stream.bytesOut, sent);

    // Once the reader reads, everything arrives.
    const received = await readAll(server);
    await writing;
    assert.equal(received.length, data.length);
    assert.equal(sha256(received), sha256(data));
  });

  test('destroy() on one side errors the other with a CANCELLED reset', async () => {
    const p = pair();
    const { client, server } = await p.connect();
    server.resume();
    const errored = once(server, 'error');
    let clientError: unknown;
    client.on('error', (err) => {
      clientError = err;
    });
    client.write(Buffer.from('some bytes first'));
    await p.settle();
    client.destroy();
    const [err] = (await errored) as [unknown];
    assert.ok(err instanceof StreamResetError);
    assert.equal(err.streamCode, StreamErrorCode.CANCELLED);
    assert.equal(err.code, 'NL_ERR_STREAM_CANCELLED');
    assert.equal(server.resetReason?.streamCode, StreamErrorCode.CANCELLED);
    assert.equal(server.destroyed, true);
    await p.settle();
    assert.equal(clientError, undefined, 'the side that destroyed sees no error');
    assert.equal(p.initiator.streamCount + p.acceptor.streamCount, 0);
  });

  test('destroy(err) with a StreamResetError sends that code', async () => {
    const p = pair();
    const { client, server } = await p.connect();
    client.resume();
    const errored = once(client, 'error');
    server.on('error', () => {}); // the destroying side emits its own error, as any stream does
    server.destroy(new StreamResetError(StreamErrorCode.DIAL_FAILED, 'connection refused'));
    const [err] = (await errored) as [unknown];
    assert.ok(err instanceof StreamResetError);
    assert.equal(err.streamCode, StreamErrorCode.DIAL_FAILED);
  });

  test('a write waiting for credit fails with the reset when the peer resets', async () => {
    const window = 64 * 1024;
    const p = pair({ window });
    const { client, server } = await p.connect();
    const clientErrors: unknown[] = [];
    client.on('error', (err) => clientErrors.push(err));
    const writeResult = new Promise<Error | null | undefined>((resolve) => {
      client.write(Buffer.alloc(4 * window), (err) => resolve(err));
    });
    await p.settle();
    assert.equal(client.stream.bytesOut, window, 'the write is parked waiting for credit');
    server.destroy();
    const err = await writeResult;
    assert.ok(err instanceof StreamResetError);
    assert.equal(err.streamCode, StreamErrorCode.CANCELLED);
    await p.settle();
    assert.equal(client.destroyed, true);
    assert.equal(client.resetReason?.streamCode, StreamErrorCode.CANCELLED);
    assert.ok(clientErrors.every((e) => e instanceof StreamResetError));
    assert.equal(p.initiator.streamCount + p.acceptor.streamCount, 0);
  });
});
