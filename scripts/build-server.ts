#!/usr/bin/env node
/**
 * Builds the server components as compiled JavaScript (issue 13; the CLI's approach, docs/adr/0013): one esbuild
 * run over the gateway, agent sidecar and operator entry points into dist/server/ (git-ignored):
 *
 *   gateway.mjs, agent.mjs, operator.mjs   run as `node dist/server/<component>.mjs <the entry point's flags>`
 *   chunks/*.mjs                           code shared by the entries, and code loaded on demand (dynamic imports:
 *                                          the direct path's certificate code, Kubernetes clients); a process reads
 *                                          only the chunks it imports, so an idle agent never holds the operator's
 *                                          or the gateway's code
 *   runtime-deps.json                      what the image must carry next to dist/ (`node_modules/`), exact
 *                                          versions, and the Node options each component should run with
 *
 * Why compiled: Node's type stripping costs ~17 MiB of RSS per process and a slow start (issue 13), and every
 * injected sidecar pays it. Why chunks and not one file per component: V8 keeps a script's whole source text in
 * the heap, so code an idle process never runs should not be in the files it loads.
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
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
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
  agent: [],
  gateway: [],
  operator: [],
};

/** The runtime-deps.json document. */
export interface RuntimeDeps {
  /** Packages the image installs into the `node_modules` next to `dist/` (exact versions). */
  dependencies: Record<string, string>;
  /** Node options per component (see {@link NODE_OPTIONS}). */
  nodeOptions: Record<ServerComponent, string[]>;
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

/** Builds the bundles and runtime-deps.json; returns the latter. */
export async function buildServer(options: BuildServerOptions = {}): Promise<RuntimeDeps> {
  const outDir = options.outDir ?? SERVER_DIST_DIR;
  await rm(outDir, { recursive: true, force: true });
  await build({
    ...BUNDLE_DEFAULTS,
    entryPoints: Object.fromEntries(Object.entries(SERVER_ENTRIES).map(([name, entry]) => [name, path.join(ROOT, entry)])),
    outdir: outDir,
    outExtension: { '.js': '.mjs' },
    format: 'esm',
    splitting: true,
    chunkNames: 'chunks/[name]-[hash]',
    external: SERVER_EXTERNAL,
    sourcemap: options.sourcemap ? 'linked' : false,
    // CommonJS dependencies inside an ES module bundle still call require() for Node's built-ins.
    banner: { js: "import { createRequire as __nlCreateRequire } from 'node:module';\nconst require = __nlCreateRequire(import.meta.url);" },
  });
  const deps: RuntimeDeps = {
    dependencies: {
      '@matrixai/quic': await declaredVersion('peer-link', '@matrixai/quic'),
      bufferutil: await declaredVersion('peer-link', 'bufferutil'),
    },
    nodeOptions: NODE_OPTIONS,
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
