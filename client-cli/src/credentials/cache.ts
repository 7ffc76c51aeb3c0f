/**
 * The login cache: one file per kube context holding what `narrowlink login` obtained (token, the proof key it is
 * bound to, the gateway it found, who the API server said we are). Layout (the issue 11 contract):
 * `<config dir>/narrowlink/contexts/<context, path-safe>.json`, the file 0600 and the directory 0700; the config
 * dir is `$XDG_CONFIG_HOME` or `~/.config` on Linux and macOS, `%APPDATA%` on Windows (whose per-user profile
 * ACLs do the job of the modes there).
 *
 * The file holds a private key and a token: it is written through a 0600 temporary file and a rename (never a
 * moment where it is readable by others or half-written), and a file that group or others can read is refused
 * rather than used, as ssh does with private keys.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { homedir } from 'node:os';
import { posix, win32 } from 'node:path';
import { z } from 'zod';
import { CliError, CliErrorCode, ExitCode } from '../errors.ts';

/** What a context's cache file holds. `token` and `proofKeyPem` are secrets: never print or log them. */
export const cachedLoginSchema = z
  .object({
    version: z.literal(1),
    /** The kube context the credentials were obtained with. */
    context: z.string().min(1),
    /** The context's cluster name in the kubeconfig. */
    cluster: z.string(),
    /** The API server URL. */
    server: z.string(),
    /** The kubeconfig file named at login (`--kubeconfig`), or null for kubectl's default rules; renewal uses the same. */
    kubeconfig: z.string().nullable(),
    /** Where the discovery ConfigMap was read (`-n`). */
    namespace: z.string().min(1),
    /** Where ClientLoginRequests are created (from the discovery ConfigMap). */
    loginNamespace: z.string().min(1),
    /** The user name the API server authenticated. */
    username: z.string(),
    groups: z.array(z.string()),
    /** The Narrowlink client token (key-bound). */
    token: z.string().min(1),
    /** When the token expires, RFC 3339. */
    expiresAt: z.string().datetime({ offset: true }),
    /** When it was obtained, RFC 3339 (renewal is due at a fraction of issuedAt..expiresAt). */
    issuedAt: z.string().datetime({ offset: true }),
    gatewayUrls: z.array(z.string()).min(1),
    /** PEM bundle that signs the gateway's certificate; empty when the gateway has a publicly trusted one. */
    caPem: z.string(),
    natProbePorts: z.array(z.number().int()),
    /** The Ed25519 proof key, PKCS#8 PEM. */
    proofKeyPem: z.string().min(1),
  })
  .strict();
export type CachedLogin = z.infer<typeof cachedLoginSchema>;

/** Where the cache lives: injected so tests can stand in for another OS. */
export interface CacheLocation {
  env?: NodeJS.ProcessEnv;
  platform?: NodeJS.Platform;
  /** The home directory when the environment names no config dir (default `os.homedir()`). */
  home?: string;
}

function pathApi(platform: NodeJS.Platform): typeof posix {
  return platform === 'win32' ? win32 : posix;
}

/** The directory of the per-context files: `<config dir>/narrowlink/contexts`. */
export function contextsDir(location: CacheLocation = {}): string {
  const env = location.env ?? process.env;
  const platform = location.platform ?? process.platform;
  const path = pathApi(platform);
  const home = location.home ?? homedir();
  const nonEmpty = (v: string | undefined): string | undefined => (v && v.length > 0 ? v : undefined);
  const base =
    platform === 'win32' ? (nonEmpty(env.APPDATA) ?? path.join(home, 'AppData', 'Roaming')) : (nonEmpty(env.XDG_CONFIG_HOME) ?? path.join(home, '.config'));
  return path.join(base, 'narrowlink', 'contexts');
}

/** Device names Windows refuses as file names whatever the extension. */
const WINDOWS_RESERVED = /^(con|prn|aux|nul|com[0-9]|lpt[0-9])$/i;

/**
 * A file name for a context name. Context names carry `/`, `:` and `@` (EKS ARNs, `user@cluster`), so anything but
 * `[A-Za-z0-9._-]` becomes `_`; whenever that changed the name (or it is empty, starts with a dot, is too long, or
 * is a Windows device name) a hash of the real name is appended, so `a/b` and `a_b` never share a file.
 */
