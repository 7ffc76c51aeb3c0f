/**
 * The direct path through real Linux NATs (issue 4, "NAT lab tests"): the gateway in `pub`, the agent
 * (`agent-sidecar --expose`) behind nat2 (or next to the client, behind nat1), the client CLI behind nat1, all
 * real processes in their namespaces; TCP ends are `tcp-tool.ts`, and every byte stream is checked by sha256.
 *
 * Matrix: cone/cone → direct, bytes never cross the gateway; cone/symmetric → whichever wins, recorded;
 * symmetric/symmetric → relay with BothSymmetric, `--mode direct` fails fast; UDP blocked → relay, no hang;
 * same LAN → direct over the LAN candidate; conntrack flushed mid-transfer → recovers; nat1 re-mapping UDP to
 * new ports mid-transfer → the path is lost within the idle timeout, the stream fails (no hang), its retry
 * completes, direct comes back. Plus request/response: large echoes over the direct path.
 * The cone/cone tests run in order on one lab (each starts from the path the previous one left up).
 *
 * Needs root (network namespaces, iptables): without it every test is skipped with a printed reason.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test, type TestContext } from 'node:test';
import { deterministicSha256 } from '../helpers/tcp-fixtures.ts';
import { LAB, type LabHost, type LabOptions, type LabProcess, labAvailable } from './lab.ts';
import { type LabForward, LabStack, metricValue, SCRIPTS, sumMetric } from './stack.ts';

const MiB = 1024 * 1024;
/** Upper bound for anything that must not hang: the direct path's own bounds (8 s wait, 30 s idle) plus slack. */
const BOUND_MS = 45_000;

const availability = await labAvailable();
const skipReason = availability === true ? undefined : availability.skipped;
if (skipReason) process.stderr.write(`nat lab (direct path): SKIPPED (${skipReason})\n`);

/** Skips the test (reported as skipped, never as passed) when the lab cannot run here. */
function skipped(t: TestContext): boolean {
  if (!skipReason) return false;
  t.skip(`nat lab: SKIPPED (${skipReason})`);
  return true;
}

/** The parts of `status AGENT -o json`'s `direct` the tests read. */
interface StatusDirect {
  state: string;
  reason?: string;
  message?: string;
  via?: string;
  strategy?: string;
  readyInMs?: number;
  remote?: { address: string; port: number };
}

/** One agent `svc` (exposing echo, sink, source from tcp-tool) and one `forward` to all three on h1. */
class Scenario {
  readonly stack = new LabStack();
  servers: LabProcess | undefined;
  sourceSha256 = '';
  agent: LabProcess | undefined;
  forward!: LabForward;
  readonly sourceBytes: number;

  constructor(sourceBytes: number) {
    this.sourceBytes = sourceBytes;
  }

  async start(lab: LabOptions, agentHost: LabHost): Promise<void> {
    await this.stack.start(lab);
    await this.startAgent(agentHost);
  }

  async startAgent(host: LabHost): Promise<void> {
    const servers = await this.stack.startServers(host, this.sourceBytes, 5);
    this.servers = servers.process;
    this.sourceSha256 = servers.sourceSha256;
    this.agent = await this.stack.startAgent(host);
    // Both peers probed before the client asks: an agent still probing is refused as NotProbed (UDP blocked:
    // its probes time out after 2 s), which would test the timing, not the topology.
    await this.agent.waitFor((l) => l.event === 'nat', 10_000);
    this.forward = await this.stack.startForward('h1', ['svc:echo', 'svc:sink', 'svc:source']);
  }

  async stopAgent(): Promise<void> {
    await this.forward?.process.stop();
    await this.agent?.stop();
    await this.servers?.stop();
  }

  get echoPort(): number {
    return this.forward.ports[0] as number;
  }
  get sinkPort(): number {
    return this.forward.ports[1] as number;
  }
  get sourcePort(): number {
    return this.forward.ports[2] as number;
  }

