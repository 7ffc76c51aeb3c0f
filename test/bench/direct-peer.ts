/**
 * One side of the direct-path benchmark (test/bench/direct.ts), in its own process so each side has its own
 * event loop and CPU account. Output is one JSON object per line on stdout.
 *
 *   node test/bench/direct-peer.ts sink --expect FINGERPRINT [--payload N] [--worker]
 *     Binds a QUIC endpoint on 127.0.0.1 (random port), prints {"event":"ready","port","fingerprint"}, accepts
 *     one connection from the peer with that fingerprint, reads every stream to its FIN and answers with the
 *     byte count (8 bytes, big-endian) and a FIN. When the peer closes, prints {"event":"done","bytes","cpuMs"}
 *     (CPU from accept to close) and exits.
 *
 *   node test/bench/direct-peer.ts source [--payload N]
 *     Binds, prints {"event":"ready","fingerprint"}, then reads one JSON line on stdin:
 *     {"port","fingerprint","bytes","streams"}. Connects, writes bytes/streams on each of `streams` concurrent
 *     streams, waits for every reply, prints {"event":"done","bytes","streams","ms","mbPerSec","cpuMs","stats"}
 *     (MB = 10^6 bytes; ms and CPU from the first stream open to the last reply) and exits.
 */
import { createInterface } from 'node:readline';
import { type DirectStream, generateIdentity, QuicheEndpoint } from '@narrowlink/peer-link';

const MIB = 1024 * 1024;

function print(value: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i === -1 ? undefined : args[i + 1];
}

function cpuMsSince(start: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(start);
  return (d.user + d.system) / 1000;
}

async function readAll(stream: DirectStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

async function sink(args: string[]): Promise<void> {
  const expect = flag(args, '--expect');
  if (!expect) throw new Error('sink needs --expect FINGERPRINT');
  const identity = await generateIdentity();
  const endpoint = await QuicheEndpoint.bind({ identity, host: '127.0.0.1', maxUdpPayloadBytes: Number(flag(args, '--payload') ?? 1350) });
  print({ event: 'ready', port: endpoint.port, fingerprint: identity.fingerprint });
  const conn = await endpoint.accept({ expectedFingerprint: expect, timeoutMs: 15_000 });
  const cpu = process.cpuUsage();
  let bytes = 0;
  conn.onStream((stream) => {
    let n = 0;
    stream.on('data', (chunk: Buffer) => {
      n += chunk.length;
    });
    stream.on('end', () => {
      bytes += n;
      const reply = Buffer.alloc(8);
      reply.writeBigUInt64BE(BigInt(n));
      stream.end(reply);
    });
    stream.on('error', () => {});
  });
  await new Promise((resolve) => conn.once('closed', resolve));
  print({ event: 'done', bytes, cpuMs: cpuMsSince(cpu) });
  await endpoint.close();
}

async function source(args: string[]): Promise<void> {
  const identity = await generateIdentity();
  const endpoint = await QuicheEndpoint.bind({ identity, host: '127.0.0.1', maxUdpPayloadBytes: Number(flag(args, '--payload') ?? 1350) });
  print({ event: 'ready', fingerprint: identity.fingerprint });
  const lines = createInterface({ input: process.stdin });
  const [line] = await lines[Symbol.asyncIterator]().next().then((r) => [r.value as string]);
  lines.close();
  const plan = JSON.parse(line as string) as { port: number; fingerprint: string; bytes: number; streams: number };
  const conn = await endpoint.connect({ address: '127.0.0.1', port: plan.port, expectedFingerprint: plan.fingerprint, timeoutMs: 10_000 });
  const perStream = Math.floor(plan.bytes / plan.streams);
  const block = Buffer.alloc(MIB, 0x5a);
  const cpu = process.cpuUsage();
  const started = performance.now();
  const counts = await Promise.all(
    Array.from({ length: plan.streams }, async () => {
      const stream = await conn.openStream();
      const reply = readAll(stream);
      for (let sent = 0; sent < perStream; sent += MIB) {
        const piece = perStream - sent >= MIB ? block : block.subarray(0, perStream - sent);
        if (!stream.write(piece)) await new Promise((resolve) => stream.once('drain', resolve));
      }
      stream.end();
      return Number((await reply).readBigUInt64BE(0));
    }),
  );
  const ms = performance.now() - started;
  const cpuMs = cpuMsSince(cpu);
  const total = counts.reduce((a, b) => a + b, 0);
  if (total !== perStream * plan.streams) throw new Error(`sink counted ${total} bytes, sent ${perStream * plan.streams}`);
  const stats = conn.stats();
  await conn.close();
  print({ event: 'done', bytes: total, streams: plan.streams, ms, mbPerSec: total / 1e6 / (ms / 1000), cpuMs, stats });
  await endpoint.close();
}

const [mode, ...rest] = process.argv.slice(2);
try {
  if (mode === 'sink') await sink(rest);
  else if (mode === 'source') await source(rest);
  else throw new Error('usage: direct-peer.ts sink --expect FP | source');
} catch (err) {
  print({ event: 'error', message: err instanceof Error ? err.message : String(err) });
  process.exit(1);
}
