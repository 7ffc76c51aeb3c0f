/**
 * Direct-path (QUIC over our quiche packet loop) throughput on loopback, between two processes
 * (test/bench/direct-peer.ts source → sink), plus CPU per MB on each side. Functions return numbers and never
 * print; run this file directly for a table:
 *
 *   node test/bench/direct.ts [--mib N] [--rounds N] [--payload 1350|1452]
 *
 * MB = 10^6 bytes. Time and CPU run from the first stream open to the last sink reply (the handshake and
 * process start-up are not counted). The sink counts bytes (no hashing: the unit tests verify content).
 * NL_BENCH_CPU_PROF_DIR=DIR writes a V8 CPU profile of each side there.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { registerChild } from '../helpers/processes.ts';

const PEER = fileURLToPath(new URL('./direct-peer.ts', import.meta.url));
const MIB = 1024 * 1024;

export interface DirectThroughput {
  bytes: number;
  streams: number;
  ms: number;
  /** Aggregate payload throughput, MB/s (10^6 bytes per second). */
  mbPerSec: number;
  /** CPU (user + system) per MB of payload, ms, in the sending and in the receiving process. */
  cpuMsPerMbSource: number;
  cpuMsPerMbSink: number;
  /** Packets the sender's QUIC stack declared lost. */
  lost: number;
}

export interface MeasureDirectOptions {
  /** Total payload over all streams. */
  bytes: number;
  /** Concurrent streams; the payload is split evenly. Default 1. */
  streams?: number;
  /** Largest UDP payload QUIC sends; default 1350. */
  payloadBytes?: number;
}

interface Peer {
  child: ChildProcess;
  next(event: string, timeoutMs: number): Promise<Record<string, unknown>>;
}

function startPeer(args: string[]): Peer {
  const child = spawn(process.execPath, [...(process.env.NL_BENCH_CPU_PROF_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.NL_BENCH_CPU_PROF_DIR}`] : []), PEER, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
  registerChild(child);
  const lines: Record<string, unknown>[] = [];
  const waiters: Array<() => void> = [];
  let buffered = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    buffered += chunk.toString('utf8');
    for (let nl = buffered.indexOf('\n'); nl !== -1; nl = buffered.indexOf('\n')) {
      const text = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      try {
        lines.push(JSON.parse(text) as Record<string, unknown>);
      } catch {
        lines.push({ event: 'text', text });
      }
      for (const w of waiters.splice(0)) w();
    }
  });
  child.once('exit', () => {
    for (const w of waiters.splice(0)) w();
  });
  const next = (event: string, timeoutMs: number): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`direct-peer ${args[0]}: no "${event}" line in ${timeoutMs} ms`)), timeoutMs);
      const check = (): void => {
        const found = lines.find((l) => l.event === event || l.event === 'error');
        if (found) {
          clearTimeout(timer);
          if (found.event === 'error') reject(new Error(`direct-peer ${args[0]}: ${String(found.message)}`));
          else resolve(found);
        } else if (child.exitCode !== null || child.signalCode !== null) {
          clearTimeout(timer);
          reject(new Error(`direct-peer ${args[0]} exited before "${event}"`));
        } else waiters.push(check);
      };
      check();
    });
  return { child, next };
}

/** One timed transfer from a source process to a sink process over a direct QUIC connection on loopback. */
export async function measureDirect(options: MeasureDirectOptions): Promise<DirectThroughput> {
  const streams = options.streams ?? 1;
  const payload = String(options.payloadBytes ?? 1350);
  const source = startPeer(['source', '--payload', payload]);
  let sink: Peer | undefined;
  try {
    const sourceReady = await source.next('ready', 15_000);
    sink = startPeer(['sink', '--expect', String(sourceReady.fingerprint), '--payload', payload]);
    const sinkReady = await sink.next('ready', 15_000);
    source.child.stdin?.end(`${JSON.stringify({ port: sinkReady.port, fingerprint: sinkReady.fingerprint, bytes: options.bytes, streams })}\n`);
    const timeoutMs = 30_000 + options.bytes / 1e4; // ≥ 10 MB/s or something is broken
    const done = await source.next('done', timeoutMs);
    const sinkDone = await sink.next('done', 10_000);
    const bytes = Number(done.bytes);
    const mb = bytes / 1e6;
    return {
      bytes,
      streams,
      ms: Number(done.ms),
      mbPerSec: Number(done.mbPerSec),
      cpuMsPerMbSource: Number(done.cpuMs) / mb,
      cpuMsPerMbSink: Number(sinkDone.cpuMs) / mb,
      lost: Number((done.stats as { lost?: number } | undefined)?.lost ?? 0),
    };
  } finally {
    await Promise.all([source, sink].map((p) => (p ? reap(p.child) : undefined)));
  }
}

/** Waits briefly for a child that is finishing by itself, then kills it. */
async function reap(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(timer);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { mib: { type: 'string' }, rounds: { type: 'string' }, payload: { type: 'string' } } });
  const bytes = Number(values.mib ?? 256) * MIB;
  const rounds = Number(values.rounds ?? 3);
  const payloads = values.payload ? [Number(values.payload)] : [1350, 1452];
  const rows: string[][] = [];
  for (const payloadBytes of payloads) {
    for (const streams of [1, 16]) {
      const runs: DirectThroughput[] = [];
      for (let i = 0; i < rounds; i++) runs.push(await measureDirect({ bytes, streams, payloadBytes }));
      const m = (f: (r: DirectThroughput) => number): string => median(runs.map(f)).toFixed(2);
      rows.push([
        `direct, ${streams} stream${streams > 1 ? 's' : ''}, UDP payload ${payloadBytes}`,
        m((r) => r.mbPerSec),
        m((r) => r.cpuMsPerMbSource),
        m((r) => r.cpuMsPerMbSink),
        runs.map((r) => r.mbPerSec.toFixed(0)).join(' / '),
        String(Math.max(...runs.map((r) => r.lost))),
      ]);
    }
  }
  const header = ['path', 'MB/s (median)', 'CPU ms/MB source', 'CPU ms/MB sink', 'runs MB/s', 'max lost pkts'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const fmt = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i] as number)).join(' | ');
  process.stdout.write(`${bytes / MIB} MiB per run, ${rounds} rounds, loopback, two processes\n${fmt(header)}\n${widths.map((w) => '-'.repeat(w)).join('-|-')}\n`);
  for (const r of rows) process.stdout.write(`${fmt(r)}\n`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
