#!/usr/bin/env node
/**
 * The abuse soak of issue 10: well-behaved clients keep streaming through a real gateway and agent while hostile
 * sessions do what a holder of a valid client token can do to a shared gateway. Reports how the victims' stream
 * opens fare and how far the gateway's memory grows.
 *
 *   node test/bench/abuse-soak.ts [--json] [--seconds N] [--victims N] [--abusers N] [--no-tls]
 *                                 [--hog-streams N] [--victim-pause-ms N] [--rss-cap-mib N]
 *                                 [--classes hold,hog,flood,opens] [--source]
 *
 * The gateway and agent run what ships (the dist/server bundles, built first, with their Node options); `--source`
 * runs the TypeScript entry points instead.
 *
 * Processes (all on loopback): the gateway (`--nat-probe-port 0`, admin listener on port 0, so it clashes with
 * no other stack) and one agent, both real; this process samples the gateway's and the agent's RSS from /proc every
 * 250 ms and starts three children of this same file:
 *
 *   targets  an echo server and an endless source (writes as fast as it is read), the agent's two exposed ports
 *   victims  `--victims` (200) GatewayLink client sessions, each its own identity, each looping: OPEN to the
 *            echo port (timed OPEN → OPEN_OK), 16 KiB echoed back, FIN, a pause of ~`--victim-pause-ms`.
 *   abusers  `--abusers` (20) raw WebSocket sessions speaking the frame codec directly, each its own identity,
 *            round-robin over issue 10's classes 1–4:
 *              1 hold   opens streams to the echo port until refused, holds them idle, retries once a second
 *              2 hog    hello with the largest window (64 MiB), `--hog-streams` (16) streams to the endless
 *                       source, then stops reading its socket (pings every 2 s, as a heartbeat would)
 *              3 flood  stops reading right after hello and sends as fast as its own socket drains: PINGs,
 *                       OPENs the gateway refuses (no such agent), or list_agents (by session)
 *              4 opens  OPEN + RESET to the echo port as fast as its socket drains (reads and answers PINGs)
 *            A closed session reconnects after 200 ms, as a hostile client would. The child runs at nice 10:
 *            on a 2-core machine its own CPU would otherwise be what slows the victims, which a remote attacker's
 *            would not.
 *
 * Timeline: victims connect, 3 s warm-up, `abuse_baseline_*` over 5 s (opens that ended before the abuse), then the
 * abusers start and `abuse_victim_*` covers `--seconds` (30) of abuse (every other open that started before it
 * ended; the abusers keep going until those settled). The percentiles count a failed open as the 10 s open
 * timeout: a refusal in 2 ms has not served the victim. `abuse_gateway_rss_mib` is the peak VmRSS of the gateway process during the abuse (the
 * victims' and abusers' memory is in their own processes). Targets (issue 10): victims' open p99 ≤ 50 ms,
 * gateway RSS ≤ 256 MiB; printed next to the numbers, never enforced. When the gateway's RSS passes
 * `--rss-cap-mib` (2048) the abuse stops early (`abuse_rss_capped: true`) so a gateway without memory bounds
 * cannot take the shared machine down; every wait has a deadline and every process is stopped at the end.
 */
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { GatewayLink } from '@narrowlink/peer-link';
import {
  type ClientOpen,
  DEFAULT_MAX_FRAME_PAYLOAD,
  decodeFrame,
  encodeFrame,
  FRAME_HEADER_BYTES,
  type Frame,
  type MuxStream,
  PEER_CONTROL_LIMITS,
  PROTOCOL_VERSION,
  StreamErrorCode,
} from '@narrowlink/protocol';
import { WebSocket } from 'ws';
import { buildServer } from '../../scripts/build-server.ts';
import { parseMetrics, startStack, type Stack } from '../e2e/stack.ts';
import { startEndlessSource } from '../helpers/endless-source.ts';
import { type LogLine, type StartedProcess, startProcess } from '../helpers/processes.ts';
import { startEchoServer } from '../helpers/tcp-fixtures.ts';

const SELF = fileURLToPath(import.meta.url);
const MIB = 1024 * 1024;
/** The largest per-stream window a hello may ask for (protocol/src/messages.ts). */
const LARGEST_HELLO_WINDOW = 64 * MIB;
const OPEN_TIMEOUT_MS = 10_000;
const ECHO_TIMEOUT_MS = 10_000;
const ECHO_BYTES = 16 * 1024;
const RSS_SAMPLE_MS = 250;
const WARMUP_MS = 3000;
const BASELINE_MS = 5000;
/** A flooding abuser stops writing while this much of its own output is still queued (its memory, not the gateway's). */
const ABUSER_QUEUE_BYTES = 512 * 1024;
const ABUSER_RECONNECT_MS = 200;