  /** The path of the newest stream the forward opened to `target`. */
  lastPath(target: string): unknown {
    return this.forward.opens().filter((l) => l.target === target).at(-1)?.path;
  }

  /**
   * An echo round trip; the tests use it as the forward's first stream (auto mode: relay at once, and it asks
   * for a direct path). Over the direct path, echoes are the subject of their own suite.
   */
  async echo(bytes = 4096, seed = 3): Promise<void> {
    const result = await this.stack.tcp('h1', ['send', '--port', String(this.echoPort), '--bytes', String(bytes), '--seed', String(seed)], 20_000);
    assert.equal(result.event, 'done', JSON.stringify(result));
    assert.equal(result.replySha256, deterministicSha256(bytes, seed), 'echo came back intact');
  }

  /** `bytes` h1 → sink on the agent's host; the sink's sha256 must be that of the stream sent. */
  async toSink(bytes: number, seed: number, timeoutMs = BOUND_MS): Promise<Record<string, unknown>> {
    const result = await this.stack.tcp('h1', ['send', '--port', String(this.sinkPort), '--bytes', String(bytes), '--seed', String(seed)], timeoutMs);
    assert.equal(result.event, 'done', `h1 → sink: ${JSON.stringify(result)}`);
    assert.equal(result.sentSha256, deterministicSha256(bytes, seed));
    assert.equal(result.replyHead, result.sentSha256, 'the sink received exactly the bytes sent (sha256)');
    return result;
  }

  /** The source's whole stream to h1, by sha256. */
  async fromSource(timeoutMs = BOUND_MS): Promise<Record<string, unknown>> {
    const result = await this.stack.tcp('h1', ['receive', '--port', String(this.sourcePort)], timeoutMs);
    assert.equal(result.event, 'done', `source → h1: ${JSON.stringify(result)}`);
    assert.equal(result.bytes, this.sourceBytes);
    assert.equal(result.sha256, this.sourceSha256, 'h1 received exactly the bytes the source sent (sha256)');
    return result;
  }

  /** The forward's first word on the direct path: `direct-up` or `direct-failed`. */
  directOutcome(timeoutMs = 15_000): Promise<Record<string, unknown>> {
    return this.forward.process.waitFor((l) => l.event === 'direct-up' || l.event === 'direct-failed', timeoutMs);
  }

  /** The forward's newest direct-up or direct-failed line. */
  lastDirectEvent(): Record<string, unknown> | undefined {
    return this.forward.process.lines.filter((l) => l.event === 'direct-up' || l.event === 'direct-failed').at(-1);
  }

