#!/usr/bin/env node
/**
 * `npm run bench [-- --json] [-- --mib N] [-- --rounds N]`: the relay against baselines measured in
 * the same run on the same machine (these machines are shared and noisy: read the ratios).
 *
 *   raw TCP          source → sink, two processes, one loopback TCP connection
 *   ssh -L           OpenSSH port forward through a private sshd (skipped without openssh-server)
 *   relay            source → narrowlink forward → gateway → agent → sink, TLS on both legs
 *   direct           source → narrowlink forward (auto) → QUIC → agent → sink, once the path is up; and the
 *                    QUIC transport alone (endpoint to endpoint)
 *   direct ready     NAT lab (root): 20 fresh clients through two MASQUERADE routers, time to a verified path
 *   stream open      OPEN → OPEN_OK over a live session (client → gateway → agent → target dial)
 *   idle sessions    gateway RSS growth per idle agent session at 1,000 sessions (TLS)
 *   OPEN cost        CPU per OPEN through an in-process gateway at 50 + 50 and 500 + 500 agents + policies
 *                    (./open-cost.ts)
 *   abuse soak       200 well-behaved sessions streaming while 20 abusive sessions do issue 10's classes 1–4
 *                    against a real gateway and agent: the victims' stream-open p99 and the gateway's peak RSS
 *                    (./abuse-soak.ts; `--skip-abuse` to leave it out, `--abuse-seconds N` for its length)
 *   reconcile        the operator on a real kube-apiserver: 500 agents + 500 policies into the config Secret,
 *                    then one policy edit (./reconcile.ts; `--skip-reconcile` to leave it out, skipped with
 *                    the reason where the apiserver tier cannot run)
 *   login            `narrowlink login` as a real process on a real kube-apiserver with the operator's webhook and
 *                    control loop, 20 tries (./login.ts; `--skip-login` to leave it out, skipped with `--only-relay`)
 *   idle RSS         the shipped bundles (dist/server with their Node options, the packaged CLI) started as on a node:
 *                    gateway, agent (default and relay-only), `narrowlink forward`; RSS 20 s after start
 *                    (./idle-rss.ts; `--skip-idle-rss` to leave it out, skipped with `--only-relay`)
 *
 * `--bundles` runs the relay section's gateway and agent from dist/server with the Node options of its
 * runtime-deps.json and the client from the packaged CLI (both built first), as the image and npm ship them; by
 * default they run from the TypeScript sources.
 *
 * Throughput figures are medians of `--rounds` runs and count bytes at the sink (no hashing at the
 * sink, which would cap every path at the sink's sha256 speed; the e2e tests verify content).
 */
import { writeFileSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { GatewayLink } from '@narrowlink/peer-link';
import { generateSigningKeyPair, signToken } from '@narrowlink/protocol';
import { stringify } from 'yaml';
import { startProcess, type StartedProcess, stopAll } from '../helpers/processes.ts';
import { startEchoServer } from '../helpers/tcp-fixtures.ts';
import { makeTestCertificate } from '../helpers/tls.ts';
import { measureSshForward, pushThrough, startSinkProcess, type Throughput } from './baselines.ts';
import { measureDirect } from './direct.ts';
import { measureDirectReady } from './natlab-ready.ts';
import { type AbuseSoakResult, abuseSoakRows, measureAbuseSoak } from './abuse-soak.ts';
import { measureOpenCostFlatness } from './open-cost.ts';
import { type LoginOutcome, measureLogin } from './login.ts';
import { measureReconcile, type ReconcileOutcome } from './reconcile.ts';
import { type IdleRss, idleRssRows, measureIdleRss } from './idle-rss.ts';
import { buildPackage, DIST_DIR as CLI_DIST_DIR } from '../../client-cli/build/build.ts';
import { buildServer, NODE_OPTIONS, SERVER_DIST_DIR } from '../../scripts/build-server.ts';

const MIB = 1024 * 1024;
const root = fileURLToPath(new URL('../../', import.meta.url));
const { values } = parseArgs({
  options: {
    json: { type: 'boolean' },
    mib: { type: 'string' },
    rounds: { type: 'string' },
    sessions: { type: 'string' },
    opens: { type: 'string' },
    'no-tls': { type: 'boolean' },
    'only-relay': { type: 'boolean' },
    'skip-reconcile': { type: 'boolean' },
    'skip-login': { type: 'boolean' },
    'skip-abuse': { type: 'boolean' },
    'skip-idle-rss': { type: 'boolean' },
    bundles: { type: 'boolean' },
    'abuse-seconds': { type: 'string' },
    agents: { type: 'string' },
    policies: { type: 'string' },
  },
});
const streamBytes = Number(values.mib ?? 256) * MIB;
const rounds = Number(values.rounds ?? 3);
const idleSessions = Number(values.sessions ?? 1000);
const openSamples = Number(values.opens ?? 1000);
const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};
/** How the relay section starts each component: Node options and the entry file (see `--bundles`). */
const entry = {
  gateway: values.bundles ? [...NODE_OPTIONS.gateway, join(SERVER_DIST_DIR, 'gateway.mjs')] : [join(root, 'gateway/src/main.ts')],
  agent: values.bundles ? [...NODE_OPTIONS.agent, join(SERVER_DIST_DIR, 'agent.mjs')] : [join(root, 'agent-sidecar/src/main.ts')],
  client: values.bundles ? [join(CLI_DIST_DIR, 'bin', 'narrowlink.mjs')] : [join(root, 'client-cli/src/main.ts')],
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
}

async function medianOf(label: string, run: () => Promise<Throughput>): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const result = await run();
    samples.push(result.mbPerSec);
    log(`  ${label} round ${i + 1}: ${result.mbPerSec.toFixed(0)} MB/s`);
  }
  return median(samples);
}

interface Stack {
  gateway: StartedProcess;
  privateKeyPem: string;
  caFile: string;
  dir: string;
  clientToken: string;
  metrics(): Promise<string>;
}

/** A TLS gateway whose config allows `bench` users to reach agent `sink` (and `idle`). */
async function startStack(exposePorts: number[]): Promise<Stack> {
  const dir = await mkdtemp(join(tmpdir(), 'nl-bench-'));
  const cert = await makeTestCertificate();
  const keys = await generateSigningKeyPair();
  const configFile = join(dir, 'gateway.yaml');
  writeFileSync(
    configFile,
    stringify({
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'GatewayConfig',
      signingPublicKeys: [keys.publicKeyPem],
      agents: [
        { name: 'sink', expose: exposePorts.map((port, i) => ({ name: `p${i}`, port })) },
        { name: 'idle', expose: [{ name: 'none', port: 9 }] },
      ],
      policies: [{ name: 'bench', subjects: [{ kind: 'Group', name: 'bench' }], rules: [{ action: 'Allow' }] }],
    }),
  );
  const gateway = await startProcess('gateway', [
    ...entry.gateway,
    '--config',
    configFile,
    '--listen',
    '127.0.0.1:0',
    ...(values['no-tls'] ? [] : ['--tls-cert', cert.certFile, '--tls-key', cert.keyFile]),
    '--log-level',
    'warn',
    '--drain-ms',
    '500',
    '--admin-listen',
    '127.0.0.1:0',
  ]);
  // /metrics is served on the admin listener only (plain HTTP), not on the public one.
  const adminUrl = gateway.readyLine.adminUrl as string;
  const clientToken = await signToken(keys.privateKeyPem, { typ: 'client', sub: 'bench', groups: ['bench'], ttlSeconds: 3600 });
  return {
    gateway,
    privateKeyPem: keys.privateKeyPem,
    caFile: cert.caFile,
    dir,
    clientToken,
    metrics: async () => httpText(`${adminUrl}/metrics`, await readFile(cert.caFile, 'utf8')),
  };
}