/** Options of {@link measureAbuseSoak}. */
export interface AbuseSoakOptions {
  /** Seconds of abuse (default 30). */
  seconds?: number;
  /** Well-behaved client sessions (default 200). */
  victims?: number;
  /** Abusive sessions, spread round-robin over classes 1–4 (default 20). */
  abusers?: number;
  /** Serve wss:// (default true; the chart requires TLS off loopback). */
  tls?: boolean;
  /** Streams each class-2 session opens to the endless source (default 16). */
  hogStreams?: number;
  /** Mean pause between one victim's streams, ms (default 500; each pause is 0.5–1.5 × this). */
  victimPauseMs?: number;
  /** End the abuse early once the gateway's RSS passes this, MiB (default 2048). */
  rssCapMib?: number;
  /** Which abuse classes the abusers spread over (default all four): to see one class's effect alone. */
  classes?: AbuseClass[];
  /**
   * What the gateway and agent run: `bundle` (default) the shipped dist/server bundles with their Node options,
   * built first unless `build` is false; `source` the TypeScript entry points.
   */
  from?: 'bundle' | 'source';
  /** With `bundle`: build dist/server first (default true). */
  build?: boolean;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

/** What one abuse class did, summed over its sessions (from the abusers' child). */
export interface AbuseClassStats {
  sessions: number;
  connects: number;
  /** Sessions the gateway refused at the upgrade or that never got hello_ok. */
  connectFailures: number;
  /** WebSocket close codes of ended sessions, with counts. */
  closes: Record<string, number>;
  framesSent: number;
  opensOk: number;
  /** RESET codes of this class's OPENs, with counts. */
  refusals: Record<string, number>;
  /** Class 1: streams held now / at most (sum over sessions). */
  held: number;
  heldMax: number;
}

/** The soak's report; the keys are those `npm run bench -- --json` prints. */
export interface AbuseSoakResult {
  abuse_victims: number;
  abuse_abusers: number;
  /** Seconds the abuse actually ran (shorter than asked when the RSS cap or a gateway exit ended it). */
  abuse_seconds: number;
  /** Victims' OPEN → OPEN_OK before the abuse (opens that ended before it began), ms; see `abuse_victim_p99_open_ms`. */
  abuse_baseline_p50_open_ms: number | null;
  abuse_baseline_p99_open_ms: number | null;
  abuse_baseline_opens: number;
  abuse_baseline_open_failures: number;
  abuse_victim_p50_open_ms: number | null;
  /**
   * p99 of the victims' OPEN → OPEN_OK over every open the abuse overlapped, ms; a failed open counts as the 10 s
   * open timeout (so under 1 % may fail for the p99 to meet a target). Null when there was no open at all.
   */
  abuse_victim_p99_open_ms: number | null;
  abuse_victim_max_open_ms: number | null;
  /** Victims' opens that succeeded during the abuse. */
  abuse_victim_opens: number;
  /** Victims' opens that failed (reset, refused or timed out) during the abuse. */
  abuse_victim_open_failures: number;
  /** RESET / link error codes of the victims' failed opens during the abuse, with counts. */
  abuse_victim_failure_codes: Record<string, number>;
  /** Opened streams whose 16 KiB echo did not come back within 10 s (during the abuse). */
  abuse_victim_transfer_failures: number;
  /** Victim sessions that dropped (and reconnected) at any time. */
  abuse_victim_session_drops: number;
  /** Gateway RSS with the agent attached, before any victim connected. */
  abuse_gateway_rss_idle_mib: number;
  abuse_gateway_rss_baseline_mib: number;
  abuse_gateway_rss_mib: number;
  abuse_agent_rss_mib: number;
  /** Gateway CPU during the abuse, % of one core (null when the gateway exited). */
  abuse_gateway_cpu_percent: number | null;
  /** The agent's CPU during the abuse, % of one core (null when it exited): the dials and bytes the abuse costs it. */
  abuse_agent_cpu_percent: number | null;
  /**
   * Peaks of the gateway's own accounting during the abuse, MiB (from /metrics every second; null when this gateway
   * has no such gauge): `narrowlink_gateway_buffered_bytes` and `narrowlink_gateway_relay_queued_bytes`. Next to
   * the RSS they show whether the metric sees what the memory holds.
   */
  abuse_gateway_buffered_mib: number | null;
  abuse_gateway_relay_queued_mib: number | null;
  /**
   * Where the RSS is, by the gateway's default Node metrics (peaks, MiB): V8 heap used and reserved, and memory
   * outside the heap (Buffers: socket and WebSocket data).
   */
  abuse_gateway_heap_used_mib: number | null;
  abuse_gateway_heap_total_mib: number | null;
  abuse_gateway_external_mib: number | null;
  /** How much each of the gateway's refusal / close counters grew during the abuse (absent counters left out). */
  abuse_gateway_counters: Record<string, number>;
  abuse_rss_capped: boolean;
  /** Exit code (or signal name) when the gateway died during the soak, else null. */
  abuse_gateway_exited: string | null;
  abuse_abuser_stats: Record<AbuseClass, AbuseClassStats>;
}

/** Issue 10's classes 1–4 in order: idle streams held, windows not read, control floods, OPEN floods. */
export type AbuseClass = 'hold' | 'hog' | 'flood' | 'opens';
const ABUSE_CLASSES: readonly AbuseClass[] = ['hold', 'hog', 'flood', 'opens'];

/** What the children read from their spec file (written 0600 in the stack's temp dir: it holds tokens). */
interface ChildSpec {
  url: string;
  caPem?: string;
  agent: string;
  echoPort: number;
  dataPort: number;
  tokens: string[];
  classes: AbuseClass[];
  hogStreams: number;
  victimPauseMs: number;
}

const round2 = (x: number): number => Math.round(x * 100) / 100;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function percentile(xs: number[], p: number): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
}

/** VmRSS of a process in bytes, or undefined once it is gone. */
async function rssBytes(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const kb = /VmRSS:\s+(\d+) kB/.exec(status)?.[1];
    return kb === undefined ? undefined : Number(kb) * 1024;
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // utime and stime are fields 14 and 15, counted after the parenthesised command name.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Rejects after `ms` with a message naming `what`, so no step of the soak can wait forever. */
async function within<T>(what: string, ms: number, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`abuse soak: ${what} took longer than ${ms} ms`)), ms);
  });
  return await Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

