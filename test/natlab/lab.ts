/**
 * A NAT lab in Linux network namespaces (topology and facts: ../../../shared/notes/nat-lab.md), built and removed
 * by the tests. Traffic stays inside the namespaces; addresses are documentation ranges.
 *
 *               192.0.2.1/32 (+ 192.0.2.2/32) on lo: the gateway
 *                                 [pub]
 *            198.51.100.1/24 /          \ 203.0.113.1/24
 *     198.51.100.2/24 [nat1]             [nat2] 203.0.113.2/24        outside: MASQUERADE (+ --random-fully),
 *          10.1.0.1/24 |                    | 10.2.0.1/24              drop NEW,INVALID inbound (home router)
 *      [h1] 10.1.0.2  [h1b] 10.1.0.3      [h2] 10.2.0.2
 *
 * Namespace names carry a per-run prefix (`nlab<pid>-<n>-`), so parallel runs never collide; every lab is
 * removed by `destroy()`, on process exit and on SIGINT/SIGTERM/SIGHUP, and labs left by dead runs are removed
 * when the next one starts. Needs root, iproute2, iptables and conntrack (Debian: iproute2 iptables conntrack).
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { registerChild, stopChild } from '../helpers/processes.ts';

export type NatMode = 'masquerade' | 'random-fully' | 'udp-blocked';
export type LabHost = 'pub' | 'nat1' | 'nat2' | 'h1' | 'h1b' | 'h2';

export interface LabOptions {
  /** NAT of the router in front of h1 (and h1b); default masquerade. */
  nat1?: NatMode;
  /** NAT of the router in front of h2; default masquerade. */
  nat2?: NatMode;
  /** A second host on h1's LAN (10.1.0.3), behind nat1. */
  h1b?: boolean;
  /** Also put 192.0.2.2/32 on pub's lo (a second gateway address). */
  secondGatewayAddress?: boolean;
  /** Home-router inbound filtering (drop NEW,INVALID on the outside interface); default true. */
  inboundFilter?: boolean;
}

