#!/usr/bin/env node
/**
 * Builds the CLI as a Node single executable application (https://nodejs.org/api/single-executable-applications.html):
 * one file that runs with no Node installed, a release artifact next to the npm package.
 *
 *   node client-cli/build/sea.ts        writes dist/sea/narrowlink-<platform>-<arch> (git-ignored)
 *
 * Steps: esbuild bundles src/main.ts into one CommonJS file (SEA runs a CommonJS main script and its `require`
 * sees Node's built-ins only, so everything is inlined); `node --experimental-sea-config` turns it into a
 * preparation blob with V8's code cache; the blob is injected with postject into a copy of the Node running this
 * script (the repository's pinned Node on Linux x64). The platform's native QUIC binding is embedded as an asset
 * and unpacked to the user's cache directory on first use (peer-link/src/quic/native.ts); where there is none, the
 * executable runs relay-only and says so once.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { build } from 'esbuild';
import { SEA_QUIC_ASSET } from '@narrowlink/peer-link';
import { BUNDLE_DEFAULTS, CLI_DIR, EXTERNAL } from './build.ts';

const run = promisify(execFile);

/** The repository root. */
const ROOT = path.resolve(CLI_DIR, '..');
/** Where the executable goes (git-ignored). */
export const SEA_DIR = path.join(ROOT, 'dist', 'sea');
/** The fuse postject flips so Node runs the injected blob (fixed by Node for every release). */
const SENTINEL_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

/** Builds the single executable for this platform; returns its path. */
export async function buildSea(): Promise<string> {
  const work = path.join(SEA_DIR, 'work');
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  const version = (await import(path.join(CLI_DIR, 'src', 'version.ts'))).CLI_VERSION as string;
  const mainFile = path.join(work, 'narrowlink.cjs');
  await build({
    ...BUNDLE_DEFAULTS,
    legalComments: 'none',
    entryPoints: [path.join(CLI_DIR, 'src/main.ts')],
    outfile: mainFile,
    format: 'cjs',
    external: EXTERNAL,
    define: {
      __NARROWLINK_CLI_VERSION__: JSON.stringify(version),
      // import.meta is empty in CommonJS: the code that asks for its URL gets the executable's.
      'import.meta.url': '__nlImportMetaUrl',
    },
    banner: { js: "const __nlImportMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
    // The one import.meta use left is peer-link/src/quic/native.ts's resolve, which must be absent here.
    logOverride: { 'empty-import-meta': 'silent' },
  });
  const blob = path.join(work, 'narrowlink.blob');
  const config = path.join(work, 'sea-config.json');
  // The platform's native QUIC binding rides along as an asset (peer-link/src/quic/native.ts unpacks and loads it);
  // without one (no prebuilt binary for this platform) the executable runs relay-only and says so.
  const assets: Record<string, string> = {};
  const binding = path.join(ROOT, 'node_modules', '@matrixai', `quic-${process.platform}-${process.arch}`, 'node.napi.node');
  if (existsSync(binding)) assets[SEA_QUIC_ASSET] = binding;
  await writeFile(config, JSON.stringify({ main: mainFile, output: blob, disableExperimentalSEAWarning: true, useCodeCache: true, assets }));
  await run(process.execPath, ['--experimental-sea-config', config]);
  const output = path.join(SEA_DIR, `narrowlink-${process.platform}-${process.arch}${process.platform === 'win32' ? '.exe' : ''}`);
  await rm(output, { force: true });
  await copyFile(process.execPath, output);
  await chmod(output, 0o755);
  const postject = path.join(ROOT, 'node_modules', 'postject', 'dist', 'cli.js');
  await run(process.execPath, [postject, output, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SENTINEL_FUSE, ...(process.platform === 'darwin' ? ['--macho-segment-name', 'NODE_SEA'] : [])], {
    maxBuffer: 16 * 1024 * 1024,
  });
  await rm(work, { recursive: true, force: true });
  return output;
}

if (import.meta.main) {
  const output = await buildSea();
  process.stdout.write(`built ${path.relative(process.cwd(), output)}\n`);
}