/** Samples two processes' RSS every 250 ms; `peak(from)` is the largest gateway sample since `from` (Date.now()). */
function startRssSampler(gatewayPid: number, agentPid: number): {
  peak(fromMs: number, which?: 'gateway' | 'agent'): number;
  latestGateway(): number;
  stop(): void;
} {
  const samples: Array<{ atMs: number; gateway: number; agent: number }> = [];
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    void Promise.all([rssBytes(gatewayPid), rssBytes(agentPid)])
      .then(([gateway, agent]) => {
        if (gateway !== undefined) samples.push({ atMs: Date.now(), gateway, agent: agent ?? 0 });
      })
      .finally(() => {
        busy = false;
      });
  }, RSS_SAMPLE_MS);
  return {
    peak: (fromMs, which = 'gateway') => samples.filter((s) => s.atMs >= fromMs).reduce((max, s) => Math.max(max, s[which]), 0),
    latestGateway: () => samples.at(-1)?.gateway ?? 0,
    stop: () => clearInterval(timer),
  };
}

/** Gauges whose peak the soak reports, and counters whose growth it reports (names without `narrowlink_gateway_`). */
const PEAK_GAUGES = [
  'buffered_bytes',
  'relay_queued_bytes',
  'nodejs_heap_size_used_bytes',
  'nodejs_heap_size_total_bytes',
  'nodejs_external_memory_bytes',
] as const;
const COUNTERS = [
  'rate_limited_total',
  'rate_limit_closes_total',
  'buffer_limit_closes_total',
  'stalled_sessions_total',
  'stream_share_refusals_total',
  'stream_idle_resets_total',
] as const;

/** Sums every series of each named family in one /metrics scrape (undefined for a family the gateway lacks). */
function families(text: string, names: readonly string[]): Map<string, number> {
  const sums = new Map<string, number>();
  for (const sample of parseMetrics(text)) {
    const short = sample.name.replace(/^narrowlink_gateway_/, '');
    if (names.includes(short)) sums.set(short, (sums.get(short) ?? 0) + sample.value);
  }
  return sums;
}

/** Scrapes the gateway's /metrics once a second (never two at once) and keeps each gauge's peak. */
function startMetricsSampler(stack: Stack): { peaks: Map<string, number>; stop(): void } {
  const peaks = new Map<string, number>();
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    stack
      .metricsText()
      .then((text) => {
        for (const [name, value] of families(text, PEAK_GAUGES)) peaks.set(name, Math.max(peaks.get(name) ?? 0, value));
      })
      .catch(() => undefined) // a gateway too busy to answer in 10 s, or gone: the RSS samples still tell
      .finally(() => {
        busy = false;
      });
  }, 1000);
  return { peaks, stop: () => clearInterval(timer) };
}

async function counters(stack: Stack): Promise<Map<string, number>> {
  return families(await stack.metricsText().catch(() => ''), COUNTERS);
}

/** One victim OPEN: when it started and ended (Date.now(), ms), how long it took, and why it failed if it did. */
interface VictimSample {
  startedAtMs: number;
  endedAtMs: number;
  /** OPEN → OPEN_OK (or → the failure), ms. */
  openMs: number;
  /** The RESET or link error code of a failed open. */
  code?: string;
  transferFailed?: boolean;
}

function victimSamples(lines: LogLine[]): { samples: VictimSample[]; drops: number } {
  const samples: VictimSample[] = [];
  let drops = 0;
  for (const line of lines) {
    if (line.event !== 'samples') continue;
    samples.push(...(line.samples as VictimSample[]));
    drops += Number(line.drops ?? 0);
  }
  return { samples, drops };
}

/**
 * Percentiles over every attempt, a failed one counting as the open timeout: an OPEN refused in 2 ms has not
 * served the victim, so it must not make the p99 look better; the p99 target then also means under 1 % failures.
 */
function summarize(samples: VictimSample[]): { p50: number | null; p99: number | null; max: number | null; opens: number; failures: number; codes: Record<string, number>; transferFailures: number } {
  const times = samples.map((s) => (s.code === undefined ? s.openMs : Math.max(s.openMs, OPEN_TIMEOUT_MS)));
  const codes: Record<string, number> = {};
  for (const s of samples) if (s.code !== undefined) codes[s.code] = (codes[s.code] ?? 0) + 1;
  const failures = Object.values(codes).reduce((sum, n) => sum + n, 0);
  return {
    p50: percentile(times, 50),
    p99: percentile(times, 99),
    max: times.length ? Math.max(...times) : null,
    opens: samples.length - failures,
    failures,
    codes,
    transferFailures: samples.filter((s) => s.transferFailed).length,
  };
}

/**
 * Runs the soak (see the file header) and returns its report. Starts and stops its own gateway, agent, targets and
 * children; never throws for a missed target, only when the soak itself cannot run (then everything is stopped).
 */
