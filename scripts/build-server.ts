#!/usr/bin/env node
/**
 * Builds the server components as compiled JavaScript (issue 13; the CLI's approach, docs/adr/0013, and 0014): esbuild
 * bundles of the gateway, agent sidecar and operator entry points, one build each, into dist/server/ (git-ignored):
 *
 *   gateway.mjs, agent.mjs, operator.mjs   run as `node dist/server/<component>.mjs <the entry point's flags>`
 *   chunks/<component>/*.mjs              code a component loads on demand (dynamic imports: the direct path's
 *                                          certificate code in the agent); a process reads only the chunks it
 *                                          imports. The image copies dist/server/ whole.
 *   runtime-deps.json                      what the image must carry next to dist/ (`node_modules/`), exact
 *                                          versions, and the Node options each component should run with
 *
 * Why compiled: Node's type stripping costs ~17 MiB of RSS per process and a slow start (issue 13), and every
 * injected sidecar pays it. Why chunks and not one file per component: V8 keeps a script's whole source text in
 * the heap, so code an idle process never runs should not be in the files it loads; and one build per component
 * (see buildServer), so no component loads a chunk it shares with another.
 *
 * Only what cannot be bundled stays outside (see {@link SERVER_EXTERNAL}); no source maps are written: the
 * bundles keep their names (no minification), so a stack trace names the function and the module comment, and a
 * map would be another file in the image for the few who debug a production sidecar (they can build with
 * `--sourcemap`, which writes linked maps and runs with `--enable-source-maps`).
 *
 *   node scripts/build-server.ts               (npm run build:server)
 *   node scripts/build-server.ts --sourcemap   also writes .map files
 *   node scripts/build-server.ts --out DIR     another output directory (tests)
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { builtinModules } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { build, type Plugin } from 'esbuild';
import { BUNDLE_DEFAULTS, MIN_NODE } from '../client-cli/build/build.ts';

/** The repository root. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Default output directory. */
export const SERVER_DIST_DIR = path.join(ROOT, 'dist', 'server');

/** The bundled components: output name → entry point (the same files the Dockerfile and the tests run). */
export const SERVER_ENTRIES = {
  gateway: 'gateway/src/main.ts',
  agent: 'agent-sidecar/src/main.ts',
  operator: 'operator/src/main.ts',
} as const;

/** A bundled component. */
export type ServerComponent = keyof typeof SERVER_ENTRIES;

/**
 * Packages left to runtime resolution from a `node_modules` next to `dist/`:
 * - `@matrixai/quic`: the direct path's native binding, found next to its own files (`import.meta.resolve` in
 *   peer-link/src/quic/native.ts); loaded on first use only, so a relay-only agent never opens it.
 * - `bufferutil`, `utf-8-validate`: ws's optional native helpers (ws loads them in a try/catch). bufferutil is a
 *   declared dependency of the gateway and peer-link (faster masking on the relay), so the image carries it.
 */
export const SERVER_EXTERNAL = ['@matrixai/quic', '@matrixai/quic/*', 'bufferutil', 'utf-8-validate'];

/**
 * Node options each component should run with (`node <options> dist/server/<component>.mjs`), written to
 * runtime-deps.json for the image's entry points and the chart. Every one is allowed in NODE_OPTIONS too
 * (checked by scripts/build-server.test.ts). Why these values: docs/adr/0014-server-bundles-and-v8-sizing.md.
 */
export const NODE_OPTIONS: Record<ServerComponent, string[]> = {
  // V8 grows the young generation's semi-spaces up to 16 MiB each under allocation bursts (reading the config, the
  // TLS handshake) and keeps them committed; 1 MiB caps that at ~3 MiB. Measured: ~5 MiB less idle RSS for the
  // agent (~2 relay-only), ~6 MiB for the gateway, at the relay CPU cost docs/adr/0014 records.
  agent: ['--max-semi-space-size=1'],
  gateway: ['--max-semi-space-size=1'],
  // Not measured under its load (reconciling hundreds of objects allocates in bursts): V8's defaults.
  operator: [],
};

