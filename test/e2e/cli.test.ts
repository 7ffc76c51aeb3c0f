/**
 * The CLI against a real gateway and agent (loopback, NAT probing off so no UDP port is shared with other suites):
 * `status AGENT` exits 1 for an agent you may not reach or that has no connected instance, 0 once it is attached;
 * `forward -v` reports each connection when it ends (path, bytes each way, duration), and `-o json` carries the same
 * as a `stream-closed` event with the exact byte counts; `forward` warns about a target that is not reachable.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { type Stack, startStack } from './stack.ts';

let stack: Stack;
let echo: TestServer;
before(async () => {
  echo = await startEchoServer();
  stack = await startStack({
    agents: [
      { name: 'demo', expose: [{ name: 'echo', port: echo.port }] },
      { name: 'idle', expose: [{ name: 'echo', port: echo.port }] },
    ],
    gatewayArgs: ['--nat-probe-port', '0'],
  });
  await stack.startAgent('demo');
});
after(async () => {
  await stack?.stop();
  await echo?.close();
});

/** The NL_ERR_ code on stderr's `narrowlink: CODE: message` line. */
function errorCode(stderr: string): string | undefined {
  return /^narrowlink: (NL_ERR_[A-Z_]+):/m.exec(stderr)?.[1];
}

/** Sends `bytes` through `port` to the echo server and reads them back, then closes. */
async function roundTrip(port: number, bytes: number): Promise<void> {
  const socket = net.connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  let received = 0;
  await new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received >= bytes) resolve();
    });
    socket.once('error', reject);
    socket.write(Buffer.alloc(bytes, 7));
  });
  socket.end();
  await new Promise((resolve) => socket.once('close', resolve));
}

describe('status AGENT', () => {
  test('an agent you may not reach: exit 1, NL_ERR_STREAM_NO_AGENT', async () => {
    const run = await stack.runClient(['status', 'nosuch', '--mode', 'relay', '-o', 'json']);
    assert.equal(run.code, 1, run.stderr);
    assert.equal(errorCode(run.stderr), 'NL_ERR_STREAM_NO_AGENT');
    const status = JSON.parse(run.stdout.toString('utf8')) as { agent: { reachable: boolean } };
    assert.equal(status.agent.reachable, false);
  });

  test('an agent with no connected instance: exit 1', async () => {
    const run = await stack.runClient(['status', 'idle', '--mode', 'relay']);
    assert.equal(run.code, 1, run.stderr);
    assert.equal(errorCode(run.stderr), 'NL_ERR_STREAM_NO_AGENT');
  });

  test('an attached agent: exit 0', async () => {
    const run = await stack.runClient(['status', 'demo', '--mode', 'relay', '-o', 'json']);
    assert.equal(run.code, 0, run.stderr);
    assert.equal((JSON.parse(run.stdout.toString('utf8')) as { agent: { reachable: boolean } }).agent.reachable, true);
  });
});

describe('forward -v', () => {
  test('-o json: a stream-closed event per connection with path, exact bytes and duration', async () => {
    const forward = await stack.startForward('demo:echo', { args: ['-v'] });
    const port = forward.ports[0] as number;
    await roundTrip(port, 10_000);
    await roundTrip(port, 3_000);
    await forward.process.waitFor((line) => line.event === 'stream-closed' && line.bytesUp === 3_000);
    const closed = forward.process.lines.filter((line) => line.event === 'stream-closed');
    assert.deepEqual(
      closed.map((line) => [line.path, line.bytesUp, line.bytesDown]),
      [
        ['relay', 10_000, 10_000],
        ['relay', 3_000, 3_000],
      ],
    );
    assert.ok(closed.every((line) => typeof line.durationMs === 'number'));
  });

  test('text: one line per connection with -v, none without', async () => {
    const lines = async (verbose: boolean): Promise<string[]> => {
      const child = stack.spawnClient(['forward', '127.0.0.1:0', 'demo:echo', ...(verbose ? ['-v'] : [])]);
      let stderr = '';
      child.stderr?.on('data', (chunk: Buffer) => {
        stderr += chunk.toString('utf8');
      });
      try {
        // The ready line (text mode: on stderr) names the port.
        while (!/forwarding 127\.0\.0\.1:(\d+)/.test(stderr)) {
          assert.equal(child.exitCode, null, stderr);
          await new Promise((r) => setTimeout(r, 50));
        }
        const port = Number(/forwarding 127\.0\.0\.1:(\d+)/.exec(stderr)?.[1]);
        await roundTrip(port, 2048);
        await roundTrip(port, 2048);
        if (verbose) {
          while (stderr.split('\n').filter((l) => / down, /.test(l)).length < 2) await new Promise((r) => setTimeout(r, 50));
        }
        return stderr.split('\n').filter((l) => / -> demo:echo via relay: /.test(l));
      } finally {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('close', r));
      }
    };
    assert.equal((await lines(true)).length, 2);
    assert.equal((await lines(false)).length, 0);
  });
});

describe('forward to a target that is not reachable', () => {
  test('warns once the session is up (target-unavailable) and keeps listening', async () => {
    const forward = await stack.startForward(['nosuch:80', 'idle:echo', 'demo:echo']);
    const first = await forward.process.waitFor((line) => line.event === 'target-unavailable' && line.agent === 'nosuch');
    assert.equal(first.listed, false);
    const idle = await forward.process.waitFor((line) => line.event === 'target-unavailable' && line.agent === 'idle');
    assert.equal(idle.listed, true);
    assert.equal(forward.process.lines.filter((line) => line.event === 'target-unavailable' && line.agent === 'demo').length, 0);
    await roundTrip(forward.ports[2] as number, 100);
  });
});

describe('ls -o name', () => {
  test('one agent per line, as forward takes it; -o name is ls-only (exit 2 elsewhere)', async () => {
    const run = await stack.runClient(['ls', '-o', 'name']);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(run.stdout.toString('utf8').trim().split('\n').sort(), ['demo', 'idle']);
    const elsewhere = await stack.runClient(['status', '-o', 'name']);
    assert.equal(elsewhere.code, 2);
    assert.equal(errorCode(elsewhere.stderr), 'NL_ERR_CLI_USAGE');
  });
});
