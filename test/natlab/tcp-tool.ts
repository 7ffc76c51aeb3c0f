#!/usr/bin/env node
/**
 * TCP ends for the NAT lab, run inside a namespace (the test process cannot reach a namespace's 127.0.0.1).
 * Byte streams are the deterministic ones of test/helpers/tcp-fixtures.ts, so the test knows every sha256
 * without moving the bytes itself. One JSON line per event on stdout.
 *
 *   serve   --echo P --sink P --source P --source-bytes N [--source-seed S]
 *           echo, sink (replies with the sha256 hex of what it got) and source servers on 127.0.0.1;
 *           prints {"event":"ready"} and runs until SIGTERM.
 *   send    --port P --bytes N [--seed S] [--rate BYTES_PER_S] [--progress-every BYTES] [--timeout-ms N]
 *           [--retry-connect-ms N] (keep connecting while refused, for a listener started at the same time)
 *           writes the stream to 127.0.0.1:P, half-closes, reads the reply to its end; prints
 *           {"event":"progress","sent"} while writing and {"event":"done","sentSha256","replyHead","replySha256",...}
 *           or {"event":"error","message","sent"} (exit 1).
 *   receive --port P [--timeout-ms N]
 *           reads 127.0.0.1:P to its end; prints {"event":"done","bytes","sha256","ms"} or an error (exit 1).
 */
import { createHash } from 'node:crypto';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { deterministicSha256, startSinkServer, writeDeterministic } from '../helpers/tcp-fixtures.ts';

const print = (line: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify(line)}\n`);

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    echo: { type: 'string' },
    sink: { type: 'string' },
    source: { type: 'string' },
    'source-bytes': { type: 'string' },
    'source-seed': { type: 'string' },
    port: { type: 'string' },
    bytes: { type: 'string' },
    seed: { type: 'string' },
    rate: { type: 'string' },
    'progress-every': { type: 'string' },
    'timeout-ms': { type: 'string' },
    'retry-connect-ms': { type: 'string' },
  },
});
const num = (value: string | undefined, fallback: number): number => (value === undefined ? fallback : Number(value));

/** A server on 127.0.0.1:`port` (0: any); sockets are destroyed on close. */
function listen(port: number, onConnection: (socket: net.Socket) => void): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    // allowHalfOpen: the echo must still answer after the client's FIN.
    const server = net.createServer({ allowHalfOpen: true }, (socket) => {
      socket.on('error', () => {});
      onConnection(socket);
    });
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port }, () => resolve(server));
  });
}

async function serve(): Promise<void> {
  const sourceBytes = num(values['source-bytes'], 1024 * 1024);
  const sourceSeed = num(values['source-seed'], 1);
  const echo = await listen(num(values.echo, 0), (socket) => socket.pipe(socket));
  const source = await listen(num(values.source, 0), (socket) => {
    socket.resume();
    writeDeterministic(socket, sourceBytes, sourceSeed).then(
      () => socket.end(),
      () => socket.destroy(),
    );
  });
  const sink = await startSinkServer({ port: num(values.sink, 0) });
  const port = (s: net.Server): number => (s.address() as net.AddressInfo).port;
  print({ event: 'ready', echo: port(echo), sink: sink.port, source: port(source), sourceSha256: deterministicSha256(sourceBytes, sourceSeed) });
  process.once('SIGTERM', () => process.exit(0));
}

function connectOnce(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** Connects; with --retry-connect-ms keeps trying while nothing listens yet (started alongside the listener). */
async function connect(port: number): Promise<net.Socket> {
  const until = performance.now() + num(values['retry-connect-ms'], 0);
  for (;;) {
    try {
      return await connectOnce(port);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ECONNREFUSED' || performance.now() > until) throw error;
      await sleep(10);
    }
  }
}

/** Ends the process after `timeoutMs`, saying how far it got: a hang is a failure the test can read. */
function deadline(timeoutMs: number, state: () => Record<string, unknown>): void {
  setTimeout(() => {
    print({ event: 'error', message: `timed out after ${timeoutMs} ms`, timedOut: true, ...state() });
    process.exit(1);
  }, timeoutMs).unref();
}

async function send(): Promise<void> {
  const bytes = num(values.bytes, 1024 * 1024);
  const seed = num(values.seed, 1);
  const rate = num(values.rate, 0);
  const progressEvery = num(values['progress-every'], 0);
  const started = performance.now();
  let sent = 0;
  let received = 0;
  deadline(num(values['timeout-ms'], 60_000), () => ({ sent, received, ms: Math.round(performance.now() - started) }));
  const socket = await connect(num(values.port, 0));
  const sentHash = createHash('sha256');
  const replyHash = createHash('sha256');
  let head = Buffer.alloc(0);
  const ended = new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
      replyHash.update(chunk);
      if (head.length < 128) head = Buffer.concat([head, chunk.subarray(0, 128 - head.length)]);
    });
    socket.once('end', resolve);
    socket.once('error', reject);
    socket.once('close', () => reject(new Error('connection closed before the reply ended')));
  });
  ended.catch(() => {});
  let nextProgress = progressEvery;
  await writeDeterministic(
    socket,
    bytes,
    seed,
    (piece) => sentHash.update(piece),
    async (written) => {
      sent = written;
      if (progressEvery > 0 && sent >= nextProgress) {
        print({ event: 'progress', sent, ms: Math.round(performance.now() - started) });
        nextProgress += progressEvery;
      }
      // Paced sending: hold back until the clock catches up with the bytes written.
      if (rate > 0) {
        const aheadMs = (sent / rate) * 1000 - (performance.now() - started);
        if (aheadMs > 0) await sleep(aheadMs);
      }
    },
  );
  socket.end();
  await ended;
  socket.destroy();
  print({
    event: 'done',
    sent,
    sentSha256: sentHash.digest('hex'),
    replyBytes: received,
    replySha256: replyHash.digest('hex'),
    replyHead: head.toString('utf8'),
    ms: Math.round(performance.now() - started),
  });
}

async function receive(): Promise<void> {
  const started = performance.now();
  let bytes = 0;
  deadline(num(values['timeout-ms'], 60_000), () => ({ bytes, ms: Math.round(performance.now() - started) }));
  const socket = await connect(num(values.port, 0));
  const hash = createHash('sha256');
  await new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      hash.update(chunk);
    });
    socket.once('end', resolve);
    socket.once('error', reject);
    socket.once('close', () => reject(new Error('connection closed before the stream ended')));
  });
  socket.end();
  socket.destroy();
  print({ event: 'done', bytes, sha256: hash.digest('hex'), ms: Math.round(performance.now() - started) });
}

const commands: Record<string, () => Promise<void>> = { serve, send, receive };
const command = commands[positionals[0] ?? ''];
if (!command) {
  process.stderr.write('usage: tcp-tool.ts serve|send|receive [options] (see the header of this file)\n');
  process.exit(2);
}
command().then(
  () => {
    if (positionals[0] !== 'serve') process.exit(0);
  },
  (error: unknown) => {
    print({ event: 'error', message: (error as Error).message });
    process.exit(1);
  },
);
