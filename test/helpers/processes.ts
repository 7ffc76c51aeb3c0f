import { type ChildProcess, spawn } from 'node:child_process';

/** One stdout line: the parsed JSON object (pino log record), or `{ text }` for a non-JSON line. */
export type LogLine = Record<string, unknown>;

/** Options for {@link startProcess}. */
export interface StartProcessOptions {
  /** Extra environment, merged over `process.env`; a key set to `undefined` is removed. */
  env?: Record<string, string | undefined>;
  /** Working directory; default `process.cwd()`. */
  cwd?: string;
  /** Value of the `event` field that means "ready"; default `'ready'`. */
  readyEvent?: string;
  /** Milliseconds to wait for the ready line before killing the child and rejecting; default 15000. */
  timeoutMs?: number;
  /** Mirror the child's stdout/stderr to this process's stderr; default true when `NL_TEST_ECHO=1`. */
  echo?: boolean;
}

/** A running child started by {@link startProcess}. */
export interface StartedProcess {
  /** Name given to {@link startProcess}; used in error messages. */
  name: string;
  child: ChildProcess;
  /** The stdout line whose `event` equalled `readyEvent`. */
  readyLine: LogLine;
  /** Every stdout line parsed so far, in order; keeps growing while the child runs. */
  lines: LogLine[];
  /** Every stderr line so far (text). */
  stderrLines: string[];
  /**
   * Resolve with the first stdout line matching `predicate`. Lines already received are checked first
   * unless `options.includePast` is false. Rejects after `timeoutMs` (default 5000) or when the child
   * exits without a match; the error carries the last 20 output lines.
   */
  waitFor(predicate: (line: LogLine) => boolean, timeoutMs?: number, options?: { includePast?: boolean }): Promise<LogLine>;
  /**
   * Send `signal` (default SIGTERM), wait up to `timeoutMs` (default 5000) for exit, then SIGKILL.
   * @returns the exit code, or null when the child ended by a signal.
   */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
  /** SIGKILL now; resolves with the exit code (normally null) once the child is gone. */
  kill9(): Promise<number | null>;
  /** Resolves with the exit code (null when ended by a signal) once the child has exited. */
  exited: Promise<number | null>;
  /** The last `count` (default 20) stdout/stderr lines, prefixed with their stream, for error messages. */
  tail(count?: number): string;
}

const TAIL_LINES = 20;
const live = new Set<ChildProcess>();
let hooksInstalled = false;

function killAllNow(): void {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  // 'exit' listeners must be synchronous: SIGKILL is the only thing that reliably fits.
  process.on('exit', killAllNow);
  // A signal skips 'exit'. Only take over signals nobody else handles, then re-raise so the default
  // action (terminate) still happens.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    if (process.listenerCount(signal) > 0) continue;
    const handler = (): void => {
      killAllNow();
      process.off(signal, handler);
      process.kill(process.pid, signal);
    };
    process.on(signal, handler);
  }
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function exitPromise(child: ChildProcess): Promise<number | null> {
  if (hasExited(child)) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => {
    child.once('exit', (code) => resolve(code));
    // A failed spawn emits 'error' and never 'exit'.
    child.once('error', () => {
      if (child.pid === undefined) resolve(null);
    });
  });
}

/**
 * Track a child started by other means (e.g. `sshd`, `ssh`) so {@link stopAll} and the exit hooks of
 * this module end it too.
 */
export function registerChild(child: ChildProcess): void {
  installHooks();
  if (hasExited(child)) return;
  live.add(child);
  child.once('exit', () => live.delete(child));
}

/**
 * Send `signal`, wait up to `timeoutMs` for the child to exit, then SIGKILL it.
 *
 * @param signal - first signal; default SIGTERM.
 * @param timeoutMs - grace period in milliseconds before SIGKILL; default 5000.
 * @returns the exit code, or null when the child ended by a signal.
 */
export async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 5000): Promise<number | null> {
  const exited = exitPromise(child);
  if (hasExited(child) || child.pid === undefined) return exited;
  child.kill(signal);
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  const first = await Promise.race([exited, timedOut]);
  clearTimeout(timer);
  if (first !== 'timeout') return first;
  child.kill('SIGKILL');
  return exited;
}

/**
 * Stop every child still running that was started by {@link startProcess} or passed to
 * {@link registerChild}. Meant for `after()` hooks.
 *
 * @param timeoutMs - per-child grace period in milliseconds before SIGKILL; default 5000.
 */
export async function stopAll(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 5000): Promise<void> {
  await Promise.all([...live].map((child) => stopChild(child, signal, timeoutMs)));
}

function splitLines(onLine: (line: string) => void): { push(chunk: Buffer): void; flush(): void } {
  let pending = '';
  return {
    push(chunk) {
      pending += chunk.toString('utf8');
      let newline = pending.indexOf('\n');
      while (newline !== -1) {
        onLine(pending.slice(0, newline).replace(/\r$/, ''));
        pending = pending.slice(newline + 1);
        newline = pending.indexOf('\n');
      }
    },
    flush() {
      if (pending.length > 0) onLine(pending);
      pending = '';
    },
  };
}

