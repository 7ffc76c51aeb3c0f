/**
 * Loopback end-to-end tests of the gateway's security surface with real processes: upgrade-time
 * authentication (raw `ws` client, custom headers), policy enforcement through the CLI, protocol
 * abuse on an authenticated session, and tokens kept out of every log line.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { decodeFrame, encodeFrame, type Frame, generateSigningKeyPair, PROTOCOL_VERSION, signToken } from '@narrowlink/protocol';
import WebSocket from 'ws';
import { freePort } from '../helpers/ports.ts';
import type { StartedProcess } from '../helpers/processes.ts';
import { sendAndHash, startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { type ClientRun, DEFAULT_CLIENT_SUBJECT, type ForwardProcess, type Stack, startStack } from './stack.ts';

const KiB = 1024;
const AUTH_FAILURES = 'narrowlink_gateway_auth_failures_total';

/** Every token any test hands to a process or a socket; none may show up in any output. */
const tokensUsed = new Set<string>();
/** Output of short-lived CLI runs (long-running processes keep theirs in StartedProcess). */
const runOutputs: string[] = [];
const processes: StartedProcess[] = [];

function remember<T extends string>(token: T): T {
  tokensUsed.add(token);
  return token;
}

async function run(stack: Stack, args: string[], options: Parameters<Stack['runClient']>[1] = {}): Promise<ClientRun> {
  const result = await stack.runClient(args, { timeoutMs: 20_000, ...options });
  runOutputs.push(result.stdout.toString('utf8'), result.stderr);
  return result;
}

type UpgradeResult = { status: number; headers: Record<string, string | string[] | undefined>; body: Record<string, unknown> };

/** Attempts a WebSocket upgrade; resolves with the refusal (status, headers, JSON body) or status 101 on success. */
function upgrade(url: string, headers: Record<string, string> = {}): Promise<UpgradeResult> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers, perMessageDeflate: false, handshakeTimeout: 5000 });
    ws.on('unexpected-response', (_request, response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        ws.terminate();
        const text = Buffer.concat(chunks).toString('utf8');
        let body: Record<string, unknown> = {};
        try {
          body = JSON.parse(text) as Record<string, unknown>;
        } catch {
          body = { text };
        }
        resolve({ status: response.statusCode ?? 0, headers: response.headers, body });
      });
    });
    ws.on('open', () => {
      ws.terminate();
      resolve({ status: 101, headers: {}, body: {} });
    });
    ws.on('error', (error) => reject(error));
  });
}

/** A raw authenticated session: every decoded frame it receives, and how it closed. */
interface RawSession {
  ws: WebSocket;
  frames: Frame[];
  /** Messages that did not decode as frames (should never happen). */
  undecodable: Buffer[];
  closed: Promise<{ code: number; reason: string }>;
  send(data: Buffer | string, binary?: boolean): void;
}

async function openRaw(url: string, token: string): Promise<RawSession> {
  const ws = new WebSocket(`${url}/v1/client`, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
  const frames: Frame[] = [];
  const undecodable: Buffer[] = [];
  ws.on('message', (data: Buffer, isBinary) => {
    if (!isBinary) return undecodable.push(Buffer.from(data));
    try {
      frames.push(decodeFrame(data));
    } catch {
      undecodable.push(Buffer.from(data));
    }
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString('utf8') }));
  });
  ws.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  return {
    ws,
    frames,
    undecodable,
    closed,
    send: (data, binary = true) => ws.send(data, { binary }),
  };
}

async function within<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function waitForFrame(session: RawSession, predicate: (frame: Frame) => boolean, timeoutMs = 5000): Promise<Frame> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const found = session.frames.find(predicate);
    if (found) return found;
    if (performance.now() > deadline) throw new Error(`no matching frame within ${timeoutMs} ms; got ${JSON.stringify(session.frames.map((f) => f.type))}`);
    await sleep(20);
  }
}

function controlErrors(frames: Frame[]): string[] {
  return frames.flatMap((f) => (f.type === 'control' && f.message.type === 'error' ? [f.message.code] : []));
}

function hello(version: string): Buffer {
  return encodeFrame({ type: 'control', message: { type: 'hello', version, role: 'client', streamWindow: 1024 * 1024 } });
}

