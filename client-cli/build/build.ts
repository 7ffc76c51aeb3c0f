#!/usr/bin/env node
/**
 * Builds the publishable CLI package `@narrowlink/cli` from the client-cli workspace (docs/adr/0013-cli-packaging.md)
 * into client-cli/dist/ (git-ignored), a complete package directory:
 *
 *   package.json        generated: name @narrowlink/cli, the workspace's version, bins, engines, the one runtime dep
 *   bin/narrowlink.mjs, bin/kubectl-narrowlink.mjs
 *                       tiny entries: refuse a too-old Node with a clear message, turn on Node's compile cache,
 *                       then import the bundle (two files, so the kubectl plugin knows its name on Windows too)
 *   lib/main.mjs, lib/chunks/*.mjs
 *                       one ES module bundle of plain JavaScript for Node >= 22.19: every workspace package and
 *                       pure-JS dependency inlined (no workspace-relative imports, no TypeScript); code only some
 *                       commands need (@kubernetes/client-node, for login and kube contexts) is split into chunks
 *                       that load when a command asks for them
 *
 * Only what cannot be bundled stays outside: `@matrixai/quic` (a native binding found next to its own files; an
 * optional dependency, and optional at runtime too: see peer-link/src/quic/native.ts) and ws's optional native
 * helpers `bufferutil` / `utf-8-validate` (ws loads them in a try/catch and works without them).
 *
 *   node client-cli/build/build.ts          (npm run build:cli)
 *   node client-cli/build/build.ts --pack   also packs it: dist/narrowlink-cli-<version>.tgz   (npm run pack:cli)
 */
import { execFileSync } from 'node:child_process';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type BuildOptions, build, type Plugin } from 'esbuild';

/** The client-cli workspace directory. */
export const CLI_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** The package directory the build writes (git-ignored). */
export const DIST_DIR = path.join(CLI_DIR, 'dist');
/** The published package's name. */
export const PACKAGE_NAME = '@narrowlink/cli';
/** Lowest Node the package supports: the bundle is compiled for it and the bin entries check it. */
export const MIN_NODE = '22.19.0';

/** Packages the bundle leaves to runtime resolution (see the file comment). */
export const EXTERNAL = ['@matrixai/quic', '@matrixai/quic/*', 'bufferutil', 'utf-8-validate'];

/**
 * client-node's generated code (dist/gen: ~800 model and API modules) is reached from KubeConfig's module only for
 * two names it uses when building API clients, which the CLI never does. The package does not declare itself free
 * of side effects, so esbuild would keep every generated module; they are plain class and constant definitions, and
 * saying so lets esbuild drop the unused ones (the chunk `login` loads goes from 2.5 MB to a fraction).
 */
const clientNodeGeneratedIsPure: Plugin = {
  name: 'client-node-generated-is-pure',
  setup(pluginBuild) {
    pluginBuild.onResolve({ filter: /^\.{1,2}\// }, async (args) => {
      if (args.pluginData === 'resolving' || !/[\\/]@kubernetes[\\/]client-node[\\/]dist[\\/]/.test(args.importer)) return undefined;
      const resolved = await pluginBuild.resolve(args.path, { kind: args.kind, importer: args.importer, resolveDir: args.resolveDir, pluginData: 'resolving' });
      if (resolved.errors.length > 0 || !/[\\/]client-node[\\/]dist[\\/]gen[\\/]/.test(resolved.path)) return undefined;
      return { path: resolved.path, sideEffects: false };
    });
  },
};

/** esbuild's view of the workspace: the sources are TypeScript that esbuild strips as Node does. */
export const BUNDLE_DEFAULTS: BuildOptions = {
  bundle: true,
  platform: 'node',
  target: `node${MIN_NODE}`,
  legalComments: 'linked',
  logLevel: 'warning',
  conditions: ['node', 'import'],
  plugins: [clientNodeGeneratedIsPure],
};

/**
 * A bin entry: plain JavaScript any Node can parse, so a Node older than {@link MIN_NODE} gets a sentence instead
 * of a syntax error; `module.enableCompileCache()` keeps V8's compiled code of the bundle between runs (in the OS
 * temp directory), which roughly halves the start-up of every run after the first.
 */
