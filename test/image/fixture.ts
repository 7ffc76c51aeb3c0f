/**
 * Helpers for the image tier (issue 13): build the image with deploy/build-image.sh, unpack it the way a runtime
 * would (umoci unpack of the OCI archive: layers in order, owners and modes as stored), and run commands from the
 * unpacked root filesystem as the image's user, without a container engine (a private mount and PID namespace with
 * the host's /dev and a fresh /proc, then chroot).
 *
 *   const built = await buildImage(['--out', file]);   // { skipped } when the machine cannot build (exit 3)
 *   const rootfs = unpackImage(built.ociArchive, dir);
 *   const r = runInImage(rootfs, ['node', 'dist/server/agent.mjs', '--help']);
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { globSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import path from 'node:path';
import { readManifest, ROOT } from '../../deploy/image/stage.ts';
import { registerChild } from '../helpers/processes.ts';

/** The script's JSON line. */
export interface BuiltImage {
  image: string;
  archive: string;
  ociArchive: string;
  /** sha256 of the OCI manifest (what a registry push keeps). */
  digest: string;
  /** sha256 of the image config (the image ID in every format). */
  imageId: string;
  uncompressedBytes: number;
  compressedBytes: number;
  pauseImage: string;
  pauseArchive: string;
}

/** Exit code of deploy/build-image.sh meaning "this machine cannot build the image". */
const EXIT_SKIPPED = 3;

/** Generous: a cold build runs mmdebstrap (≈ 3 min idle, 10 min on a loaded 2-core machine). */
export const BUILD_TIMEOUT_MS = 30 * 60_000;

/**
 * Runs deploy/build-image.sh with `args`; resolves with its JSON line, or `{ skipped }` (the printed reason) when it
 * exits 3. Its stderr (progress) is passed through so a slow cold build shows what it is doing.
 */
export function buildImage(args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<BuiltImage | { skipped: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [path.join(ROOT, 'deploy', 'build-image.sh'), ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timer = setTimeout(() => child.kill('SIGTERM'), BUILD_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === EXIT_SKIPPED) {
        resolve({ skipped: stdout.trim() || 'image: SKIPPED (exit 3)' });
        return;
      }
      if (code !== 0) {
        reject(new Error(`deploy/build-image.sh exited ${code}:\n${stderr.slice(-4000)}`));
        return;
      }
      const line = stdout.trim().split('\n').at(-1) ?? '';
      try {
        resolve(JSON.parse(line) as BuiltImage);
      } catch (err) {
        reject(new Error(`deploy/build-image.sh printed no JSON line: ${stdout}`, { cause: err }));
      }
    });
  });
}

/** Unpacks an OCI archive into `dir` (dir/layout, dir/bundle/rootfs); returns the root filesystem's path. */
export function unpackImage(ociArchive: string, dir: string): string {
  const layout = path.join(dir, 'layout');
  const bundle = path.join(dir, 'bundle');
  mkdirSync(layout, { recursive: true });
  execFileSync('tar', ['-xf', ociArchive, '-C', layout]);
  const tag = readIndexTag(layout);
  execFileSync('umoci', ['unpack', '--image', `${layout}:${tag}`, bundle], { stdio: ['ignore', 'ignore', 'pipe'] });
  return path.join(bundle, 'rootfs');
}

function readIndexTag(layout: string): string {
  const index = JSON.parse(readFileSync(path.join(layout, 'index.json'), 'utf8')) as {
    manifests: { annotations?: Record<string, string> }[];
  };
  const tag = index.manifests[0]?.annotations?.['org.opencontainers.image.ref.name'];
  if (tag === undefined) throw new Error(`${layout}/index.json names no tag`);
  return tag;
}

/** Result of {@link runInImage}. */
export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `argv` in the unpacked root filesystem as the image would: as the manifest's user (unless `user` is given),
 * in its working directory, with only its environment. The mounts live in a private mount namespace and vanish with
 * the process; the network is the host's (loopback is enough for the tests).
 */