export const LAB = {
  gateway: '192.0.2.1',
  gatewaySecond: '192.0.2.2',
  pubNat1: '198.51.100.1',
  nat1Outside: '198.51.100.2',
  nat1Inside: '10.1.0.1',
  pubNat2: '203.0.113.1',
  nat2Outside: '203.0.113.2',
  nat2Inside: '10.2.0.1',
  h1: '10.1.0.2',
  h1b: '10.1.0.3',
  h2: '10.2.0.2',
} as const;

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** A node process inside a namespace: stdout parsed as JSON lines. */
export interface LabProcess {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  stderr: string[];
  waitFor(predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Resolves with the exit code once the process is gone. */
  exited: Promise<number | null>;
  stop(): Promise<number | null>;
}

export interface Lab {
  prefix: string;
  options: Required<LabOptions>;
  /** The real namespace name of a host. */
  ns(host: LabHost): string;
  /** Runs a command inside a namespace; rejects on a non-zero exit unless `allowFailure`. */
  exec(host: LabHost, argv: string[], options?: { allowFailure?: boolean; input?: string; timeoutMs?: number }): Promise<ExecResult>;
  /** Starts `node` (this very binary) inside a namespace. */
  spawnNode(host: LabHost, scriptArgs: string[], env?: Record<string, string | undefined>): LabProcess;
  /** Runs a node script inside a namespace to completion (stdout, stderr, exit code). */
  runNode(host: LabHost, scriptArgs: string[], env?: Record<string, string | undefined>, timeoutMs?: number): Promise<ExecResult>;
  /** Forgets every NAT mapping of a router (`conntrack -F`). */
  conntrackFlush(host: LabHost): Promise<void>;
  /** The router's conntrack table (`conntrack -L -p udp`), for the record. */
  conntrackList(host: LabHost): Promise<string>;
  /** Stops the processes started here and deletes the namespaces. Idempotent. */
  destroy(): Promise<void>;
}

function run(file: string, args: string[], options: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ExecResult> {
  return new Promise((resolve) => {
    const child = execFile(file, args, { timeout: options.timeoutMs ?? 10_000, maxBuffer: 16 * 1024 * 1024, env: options.env ?? process.env }, (error, stdout, stderr) => {
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? ((error as { code: number }).code) : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) || (error && code === 1 ? error.message : '') });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

async function check(file: string, args: string[], input?: string): Promise<string> {
  const result = await run(file, args, input === undefined ? {} : { input });
  if (result.code !== 0) throw new Error(`${file} ${args.join(' ')} failed (${result.code}): ${result.stderr.trim()}`);
  return result.stdout;
}

/**
 * Whether the lab can run here: root, iproute2, and network namespaces that can be created. Anything else
 * (iptables or conntrack missing as root) is a setup error that {@link createLab} reports loudly.
 */
export async function labAvailable(): Promise<true | { skipped: string }> {
  if (process.platform !== 'linux') return { skipped: `needs Linux network namespaces, this is ${process.platform}` };
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return { skipped: 'needs root (network namespaces, iptables)' };
  const ip = await run('ip', ['-V']);
  if (ip.code !== 0) return { skipped: `no usable "ip" (iproute2): ${ip.stderr.trim() || 'not found'}` };
  const probe = `nlab${process.pid}-probe`;
  const added = await run('ip', ['netns', 'add', probe]);
  if (added.code !== 0) return { skipped: `cannot create a network namespace: ${added.stderr.trim()}` };
  await run('ip', ['netns', 'del', probe]);
  return true;
}

const live = new Set<{ prefix: string; namespaces: string[]; children: Set<ChildProcess> }>();
let hooksInstalled = false;
let labCounter = 0;

function destroySync(entry: { namespaces: string[]; children: Set<ChildProcess> }): void {
  for (const child of entry.children) {
    try {
      child.kill('SIGKILL');
    } catch {
      // gone
    }
  }
  for (const ns of entry.namespaces) {
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    } catch {
      // already gone
    }
  }
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const entry of live) destroySync(entry);
    live.clear();
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = (): void => {
      for (const entry of live) destroySync(entry);
      live.clear();
      process.off(signal, handler);
      // Keep the default action (terminate) unless someone else handles the signal.
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    };
    process.on(signal, handler);
  }
}

/** Removes namespaces of earlier runs whose process is gone (a crash or SIGKILL skips every hook). */
async function removeStaleLabs(): Promise<void> {
  const list = await run('ip', ['netns', 'list']);
  for (const line of list.stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const match = /^nlab(\d+)-/.exec(name);
    if (!match) continue;
    const pid = Number(match[1]);
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch (error) {
      alive = (error as { code?: string }).code === 'EPERM';
    }
    if (alive) continue;
    // Its processes (a gateway left behind by a SIGKILLed run) would outlive the namespace's name.
    const pids = await run('ip', ['netns', 'pids', name]);
    for (const pid of pids.stdout.split('\n').map(Number).filter((p) => Number.isInteger(p) && p > 0)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await run('ip', ['netns', 'del', name]);
  }
}

function natRules(mode: NatMode, inboundFilter: boolean): string {
  const lines = ['*nat', `-A POSTROUTING -o out -j MASQUERADE${mode === 'random-fully' ? ' --random-fully' : ''}`, 'COMMIT', '*filter'];
  // Blocked UDP: nothing crosses the router either way (TCP, and so the gateway session, still works).
  if (mode === 'udp-blocked') lines.push('-A FORWARD -p udp -j DROP');
  if (inboundFilter) {
    lines.push('-A INPUT -i out -m conntrack --ctstate NEW,INVALID -j DROP');
    lines.push('-A FORWARD -i out -m conntrack --ctstate NEW,INVALID -j DROP');
  }
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** Builds the topology; on any failure removes what it made and rejects. */
export async function createLab(options: LabOptions = {}): Promise<Lab> {
  installHooks();
  await removeStaleLabs();
  for (const tool of ['iptables-restore', 'conntrack']) {
    const found = await run('sh', ['-c', `command -v ${tool}`]);
    if (found.code !== 0) throw new Error(`nat lab: "${tool}" is not installed (Debian packages: iptables conntrack iproute2)`);
  }
  const opts: Required<LabOptions> = {
    nat1: options.nat1 ?? 'masquerade',
    nat2: options.nat2 ?? 'masquerade',
    h1b: options.h1b ?? false,
    secondGatewayAddress: options.secondGatewayAddress ?? false,
    inboundFilter: options.inboundFilter ?? true,
  };
  const prefix = `nlab${process.pid}-${++labCounter}-`;
  const hosts: LabHost[] = ['pub', 'nat1', 'nat2', 'h1', 'h2', ...(opts.h1b ? (['h1b'] as const) : [])];
  const ns = (host: LabHost): string => {
    if (!hosts.includes(host)) throw new Error(`nat lab: no host ${host} in this lab`);
    return `${prefix}${host}`;
  };
  const entry = { prefix, namespaces: hosts.map((h) => `${prefix}${h}`), children: new Set<ChildProcess>() };
  live.add(entry);

  const exec: Lab['exec'] = async (host, argv, execOptions = {}) => {
    const result = await run('ip', ['netns', 'exec', ns(host), ...argv], {
      ...(execOptions.input !== undefined ? { input: execOptions.input } : {}),
      ...(execOptions.timeoutMs !== undefined ? { timeoutMs: execOptions.timeoutMs } : {}),
    });
    if (result.code !== 0 && !execOptions.allowFailure) throw new Error(`nat lab: [${host}] ${argv.join(' ')} failed (${result.code}): ${result.stderr.trim()}`);
    return result;
  };

  try {
    // Namespaces and links in one batch; veth ends are created directly inside their namespaces, so their
    // short names never meet in the root namespace.
    const root = hosts.map((h) => `netns add ${ns(h)}`);
    root.push(`link add pub-n1 netns ${ns('pub')} type veth peer name out netns ${ns('nat1')}`);
    root.push(`link add pub-n2 netns ${ns('pub')} type veth peer name out netns ${ns('nat2')}`);
    root.push(`link add in netns ${ns('nat1')} type veth peer name eth0 netns ${ns('h1')}`);
    if (opts.h1b) root.push(`link add in-b netns ${ns('nat1')} type veth peer name eth0 netns ${ns('h1b')}`);
    root.push(`link add in netns ${ns('nat2')} type veth peer name eth0 netns ${ns('h2')}`);
    await check('ip', ['-batch', '-'], `${root.join('\n')}\n`);

    const perHost: Record<string, string[]> = {
      pub: [
        'link set lo up',
        `addr add ${LAB.gateway}/32 dev lo`,
        ...(opts.secondGatewayAddress ? [`addr add ${LAB.gatewaySecond}/32 dev lo`] : []),
        `addr add ${LAB.pubNat1}/24 dev pub-n1`,
        'link set pub-n1 up',
        `addr add ${LAB.pubNat2}/24 dev pub-n2`,
        'link set pub-n2 up',
      ],
      nat1: [
        'link set lo up',
        `addr add ${LAB.nat1Outside}/24 dev out`,
        'link set out up',
        // With h1b the inside is a bridge (one LAN, one switch); h1 <-> h1b never crosses iptables.
        ...(opts.h1b
          ? ['link add br0 type bridge', 'link set in master br0', 'link set in-b master br0', 'link set in up', 'link set in-b up', `addr add ${LAB.nat1Inside}/24 dev br0`, 'link set br0 up']
          : [`addr add ${LAB.nat1Inside}/24 dev in`, 'link set in up']),
        `route add default via ${LAB.pubNat1}`,
      ],
      nat2: ['link set lo up', `addr add ${LAB.nat2Outside}/24 dev out`, 'link set out up', `addr add ${LAB.nat2Inside}/24 dev in`, 'link set in up', `route add default via ${LAB.pubNat2}`],
      h1: ['link set lo up', `addr add ${LAB.h1}/24 dev eth0`, 'link set eth0 up', `route add default via ${LAB.nat1Inside}`],
      h2: ['link set lo up', `addr add ${LAB.h2}/24 dev eth0`, 'link set eth0 up', `route add default via ${LAB.nat2Inside}`],
      h1b: ['link set lo up', `addr add ${LAB.h1b}/24 dev eth0`, 'link set eth0 up', `route add default via ${LAB.nat1Inside}`],
    };
    await Promise.all(hosts.map((h) => check('ip', ['-n', ns(h), '-batch', '-'], `${(perHost[h] as string[]).join('\n')}\n`)));
    await Promise.all((['pub', 'nat1', 'nat2'] as const).map((h) => exec(h, ['sysctl', '-qw', 'net.ipv4.ip_forward=1'])));
    await exec('nat1', ['iptables-restore'], { input: natRules(opts.nat1, opts.inboundFilter) });
    await exec('nat2', ['iptables-restore'], { input: natRules(opts.nat2, opts.inboundFilter) });
  } catch (error) {
    destroySync(entry);
    live.delete(entry);
    throw error;
  }

  const spawnNode: Lab['spawnNode'] = (host, scriptArgs, env = {}) => {
    const child = spawn('ip', ['netns', 'exec', ns(host), process.execPath, ...scriptArgs], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    registerChild(child);
    entry.children.add(child);
    const lines: Record<string, unknown>[] = [];
    const stderr: string[] = [];
    const listeners = new Set<(line: Record<string, unknown>) => void>();
    let pending = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      pending += chunk.toString('utf8');
      let newline = pending.indexOf('\n');
      while (newline >= 0) {
        const text = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        newline = pending.indexOf('\n');
        let line: Record<string, unknown>;
        try {
          const parsed: unknown = JSON.parse(text);
          line = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : { text };
        } catch {
          line = { text };
        }
        lines.push(line);
        for (const listener of listeners) listener(line);
      }
    });
    child.stderr?.on('data', (chunk: Buffer) => stderr.push(...chunk.toString('utf8').split('\n').filter(Boolean)));
    const exited = new Promise<number | null>((resolve) => {
      child.once('exit', (code) => {
        entry.children.delete(child);
        resolve(code);
      });
      child.once('error', () => resolve(null));
    });
    const waitFor: LabProcess['waitFor'] = (predicate, timeoutMs = 10_000) => {
      const found = lines.find(predicate);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const listener = (line: Record<string, unknown>): void => {
          if (!predicate(line)) return;
          clearTimeout(timer);
          listeners.delete(listener);
          resolve(line);
        };
        const timer = setTimeout(() => {
          listeners.delete(listener);
          reject(new Error(`nat lab: [${host}] no matching line within ${timeoutMs} ms; stdout: ${lines.slice(-10).map((l) => JSON.stringify(l)).join('\n')}\nstderr: ${stderr.slice(-10).join('\n')}`));
        }, timeoutMs);
        listeners.add(listener);
        void exited.then((code) => {
          if (!listeners.has(listener)) return;
          clearTimeout(timer);
          listeners.delete(listener);
          reject(new Error(`nat lab: [${host}] exited (${code}) before a matching line; stderr: ${stderr.slice(-10).join('\n')}`));
        });
      });
    };
    return { child, lines, stderr, waitFor, exited, stop: () => stopChild(child, 'SIGTERM', 3000) };
  };

  const runNode: Lab['runNode'] = (host, scriptArgs, env = {}, timeoutMs = 20_000) =>
    run('ip', ['netns', 'exec', ns(host), process.execPath, ...scriptArgs], { timeoutMs, env: { ...process.env, ...env } });

  let destroyed = false;
  return {
    prefix,
    options: opts,
    ns,
    exec,
    spawnNode,
    runNode,
    conntrackFlush: async (host) => {
      await exec(host, ['conntrack', '-F'], { allowFailure: true });
    },
    conntrackList: async (host) => (await exec(host, ['conntrack', '-L', '-p', 'udp'], { allowFailure: true })).stdout,
    destroy: async () => {
      if (destroyed) return;
      destroyed = true;
      await Promise.all([...entry.children].map((child) => stopChild(child, 'SIGTERM', 2000)));
      destroySync(entry);
      live.delete(entry);
    },
  };
}
