import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { after, describe, type TestContext, test } from 'node:test';
import { Mux, PROTOCOL_VERSION } from '@narrowlink/protocol';
import { type WebSocket, WebSocketServer } from 'ws';
import { GatewayLink, type GatewayLinkOptions } from './gateway-link.ts';

interface Session {
  headers: IncomingMessage['headers'];
  ws: WebSocket;
  openedAt: number;
  /** `reauth` messages received: token and ms since this session's hello (on `Date.now`, which the tests mock). */
  reauths: Array<{ token: string; afterMs: number }>;
}

/**
 * The gateway side of the protocol over a real WebSocket: hello_ok says the token expires in
 * `lifetimeMs`, and every reauth is answered with reauth_ok extending it by `renewMs`.
 */
async function fakeGateway(options: { lifetimeMs: number; renewMs?: number }) {
  const sessions: Session[] = [];
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const server: Server = createServer();
  server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    wss.handleUpgrade(request, socket, head, (ws) => {
      const session: Session = { headers: request.headers, ws, openedAt: 0, reauths: [] };
      sessions.push(session);
      const mux = new Mux({
        role: 'acceptor',
        send: (bytes) => ws.send(bytes, { binary: true }),
        handlers: {
          onControl: (message) => {
            if (message.type === 'hello') {
              session.openedAt = Date.now();
              mux.sendControl({
                type: 'hello_ok',
                version: PROTOCOL_VERSION,
                sessionId: `s-${sessions.length}`,
                identity: { sub: 'shop/orders', groups: [], typ: message.role, expiresAt: Date.now() + options.lifetimeMs },
                streamWindow: 256 * 1024,
                heartbeatIntervalMs: 10_000,
              });
            } else if (message.type === 'reauth') {
              session.reauths.push({ token: message.token, afterMs: Date.now() - session.openedAt });
              if (options.renewMs !== undefined) mux.sendControl({ type: 'reauth_ok', expiresAt: Date.now() + options.renewMs });
            }
          },
        },
      });
      ws.on('message', (data) => mux.receive(data as Buffer));
      ws.on('close', () => mux.close());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const close = async (): Promise<void> => {
    for (const client of wss.clients) client.terminate();
    wss.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  cleanups.push(close);
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`, sessions };
}

const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

function link(options: Partial<GatewayLinkOptions> & { url: string }): GatewayLink {
  const l = new GatewayLink({ role: 'agent', token: 'tok', backoff: { baseMs: 10, maxMs: 50, random: () => 0.5 }, connectTimeoutMs: 2000, ...options });
  cleanups.push(() => l.close());
  return l;
}

/** A token function handing out tok-1, tok-2, … (a rotated projected token file). */
function rotating(): { token: () => string; calls: () => number } {
  let n = 0;
  return { token: () => `tok-${++n}`, calls: () => n };
}

/** The real timer, taken before any test mocks the global one: waiting for socket I/O needs real time. */
const realSetTimeout = globalThis.setTimeout;

/** Waits (in real time) for what the sockets deliver. */
async function until(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => realSetTimeout(r, 5));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => realSetTimeout(r, ms));

/**
 * Mocks `setTimeout` and `Date` (the re-auth timer and its clock; the heartbeat interval and the sockets stay
 * real), starting at epoch 0, and returns `advance(ms)`: moves the mocked time on and lets the promises that the
 * fired timers started settle.
 */
function mockClock(t: TestContext): (ms: number) => Promise<void> {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  return async (ms) => {
    t.mock.timers.tick(ms);
    await new Promise((r) => setImmediate(r));
  };
}

const DAY_MS = 24 * 3600 * 1000;

// Sequential: the tests that mock the clock mock the global timers.
describe('GatewayLink re-authentication', () => {
  test('sends the new token at 80% of the lifetime, then again after reauth_ok extends it', async (t) => {
    const advance = mockClock(t);
    const gw = await fakeGateway({ lifetimeMs: 2000, renewMs: 1500 });
    const tokens = rotating();
    const l = link({ url: gw.url, token: tokens.token }).start();
    await l.waitOpen(2000);
    const session = gw.sessions[0] as Session;
    await advance(1599);
    await sleep(20);
    assert.equal(session.reauths.length, 0, 'nothing before 80% of the lifetime');
    await advance(1);
    await until(() => session.reauths.length >= 1, 'the first reauth');
    // The reauth_ok the gateway sent at once precedes the PONG on the same socket: the link has it.
    await l.ping();
    await advance(1199);
    await sleep(20);
    assert.equal(session.reauths.length, 1, 'nothing before 80% of the renewed lifetime');
    await advance(1);
    await until(() => session.reauths.length >= 2, 'two reauths');
    const [first, second] = session.reauths;
    assert.equal(first?.token, 'tok-2', 'the fresh token, not the one the session opened with');
    assert.ok((first?.afterMs ?? 0) >= 1500 && (first?.afterMs ?? 0) < 1900, `first reauth after ${first?.afterMs} ms (80% of 2000)`);
    assert.equal(first?.afterMs, 1600);
    assert.equal(second?.token, 'tok-3');
    const gap = (second?.afterMs ?? 0) - (first?.afterMs ?? 0);
    assert.ok(gap >= 1100 && gap < 1500, `next reauth ${gap} ms after the first (80% of the renewed 1500)`);
    assert.equal(gap, 1200);
    assert.equal(session.headers.authorization, 'Bearer tok-1');
    assert.equal(gw.sessions.length, 1, 'the session was never replaced');
    assert.equal(l.state, 'open');
  });

  test('with a constant token the link looks again but sends no reauth', async (t) => {
    const advance = mockClock(t);
    const gw = await fakeGateway({ lifetimeMs: 1500, renewMs: 1500 });
    let calls = 0;
    const l = link({
      url: gw.url,
      token: () => {
        calls++;
        return 'same-token';
      },
    }).start();
    await l.waitOpen(2000);
    await advance(1200);
    await until(() => calls >= 2, 'the token re-read at 80% of the lifetime', 3000);
    await advance(200);
    await sleep(20);
    assert.deepEqual(gw.sessions[0]?.reauths, []);
    assert.equal(l.state, 'open');
    // 300 ms were left at the re-read: too little to look again.
    assert.equal(calls, 2);
  });

  test('a reconnect starts the schedule over for the new session', async (t) => {
    const advance = mockClock(t);
    const gw = await fakeGateway({ lifetimeMs: 1500, renewMs: 60_000 });
    const tokens = rotating();
    const l = link({ url: gw.url, token: tokens.token }).start();
    await l.waitOpen(2000);
    await advance(300);
    gw.sessions[0]?.ws.terminate();
    await until(() => l.state === 'connecting', 'the link noticing the lost session');
    // The reconnect backoff (at most 50 ms here) runs on the mocked clock too.
    await advance(50);
    await until(() => gw.sessions.length === 2 && l.state === 'open', 'the second session');
    const second = gw.sessions[1] as Session;
    assert.equal(second.headers.authorization, 'Bearer tok-2');
    // The first session's schedule would fire 850 ms into this one.
    await advance(1200);
    await until(() => second.reauths.length === 1, 'a reauth on the second session');
    assert.equal(second.reauths[0]?.token, 'tok-3');
    assert.ok((second.reauths[0]?.afterMs ?? 0) >= 1100, `timed from the second hello_ok (${second.reauths[0]?.afterMs} ms), not the first`);
    assert.equal(second.reauths[0]?.afterMs, 1200);
    assert.deepEqual(gw.sessions[0]?.reauths, []);
    await advance(300);
    await sleep(20);
    assert.equal(second.reauths.length, 1, 'the old session left no timer behind');
  });

  test('agentRef is sent as the X-Narrowlink-Agent header; without it no such header', async () => {
    const gw = await fakeGateway({ lifetimeMs: 600_000 });
    const named = link({ url: gw.url, token: 'projected-sa-token', agentRef: 'shop/orders' }).start();
    await named.waitOpen(2000);
    assert.equal(gw.sessions[0]?.headers['x-narrowlink-agent'], 'shop/orders');
    assert.equal(gw.sessions[0]?.headers.authorization, 'Bearer projected-sa-token');
    const plain = link({ url: gw.url, token: 'narrowlink-agent-token' }).start();
    await plain.waitOpen(2000);
    assert.equal(gw.sessions[1]?.headers['x-narrowlink-agent'], undefined);
  });

  // Real timers on purpose: a wait past 2^31-1 ms would make the real setTimeout fire at once, with a warning.
  test('a 90-day expiry neither fires early nor overflows the timer', async () => {
    const warnings: Error[] = [];
    const onWarning = (warning: Error): void => {
      warnings.push(warning);
    };
    process.on('warning', onWarning);
    try {
      const gw = await fakeGateway({ lifetimeMs: 90 * DAY_MS });
      const tokens = rotating();
      const l = link({ url: gw.url, token: tokens.token }).start();
      await l.waitOpen(2000);
      await sleep(500);
      assert.deepEqual(gw.sessions[0]?.reauths, []);
      assert.equal(tokens.calls(), 1, 'the token was not re-read');
      assert.deepEqual(
        warnings.map((w) => `${w.name}: ${w.message}`),
        [],
      );
    } finally {
      process.off('warning', onWarning);
    }
  });

  test('a 90-day credential is renewed at 72 days (80%), after waiting in timer-sized steps', async (t) => {
    const advance = mockClock(t);
    const gw = await fakeGateway({ lifetimeMs: 90 * DAY_MS });
    const tokens = rotating();
    const l = link({ url: gw.url, token: tokens.token }).start();
    await l.waitOpen(2000);
    const session = gw.sessions[0] as Session;
    for (const stepMs of [2 ** 31 - 1, 2 ** 31 - 1, 72 * DAY_MS - 2 * (2 ** 31 - 1) - 1]) {
      await advance(stepMs);
      await sleep(20);
      assert.equal(tokens.calls(), 1, `not re-read at ${Date.now()} ms`);
    }
    await advance(1);
    await until(() => session.reauths.length === 1, 'the reauth at 72 days');
    assert.deepEqual(session.reauths, [{ token: 'tok-2', afterMs: 72 * DAY_MS }]);
    assert.equal(l.state, 'open');
  });
});