/**
 * Environment each component should run with, next to {@link NODE_OPTIONS} (runtime-deps.json → `env`, for the
 * image's entry points, the chart and the operator's sidecar injection).
 * - `MALLOC_ARENA_MAX=2` (agent): glibc gives every thread that allocates its own malloc arena (up to 8 per core),
 *   and the libuv pool's and V8's worker threads each keep one with their pages touched; two arenas are enough for
 *   a process whose work runs on its main thread. Measured (test/bench/idle-rss.ts, medians of 3): agent idle RSS
 *   65.0 -> 63.7 MiB, relay-only 63.2 -> 62.0; the agent's CPU per relayed MB did not rise (docs/adr/0014). The
 *   gateway gains ~2 MiB too, but serves many connections at once and was not measured under load with it: not set
 *   there.
 */
export const RUNTIME_ENV: Record<ServerComponent, Record<string, string>> = {
  agent: { MALLOC_ARENA_MAX: '2' },
  gateway: {},
  operator: {},
};

/** The runtime-deps.json document. */
export interface RuntimeDeps {
  /** Packages the image installs into the `node_modules` next to `dist/` (exact versions). */
  dependencies: Record<string, string>;
  /** Node options per component (see {@link NODE_OPTIONS}). */
  nodeOptions: Record<ServerComponent, string[]>;
  /** Environment variables per component (see {@link RUNTIME_ENV}). */
  env: Record<ServerComponent, Record<string, string>>;
  /** The lowest Node the bundles are compiled for. */
  node: string;
}

async function declaredVersion(workspace: string, name: string): Promise<string> {
  const manifest = JSON.parse(await readFile(path.join(ROOT, workspace, 'package.json'), 'utf8')) as {
    dependencies?: Record<string, string>;
    optionalDependencies?: Record<string, string>;
  };
  const version = manifest.dependencies?.[name] ?? manifest.optionalDependencies?.[name];
  if (!version || !/^\d+\.\d+\.\d+/.test(version)) throw new Error(`${workspace}/package.json does not pin ${name} to an exact version`);
  return version;
}

/** Options of {@link buildServer}. */
export interface BuildServerOptions {
  /** Output directory; default {@link SERVER_DIST_DIR}. It is emptied first. */
  outDir?: string;
  /** Also write linked source maps. */
  sourcemap?: boolean;
}

/**
 * zod's `z` namespace re-exports every message locale (`z.locales`, ~45 languages, 350 KB); esbuild cannot drop
 * them because `z` is used as an object. The components use English messages only (zod's default, set by
 * `z.config(en())` inside zod) and never `z.locales`, so the bundle's locale index holds `en` alone: ~3 MiB less
 * RSS per process. A component that one day calls `z.locales.xx()` fails its bundle test (undefined function).
 */
const zodEnglishOnly: Plugin = {
  name: 'zod-english-only',
  setup(pluginBuild) {
    pluginBuild.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (args) =>
      /[\\/]zod[\\/]v4[\\/](classic|core|mini)[\\/]/.test(args.importer) ? { path: path.join(path.dirname(args.importer), '..', 'locales', 'index.js'), namespace: 'zod-locales' } : undefined,
    );
    pluginBuild.onLoad({ filter: /.*/, namespace: 'zod-locales' }, (args) => ({
      contents: "export { default as en } from './en.js';\n",
      resolveDir: path.dirname(args.path),
    }));
  },
};

/**
 * Node's built-in modules through `require()`, not `import`: an ES module import of a built-in makes Node build its
 * ES module facade, which reads every export, and reading the lazy ones loads what they stand for — `fs.promises`
 * and `fs.glob`'s code for `import { readFileSync } from 'node:fs'`, the whole `util` lazy set for
 * `import { parseArgs } from 'node:util'`. Measured in a bare Node 24 (RSS, bundles of one import): node:fs +2.3
 * MiB imported vs +0.2 required, node:util +2.2 vs +0.1, node:tls +7.7 vs +6.7; in the shipped bundles the gateway's
 * idle RSS 87.3 -> 85.5 MiB, the agent's unchanged (it loads those parts anyway). The bundle's import statements of
 * built-ins become one small CommonJS module each (`module.exports = require('node:fs')`) that esbuild's usual
 * interop reads (the default import is `module.exports`, named imports its properties: the same functions); the
 * banner's `require` loads them. `require()` calls in bundled CommonJS packages are left as they are.
 */
