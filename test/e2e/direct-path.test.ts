/**
 * The direct path end to end on loopback: real gateway (probing on 127.0.0.1), agent and client processes. The
 * first stream of a `forward` goes through the relay while the client asks for a direct path; once it is up, new
 * streams take it, and their bytes never cross the gateway (its relay counter stands still). Policy decides
 * before any punching; revoking Direct closes the path and streams return to the relay. The NAT lab
 * (test/natlab) repeats this through real NATs.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import {
  deterministicSha256,
  receiveAndHash,
  sendAndHash,
  startEchoServer,
  startSinkServer,
  startSourceServer,
  type SourceServer,
  type TestServer,
} from '../helpers/tcp-fixtures.ts';
import { waitFor } from '../helpers/wait.ts';
import { type ForwardProcess, type Stack, startStack } from './stack.ts';

const MiB = 1024 * 1024;
const BIG = 64 * MiB;

async function relayBytes(stack: Stack): Promise<number> {
  return (await stack.metric('narrowlink_gateway_relay_bytes_total')) ?? 0;
}

describe('direct path on loopback (auto mode)', () => {
  let stack: Stack;
  let forward: ForwardProcess;
  let echo: TestServer;
  let sink: TestServer;
  let source: SourceServer;

  before(async () => {
    echo = await startEchoServer();
    sink = await startSinkServer();
    source = await startSourceServer(BIG, 5);
    stack = await startStack({
      tls: true,
      clientMode: 'auto',
      agents: [
        {
          name: 'svc',
          expose: [
            { name: 'echo', port: echo.port },
            { name: 'sink', port: sink.port },
            { name: 'source', port: source.port },
          ],
        },
      ],
    });
    await stack.startAgent('svc');
    forward = await stack.startForward(['svc:echo', 'svc:sink', 'svc:source']);
  });
  after(async () => {
    await stack?.stop();
    await Promise.all([echo?.close(), sink?.close(), source?.close()]);
  });

  test('the first stream goes through the relay at once; the direct path comes up behind it', async () => {
    const first = await sendAndHash(forward.ports[0] as number, 1024, 3);
    assert.equal(first.replySha256, first.sentSha256);
    const opened = await forward.process.waitFor((l) => l.event === 'stream-open');
    assert.equal(opened.path, 'relay');
    const up = await forward.process.waitFor((l) => l.event === 'direct-up', 10_000);
    assert.equal(up.agent, 'svc');
    assert.ok(typeof up.ms === 'number' && up.ms < 2000, `direct path ready in ${up.ms} ms`);
    await waitFor('the gateway to count the path up', async () => (await stack.metric('narrowlink_gateway_direct_paths_up')) === 1, 5000);
  });

  test('64 MiB client → agent over the direct path: sha256 verified, zero bytes through the gateway', { timeout: 60_000 }, async () => {
    const before = await relayBytes(stack);
    const result = await sendAndHash(forward.ports[1] as number, BIG, 21);
    assert.equal(result.sentSha256, deterministicSha256(BIG, 21));
    assert.equal(result.replyHead, result.sentSha256, 'sink saw exactly the bytes sent');
    const opened = forward.process.lines.filter((l) => l.event === 'stream-open' && l.target === 'svc:sink');
    assert.equal(opened.at(-1)?.path, 'direct');
    assert.equal(await relayBytes(stack), before, 'the relay carried none of it');
  });

  test('64 MiB agent → client over the direct path: sha256 verified', { timeout: 60_000 }, async () => {
    const before = await relayBytes(stack);
    const result = await receiveAndHash(forward.ports[2] as number);
    assert.equal(result.bytes, BIG);
    assert.equal(result.sha256, source.expectedSha256);
    assert.equal(await relayBytes(stack), before);
  });

  test('16 MiB echoes over the direct path come back whole, five in a row, and the path stays quick', { timeout: 60_000 }, async () => {
    for (let i = 0; i < 5; i++) {
      const result = await sendAndHash(forward.ports[0] as number, 16 * MiB, 30 + i);
      assert.equal(result.replyBytes, 16 * MiB, `echo ${i}: ${result.replyBytes} bytes back`);
      assert.equal(result.replySha256, result.sentSha256, `echo ${i}`);
    }
    const opens = forward.process.lines.filter((l) => l.event === 'stream-open' && l.target === 'svc:echo').slice(-5);
    assert.deepEqual(opens.map((l) => l.path), ['direct', 'direct', 'direct', 'direct', 'direct']);
    assert.ok(opens.every((l) => (l.ms as number) < 1000), JSON.stringify(opens.map((l) => l.ms)));
  });

  test('`narrowlink status svc` sets up its own direct path and reports how', async () => {
    const run = await stack.runClient(['status', 'svc', '-o', 'json']);
    assert.equal(run.code, 0, run.stderr);
    const status = JSON.parse(run.stdout.toString()) as { nat: { natType: string }; direct: { state: string; via: string; readyInMs: number; remote: unknown } };
    assert.equal(status.nat.natType, 'no-nat');
    assert.equal(status.direct.state, 'up', JSON.stringify(status.direct));
    assert.ok(status.direct.remote);
  });

  test('`connect --mode direct` carries a stream over the direct path alone', async () => {
    const run = await stack.runClient(['connect', 'svc', 'echo', '--mode', 'direct'], { input: 'over the direct path\n' });
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout.toString(), 'over the direct path\n');
  });

  test('revoking Direct in the policy closes the path; an open direct stream is cut, new streams use the relay', async () => {
    const socket = net.connect(forward.ports[0] as number, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write('ping');
    await new Promise((resolve) => socket.once('data', resolve));
    const lastOpen = forward.process.lines.filter((l) => l.event === 'stream-open').at(-1);
    assert.equal(lastOpen?.path, 'direct');
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
    await stack.reloadConfig((config) => ({
      ...config,
      policies: config.policies.map((p) => ({ ...p, rules: [{ action: 'Allow' as const, paths: ['Relay' as const] }] })),
    }));
    await closed;
    const failed = await forward.process.waitFor((l) => l.event === 'direct-failed', 5000);
    assert.ok(['ClosedByGateway', 'PathLost'].includes(String(failed.reason)), String(failed.reason));
    const again = await sendAndHash(forward.ports[0] as number, 4096, 9);
    assert.equal(again.replySha256, again.sentSha256);
    assert.equal(forward.process.lines.filter((l) => l.event === 'stream-open').at(-1)?.path, 'relay');
    // With Direct denied, asking again is refused before any punching, and direct mode fails fast with the reason.
    const started = performance.now();
    const run = await stack.runClient(['connect', 'svc', 'echo', '--mode', 'direct'], { input: 'x' });
    assert.equal(run.code, 1);
    assert.match(run.stderr, /NL_ERR_DIRECT_UNAVAILABLE.*Denied/);
    assert.ok(performance.now() - started < 5000);
  });
});

describe('direct path refused: the agent runs relay-only', () => {
  let stack: Stack;
  let echo: TestServer;
  before(async () => {
    echo = await startEchoServer();
    stack = await startStack({ clientMode: 'auto', agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }] });
    await stack.startAgent('svc', { args: ['--relay-only'] });
  });
  after(async () => {
    await stack?.stop();
    await echo?.close();
  });

  test('direct mode fails fast with NL_ERR_DIRECT_UNAVAILABLE (NotProbed); auto mode still works over the relay', async () => {
    const started = performance.now();
    const run = await stack.runClient(['connect', 'svc', 'echo', '--mode', 'direct'], { input: 'x' });
    assert.equal(run.code, 1);
    assert.match(run.stderr, /NL_ERR_DIRECT_UNAVAILABLE.*NotProbed/);
    assert.ok(performance.now() - started < 5000);
    const auto = await stack.runClient(['connect', 'svc', 'echo'], { input: 'relay still works' });
    assert.equal(auto.code, 0, auto.stderr);
    assert.equal(auto.stdout.toString(), 'relay still works');
  });
});

describe('direct only: an agent with mode direct, a policy allowing Direct only', () => {
  let stack: Stack;
  let echo: TestServer;
  before(async () => {
    echo = await startEchoServer();
    stack = await startStack({
      clientMode: 'auto',
      agents: [
        { name: 'p2p', mode: 'direct', expose: [{ name: 'echo', port: echo.port }] },
        { name: 'svc', expose: [{ name: 'echo', port: echo.port }] },
      ],
      policies: [
        {
          name: 'direct-only',
          namespace: 'default',
          subjects: [{ kind: 'Group', name: 'e2e' }],
          rules: [{ action: 'Allow', agents: { names: ['p2p'] } }, { action: 'Allow', agents: { names: ['svc'] }, paths: ['Direct'] }],
        },
      ],
    });
    await stack.startAgent('p2p');
    await stack.startAgent('svc');
  });
  after(async () => {
    await stack?.stop();
    await echo?.close();
  });

  for (const agent of ['p2p', 'svc']) {
    test(`${agent}: auto mode's first stream waits for the direct path instead of failing; relay mode is refused`, async () => {
      const forward = await stack.startForward([`${agent}:echo`]);
      const result = await sendAndHash(forward.ports[0] as number, 64 * 1024, 4);
      assert.equal(result.replySha256, result.sentSha256);
      const opened = await forward.process.waitFor((l) => l.event === 'stream-open');
      assert.equal(opened.path, 'direct');
      assert.equal(await relayBytes(stack), 0);
      await forward.process.stop();
      const relay = await stack.runClient(['connect', agent, 'echo', '--mode', 'relay'], { input: 'x' });
      assert.equal(relay.code, 1);
      assert.match(relay.stderr, /NL_ERR_STREAM_RELAY_NOT_OFFERED/);
    });
  }
});
