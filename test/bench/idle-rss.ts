#!/usr/bin/env node
/**
 * Idle memory of the processes users run everywhere (issue 13): the agent sidecar (one per annotated Pod), the
 * gateway and the client's `narrowlink forward`, each a real process on loopback, measured as resident set size
 * (`VmRSS` of /proc/<pid>/status) a fixed time after start with nothing flowing.
 *
 *   gateway   TLS, NAT probe ports on (a free pair, not 3478), one agent of each kind below and one client attached
 *   agent     default mode (direct path on: UDP socket, NAT probing, its QUIC identity) with one exposed port
 *   agent (relay-only)   the same with --relay-only
 *   client    `narrowlink forward -o json -L 127.0.0.1:0:idle:echo` (auto mode, one listener)
 *
 * By default it runs what ships: the server bundles (`npm run build:server`, dist/server/) with the Node options
 * and environment of their runtime-deps.json (`--no-node-options`: neither), and the packaged CLI (`npm run build:cli`); both are built first. `--source` runs the
 * TypeScript entry points instead (Node strips types at run time), for the before/after comparison.
 * After reading RSS it sends bytes through the forward (client → gateway → agent → echo) so a number never comes
 * from a stack that was not really attached.
 *
 *   node test/bench/idle-rss.ts [--source] [--wait-ms 20000] [--no-build] [--out DIR] [--no-node-options]
 *                               [--heap-snapshot DIR] [--memory-map] [--flag COMPONENT=NODE_OPTION ...] [--json]
 *
 * `--out DIR` builds the server bundles into DIR (inside the repository, e.g. .tmp/rss) instead of dist/server, which
 * other people's running processes may use.`--memory-map` logs each process's anonymous and file-backed RSS and its largest
 * mappings (the `node` binary's pages are most of an idle process).
 *
 * `npm run bench` runs it (keys agent_idle_rss_mib, gateway_idle_rss_mib, client_idle_rss_mib).
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { generateSigningKeyPair, signToken } from '@narrowlink/protocol';
import { buildPackage, DIST_DIR as CLI_DIST_DIR } from '../../client-cli/build/build.ts';
import { buildServer, NODE_OPTIONS, RUNTIME_ENV, SERVER_DIST_DIR } from '../../scripts/build-server.ts';
import { ROOT, SCRIPTS } from '../helpers/paths.ts';
import { allowAllGatewayConfig } from '../helpers/gateway-config.ts';
import { freeUdpPortPair } from '../helpers/ports.ts';
import { type StartedProcess, startProcess } from '../helpers/processes.ts';
import { startEchoServer } from '../helpers/tcp-fixtures.ts';
import { makeTestCertificate } from '../helpers/tls.ts';

const MIB = 1024 * 1024;

/** Options of {@link measureIdleRss}. */
export interface IdleRssOptions {
  /** `bundle` (default): dist/server and the packaged CLI; `source`: the TypeScript entry points. */
  from?: 'bundle' | 'source';
  /** How long after the last process started to read RSS, ms (default 20000). */
  waitMs?: number;
  /** With `bundle`: build the bundles first (default true). */
  build?: boolean;
  /**
   * With `bundle`: the server bundles' directory, built into (default dist/server, which running processes of other
   * people may use: give a directory of your own, inside the repository so the external packages resolve).
   */
  serverDir?: string;
  /** With `bundle`: run each component with the Node options and environment runtime-deps.json names (default true). */
  nodeOptions?: boolean;
  /** More Node options per component, after the shipped ones (to measure a V8 flag before shipping it). */
  extraFlags?: Partial<Record<'agent' | 'gateway' | 'client', string[]>>;
  /** Write a V8 heap snapshot of each process into this directory after reading RSS (slow; analysis only). */
  heapSnapshotDir?: string;
  /** Also log where each process's RSS is (anonymous vs file pages, the largest mappings; analysis only). */
  memoryMap?: boolean;
  /** Progress lines. */
  log?: (line: string) => void;
}