function binEntry(): string {
  const [major, minor] = MIN_NODE.split('.').map(Number);
  return `#!/usr/bin/env node
import module from 'node:module';
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < ${major} || (major === ${major} && minor < ${minor})) {
  process.stderr.write('narrowlink: needs Node >= ${MIN_NODE}; this is ' + process.version + '. Install Node 22.19 or newer, or use the single executable (no Node needed).\\n');
  process.exit(2);
}
module.enableCompileCache?.();
await import('../lib/main.mjs');
`;
}

/** Builds {@link DIST_DIR}. */
export async function buildPackage(): Promise<void> {
  const source = JSON.parse(await readFile(path.join(CLI_DIR, 'package.json'), 'utf8')) as {
    version: string;
    dependencies: Record<string, string>;
  };
  const peerLink = JSON.parse(await readFile(path.join(CLI_DIR, '..', 'peer-link', 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  const quicVersion = peerLink.dependencies['@matrixai/quic'];
  if (!quicVersion) throw new Error('peer-link/package.json has no @matrixai/quic dependency');

  await rm(DIST_DIR, { recursive: true, force: true });
  await build({
    ...BUNDLE_DEFAULTS,
    entryPoints: { main: path.join(CLI_DIR, 'src/main.ts') },
    outdir: path.join(DIST_DIR, 'lib'),
    outExtension: { '.js': '.mjs' },
    format: 'esm',
    splitting: true,
    chunkNames: 'chunks/[name]-[hash]',
    external: EXTERNAL,
    define: { __NARROWLINK_CLI_VERSION__: JSON.stringify(source.version) },
    // CommonJS dependencies inside an ES module bundle still call require() for Node's built-ins.
    banner: { js: "import { createRequire as __nlCreateRequire } from 'node:module';\nconst require = __nlCreateRequire(import.meta.url);" },
  });
  await mkdir(path.join(DIST_DIR, 'bin'), { recursive: true });
  for (const name of ['narrowlink', 'kubectl-narrowlink']) {
    const file = path.join(DIST_DIR, 'bin', `${name}.mjs`);
    await writeFile(file, binEntry());
    await chmod(file, 0o755);
  }
  const manifest = {
    name: PACKAGE_NAME,
    version: source.version,
    description: 'narrowlink: reach services inside your Kubernetes cluster from your laptop, through a Narrowlink gateway.',
    license: 'Apache-2.0',
    type: 'module',
    bin: { narrowlink: 'bin/narrowlink.mjs', 'kubectl-narrowlink': 'bin/kubectl-narrowlink.mjs' },
    files: ['bin/', 'lib/', 'README.md'],
    engines: { node: `>=${MIN_NODE}` },
    // Optional twice over: npm skips it where it cannot install, and the CLI runs relay-only where it cannot load.
    optionalDependencies: { '@matrixai/quic': quicVersion },
    publishConfig: { access: 'public' },
  };
  await writeFile(path.join(DIST_DIR, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  await writeFile(
    path.join(DIST_DIR, 'README.md'),
    `# ${PACKAGE_NAME}

The \`narrowlink\` command line (also a kubectl plugin, \`kubectl narrowlink\`): reach services inside your
Kubernetes cluster from your laptop through a Narrowlink gateway. Needs Node >= ${MIN_NODE}; Linux, macOS and
Windows, x64 and arm64.

    npm install -g ${PACKAGE_NAME}
    narrowlink login
    narrowlink ls
    narrowlink forward 8080 demo:http

The direct (peer-to-peer QUIC) path uses a native binding with prebuilt binaries for linux-x64, macOS and
win32-x64; elsewhere the CLI says once that it runs relay-only, and everything works over the gateway's relay.
`,
  );
}

if (import.meta.main) {
  await buildPackage();
  process.stdout.write(`built ${path.relative(process.cwd(), DIST_DIR) || '.'} (${PACKAGE_NAME})\n`);
  if (process.argv.includes('--pack')) {
    const into = path.join(CLI_DIR, '..', 'dist');
    await mkdir(into, { recursive: true });
    const windows = process.platform === 'win32';
    execFileSync(windows ? 'npm.cmd' : 'npm', ['pack', DIST_DIR, '--pack-destination', into], { stdio: 'inherit', shell: windows });
  }
}
