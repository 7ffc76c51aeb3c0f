/**
 * The native quiche binding of `@matrixai/quic`, loaded on first use instead of at import time. Its prebuilt
 * binaries cover some platforms only (linux-x64, darwin, win32-x64; not linux-arm64 or win32-arm64), and it may
 * not be installed (`--omit=optional`): there the binding cannot load, and everything that does not need the direct
 * path (the relay, `ls`, `login`, `--help`) must still work. So nothing imports the binding statically; the QUIC code
 * calls {@link quicheBinding} when it builds a config or a connection, and callers that can fall back to the relay
 * ask {@link quicUnavailableReason} first.
 *
 * Synchronous on purpose (the QUIC code calls it from constructors): `require()` of the binding's ES module
 * (Node >= 22.12 loads ES modules without top-level await that way), resolved through the package's `exports`
 * with `import.meta.resolve`.
 *
 * The single executable cannot resolve packages; its build embeds the platform's binary as the SEA asset
 * {@link SEA_QUIC_ASSET}, which is written once to the user's cache directory (0700, named by its SHA-256 and
 * checked against it before every load, so a file someone else put there is never loaded) and loaded from there.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type Quiche from '@matrixai/quic/native/quiche.js';
import { DirectError, DirectErrorCode } from './errors.ts';

/** The binding's API (`quiche.Config`, `quiche.Connection`, `quiche.Shutdown`, …). */
export type QuicheBinding = typeof Quiche;

const BINDING_SPECIFIER = '@matrixai/quic/native/quiche.js';

let loaded: { binding: QuicheBinding } | { reason: string } | undefined;

/** The SEA asset holding the platform's native binding (client-cli/build/sea.ts embeds it). */
export const SEA_QUIC_ASSET = 'quic.node';

interface SeaModule {
  isSea?: () => boolean;
  getRawAsset?: (key: string) => ArrayBuffer;
}

/** node:sea when this process is a single executable application, else undefined. */
function singleExecutable(): SeaModule | undefined {
  try {
    const sea = createRequire(import.meta.url)('node:sea') as SeaModule;
    return sea.isSea?.() === true ? sea : undefined;
  } catch {
    return undefined;
  }
}

/** Where the single executable unpacks its binding: the user's cache directory (XDG on Linux). */
function nativeCacheDir(): string {
  const base =
    process.platform === 'win32'
      ? (process.env.LOCALAPPDATA ?? tmpdir())
      : process.platform === 'darwin'
        ? join(homedir(), 'Library', 'Caches')
        : (process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'));
  return join(base, 'narrowlink', 'native');
}

function loadFromSea(sea: SeaModule, platform: string): { binding: QuicheBinding } | { reason: string } {
  let bytes: Buffer;
  try {
    const raw = sea.getRawAsset?.(SEA_QUIC_ASSET);
    if (!raw) throw new Error('no asset');
    bytes = Buffer.from(new Uint8Array(raw));
  } catch {
    return { reason: `the single executable carries no native QUIC binding (${platform})` };
  }
  try {
    const digest = createHash('sha256').update(bytes).digest('hex');
    const dir = nativeCacheDir();
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = join(dir, `quic-${platform}-${digest.slice(0, 32)}.node`);
    const intact = existsSync(file) && createHash('sha256').update(readFileSync(file)).digest('hex') === digest;
    if (!intact) {
      // Written beside, then renamed: a concurrent run never loads half a file.
      const partial = `${file}.${process.pid}.tmp`;
      writeFileSync(partial, bytes, { mode: 0o600 });
      renameSync(partial, file);
    }
    const module = { exports: {} as QuicheBinding };
    process.dlopen(module, file);
    if (!module.exports?.Config) throw new Error('the binding has no quiche API');
    return { binding: module.exports };
  } catch (error) {
    const detail = (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? '';
    return { reason: `the single executable's native QUIC binding did not load on ${platform} (${detail})` };
  }
}

function load(): { binding: QuicheBinding } | { reason: string } {
  const platform = `${process.platform}-${process.arch}`;
  const sea = singleExecutable();
  if (sea) return loadFromSea(sea, platform);
  try {
    if (typeof import.meta.resolve !== 'function') throw new Error('this build cannot resolve packages at runtime');
    const file = fileURLToPath(import.meta.resolve(BINDING_SPECIFIER));
    const module = createRequire(import.meta.url)(file) as { default?: QuicheBinding };
    if (!module.default?.Config) throw new Error('the binding module has no quiche API');
    return { binding: module.default };
  } catch (error) {
    // quiche.js throws "Unsupported architecture …" or "Failed requiring possible native bindings: <paths>"; the
    // first line is enough to say why, the paths are not.
    const detail = (error instanceof Error ? error.message : String(error)).split('\n')[0]?.replace(/: \/.*$/, '') ?? '';
    return { reason: `no native QUIC binding loads on ${platform} (${detail})` };
  }
}

/**
 * Why the direct path's QUIC binding cannot load here (one line, no stack), or `undefined` when it loads.
 * Loads it on the first call; the answer never changes within a process.
 */
export function quicUnavailableReason(): string | undefined {
  loaded ??= load();
  return 'reason' in loaded ? loaded.reason : undefined;
}

/**
 * The quiche binding. Throws {@link DirectError} `NL_ERR_DIRECT_NATIVE_UNAVAILABLE` when it cannot load here
 * ({@link quicUnavailableReason} says why).
 */
export function quicheBinding(): QuicheBinding {
  loaded ??= load();
  if ('reason' in loaded) throw new DirectError(DirectErrorCode.NATIVE_UNAVAILABLE, `direct path unavailable: ${loaded.reason}`);
  return loaded.binding;
}
