/**
 * Reconnect scheduling of GatewayLink: short retries for a peer whose session ended a moment ago (by an injected
 * wall clock), growth for a peer that keeps failing, and a waiting caller triggering an attempt at once.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { after, describe, test } from 'node:test';
import { Mux, PROTOCOL_VERSION } from '@narrowlink/protocol';
import { WebSocketServer } from 'ws';
import { GatewayLink, type LinkRetry, MIN_ATTEMPT_GAP_MS } from './gateway-link.ts';

/** A gateway that accepts (hello_ok) or refuses with HTTP 503 as `mode` says at each upgrade. */
async function switchableGateway() {
  const state = { mode: 'accept' as 'accept' | 'refuse', upgrades: 0 };
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const server = createServer();
  server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    state.upgrades++;
    if (state.mode === 'refuse') {
      socket.end('HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(request, socket, head, (ws) => {
      const mux: Mux = new Mux({
        role: 'acceptor',
        send: (bytes) => ws.send(bytes, { binary: true }),
        handlers: {
          onControl: (message) => {
            if (message.type !== 'hello') return;
            mux.sendControl({
              type: 'hello_ok',
              version: PROTOCOL_VERSION,
              sessionId: `s${state.upgrades}`,
              identity: { sub: 'alice', groups: [], typ: 'client', expiresAt: Date.now() + 60_000 },
              streamWindow: 256 * 1024,
              heartbeatIntervalMs: 10_000,
            });
          },
        },
      });
      ws.on('message', (data) => mux.receive(data as Buffer));
      ws.on('close', () => mux.close());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const dropAll = (): void => {
    for (const client of wss.clients) client.terminate();
  };
  cleanups.push(async () => {
    dropAll();
    wss.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`, state, dropAll };
}

const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function until(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('GatewayLink reconnect scheduling', () => {
  test('short retries right after losing a session; growing ones as the outage (injected clock) lasts; a waiting caller retries at once', async () => {
    const gw = await switchableGateway();
    let nowMs = 1_000_000;
    const link = new GatewayLink({
      url: gw.url,
      role: 'client',
      token: 'tok',
      now: () => nowMs,
      backoff: { baseMs: 10, recentMaxMs: 40, maxMs: 60_000, random: () => 1 - Number.EPSILON },
    });
    cleanups.push(() => link.close());
    const retries: LinkRetry[] = [];
    link.on('retry', (retry: LinkRetry) => retries.push(retry));
    link.start();
    await link.waitOpen(2000);

    gw.state.mode = 'refuse';
    gw.dropAll();
    // The wall clock stands still: the outage is "a moment old", so however many attempts fail, none waits > 40 ms.
    await until(() => retries.length >= 8, '8 retries');
    assert.ok(
      retries.slice(0, 8).every((r) => r.delayMs <= 40),
      JSON.stringify(retries.map((r) => r.delayMs)),
    );
    assert.ok(retries[1]?.error?.code, 'each retry carries the last error');

    // Ten minutes of outage later the cap is 60 s (the window's 60 s excluded, a quarter of the rest): the doubling
    // curve takes over (10 ms · 2^attempt).
    nowMs += 600_000;
    const before = retries.length;
    await until(() => (retries.at(-1)?.delayMs ?? 0) >= 2_000, 'a retry delay of 2 s or more', 10_000);
    assert.ok(retries.length > before);

    // The gateway is back, and a caller waits: the pending multi-second retry is made at once.
    gw.state.mode = 'accept';
    const started = performance.now();
    await link.waitOpen(1500);
    const tookMs = performance.now() - started;
    assert.ok(tookMs < 1000, `open after ${tookMs} ms`);
    assert.equal(link.state, 'open');
  });

  test('a burst of waiting callers while the gateway is down costs about one attempt per MIN_ATTEMPT_GAP_MS, not one each', async () => {
    const gw = await switchableGateway();
    gw.state.mode = 'refuse';
    const link = new GatewayLink({ url: gw.url, role: 'client', token: 'tok', backoff: { baseMs: 5_000, random: () => 0.5 } });
    cleanups.push(() => link.close());
    link.start();
    await until(() => gw.state.upgrades === 1 && link.stats.lastError !== undefined, 'the first refusal');
    const started = performance.now();
    const waits: Array<Promise<unknown>> = [];
    for (let i = 0; i < 30; i++) {
      waits.push(link.waitOpen(400).catch((error: unknown) => error));
      await new Promise((r) => setTimeout(r, 10));
    }
    await Promise.all(waits);
    const elapsedMs = performance.now() - started;
    const extra = gw.state.upgrades - 1;
    // Without reconnectNow the next attempt would be 3.75 s away; with it, callers trigger attempts, rate-limited.
    assert.ok(extra >= 2, `extra attempts: ${extra}`);
    assert.ok(extra <= Math.ceil(elapsedMs / MIN_ATTEMPT_GAP_MS) + 1, `extra attempts ${extra} in ${elapsedMs} ms`);
  });

  test('reconnectNow does nothing while open, closed or mid-attempt', async () => {
    const gw = await switchableGateway();
    const link = new GatewayLink({ url: gw.url, role: 'client', token: 'tok' });
    cleanups.push(() => link.close());
    assert.equal(link.reconnectNow(), false);
    link.start();
    assert.equal(link.reconnectNow(), false, 'an attempt is already running');
    await link.waitOpen(2000);
    assert.equal(link.reconnectNow(), false);
    await link.close();
    assert.equal(link.reconnectNow(), false);
  });
});