export function runInImage(rootfs: string, argv: string[], options: { user?: string; timeoutMs?: number; env?: Record<string, string> } = {}): RunResult {
  const manifest = readManifest();
  const user = options.user ?? `${manifest.user.uid}:${manifest.user.gid}`;
  const env = Object.entries({ ...manifest.env, HOME: manifest.user.home, ...options.env }).map(([k, v]) => `${k}=${v}`);
  const inner = 'set -e; r="$1"; u="$2"; shift 2; mount --rbind /dev "$r/dev"; mount -t proc proc "$r/proc"; exec chroot --userspec="$u" "$r" "$@"';
  const chrooted = ['/usr/bin/env', '-i', ...env, '/bin/sh', '-c', 'cd "$0" && exec "$@"', manifest.workdir, ...argv];
  const r = spawnSync('unshare', ['--mount', '--pid', '--fork', '--kill-child', 'sh', '-c', inner, 'sh', rootfs, user, ...chrooted], {
    timeout: options.timeoutMs ?? 60_000,
    encoding: 'utf8',
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A local OCI registry (Debian's docker-registry, distribution 2.8) on 127.0.0.1, plain HTTP. */
export interface LocalRegistry {
  /** `127.0.0.1:PORT` */
  host: string;
  stop(): void;
}

/**
 * Starts a registry for the `--push` check, installing Debian's docker-registry first when it is missing (as the
 * build script installs its own tools). Returns `{ skipped }` where that is impossible (no apt-get, not root).
 */
export async function startRegistry(dir: string): Promise<LocalRegistry | { skipped: string }> {
  const binary = '/usr/bin/docker-registry';
  if (spawnSync('test', ['-x', binary]).status !== 0) {
    if (process.getuid?.() !== 0) return { skipped: 'push check: SKIPPED (docker-registry missing and not root to install it)' };
    const r = spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'docker-registry'], { encoding: 'utf8', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    if (r.status !== 0) return { skipped: `push check: SKIPPED (apt-get install docker-registry failed: ${r.stderr.trim().split('\n').at(-1)})` };
  }
  const port = await new Promise<number>((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port: p } = server.address() as AddressInfo;
      server.close(() => resolve(p));
    });
  });
  mkdirSync(path.join(dir, 'storage'), { recursive: true });
  const config = path.join(dir, 'registry.yml');
  writeFileSync(config, `version: 0.1\nlog: { level: error }\nstorage: { filesystem: { rootdirectory: ${path.join(dir, 'storage')} } }\nhttp: { addr: 127.0.0.1:${port} }\n`);
  // Debian's package also installs a system service; this one is ours alone (own config, port and storage).
  const child = spawn(binary, ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const host = `127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ok = await fetch(`http://${host}/v2/`).then((r) => r.ok, () => false);
    if (ok) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`docker-registry did not start: ${stderr.slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { host, stop: () => child.kill('SIGTERM') };
}

/**
 * A hash of everything the app layer is built from: the workspaces' sources and manifests, the build scripts,
 * deploy/ and the lock file. Two builds are only expected to match when it did not change between them (other work
 * in the same tree may edit sources while a test builds twice).
 */
export function appInputsFingerprint(): string {
  const hash = createHash('sha256');
  const files = globSync(
    ['{protocol,peer-link,kube,gateway,agent-sidecar,client-cli,operator}/{package.json,src/**/*.ts}', 'client-cli/build/*.ts', 'scripts/build-server.ts', 'deploy/**', 'package-lock.json'],
    { cwd: ROOT },
  )
    .filter((f) => !f.endsWith('.test.ts'))
    .sort();
  for (const file of files) {
    const full = path.join(ROOT, file);
    if (!statSync(full).isFile()) continue;
    hash.update(file).update('\0').update(readFileSync(full)).update('\0');
  }
  return hash.digest('hex');
}

/** A containerd of our own (private root, state and socket; no CRI plugin), for `ctr images import` checks. */
export interface PrivateContainerd {
  /** Runs `ctr -a <socket> -n <namespace> ...args`; returns stdout. */
  ctr(namespace: string, ...args: string[]): string;
  stop(): Promise<void>;
}

/** Starts {@link PrivateContainerd} in `dir`, or `{ skipped }` when containerd/ctr are not installed. */
export async function startContainerd(dir: string): Promise<PrivateContainerd | { skipped: string }> {
  if (spawnSync('sh', ['-c', 'command -v containerd && command -v ctr']).status !== 0) {
    return { skipped: 'ctr import check: SKIPPED (containerd is not installed; the cluster tier installs it)' };
  }
  mkdirSync(dir, { recursive: true });
  const socket = path.join(dir, 'containerd.sock');
  // Nothing outside dir: no CRI (no CNI, no sandbox image), its own content store, snapshots and plugin dir.
  writeFileSync(
    path.join(dir, 'config.toml'),
    `version = 2\nroot = "${dir}/root"\nstate = "${dir}/state"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n` +
      `[grpc]\n  address = "${socket}"\n[ttrpc]\n  address = "${socket}.ttrpc"\n[plugins."io.containerd.internal.v1.opt"]\n  path = "${dir}/opt"\n`,
  );
  const child = spawn('containerd', ['--config', path.join(dir, 'config.toml')], { stdio: 'ignore' });
  const ctr = (namespace: string, ...args: string[]) => execFileSync('ctr', ['-a', socket, '-n', namespace, ...args], { encoding: 'utf8' });
  const deadline = Date.now() + 20_000;
  while (spawnSync('ctr', ['-a', socket, 'version']).status !== 0) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`containerd did not start (exit ${child.exitCode})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    ctr,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

/** A long-running process started from the unpacked image by {@link startInImage}. */
export interface ImageProcess {
  child: ChildProcess;
  /** The first stdout JSON line whose `event` is `ready`. */
  readyLine: Record<string, unknown>;
  /** Everything it printed so far (for failure messages). */
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts `argv` from the unpacked image like {@link runInImage} (its user, workdir and environment; the host's
 * network, so loopback is shared with the test) and resolves once it prints a JSON line with `"event":"ready"`.
 */
export function startInImage(rootfs: string, argv: string[], timeoutMs = 20_000): Promise<ImageProcess> {
  const manifest = readManifest();
  const env = Object.entries({ ...manifest.env, HOME: manifest.user.home }).map(([k, v]) => `${k}=${v}`);
  const inner = 'set -e; r="$1"; u="$2"; shift 2; mount --rbind /dev "$r/dev"; mount -t proc proc "$r/proc"; exec chroot --userspec="$u" "$r" "$@"';
  const chrooted = ['/usr/bin/env', '-i', ...env, '/bin/sh', '-c', 'cd "$0" && exec "$@"', manifest.workdir, ...argv];
  // Its own process group: the process in the namespace keeps it through sh, chroot and env, so stop() can signal
  // the whole chain at once (signalling unshare alone would not reach it: chroot's setuid clears --kill-child's
  // parent-death signal).
  const child = spawn('unshare', ['--mount', '--pid', '--fork', '--kill-child', 'sh', '-c', inner, 'sh', rootfs, `${manifest.user.uid}:${manifest.user.gid}`, ...chrooted], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const signalGroup = (signal: NodeJS.Signals) => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, signal);
    } catch {
      // already gone
    }
  };
  registerChild(child);
  let out = '';
  const output = () => out.slice(-4000);
  // 'close' comes once the process in the namespace is gone too: it holds the other ends of the pipes.
  let closed = false;
  child.once('close', () => {
    closed = true;
  });
  const stop = () =>
    new Promise<void>((resolve) => {
      if (closed) return resolve();
      child.once('close', () => resolve());
      signalGroup('SIGTERM');
      setTimeout(() => signalGroup('SIGKILL'), 5000).unref();
    });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`${argv.join(' ')}: no ready line within ${timeoutMs} ms:\n${output()}`));
    }, timeoutMs);
    let buffered = '';
    child.stderr.on('data', (chunk: Buffer) => {
      out += chunk.toString();
    });
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      buffered += chunk.toString();
      let nl = buffered.indexOf('\n');
      while (nl >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        nl = buffered.indexOf('\n');
        let parsed: Record<string, unknown> | undefined;
        try {
          parsed = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        if (parsed?.event === 'ready') {
          clearTimeout(timer);
          resolve({ child, readyLine: parsed, output, stop });
        }
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${argv.join(' ')} exited ${code} before it was ready:\n${output()}`));
    });
  });
}