export async function measureAbuseSoak(options: AbuseSoakOptions = {}): Promise<AbuseSoakResult> {
  const seconds = options.seconds ?? 30;
  const victimCount = options.victims ?? 200;
  const abuserCount = options.abusers ?? 20;
  const rssCapBytes = (options.rssCapMib ?? 2048) * MIB;
  const log = options.log ?? (() => undefined);
  // Everything below has its own deadline; this one bounds the whole soak on top (start-up, drain, teardown).
  const hardDeadlineMs = (seconds + 240) * 1000;

  let targets: StartedProcess | undefined;
  let stack: Stack | undefined;
  let victims: StartedProcess | undefined;
  let abusers: StartedProcess | undefined;
  let sampler: ReturnType<typeof startRssSampler> | undefined;
  let metricsSampler: ReturnType<typeof startMetricsSampler> | undefined;
  try {
    return await within('the whole soak', hardDeadlineMs, (async () => {
      // The targets get their own process: the endless source runs flat out under abuse, and neither it nor the
      // echo server may slow this process's sampling (or the other way round).
      const from = options.from ?? 'bundle';
      if (from === 'bundle' && options.build !== false) await buildServer();
      targets = await startProcess('soak targets', [SELF, '--role', 'targets']);
      const echo = { port: Number(targets.readyLine.echoPort) };
      const source = { port: Number(targets.readyLine.dataPort) };
      stack = await startStack({
        tls: options.tls ?? true,
        agents: [{ name: 'soak', expose: [{ name: 'echo', port: echo.port }, { name: 'data', port: source.port }] }],
        // No NAT probe ports (UDP 3478 is shared by every stack on the machine) and quiet logs (a flood of warnings
        // would cost the gateway CPU that the victims then see).
        gatewayArgs: ['--nat-probe-port', '0', '--log-level', 'error'],
        from,
      });
      const agent = await stack.startAgent('soak', { args: ['--log-level', 'error'] });
      const s = stack;
      const rssIdle = (await rssBytes(s.gateway.child.pid as number)) ?? 0;
      const writeSpec = async (name: string, tokens: string[]): Promise<string> => {
        const spec: ChildSpec = {
          url: s.url,
          ...(s.tls ? { caPem: s.tls.ca } : {}),
          agent: 'soak',
          echoPort: echo.port,
          dataPort: source.port,
          tokens,
          classes: options.classes ?? [...ABUSE_CLASSES],
          hogStreams: options.hogStreams ?? 16,
          victimPauseMs: options.victimPauseMs ?? 500,
        };
        const file = path.join(s.dir, `${name}.json`);
        await writeFile(file, JSON.stringify(spec), { mode: 0o600 });
        return file;
      };
      // One identity per session: per-identity shares must not be what keeps an abuser in check, and victims are
      // many tenants.
      const victimTokens = await Promise.all(Array.from({ length: victimCount }, (_, i) => s.signToken('client', { sub: `victim-${i}` })));
      const abuserTokens = await Promise.all(Array.from({ length: abuserCount }, (_, i) => s.signToken('client', { sub: `abuser-${i}` })));

      log(`  ${victimCount} victim sessions connecting…`);
      victims = await startProcess('soak victims', [SELF, '--role', 'victims', '--spec', await writeSpec('victims', victimTokens)], {
        timeoutMs: 120_000,
      });
      const gatewayPid = s.gateway.child.pid as number;
      const agentPid = agent.child.pid as number;
      sampler = startRssSampler(gatewayPid, agentPid);
      const gatewayState: { exit: string | null } = { exit: null };
      void s.gateway.exited.then((code) => {
        gatewayState.exit = String(code ?? s.gateway.child.signalCode ?? 'signal');
      });

      await sleep(WARMUP_MS);
      const baselineStartMs = Date.now();
      await sleep(BASELINE_MS);
      const rssBaseline = sampler.latestGateway();
      log(`  baseline done (gateway ${(rssBaseline / MIB).toFixed(0)} MiB); ${abuserCount} abusers starting…`);
      const countersBefore = await counters(s);
      abusers = await startProcess('soak abusers', [SELF, '--role', 'abusers', '--spec', await writeSpec('abusers', abuserTokens)], {
        timeoutMs: 30_000,
      });
      const abuseStartMs = Date.now();
      metricsSampler = startMetricsSampler(s);
      const cpuBefore = await cpuSeconds(gatewayPid).catch(() => Number.NaN);
      const agentCpuBefore = await cpuSeconds(agentPid).catch(() => Number.NaN);
      let capped = false;
      for (let next = abuseStartMs + 5000; Date.now() - abuseStartMs < seconds * 1000; ) {
        await sleep(RSS_SAMPLE_MS);
        if (gatewayState.exit !== null) break;
        if (sampler.peak(abuseStartMs) > rssCapBytes) {
          capped = true;
          log(`  gateway RSS passed the ${rssCapBytes / MIB} MiB cap after ${((Date.now() - abuseStartMs) / 1000).toFixed(1)} s: ending the abuse early`);
          break;
        }
        if (Date.now() >= next) {
          next += 5000;
          log(`  ${((Date.now() - abuseStartMs) / 1000).toFixed(0)} s: gateway ${(sampler.latestGateway() / MIB).toFixed(0)} MiB`);
        }
      }
      const abuseEndMs = Date.now();
      const cpuAfter = await cpuSeconds(gatewayPid).catch(() => Number.NaN);
      const agentCpuAfter = await cpuSeconds(agentPid).catch(() => Number.NaN);
      // The victims stop starting streams and report the ones in flight (each settles within its own timeouts)
      // while the abusers keep going, so that every open of the window is measured under abuse.
      const v = victims;
      v.child.kill('SIGUSR2');
      await v
        .waitFor((line) => line.event === 'done', OPEN_TIMEOUT_MS + ECHO_TIMEOUT_MS + 10_000)
        .catch(() => log('  the victims did not report their last opens in time: counting what they sent'));
      metricsSampler.stop();
      const countersAfter = await counters(s);
      const abuserStats = (abusers.lines.filter((line) => line.event === 'stats' || line.event === 'ready').at(-1)?.classes ?? {}) as Record<AbuseClass, AbuseClassStats>;
      await abusers.stop('SIGTERM', 3000);
      const rssPeak = sampler.peak(abuseStartMs);
      const agentPeak = sampler.peak(abuseStartMs, 'agent');

      const { samples, drops } = victimSamples(v.lines);
      // Baseline: opens that started and ended before the abuse. Abuse: every other open that started before the
      // abuse ended, including those the abuse caught in flight.
      const baseline = summarize(samples.filter((x) => x.startedAtMs >= baselineStartMs && x.endedAtMs < abuseStartMs));
      const abused = summarize(samples.filter((x) => x.endedAtMs >= abuseStartMs && x.startedAtMs < abuseEndMs));
      const ms = (x: number | null): number | null => (x === null ? null : round2(x));
      const mib = (bytes: number | undefined): number | null => (bytes === undefined ? null : round2(bytes / MIB));
      return {
        abuse_victims: victimCount,
        abuse_abusers: abuserCount,
        abuse_seconds: round2((abuseEndMs - abuseStartMs) / 1000),
        abuse_baseline_p50_open_ms: ms(baseline.p50),
        abuse_baseline_p99_open_ms: ms(baseline.p99),
        abuse_baseline_opens: baseline.opens,
        abuse_baseline_open_failures: baseline.failures,
        abuse_victim_p50_open_ms: ms(abused.p50),
        abuse_victim_p99_open_ms: ms(abused.p99),
        abuse_victim_max_open_ms: ms(abused.max),
        abuse_victim_opens: abused.opens,
        abuse_victim_open_failures: abused.failures,
        abuse_victim_failure_codes: abused.codes,
        abuse_victim_transfer_failures: abused.transferFailures,
        abuse_victim_session_drops: drops,
        abuse_gateway_rss_idle_mib: round2(rssIdle / MIB),
        abuse_gateway_rss_baseline_mib: round2(rssBaseline / MIB),
        abuse_gateway_rss_mib: round2(rssPeak / MIB),
        abuse_agent_rss_mib: round2(agentPeak / MIB),
        abuse_gateway_cpu_percent: Number.isNaN(cpuAfter - cpuBefore) ? null : round2(((cpuAfter - cpuBefore) * 100_000) / Math.max(1, abuseEndMs - abuseStartMs)),
        abuse_agent_cpu_percent: Number.isNaN(agentCpuAfter - agentCpuBefore) ? null : round2(((agentCpuAfter - agentCpuBefore) * 100_000) / Math.max(1, abuseEndMs - abuseStartMs)),
        abuse_gateway_buffered_mib: mib(metricsSampler.peaks.get('buffered_bytes')),
        abuse_gateway_relay_queued_mib: mib(metricsSampler.peaks.get('relay_queued_bytes')),
        abuse_gateway_heap_used_mib: mib(metricsSampler.peaks.get('nodejs_heap_size_used_bytes')),
        abuse_gateway_heap_total_mib: mib(metricsSampler.peaks.get('nodejs_heap_size_total_bytes')),
        abuse_gateway_external_mib: mib(metricsSampler.peaks.get('nodejs_external_memory_bytes')),
        abuse_gateway_counters: Object.fromEntries([...countersAfter].map(([name, value]) => [name, value - (countersBefore.get(name) ?? 0)])),
        abuse_rss_capped: capped,
        abuse_gateway_exited: gatewayState.exit,
        abuse_abuser_stats: abuserStats,
      };
    })());
  } finally {
    sampler?.stop();
    metricsSampler?.stop();
    await abusers?.stop('SIGTERM', 3000);
    await victims?.stop('SIGTERM', 3000);
    await stack?.stop();
    await targets?.stop('SIGTERM', 3000);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------------------------------------------

function print(value: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

/** A child whose parent is gone (killed without a chance to stop it) ends itself. */
function exitWithParent(): void {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) process.exit(1);
  }, 1000).unref();
}

