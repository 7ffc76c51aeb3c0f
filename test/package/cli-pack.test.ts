/**
 * The CLI as a user installs it: `npm pack` of the built @narrowlink/cli package, `npm install -g` of the tarball into
 * an empty prefix, then `narrowlink` from that prefix's bin run by Node 22.19 (the oldest supported; not the
 * repository's pinned Node, which is kept off the PATH) against a local stack (gateway without the fixed NAT probe
 * port, an agent, an echo server): --version, ls, forward with the bytes verified; and, with the platform's native
 * QUIC binding removed from the install, `forward` in auto mode says once that it runs relay-only and still works.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rename, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ROOT } from '../helpers/paths.ts';
import { sendAndHash, startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { type Stack, startStack } from '../e2e/stack.ts';
import { installGlobal, nodeOnPath, OTHER_NODE_VERSION, otherNodeBin, packCli, pathWithout, runBinary, startBinary } from './fixtures.ts';

const VERSION = (JSON.parse(readFileSync(path.join(ROOT, 'client-cli/package.json'), 'utf8')) as { version: string }).version;

describe(`the packed CLI, installed with npm into an empty prefix, under Node ${OTHER_NODE_VERSION}`, { timeout: 240_000 }, async () => {
  const nodeBin = await otherNodeBin();
  if (!nodeBin) {
    test('skipped', { skip: `npm has no node-${process.platform}-${process.arch} package` }, () => {});
    return;
  }
  let dir: string;
  let narrowlink: string;
  let prefix: string;
  let echo: TestServer;
  let stack: Stack;
  let env: Record<string, string>;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'nl-package-'));
    const tarball = await packCli(path.join(dir, 'pack'));
    prefix = path.join(dir, 'prefix');
    narrowlink = path.join(await installGlobal(tarball, prefix), 'narrowlink');
    echo = await startEchoServer();
    // --nat-probe-port 0: no fixed UDP 3478, so this suite never clashes with another stack's gateway.
    stack = await startStack({ agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }], gatewayArgs: ['--nat-probe-port', '0'] });
    await stack.startAgent('svc');
    env = { PATH: pathWithout([nodeBin]), HOME: path.join(dir, 'home'), XDG_CONFIG_HOME: path.join(dir, 'xdg'), NARROWLINK_MODE: 'relay' };
  });
  after(async () => {
    await stack?.stop();
    await echo?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('the installed package is plain JavaScript with no workspace imports, and its bin runs under the other Node', async () => {
    const installed = path.join(prefix, 'lib', 'node_modules', '@narrowlink', 'cli');
    const manifest = JSON.parse(readFileSync(path.join(installed, 'package.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(Object.keys(manifest.bin as object).sort(), ['kubectl-narrowlink', 'narrowlink']);
    assert.equal(manifest.dependencies, undefined, 'everything but the native QUIC binding is bundled');
    const main = readFileSync(path.join(installed, 'lib', 'main.mjs'), 'utf8');
    assert.doesNotMatch(main, /from ["']@narrowlink\//);
    assert.doesNotMatch(main, /\.ts["']/);
    assert.equal(nodeOnPath(env.PATH ?? ''), path.join(nodeBin, 'node'), 'the pinned Node is off the PATH');
    const node = await runBinary(path.join(nodeBin, 'node'), ['--version'], env);
    assert.equal(node.stdout.trim(), `v${OTHER_NODE_VERSION}`);
  });

  test('--version prints the package version', async () => {
    const result = await runBinary(narrowlink, ['--version'], env);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, new RegExp(`\\b${VERSION.replaceAll('.', '\\.')}\\b`));
    const plugin = await runBinary(path.join(path.dirname(narrowlink), 'kubectl-narrowlink'), ['--version'], env);
    assert.equal(plugin.code, 0, plugin.stderr);
    // The CLI's own view: it runs under the other Node.
    const json = await runBinary(narrowlink, ['version', '-o', 'json'], env);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(JSON.parse(json.stdout), { version: VERSION, node: `v${OTHER_NODE_VERSION}`, platform: `${process.platform}-${process.arch}` });
  });

  test('ls lists the agent', async () => {
    const result = await runBinary(narrowlink, ['ls', '-o', 'json', ...stack.clientArgs()], env);
    assert.equal(result.code, 0, result.stderr);
    const { agents } = JSON.parse(result.stdout) as { agents: Array<{ name: string }> };
    assert.ok(agents.some((agent) => agent.name === 'svc'), result.stdout);
  });

  test('forward carries bytes both ways', async () => {
    const forward = startBinary(narrowlink, ['forward', '-o', 'json', '-L', '127.0.0.1:0:svc:echo', ...stack.clientArgs()], env);
    try {
      const ready = await forward.waitEvent('ready');
      const port = (ready.listeners as Array<{ port: number }>)[0]?.port ?? 0;
      const result = await sendAndHash(port, 512 * 1024);
      assert.equal(result.replyBytes, 512 * 1024);
      assert.equal(result.replySha256, result.sentSha256);
    } finally {
      assert.equal(await forward.stop(), 0);
    }
  });

  test('without a loadable QUIC binding: one "running relay-only" line with the reason, no stack trace, bytes still flow', async () => {
    const binding = path.join(prefix, 'lib', 'node_modules', '@narrowlink', 'cli', 'node_modules', '@matrixai', `quic-${process.platform}-${process.arch}`);
    const moved = `${binding}.removed`;
    if (existsSync(binding)) await rename(binding, moved);
    try {
      const forward = startBinary(narrowlink, ['forward', '-o', 'json', '-L', '127.0.0.1:0:svc:echo', ...stack.clientArgs()], { ...env, NARROWLINK_MODE: 'auto' });
      try {
        const ready = await forward.waitEvent('ready');
        const port = (ready.listeners as Array<{ port: number }>)[0]?.port ?? 0;
        for (let i = 0; i < 2; i++) {
          const result = await sendAndHash(port, 64 * 1024, i + 1);
          assert.equal(result.replySha256, result.sentSha256);
        }
      } finally {
        assert.equal(await forward.stop(), 0);
      }
      const stderr = forward.stderr();
      assert.equal(stderr.match(/running relay-only: no native QUIC binding loads/g)?.length, 1, stderr);
      assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace');
    } finally {
      if (existsSync(moved)) await rename(moved, binding);
    }
  });
});
