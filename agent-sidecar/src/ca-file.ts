/**
 * The gateway CA file of an injected sidecar (NARROWLINK_CA_FILE) comes from a ConfigMap the webhook projects
 * `optional: true` (docs/adr/0015): in a namespace the operator's copy has not reached yet the file is missing at
 * start, and the kubelet adds it once the ConfigMap exists. So a missing file is waited for (with a clear,
 * repeated error) instead of ending the process; an empty file means "no extra CA" (the system CAs: a publicly
 * trusted gateway certificate).
 */
import { readFile } from 'node:fs/promises';
import { AgentErrorCode } from './errors.ts';

/** How often a missing CA file is looked for again, ms. */
export const CA_FILE_RETRY_MS = 2_000;
/** How often the wait is logged again (every attempt would flood the log), ms. */
export const CA_FILE_LOG_EVERY_MS = 30_000;

/** The logger surface used (pino fits). */
interface Log {
  error(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/**
 * Reads the CA PEM at `path`, waiting while it does not exist (ENOENT) until it does or `signal` aborts. Returns
 * undefined for an empty file (trust the system CAs). Other read errors are thrown.
 */
export async function readCaFileWhenPresent(
  path: string,
  log: Log,
  options: { retryMs?: number; logEveryMs?: number; signal?: AbortSignal } = {},
): Promise<string | undefined> {
  const retryMs = options.retryMs ?? CA_FILE_RETRY_MS;
  const logEveryMs = options.logEveryMs ?? CA_FILE_LOG_EVERY_MS;
  let waitingSinceMs: number | undefined;
  let loggedAtMs = Number.NEGATIVE_INFINITY;
  for (;;) {
    try {
      const pem = await readFile(path, 'utf8');
      if (waitingSinceMs !== undefined) log.info({ event: 'ca-file-ready', path, waitedMs: Date.now() - waitingSinceMs }, 'gateway CA file appeared');
      return pem.trim() === '' ? undefined : pem;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    const now = Date.now();
    waitingSinceMs ??= now;
    if (now - loggedAtMs >= logEveryMs) {
      loggedAtMs = now;
      log.error(
        { code: AgentErrorCode.CA_FILE_MISSING, path, waitingMs: now - waitingSinceMs },
        `${AgentErrorCode.CA_FILE_MISSING}: the gateway CA file ${path} does not exist yet; waiting for it (in a cluster: the ConfigMap named by the chart's sidecar.caConfigMap, which the operator copies into this namespace)`,
      );
    }
    if (options.signal?.aborted) throw options.signal.reason;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, retryMs);
      options.signal?.addEventListener('abort', () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
    if (options.signal?.aborted) throw options.signal.reason;
  }
}
