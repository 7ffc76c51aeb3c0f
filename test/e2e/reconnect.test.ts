/**
 * Reconnect that a person can feel: after the gateway is killed (kill -9) and restarted on the same port, how long
 * from its ready line until the agent is attached again and a new connection through `forward` and through `socks`
 * carries bytes. Real processes; the measured values are printed as test diagnostics.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { type StartedProcess, startProcess } from '../helpers/processes.ts';
import { sendAndHash, startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { type ForwardProcess, SCRIPTS, type SocksProcess, type Stack, startStack } from './stack.ts';

/** Long enough that the old doubling backoff (250 ms · 2^n, up to 30 s) would be waiting seconds by now. */
const OUTAGE_MS = 4000;
/** The target is 2 s (p99) on an idle machine; the assertion leaves room for a loaded shared one. */
const BOUND_MS = 5000;

/** One SOCKS5 CONNECT to `host:port` through the proxy, sending `payload` and reading the echo until EOF. */
function socksEcho(proxyPort: number, host: string, port: number, payload: Buffer, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(proxyPort, '127.0.0.1');
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('socks echo timed out'));
    }, timeoutMs);
    let stage: 'greeting' | 'connect' | 'data' = 'greeting';
    let buffered = Buffer.alloc(0);
    const received: Buffer[] = [];
    socket.on('connect', () => socket.write(Buffer.from([5, 1, 0])));
    socket.on('data', (chunk: Buffer) => {
      if (stage === 'data') {
        received.push(chunk);
        return;
      }
      buffered = Buffer.concat([buffered, chunk]);
      if (stage === 'greeting' && buffered.length >= 2) {
        buffered = buffered.subarray(2);
        stage = 'connect';
        const name = Buffer.from(host);
        socket.write(Buffer.concat([Buffer.from([5, 1, 0, 3, name.length]), name, Buffer.from([port >> 8, port & 0xff])]));
      }
      if (stage === 'connect' && buffered.length >= 10) {
        if (buffered[1] !== 0) {
          socket.destroy();
          clearTimeout(timer);
          reject(new Error(`socks reply ${buffered[1]}`));
          return;
        }
        stage = 'data';
        if (buffered.length > 10) received.push(buffered.subarray(10));
        socket.end(payload);
      }
    });
    socket.on('end', () => {
      clearTimeout(timer);
      if (stage === 'data') resolve(Buffer.concat(received));
      else reject(new Error(`closed during ${stage}`));
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** Retries `attempt` (a new connection each time) until it succeeds; resolves with the ms from `since`. */
async function firstSuccess(since: number, deadlineMs: number, attempt: () => Promise<boolean>): Promise<number> {
  for (;;) {
    if (await attempt().catch(() => false)) return performance.now() - since;
    if (performance.now() - since > deadlineMs) throw new Error(`no success within ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('gateway kill -9 and restart', () => {
  let stack: Stack;
  let echo: TestServer;
  let forward: ForwardProcess;
  let socks: SocksProcess;
  let gateway2: StartedProcess | undefined;

  before(async () => {
    echo = await startEchoServer();
    stack = await startStack({ agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }], gatewayArgs: ['--nat-probe-port', '0'] });
    await stack.startAgent('svc');
    forward = await stack.startForward('svc:echo', { args: ['--timeout-ms', '10000'] });
    socks = await stack.startSocks({ args: ['--timeout-ms', '10000'] });
  });
  after(async () => {
    await gateway2?.stop('SIGKILL');
    await stack?.stop();
    await echo?.close();
  });

  test('forward, socks and the agent are back within seconds of the restarted gateway being ready', async (t) => {
    const port = forward.ports[0] as number;
    const before = await sendAndHash(port, 4096, 1, { timeoutMs: 10_000 });
    assert.equal(before.replySha256, before.sentSha256);

    await stack.gateway.kill9();
    await new Promise((r) => setTimeout(r, OUTAGE_MS));
    gateway2 = await startProcess(
      'gateway (restarted)',
      [SCRIPTS.gateway, '--config', stack.configFile, '--listen', `127.0.0.1:${stack.port}`, '--admin-listen', `127.0.0.1:${stack.adminPort}`, '--nat-probe-port', '0'],
      { env: stack.env },
    );
    const readyAt = performance.now();
    assert.equal(gateway2.readyLine.port, stack.port);

    const payload = Buffer.from('reconnected?');
    const [forwardMs, socksMs, agentMs] = await Promise.all([
      firstSuccess(readyAt, 20_000, async () => {
        const result = await sendAndHash(port, 1024, 2, { timeoutMs: 3000 });
        return result.replyBytes === 1024 && result.replySha256 === result.sentSha256;
      }),
      firstSuccess(readyAt, 20_000, async () => (await socksEcho(socks.port, 'svc', echo.port, payload, 3000)).equals(payload)),
      firstSuccess(readyAt, 20_000, async () => (await stack.metric('narrowlink_gateway_sessions', { kind: 'agent' })) === 1),
    ]);
    t.diagnostic(`after a ${OUTAGE_MS} ms outage: agent attached ${Math.round(agentMs)} ms, first stream through forward ${Math.round(forwardMs)} ms, through socks ${Math.round(socksMs)} ms after the gateway was ready`);
    assert.ok(agentMs < BOUND_MS, `agent back after ${Math.round(agentMs)} ms`);
    assert.ok(forwardMs < BOUND_MS, `forward back after ${Math.round(forwardMs)} ms`);
    assert.ok(socksMs < BOUND_MS, `socks back after ${Math.round(socksMs)} ms`);
  });
});
