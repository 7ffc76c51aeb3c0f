/**
 * Key-bound client tokens (cnf.jkt) against a real gateway: real listener, real WebSockets, a real Mux on each
 * side. The upgrade needs a DPoP proof for the token, the URL and the key; reauth needs a fresh one by the same key.
 */
import assert from 'node:assert/strict';
import type { KeyObject } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { after, describe, test } from 'node:test';
import {
  type ControlMessage,
  createProof,
  DEFAULT_STREAM_WINDOW,
  ErrorCode,
  generateProofKey,
  generateSigningKeyPair,
  jwkThumbprint,
  Mux,
  type MuxStream,
  PROTOCOL_VERSION,
  REAUTH_PROOF_METHOD,
  signToken,
  validateGatewayConfig,
} from '@narrowlink/protocol';
import { pino } from 'pino';
import WebSocket from 'ws';
import { buildApp } from './app.ts';
import { GatewayErrorCode } from './errors.ts';
import { Gateway } from './gateway.ts';
import { createMetrics } from './metrics.ts';

const keys = await generateSigningKeyPair();
const log = pino({ level: 'silent' });
const T0 = Date.parse('2030-01-01T00:00:00Z');
const aliceKey = generateProofKey();
const otherKey = generateProofKey();

const config = validateGatewayConfig({
  apiVersion: 'narrowlink.io/v1alpha1',
  kind: 'GatewayConfig',
  signingPublicKeys: [keys.publicKeyPem],
  agents: [{ name: 'db', expose: [{ name: 'pg', port: 5432 }] }],
  policies: [{ name: 'alice', subjects: [{ kind: 'User', name: 'alice' }], rules: [{ action: 'Allow', agents: { names: ['db'] }, ports: [5432] }] }],
});

const stops: Array<() => Promise<void>> = [];
after(async () => {
  for (const stop of stops.reverse()) await stop();
});

async function startGateway(options: { publicUrl?: string } = {}) {
  const clock = { now: T0 };
  const metrics = createMetrics({ defaultMetrics: false });
  const gateway = new Gateway({ log, metrics, now: () => clock.now });
  gateway.applyConfig(config);
  const app = buildApp({ gateway, log, ...(options.publicUrl ? { publicUrl: options.publicUrl } : {}) });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  stops.push(async () => {
    await gateway.shutdown(0);
    await app.close();
  });
  return { gateway, metrics, clock, url: `ws://127.0.0.1:${port}` };
}

/** A client token for alice, bound to `key` unless `key` is null. */
function token(key: { x: string } | null, options: { nowMs?: number; ttlSeconds?: number } = {}): Promise<string> {
  return signToken(keys.privateKeyPem, {
    typ: 'client',
    sub: 'alice',
    ttlSeconds: options.ttlSeconds ?? 600,
    nowMs: options.nowMs ?? T0,
    ...(key ? { cnf: { jkt: jwkThumbprint(key.x) } } : {}),
  });
}

function proof(privateKey: KeyObject, forToken: string, htu: string, options: { htm?: string; nowMs?: number; jti?: string } = {}): Promise<string> {
  return createProof(privateKey, { token: forToken, htm: options.htm ?? 'GET', htu, nowMs: options.nowMs ?? T0, ...(options.jti ? { jti: options.jti } : {}) });
}

