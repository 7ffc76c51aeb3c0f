#!/usr/bin/env node
/**
 * Stages the image's application layer (deploy/build-image.sh, issue 13): everything under /app plus the links of
 * deploy/image/manifest.json, into a directory that the script packs as one deterministic tar.
 *
 *   node deploy/image/stage.ts --out DIR [--source TARGET=DIR ...]
 *       writes DIR/app/{dist/server,cli,node_modules} and DIR/usr/local/bin/* links; prints the staged runtime
 *       packages as JSON on stdout. --source takes an app entry from another directory than the manifest's
 *       repository path (build-image.sh builds the bundles into its own directory, so a concurrent
 *       `npm run build:server` in the working tree cannot swap files under it).
 *
 * The runtime `node_modules` is copied from the repository's own `node_modules` (which `npm ci` installed from
 * package-lock.json) rather than installed again from the registry: the image then carries exactly the bytes the
 * test suites ran against, the build needs no network after `npm ci`, and the lock file stays the one place that
 * decides versions. Which packages: the ones the bundles leave external (dist/server/runtime-deps.json, exact
 * versions, checked) and the CLI package's own dependencies, then — following Node's resolution from each package's
 * directory — their dependencies, optional dependencies that are installed (npm skips other platforms' binaries)
 * and required peer dependencies. A package's nested `node_modules` is copied only for the packages in that closure.
 */
