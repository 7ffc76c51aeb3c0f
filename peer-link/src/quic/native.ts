/**
 * The native quiche binding of `@matrixai/quic`, loaded on first use instead of at import time. Its prebuilt
 * binaries cover some platforms only (linux-x64, darwin, win32-x64; not linux-arm64 or win32-arm64), and a single
 * executable (SEA) carries none: there the binding cannot load, and everything that does not need the direct path
 * (the relay, `ls`, `login`, `--help`) must still work. So nothing imports the binding statically; the QUIC code
 * calls {@link quicheBinding} when it builds a config or a connection, and callers that can fall back to the relay
 * ask {@link quicUnavailableReason} first.
 *
 * Synchronous on purpose (the QUIC code calls it from constructors): `require()` of the binding's ES module
 * (Node >= 22.12 loads ES modules without top-level await that way), resolved through the package's `exports`
 * with `import.meta.resolve`.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type Quiche from '@matrixai/quic/native/quiche.js';
import { DirectError, DirectErrorCode } from './errors.ts';

/** The binding's API (`quiche.Config`, `quiche.Connection`, `quiche.Shutdown`, …). */
export type QuicheBinding = typeof Quiche;

const BINDING_SPECIFIER = '@matrixai/quic/native/quiche.js';

let loaded: { binding: QuicheBinding } | { reason: string } | undefined;

/** Whether this process is a Node single executable application (which cannot carry the native binding). */
function isSingleExecutable(): boolean {
  try {
    const sea = createRequire(import.meta.url)('node:sea') as { isSea?: () => boolean };
    return sea.isSea?.() === true;
  } catch {
    return false;
  }
}

function load(): { binding: QuicheBinding } | { reason: string } {
  const platform = `${process.platform}-${process.arch}`;
  try {
    if (typeof import.meta.resolve !== 'function') throw new Error('this build cannot resolve packages at runtime');
    const file = fileURLToPath(import.meta.resolve(BINDING_SPECIFIER));
    const module = createRequire(import.meta.url)(file) as { default?: QuicheBinding };
    if (!module.default?.Config) throw new Error('the binding module has no quiche API');
    return { binding: module.default };
  } catch (error) {
    if (isSingleExecutable()) return { reason: `the single executable carries no native QUIC binding (${platform})` };
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
