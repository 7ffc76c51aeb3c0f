import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { type AddressInfo, connect, createServer as createTcpServer } from 'node:net';
import type { Duplex } from 'node:stream';
import { after, describe, test } from 'node:test';
import {
  type ControlMessage,
  formatRateLimitRefusal,
  Mux,
  type MuxStream,
  type OpenPayload,
  PROTOCOL_VERSION,
  StreamResetError,
} from '@narrowlink/protocol';
import { type WebSocket, WebSocketServer } from 'ws';
import { bridgeSocket } from './bridge.ts';
import { LinkError, LinkErrorCode } from './errors.ts';
import { GatewayLink, type GatewayLinkOptions } from './gateway-link.ts';

/** What the fake gateway does with one upgrade request. */
type Behaviour =
  | {
      kind: 'accept';
      helloOk?: boolean;
      onOpen?: (stream: MuxStream, payload: OpenPayload) => void;
      /** Answers control messages after the hello. */
      onControl?: (message: ControlMessage, mux: Mux) => void;
    }
  | { kind: 'refuse'; status: number; body: string };

interface Attempt {
  path: string;
  authorization: string | undefined;
  hello?: Extract<ControlMessage, { type: 'hello' }>;
  ws?: WebSocket;
  mux?: Mux;
}

/** A tiny gateway: HTTP upgrade handling plus the gateway side of the protocol via Mux. */
async function fakeGateway(behave: (attempt: number) => Behaviour) {
  const attempts: Attempt[] = [];
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const server: Server = createServer();
  server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    const attempt: Attempt = { path: request.url ?? '', authorization: request.headers.authorization };
    attempts.push(attempt);
    const behaviour = behave(attempts.length);
    if (behaviour.kind === 'refuse') {
      socket.end(
        `HTTP/1.1 ${behaviour.status} Refused\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(behaviour.body)}\r\nConnection: close\r\n\r\n${behaviour.body}`,
      );
      return;
    }
    wss.handleUpgrade(request, socket, head, (ws) => {
      attempt.ws = ws;
      const mux = new Mux({
        role: 'acceptor',
        send: (bytes) => ws.send(bytes, { binary: true }),
        handlers: {
          onControl: (message) => {
            if (message.type !== 'hello') return behaviour.onControl?.(message, mux);
            attempt.hello = message;
            if (behaviour.helloOk === false) return;
            mux.sendControl({
              type: 'hello_ok',
              version: PROTOCOL_VERSION,
              sessionId: `session-${attempts.length}`,
              identity: { sub: 'alice', groups: [], typ: message.role, expiresAt: Date.now() + 60_000 },
              streamWindow: 256 * 1024,
              heartbeatIntervalMs: 10_000,
            });
          },
          onOpen: (stream, payload) => (behaviour.onOpen ? behaviour.onOpen(stream, payload) : stream.accept({ path: 'relay' })),
        },
      });
      attempt.mux = mux;
      ws.on('message', (data) => mux.receive(data as Buffer));
      ws.on('close', () => mux.close());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const close = async (): Promise<void> => {
    for (const client of wss.clients) client.terminate();
    wss.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  cleanups.push(close);
  return { url, attempts, close };
}

const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** The gateway's GatewayErrorCode.RATE_LIMITED (peer-link does not depend on the gateway package). */
const GATEWAY_RATE_LIMITED = 'NL_ERR_GATEWAY_RATE_LIMITED';

const pinnedBackoff = { baseMs: 10, maxMs: 50, random: () => 0.5 };

function link(options: Partial<GatewayLinkOptions> & { url: string }): GatewayLink {
  const l = new GatewayLink({ role: 'client', token: 'tok-123', backoff: pinnedBackoff, connectTimeoutMs: 2000, ...options });
  cleanups.push(() => l.close());
  return l;
}

async function until(predicate: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('GatewayLink', () => {
  test('connects to the role endpoint with the bearer token and says hello with its role', async () => {
    const gw = await fakeGateway(() => ({ kind: 'accept' }));
    const agentInfo = { instanceId: 'pod-1', expose: [{ name: 'http', port: 8080 }] };
    const l = link({ url: gw.url, role: 'agent', agent: agentInfo, token: async () => 'fresh-token', streamWindow: 128 * 1024 });
    const states: string[] = [];
    l.on('state', (s: string) => states.push(s));
    l.start();
    await l.waitOpen(2000);
    assert.equal(l.state, 'open');
    assert.deepEqual(states, ['connecting', 'open']);
    const attempt = gw.attempts[0];
    assert.equal(attempt?.path, '/v1/agent');
    assert.equal(attempt?.authorization, 'Bearer fresh-token');
    assert.equal(attempt?.hello?.role, 'agent');
    assert.equal(attempt?.hello?.version, PROTOCOL_VERSION);
    assert.equal(attempt?.hello?.streamWindow, 128 * 1024);
    assert.deepEqual(attempt?.hello?.agent, agentInfo);
    assert.equal(l.stats.helloOk?.sessionId, 'session-1');
    assert.equal(l.mux?.peerWindow, 256 * 1024, 'the gateway window from hello_ok applies');
    assert.equal(l.stats.reconnects, 0);
  });

  test('a client link uses /v1/client and sends no agent section', async () => {
    const gw = await fakeGateway(() => ({ kind: 'accept' }));
    const l = link({ url: gw.url, role: 'client' }).start();
    await l.waitOpen(2000);
    assert.equal(gw.attempts[0]?.path, '/v1/client');
    assert.equal(gw.attempts[0]?.hello?.role, 'client');
    assert.equal(gw.attempts[0]?.hello?.agent, undefined);
  });

  test('reconnects after the gateway drops the socket, counting reconnects', async () => {
    const gw = await fakeGateway(() => ({ kind: 'accept' }));
    const l = link({ url: gw.url }).start();
    let opens = 0;
    l.on('open', () => opens++);
    await l.waitOpen(2000);
    for (let drop = 1; drop <= 3; drop++) {
      gw.attempts.at(-1)?.ws?.terminate();
      await until(() => opens === drop + 1, `open #${drop + 1}`);
    }
    assert.equal(l.stats.reconnects, 3);
    assert.equal(gw.attempts.length, 4);
    assert.equal(l.state, 'open');
  });

  test('keeps retrying with backoff while the gateway is refusing with 503', async () => {
    const gw = await fakeGateway((n) => (n <= 3 ? { kind: 'refuse', status: 503, body: '{"code":"NL_ERR_GATEWAY_NOT_READY","message":"no config"}' } : { kind: 'accept' }));
    const started = performance.now();
    const l = link({ url: gw.url }).start();
    await l.waitOpen(3000);
    assert.equal(gw.attempts.length, 4);
    assert.equal(l.stats.reconnects, 3);
    // Pinned jitter: delays of 8, 15 and 30 ms (half fixed, half random of 10, 20, 40 ms).
    assert.ok(performance.now() - started >= 50, 'backed off between attempts');
  });

  test('a 401 with a JSON body is fatal, carries status and gateway code, and is not retried', async () => {
    const body = JSON.stringify({ code: 'NL_ERR_AUTH_INVALID_TOKEN', message: 'token rejected', reason: 'NL_ERR_TOKEN_EXPIRED' });
    const gw = await fakeGateway(() => ({ kind: 'refuse', status: 401, body }));
    const l = link({ url: gw.url, retryAuthFailures: false });
    const fatal = new Promise<LinkError>((resolve) => l.once('fatal', resolve));
    l.start();
    const error = await fatal;
    assert.ok(error instanceof LinkError);
    assert.equal(error.code, 'NL_ERR_LINK_REFUSED');
    assert.equal(error.status, 401);
    assert.equal(error.gatewayCode, 'NL_ERR_AUTH_INVALID_TOKEN');
    assert.equal(error.retryable, false);
    assert.equal(l.state, 'closed');
    await assert.rejects(l.waitOpen(1000), (e: unknown) => e instanceof LinkError && e.status === 401);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(gw.attempts.length, 1, 'no further attempts');
    assert.equal(l.stats.reconnects, 0);
  });

  test('with retryAuthFailures a 403 is retried', async () => {
    const body = JSON.stringify({ code: 'NL_ERR_AUTH_UNKNOWN_AGENT', message: 'not configured' });
    const gw = await fakeGateway((n) => (n <= 2 ? { kind: 'refuse', status: 403, body } : { kind: 'accept' }));
    const l = link({ url: gw.url, role: 'agent', retryAuthFailures: true, agent: { instanceId: 'i', expose: [] } });
    let fatal = false;
    l.on('fatal', () => (fatal = true));
    l.start();
    await l.waitOpen(3000);
    assert.equal(fatal, false);
    assert.equal(gw.attempts.length, 3);
  });

  test('waitOpen times out with NL_ERR_LINK_TIMEOUT when no hello_ok comes', async () => {
    const gw = await fakeGateway(() => ({ kind: 'accept', helloOk: false }));
    const l = link({ url: gw.url }).start();
    const started = performance.now();
    await assert.rejects(l.waitOpen(150), (error: unknown) => {
      assert.ok(error instanceof LinkError);
      assert.equal(error.code, 'NL_ERR_LINK_TIMEOUT');
      return true;
    });
    assert.ok(performance.now() - started >= 140);
    assert.ok(gw.attempts[0]?.hello, 'the hello was sent');
  });

  test('waitOpen times out with NL_ERR_LINK_TIMEOUT when the gateway is unreachable', async () => {
    const gw = await fakeGateway(() => ({ kind: 'accept' }));
    await gw.close();
    const l = link({ url: gw.url }).start();
    await assert.rejects(l.waitOpen(200), { code: 'NL_ERR_LINK_TIMEOUT' });
    assert.ok(l.stats.attempts >= 2, 'kept retrying meanwhile');
    assert.equal(l.stats.lastError?.code, 'NL_ERR_LINK_CONNECTION_REFUSED');
  });

  test('openStream resolves on OPEN_OK and rejects with StreamResetError carrying the reset code', async () => {
    const gw = await fakeGateway(() => ({
      kind: 'accept',
      onOpen: (stream, payload) => {
        if ('agent' in payload && payload.agent === 'db') stream.accept({ path: 'relay' });
        else stream.reset('DENIED', 'policy says no');
      },
    }));
    const l = link({ url: gw.url }).start();
    const opened = await l.openStream({ agent: 'db', port: 5432 }, 2000);
    assert.deepEqual(opened.ok, { path: 'relay' });
    assert.equal(opened.stream.state, 'open');
    await assert.rejects(l.openStream({ agent: 'secret', port: 22 }, 2000), (error: unknown) => {
      assert.ok(error instanceof StreamResetError);
      assert.equal(error.streamCode, 'DENIED');
      assert.equal(error.code, 'NL_ERR_STREAM_DENIED');
      return true;
    });
  });

  test('a list_agents refused over the rate limit fails at once with a typed error; the next one is answered', async () => {
    let lists = 0;
    const gw = await fakeGateway(() => ({
      kind: 'accept',
      onControl: (message, mux) => {
        if (message.type !== 'list_agents') return;
        // The real gateway's refusal: a session error naming the request kind, no request id.
        if (++lists === 1) mux.sendControl({ type: 'error', code: GATEWAY_RATE_LIMITED, message: formatRateLimitRefusal('list_agents', 180) });
        else mux.sendControl({ type: 'agents', requestId: message.requestId, agents: [] });
      },
    }));
    const l = link({ url: gw.url }).start();
    const startedAt = performance.now();
    await assert.rejects(l.listAgents(5000), (error: unknown) => {
      assert.ok(error instanceof LinkError);
      assert.equal(error.code, LinkErrorCode.RATE_LIMITED);
      assert.equal(error.gatewayCode, GATEWAY_RATE_LIMITED);
      assert.equal(error.retryable, true);
      assert.match(error.message, /retry in 180 ms/);
      return true;
    });
    assert.ok(performance.now() - startedAt < 2000, 'not at the 5 s timeout');
    assert.deepEqual(await l.listAgents(2000), []);
    assert.equal(l.state, 'open', 'the session stays');
  });

  test('openStream gives up with TIMEOUT when the far side never answers', async () => {
    const gw = await fakeGateway(() => ({ kind: 'accept', onOpen: () => undefined }));
    const l = link({ url: gw.url }).start();
    await l.waitOpen(2000);
    await assert.rejects(l.openStream({ agent: 'db', port: 5432 }, 100), { code: 'NL_ERR_STREAM_TIMEOUT' });
  });

  test('close() stops reconnecting and ends in closed', async () => {
    const gw = await fakeGateway(() => ({ kind: 'accept' }));
    const l = link({ url: gw.url }).start();
    await l.waitOpen(2000);
    await l.close();
    assert.equal(l.state, 'closed');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(gw.attempts.length, 1);
  });
});

describe('GatewayLink handler boundary', () => {
  test('a handler that throws on gateway input ends that session with 1011 and the link reconnects; the process lives', async () => {
    const gw = await fakeGateway(() => ({ kind: 'accept' }));
    const l = link({ url: gw.url }).start();
    let opens = 0;
    l.on('open', () => opens++);
    let throws = 0;
    l.on('direct', () => {
      throws++;
      throw new TypeError('a bug in a direct-path handler');
    });
    await l.waitOpen(2000);
    const first = gw.attempts[0];
    const closed = new Promise<number>((resolve) => first?.ws?.once('close', (code: number) => resolve(code)));
    // Before the boundary this throw escaped the WebSocket's message event: an uncaught exception.
    first?.mux?.sendControl({ type: 'direct_close', pathId: 'p1', reason: 'test' });
    first?.mux?.sendControl({ type: 'direct_close', pathId: 'p2', reason: 'test' });
    assert.equal(await closed, 1011);
    assert.equal(throws, 1, 'what arrives after the failure is dropped');
    await until(() => opens === 2, 'the link reconnects');
  });
});

describe('GatewayLink send buffer (agent bridges)', () => {
  test('an agent bridging fast local sources to a gateway that stops reading holds about its high-water mark, not the windows', async () => {
    const MiB = 1024 * 1024;
    // Local services that write as fast as their sockets take it.
    const source = createTcpServer((socket) => {
      const chunk = Buffer.alloc(64 * 1024, 7);
      const pump = (): void => {
        while (!socket.destroyed && socket.write(chunk));
      };
      socket.on('drain', pump);
      socket.on('error', () => undefined);
      pump();
    });
    await new Promise<void>((resolve) => source.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => source.close(() => resolve())));
    const sourcePort = (source.address() as AddressInfo).port;
    const gw = await fakeGateway(() => ({ kind: 'accept' }));
    const l = link({
      url: gw.url,
      role: 'agent',
      onOpenStream: (stream) => {
        const socket = connect(sourcePort, '127.0.0.1', () => {
          stream.accept({ path: 'relay' });
          bridgeSocket(socket, stream);
        });
        socket.on('error', () => undefined);
      },
    }).start();
    await l.waitOpen(2000);
    const attempt = gw.attempts.at(-1);
    assert.ok(attempt?.ws && attempt.mux);
    // The gateway stops reading this agent, then asks for 64 streams: 64 x 256 KiB of credit (16 MiB).
    (attempt.ws as unknown as { _socket: import('node:net').Socket })._socket.pause();
    for (let i = 0; i < 64; i++) attempt.mux.open({ host: '127.0.0.1', port: sourcePort, client: 'alice' });
    let peak = 0;
    const deadline = performance.now() + 1500;
    while (performance.now() < deadline) {
      peak = Math.max(peak, l.stats.unsentBytes);
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(peak > 0, 'the agent did send until its buffer filled (the test exercised it)');
    // The high-water mark (1 MiB) plus at most one frame past it; before, up to the 16 MiB of credit queued here.
    assert.ok(peak <= MiB + 256 * 1024, `peak unsent ${(peak / MiB).toFixed(2)} MiB`);
  });
});