import { cpSync, existsSync, lstatSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

/** The repository root. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The image description shared by build-image.sh, the Dockerfile check and the tests. */
export const MANIFEST_PATH = path.join(ROOT, 'deploy', 'image', 'manifest.json');

/** deploy/image/manifest.json (the fields the tooling reads). */
export interface ImageManifest {
  name: string;
  base: { suite: string; variant: string; include: string[]; sourceDateEpoch: number };
  user: { uid: number; gid: number; name: string; home: string };
  node: { package: string; binary: string };
  workdir: string;
  entrypoint: string[];
  cmd: string[];
  env: Record<string, string>;
  labels: Record<string, string>;
  /** component → its entry file, relative to {@link ImageManifest.workdir}. */
  components: Record<string, string>;
  /** path under the workdir → what it holds (the repository path it comes from, except node_modules). */
  app: Record<string, string>;
  /** absolute link path in the image → its target. */
  links: Record<string, string>;
}

/** Reads deploy/image/manifest.json. */
export function readManifest(file: string = MANIFEST_PATH): ImageManifest {
  return JSON.parse(readFileSync(file, 'utf8')) as ImageManifest;
}

/** A build input is missing or does not match what it must be (the script prints the message and stops). */
export class StageError extends Error {
  override name = 'StageError';
}

interface PackageJson {
  name?: string;
  version?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

function readPackageJson(dir: string): PackageJson {
  return JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as PackageJson;
}

/** One package of the runtime closure. */
export interface StagedPackage {
  name: string;
  version: string;
  /** Its directory relative to the repository root, e.g. `node_modules/@matrixai/quic`. */
  dir: string;
}

/** Node's lookup: `<dir>/node_modules/<name>` from `fromDir` up to (and including) `root`. */
function resolvePackageDir(root: string, fromDir: string, name: string): string | undefined {
  let dir = fromDir;
  for (;;) {
    const candidate = path.join(dir, 'node_modules', name);
    if (existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (dir === root) return undefined;
    const parent = path.dirname(dir);
    if (parent === dir || !parent.startsWith(root)) return undefined;
    dir = parent;
  }
}

/**
 * The packages a production install of `roots` (name → exact version) needs, resolved in `root`'s node_modules.
 * Throws {@link StageError} when a root is missing or has another version, when a required dependency is not
 * installed, or when a package resolves to a workspace link (bundled code must not need a workspace at runtime).
 */
export function runtimeClosure(root: string, roots: Record<string, string>): StagedPackage[] {
  const found = new Map<string, StagedPackage>();
  const queue: string[] = [];
  for (const [name, version] of Object.entries(roots)) {
    const dir = resolvePackageDir(root, root, name);
    if (dir === undefined) throw new StageError(`runtime dependency ${name}@${version} is not installed in ${root}/node_modules (run npm ci)`);
    const actual = readPackageJson(dir).version;
    if (actual !== version) throw new StageError(`runtime dependency ${name}: ${version} wanted, ${actual} installed (run npm ci; is the build output stale?)`);
    queue.push(dir);
  }
  while (queue.length > 0) {
    const dir = queue.shift() as string;
    const rel = path.relative(root, dir);
    if (found.has(rel)) continue;
    if (lstatSync(dir).isSymbolicLink()) throw new StageError(`${rel} is a link (a workspace?): the image's runtime packages must be real packages`);
    const pkg = readPackageJson(dir);
    found.set(rel, { name: pkg.name ?? rel, version: pkg.version ?? '0.0.0', dir: rel });
    const required = { ...pkg.dependencies };
    for (const [name] of Object.entries(pkg.peerDependencies ?? {})) {
      if (pkg.peerDependenciesMeta?.[name]?.optional !== true) required[name] = pkg.peerDependencies?.[name] ?? '*';
    }
    for (const name of Object.keys(required)) {
      const depDir = resolvePackageDir(root, dir, name);
      if (depDir === undefined) throw new StageError(`${pkg.name}@${pkg.version} needs ${name}, which is not installed (run npm ci)`);
      queue.push(depDir);
    }
    // Optional dependencies npm did not install (other platforms' binaries) are simply absent.
    for (const name of Object.keys(pkg.optionalDependencies ?? {})) {
      const depDir = resolvePackageDir(root, dir, name);
      if (depDir !== undefined) queue.push(depDir);
    }
  }
  return [...found.values()].sort((a, b) => (a.dir < b.dir ? -1 : a.dir > b.dir ? 1 : 0));
}

/** The roots of the runtime closure: the bundles' external packages and the CLI package's dependencies. */
export function runtimeRoots(root: string, manifest: ImageManifest, sources: Record<string, string> = {}): Record<string, string> {
  const serverDir = sources['dist/server'] ?? path.join(root, manifest.app['dist/server'] ?? 'dist/server');
  const depsFile = path.join(serverDir, 'runtime-deps.json');
  if (!existsSync(depsFile)) throw new StageError(`${path.relative(root, depsFile)} is missing: run npm run build:server`);
  const deps = JSON.parse(readFileSync(depsFile, 'utf8')) as { dependencies?: Record<string, string> };
  const roots: Record<string, string> = { ...deps.dependencies };
  const cliSource = sources.cli ?? (manifest.app.cli === undefined ? undefined : path.join(root, manifest.app.cli));
  if (cliSource !== undefined) {
    const cli = readPackageJson(cliSource);
    for (const [name, version] of Object.entries({ ...cli.dependencies, ...cli.optionalDependencies })) {
      if (roots[name] !== undefined && roots[name] !== version) throw new StageError(`${name}: the server bundles want ${roots[name]}, the CLI ${version}`);
      roots[name] = version;
    }
  }
  for (const [name, version] of Object.entries(roots)) {
    if (!/^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/.test(version)) throw new StageError(`runtime dependency ${name}: ${version} is not an exact version`);
  }
  return roots;
}

/**
 * Copies the app tree of the manifest into `out` (an empty directory); returns the staged runtime packages.
 * `sources` maps an app entry (`dist/server`, `cli`) to the absolute directory to take it from instead of the
 * manifest's repository path.
 */
export function stageApp(root: string, manifest: ImageManifest, out: string, sources: Record<string, string> = {}): StagedPackage[] {
  const appDir = path.join(out, manifest.workdir);
  mkdirSync(appDir, { recursive: true });
  for (const [target, source] of Object.entries(manifest.app)) {
    if (target === 'node_modules') continue;
    const from = sources[target] ?? path.join(root, source);
    if (!existsSync(from)) throw new StageError(`${from} is missing: run npm run build:server and npm run build:cli`);
    cpSync(from, path.join(appDir, target), { recursive: true, verbatimSymlinks: true });
  }
  for (const file of Object.values(manifest.components)) {
    if (!existsSync(path.join(appDir, file))) throw new StageError(`the staged app has no ${file} (a component's entry point)`);
  }
  const packages = runtimeClosure(root, runtimeRoots(root, manifest, sources));
  for (const pkg of packages) {
    cpSync(path.join(root, pkg.dir), path.join(appDir, pkg.dir), {
      recursive: true,
      verbatimSymlinks: true,
      // Nested node_modules are copied as closure members of their own (only the ones needed at runtime).
      filter: (src) => path.relative(path.join(root, pkg.dir), src).split(path.sep)[0] !== 'node_modules',
    });
  }
  for (const [link, target] of Object.entries(manifest.links)) {
    mkdirSync(path.join(out, path.dirname(link)), { recursive: true });
    symlinkSync(target, path.join(out, link));
  }
  return packages;
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { out: { type: 'string' }, root: { type: 'string' }, source: { type: 'string', multiple: true } } });
  const sources: Record<string, string> = {};
  for (const spec of values.source ?? []) {
    const eq = spec.indexOf('=');
    if (eq <= 0) values.out = undefined;
    else sources[spec.slice(0, eq)] = path.resolve(spec.slice(eq + 1));
  }
  if (values.out === undefined) {
    process.stderr.write('usage: node deploy/image/stage.ts --out DIR [--root REPO] [--source TARGET=DIR ...]\n');
    process.exit(2);
  }
  try {
    const packages = stageApp(path.resolve(values.root ?? ROOT), readManifest(), path.resolve(values.out), sources);
    process.stdout.write(`${JSON.stringify(packages)}\n`);
  } catch (err) {
    if (!(err instanceof StageError)) throw err;
    process.stderr.write(`[image] error: ${err.message}\n`);
    process.exit(1);
  }
}