export function contextFileName(context: string): string {
  const safe = context.replace(/[^A-Za-z0-9._-]/g, '_');
  const plain = safe === context && safe.length > 0 && safe.length <= 100 && !safe.startsWith('.') && !WINDOWS_RESERVED.test(safe);
  if (plain) return `${safe}.json`;
  const hash = createHash('sha256').update(context, 'utf8').digest('hex').slice(0, 12);
  return `${safe.replace(/^\.+/, '_').slice(0, 80)}-${hash}.json`;
}

/** The cache file of `context`. */
export function cachePath(context: string, location: CacheLocation = {}): string {
  return pathApi(location.platform ?? process.platform).join(contextsDir(location), contextFileName(context));
}

function cacheError(message: string, cause?: unknown): CliError {
  return new CliError(CliErrorCode.CACHE, message, ExitCode.USAGE, cause === undefined ? undefined : { cause });
}

/** Writes `entry` to its context's file (0600, directory 0700), atomically. Returns the path. */
export function writeLogin(entry: CachedLogin, location: CacheLocation = {}): string {
  const platform = location.platform ?? process.platform;
  const dir = contextsDir(location);
  const file = cachePath(entry.context, location);
  const parsed = cachedLoginSchema.parse(entry);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // mkdir's mode applies only to directories it creates (and is masked by the umask): make sure.
    if (platform !== 'win32') chmodSync(dir, 0o700);
    const temp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
    const fd = openSync(temp, 'wx', 0o600);
    try {
      writeSync(fd, `${JSON.stringify(parsed, null, 2)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    if (platform !== 'win32') chmodSync(temp, 0o600);
    renameSync(temp, file);
  } catch (error) {
    throw cacheError(`cannot write the credentials cache ${file}: ${(error as Error).message}`, error);
  }
  return file;
}

/**
 * Reads `context`'s cache: `undefined` when there is none. Throws NL_ERR_CLI_CACHE for a file that cannot be
 * used: unreadable or malformed, written for another context, or (outside Windows) readable or writable by group
 * or others, or owned by another user.
 */
export function readLogin(context: string, location: CacheLocation = {}): CachedLogin | undefined {
  const platform = location.platform ?? process.platform;
  const file = cachePath(context, location);
  let text: string;
  try {
    if (platform !== 'win32') {
      const stat = statSync(file);
      if ((stat.mode & 0o077) !== 0) {
        throw cacheError(`${file} is accessible by other users (mode ${(stat.mode & 0o777).toString(8)}): remove it and run narrowlink login again`);
      }
      if (typeof process.getuid === 'function' && stat.uid !== process.getuid()) {
        throw cacheError(`${file} belongs to another user (uid ${stat.uid}): remove it and run narrowlink login again`);
      }
    }
    text = readFileSync(file, 'utf8');
  } catch (error) {
    if (error instanceof CliError) throw error;
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw cacheError(`cannot read the credentials cache ${file}: ${(error as Error).message}`, error);
  }
  let parsed: ReturnType<typeof cachedLoginSchema.safeParse>;
  try {
    parsed = cachedLoginSchema.safeParse(JSON.parse(text));
  } catch (error) {
    throw cacheError(`${file} is not JSON: run narrowlink logout, then narrowlink login`, error);
  }
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw cacheError(`${file} is not a narrowlink credentials file (${issues}): run narrowlink logout, then narrowlink login`);
  }
  if (parsed.data.context !== context) {
    throw cacheError(`${file} holds context "${parsed.data.context}", not "${context}": run narrowlink login --context ${JSON.stringify(context)}`);
  }
  return parsed.data;
}

/** Deletes `context`'s cache file; false when there was none. */
export function deleteLogin(context: string, location: CacheLocation = {}): boolean {
  const file = cachePath(context, location);
  try {
    statSync(file);
  } catch {
    return false;
  }
  try {
    rmSync(file);
  } catch (error) {
    throw cacheError(`cannot delete ${file}: ${(error as Error).message}`, error);
  }
  return true;
}