/** An unsigned token with header alg "none" and otherwise plausible client claims. */
function algNoneToken(): string {
  const now = Math.floor(Date.now() / 1000);
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part({ typ: 'client', sub: 'mallory', aud: 'narrowlink', groups: ['e2e'], iat: now, exp: now + 3600, jti: 'x' })}.`;
}

async function assertEchoWorks(port: number): Promise<void> {
  const result = await sendAndHash(port, 64 * KiB, 9, { timeoutMs: 15_000 });
  assert.equal(result.replySha256, result.sentSha256);
  assert.equal(result.replyBytes, 64 * KiB);
}

/** Connects to a forward listener and resolves with how the connection ended (expects it to be refused). */
function refusedConnection(port: number): Promise<{ how: 'error' | 'end' | 'close'; data: number }> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let data = 0;
    socket.on('data', (chunk: Buffer) => {
      data += chunk.length;
    });
    socket.once('error', () => resolve({ how: 'error', data }));
    socket.once('end', () => {
      socket.destroy();
      resolve({ how: 'end', data });
    });
    socket.once('close', () => resolve({ how: 'close', data }));
    socket.write('hello?');
  });
}

describe('gateway security', () => {
  let stack: Stack;
  let echo: TestServer;
  let admin: TestServer;
  let forward: ForwardProcess;

  before(async () => {
    echo = await startEchoServer();
    admin = await startEchoServer();
    stack = await startStack({
      agents: [
        {
          name: 'svc',
          expose: [
            { name: 'echo', port: echo.port },
            { name: 'admin', port: admin.port },
          ],
        },
      ],
      policies: [
        {
          name: 'e2e-svc-but-admin',
          namespace: 'default',
          subjects: [{ kind: 'Group', name: 'e2e' }],
          rules: [
            { action: 'Allow', agents: { names: ['svc'] } },
            { action: 'Deny', ports: [admin.port] },
          ],
        },
      ],
      // Debug logs are where a careless token would show up first.
      gatewayArgs: ['--log-level', 'debug'],
    });
    remember(stack.clientToken);
    processes.push(stack.gateway);
    const agentToken = remember(await stack.signToken('agent', { sub: 'default/svc' }));
    processes.push(await stack.startAgent('svc', { tokenFile: await stack.writeTokenFile(agentToken), args: ['--log-level', 'debug'] }));
    forward = await stack.startForward(['svc:echo', `svc:${admin.port}`]);
    processes.push(forward.process);
  });
  after(async () => {
    await stack?.stop();
    await echo?.close();
    await admin?.close();
  });

  test('upgrades without valid credentials are refused with coded HTTP errors, counted by reason', async () => {
    const reasons = [
      'NL_ERR_AUTH_MISSING_TOKEN',
      'NL_ERR_TOKEN_MALFORMED',
      'NL_ERR_TOKEN_EXPIRED',
      'NL_ERR_TOKEN_BAD_SIGNATURE',
      'NL_ERR_TOKEN_ALG_NOT_ALLOWED',
      'NL_ERR_TOKEN_WRONG_TYPE',
      'NL_ERR_AUTH_UNKNOWN_AGENT',
    ];
    const before: Record<string, number> = {};
    for (const reason of reasons) before[reason] = (await stack.metric(AUTH_FAILURES, { reason })) ?? 0;

    const client = `${stack.url}/v1/client`;
    const agentEndpoint = `${stack.url}/v1/agent`;
    const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${remember(token)}` });
    const expired = await stack.signToken('client', { nowMs: Date.now() - 2 * 3600_000, ttlSeconds: 60 });
    const otherKey = await generateSigningKeyPair();
    const foreign = await signToken(otherKey.privateKeyPem, { typ: 'client', sub: DEFAULT_CLIENT_SUBJECT, groups: ['e2e'], ttlSeconds: 3600 });
    const agentToken = await stack.signToken('agent', { sub: 'default/svc' });
    const ghostToken = await stack.signToken('agent', { sub: 'default/ghost' });

    const missing = await upgrade(client);
    assert.equal(missing.status, 401);
    assert.equal(missing.body.code, 'NL_ERR_AUTH_MISSING_TOKEN');
    assert.match(String(missing.headers['www-authenticate']), /^Bearer/);

    const garbage = await upgrade(client, bearer(`not-a-jwt-${randomBytes(24).toString('hex')}`));
    assert.equal(garbage.status, 401);
    assert.equal(garbage.body.code, 'NL_ERR_AUTH_INVALID_TOKEN');

    const cases: Array<[string, UpgradeResult, number, string, string | undefined]> = [
      ['expired', await upgrade(client, bearer(expired)), 401, 'NL_ERR_AUTH_INVALID_TOKEN', 'NL_ERR_TOKEN_EXPIRED'],
      ['other key', await upgrade(client, bearer(foreign)), 401, 'NL_ERR_AUTH_INVALID_TOKEN', 'NL_ERR_TOKEN_BAD_SIGNATURE'],
      ['alg none', await upgrade(client, bearer(algNoneToken())), 401, 'NL_ERR_AUTH_INVALID_TOKEN', 'NL_ERR_TOKEN_ALG_NOT_ALLOWED'],
      ['agent token on /v1/client', await upgrade(client, bearer(agentToken)), 403, 'NL_ERR_AUTH_WRONG_ENDPOINT', undefined],
      ['client token on /v1/agent', await upgrade(agentEndpoint, bearer(stack.clientToken)), 403, 'NL_ERR_AUTH_WRONG_ENDPOINT', undefined],
      ['unknown agent', await upgrade(agentEndpoint, bearer(ghostToken)), 403, 'NL_ERR_AUTH_UNKNOWN_AGENT', undefined],
      ['unknown path', await upgrade(`${stack.url}/v1/nope`, bearer(stack.clientToken)), 404, 'NL_ERR_GATEWAY_NOT_FOUND', undefined],
    ];
    for (const [what, result, status, code, reason] of cases) {
      assert.equal(result.status, status, `${what}: HTTP status`);
      assert.equal(result.body.code, code, `${what}: code`);
      if (reason !== undefined) assert.equal(result.body.reason, reason, `${what}: reason`);
      assert.equal(typeof result.body.message, 'string', `${what}: message`);
    }
    // The same credentials that are refused elsewhere do work where they belong.
    assert.equal((await upgrade(client, bearer(stack.clientToken))).status, 101);
    assert.equal((await upgrade(agentEndpoint, bearer(agentToken))).status, 101);

    const expected: Record<string, number> = {
      NL_ERR_AUTH_MISSING_TOKEN: 1,
      NL_ERR_TOKEN_MALFORMED: 1,
      NL_ERR_TOKEN_EXPIRED: 1,
      NL_ERR_TOKEN_BAD_SIGNATURE: 1,
      NL_ERR_TOKEN_ALG_NOT_ALLOWED: 1,
      NL_ERR_TOKEN_WRONG_TYPE: 2,
      NL_ERR_AUTH_UNKNOWN_AGENT: 1,
    };
    for (const reason of reasons) {
      const now = (await stack.metric(AUTH_FAILURES, { reason })) ?? 0;
      assert.equal(now - (before[reason] ?? 0), expected[reason], `auth_failures_total{reason="${reason}"}`);
    }
  });

  test('narrowlink ls exits 3 on a refused token and 4 on an unreachable gateway, within --timeout-ms', async () => {
    const otherKey = await generateSigningKeyPair();
    const foreign = remember(await signToken(otherKey.privateKeyPem, { typ: 'client', sub: DEFAULT_CLIENT_SUBJECT, groups: ['e2e'], ttlSeconds: 3600 }));
    const refused = await run(stack, ['ls', '--timeout-ms', '5000'], { token: foreign });
    assert.equal(refused.code, 3, refused.stderr);
    assert.match(refused.stderr, /NL_ERR_AUTH_INVALID_TOKEN/);

    const deadPort = await freePort();
    const startedAt = performance.now();
    const unreachable = await run(stack, ['ls', '--gateway', `ws://127.0.0.1:${deadPort}`, '--token', stack.clientToken, '--timeout-ms', '1500'], { bare: true });
    const took = performance.now() - startedAt;
    assert.equal(unreachable.code, 4, unreachable.stderr);
    // 1.5 s of waiting plus process start-up; far from the 15 s default.
    assert.ok(took < 1500 + 4000, `ls took ${Math.round(took)} ms`);
  });

  test('a Deny rule blocks one port while the other works; a user without policy sees nothing', async () => {
    const [echoPort, adminPort] = forward.ports as [number, number];
    await assertEchoWorks(echoPort);
    const refused = await within('denied connection ending', 10_000, refusedConnection(adminPort));
    assert.equal(refused.data, 0, 'bytes came back through a denied stream');
    assert.notEqual(refused.how, 'end', 'a denied stream must look like a failure, not a clean close');
    const failed = await forward.process.waitFor((line) => line.event === 'stream-failed', 3000);
    assert.equal(failed.code, 'DENIED');
    assert.equal(failed.target, `svc:${admin.port}`);
    await assertEchoWorks(echoPort);

    const nobody = remember(await stack.signToken('client', { sub: 'nobody', groups: ['strangers'] }));
    const listed = await run(stack, ['ls', '-o', 'json', '--timeout-ms', '5000'], { token: nobody });
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(JSON.parse(listed.stdout.toString('utf8')), { agents: [] });
    const connect = await run(stack, ['connect', 'svc', String(echo.port), '--timeout-ms', '5000'], { token: nobody, input: 'hello' });
    assert.equal(connect.code, 1, connect.stderr);
    assert.match(connect.stderr, /NL_ERR_STREAM_NO_AGENT/);
    assert.equal(connect.stdout.length, 0);
  });

  test('protocol abuse closes only the offending session; the gateway keeps serving', async () => {
    const token = stack.clientToken;
    const [echoPort] = forward.ports as [number];
    // A well-behaved raw session open through all the abuse below: it must survive it.
    const good = await openRaw(stack.url, token);
    good.send(hello(PROTOCOL_VERSION));
    await waitForFrame(good, (f) => f.type === 'control' && f.message.type === 'hello_ok');

    // Garbage binary: shorter than a frame header, then an unknown frame type.
    const garbage = await openRaw(stack.url, token);
    garbage.send(Buffer.from([0xde, 0xad, 0xbe, 0xef]));
    const garbageClose = await within('session closed after garbage', 5000, garbage.closed);
    assert.equal(garbageClose.code, 4400);
    assert.deepEqual(controlErrors(garbage.frames), ['NL_ERR_FRAME_TRUNCATED']);

    const unknownType = await openRaw(stack.url, token);
    unknownType.send(Buffer.from([0x7f, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert.equal((await within('session closed after an unknown frame type', 5000, unknownType.closed)).code, 4400);
    assert.deepEqual(controlErrors(unknownType.frames), ['NL_ERR_FRAME_UNKNOWN_TYPE']);

    // A text message is not part of the protocol.
    const text = await openRaw(stack.url, token);
    text.send('{"type":"hello"}', false);
    assert.equal((await within('session closed after a text frame', 5000, text.closed)).code, 4400);

    // A hello from a future major version: an error frame naming the problem, then the close.
    const future = await openRaw(stack.url, token);
    future.send(hello('2.0'));
    const futureClose = await within('session closed after hello 2.0', 5000, future.closed);
    assert.equal(futureClose.code, 4400);
    assert.deepEqual(controlErrors(future.frames), ['NL_ERR_PROTOCOL_VERSION']);
    assert.equal(future.undecodable.length, 0);

    // A stream before the hello: refused, and the session with it.
    const early = await openRaw(stack.url, token);
    early.send(encodeFrame({ type: 'open', streamId: 1, payload: { agent: 'svc', port: echo.port } }));
    const earlyClose = await within('session closed after OPEN before hello', 5000, early.closed);
    assert.equal(earlyClose.code, 4400);
    assert.ok(
      early.frames.every((f) => f.type !== 'open_ok' && f.type !== 'data'),
      'a stream opened before hello must never be accepted',
    );

    assert.ok(
      early.frames.some((f) => f.type === 'reset' && f.streamId === 1 && f.payload.code === 'PROTOCOL_ERROR'),
      'the early stream was not reset with PROTOCOL_ERROR',
    );
    assert.deepEqual(controlErrors(early.frames), ['NL_ERR_PROTOCOL_UNEXPECTED']);

    // The well-behaved session is still open and answered.
    assert.equal(good.ws.readyState, WebSocket.OPEN);
    good.send(encodeFrame({ type: 'control', message: { type: 'list_agents', requestId: 7 } }));
    const listed = await waitForFrame(good, (f) => f.type === 'control' && f.message.type === 'agents' && f.message.requestId === 7);
    assert.ok(listed.type === 'control' && listed.message.type === 'agents');
    assert.deepEqual(
      listed.message.agents.map((a) => a.name),
      ['svc'],
    );
    good.ws.close(1000);
    await within('good session closing', 5000, good.closed);

    assert.equal(stack.gateway.child.exitCode, null, stack.gateway.tail());
    assert.equal((await stack.httpGet('/healthz')).status, 200);
    // The public listener serves WebSocket upgrades only: no metrics, readiness or health for whoever reaches it.
    for (const pathname of ['/metrics', '/readyz', '/healthz']) assert.equal((await stack.publicGet(pathname)).status, 404, pathname);
    await assertEchoWorks(echoPort);
  });

  test('no token appears in any gateway, agent or client output', async () => {
    // Exercise the agent and client logs once more so both sides have written something recent.
    await assertEchoWorks(forward.ports[0] as number);
    await sleep(200);
    const outputs: string[] = [...runOutputs];
    for (const p of processes) {
      outputs.push(...p.lines.map((line) => JSON.stringify(line)), ...p.stderrLines);
    }
    assert.ok(outputs.length > 20, `only ${outputs.length} output lines collected`);
    assert.ok(tokensUsed.size >= 8);
    for (const token of tokensUsed) {
      // Every token's signature part is unique to it; the whole token or its signature must not leak.
      const signature = token.split('.')[2] ?? '';
      for (const line of outputs) {
        assert.ok(!line.includes(token), `a token appears in output: ${line.slice(0, 200)}`);
        if (signature.length > 16) assert.ok(!line.includes(signature), `a token signature appears in output: ${line.slice(0, 200)}`);
      }
    }
  });
});
