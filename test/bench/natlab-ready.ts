#!/usr/bin/env node
/**
 * Time to a direct path through two cone NATs (issue 4's "time from both sessions up to direct path ready"),
 * in the NAT lab (test/natlab/lab.ts: network namespaces, MASQUERADE with home-router filtering on both routers).
 * The gateway runs in `pub`, the agent `svc` behind nat2 (attached and NAT-classified before the first try),
 * and every try is a fresh client behind nat1 — a new process, session, UDP socket and NAT mapping.
 *
 * Two numbers per try:
 * - `samples` / `p50Ms` / `p90Ms`: `direct.readyInMs` of `narrowlink status svc -o json`: from the client
 *   receiving the gateway's punch plan to a verified (fingerprint-pinned) QUIC connection. It leaves out the
 *   session set-up, NAT probing and the direct_request round trip, and includes the plan's start delay.
 * - `sessionOpenToDirect`: from the client session being open to the direct path being up, read from the
 *   timestamps (ms resolution) of `narrowlink forward -o json`'s `connected` and `direct-up` lines, with a
 *   stream already waiting on the forward's port when the session opens (auto mode asks for the path on the
 *   first stream). This is the closer match to "both sessions up → direct ready": it includes the client's
 *   NAT probing, the direct_request, the plan, the punch and the QUIC handshake.
 * A try whose path does not come up counts as a failure (and gives no sample).
 *
 * Skipped with the reason when the lab cannot run here (not root, no network namespaces) or cannot be built;
 * the lab is torn down in every case. Run alone for a table (or `--json`):
 *
 *   node test/bench/natlab-ready.ts [--tries N] [--json]
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { labAvailable } from '../natlab/lab.ts';
import { LabStack, SCRIPTS } from '../natlab/stack.ts';

export interface ReadySeries {
  p50Ms: number;
  p90Ms: number;
  samples: number[];
  failures: number;
}

export interface DirectReadyResult extends ReadySeries {
  /** Client session open → direct path up (see the header); absent with `sessionOpenToDirect: false`. */
  sessionOpenToDirect?: ReadySeries;
  /** Wall time of each whole `status svc` command (process start to exit), for context. */
  statusCommandP50Ms: number;
  tries: number;
}

export interface MeasureDirectReadyOptions {
  /** Fresh clients to time; default 20. */
  tries?: number;
  /** Also time session open → direct up with `forward` (one more client per try); default true. */
  sessionOpenToDirect?: boolean;
}

/** The forward's local port for the session-open timing (any free port in h1's namespace does). */
const FORWARD_PORT = 17007;

/** Nearest-rank percentile; NaN for no samples. */
function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] as number;
}

function series(samples: number[], failures: number): ReadySeries {
  return { p50Ms: percentile(samples, 50), p90Ms: percentile(samples, 90), samples, failures };
}

/** One fresh `forward` on h1 with a stream already waiting: ms from its `connected` line to `direct-up`. */
async function sessionOpenToDirectOnce(stack: LabStack): Promise<number | undefined> {
  // The stream is started first and keeps connecting until the forward listens, so it waits when the session opens.
  const sender = stack.lab.spawnNode('h1', [SCRIPTS.tcp, 'send', '--port', String(FORWARD_PORT), '--bytes', '1024', '--retry-connect-ms', '15000', '--timeout-ms', '20000']);
  const forward = stack.lab.spawnNode('h1', [SCRIPTS.client, 'forward', '-o', 'json', '-L', `127.0.0.1:${FORWARD_PORT}:svc:echo`, ...stack.clientArgs()], stack.env);
  try {
    const outcome = await forward.waitFor((l) => l.event === 'direct-up' || l.event === 'direct-failed', 20_000);
    const connected = forward.lines.find((l) => l.event === 'connected');
    if (outcome.event !== 'direct-up' || !connected) return undefined;
    return Date.parse(String(outcome.time)) - Date.parse(String(connected.time));
  } catch {
    return undefined;
  } finally {
    await Promise.all([forward.stop(), sender.stop()]);
  }
}

/**
 * Builds the cone/cone lab once, then times `tries` fresh clients (see the header for what is measured).
 */
export async function measureDirectReady(options: MeasureDirectReadyOptions = {}): Promise<DirectReadyResult | { skipped: string }> {
  const tries = options.tries ?? 20;
  const withSession = options.sessionOpenToDirect ?? true;
  const available = await labAvailable();
  if (available !== true) return { skipped: available.skipped };
  const stack = new LabStack();
  try {
    try {
      await stack.start({ nat1: 'masquerade', nat2: 'masquerade' });
      await stack.startServers('h2', 1024 * 1024);
      const agent = await stack.startAgent('h2');
      await agent.waitFor((l) => l.event === 'nat', 10_000);
    } catch (error) {
      return { skipped: `the NAT lab could not be built: ${(error as Error).message.split('\n')[0]}` };
    }
    const ready: number[] = [];
    const statusMs: number[] = [];
    let failures = 0;
    const opened: number[] = [];
    let openFailures = 0;
    for (let i = 0; i < tries; i++) {
      const run = await stack.client('h1', ['status', 'svc', '-o', 'json', '--timeout-ms', '10000']);
      statusMs.push(run.tookMs);
      let direct: { state?: string; readyInMs?: number } | undefined;
      try {
        direct = (JSON.parse(run.stdout) as { direct?: { state?: string; readyInMs?: number } }).direct;
      } catch {
        direct = undefined;
      }
      if (run.code === 0 && direct?.state === 'up' && typeof direct.readyInMs === 'number') ready.push(direct.readyInMs);
      else failures++;
      if (withSession) {
        const ms = await sessionOpenToDirectOnce(stack);
        if (ms === undefined) openFailures++;
        else opened.push(ms);
      }
    }
    return {
      ...series(ready, failures),
      ...(withSession ? { sessionOpenToDirect: series(opened, openFailures) } : {}),
      statusCommandP50Ms: Math.round(percentile(statusMs, 50)),
      tries,
    };
  } finally {
    await stack.stop();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const { values } = parseArgs({ options: { tries: { type: 'string' }, json: { type: 'boolean' } } });
  const result = await measureDirectReady({ tries: Number(values.tries ?? 20) });
  if (values.json || 'skipped' in result) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else {
    const rows: string[][] = [
      ['measure', 'p50 ms', 'p90 ms', 'failures', 'samples'],
      ['plan → verified QUIC (status readyInMs)', String(result.p50Ms), String(result.p90Ms), `${result.failures}/${result.tries}`, result.samples.join(' ')],
    ];
    const s = result.sessionOpenToDirect;
    if (s) rows.push(['session open → direct up (forward)', String(s.p50Ms), String(s.p90Ms), `${s.failures}/${result.tries}`, s.samples.join(' ')]);
    rows.push(['whole `status svc` command', String(result.statusCommandP50Ms), '', '', '']);
    const widths = (rows[0] as string[]).map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
    for (const row of rows) process.stdout.write(`${row.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()}\n`);
  }
}
