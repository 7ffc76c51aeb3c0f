/**
 * Loopback end-to-end tests of the relay data path: client process → gateway process → agent process
 * → local TCP server, every byte checked by sha256. Each describe starts its own stack once.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../helpers/ports.ts';
import {
  deterministicBlocks,
  deterministicSha256,
  receiveAndHash,
  sendAndHash,
  startEchoServer,
  startSinkServer,
  startSourceServer,
  type TestServer,
  writeDeterministic,
} from '../helpers/tcp-fixtures.ts';
import { type ForwardProcess, type SocksProcess, type Stack, startStack } from './stack.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const BIG = 64 * MiB;
/** Per-stream flow-control window of the gateway (its default), bytes. */
const STREAM_WINDOW = 4 * MiB;

/** Closes test servers after the stack that used them. */
async function closeAll(servers: Array<TestServer | undefined>): Promise<void> {
  await Promise.all(servers.map((s) => s?.close()));
}

/** An echo server that counts accepted connections, to see when the agent's dial happened. */
async function startCountingEchoServer(): Promise<TestServer & { accepted(): number }> {
  let accepted = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.pipe(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    accepted: () => accepted,
    close: async () => {
      const closed = once(server, 'close');
      server.close();
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

/** Reads exact byte counts from a socket during a handshake; `release()` hands the socket back paused. */
function byteReader(socket: net.Socket): { read(n: number): Promise<Buffer>; release(): Buffer } {
  let buffer = Buffer.alloc(0);
  let ended = false;
  let wake: (() => void) | undefined;
  const onData = (chunk: Buffer): void => {
    buffer = Buffer.concat([buffer, chunk]);
    wake?.();
  };
  const onEnd = (): void => {
    ended = true;
    wake?.();
  };
  socket.on('data', onData);
  socket.on('end', onEnd);
  socket.on('close', onEnd);
  return {
    async read(n) {
      while (buffer.length < n) {
        if (ended) throw Object.assign(new Error(`connection ended after ${buffer.length} of ${n} bytes`), { partial: buffer });
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
      const out = buffer.subarray(0, n);
      buffer = buffer.subarray(n);
      return out;
    },
    release() {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.pause();
      return buffer;
    },
  };
}

/** Outcome of {@link socksConnect}. */
interface SocksOutcome {
  /** Method the server chose (0x00 none, 0x02 username/password, 0xff none acceptable). */
  method: number;
  /** RFC 1929 status (0x00 ok), when username/password was negotiated. */
  authStatus?: number;
  /** REP field of the CONNECT reply, when one arrived. */
  reply?: number;
  /** The connection, paused, positioned after the handshake. */
  socket: net.Socket;
  /** Resolves once the connection is fully closed (the server ending it closes it: no half-open). */
  closed: Promise<void>;
}

/**
 * A minimal SOCKS5 client (RFC 1928 + RFC 1929): greets, authenticates when `auth` is given, sends
 * CONNECT for a domain-name destination, and returns the reply code with the (paused) socket.
 */
async function socksConnect(port: number, host: string, targetPort: number, auth?: { username: string; password: string }): Promise<SocksOutcome> {
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await once(socket, 'connect');
  const reader = byteReader(socket);
  socket.write(Buffer.from([0x05, 0x01, auth ? 0x02 : 0x00]));
  const [version, method] = await reader.read(2);
  assert.equal(version, 0x05, 'server speaks SOCKS5');
  const outcome: SocksOutcome = { method: method as number, socket, closed };
  if (method === 0xff) {
    reader.release();
    return outcome;
  }
  if (auth) {
    const user = Buffer.from(auth.username);
    const pass = Buffer.from(auth.password);
    socket.write(Buffer.concat([Buffer.from([0x01, user.length]), user, Buffer.from([pass.length]), pass]));
    const [, status] = await reader.read(2);
    outcome.authStatus = status as number;
    if (status !== 0x00) {
      reader.release();
      return outcome;
    }
  }
  const name = Buffer.from(host);
  const portBytes = Buffer.alloc(2);
  portBytes.writeUInt16BE(targetPort);
  socket.write(Buffer.concat([Buffer.from([0x05, 0x01, 0x00, 0x03, name.length]), name, portBytes]));
  const head = await reader.read(4);
  outcome.reply = head[1] as number;
  // Skip the bound address: IPv4 (4), domain (1 + n) or IPv6 (16), then the port.
  const atyp = head[3];
  const addressBytes = atyp === 0x01 ? 4 : atyp === 0x04 ? 16 : ((await reader.read(1))[0] as number);
  await reader.read(addressBytes + 2);
  const early = reader.release();
  assert.equal(early.length, 0, 'no stream bytes before the client sent any');
  return outcome;
}

/**
 * Writes the deterministic stream to `socket`, half-closes, and hashes everything read back;
 * `replyHead` is the first 128 bytes of the reply as text (a sink's sha256 hex).
 */
async function exchangeAndHash(socket: net.Socket, bytes: number, seed: number): Promise<{ replySha256: string; replyBytes: number; replyHead: string }> {
  const hash = createHash('sha256');
  let replyBytes = 0;
  let head = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    replyBytes += chunk.length;
    hash.update(chunk);
    if (head.length < 128) head = Buffer.concat([head, chunk.subarray(0, 128 - head.length)]);
  });
  const ended = once(socket, 'end');
  socket.resume();
  await writeDeterministic(socket, bytes, seed);
  socket.end();
  await ended;
  socket.destroy();
  return { replySha256: hash.digest('hex'), replyBytes, replyHead: head.toString('utf8') };
}

/** Pipes the deterministic stream into `child`'s stdin (with backpressure) and hashes its stdout until exit. */
async function pipeThroughProcess(child: ChildProcess, bytes: number, seed: number): Promise<{ code: number | null; sha256: string; bytes: number; stderr: string }> {
  const stdin = child.stdin;
  const stdout = child.stdout;
  assert.ok(stdin && stdout && child.stderr, 'child has piped stdio');
  const hash = createHash('sha256');
  let received = 0;
  let stderr = '';
  stdout.on('data', (chunk: Buffer) => {
    received += chunk.length;
    hash.update(chunk);
  });
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  const closed = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  for (const block of deterministicBlocks(bytes, seed)) {
    for (const piece of block) {
      if (!stdin.write(piece)) await once(stdin, 'drain');
    }
  }
  stdin.end();
  const code = await closed;
  return { code, sha256: hash.digest('hex'), bytes: received, stderr };
}

describe('forward over TLS (wss:// on both legs)', () => {
  let stack: Stack;
  let forward: ForwardProcess;
  let echo: TestServer;
  let sinkServer: TestServer;
  let source: Awaited<ReturnType<typeof startSourceServer>>;

  before(async () => {
    echo = await startEchoServer();
    sinkServer = await startSinkServer();
    source = await startSourceServer(BIG, 7);
    stack = await startStack({
      tls: true,
      agents: [
        {
          name: 'svc',
          expose: [
            { name: 'echo', port: echo.port },
            { name: 'sink', port: sinkServer.port },
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
    await closeAll([echo, sinkServer, source]);
  });

  test('the gateway serves wss:// and the forward is connected through it', () => {
    assert.match(stack.url, /^wss:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(forward.ports.length, 3);
  });

  test('1 KiB round trip through an echo service', async () => {
    const result = await sendAndHash(forward.ports[0] as number, 1 * KiB, 11);
    assert.equal(result.replyBytes, 1 * KiB);
    assert.equal(result.sentSha256, deterministicSha256(1 * KiB, 11));
    assert.equal(result.replySha256, result.sentSha256);
  });

  test('64 MiB client → agent: the sink reports the sha256 of what it received', { timeout: 60_000 }, async () => {
    const result = await sendAndHash(forward.ports[1] as number, BIG, 12);
    assert.equal(result.sentSha256, deterministicSha256(BIG, 12));
    assert.equal(result.replyHead, result.sentSha256, 'sink saw exactly the bytes sent');
  });

  test('64 MiB agent → client: the bytes from a source hash as expected', { timeout: 60_000 }, async () => {
    const result = await receiveAndHash(forward.ports[2] as number);
    assert.equal(result.bytes, BIG);
    assert.equal(result.sha256, source.expectedSha256);
  });
});

describe('socks', () => {
  let stack: Stack;
  let socks: SocksProcess;
  let socksAuth: SocksProcess;
  let echo: Awaited<ReturnType<typeof startCountingEchoServer>>;
  let sinkServer: TestServer;
  let refusedPort: number;
  const credentials = { username: 'alice', password: 's3cret' };

  before(async () => {
    echo = await startCountingEchoServer();
    sinkServer = await startSinkServer();
    // Exposed and allowed, but nothing listens there: the agent's dial is refused.
    refusedPort = await freePort();
    stack = await startStack({
      agents: [
        {
          name: 'svc',
          expose: [
            { name: 'echo', port: echo.port },
            { name: 'sink', port: sinkServer.port },
            { name: 'closed', port: refusedPort },
          ],
        },
      ],
    });
    await stack.startAgent('svc');
    [socks, socksAuth] = await Promise.all([stack.startSocks(), stack.startSocks(credentials)]);
  });
  after(async () => {
    await stack?.stop();
    await closeAll([echo, sinkServer]);
  });

  test('CONNECT carries a small echo round trip; success is replied only once the target accepted', async () => {
    const acceptedBefore = echo.accepted();
    const outcome = await socksConnect(socks.port, 'svc', echo.port);
    assert.equal(outcome.method, 0x00);
    assert.equal(outcome.reply, 0x00);
    // Let this process handle any accept that was pending in the same poll round as the reply.
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(echo.accepted(), acceptedBefore + 1, 'the agent had dialed the target before the success reply');
    const result = await exchangeAndHash(outcome.socket, 4 * KiB, 21);
    assert.equal(result.replyBytes, 4 * KiB);
    assert.equal(result.replySha256, deterministicSha256(4 * KiB, 21));
  });

  test('CONNECT carries 64 MiB to a sink, sha256 verified by the sink', { timeout: 60_000 }, async () => {
    const outcome = await socksConnect(socks.port, 'svc.default.narrowlink', sinkServer.port);
    assert.equal(outcome.reply, 0x00);
    const result = await exchangeAndHash(outcome.socket, BIG, 22);
    assert.equal(result.replyHead, deterministicSha256(BIG, 22), 'sink saw exactly the bytes sent');
  });

  test('username/password authentication admits the right credentials', async () => {
    const outcome = await socksConnect(socksAuth.port, 'svc', echo.port, credentials);
    assert.equal(outcome.method, 0x02, 'server demands username/password');
    assert.equal(outcome.authStatus, 0x00);
    assert.equal(outcome.reply, 0x00);
    const result = await exchangeAndHash(outcome.socket, 8 * KiB, 23);
    assert.equal(result.replySha256, deterministicSha256(8 * KiB, 23));
  });

  test('a wrong password is refused and no stream opens', async () => {
    const outcome = await socksConnect(socksAuth.port, 'svc', echo.port, { username: 'alice', password: 'wrong' });
    assert.equal(outcome.method, 0x02);
    assert.notEqual(outcome.authStatus, 0x00);
    assert.equal(outcome.reply, undefined, 'no CONNECT reply after failed authentication');
    outcome.socket.resume();
    await outcome.closed;
  });

  test('a client offering no authentication is refused when credentials are required', async () => {
    const outcome = await socksConnect(socksAuth.port, 'svc', echo.port);
    assert.equal(outcome.method, 0xff);
    outcome.socket.resume();
    await outcome.closed;
  });

  test('the reply waits for the remote dial: a refused target gets 0x05, never 0x00', async () => {
    const outcome = await socksConnect(socks.port, 'svc', refusedPort);
    assert.equal(outcome.reply, 0x05, 'connection refused');
    outcome.socket.resume();
    await outcome.closed;
  });
});

describe('connect (stdin/stdout)', () => {
  let stack: Stack;
  let echo: TestServer;

  before(async () => {
    echo = await startEchoServer();
    stack = await startStack({ agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }] });
    await stack.startAgent('svc');
  });
  after(async () => {
    await stack?.stop();
    await closeAll([echo]);
  });

  for (const [label, bytes, seed] of [
    ['1 MiB', 1 * MiB, 31],
    ['64 MiB', BIG, 32],
  ] as const) {
    test(`${label} through stdin comes back on stdout; exit code 0`, { timeout: 60_000 }, async () => {
      const child = stack.spawnClient(['connect', 'svc', 'echo']);
      const result = await pipeThroughProcess(child, bytes, seed);
      assert.equal(result.code, 0, `exit code (stderr: ${result.stderr})`);
      assert.equal(result.bytes, bytes);
      assert.equal(result.sha256, deterministicSha256(bytes, seed));
    });
  }
});

describe('200 concurrent streams through one forward', () => {
  let stack: Stack;
  let echo: TestServer;
  let forward: ForwardProcess;

  before(async () => {
    echo = await startEchoServer();
    stack = await startStack({ agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }] });
    await stack.startAgent('svc');
    forward = await stack.startForward('svc:echo');
  });
  after(async () => {
    await stack?.stop();
    await closeAll([echo]);
  });

  test('each of 200 streams echoes its own 256 KiB intact', { timeout: 60_000 }, async () => {
    const streams = 200;
    const bytes = 256 * KiB;
    const port = forward.ports[0] as number;
    const results = await Promise.all(Array.from({ length: streams }, (_, i) => sendAndHash(port, bytes, 1000 + i)));
    results.forEach((result, i) => {
      assert.equal(result.sentSha256, deterministicSha256(bytes, 1000 + i), `stream ${i} sent its own data`);
      assert.equal(result.replyBytes, bytes, `stream ${i} length`);
      assert.equal(result.replySha256, result.sentSha256, `stream ${i} data`);
    });
    assert.equal(new Set(results.map((r) => r.sentSha256)).size, streams, 'every stream carried distinct data');
    const relayed = await stack.metric('narrowlink_gateway_relay_bytes_total', { direction: 'client_to_agent' });
    assert.ok((relayed ?? 0) >= streams * bytes, `gateway relayed ${relayed} bytes client → agent`);
  });
});

describe('slow reader', () => {
  let stack: Stack;
  let echo: TestServer;
  let source: Awaited<ReturnType<typeof startSourceServer>>;
  let forward: ForwardProcess;

  before(async () => {
    echo = await startEchoServer();
    source = await startSourceServer(BIG, 41);
    stack = await startStack({
      agents: [
        {
          name: 'svc',
          expose: [
            { name: 'echo', port: echo.port },
            { name: 'source', port: source.port },
          ],
        },
      ],
    });
    await stack.startAgent('svc');
    forward = await stack.startForward(['svc:echo', 'svc:source']);
  });
  after(async () => {
    await stack?.stop();
    await closeAll([echo, source]);
  });

  test('a stalled reader bounds gateway memory, does not block other streams, and loses nothing', { timeout: 60_000 }, async (t) => {
    const rssName = 'process_resident_memory_bytes';
    const downName = 'narrowlink_gateway_relay_bytes_total';
    const [echoPort, sourcePort] = forward.ports as [number, number];
    // Warm the session up (and the gateway's code paths) before taking the baseline.
    const warm = await sendAndHash(echoPort, 64 * KiB, 40);
    assert.equal(warm.replySha256, warm.sentSha256);
    const rssBefore = await stack.metric(rssName);
    assert.ok(rssBefore !== undefined && rssBefore > 0, `${rssName} is exported`);
    const downBefore = (await stack.metric(downName, { direction: 'agent_to_client' })) ?? 0;

    // Connect and read nothing: no 'data' listener, so the socket stays paused.
    const slow = net.connect({ host: '127.0.0.1', port: sourcePort });
    slow.on('error', () => undefined);
    await once(slow, 'connect');
    const stallStarted = performance.now();

    // During the stall a second stream on the same client session must still flow.
    await sleep(500);
    const during = await sendAndHash(echoPort, 16 * KiB, 42, { timeoutMs: 5000 });
    assert.equal(during.replySha256, during.sentSha256, 'echo round trip completed during the stall');
    assert.ok(performance.now() - stallStarted < 2000, 'the echo round trip finished while the reader was still stalled');

    await sleep(Math.max(0, 2000 - (performance.now() - stallStarted)));
    const rssDuring = await stack.metric(rssName);
    const downStalled = ((await stack.metric(downName, { direction: 'agent_to_client' })) ?? 0) - downBefore - during.replyBytes;
    await sleep(300);
    const downStalledLater = ((await stack.metric(downName, { direction: 'agent_to_client' })) ?? 0) - downBefore - during.replyBytes;
    const growth = (rssDuring as number) - rssBefore;
    t.diagnostic(`gateway RSS ${(rssBefore / MiB).toFixed(1)} → ${((rssDuring as number) / MiB).toFixed(1)} MiB; forwarded to the stalled reader: ${(downStalled / MiB).toFixed(2)} MiB`);
    // The gateway's own accounting: what it holds for this stream is at most one window per direction.
    const queued = (await stack.metric('narrowlink_gateway_relay_queued_bytes')) ?? Number.NaN;
    assert.ok(queued <= 2 * STREAM_WINDOW, `gateway queues hold ${queued} bytes (limit two windows, ${2 * STREAM_WINDOW})`);
    // RSS also carries garbage not yet collected (WebSocket receive buffers), so its bound is looser, yet
    // well under the 64 MiB the source offered: buffering the transfer would still fail it.
    const limit = 3 * STREAM_WINDOW + 32 * MiB;
    assert.ok(growth < limit, `gateway RSS grew by ${(growth / MiB).toFixed(1)} MiB during the stall (limit ${limit / MiB} MiB)`);
    // Backpressure really held the source back: the gateway forwarded far less than 64 MiB and then nothing more.
    assert.ok(downStalled > 0, 'the source stream started');
    assert.ok(downStalled < BIG / 2, `gateway forwarded ${(downStalled / MiB).toFixed(1)} MiB to a reader that read nothing`);
    assert.equal(downStalledLater, downStalled, 'nothing more is forwarded while the reader stays stalled');

    // Resume: every one of the 64 MiB arrives, in order.
    const hash = createHash('sha256');
    let received = 0;
    slow.on('data', (chunk: Buffer) => {
      received += chunk.length;
      hash.update(chunk);
    });
    const ended = once(slow, 'end');
    slow.resume();
    await ended;
    slow.destroy();
    assert.equal(received, BIG);
    assert.equal(hash.digest('hex'), source.expectedSha256);
  });
});
