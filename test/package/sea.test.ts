/**
 * The single executable (client-cli/build/sea.ts, `npm run build:sea`): built here, then run with a PATH that holds
 * no `node` at all against a local stack (gateway without the fixed NAT probe port, an agent, an echo server):
 * `forward` carries bytes both ways, and in auto mode it says once that it runs relay-only (the executable carries
 * no native QUIC binding) instead of failing.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildSea } from '../../client-cli/build/sea.ts';
import { type Stack, startStack } from '../e2e/stack.ts';
import { sendAndHash, startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { nodeOnPath, runBinary, startBinary } from './fixtures.ts';

// The release artifact is built for Linux (macOS would also need the injected binary re-signed).
const skip = process.platform === 'linux' ? false : 'the single executable is a Linux release artifact';

describe('the single executable runs forward with no Node on the PATH', { timeout: 240_000, skip }, () => {
  let dir: string;
  let executable: string;
  let echo: TestServer;
  let stack: Stack;
  let env: Record<string, string>;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'nl-sea-'));
    executable = await buildSea();
    echo = await startEchoServer();
    stack = await startStack({ agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }], gatewayArgs: ['--nat-probe-port', '0'] });
    await stack.startAgent('svc');
    const emptyBin = path.join(dir, 'bin');
    await mkdir(emptyBin);
    env = { PATH: emptyBin, HOME: path.join(dir, 'home'), XDG_CONFIG_HOME: path.join(dir, 'xdg'), NARROWLINK_MODE: 'auto' };
  });
  after(async () => {
    await stack?.stop();
    await echo?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('no node on the PATH; --help works', async () => {
    assert.equal(nodeOnPath(env.PATH ?? ''), undefined);
    const result = await runBinary(executable, ['--help'], env);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /narrowlink/);
  });

  test('forward: bytes verified, relay-only said once, no stack trace', async () => {
    const forward = startBinary(executable, ['forward', '-o', 'json', '-L', '127.0.0.1:0:svc:echo', ...stack.clientArgs()], env);
    try {
      const ready = await forward.waitEvent('ready');
      const port = (ready.listeners as Array<{ port: number }>)[0]?.port ?? 0;
      const result = await sendAndHash(port, 512 * 1024);
      assert.equal(result.replyBytes, 512 * 1024);
      assert.equal(result.replySha256, result.sentSha256);
    } finally {
      assert.equal(await forward.stop(), 0);
    }
    const stderr = forward.stderr();
    assert.equal(stderr.match(/running relay-only: the single executable carries no native QUIC binding/g)?.length, 1, stderr);
    assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace');
  });
});