function parseLine(text: string): LogLine {
  if (text.startsWith('{')) {
    try {
      const value: unknown = JSON.parse(text);
      if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as LogLine;
    } catch {
      // not JSON after all; keep as text
    }
  }
  return { text };
}

/**
 * Spawn `process.execPath` (the Node running the tests) with `args` — the first is usually the script,
 * e.g. `['gateway/src/main.ts', '--port', '0']` — and wait for a stdout JSON line whose `event` field
 * equals `readyEvent`.
 *
 * stdout is parsed line by line as JSON (pino); other lines are kept as `{ text }`. The child is
 * registered for {@link stopAll} and SIGKILLed if this process exits.
 *
 * @param name - label for error messages.
 * @throws Error (after killing the child) if it exits or `timeoutMs` passes before the ready line;
 *   the message includes the last 20 stdout/stderr lines.
 */
export async function startProcess(name: string, args: string[], options: StartProcessOptions = {}): Promise<StartedProcess> {
  const readyEvent = options.readyEvent ?? 'ready';
  const timeoutMs = options.timeoutMs ?? 15_000;
  const echo = options.echo ?? process.env.NL_TEST_ECHO === '1';
  const child = spawn(process.execPath, args, {
    cwd: options.cwd,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  registerChild(child);

  const lines: LogLine[] = [];
  const stderrLines: string[] = [];
  const recent: string[] = [];
  const listeners = new Set<(line: LogLine) => void>();
  const remember = (entry: string): void => {
    recent.push(entry);
    if (recent.length > TAIL_LINES * 5) recent.splice(0, recent.length - TAIL_LINES);
  };
  const tail = (count = TAIL_LINES): string => recent.slice(-count).join('\n');

  const stdout = splitLines((text) => {
    remember(`[stdout] ${text}`);
    if (echo) process.stderr.write(`[${name}] ${text}\n`);
    const line = parseLine(text);
    lines.push(line);
    for (const listener of listeners) listener(line);
  });
  const stderr = splitLines((text) => {
    remember(`[stderr] ${text}`);
    if (echo) process.stderr.write(`[${name}!] ${text}\n`);
    stderrLines.push(text);
  });
  child.stdout?.on('data', (chunk: Buffer) => stdout.push(chunk));
  child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk));

  // 'close' (all stdio drained) is what we want for complete output, but a grandchild holding the pipes
  // could delay it forever, so fall back to 'exit' plus a short grace.
  const closed = new Promise<void>((resolve) => {
    child.once('close', () => resolve());
    child.once('exit', () => setTimeout(resolve, 250).unref());
    child.once('error', () => {
      if (child.pid === undefined) resolve();
    });
  }).then(() => {
    stdout.flush();
    stderr.flush();
  });
  let spawnError: Error | undefined;
  child.once('error', (err) => {
    spawnError = err;
  });
  const exited = exitPromise(child);
  const describeExit = (): string =>
    spawnError !== undefined
      ? `failed to spawn: ${spawnError.message}`
      : `exited with code ${child.exitCode} signal ${child.signalCode}`;

  const waitFor = (
    predicate: (line: LogLine) => boolean,
    waitMs = 5000,
    waitOptions: { includePast?: boolean } = {},
  ): Promise<LogLine> => {
    if (waitOptions.includePast ?? true) {
      const found = lines.find(predicate);
      if (found !== undefined) return Promise.resolve(found);
    }
    return new Promise<LogLine>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        clearTimeout(timer);
        listeners.delete(listener);
      };
      const listener = (line: LogLine): void => {
        let matched = false;
        try {
          matched = predicate(line);
        } catch (err) {
          done();
          reject(err);
          return;
        }
        if (matched) {
          done();
          resolve(line);
        }
      };
      listeners.add(listener);
      timer = setTimeout(() => {
        done();
        reject(new Error(`${name}: no matching line within ${waitMs} ms; last output:\n${tail()}`));
      }, waitMs);
      closed.then(() => {
        if (!listeners.has(listener)) return;
        done();
        reject(new Error(`${name}: ${describeExit()} before a matching line; last output:\n${tail()}`));
      });
    });
  };

  const stop = (signal: NodeJS.Signals = 'SIGTERM', stopMs = 5000): Promise<number | null> => stopChild(child, signal, stopMs);
  const kill9 = (): Promise<number | null> => {
    if (!hasExited(child)) child.kill('SIGKILL');
    return exited;
  };

  let readyLine: LogLine;
  try {
    readyLine = await waitFor((line) => line.event === readyEvent, timeoutMs);
  } catch (err) {
    const reason = hasExited(child) || spawnError !== undefined ? describeExit() : `timed out after ${timeoutMs} ms`;
    await stopChild(child, 'SIGKILL', 1000);
    await closed;
    throw new Error(`${name} (pid ${child.pid}): not ready (no "event":"${readyEvent}" line), ${reason}; last output:\n${tail()}`, {
      cause: err,
    });
  }
  return { name, child, readyLine, lines, stderrLines, waitFor, stop, kill9, exited, tail };
}
