/**
 * Baselines for the relay benchmark: what the same transfer achieves over plain loopback TCP and over an
 * OpenSSH local forward (`ssh -L`). Functions return numbers and never print.
 *
 * Every transfer runs the source and the sink in their own child processes (test/bench/tcp-pump.ts), so
 * the measuring process's event loop is not on the data path. Throughput is in MB/s with MB = 10^6 bytes,
 * timed in the source from the first connect to the last sink reply (so it includes delivery to the sink).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePort } from '../helpers/ports.ts';
import { registerChild, type StartedProcess, startProcess, stopChild } from '../helpers/processes.ts';

const run = promisify(execFile);
const PUMP = fileURLToPath(new URL('./tcp-pump.ts', import.meta.url));
const SSHD = '/usr/sbin/sshd';
const MIB = 1024 * 1024;

/** Result of a timed transfer. */
export interface Throughput {
  /** Total payload bytes over all streams. */
  bytes: number;
  /** Concurrent streams. */
  streams: number;
  /** Milliseconds from the first connect to the last sink reply. */
  ms: number;
  /** Aggregate payload throughput in MB/s (10^6 bytes per second). */
  mbPerSec: number;
  /** True when every sink reply was a sha256 that matched what was sent (false for byte-count replies). */
  verified: boolean;
}

/** Returned instead of a measurement when a prerequisite is missing. */
export interface Skipped {
  /** Why the measurement did not run. */
  skipped: string;
}

/** A sink running in its own process. */
export interface SinkProcess {
  /** Port on 127.0.0.1. */
  port: number;
  /** The pump process (its `lines` include one `{"event":"received"}` per connection). */
  process: StartedProcess;
  close(): Promise<void>;
}

/**
 * Start a `tcp-pump.ts sink` child process on a random 127.0.0.1 port.
 *
 * @param options.hash - reply with the sha256 of the received bytes (default true); false replies with
 *   the byte count, which takes hashing CPU out of the measurement but verifies length only.
 */
export async function startSinkProcess(options: { hash?: boolean } = {}): Promise<SinkProcess> {
  const args = [PUMP, 'sink'];
  if (options.hash === false) args.push('--no-hash');
  const child = await startProcess('tcp-pump sink', args);
  const port = child.readyLine.port;
  if (typeof port !== 'number') throw new Error(`tcp-pump sink: ready line without a port: ${JSON.stringify(child.readyLine)}`);
  return {
    port,
    process: child,
    close: async () => {
      await child.stop();
    },
  };
}

/** Options for {@link pushThrough}. */
export interface PushOptions {
  /** Port on 127.0.0.1 the source connects to (a forward/relay that leads to the sink); default `sinkServer.port`. */
  connectPort?: number;
  /**
   * The sink at the far end: anything that reads to FIN and replies with the sha256 hex (or decimal byte
   * count) — {@link startSinkProcess}, or `startSinkServer()` from test/helpers/tcp-fixtures.ts.
   */
  sinkServer: { port: number };
  /** Bytes per stream. */
  bytes: number;
  /** Concurrent streams; default 1. */
  streams?: number;
  /** Seed of stream 0 (stream i uses seed + i); default 1. */
  seed?: number;
  /** Check sha256 replies against the expected hash (computed before timing); default true. */
  verify?: boolean;
  /** Give up after this many milliseconds; default 60000 + 0.1 ms per KB (i.e. allows ≥ 10 MB/s). */
  timeoutMs?: number;
}

/**
 * Run a `tcp-pump.ts source` child process that pushes `bytes` (per stream) through 127.0.0.1:`connectPort`
 * to `sinkServer`, and return the throughput it measured. Rejects if the transfer fails, times out, or the
 * sink's reply does not match what was sent.
 */
export async function pushThrough(options: PushOptions): Promise<Throughput> {
  const streams = options.streams ?? 1;
  const port = options.connectPort ?? options.sinkServer.port;
  const args = [PUMP, 'source', String(port), String(options.bytes), '--seed', String(options.seed ?? 1)];
  args.push('--streams', String(streams));
  if (options.verify === false) args.push('--no-verify');
  const timeoutMs = options.timeoutMs ?? 60_000 + (options.bytes * streams) / 10_000;
  const source = await startProcess('tcp-pump source', args, { readyEvent: 'done', timeoutMs });
  await source.exited;
  const line = source.readyLine;
  return {
    bytes: Number(line.bytes),
    streams: Number(line.streams),
    ms: Number(line.ms),
    mbPerSec: Number(line.mbPerSec),
    verified: line.verified === true,
  };
}