function errorCode(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : 'ERROR';
}

/** Sends `payload` on an open stream, waits for all of it to come back, half-closes and waits for the peer's FIN. */
function echoRoundTrip(stream: MuxStream, payload: Buffer, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let received = 0;
    let offset = 0;
    const timer = setTimeout(() => {
      stream.reset(StreamErrorCode.CANCELLED, 'victim: echo timed out');
      reject(new Error('echo timed out'));
    }, timeoutMs);
    const push = (): void => {
      if (offset < payload.length) offset += stream.write(payload.subarray(offset));
    };
    stream.handlers = {
      onData: (data) => {
        received += data.length;
        stream.consumed(data.length);
        if (received >= payload.length) stream.fin();
      },
      onCredit: push,
      onReset: (reset) => {
        clearTimeout(timer);
        reject(new Error(reset.code));
      },
      onClose: () => {
        clearTimeout(timer);
        if (received >= payload.length) resolve();
        else reject(new Error('closed before the echo'));
      },
    };
    push();
  });
}

async function runVictims(spec: ChildSpec): Promise<void> {
  const payload = Buffer.alloc(ECHO_BYTES, 0x76);
  const request: ClientOpen = { agent: spec.agent, port: spec.echoPort, mode: 'relay' };
  let pending: VictimSample[] = [];
  let drops = 0;
  let stopping = false;
  const links = spec.tokens.map((token) =>
    new GatewayLink({ url: spec.url, role: 'client', token, ...(spec.caPem ? { caPem: spec.caPem } : {}), reconnect: true }),
  );
  // Connect in batches: 200 TLS handshakes at once would time some of them out on a busy 2-core machine.
  for (let i = 0; i < links.length; i += 20) {
    const batch = links.slice(i, i + 20);
    for (const link of batch) link.start();
    await Promise.all(batch.map((link) => link.waitOpen(30_000)));
  }
  for (const link of links) {
    link.on('state', (state: string) => {
      if (state === 'connecting') drops++;
    });
  }
  const flush = (): void => {
    if (pending.length === 0 && drops === 0) return;
    print({ event: 'samples', samples: pending, drops });
    pending = [];
    drops = 0;
  };
  const flusher = setInterval(flush, 500);
  const loop = async (link: GatewayLink): Promise<void> => {
    await sleep(Math.random() * spec.victimPauseMs);
    while (!stopping) {
      try {
        await link.waitOpen(OPEN_TIMEOUT_MS);
      } catch {
        // The session is down (a drop, not a slow open); the pause keeps a refused link from spinning.
        await sleep(1000);
        continue;
      }
      const startedAtMs = Date.now();
      const started = performance.now();
      const sample: VictimSample = { startedAtMs, endedAtMs: startedAtMs, openMs: 0 };
      const settle = (): void => {
        sample.openMs = performance.now() - started;
        sample.endedAtMs = startedAtMs + sample.openMs;
      };
      try {
        const { stream } = await link.openStream(request, OPEN_TIMEOUT_MS);
        settle();
        try {
          await echoRoundTrip(stream, payload, ECHO_TIMEOUT_MS);
        } catch {
          sample.transferFailed = true;
        }
      } catch (error) {
        settle();
        sample.code = errorCode(error);
      }
      pending.push(sample);
      if (!stopping) await sleep(spec.victimPauseMs * (0.5 + Math.random()));
    }
  };
  const loops = links.map(loop);
  print({ event: 'ready', sessions: links.length });
  await new Promise<void>((resolve) => process.once('SIGUSR2', () => resolve()));
  stopping = true;
  // Every loop step is bounded (open 10 s, echo 10 s); the parent stops this process regardless after its deadline.
  await Promise.allSettled(loops);
  clearInterval(flusher);
  flush();
  print({ event: 'done' });
  await Promise.allSettled(links.map((link) => link.close()));
  process.exit(0);
}