export const builtinsViaRequire: Plugin = {
  name: 'builtins-via-require',
  setup(pluginBuild) {
    const builtins = new Set(builtinModules);
    pluginBuild.onResolve({ filter: /^[a-z0-9_:/]+$/ }, (args) => {
      if (args.kind !== 'import-statement' && args.kind !== 'dynamic-import') return undefined;
      const name = args.path.startsWith('node:') ? args.path : builtins.has(args.path) ? `node:${args.path}` : undefined;
      return name ? { path: name, namespace: 'builtin-require' } : undefined;
    });
    pluginBuild.onLoad({ filter: /.*/, namespace: 'builtin-require' }, (args) => ({ contents: `module.exports = require(${JSON.stringify(args.path)});\n`, loader: 'js' }));
  },
};

/**
 * esbuild escapes non-ASCII characters in strings and identifiers but copies comments as they are, and one `’` in a
 * comment makes V8 hold that whole file's source as a two-byte string (twice the memory, for as long as the process
 * runs). Outside strings and identifiers only comments can hold them, so escaping them there changes no behaviour.
 */
export function asciiOnly(text: string): string {
  return text.replace(/[^\t\n\r -~]/gu, (c) => `\\u{${(c.codePointAt(0) as number).toString(16)}}`);
}

/** The commit of the checkout being built (40 hex digits), or "" when this is not a git checkout. */
async function sourceCommit(): Promise<string> {
  try {
    const { stdout } = await promisify(execFile)('git', ['rev-parse', 'HEAD'], { cwd: ROOT });
    const commit = stdout.trim();
    return /^[0-9a-f]{40}$/.test(commit) ? commit : '';
  } catch {
    return '';
  }
}

/** Builds the bundles and runtime-deps.json; returns the latter. */
export async function buildServer(options: BuildServerOptions = {}): Promise<RuntimeDeps> {
  const outDir = options.outDir ?? SERVER_DIST_DIR;
  await rm(outDir, { recursive: true, force: true });
  const commit = await sourceCommit();
  // One build per component, not one build of all three: with shared chunks, the agent would load a chunk holding
  // whatever the gateway shares with the operator (yaml, Kubernetes code) although it runs none of it.
  for (const [component, entry] of Object.entries(SERVER_ENTRIES)) {
    const result = await build({
      ...BUNDLE_DEFAULTS,
      plugins: [...(BUNDLE_DEFAULTS.plugins ?? []), zodEnglishOnly, builtinsViaRequire],
      entryPoints: { [component]: path.join(ROOT, entry) },
      outdir: outDir,
      outExtension: { '.js': '.mjs' },
      format: 'esm',
      splitting: true,
      chunkNames: `chunks/${component}/[name]-[hash]`,
      external: SERVER_EXTERNAL,
      sourcemap: options.sourcemap ? 'linked' : false,
      // narrowlink_build_info{commit}: the checkout's commit, or "" outside a git checkout (protocol/src/server-metrics.ts).
      define: { __NARROWLINK_COMMIT__: commit ? JSON.stringify(commit) : 'undefined' },
      write: false,
      // CommonJS dependencies inside an ES module bundle still call require() for Node's built-ins.
      banner: { js: "import { createRequire as __nlCreateRequire } from 'node:module';\nconst require = __nlCreateRequire(import.meta.url);" },
    });
    for (const file of result.outputFiles) {
      await mkdir(path.dirname(file.path), { recursive: true });
      await writeFile(file.path, file.path.endsWith('.mjs') ? asciiOnly(file.text) : file.contents);
    }
  }
  const deps: RuntimeDeps = {
    dependencies: {
      '@matrixai/quic': await declaredVersion('peer-link', '@matrixai/quic'),
      bufferutil: await declaredVersion('peer-link', 'bufferutil'),
    },
    nodeOptions: NODE_OPTIONS,
    env: RUNTIME_ENV,
    node: `>=${MIN_NODE}`,
  };
  await writeFile(path.join(outDir, 'runtime-deps.json'), `${JSON.stringify(deps, null, 2)}\n`);
  return deps;
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { out: { type: 'string' }, sourcemap: { type: 'boolean' } }, strict: true });
  const outDir = values.out ? path.resolve(values.out) : SERVER_DIST_DIR;
  await buildServer({ outDir, ...(values.sourcemap ? { sourcemap: true } : {}) });
  process.stdout.write(`built ${path.relative(process.cwd(), outDir) || '.'} (${Object.keys(SERVER_ENTRIES).join(', ')})\n`);
}