/**
 * Single-stream throughput over a plain loopback TCP connection between two processes.
 *
 * @param options.bytes - payload bytes.
 * @param options.verify - hash at the sink and compare (default true); false counts bytes only.
 */
export async function measureRawTcp(options: { bytes: number; verify?: boolean }): Promise<Throughput> {
  const verify = options.verify ?? true;
  const sink = await startSinkProcess({ hash: verify });
  try {
    return await pushThrough({ sinkServer: sink, bytes: options.bytes, verify });
  } finally {
    await sink.close();
  }
}

/**
 * `streams` concurrent transfers of `bytesPerStream` each through 127.0.0.1:`connectPort`, which must lead
 * to a sink that replies with a sha256 or byte count (a forward or relay in front of
 * {@link startSinkProcess}, or the sink itself). Returns aggregate throughput.
 *
 * @param streams - concurrent connections; default 16.
 * @param bytesPerStream - bytes per connection; default 16 MiB.
 */
export async function measureParallel(
  connectPort: number,
  streams = 16,
  bytesPerStream = 16 * MIB,
  options: { verify?: boolean } = {},
): Promise<Throughput> {
  return pushThrough({ connectPort, sinkServer: { port: connectPort }, bytes: bytesPerStream, streams, verify: options.verify });
}

/** A private `sshd` started by {@link startSshd}. */
export interface Sshd {
  /** Listen port on 127.0.0.1. */
  port: number;
  /** User the client key logs in as (the current user). */
  user: string;
  /**
   * Start `ssh -N -L 127.0.0.1:LOCAL:127.0.0.1:targetPort` against this sshd and wait until LOCAL accepts.
   * @param options.cipher - `ssh -c` value, e.g. `aes128-gcm@openssh.com`; default: OpenSSH's choice.
   */
  forward(targetPort: number, options?: { cipher?: string }): Promise<SshForward>;
  /** Stop every forward, then sshd, and delete the temp dir. */
  stop(): Promise<void>;
}

/** One `ssh -L` client. */
export interface SshForward {
  /** Port on 127.0.0.1 that forwards to the target. */
  localPort: number;
  stop(): Promise<void>;
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}

