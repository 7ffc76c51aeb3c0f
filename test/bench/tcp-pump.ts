/**
 * Stand-alone TCP traffic endpoints for benchmarks, so sender and receiver each get their own process
 * (and event loop) instead of sharing one with the system under test. Output is one JSON object per line.
 *
 *   node test/bench/tcp-pump.ts sink [--port N] [--no-hash]
 *     Listens on 127.0.0.1 (default random port) and prints {"event":"ready","port":N}. Each connection is
 *     read to its FIN, answered with the sha256 hex of what arrived (or, with --no-hash, the byte count in
 *     decimal) and closed; prints {"event":"received","bytes","sha256","ms"}. Runs until SIGTERM/SIGINT.
 *
 *   node test/bench/tcp-pump.ts source PORT BYTES [--seed S] [--streams N] [--no-verify]
 *     Opens N (default 1) concurrent connections to 127.0.0.1:PORT; connection i writes BYTES bytes of the
 *     deterministic stream with seed S+i (default S=1), half-closes and reads the sink's reply. Expected
 *     hashes are computed before the clock starts. Prints
 *     {"event":"done","bytes","streams","ms","mbPerSec","verified"} (bytes = total over all streams,
 *     MB = 10^6 bytes, ms from first connect to last reply) and exits 0; on any failure prints
 *     {"event":"error","message"} and exits 1.
 */
import net from 'node:net';
import { deterministicSha256, startSinkServer, writeDeterministic } from '../helpers/tcp-fixtures.ts';

function print(value: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

function fail(message: string): never {
  print({ event: 'error', message });
  process.exit(1);
}

function flagValue(args: string[], flag: string): string | undefined {
  const index = args.indexOf(flag);
  return index === -1 ? undefined : args[index + 1];
}

function integerArg(value: string | undefined, what: string, fallback?: number): number {
  if (value === undefined) {
    if (fallback !== undefined) return fallback;
    fail(`missing ${what}`);
  }
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) fail(`${what} must be a non-negative integer, got ${value}`);
  return n;
}

async function runSink(args: string[]): Promise<void> {
  const sink = await startSinkServer({
    port: integerArg(flagValue(args, '--port'), '--port', 0),
    hash: !args.includes('--no-hash'),
    onResult: (result) => print({ event: 'received', ...result }),
  });
  print({ event: 'ready', port: sink.port });
  const shutdown = (): void => {
    sink.close().then(() => process.exit(0));
  };
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);
}

/** Push one stream and return the sink's reply text. */
async function pushOnce(port: number, bytes: number, seed: number): Promise<string> {
  const socket = net.connect({ host: '127.0.0.1', port });
  const reply: Buffer[] = [];
  const finished = new Promise<string>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => reply.push(chunk));
    socket.once('end', () => resolve(Buffer.concat(reply).toString('utf8')));
    socket.once('error', reject);
    socket.once('close', () => reject(new Error('connection closed before the reply ended')));
  });
  finished.catch(() => {});
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  await writeDeterministic(socket, bytes, seed);
  socket.end();
  const text = await finished;
  socket.destroy();
  return text;
}

async function runSource(args: string[]): Promise<void> {
  const port = integerArg(args[0], 'PORT');
  const bytes = integerArg(args[1], 'BYTES');
  const seed = integerArg(flagValue(args, '--seed'), '--seed', 1);
  const streams = Math.max(1, integerArg(flagValue(args, '--streams'), '--streams', 1));
  const verify = !args.includes('--no-verify');
  const seeds = Array.from({ length: streams }, (_unused, i) => seed + i);
  const expected = verify ? seeds.map((s) => deterministicSha256(bytes, s)) : [];

  const started = performance.now();
  const replies = await Promise.all(seeds.map((s) => pushOnce(port, bytes, s)));
  const ms = performance.now() - started;

  let verified = true;
  for (const [i, reply] of replies.entries()) {
    if (/^[0-9a-f]{64}$/.test(reply)) {
      if (!verify) verified = false;
      else if (reply !== expected[i]) fail(`stream ${i}: sink sha256 ${reply} != sent ${expected[i]}`);
    } else if (/^[0-9]+$/.test(reply)) {
      if (Number(reply) !== bytes) fail(`stream ${i}: sink received ${reply} bytes, sent ${bytes}`);
      // A byte count proves length only, not content.
      verified = false;
    } else {
      fail(`stream ${i}: unexpected sink reply ${JSON.stringify(reply.slice(0, 80))}`);
    }
  }
  const total = bytes * streams;
  print({ event: 'done', bytes: total, streams, ms, mbPerSec: total / 1e6 / (ms / 1000), verified });
}

const [mode, ...rest] = process.argv.slice(2);
try {
  if (mode === 'sink') await runSink(rest);
  else if (mode === 'source') await runSource(rest);
  else fail(`usage: tcp-pump.ts sink [--port N] [--no-hash] | source PORT BYTES [--seed S] [--streams N] [--no-verify]`);
} catch (err) {
  fail((err as Error).message);
}
