/**
 * The single executable (client-cli/build/sea.ts, `npm run build:sea`): built here, then run with a PATH that holds
 * no `node` at all against a local stack (gateway, an agent, an echo server): `forward` carries bytes both ways;
 * the QUIC binding embedded in the executable loads (unpacked into the user's cache directory) and `status AGENT`
 * brings up a direct path with it. The gateway's NAT probe ports are a free pair, not the fixed 3478, so this
 * suite never clashes with another stack.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildSea } from '../../client-cli/build/sea.ts';
import { type Stack, startStack } from '../e2e/stack.ts';
import { sendAndHash, startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { nodeOnPath, runBinary, startBinary } from './fixtures.ts';
import { freeUdpPortPair } from '../helpers/ports.ts';

// The release artifact is built for Linux (macOS would also need the injected binary re-signed).
const skip = process.platform === 'linux' ? false : 'the single executable is a Linux release artifact';
// Where the executable embeds a QUIC binding (the platforms @matrixai/quic ships one for).
const embedsQuic = ['linux-x64', 'darwin-x64', 'darwin-arm64', 'win32-x64'].includes(`${process.platform}-${process.arch}`);

describe('the single executable runs with no Node on the PATH', { timeout: 240_000, skip }, () => {
  let dir: string;
  let executable: string;
  let echo: TestServer;
  let stack: Stack;
  let env: Record<string, string>;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'nl-sea-'));
    executable = await buildSea();
    echo = await startEchoServer();
    const probePort = await freeUdpPortPair();
    stack = await startStack({
      clientMode: 'auto',
      agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }],
      gatewayArgs: ['--nat-probe-port', String(probePort), '--nat-probe-address', '127.0.0.1'],
    });
    await stack.startAgent('svc');
    const emptyBin = path.join(dir, 'bin');
    await mkdir(emptyBin);
    env = {
      PATH: emptyBin,
      HOME: path.join(dir, 'home'),
      XDG_CONFIG_HOME: path.join(dir, 'xdg'),
      XDG_CACHE_HOME: path.join(dir, 'cache'),
      NARROWLINK_MODE: 'auto',
    };
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

  test('forward: bytes verified, no stack trace', async () => {
    const forward = startBinary(executable, ['forward', '-o', 'json', '-L', '127.0.0.1:0:svc:echo', ...stack.clientArgs()], env);
    try {
      const ready = await forward.waitEvent('ready');
      const port = (ready.listeners as Array<{ port: number }>)[0]?.port ?? 0;
      for (let i = 0; i < 2; i++) {
        const result = await sendAndHash(port, 512 * 1024, i + 1);
        assert.equal(result.replyBytes, 512 * 1024);
        assert.equal(result.replySha256, result.sentSha256);
      }
    } finally {
      assert.equal(await forward.stop(), 0);
    }
    const stderr = forward.stderr();
    assert.equal(/running relay-only/.test(stderr), !embedsQuic, stderr);
    assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace');
  });

  test('status AGENT: the embedded QUIC binding carries a direct path', { skip: embedsQuic ? false : 'no binding to embed here' }, async () => {
    const result = await runBinary(executable, ['status', 'svc', '-o', 'json', ...stack.clientArgs()], env);
    assert.equal(result.code, 0, result.stderr);
    const status = JSON.parse(result.stdout) as { direct: { state: string; reason?: string } };
    assert.equal(status.direct.state, 'up', JSON.stringify(status.direct));
    // Unpacked once into the user's cache directory, private to the user.
    const unpacked = readdirSync(path.join(env.XDG_CACHE_HOME ?? '', 'narrowlink', 'native')).filter((name) => name.endsWith('.node'));
    assert.equal(unpacked.length, 1, unpacked.join(', '));
  });
});