  /** The first forward line at index `from` or later matching `predicate` (waiting for it). */
  waitSince(from: number, predicate: (line: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown>> {
    const lines = this.forward.process.lines;
    return this.forward.process.waitFor((l) => predicate(l) && lines.indexOf(l) >= from, timeoutMs);
  }

  /** ms from the client session being open (`connected`) to a forward line, by their timestamps. */
  sinceConnected(line: Record<string, unknown>): number | undefined {
    const connected = this.forward.process.lines.find((l) => l.event === 'connected');
    return connected ? Date.parse(String(line.time)) - Date.parse(String(connected.time)) : undefined;
  }

  async stop(): Promise<void> {
    await this.stack.stop();
  }
}

/** The longest gap between a sender's progress lines, ms: how long a transfer stood still. */
function longestPause(sender: LabProcess): number {
  const times = sender.lines.filter((l) => l.event === 'progress' || l.event === 'done').map((l) => Number(l.ms));
  return Math.max(0, ...times.slice(1).map((ms, i) => ms - (times[i] as number)));
}

async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const until = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('nat lab, direct path: cone/cone (MASQUERADE on both routers), h1b on h1 LAN', { timeout: 150_000 }, () => {
  const s = new Scenario(32 * MiB);
  before(async () => {
    if (!skipReason) await s.start({ nat1: 'masquerade', nat2: 'masquerade', h1b: true }, 'h2');
  });
  after(() => s.stop());

  test('direct path comes up behind the relay; 32 MiB each way over it by sha256; the relay counter does not move', async (t) => {
    if (skipped(t)) return;
    await s.echo();
    assert.equal(s.lastPath('svc:echo'), 'relay', 'auto mode: the first stream goes through the relay at once');
    const up = await s.directOutcome();
    assert.equal(up.event, 'direct-up', `no direct path: ${JSON.stringify(up)}`);
    t.diagnostic(`time to direct: ${up.ms} ms from the plan to verified QUIC, ${s.sinceConnected(up)} ms from the client session open; ${JSON.stringify(up)}`);
    assert.equal(up.agent, 'svc');
    assert.equal(up.via, 'public');
    assert.equal((up.remote as { address: string }).address, LAB.nat2Outside, "the agent's public endpoint, through nat2");
    assert.ok(typeof up.ms === 'number' && up.ms < 3000, `direct path ready in ${up.ms} ms`);
    await waitUntil('the gateway to count the path up', async () => sumMetric(await s.stack.metrics(), 'narrowlink_gateway_direct_paths_up') === 1, 5000);
    const agentUp = await (s.agent as LabProcess).waitFor((l) => l.event === 'direct-up', 5000);
    assert.equal(String(agentUp.remote).split(':')[0], LAB.nat1Outside, "the agent sees the client's public endpoint, through nat1");

    const relayBefore = await s.stack.relayBytes();
    const sent = await s.toSink(32 * MiB, 21);
    assert.equal(s.lastPath('svc:sink'), 'direct', 'a stream opened after direct-up goes direct');
    const received = await s.fromSource();
    assert.equal(s.lastPath('svc:source'), 'direct');
    const relayAfter = await s.stack.relayBytes();
    t.diagnostic(`32 MiB h1 → h2 in ${sent.ms} ms, h2 → h1 in ${received.ms} ms over the direct path; relay bytes ${relayBefore} → ${relayAfter}`);
    assert.equal(relayAfter, relayBefore, 'no byte of either transfer crossed the gateway');
    t.diagnostic(`nat1 conntrack (UDP): ${(await s.stack.lab.conntrackList('nat1')).trim().replaceAll('\n', ' | ')}`);
  });

  test('conntrack -F on both routers mid-transfer: the transfer (or its retry) completes with the right sha256, no hang', async (t) => {
    if (skipped(t)) return;
    assert.equal(s.lastDirectEvent()?.event, 'direct-up', 'the direct path is up');
    const opensBefore = s.forward.opens().length;
    const bytes = 96 * MiB;
    const seed = 33;
    const startedAt = performance.now();
    // Paced at 16 MiB/s so the flush lands in the middle: ~6 s in all.
    const sender = s.stack.lab.spawnNode('h1', [
      SCRIPTS.tcp, 'send', '--port', String(s.sinkPort), '--bytes', String(bytes), '--seed', String(seed),
      '--rate', String(16 * MiB), '--progress-every', String(4 * MiB), '--timeout-ms', String(BOUND_MS),
    ]);
    await sender.waitFor((l) => l.event === 'progress' && Number(l.sent) >= 16 * MiB, 20_000);
    const opened = s.forward.opens().slice(opensBefore).find((l) => l.target === 'svc:sink');
    assert.equal(opened?.path, 'direct', 'the transfer under test runs over the direct path');
    const relayBefore = await s.stack.relayBytes();
    const linesAtFlush = s.forward.process.lines.length;
    await Promise.all([s.stack.lab.conntrackFlush('nat1'), s.stack.lab.conntrackFlush('nat2')]);
    const flushedAt = performance.now();
    t.diagnostic(`flushed both routers' conntrack ${Math.round(flushedAt - startedAt)} ms into the transfer`);
    const code = await Promise.race([sender.exited, new Promise<'hang'>((resolve) => setTimeout(() => resolve('hang'), BOUND_MS + 5000))]);
    assert.notEqual(code, 'hang', 'the transfer neither finished nor failed');
    const first = sender.lines.at(-1) ?? {};
    assert.notEqual(first.timedOut, true, `the transfer stalled without failing: ${JSON.stringify(first)}`);
    const directEvents = s.forward.process.lines.slice(linesAtFlush).filter((l) => l.event === 'direct-up' || l.event === 'direct-failed');
    t.diagnostic(`forward's direct-path events since the flush: ${JSON.stringify(directEvents)}`);
    t.diagnostic(`longest pause in the transfer's progress: ${longestPause(sender)} ms (paced: a line every 250 ms)`);
    if (first.event === 'done') {
      t.diagnostic(`the QUIC path survived the flush: ${bytes / MiB} MiB done ${first.ms} ms after it started (${bytes / (16 * MiB)} s paced); relay bytes ${relayBefore} → ${await s.stack.relayBytes()}`);
      assert.equal(first.sentSha256, deterministicSha256(bytes, seed));
      assert.equal(first.replyHead, first.sentSha256, 'the sink received exactly the bytes sent (sha256)');
    } else {
      t.diagnostic(`the first transfer failed ${Math.round(performance.now() - flushedAt)} ms after the flush: ${JSON.stringify(first)}; retrying`);
      const retry = await s.toSink(bytes, seed);
      t.diagnostic(`the retried transfer went ${s.lastPath('svc:sink')} and took ${retry.ms} ms`);
    }
    // Whatever happened, the forward still serves new streams. (An upload, not an echo: echoes over the direct
    // path have a bug of their own, tested in the request/response suite below.)
    await s.toSink(4 * MiB, 34);
    t.diagnostic(`a new stream after the flush went ${s.lastPath('svc:sink')}; nat1 conntrack: ${(await s.stack.lab.conntrackList('nat1')).trim().replaceAll('\n', ' | ')}`);
  });

  test("nat1 re-maps UDP mid-transfer (conntrack -F, new mappings from another port range): the path is lost, the stream fails instead of hanging, its retry completes, direct comes back", async (t) => {
    if (skipped(t)) return;
    // The client's new mappings no longer match what the agent aims at, and the home-router filter on nat2 drops
    // packets from the new port: nothing gets through. Both sides probe every second once a busy path goes
    // silent and declare it dead after 5 s (not QUIC's 30 s idle timeout); then re-probe and punch again.
    assert.equal(s.lastDirectEvent()?.event, 'direct-up', 'a direct path is up before the re-map');
    const bytes = 64 * MiB;
    const seed = 61;
    const sender = s.stack.lab.spawnNode('h1', [
      SCRIPTS.tcp, 'send', '--port', String(s.sinkPort), '--bytes', String(bytes), '--seed', String(seed),
      '--rate', String(16 * MiB), '--progress-every', String(4 * MiB), '--timeout-ms', String(BOUND_MS),
    ]);
    await sender.waitFor((l) => l.event === 'progress' && Number(l.sent) >= 8 * MiB, 20_000);
    assert.equal(s.lastPath('svc:sink'), 'direct');
    const linesAtRemap = s.forward.process.lines.length;
    const remap = ['-o', 'out', '-p', 'udp', '-j', 'MASQUERADE', '--to-ports', '20000-20999'];
    await s.stack.lab.exec('nat1', ['iptables', '-t', 'nat', '-I', 'POSTROUTING', '1', ...remap]);
    try {
      await Promise.all([s.stack.lab.conntrackFlush('nat1'), s.stack.lab.conntrackFlush('nat2')]);
      const remappedAt = performance.now();
      const code = await Promise.race([sender.exited, new Promise<'hang'>((resolve) => setTimeout(() => resolve('hang'), BOUND_MS + 5000))]);
      assert.notEqual(code, 'hang', 'the transfer neither finished nor failed');
      const first = sender.lines.at(-1) ?? {};
      const failedAfterMs = Math.round(performance.now() - remappedAt);
      t.diagnostic(`first transfer: ${JSON.stringify(first)} ${failedAfterMs} ms after the re-map`);
      assert.notEqual(first.timedOut, true, `the transfer stalled without failing: ${JSON.stringify(first)}`);
      assert.equal(first.event, 'error', 'a direct path that lost its NAT mappings cannot carry the transfer to its end');
      const lost = await s.waitSince(linesAtRemap, (l) => l.event === 'direct-failed', 5000);
      // Whichever idle timer fires first: the client's (PathLost), or the agent's, which the gateway passes on.
      assert.ok(lost.reason === 'PathLost' || (lost.reason === 'ClosedByGateway' && /PathLost/.test(String(lost.message))), JSON.stringify(lost));
      t.diagnostic(`forward: ${JSON.stringify(lost)}; ${JSON.stringify(s.forward.process.lines.slice(linesAtRemap).find((l) => l.event === 'stream-reset'))}`);
      // The retry: at once, on the relay or on a new direct path.
      const retry = await s.toSink(bytes, seed);
      t.diagnostic(`the retried transfer went ${s.lastPath('svc:sink')} and took ${retry.ms} ms`);
      // Direct again: the next streams ask for it once the retry wait is over (0 after PathLost, 5 s after
      // ClosedByGateway).
      const until = performance.now() + 15_000;
      let again: Record<string, unknown> | undefined;
      for (;;) {
        again = s.forward.process.lines.slice(linesAtRemap).find((l) => l.event === 'direct-up');
        if (again) break;
        assert.ok(performance.now() < until, 'no new direct path within 15 s of the loss');
        await new Promise((resolve) => setTimeout(resolve, 1000));
        await s.toSink(64 * 1024, 63);
      }
      t.diagnostic(`direct again ${Math.round(performance.now() - remappedAt)} ms after the re-map: ${JSON.stringify(again)}`);
      const agentUp = (s.agent as LabProcess).lines.filter((l) => l.event === 'direct-up').at(-1);
      const port = Number(String(agentUp?.remote).split(':')[1]);
      assert.ok(port >= 20000 && port <= 20999, `the agent reaches the client at its new mapping (${agentUp?.remote})`);
      await s.toSink(4 * MiB, 62);
      assert.equal(s.lastPath('svc:sink'), 'direct', 'new streams use the new direct path');
    } finally {
      await s.stack.lab.exec('nat1', ['iptables', '-t', 'nat', '-D', 'POSTROUTING', ...remap], { allowFailure: true });
    }
  });

  test('same LAN: agent on h1b, client on h1 (both behind nat1) → direct over the LAN candidate', async (t) => {
    if (skipped(t)) return;
    await s.stopAgent();
    await s.startAgent('h1b');
    await s.echo();
    assert.equal(s.lastPath('svc:echo'), 'relay');
    const up = await s.directOutcome();
    assert.equal(up.event, 'direct-up', `no direct path: ${JSON.stringify(up)}`);
    t.diagnostic(`same LAN: ${JSON.stringify(up)}; ${s.sinceConnected(up)} ms from the client session open`);
    assert.equal(up.via, 'lan');
    const remote = up.remote as { address: string; port: number };
    assert.equal(remote.address, LAB.h1b, "h1b's LAN address, not nat1's public one");
    const relayBefore = await s.stack.relayBytes();
    await s.toSink(16 * MiB, 41);
    assert.equal(s.lastPath('svc:sink'), 'direct');
    assert.equal(await s.stack.relayBytes(), relayBefore, 'nothing crossed the gateway');
    const { status } = await s.stack.status('h1', 'svc');
    const direct = status.direct as StatusDirect;
    t.diagnostic(`status svc from h1: ${JSON.stringify(direct)}`);
    assert.equal(direct.state, 'up');
    assert.equal(direct.via, 'lan');
    assert.equal(direct.remote?.address, LAB.h1b);
  });
});

describe('nat lab, direct path: request/response (echo) through cone NATs', { timeout: 120_000 }, () => {
  // An echo's reply is still on its way to the client when the target closes its side: the agent must deliver
  // the rest before it ends the stream. (Uploads and downloads alone never hit this: the local end closes last.)
  const s = new Scenario(MiB);
  const results: string[] = [];
  before(async () => {
    if (!skipReason) await s.start({ nat1: 'masquerade', nat2: 'masquerade' }, 'h2');
  });
  after(() => s.stop());

  test('16 MiB echoes over the direct path come back whole (3 tries, by sha256)', async (t) => {
    if (skipped(t)) return;
    await s.echo();
    const up = await s.directOutcome();
    assert.equal(up.event, 'direct-up', JSON.stringify(up));
    const bytes = 16 * MiB;
    let failed = 0;
    for (let i = 0; i < 3; i++) {
      const opensBefore = s.forward.opens().length;
      const result = await s.stack.tcp('h1', ['send', '--port', String(s.echoPort), '--bytes', String(bytes), '--seed', String(70 + i)], 20_000);
      const path = s.forward.opens().slice(opensBefore).at(-1)?.path;
      const ok = result.event === 'done' && result.replySha256 === deterministicSha256(bytes, 70 + i);
      if (!ok) failed++;
      results.push(`echo ${i + 1} (${path}): ${ok ? `ok in ${result.ms} ms` : `FAILED ${JSON.stringify({ ...result, replyHead: undefined })}`}`);
    }
    const resets = s.forward.process.lines.filter((l) => l.event === 'stream-reset');
    t.diagnostic(`${results.join('; ')}; forward stream-reset lines: ${JSON.stringify(resets)}`);
    assert.equal(failed, 0, `${failed} of 3 echoes did not come back whole: ${results.join('; ')}`);
  });

  test('after them, a new stream still opens on the direct path at once', async (t) => {
    if (skipped(t)) return;
    const started = performance.now();
    const result = await s.toSink(MiB, 80, 20_000);
    const opened = s.forward.opens().at(-1);
    t.diagnostic(`1 MiB upload went ${opened?.path} (opened in ${opened?.ms} ms), ${Math.round(performance.now() - started)} ms in all, ${result.ms} ms by the sender`);
    assert.equal(s.lastDirectEvent()?.event, 'direct-up', 'the path is still up');
    assert.equal(opened?.path, 'direct');
    assert.ok(Number(opened?.ms) < 2000, `the stream took ${opened?.ms} ms to open`);
  });
});

/**
 * A topology where punching may or may not win (`expectReason` undefined: record which) or must lose with
 * `expectReason`. Either way: no hang, and the bytes arrive intact.
 */
function relayOrDirect(title: string, lab: LabOptions, expectReason: string | undefined): void {
  describe(`nat lab, direct path: ${title}`, { timeout: 120_000 }, () => {
    const s = new Scenario(16 * MiB);
    let outcome: Record<string, unknown> = {};
    before(async () => {
      if (!skipReason) await s.start(lab, 'h2');
    });
    after(() => s.stop());

    test(`${expectReason ? `relay (${expectReason})` : 'direct if punching wins, else relay'}; data correct by sha256; bounded`, async (t) => {
      if (skipped(t)) return;
      const startedAt = performance.now();
      await s.echo();
      assert.equal(s.lastPath('svc:echo'), 'relay');
      outcome = await s.directOutcome();
      t.diagnostic(`${title}: ${outcome.event} ${JSON.stringify(outcome)} (${s.sinceConnected(outcome)} ms after the session opened)`);
      if (expectReason) assert.equal(outcome.event, 'direct-failed', JSON.stringify(outcome));
      if (outcome.event === 'direct-failed') {
        assert.equal(outcome.reason, expectReason ?? 'PortRestrictedVsRandom', JSON.stringify(outcome));
        assert.ok(Number(outcome.retryInMs) > 0, 'a refused path is retried later, not in a loop');
      }
      const path = outcome.event === 'direct-up' ? 'direct' : 'relay';
      const relayBefore = await s.stack.relayBytes();
      const sent = await s.toSink(16 * MiB, 51);
      assert.equal(s.lastPath('svc:sink'), path);
      const received = await s.fromSource();
      assert.equal(s.lastPath('svc:source'), path);
      const relayAfter = await s.stack.relayBytes();
      t.diagnostic(`path ${path}: 16 MiB h1 → h2 in ${sent.ms} ms, h2 → h1 in ${received.ms} ms; relay bytes +${relayAfter - relayBefore}`);
      if (path === 'relay') assert.ok(relayAfter - relayBefore >= 32 * MiB, `the relay carried both transfers (+${relayAfter - relayBefore})`);
      else assert.equal(relayAfter, relayBefore);
      assert.ok(performance.now() - startedAt < 2 * BOUND_MS);
    });

    test('`status svc` says which path and why, within a bounded time', async (t) => {
      if (skipped(t)) return;
      const { status, tookMs } = await s.stack.status('h1', 'svc');
      const direct = status.direct as StatusDirect;
      t.diagnostic(`status svc: ${JSON.stringify(direct)}; nat ${JSON.stringify(status.nat)}; ${Math.round(tookMs)} ms`);
      assert.ok(tookMs < 12_000, `status took ${Math.round(tookMs)} ms`);
      if (outcome.event === 'direct-failed') {
        assert.equal(direct.state, 'failed');
        assert.equal(direct.reason, outcome.reason);
        assert.ok(direct.message);
      } else {
        // Punching won once; a fresh client may still lose the race: record it either way.
        assert.ok(['up', 'failed'].includes(direct.state), direct.state);
      }
      if (expectReason) {
        const refused = metricValue(await s.stack.metrics(), 'narrowlink_gateway_direct_requests_total', `result="${expectReason}"`);
        assert.ok(refused >= 2, `gateway counted ${refused} requests refused as ${expectReason}`);
      }
    });

    if (expectReason) {
      test(`\`connect --mode direct\` fails fast: NL_ERR_DIRECT_UNAVAILABLE with ${expectReason}`, async (t) => {
        if (skipped(t)) return;
        const run = await s.stack.client('h1', ['connect', 'svc', 'echo', '--mode', 'direct'], { input: 'x', timeoutMs: 20_000 });
        t.diagnostic(`exit ${run.code} after ${Math.round(run.tookMs)} ms: ${run.stderr.trim()}`);
        assert.equal(run.code, 1, run.stderr);
        assert.equal(run.stdout, '', 'nothing was carried');
        assert.match(run.stderr, new RegExp(`NL_ERR_DIRECT_UNAVAILABLE.*${expectReason}`));
        assert.ok(run.tookMs < 10_000, `took ${Math.round(run.tookMs)} ms`);
      });
    }
  });
}

relayOrDirect('cone/symmetric (MASQUERADE on nat1, --random-fully on nat2)', { nat1: 'masquerade', nat2: 'random-fully' }, undefined);
relayOrDirect('symmetric/symmetric (--random-fully on both routers)', { nat1: 'random-fully', nat2: 'random-fully' }, 'BothSymmetric');
relayOrDirect("UDP blocked on nat1 (the client's router)", { nat1: 'udp-blocked', nat2: 'masquerade' }, 'UdpBlocked');
relayOrDirect("UDP blocked on nat2 (the agent's router)", { nat1: 'masquerade', nat2: 'udp-blocked' }, 'UdpBlocked');