/** Resident set sizes in MiB, read at the same moment. */
export interface IdleRss {
  agent_idle_rss_mib: number;
  agent_relay_only_idle_rss_mib: number;
  gateway_idle_rss_mib: number;
  client_idle_rss_mib: number;
  /** What ran: `bundle` or `source`. */
  idle_rss_from: 'bundle' | 'source';
  /** Seconds between start and the reading. */
  idle_rss_wait_s: number;
}

/** VmRSS of a live process, bytes. */
export async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = /VmRSS:\s+(\d+) kB/.exec(status)?.[1];
  if (kib === undefined) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kib) * 1024;
}

/** One round trip through a forward's local port: resolves when `bytes` came back intact. */
async function echoThrough(port: number, bytes: number): Promise<void> {
  const payload = Buffer.alloc(bytes, 'idle-rss');
  const socket = net.connect({ host: '127.0.0.1', port });
  const received: Buffer[] = [];
  let length = 0;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`echo through the forward: ${length} of ${bytes} bytes after 15 s`)), 15_000);
    socket.on('error', reject);
    socket.on('data', (chunk: Buffer) => {
      received.push(chunk);
      length += chunk.length;
      if (length >= bytes) {
        clearTimeout(timer);
        resolve();
      }
    });
    socket.write(payload);
  });
  socket.destroy();
  if (!Buffer.concat(received).subarray(0, bytes).equals(payload)) throw new Error('echo through the forward: bytes differ');
}

/** RssAnon/RssFile of /proc/<pid>/status and the mappings of /proc/<pid>/smaps holding the most resident memory. */
export async function memoryMap(pid: number, top = 8): Promise<string> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): string => `${name} ${((Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) / 1024).toFixed(1))} MiB`;
  const byMapping = new Map<string, number>();
  let current = '';
  for (const line of (await readFile(`/proc/${pid}/smaps`, 'utf8')).split('\n')) {
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (header) current = header[1] || '[anonymous]';
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) byMapping.set(current, (byMapping.get(current) ?? 0) + Number(rss[1]));
  }
  const largest = [...byMapping].sort((a, b) => b[1] - a[1]).slice(0, top);
  return [`${field('RssAnon')}, ${field('RssFile')}`, ...largest.map(([name, kib]) => `    ${(kib / 1024).toFixed(1).padStart(6)} MiB  ${name}`)].join('\n');
}