function collectStderr(child: ChildProcess): () => string {
  let text = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    text = (text + chunk.toString('utf8')).slice(-4000);
  });
  return () => text.trim();
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Poll until 127.0.0.1:`port` accepts, failing early if `child` exits. */
async function waitUntilAccepting(what: string, port: number, child: ChildProcess, stderr: () => string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${what} exited (code ${child.exitCode}, signal ${child.signalCode}): ${stderr()}`);
    }
    if (await canConnect(port)) return;
    await sleep(25);
  }
  throw new Error(`${what} did not accept on 127.0.0.1:${port} within ${timeoutMs} ms: ${stderr()}`);
}

/**
 * Start a private OpenSSH server on a random 127.0.0.1 port with a temporary ed25519 host key and a
 * temporary client key in its authorized keys (public-key login as the current user only).
 *
 * @returns the server, or `{ skipped }` when `/usr/sbin/sshd`, `ssh` or `ssh-keygen` is missing, or when
 *   sshd's privilege-separation dir `/run/sshd` is missing and cannot be created (not root).
 */
export async function startSshd(): Promise<Sshd | Skipped> {
  if (!(await exists(SSHD))) return { skipped: 'openssh-server not installed' };
  for (const tool of ['ssh', 'ssh-keygen']) {
    try {
      await run('sh', ['-c', `command -v ${tool}`]);
    } catch {
      return { skipped: `${tool} not found (openssh-client not installed)` };
    }
  }
  // Compiled-in privilege separation dir; Debian creates it only when the ssh service starts.
  if (!(await exists('/run/sshd'))) {
    try {
      await mkdir('/run/sshd', { mode: 0o755 });
    } catch (err) {
      return { skipped: `/run/sshd missing and cannot be created: ${(err as Error).message}` };
    }
  }

  const dir = await mkdtemp(path.join(os.tmpdir(), 'nl-sshd-'));
  const forwards = new Set<SshForward>();
  let sshd: ChildProcess | undefined;
  const stop = async (): Promise<void> => {
    await Promise.all([...forwards].map((f) => f.stop()));
    if (sshd !== undefined) await stopChild(sshd, 'SIGTERM', 3000);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const hostKey = path.join(dir, 'host_ed25519');
    const clientKey = path.join(dir, 'client_ed25519');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'nl-bench-host', '-f', hostKey]);
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'nl-bench-client', '-f', clientKey]);
    const authorizedKeys = path.join(dir, 'authorized_keys');
    await writeFile(authorizedKeys, await readFile(`${clientKey}.pub`, 'utf8'), { mode: 0o600 });
    const port = await freePort();
    const user = os.userInfo().username;
    const config = path.join(dir, 'sshd_config');
    await writeFile(
      config,
      [
        `Port ${port}`,
        'ListenAddress 127.0.0.1',
        `HostKey ${hostKey}`,
        `PidFile ${path.join(dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${authorizedKeys}`,
        `AllowUsers ${user}`,
        'PermitRootLogin prohibit-password',
        'PubkeyAuthentication yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'StrictModes no',
        'UsePAM no',
        'UseDNS no',
        'PrintMotd no',
        'X11Forwarding no',
        'AllowTcpForwarding local',
        'MaxSessions 128',
        'MaxStartups 128',
        'LogLevel ERROR',
        '',
      ].join('\n'),
    );
    sshd = spawn(SSHD, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    registerChild(sshd);
    const sshdStderr = collectStderr(sshd);
    await waitUntilAccepting('sshd', port, sshd, sshdStderr);

    const forward = async (targetPort: number, options: { cipher?: string } = {}): Promise<SshForward> => {
      const localPort = await freePort();
      const args = ['-F', '/dev/null', '-N', '-i', clientKey, '-p', String(port)];
      for (const option of [
        'BatchMode=yes',
        'StrictHostKeyChecking=no',
        'UserKnownHostsFile=/dev/null',
        'IdentitiesOnly=yes',
        'ExitOnForwardFailure=yes',
        'LogLevel=ERROR',
      ]) {
        args.push('-o', option);
      }
      if (options.cipher !== undefined) args.push('-c', options.cipher);
      args.push('-L', `127.0.0.1:${localPort}:127.0.0.1:${targetPort}`, `${user}@127.0.0.1`);
      const ssh = spawn('ssh', args, { stdio: ['ignore', 'ignore', 'pipe'] });
      registerChild(ssh);
      const sshStderr = collectStderr(ssh);
      const handle: SshForward = {
        localPort,
        stop: async () => {
          forwards.delete(handle);
          await stopChild(ssh, 'SIGTERM', 3000);
        },
      };
      forwards.add(handle);
      try {
        // The probe opens (and immediately closes) one channel to the target; sinks answer it harmlessly.
        await waitUntilAccepting('ssh -L', localPort, ssh, sshStderr);
      } catch (err) {
        await handle.stop();
        throw err;
      }
      return handle;
    };
    return { port, user, forward, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * Throughput of an OpenSSH local forward: private sshd + `ssh -L` on loopback, source → forward → sink,
 * each in its own process. sshd, ssh and a sink started here are always stopped before returning.
 *
 * @param options.bytes - bytes per stream.
 * @param options.targetPort - forward to this existing sink (must reply with sha256 hex or byte count);
 *   default: start a {@link startSinkProcess}.
 * @param options.streams - concurrent streams over the one ssh connection; default 1.
 * @param options.cipher - `ssh -c` value; default OpenSSH's choice (chacha20-poly1305 on OpenSSH 9).
 * @param options.verify - hash at the sink and compare; default true.
 * @returns the measurement, or `{ skipped }` when OpenSSH is unavailable.
 */
export async function measureSshForward(options: {
  bytes: number;
  targetPort?: number;
  streams?: number;
  cipher?: string;
  verify?: boolean;
}): Promise<(Throughput & { cipher: string }) | Skipped> {
  const verify = options.verify ?? true;
  const sshd = await startSshd();
  if ('skipped' in sshd) return sshd;
  let sink: SinkProcess | undefined;
  try {
    let targetPort = options.targetPort;
    if (targetPort === undefined) {
      sink = await startSinkProcess({ hash: verify });
      targetPort = sink.port;
    }
    const forward = await sshd.forward(targetPort, { cipher: options.cipher });
    const result = await pushThrough({
      connectPort: forward.localPort,
      sinkServer: { port: targetPort },
      bytes: options.bytes,
      streams: options.streams,
      verify,
    });
    return { ...result, cipher: options.cipher ?? 'default' };
  } finally {
    await sshd.stop();
    await sink?.close();
  }
}