function emptyStats(): AbuseClassStats {
  return { sessions: 0, connects: 0, connectFailures: 0, closes: {}, framesSent: 0, opensOk: 0, refusals: {}, held: 0, heldMax: 0 };
}

/**
 * One hostile session, reconnecting until the process ends: the WebSocket and the frame codec, no Mux (a hostile
 * client keeps none of the rules a Mux enforces on itself).
 */
class HostileClient {
  readonly #spec: ChildSpec;
  readonly #token: string;
  readonly #kind: AbuseClass;
  /** Which control flood a class-3 session sends. */
  readonly #flood: 'ping' | 'refused-open' | 'list-agents';
  readonly #stats: AbuseClassStats;

  constructor(spec: ChildSpec, token: string, index: number, stats: Record<AbuseClass, AbuseClassStats>) {
    this.#spec = spec;
    this.#token = token;
    this.#kind = spec.classes[index % spec.classes.length] as AbuseClass;
    this.#flood = (['ping', 'refused-open', 'list-agents'] as const)[Math.floor(index / spec.classes.length) % 3] as 'ping' | 'refused-open' | 'list-agents';
    this.#stats = stats[this.#kind];
    this.#stats.sessions++;
  }

  /** Runs sessions back to back; resolves after the first attempt settled (connected or failed). */
  start(): Promise<void> {
    return new Promise((firstSettled) => {
      const again = (): void => {
        this.#session(firstSettled).then(() => setTimeout(again, ABUSER_RECONNECT_MS));
      };
      again();
    });
  }