async function startAgent(stack: Stack, exposePorts: number[]): Promise<StartedProcess> {
  const token = await signToken(stack.privateKeyPem, { typ: 'agent', sub: 'default/sink', ttlSeconds: 3600 });
  const tokenFile = join(stack.dir, 'agent.token');
  writeFileSync(tokenFile, token);
  return await startProcess('agent', [
    ...entry.agent,
    '--gateway',
    stack.gateway.readyLine.url as string,
    '--token-file',
    tokenFile,
    '--ca-file',
    stack.caFile,
    '--log-level',
    'warn',
    ...exposePorts.flatMap((port, i) => ['--expose', `p${i}=127.0.0.1:${port}`]),
  ], { readyEvent: 'ready' });
}

async function startForward(stack: Stack, target: string, mode: 'relay' | 'auto' = 'relay'): Promise<{ process: StartedProcess; port: number }> {
  const tokenFile = join(stack.dir, 'client.token');
  writeFileSync(tokenFile, stack.clientToken);
  const forward = await startProcess('forward', [
    ...entry.client,
    'forward',
    '127.0.0.1:0',
    target,
    '--gateway',
    stack.gateway.readyLine.url as string,
    '--token-file',
    tokenFile,
    '--ca-file',
    stack.caFile,
    '--mode',
    mode,
    '-o',
    'json',
  ]);
  const listeners = forward.readyLine.listeners as Array<{ port: number }>;
  return { process: forward, port: (listeners[0] as { port: number }).port };
}

/** CPU seconds (user + system) a process has used so far, from /proc. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticksPerSecond = 100;
  return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond;
}

/** GET a URL of the gateway (trusting the bench CA over https). */
function httpText(url: string, caPem: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const get = url.startsWith('https:') ? httpsGet : httpGet;
    get(url, { ca: caPem }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      res.on('error', reject);
    }).on('error', reject);
  });
}

function relayBytesOf(metricsText: string): number {
  let total = 0;
  for (const line of metricsText.split('\n')) if (line.startsWith('narrowlink_gateway_relay_bytes_total')) total += Number(line.split(' ').at(-1));
  return total;
}

async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1]);
  return kb * 1024;
}

async function measureStreamOpen(stack: Stack, echoPort: number): Promise<{ p50: number; p99: number }> {
  const link = new GatewayLink({
    url: stack.gateway.readyLine.url as string,
    role: 'client',
    token: stack.clientToken,
    caPem: await readFile(stack.caFile, 'utf8'),
    reconnect: false,
  }).start();
  await link.waitOpen(10_000);
  const samples: number[] = [];
  try {
    for (let i = 0; i < openSamples + 50; i++) {
      const started = performance.now();
      const { stream } = await link.openStream({ agent: 'sink', port: echoPort, mode: 'relay' }, 10_000);
      const elapsed = performance.now() - started;
      if (i >= 50) samples.push(elapsed); // the first opens warm up JIT and connection pools
      stream.fin();
      stream.reset('CANCELLED', 'bench done');
    }
  } finally {
    await link.close();
  }
  return { p50: percentile(samples, 50), p99: percentile(samples, 99) };
}

async function measureIdleSessions(stack: Stack): Promise<{ bytesPerSession: number; sessions: number }> {
  const token = await signToken(stack.privateKeyPem, { typ: 'agent', sub: 'default/idle', ttlSeconds: 3600 });
  const caPem = await readFile(stack.caFile, 'utf8');
  const pid = stack.gateway.child.pid as number;
  await new Promise((r) => setTimeout(r, 1000));
  const before = await rssBytes(pid);
  const links: GatewayLink[] = [];
  for (let i = 0; i < idleSessions; i += 50) {
    const batch: GatewayLink[] = [];
    for (let j = i; j < Math.min(idleSessions, i + 50); j++) {
      batch.push(
        new GatewayLink({
          url: stack.gateway.readyLine.url as string,
          role: 'agent',
          token,
          caPem,
          agent: { instanceId: `idle-${j}`, expose: [{ name: 'none', port: 9 }] },
          onOpenStream: (stream) => stream.reset('DENIED', 'idle bench agent'),
        }).start(),
      );
    }
    await Promise.all(batch.map((l) => l.waitOpen(30_000)));
    links.push(...batch);
  }
  // Let allocations settle (TLS buffers, GC) before reading RSS.
  await new Promise((r) => setTimeout(r, 3000));
  const after = await rssBytes(pid);
  await Promise.all(links.map((l) => l.close()));
  return { bytesPerSession: Math.max(0, (after - before) / idleSessions), sessions: idleSessions };
}