async function heapSnapshot(processes: Record<string, StartedProcess>, dir: string, log: (line: string) => void): Promise<void> {
  for (const [name, started] of Object.entries(processes)) {
    const pid = started.child.pid as number;
    const before = new Set(await readdir(dir));
    started.child.kill('SIGUSR2');
    const deadline = Date.now() + 60_000;
    for (;;) {
      const fresh = (await readdir(dir)).filter((f) => !before.has(f) && f.endsWith('.heapsnapshot') && f.includes(`.${pid}.`));
      if (fresh.length > 0) {
        // Written in pieces: wait until its size settles.
        const file = path.join(dir, fresh[0] as string);
        let size = -1;
        for (;;) {
          await new Promise((r) => setTimeout(r, 500));
          const next = (await readFile(file)).length;
          if (next === size && next > 0) break;
          size = next;
        }
        log(`  heap snapshot of ${name}: ${file}`);
        break;
      }
      if (Date.now() > deadline) throw new Error(`no heap snapshot from ${name} (pid ${pid})`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/** Starts the stack, waits, reads the four processes' RSS, checks the stack really carried bytes, stops it. */
export async function measureIdleRss(options: IdleRssOptions = {}): Promise<IdleRss> {
  const from = options.from ?? 'bundle';
  const waitMs = options.waitMs ?? 20_000;
  const log = options.log ?? (() => undefined);
  const serverDir = options.serverDir ?? SERVER_DIST_DIR;
  if (from === 'bundle' && options.build !== false) {
    log(`  building ${path.relative(ROOT, serverDir)} and the packaged CLI…`);
    await buildServer({ outDir: serverDir });
    await buildPackage();
  }
  const flags = (component: 'agent' | 'gateway' | 'client'): string[] => {
    const snapshot = [
      ...(options.heapSnapshotDir ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${options.heapSnapshotDir}`] : []),
      ...(options.extraFlags?.[component] ?? []),
    ];
    if (from === 'source' || options.nodeOptions === false || component === 'client') return snapshot;
    return [...NODE_OPTIONS[component], ...snapshot];
  };
  const entry = {
    gateway: from === 'bundle' ? path.join(serverDir, 'gateway.mjs') : SCRIPTS.gateway,
    agent: from === 'bundle' ? path.join(serverDir, 'agent.mjs') : SCRIPTS.agent,
    client: from === 'bundle' ? path.join(CLI_DIST_DIR, 'bin', 'narrowlink.mjs') : SCRIPTS.client,
  };

  const echo = await startEchoServer();
  const cert = await makeTestCertificate();
  const keys = await generateSigningKeyPair();
  const dir = cert.dir;
  const started: StartedProcess[] = [];
  // Children must not pick up the developer's settings or credentials.
  const env: Record<string, string | undefined> = { XDG_CONFIG_HOME: path.join(dir, 'xdg'), NODE_OPTIONS: undefined };
  for (const key of Object.keys(process.env)) if (key.startsWith('NARROWLINK_')) env[key] = undefined;
  // The environment the shipped component runs with (runtime-deps.json → env), as its Node options.
  const shippedEnv = (component: 'agent' | 'gateway' | 'client'): Record<string, string> =>
    from === 'source' || options.nodeOptions === false || component === 'client' ? {} : RUNTIME_ENV[component];
  const start = async (name: string, args: string[], extraEnv: Record<string, string> = {}): Promise<StartedProcess> => {
    const child = await startProcess(name, args, { env: { ...env, ...extraEnv }, cwd: ROOT, timeoutMs: 30_000 });
    started.push(child);
    return child;
  };
  try {
    const configFile = path.join(dir, 'gateway.json');
    await writeFile(
      configFile,
      allowAllGatewayConfig(
        keys.publicKeyPem,
        [
          { name: 'idle', expose: [{ name: 'echo', port: echo.port }] },
          { name: 'idle-relay', mode: 'relay', expose: [{ name: 'echo', port: echo.port }] },
        ],
        'bench',
      ),
    );
    const tokenFile = async (name: string, token: string): Promise<string> => {
      const file = path.join(dir, name);
      await writeFile(file, token, { mode: 0o600 });
      return file;
    };
    const gateway = await start('gateway', [
      ...flags('gateway'),
      entry.gateway,
      ...['--config', configFile, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--drain-ms', '500'],
      ...['--tls-cert', cert.certFile, '--tls-key', cert.keyFile, '--nat-probe-port', String(await freeUdpPortPair())],
    ], shippedEnv('gateway'));
    const url = String(gateway.readyLine.url);
    const agentArgs = async (name: string): Promise<string[]> => [
      ...['--gateway', url, '--ca-file', cert.caFile, '--expose', `echo=127.0.0.1:${echo.port}`],
      ...['--token-file', await tokenFile(`${name}.jwt`, await signToken(keys.privateKeyPem, { typ: 'agent', sub: `default/${name}`, ttlSeconds: 3600 }))],
    ];
    const agent = await start('agent', [...flags('agent'), entry.agent, ...(await agentArgs('idle'))], shippedEnv('agent'));
    const relayOnly = await start('agent (relay-only)', [...flags('agent'), entry.agent, ...(await agentArgs('idle-relay')), '--relay-only'], shippedEnv('agent'));
    const clientToken = await tokenFile('client.jwt', await signToken(keys.privateKeyPem, { typ: 'client', sub: 'bench', groups: ['bench'], ttlSeconds: 3600 }));
    const forward = await start('forward', [
      ...flags('client'),
      entry.client,
      ...['forward', '-o', 'json', '-L', '127.0.0.1:0:idle:echo', '--gateway', url, '--token-file', clientToken, '--ca-file', cert.caFile],
    ]);
    log(`  ${from}: gateway, agent, agent (relay-only) and forward started; reading RSS in ${waitMs / 1000} s…`);
    await new Promise((r) => setTimeout(r, waitMs));
    const processes = { agent, relayOnly, gateway, forward };
    const [agentRss, relayOnlyRss, gatewayRss, clientRss] = await Promise.all(Object.values(processes).map((p) => rssOf(p.child.pid as number)));
    if (options.memoryMap) for (const [name, p] of Object.entries(processes)) log(`  ${name}: ${await memoryMap(p.child.pid as number)}`);
    if (options.heapSnapshotDir) await heapSnapshot(processes, options.heapSnapshotDir, log);
    const listeners = forward.readyLine.listeners as Array<{ port: number }>;
    await echoThrough((listeners[0] as { port: number }).port, 64 * 1024);
    const mib = (bytes: number | undefined): number => Math.round(((bytes as number) / MIB) * 10) / 10;
    return {
      agent_idle_rss_mib: mib(agentRss),
      agent_relay_only_idle_rss_mib: mib(relayOnlyRss),
      gateway_idle_rss_mib: mib(gatewayRss),
      client_idle_rss_mib: mib(clientRss),
      idle_rss_from: from,
      idle_rss_wait_s: waitMs / 1000,
    };
  } finally {
    for (const child of started.reverse()) await child.stop('SIGTERM', 5000);
    await echo.close();
    await cert.remove();
  }
}

/** Rows for the bench table. */
export function idleRssRows(result: IdleRss): Array<[string, string, string]> {
  const what = result.idle_rss_from === 'bundle' ? 'bundles' : 'sources';
  return [
    [
      `agent idle RSS (${what}, ${result.idle_rss_wait_s} s after start)`,
      `${result.agent_idle_rss_mib} MiB`,
      `target ≤ 64 MiB (moonshot 48); relay-only ${result.agent_relay_only_idle_rss_mib} MiB`,
    ],
    [`gateway idle RSS (${what}, two agents, one client)`, `${result.gateway_idle_rss_mib} MiB`, 'target ≤ 96 MiB'],
    [`client idle RSS (forward, one listener)`, `${result.client_idle_rss_mib} MiB`, ''],
  ];
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      source: { type: 'boolean' },
      'wait-ms': { type: 'string' },
      'no-build': { type: 'boolean' },
      out: { type: 'string' },
      'no-node-options': { type: 'boolean' },
      'heap-snapshot': { type: 'string' },
      'memory-map': { type: 'boolean' },
      flag: { type: 'string', multiple: true },
      json: { type: 'boolean' },
    },
    strict: true,
  });
  const extraFlags: Partial<Record<'agent' | 'gateway' | 'client', string[]>> = {};
  for (const spec of values.flag ?? []) {
    const match = /^(agent|gateway|client)=(.+)$/.exec(spec);
    if (!match) throw new Error(`--flag wants COMPONENT=NODE_OPTION (agent, gateway or client), got "${spec}"`);
    const component = match[1] as 'agent' | 'gateway' | 'client';
    extraFlags[component] = [...(extraFlags[component] ?? []), match[2] as string];
  }
  const result = await measureIdleRss({
    extraFlags,
    from: values.source ? 'source' : 'bundle',
    waitMs: Number(values['wait-ms'] ?? 20_000),
    build: !values['no-build'],
    ...(values.out ? { serverDir: path.resolve(values.out) } : {}),
    nodeOptions: !values['no-node-options'],
    ...(values['heap-snapshot'] ? { heapSnapshotDir: path.resolve(values['heap-snapshot']) } : {}),
    ...(values['memory-map'] ? { memoryMap: true } : {}),
    log: (line) => process.stderr.write(`${line}\n`),
  });
  if (values.json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else for (const [a, b, c] of idleRssRows(result)) process.stdout.write(`${a.padEnd(58)} ${b.padEnd(10)} ${c}\n`);
}