async function until(predicate: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

type Upgrade = { status: 101; peer: Peer } | { status: number; body: { code?: string; reason?: string; message?: string } };

/** One peer over a real WebSocket with a Mux (agents accept every OPEN and echo). */
class Peer {
  readonly controls: ControlMessage[] = [];
  readonly mux: Mux;
  readonly ws: WebSocket;
  closeInfo: { code: number; reason: string } | undefined;

  constructor(ws: WebSocket, role: 'agent' | 'client') {
    this.ws = ws;
    this.mux = new Mux({
      role: 'initiator',
      send: (bytes) => ws.send(bytes, { binary: true }),
      handlers: {
        onControl: (message) => this.controls.push(message),
        onOpen: (stream) => {
          stream.handlers = {
            onData: (d) => {
              stream.consumed(d.length);
              stream.write(d);
            },
          };
          if (role === 'agent') stream.accept({ path: 'relay' });
        },
      },
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary) this.mux.receive(data as Buffer);
    });
    ws.on('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString() };
      this.mux.close();
    });
    ws.on('error', () => undefined);
  }

  /** Dials `url/v1/role` with these headers: the open peer, or the HTTP refusal with its JSON body. */
  static async dial(url: string, role: 'agent' | 'client', headers: Record<string, string>): Promise<Upgrade> {
    const ws = new WebSocket(`${url}/v1/${role}`, { headers, perMessageDeflate: false });
    stops.push(async () => {
      ws.terminate();
    });
    return await new Promise<Upgrade>((resolve, reject) => {
      ws.once('unexpected-response', (_request, response) => {
        const chunks: Buffer[] = [];
        response.on('data', (c: Buffer) => chunks.push(c));
        response.on('end', () => {
          ws.terminate();
          resolve({ status: response.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
        });
      });
      ws.once('open', () => resolve({ status: 101, peer: new Peer(ws, role) }));
      ws.once('error', reject);
    });
  }

  async hello(role: 'agent' | 'client'): Promise<void> {
    this.mux.sendControl({
      type: 'hello',
      version: PROTOCOL_VERSION,
      role,
      software: 'key-bound.session.test',
      streamWindow: DEFAULT_STREAM_WINDOW,
      ...(role === 'agent' ? { agent: { instanceId: 'i-1', expose: [{ name: 'pg', port: 5432 }] } } : {}),
    });
    await until(() => this.controls.some((c) => c.type === 'hello_ok') || this.closeInfo !== undefined, 'hello_ok');
    assert.ok(this.controls.some((c) => c.type === 'hello_ok'), `hello_ok, got ${JSON.stringify(this.controls)}`);
  }

  async waitClosed(): Promise<{ code: number; reason: string }> {
    await until(() => this.closeInfo !== undefined, 'socket close');
    return this.closeInfo as { code: number; reason: string };
  }

  error(): Extract<ControlMessage, { type: 'error' }> | undefined {
    return this.controls.find((c) => c.type === 'error');
  }
}

/** An open client session of alice with a key-bound token and a valid proof. */
async function boundClient(url: string, key = aliceKey): Promise<{ peer: Peer; token: string }> {
  const bound = await token(key);
  const upgrade = await Peer.dial(url, 'client', { authorization: `Bearer ${bound}`, dpop: await proof(key.privateKey, bound, `${url}/v1/client`) });
  assert.equal(upgrade.status, 101, JSON.stringify(upgrade));
  const { peer } = upgrade as { peer: Peer };
  await peer.hello('client');
  return { peer, token: bound };
}

async function agentDb(url: string): Promise<Peer> {
  const agentToken = await signToken(keys.privateKeyPem, { typ: 'agent', sub: 'default/db', ttlSeconds: 600, nowMs: T0 });
  const upgrade = await Peer.dial(url, 'agent', { authorization: `Bearer ${agentToken}` });
  assert.equal(upgrade.status, 101);
  const { peer } = upgrade as { peer: Peer };
  await peer.hello('agent');
  return peer;
}

/** Opens a stream to db:5432 and returns it with what comes back. */
async function openEcho(peer: Peer): Promise<{ stream: MuxStream; received: Buffer[] }> {
  const received: Buffer[] = [];
  let answered: string | undefined;
  const stream = peer.mux.open(
    { agent: 'db', port: 5432 },
    {
      onOpenOk: () => {
        answered = 'ok';
      },
      onReset: (reset) => {
        answered = reset.code;
      },
      onData: (d) => {
        received.push(Buffer.from(d));
        stream.consumed(d.length);
      },
    },
  );
  await until(() => answered !== undefined, 'OPEN answer');
  assert.equal(answered, 'ok');
  return { stream, received };
}

async function echoes(stream: MuxStream, received: Buffer[], text: string): Promise<void> {
  stream.write(Buffer.from(text));
  await until(() => Buffer.concat(received).toString().endsWith(text), `echo of ${text}`);
}

function refused(upgrade: Upgrade, reason: string): void {
  assert.equal(upgrade.status, 401, JSON.stringify(upgrade));
  const { body } = upgrade as { body: { code?: string; reason?: string } };
  assert.equal(body.code, GatewayErrorCode.AUTH_INVALID_TOKEN);
  assert.equal(body.reason, reason);
}

describe('key-bound client tokens on the upgrade', () => {
  test('a correct proof opens the session; without one the token is refused 401 PROOF_MISSING', async () => {
    const gw = await startGateway();
    const bound = await token(aliceKey);
    refused(await Peer.dial(gw.url, 'client', { authorization: `Bearer ${bound}` }), ErrorCode.TOKEN_PROOF_MISSING);
    const { peer } = await boundClient(gw.url);
    assert.equal(peer.closeInfo, undefined);
    assert.equal(gw.gateway.sessionCount, 1);
  });

  test('a plain bearer token (no cnf) needs no proof and ignores one', async () => {
    const gw = await startGateway();
    const bearer = await token(null);
    const plain = await Peer.dial(gw.url, 'client', { authorization: `Bearer ${bearer}` });
    assert.equal(plain.status, 101);
    const withGarbage = await Peer.dial(gw.url, 'client', { authorization: `Bearer ${bearer}`, dpop: 'garbage' });
    assert.equal(withGarbage.status, 101);
  });

  test('a proof signed by another key is refused (KEY_MISMATCH), even with the right token', async () => {
    const gw = await startGateway();
    const bound = await token(aliceKey);
    const upgrade = await Peer.dial(gw.url, 'client', { authorization: `Bearer ${bound}`, dpop: await proof(otherKey.privateKey, bound, `${gw.url}/v1/client`) });
    refused(upgrade, ErrorCode.TOKEN_PROOF_KEY_MISMATCH);
  });

  test('a proof replayed from an earlier session is refused (REPLAYED), also after that session closed', async () => {
    const gw = await startGateway();
    const bound = await token(aliceKey);
    const dpop = await proof(aliceKey.privateKey, bound, `${gw.url}/v1/client`);
    const first = await Peer.dial(gw.url, 'client', { authorization: `Bearer ${bound}`, dpop });
    assert.equal(first.status, 101);
    (first as { peer: Peer }).peer.ws.close();
    await until(() => gw.gateway.sessionCount === 0, 'first session closed');
    gw.clock.now = T0 + 20_000;
    refused(await Peer.dial(gw.url, 'client', { authorization: `Bearer ${bound}`, dpop }), ErrorCode.TOKEN_PROOF_REPLAYED);
  });

  test('a proof made for another token (ath), method (htm) or URL (htu) is refused (INVALID)', async () => {
    const gw = await startGateway();
    const bound = await token(aliceKey);
    const otherToken = await token(aliceKey, { nowMs: T0 - 1000 });
    const cases = [
      await proof(aliceKey.privateKey, otherToken, `${gw.url}/v1/client`),
      await proof(aliceKey.privateKey, bound, `${gw.url}/v1/client`, { htm: REAUTH_PROOF_METHOD }),
      await proof(aliceKey.privateKey, bound, `${gw.url}/v1/agent`),
      await proof(aliceKey.privateKey, bound, 'ws://gateway.elsewhere.example/v1/client'),
      await proof(aliceKey.privateKey, bound, `${gw.url.replace('ws:', 'wss:')}/v1/client`),
    ];
    for (const dpop of cases) refused(await Peer.dial(gw.url, 'client', { authorization: `Bearer ${bound}`, dpop }), ErrorCode.TOKEN_PROOF_INVALID);
    assert.equal(gw.gateway.sessionCount, 0);
  });

  test('a proof issued more than 60 s away from the gateway clock is refused (STALE)', async () => {
    const gw = await startGateway();
    const bound = await token(aliceKey);
    for (const skewMs of [-61_000, 61_000]) {
      const dpop = await proof(aliceKey.privateKey, bound, `${gw.url}/v1/client`, { nowMs: T0 + skewMs });
      refused(await Peer.dial(gw.url, 'client', { authorization: `Bearer ${bound}`, dpop }), ErrorCode.TOKEN_PROOF_STALE);
    }
  });

  test('an expired key-bound token is refused even with a fresh proof', async () => {
    const gw = await startGateway();
    const expired = await token(aliceKey, { nowMs: T0 - 120_000, ttlSeconds: 60 });
    const dpop = await proof(aliceKey.privateKey, expired, `${gw.url}/v1/client`);
    refused(await Peer.dial(gw.url, 'client', { authorization: `Bearer ${expired}`, dpop }), ErrorCode.TOKEN_EXPIRED);
  });

  test('with publicUrl (a proxy in front), proofs must name that URL, not the one the listener sees', async () => {
    const gw = await startGateway({ publicUrl: 'wss://gw.example.com' });
    const bound = await token(aliceKey);
    const local = await proof(aliceKey.privateKey, bound, `${gw.url}/v1/client`);
    refused(await Peer.dial(gw.url, 'client', { authorization: `Bearer ${bound}`, dpop: local }), ErrorCode.TOKEN_PROOF_INVALID);
    const publicProof = await proof(aliceKey.privateKey, bound, 'wss://gw.example.com/v1/client');
    assert.equal((await Peer.dial(gw.url, 'client', { authorization: `Bearer ${bound}`, dpop: publicProof })).status, 101);
  });

  test('refusals are counted by reason', async () => {
    const gw = await startGateway();
    const bound = await token(aliceKey);
    await Peer.dial(gw.url, 'client', { authorization: `Bearer ${bound}` });
    const metric = gw.metrics.registry.getSingleMetric('narrowlink_gateway_auth_failures_total');
    const values = (await metric?.get())?.values ?? [];
    assert.equal(values.find((v) => v.labels.reason === ErrorCode.TOKEN_PROOF_MISSING)?.value, 1);
  });
});

describe('key-bound client tokens on reauth', () => {
  test('a fresh token bound to the same key, with a fresh REAUTH proof, renews and keeps open streams', async () => {
    const gw = await startGateway();
    await agentDb(gw.url);
    const { peer } = await boundClient(gw.url);
    const { stream, received } = await openEcho(peer);
    await echoes(stream, received, 'before');

    gw.clock.now = T0 + 30_000;
    const renewed = await token(aliceKey, { nowMs: gw.clock.now });
    const reauthProof = await proof(aliceKey.privateKey, renewed, `${gw.url}/v1/client`, { htm: REAUTH_PROOF_METHOD, nowMs: gw.clock.now });
    peer.mux.sendControl({ type: 'reauth', token: renewed, proof: reauthProof });
    await until(() => peer.controls.some((c) => c.type === 'reauth_ok'), 'reauth_ok');
    assert.deepEqual(peer.controls.at(-1), { type: 'reauth_ok', expiresAt: T0 + 30_000 + 600_000 });
    await echoes(stream, received, 'after');
    assert.equal(peer.closeInfo, undefined);

    // The same reauth proof again is a replay: the session ends.
    peer.mux.sendControl({ type: 'reauth', token: renewed, proof: reauthProof });
    assert.deepEqual(await peer.waitClosed(), { code: 4401, reason: ErrorCode.TOKEN_PROOF_REPLAYED });
  });

  test('a token bound to another key is refused even with a valid proof by that key: the session cannot switch keys', async () => {
    const gw = await startGateway();
    const { peer } = await boundClient(gw.url);
    const other = await token(otherKey);
    peer.mux.sendControl({ type: 'reauth', token: other, proof: await proof(otherKey.privateKey, other, `${gw.url}/v1/client`, { htm: REAUTH_PROOF_METHOD }) });
    assert.equal((await peer.waitClosed()).code, 4401);
    assert.equal(peer.error()?.code, GatewayErrorCode.AUTH_INVALID_TOKEN);
    assert.equal(peer.closeInfo?.reason, ErrorCode.TOKEN_PROOF_KEY_MISMATCH);
  });

  test('a key-bound session cannot fall back to a bearer token, and a bearer session cannot gain a key', async () => {
    const gw = await startGateway();
    const { peer: bound } = await boundClient(gw.url);
    bound.mux.sendControl({ type: 'reauth', token: await token(null, { nowMs: T0 + 1000 }) });
    assert.equal((await bound.waitClosed()).code, 4401);
    assert.equal(bound.closeInfo?.reason, ErrorCode.TOKEN_PROOF_KEY_MISMATCH);

    const plain = (await Peer.dial(gw.url, 'client', { authorization: `Bearer ${await token(null)}` })) as { peer: Peer };
    await plain.peer.hello('client');
    const keyed = await token(aliceKey, { nowMs: T0 + 2000 });
    plain.peer.mux.sendControl({ type: 'reauth', token: keyed, proof: await proof(aliceKey.privateKey, keyed, `${gw.url}/v1/client`, { htm: REAUTH_PROOF_METHOD }) });
    assert.equal((await plain.peer.waitClosed()).code, 4401);
    assert.equal(plain.peer.closeInfo?.reason, ErrorCode.TOKEN_PROOF_KEY_MISMATCH);
  });

  test('a reauth without a proof, or with the upgrade-style proof (htm GET), ends the session', async () => {
    const gw = await startGateway();
    const { peer: first } = await boundClient(gw.url);
    first.mux.sendControl({ type: 'reauth', token: await token(aliceKey, { nowMs: T0 + 1000 }) });
    assert.equal((await first.waitClosed()).code, 4401);
    assert.equal(first.closeInfo?.reason, ErrorCode.TOKEN_PROOF_MISSING);

    const { peer: second } = await boundClient(gw.url);
    const renewed = await token(aliceKey, { nowMs: T0 + 2000 });
    second.mux.sendControl({ type: 'reauth', token: renewed, proof: await proof(aliceKey.privateKey, renewed, `${gw.url}/v1/client`) });
    assert.equal((await second.waitClosed()).code, 4401);
    assert.equal(second.closeInfo?.reason, ErrorCode.TOKEN_PROOF_INVALID);
  });
});