async function main(): Promise<void> {
  const started = performance.now();
  log(`narrowlink bench: ${streamBytes / MIB} MiB per single-stream run, ${rounds} rounds, median`);
  if (values.bundles) {
    log('building dist/server and the packaged CLI (--bundles)…');
    await buildServer();
    await buildPackage();
  }

  log('raw TCP…');
  const sink = await startSinkProcess({ hash: false });
  const rawTcp = await medianOf('raw tcp', () => pushThrough({ sinkServer: sink, bytes: streamBytes, verify: false }));
  const rawTcp16 = await medianOf('raw tcp x16', () => pushThrough({ sinkServer: sink, bytes: streamBytes / 16, streams: 16, verify: false }));

  log('ssh -L…');
  const sshSamples: number[] = [];
  const ssh16Samples: number[] = [];
  let sshSkipped: string | undefined;
  for (let i = 0; i < rounds && !sshSkipped && !values['only-relay']; i++) {
    const one = await measureSshForward({ bytes: streamBytes, targetPort: sink.port, verify: false });
    if ('skipped' in one) {
      sshSkipped = one.skipped;
      break;
    }
    sshSamples.push(one.mbPerSec);
    const many = await measureSshForward({ bytes: streamBytes / 16, streams: 16, targetPort: sink.port, verify: false });
    if (!('skipped' in many)) ssh16Samples.push(many.mbPerSec);
    log(`  ssh round ${i + 1}: ${one.mbPerSec.toFixed(0)} MB/s, x16 ${'skipped' in many ? '-' : many.mbPerSec.toFixed(0)} MB/s`);
  }
  const ssh = sshSamples.length ? median(sshSamples) : undefined;
  const ssh16 = ssh16Samples.length ? median(ssh16Samples) : undefined;

  log('relay (TLS both legs)…');
  const echo = await startEchoServer();
  const stack = await startStack([sink.port, echo.port]);
  const agent = await startAgent(stack, [sink.port, echo.port]);
  const forward = await startForward(stack, `sink:${sink.port}`);
  // One unmeasured transfer first: JIT warm-up and TCP window growth, as the other paths had in their first round.
  await pushThrough({ connectPort: forward.port, sinkServer: sink, bytes: 64 * MIB, verify: false });
  const relayPids = { client: forward.process.child.pid as number, gateway: stack.gateway.child.pid as number, agent: agent.child.pid as number };
  const cpuBefore = await Promise.all(Object.values(relayPids).map(cpuSeconds));
  const relay = await medianOf('relay', () => pushThrough({ connectPort: forward.port, sinkServer: sink, bytes: streamBytes, verify: false }));
  const cpuAfter = await Promise.all(Object.values(relayPids).map(cpuSeconds));
  // CPU milliseconds each relay process spent per MB moved (single-stream rounds only).
  const relayMb = (streamBytes * rounds) / 1e6;
  const [clientCpu, gatewayCpu, agentCpu] = cpuAfter.map((after, i) => (((after - (cpuBefore[i] as number)) * 1000) / relayMb));
  const relay16 = await medianOf('relay x16', () =>
    pushThrough({ connectPort: forward.port, sinkServer: sink, bytes: streamBytes / 16, streams: 16, verify: false }),
  );

  // The direct path end to end: source → narrowlink forward (auto) → QUIC → agent → sink, after the forward's
  // first stream (relayed) brought the direct path up. Same processes' kinds, same machine, same run as the relay.
  log('direct (forward → QUIC → agent)…');
  let direct: number | undefined;
  let direct16: number | undefined;
  let directCpu: { client: number; agent: number } | undefined;
  let directReadyLoopbackMs: number | undefined;
  if (!values['only-relay']) {
    const directForward = await startForward(stack, `sink:${sink.port}`, 'auto');
    await pushThrough({ connectPort: directForward.port, sinkServer: sink, bytes: MIB, verify: false });
    const up = await directForward.process.waitFor((l) => l.event === 'direct-up', 10_000);
    directReadyLoopbackMs = up.ms as number;
    await pushThrough({ connectPort: directForward.port, sinkServer: sink, bytes: 64 * MIB, verify: false });
    const directPids = [directForward.process.child.pid as number, agent.child.pid as number];
    const directRelayBefore = relayBytesOf(await stack.metrics());
    const before = await Promise.all(directPids.map(cpuSeconds));
    direct = await medianOf('direct', () => pushThrough({ connectPort: directForward.port, sinkServer: sink, bytes: streamBytes, verify: false }));
    const after = await Promise.all(directPids.map(cpuSeconds));
    const [client, agentMs] = after.map((a, i) => ((a - (before[i] as number)) * 1000) / relayMb);
    directCpu = { client: client as number, agent: agentMs as number };
    direct16 = await medianOf('direct x16', () => pushThrough({ connectPort: directForward.port, sinkServer: sink, bytes: streamBytes / 16, streams: 16, verify: false }));
    const opens = directForward.process.lines.filter((l) => l.event === 'stream-open');
    const relayed = relayBytesOf(await stack.metrics()) - directRelayBefore;
    if (opens.at(-1)?.path !== 'direct' || relayed > 0) throw new Error(`direct bench did not run on the direct path (last open ${JSON.stringify(opens.at(-1))}, relayed ${relayed} bytes)`);
    await directForward.process.stop();
  }

  // The QUIC transport alone (our packet loop over the native quiche binding), endpoint to endpoint on loopback:
  // the ceiling of the direct path without the TCP legs.
  log('direct transport (QUIC endpoints only)…');
  const transportRuns: number[] = [];
  for (let i = 0; i < (values['only-relay'] ? 0 : rounds); i++) {
    const one = await measureDirect({ bytes: streamBytes, streams: 1, payloadBytes: 1350 });
    transportRuns.push(one.mbPerSec);
    log(`  transport round ${i + 1}: ${one.mbPerSec.toFixed(0)} MB/s`);
  }
  const transport = transportRuns.length ? median(transportRuns) : undefined;

  // Time from a client's session to a punched, verified path through two real NATs (network namespaces, root).
  log('direct ready through cone NATs (NAT lab)…');
  const natlabReady = values['only-relay'] ? { skipped: '--only-relay' } : await measureDirectReady({ tries: 20 });
  if ('skipped' in natlabReady) log(`  NAT lab: SKIPPED (${natlabReady.skipped})`);

  log('stream open latency…');
  const open = values['only-relay'] ? { p50: Number.NaN, p99: Number.NaN } : await measureStreamOpen(stack, echo.port);

  log(`idle sessions (${idleSessions})…`);
  const idle = values['only-relay'] ? { bytesPerSession: Number.NaN, sessions: 0 } : await measureIdleSessions(stack);

  await forward.process.stop();
  await agent.stop();
  await stack.gateway.stop();
  await sink.close();
  await echo.close();
  await stopAll();

  // After the relay processes are gone, so they do not compete for the CPU.
  log('OPEN cost (CPU per OPEN through an in-process gateway, 50+50 and 500+500)…');
  const openCost = await measureOpenCostFlatness();
  log(`  ${openCost.small.cpuUsPerOpen.toFixed(1)} µs at 50+50, ${openCost.large.cpuUsPerOpen.toFixed(1)} µs at 500+500`);

  // Its own gateway (no NAT probe ports) and agent, after every other relay process is gone.
  let abuse: AbuseSoakResult | { skipped: string };
  if (values['skip-abuse'] || values['only-relay']) abuse = { skipped: values['skip-abuse'] ? '--skip-abuse' : '--only-relay' };
  else {
    log('abuse soak (200 victims streaming, 20 abusive sessions, classes 1–4 of issue 10)…');
    abuse = await measureAbuseSoak({
      seconds: Number(values['abuse-seconds'] ?? 30),
      tls: !values['no-tls'],
      log: (line) => log(line),
    });
  }

  // The shipped bundles, every other process of this bench gone (RSS is what it measures, not CPU, but a loaded
  // machine still delays start-up and the first GCs).
  let idleRss: IdleRss | { skipped: string };
  if (values['skip-idle-rss'] || values['only-relay']) idleRss = { skipped: values['skip-idle-rss'] ? '--skip-idle-rss' : '--only-relay' };
  else {
    log('idle RSS (bundled gateway, agents and forward, 20 s after start)…');
    // --bundles built them already.
    idleRss = await measureIdleRss({ build: !values.bundles, log });
  }

  let reconcile: ReconcileOutcome;
  if (values['skip-reconcile'] || values['only-relay']) reconcile = { skipped: values['skip-reconcile'] ? '--skip-reconcile' : '--only-relay' };
  else {
    const agents = Number(values.agents ?? 500);
    const policies = Number(values.policies ?? 500);
    log(`reconcile (${agents} agents + ${policies} policies on a real kube-apiserver)…`);
    reconcile = await measureReconcile({ agents, policies, log });
    if ('skipped' in reconcile) log(`  reconcile: SKIPPED (${reconcile.skipped})`);
  }

  let login: LoginOutcome | { skipped: string };
  if (values['skip-login'] || values['only-relay']) login = { skipped: values['skip-login'] ? '--skip-login' : '--only-relay' };
  else {
    log('narrowlink login (real kube-apiserver, webhook and operator; 20 tries)…');
    login = await measureLogin({ tries: 20, log });
    if ('skipped' in login) log(`  login: SKIPPED (${login.skipped})`);
  }

  const round2 = (x: number | undefined): number | null => (x === undefined ? null : Math.round(x * 100) / 100);
  const result = {
    stream_mib: streamBytes / MIB,
    rounds,
    raw_tcp_mbps: round2(rawTcp),
    raw_tcp_x16_mbps: round2(rawTcp16),
    ssh_mbps: round2(ssh),
    ssh_x16_mbps: round2(ssh16),
    ssh_skipped: sshSkipped ?? null,
    relay_mbps: round2(relay),
    relay_x16_mbps: round2(relay16),
    relay_vs_tcp: round2(relay / rawTcp),
    relay_vs_ssh: ssh === undefined ? null : round2(relay / ssh),
    relay_x16_vs_ssh_x16: ssh16 === undefined ? null : round2(relay16 / ssh16),
    relay_cpu_ms_per_mb: { client: round2(clientCpu), gateway: round2(gatewayCpu), agent: round2(agentCpu) },
    direct_mbps: round2(direct),
    direct_x16_mbps: round2(direct16),
    direct_vs_relay: direct === undefined ? null : round2(direct / relay),
    direct_x16_vs_relay_x16: direct16 === undefined ? null : round2(direct16 / relay16),
    direct_vs_tcp: direct === undefined ? null : round2(direct / rawTcp),
    direct_cpu_ms_per_mb: directCpu ? { client: round2(directCpu.client), agent: round2(directCpu.agent) } : null,
    direct_transport_mbps: round2(transport),
    direct_ready_loopback_ms: directReadyLoopbackMs ?? null,
    // Both sessions up (the client's opens with a stream waiting; the agent's was up) → direct path verified.
    direct_ready_p50_ms: 'skipped' in natlabReady ? null : round2(natlabReady.sessionOpenToDirect?.p50Ms ?? natlabReady.p50Ms),
    direct_ready_p90_ms: 'skipped' in natlabReady ? null : round2(natlabReady.sessionOpenToDirect?.p90Ms ?? natlabReady.p90Ms),
    // Of that: from the punch plan arriving to the verified QUIC connection (the rest is probing and asking).
    direct_ready_plan_p50_ms: 'skipped' in natlabReady ? null : round2(natlabReady.p50Ms),
    direct_ready_failures: 'skipped' in natlabReady ? null : (natlabReady.sessionOpenToDirect?.failures ?? natlabReady.failures),
    direct_ready_skipped: 'skipped' in natlabReady ? natlabReady.skipped : null,
    stream_open_p50_ms: Math.round(open.p50 * 1000) / 1000,
    stream_open_p99_ms: Math.round(open.p99 * 1000) / 1000,
    idle_sessions: idle.sessions,
    idle_session_bytes: Math.round(idle.bytesPerSession),
    open_cost_us_50x50: round2(openCost.small.cpuUsPerOpen),
    open_cost_us_500x500: round2(openCost.large.cpuUsPerOpen),
    open_cost_flatness: round2(openCost.flatness),
    ...('skipped' in abuse ? { abuse_victim_p99_open_ms: null, abuse_gateway_rss_mib: null, abuse_skipped: abuse.skipped } : { ...abuse, abuse_skipped: null }),
    ...('skipped' in reconcile
      ? {
          reconcile_seconds: null,
          reconcile_requests: null,
          reconcile_requests_by_verb: null,
          reconcile_incremental_ms: null,
          reconcile_objects: null,
          reconcile_skipped: reconcile.skipped,
        }
      : { ...reconcile, reconcile_skipped: null }),
    ...('skipped' in login
      ? { login_ms_p50: null, login_ms_p90: null, login_tries: null, login_failures: null, login_skipped: login.skipped }
      : { ...login, login_skipped: null }),
    ...('skipped' in idleRss
      ? {
          agent_idle_rss_mib: null,
          agent_relay_only_idle_rss_mib: null,
          gateway_idle_rss_mib: null,
          client_idle_rss_mib: null,
          idle_rss_from: null,
          idle_rss_wait_s: null,
          idle_rss_skipped: idleRss.skipped,
        }
      : { ...idleRss, idle_rss_skipped: null }),
    relay_from: values.bundles ? 'bundles' : 'sources',
    seconds: Math.round((performance.now() - started) / 100) / 10,
  };
  if (values.json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return;
  }
  const rows: Array<[string, string, string]> = [
    ['raw TCP, 1 stream', `${result.raw_tcp_mbps} MB/s`, 'baseline'],
    ['ssh -L, 1 stream', ssh === undefined ? `skipped (${sshSkipped})` : `${result.ssh_mbps} MB/s`, 'baseline'],
    ['relay (TLS), 1 stream', `${result.relay_mbps} MB/s`, `${result.relay_vs_tcp} × TCP, ${result.relay_vs_ssh ?? '-'} × ssh (target ≥ 0.5 × ssh)`],
    ['relay CPU per MB (client/gateway/agent)', `${result.relay_cpu_ms_per_mb.client} / ${result.relay_cpu_ms_per_mb.gateway} / ${result.relay_cpu_ms_per_mb.agent} ms`, 'what bounds the single stream on 2 cores'],
    [
      'direct (forward → QUIC → agent), 1 stream',
      direct === undefined ? 'skipped' : `${result.direct_mbps} MB/s`,
      `${result.direct_vs_relay ?? '-'} × relay (target ≥ 0.5), ${result.direct_vs_tcp ?? '-'} × TCP`,
    ],
    [
      'direct CPU per MB (client/agent)',
      directCpu ? `${result.direct_cpu_ms_per_mb?.client} / ${result.direct_cpu_ms_per_mb?.agent} ms` : 'skipped',
      'no gateway on the path',
    ],
    ['direct transport alone (QUIC endpoints)', transport === undefined ? 'skipped' : `${result.direct_transport_mbps} MB/s`, 'ceiling of the packet loop'],
    [
      'direct ready through cone NATs (NAT lab), session open → path up, p50 / p90',
      'skipped' in natlabReady ? `skipped (${natlabReady.skipped})` : `${result.direct_ready_p50_ms} / ${result.direct_ready_p90_ms} ms`,
      `target p50 ≤ 1000 ms; plan → QUIC ${result.direct_ready_plan_p50_ms ?? '-'} ms; ${result.direct_ready_failures ?? '-'} failures of 20; loopback ${result.direct_ready_loopback_ms ?? '-'} ms`,
    ],
    ['raw TCP, 16 streams', `${result.raw_tcp_x16_mbps} MB/s`, 'baseline'],
    ['ssh -L, 16 streams', ssh16 === undefined ? 'skipped' : `${result.ssh_x16_mbps} MB/s`, 'baseline'],
    ['relay (TLS), 16 streams', `${result.relay_x16_mbps} MB/s`, `${result.relay_x16_vs_ssh_x16 ?? '-'} × ssh`],
    ['direct, 16 streams', direct16 === undefined ? 'skipped' : `${result.direct_x16_mbps} MB/s`, `${result.direct_x16_vs_relay_x16 ?? '-'} × relay x16`],
    ['stream open p50 / p99', `${result.stream_open_p50_ms} / ${result.stream_open_p99_ms} ms`, 'target p50 ≤ 1 ms'],
    [`gateway RSS per idle session (${idle.sessions})`, `${(result.idle_session_bytes / 1024).toFixed(1)} KiB`, 'target ≤ 64 KiB'],
    [
      'CPU per OPEN, 500 agents + 500 policies',
      `${result.open_cost_us_500x500} µs`,
      `target ≤ 100 µs; ${result.open_cost_us_50x50} µs at 50+50 (flatness ${result.open_cost_flatness}, target ≈ 1)`,
    ],
    ...('skipped' in abuse ? [['abuse soak (issue 10)', `skipped (${abuse.skipped})`, ''] as [string, string, string]] : abuseSoakRows(abuse)),
    'skipped' in reconcile
      ? ['operator reconcile', `skipped (${reconcile.skipped})`, '']
      : [
          `operator reconcile (${reconcile.reconcile_objects.agents} agents + ${reconcile.reconcile_objects.policies} policies)`,
          `${reconcile.reconcile_seconds} s, ${reconcile.reconcile_requests} requests`,
          `${Object.entries(reconcile.reconcile_requests_by_verb).map(([verb, n]) => `${n} ${verb}`).join(', ')}; one policy edit ${reconcile.reconcile_incremental_ms} ms, ${reconcile.reconcile_incremental_requests} requests`,
        ],
    'skipped' in login
      ? ['narrowlink login', `skipped (${login.skipped})`, '']
      : [
          'narrowlink login p50 / p90 (process start → token cached)',
          `${login.login_ms_p50} / ${login.login_ms_p90} ms`,
          `target p50 ≤ 1000 ms; ${login.login_tries} tries, ${login.login_failures} failed`,
        ],
    ...('skipped' in idleRss ? [['idle RSS (agent, gateway, client)', `skipped (${idleRss.skipped})`, ''] as [string, string, string]] : idleRssRows(idleRss)),
  ];
  const w0 = Math.max(...rows.map((r) => r[0].length));
  const w1 = Math.max(...rows.map((r) => r[1].length));
  process.stdout.write(`\n${'measure'.padEnd(w0)}  ${'result'.padEnd(w1)}  note\n`);
  for (const [a, b, c] of rows) process.stdout.write(`${a.padEnd(w0)}  ${b.padEnd(w1)}  ${c}\n`);
  process.stdout.write(
    `(${result.seconds} s; ${streamBytes / MIB} MiB per single-stream run, median of ${rounds}; relay processes from the ${result.relay_from})\n`,
  );
}

main().catch(async (error: unknown) => {
  process.stderr.write(`bench failed: ${(error as Error).stack ?? String(error)}\n`);
  await stopAll();
  process.exit(1);
});
