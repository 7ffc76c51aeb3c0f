/**
 * Fixtures of the package tests: the CLI as a user gets it (packed, installed into an empty prefix, run by another
 * Node than the repository's pinned one; or the single executable), a second Node cached outside the repository,
 * and a small process runner for binaries that are not `process.execPath`.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ROOT } from '../helpers/paths.ts';
import { registerChild, stopChild } from '../helpers/processes.ts';

const run = promisify(execFile);

/** The second Node the packed CLI runs under: the oldest the package supports. */
export const OTHER_NODE_VERSION = '22.19.0';

/** Where downloaded Nodes are cached (outside the repository; `.ci/run` prepares it). */
export const CACHE_DIR = path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'narrowlink');

/**
 * The bin directory of Node {@link OTHER_NODE_VERSION} for this platform, from the npm package `node-<os>-<cpu>`
 * (the same source as the pinned one), downloaded with npm once into {@link CACHE_DIR} and reused.
 * `undefined` where npm has no such package (Windows).
 */
export async function otherNodeBin(): Promise<string | undefined> {
  if (process.platform === 'win32') return undefined;
  const dir = path.join(CACHE_DIR, `node-${OTHER_NODE_VERSION}`);
  const bin = path.join(dir, 'bin');
  if (existsSync(path.join(bin, 'node'))) return bin;
  const download = path.join(CACHE_DIR, 'download');
  await mkdir(download, { recursive: true });
  const spec = `node-${process.platform}-${process.arch}@${OTHER_NODE_VERSION}`;
  const { stdout } = await run('npm', ['pack', spec, '--pack-destination', download, '--silent'], { cwd: download });
  const tarball = path.join(download, stdout.trim().split('\n').at(-1) ?? '');
  const partial = `${dir}.partial`;
  await rm(partial, { recursive: true, force: true });
  await mkdir(partial, { recursive: true });
  await run('tar', ['xzf', tarball, '-C', partial, '--strip-components=1']);
  await rm(dir, { recursive: true, force: true });
  // Renamed into place only when complete, so an interrupted download is never taken for a Node.
  await import('node:fs/promises').then((fs) => fs.rename(partial, dir));
  await rm(tarball, { force: true });
  return bin;
}

/** Builds client-cli/dist and packs it; returns the tarball's path (in `into`). */
export async function packCli(into: string): Promise<string> {
  await run(process.execPath, [path.join(ROOT, 'client-cli/build/build.ts')], { cwd: ROOT });
  await mkdir(into, { recursive: true });
  await run('npm', ['pack', path.join(ROOT, 'client-cli/dist'), '--pack-destination', into, '--silent'], { cwd: into });
  const tarballs = (await readdir(into)).filter((name) => name.endsWith('.tgz'));
  if (tarballs.length !== 1) throw new Error(`expected one tarball in ${into}, found ${tarballs.join(', ') || 'none'}`);
  return path.join(into, tarballs[0] ?? '');
}

/**
 * Installs the tarball into the empty prefix as `npm install -g` would (bins in `<prefix>/bin`); its dependencies
 * come from the registry (or npm's cache). Returns the bin directory.
 */
export async function installGlobal(tarball: string, prefix: string): Promise<string> {
  await mkdir(prefix, { recursive: true });
  await run('npm', ['install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', '--prefer-offline', tarball], { cwd: prefix, timeout: 120_000 });
  return path.join(prefix, 'bin');
}

/** A PATH holding `dirs` and the system directories, but not the repository's node_modules/.bin (the pinned Node). */
export function pathWithout(dirs: string[]): string {
  const pinned = path.join(ROOT, 'node_modules', '.bin');
  const system = (process.env.PATH ?? '').split(path.delimiter).filter((dir) => dir !== '' && path.resolve(dir) !== pinned);
  return [...dirs, ...system].join(path.delimiter);
}

/** Which `node` a PATH finds first (what `#!/usr/bin/env node` runs). */
export function nodeOnPath(searchPath: string): string | undefined {
  for (const dir of searchPath.split(path.delimiter)) {
    const candidate = path.join(dir, 'node');
    if (dir && existsSync(candidate)) return candidate;
  }
  return undefined;
}

/** A child started by {@link startBinary}. */
export interface BinaryProcess {
  child: ChildProcess;
  /** stdout lines parsed as JSON (`{ text }` when not JSON). */
  lines: Array<Record<string, unknown>>;
  stderr: () => string;
  /** Resolves with the first stdout line whose `event` is `event`; rejects on exit or after `timeoutMs`. */
  waitEvent(event: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(): Promise<number | null>;
}

/** Spawns `file args` with exactly `env` (nothing inherited). */
export function startBinary(file: string, args: string[], env: Record<string, string>): BinaryProcess {
  const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  registerChild(child);
  const lines: Array<Record<string, unknown>> = [];
  let stderr = '';
  let buffered = '';
  const waiters = new Set<() => void>();
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk;
    let newline = buffered.indexOf('\n');
    while (newline >= 0) {
      const text = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      try {
        lines.push(JSON.parse(text) as Record<string, unknown>);
      } catch {
        lines.push({ text });
      }
      newline = buffered.indexOf('\n');
    }
    for (const waiter of waiters) waiter();
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    child,
    lines,
    stderr: () => stderr,
    waitEvent(event, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const found = lines.find((line) => line.event === event);
          if (found) {
            done();
            resolve(found);
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`no ${event} line within ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}`));
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        void exited.then(() => {
          done();
          reject(new Error(`exited (code ${child.exitCode}) before ${event}; stderr: ${stderr.slice(-2000)}`));
        });
        check();
      });
    },
    stop: () => stopChild(child, 'SIGTERM', 3000),
  };
}

/** Runs `file args` to completion with exactly `env`. */
export async function runBinary(file: string, args: string[], env: Record<string, string>, timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(file, args, { env, timeout: timeoutMs });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof failed.code === 'number' ? failed.code : -1, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' };
  }
}