  #session(settled: () => void): Promise<void> {
    const stats = this.#stats;
    return new Promise((ended) => {
      const ws = new WebSocket(new URL('/v1/client', this.#spec.url), {
        headers: { authorization: `Bearer ${this.#token}` },
        perMessageDeflate: false,
        maxPayload: DEFAULT_MAX_FRAME_PAYLOAD + FRAME_HEADER_BYTES,
        handshakeTimeout: 10_000,
        ...(this.#spec.caPem ? { ca: this.#spec.caPem } : {}),
      });
      let nextId = 1;
      let open = false;
      let timers: NodeJS.Timeout[] = [];
      const pendingOpens = new Set<number>();
      const held = new Set<number>();
      const send = (frame: Frame): void => {
        if (ws.readyState !== WebSocket.OPEN) return;
        ws.send(encodeFrame(frame));
        stats.framesSent++;
      };
      const openStream = (port: number | string, agent = this.#spec.agent): number => {
        const id = nextId;
        nextId += 2;
        send({ type: 'open', streamId: id, payload: { agent, port } });
        return id;
      };
      const helloTimer = setTimeout(() => ws.terminate(), 10_000);
      ws.on('error', () => undefined);
      ws.on('close', (code) => {
        clearTimeout(helloTimer);
        for (const timer of timers) clearTimeout(timer);
        timers = [];
        stats.held -= held.size;
        if (open) stats.closes[String(code)] = (stats.closes[String(code)] ?? 0) + 1;
        else stats.connectFailures++;
        settled();
        ended();
      });
      ws.on('open', () => {
        stats.connects++;
        send({
          type: 'control',
          message: { type: 'hello', version: PROTOCOL_VERSION, role: 'client', software: 'abuse-soak', streamWindow: LARGEST_HELLO_WINDOW },
        });
      });

      // Class 1: as many idle streams as the gateway allows; after a refusal, one more try a second until one is
      // accepted again.
      let holdBlocked = false;
      let holdProbe: NodeJS.Timeout | undefined;
      const fillHold = (): void => {
        while (!holdBlocked && pendingOpens.size < 32) pendingOpens.add(openStream(this.#spec.echoPort));
      };
      const holdRefused = (): void => {
        holdBlocked = true;
        if (holdProbe !== undefined) return;
        holdProbe = setTimeout(() => {
          holdProbe = undefined;
          pendingOpens.add(openStream(this.#spec.echoPort));
        }, 1000);
        timers.push(holdProbe);
      };
      let onOpensSettled: (() => void) | undefined;
      let requestId = 0;
      // Classes 3 and 4: write as fast as our own socket drains, never more than ABUSER_QUEUE_BYTES queued here.
      const pump = (): void => {
        if (ws.readyState !== WebSocket.OPEN) return;
        for (let i = 0; i < 256 && ws.bufferedAmount < ABUSER_QUEUE_BYTES; i++) {
          if (this.#kind === 'opens') {
            const id = openStream(this.#spec.echoPort);
            send({ type: 'reset', streamId: id, payload: { code: StreamErrorCode.CANCELLED, message: 'flood' } });
          } else if (this.#flood === 'ping') send({ type: 'ping', opaque: Buffer.alloc(8) });
          else if (this.#flood === 'refused-open') openStream(80, 'no-such-agent');
          else send({ type: 'control', message: { type: 'list_agents', requestId: requestId++ } });
        }
        if (ws.bufferedAmount < ABUSER_QUEUE_BYTES) setImmediate(pump);
        else timers.push(setTimeout(pump, 5));
      };
      const afterHello = (): void => {
        open = true;
        clearTimeout(helloTimer);
        settled();
        switch (this.#kind) {
          case 'hold':
            fillHold();
            return;
          case 'hog': {
            for (let i = 0; i < this.#spec.hogStreams; i++) pendingOpens.add(openStream(this.#spec.dataPort));
            // Stop reading once the opens are answered (or after 3 s): from then on the gateway's bytes pile up.
            const stopReading = (): void => {
              if (ws.isPaused) return;
              ws.pause();
              // A heartbeat's worth of traffic: what a liveness check that only counts received bytes accepts.
              timers.push(setInterval(() => send({ type: 'ping', opaque: Buffer.alloc(8) }), 2000));
            };
            timers.push(setTimeout(stopReading, 3000));
            onOpensSettled = stopReading;
            return;
          }
          case 'flood':
            ws.pause();
            pump();
            return;
          case 'opens':
            pump();
            return;
        }
      };
      ws.on('message', (data: Buffer, isBinary: boolean) => {
        if (!isBinary) return;
        let frame: Frame;
        try {
          frame = decodeFrame(data, DEFAULT_MAX_FRAME_PAYLOAD, PEER_CONTROL_LIMITS);
        } catch {
          return;
        }
        switch (frame.type) {
          case 'control':
            if (frame.message.type === 'hello_ok' && !open) afterHello();
            return;
          case 'ping':
            // Reading sessions answer like any client, so that they stay up on their merits.
            send({ type: 'pong', opaque: frame.opaque });
            return;
          case 'open_ok':
            if (pendingOpens.delete(frame.streamId)) {
              stats.opensOk++;
              if (this.#kind === 'hold') {
                held.add(frame.streamId);
                stats.held++;
                stats.heldMax = Math.max(stats.heldMax, stats.held);
                holdBlocked = false;
                fillHold();
              }
              if (this.#kind === 'hog' && pendingOpens.size === 0) onOpensSettled?.();
            } else if (this.#kind === 'opens') stats.opensOk++;
            return;
          case 'reset': {
            const wasPending = pendingOpens.delete(frame.streamId);
            if (held.delete(frame.streamId)) stats.held--;
            if (wasPending || this.#kind === 'opens' || this.#kind === 'flood') {
              const code = frame.payload.code;
              stats.refusals[code] = (stats.refusals[code] ?? 0) + 1;
            }
            if (this.#kind === 'hold') {
              if (wasPending) holdRefused();
              else fillHold();
            }
            if (this.#kind === 'hog' && wasPending && pendingOpens.size === 0) onOpensSettled?.();
            return;
          }
          default:
            // DATA is never acknowledged (no WINDOW sent): what a peer that does not read would do.
            return;
        }
      });
    });
  }
}

async function runAbusers(spec: ChildSpec): Promise<void> {
  try {
    // See the file header: the abusers' own CPU must not be what the victims measure.
    os.setPriority(10);
  } catch {
    // not permitted here: run at the default priority
  }
  const stats = Object.fromEntries(ABUSE_CLASSES.map((kind) => [kind, emptyStats()])) as Record<AbuseClass, AbuseClassStats>;
  const clients = spec.tokens.map((token, i) => new HostileClient(spec, token, i, stats));
  setInterval(() => print({ event: 'stats', classes: stats }), 1000);
  await within('the abusers connecting', 20_000, Promise.all(clients.map((client) => client.start()))).catch(() => undefined);
  print({ event: 'ready', classes: stats });
  process.once('SIGTERM', () => {
    print({ event: 'stats', classes: stats });
    process.exit(0);
  });
}

/** The two TCP targets, until SIGTERM: prints their ports in its ready line. */
async function runTargets(): Promise<void> {
  const echo = await startEchoServer();
  const source = await startEndlessSource();
  print({ event: 'ready', echoPort: echo.port, dataPort: source.port });
  process.once('SIGTERM', () => {
    print({ event: 'source', bytes: source.bytesWritten(), connections: source.connections() });
    process.exit(0);
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      role: { type: 'string' },
      spec: { type: 'string' },
      json: { type: 'boolean' },
      seconds: { type: 'string' },
      victims: { type: 'string' },
      abusers: { type: 'string' },
      'no-tls': { type: 'boolean' },
      'hog-streams': { type: 'string' },
      'victim-pause-ms': { type: 'string' },
      'rss-cap-mib': { type: 'string' },
      classes: { type: 'string' },
      source: { type: 'boolean' },
    },
  });
  if (values.role === 'targets') {
    exitWithParent();
    return await runTargets();
  }
  if (values.role !== undefined) {
    exitWithParent();
    const spec = JSON.parse(await readFile(values.spec as string, 'utf8')) as ChildSpec;
    if (values.role === 'victims') return await runVictims(spec);
    if (values.role === 'abusers') return await runAbusers(spec);
    throw new Error(`unknown --role ${values.role}`);
  }
  const number = (name: string, text: string | undefined): number | undefined => {
    if (text === undefined) return undefined;
    const n = Number(text);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} wants a positive number, got "${text}"`);
    return n;
  };
  const options: AbuseSoakOptions = { log: (line) => process.stderr.write(`${line}\n`) };
  const set = <K extends keyof AbuseSoakOptions>(key: K, value: AbuseSoakOptions[K] | undefined): void => {
    if (value !== undefined) options[key] = value;
  };
  set('seconds', number('seconds', values.seconds));
  set('victims', number('victims', values.victims));
  set('abusers', number('abusers', values.abusers));
  set('hogStreams', number('hog-streams', values['hog-streams']));
  set('victimPauseMs', number('victim-pause-ms', values['victim-pause-ms']));
  set('rssCapMib', number('rss-cap-mib', values['rss-cap-mib']));
  if (values['no-tls']) options.tls = false;
  if (values.source) options.from = 'source';
  if (values.classes !== undefined) {
    const classes = values.classes.split(',').map((c) => c.trim());
    const unknown = classes.filter((c) => !ABUSE_CLASSES.includes(c as AbuseClass));
    if (unknown.length > 0 || classes.length === 0) throw new Error(`--classes wants a comma list of ${ABUSE_CLASSES.join(', ')}, got "${values.classes}"`);
    options.classes = classes as AbuseClass[];
  }
  const result = await measureAbuseSoak(options);
  if (values.json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return;
  }
  process.stdout.write(`${abuseSoakRows(result).map(([a, b, c]) => `${a.padEnd(44)}  ${b.padEnd(16)}  ${c}`).join('\n')}\n`);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

/** The soak's rows of the `npm run bench` table: [measure, result, note (target and context)]. */
export function abuseSoakRows(r: AbuseSoakResult): Array<[string, string, string]> {
  const codes = Object.entries(r.abuse_victim_failure_codes).map(([code, n]) => `${n} ${code}`).join(', ');
  return [
    [
      `abuse soak: victims' open p50 / p99 (${r.abuse_victims} + ${r.abuse_abusers} abusive)`,
      `${r.abuse_victim_p50_open_ms ?? '-'} / ${r.abuse_victim_p99_open_ms ?? '-'} ms`,
      `target p99 ≤ 50 ms; before the abuse ${r.abuse_baseline_p50_open_ms ?? '-'} / ${r.abuse_baseline_p99_open_ms ?? '-'} ms; ${r.abuse_victim_open_failures} of ${r.abuse_victim_opens + r.abuse_victim_open_failures} opens failed${codes ? ` (${codes})` : ''}, ${r.abuse_victim_transfer_failures} echoes failed`,
    ],
    [
      'abuse soak: gateway RSS, peak',
      `${r.abuse_gateway_rss_mib} MiB`,
      `target ≤ 256 MiB; ${r.abuse_gateway_rss_idle_mib} MiB idle, ${r.abuse_gateway_rss_baseline_mib} MiB with the victims before the abuse; agent peak ${r.abuse_agent_rss_mib} MiB; gateway CPU ${r.abuse_gateway_cpu_percent ?? '-'} %, agent ${r.abuse_agent_cpu_percent ?? '-'} %; buffered_bytes peak ${r.abuse_gateway_buffered_mib ?? '-'} MiB, V8 heap ${r.abuse_gateway_heap_total_mib ?? '-'} MiB, external ${r.abuse_gateway_external_mib ?? '-'} MiB; ${r.abuse_seconds} s of abuse${r.abuse_rss_capped ? ' (ended early at the RSS cap)' : ''}${r.abuse_gateway_exited !== null ? ` (gateway exited: ${r.abuse_gateway_exited})` : ''}`,
    ],
  ];
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((error: unknown) => {
    process.stderr.write(`abuse soak failed: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  });
}
