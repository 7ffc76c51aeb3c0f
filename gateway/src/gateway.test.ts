import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { after, describe, test } from 'node:test';
import {
  type ControlMessage,
  DEFAULT_STREAM_WINDOW,
  type GatewayConfig,
  generateSigningKeyPair,
  Mux,
  type MuxStream,
  type OpenOk,
  type OpenPayload,
  PROTOCOL_VERSION,
  type ResetPayload,
  StreamErrorCode,
  signToken,
  validateGatewayConfig,
} from '@narrowlink/protocol';
import { pino } from 'pino';
import WebSocket from 'ws';
import { buildApp } from './app.ts';
import { Gateway, type GatewayOptions } from './gateway.ts';
import { createMetrics, type GatewayMetrics } from './metrics.ts';

const keys = await generateSigningKeyPair();
const log = pino({ level: 'silent' });

interface ConfigOptions {
  /** Ports alice's policy allows on db and web. */
  alicePorts?: number[];
  /** Leave the db agent out of the config. */
  withoutDb?: boolean;
}

function makeConfig(options: ConfigOptions = {}): GatewayConfig {
  const agents = [
    {
      name: 'db',
      labels: { tier: 'db' },
      expose: [
        { name: 'pg', port: 5432 },
        { name: 'admin', port: 9000 },
      ],
    },
    { name: 'web', expose: [{ name: 'http', port: 8080 }] },
    { name: 'secret', expose: [{ name: 'ssh', port: 22 }] },
  ].filter((a) => !(options.withoutDb && a.name === 'db'));
  return validateGatewayConfig({
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'GatewayConfig',
    signingPublicKeys: [keys.publicKeyPem],
    agents,
    policies: [
      {
        name: 'alice-dev',
        subjects: [{ kind: 'User', name: 'alice' }],
        rules: [{ action: 'Allow', agents: { names: ['db', 'web'] }, ports: options.alicePorts ?? [5432, 8080] }],
      },
    ],
  });
}

const stops: Array<() => Promise<void>> = [];
after(async () => {
  for (const stop of stops.reverse()) await stop();
});

async function startGateway(options: Partial<Omit<GatewayOptions, 'log' | 'metrics'>> = {}, config = makeConfig()) {
  const metrics = createMetrics({ defaultMetrics: false });
  const gateway = new Gateway({ log, metrics, ...options });
  gateway.applyConfig(config);
  const app = buildApp({ gateway, log });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await gateway.shutdown(0);
    await app.close();
  };
  stops.push(stop);
  return { gateway, app, metrics, url: `ws://127.0.0.1:${port}`, stop };
}

async function metricValue(metrics: GatewayMetrics, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = metrics.registry.getSingleMetric(name);
  assert.ok(metric, `metric ${name} exists`);
  const { values } = await metric.get();
  const match = values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val));
  return match?.value ?? 0;
}

async function until(predicate: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function token(typ: 'agent' | 'client', sub: string, options: { nowMs?: number; ttlSeconds?: number; groups?: string[] } = {}) {
  return signToken(keys.privateKeyPem, { typ, sub, ttlSeconds: options.ttlSeconds ?? 600, groups: options.groups ?? [], ...(options.nowMs ? { nowMs: options.nowMs } : {}) });
}

/** One peer speaking the protocol over a real WebSocket with a Mux, the way peer-link does. */
class Peer {
  readonly ws: WebSocket;
  readonly mux: Mux;
  readonly role: 'agent' | 'client';
  readonly controls: ControlMessage[] = [];
  readonly opens: { stream: MuxStream; payload: OpenPayload; resets: ResetPayload[]; data: Buffer[] }[] = [];
  closeInfo: { code: number; reason: string } | undefined;
  /** Agents: accept every OPEN and echo back what arrives. */
  autoAccept = false;

  constructor(ws: WebSocket, role: 'agent' | 'client') {
    this.ws = ws;
    this.role = role;
    this.mux = new Mux({
      role: 'initiator',
      send: (bytes) => ws.send(bytes, { binary: true }),
      handlers: {
        onControl: (message) => this.controls.push(message),
        onOpen: (stream, payload) => {
          const entry = { stream, payload, resets: [] as ResetPayload[], data: [] as Buffer[] };
          this.opens.push(entry);
          stream.handlers = {
            onReset: (reset) => entry.resets.push(reset),
            onData: (d) => {
              entry.data.push(Buffer.from(d));
              stream.consumed(d.length);
              stream.write(d);
            },
          };
          if (this.autoAccept) stream.accept({ path: 'relay' });
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

  static async connect(url: string, role: 'agent' | 'client', bearer: string): Promise<Peer> {
    const ws = new WebSocket(`${url}/v1/${role}`, { headers: { authorization: `Bearer ${bearer}` }, perMessageDeflate: false });
    const peer = new Peer(ws, role);
    stops.push(async () => {
      ws.terminate();
    });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    return peer;
  }

  /** Sends hello and waits for hello_ok (or fails with the error the gateway sent). */
  async hello(options: { instanceId?: string; role?: 'agent' | 'client'; version?: string } = {}): Promise<Extract<ControlMessage, { type: 'hello_ok' }>> {
    const role = options.role ?? this.role;
    this.mux.sendControl({
      type: 'hello',
      version: options.version ?? PROTOCOL_VERSION,
      role,
      software: 'gateway.test',
      streamWindow: DEFAULT_STREAM_WINDOW,
      ...(this.role === 'agent' ? { agent: { instanceId: options.instanceId ?? 'i-1', expose: [{ name: 'pg', port: 5432 }] } } : {}),
    });
    await until(() => this.controls.some((c) => c.type === 'hello_ok' || c.type === 'error') || this.closeInfo !== undefined, 'hello_ok');
    const ok = this.controls.find((c) => c.type === 'hello_ok');
    if (!ok) throw new Error(`no hello_ok: ${JSON.stringify(this.controls)} ${JSON.stringify(this.closeInfo)}`);
    return ok;
  }

  error(): Extract<ControlMessage, { type: 'error' }> | undefined {
    return this.controls.find((c) => c.type === 'error');
  }

  async listAgents(requestId: number) {
    this.mux.sendControl({ type: 'list_agents', requestId });
    await until(() => this.controls.some((c) => c.type === 'agents' && c.requestId === requestId), 'agents');
    const reply = this.controls.find((c) => c.type === 'agents' && c.requestId === requestId);
    assert.ok(reply?.type === 'agents');
    return reply.agents;
  }

  /** Opens a stream and waits for OPEN_OK or RESET. */
  async open(payload: OpenPayload): Promise<{ stream: MuxStream; ok?: OpenOk; reset?: ResetPayload; data: Buffer[]; resets: ResetPayload[] }> {
    const result: { stream?: MuxStream; ok?: OpenOk; reset?: ResetPayload; data: Buffer[]; resets: ResetPayload[] } = { data: [], resets: [] };
    const stream = this.mux.open(payload, {
      onOpenOk: (ok) => {
        result.ok = ok;
      },
      onReset: (reset) => {
        result.reset = reset;
        result.resets.push(reset);
      },
      onData: (d) => {
        result.data.push(Buffer.from(d));
        stream.consumed(d.length);
      },
    });
    result.stream = stream;
    await until(() => result.ok !== undefined || result.reset !== undefined, `answer to OPEN ${JSON.stringify(payload)}`);
    return result as typeof result & { stream: MuxStream };
  }

  async waitClosed(what = 'socket close', timeoutMs = 3000): Promise<{ code: number; reason: string }> {
    await until(() => this.closeInfo !== undefined, what, timeoutMs);
    return this.closeInfo as { code: number; reason: string };
  }
}

async function client(url: string, sub = 'alice'): Promise<Peer> {
  const peer = await Peer.connect(url, 'client', await token('client', sub));
  await peer.hello();
  return peer;
}

async function agent(url: string, name = 'db', instanceId = 'i-1'): Promise<Peer> {
  const peer = await Peer.connect(url, 'agent', await token('agent', `default/${name}`));
  peer.autoAccept = true;
  await peer.hello({ instanceId });
  return peer;
}

describe('Gateway sessions', () => {
  test('hello gets hello_ok with the verified identity and the gateway window; the session is counted', async () => {
    const gw = await startGateway({ streamWindow: 256 * 1024 });
    const peer = await Peer.connect(gw.url, 'client', await token('client', 'alice', { groups: ['dev'] }));
    const ok = await peer.hello();
    assert.equal(ok.version, PROTOCOL_VERSION);
    assert.equal(ok.identity.sub, 'alice');
    assert.deepEqual(ok.identity.groups, ['dev']);
    assert.equal(ok.identity.typ, 'client');
    assert.equal(ok.streamWindow, 256 * 1024);
    assert.ok(ok.sessionId.length > 0);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_sessions', { kind: 'client' }), 1);
    peer.ws.close(1000);
    await peer.waitClosed();
    await until(() => gw.gateway.sessionCount === 0, 'session gone');
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_sessions', { kind: 'client' }), 0);
  });

  test('a hello naming the wrong role or a foreign major version closes the session with a coded error', async () => {
    const gw = await startGateway();
    const wrongRole = await Peer.connect(gw.url, 'client', await token('client', 'alice'));
    await assert.rejects(wrongRole.hello({ role: 'agent' }));
    assert.equal(wrongRole.error()?.code, 'NL_ERR_PROTOCOL_UNEXPECTED');
    assert.equal((await wrongRole.waitClosed()).code, 4400);

    const future = await Peer.connect(gw.url, 'client', await token('client', 'alice'));
    await assert.rejects(future.hello({ version: '2.0' }));
    assert.equal(future.error()?.code, 'NL_ERR_PROTOCOL_VERSION');
    assert.equal((await future.waitClosed()).code, 4400);
    await until(() => gw.gateway.sessionCount === 0, 'sessions forgotten');
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_sessions', { kind: 'client' }), 0, 'refused sessions never count');
  });

  test('a control message before hello is a protocol violation', async () => {
    const gw = await startGateway();
    const peer = await Peer.connect(gw.url, 'client', await token('client', 'alice'));
    peer.mux.sendControl({ type: 'list_agents', requestId: 1 });
    assert.equal((await peer.waitClosed()).code, 4400);
    assert.equal(peer.error()?.code, 'NL_ERR_PROTOCOL_UNEXPECTED');
  });

  test('handshake timeout closes a session that never says hello', async () => {
    const gw = await startGateway({ handshakeTimeoutMs: 100 });
    const peer = await Peer.connect(gw.url, 'client', await token('client', 'alice'));
    const closed = await peer.waitClosed('handshake timeout', 2000);
    assert.equal(closed.code, 4408);
    assert.equal(peer.error()?.code, 'NL_ERR_GATEWAY_HANDSHAKE_TIMEOUT');
    await until(() => gw.gateway.sessionCount === 0, 'session forgotten');
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_sessions', { kind: 'client' }), 0);
  });

  test('a token that expires during the session closes it', async () => {
    let clock = Date.parse('2030-01-01T00:00:00Z');
    const gw = await startGateway({ now: () => clock });
    const peer = await Peer.connect(gw.url, 'client', await token('client', 'alice', { nowMs: clock, ttlSeconds: 60 }));
    const ok = await peer.hello();
    assert.equal(ok.identity.expiresAt, clock + 60_000);
    clock += 61_000;
    const closed = await peer.waitClosed('expiry close', 3000);
    assert.equal(closed.code, 4401);
    assert.equal(peer.error()?.code, 'NL_ERR_TOKEN_EXPIRED');
  });
});

describe('Gateway agents and streams', () => {
  test('list_agents shows only what the policy allows, with connected instances', async () => {
    const gw = await startGateway();
    await agent(gw.url, 'db');
    const alice = await client(gw.url, 'alice');
    const agents = await alice.listAgents(7);
    assert.deepEqual(
      agents.map((a) => ({ name: a.name, instances: a.instances, ports: a.ports.map((p) => p.port) })),
      [
        { name: 'db', instances: 1, ports: [5432] },
        { name: 'web', instances: 0, ports: [8080] },
      ],
    );
    const bob = await client(gw.url, 'bob');
    assert.deepEqual(await bob.listAgents(1), []);
  });

  test('OPEN reaches the agent with host, port and client, then relays bytes both ways', async () => {
    const gw = await startGateway();
    const db = await agent(gw.url, 'db');
    const alice = await client(gw.url, 'alice');
    const opened = await alice.open({ agent: 'db', port: 5432 });
    assert.deepEqual(opened.ok, { path: 'relay' });
    assert.deepEqual(db.opens[0]?.payload, { host: '127.0.0.1', port: 5432, client: 'alice' });
    const payload = randomBytes(200_000);
    opened.stream.write(payload);
    await until(() => Buffer.concat(opened.data).length >= payload.length, 'echo');
    assert.ok(Buffer.concat(opened.data).equals(payload), 'echoed bytes are identical');
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_streams_total', { result: 'ok' }), 1);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_streams_open'), 1);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_relay_bytes_total', { direction: 'client_to_agent' }), payload.length);
    assert.equal(gw.gateway.openStreams, 1);

    // By port name and by namespace/name reference, too.
    const byName = await alice.open({ agent: 'default/db', port: 'pg' });
    assert.ok(byName.ok);
    assert.deepEqual(db.opens[1]?.payload, { host: '127.0.0.1', port: 5432, client: 'alice' });

    // A clean close on both sides ends the relay.
    opened.stream.fin();
    db.opens[0]?.stream.fin();
    await until(() => gw.gateway.openStreams === 1, 'first relay closed');
  });

  test('TIMEOUT when the agent never answers the OPEN', async () => {
    const gw = await startGateway({ openTimeoutMs: 200 });
    const db = await agent(gw.url, 'db');
    db.autoAccept = false;
    const alice = await client(gw.url, 'alice');
    const started = performance.now();
    const opened = await alice.open({ agent: 'db', port: 5432 });
    assert.equal(opened.reset?.code, StreamErrorCode.TIMEOUT);
    assert.ok(performance.now() - started >= 190, 'not before the open timeout');
    await until(() => (db.opens[0]?.resets.length ?? 0) > 0, 'agent leg reset');
    assert.equal(db.opens[0]?.resets[0]?.code, StreamErrorCode.TIMEOUT, 'the agent is told the open timed out');
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_streams_total', { result: 'TIMEOUT' }), 1, 'counted once');
  });

  test('the agent refusing an OPEN reaches the client with its code', async () => {
    const gw = await startGateway();
    const db = await agent(gw.url, 'db');
    db.autoAccept = false;
    db.mux.handlers.onOpen = (stream) => stream.reset(StreamErrorCode.DIAL_FAILED, 'ECONNREFUSED');
    const alice = await client(gw.url, 'alice');
    const opened = await alice.open({ agent: 'db', port: 5432 });
    assert.equal(opened.reset?.code, StreamErrorCode.DIAL_FAILED);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_streams_total', { result: 'DIAL_FAILED' }), 1);
  });

  test('NO_AGENT when the agent is not attached, not visible, or unknown', async () => {
    const gw = await startGateway();
    await agent(gw.url, 'secret');
    const alice = await client(gw.url, 'alice');
    for (const name of ['web', 'secret', 'nosuch']) {
      const opened = await alice.open({ agent: name, port: name === 'secret' ? 22 : 8080 });
      assert.equal(opened.reset?.code, StreamErrorCode.NO_AGENT, name);
    }
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_streams_total', { result: 'NO_AGENT' }), 3);
  });

  test('DENIED for a port outside the policy or not exposed; DIRECT_UNAVAILABLE for mode direct', async () => {
    const gw = await startGateway();
    const db = await agent(gw.url, 'db');
    const alice = await client(gw.url, 'alice');
    assert.equal((await alice.open({ agent: 'db', port: 9000 })).reset?.code, StreamErrorCode.DENIED);
    assert.equal((await alice.open({ agent: 'db', port: 'admin' })).reset?.code, StreamErrorCode.DENIED);
    assert.equal((await alice.open({ agent: 'db', port: 1234 })).reset?.code, StreamErrorCode.DENIED);
    assert.equal((await alice.open({ agent: 'db', port: 5432, mode: 'direct' })).reset?.code, StreamErrorCode.DIRECT_UNAVAILABLE);
    assert.equal(db.opens.length, 0, 'the agent never saw a refused OPEN');
  });

  test('a stream goes to the least-loaded of two agent instances', async () => {
    const gw = await startGateway();
    const a = await agent(gw.url, 'db', 'instance-a');
    const b = await agent(gw.url, 'db', 'instance-b');
    const alice = await client(gw.url, 'alice');
    assert.equal((await alice.listAgents(1))[0]?.instances, 2);
    const first = await alice.open({ agent: 'db', port: 5432 });
    const second = await alice.open({ agent: 'db', port: 5432 });
    assert.ok(first.ok && second.ok);
    assert.deepEqual([a.opens.length, b.opens.length], [1, 1], 'one stream each');
    // Close the stream on instance a: the next one goes there again.
    const onA = a.opens[0];
    assert.ok(onA);
    onA.stream.reset(StreamErrorCode.CANCELLED, 'done');
    await until(() => gw.gateway.openStreams === 1, 'stream on a closed');
    assert.ok((await alice.open({ agent: 'db', port: 5432 })).ok);
    assert.deepEqual([a.opens.length, b.opens.length], [2, 1]);
  });

  test('a reload that revokes access resets open streams with DENIED and counts it', async () => {
    const gw = await startGateway();
    const db = await agent(gw.url, 'db');
    const alice = await client(gw.url, 'alice');
    const revoked = await alice.open({ agent: 'db', port: 5432 });
    assert.ok(revoked.ok);
    gw.gateway.applyConfig(makeConfig({ alicePorts: [8080] }));
    await until(() => revoked.reset !== undefined, 'reset after reload');
    assert.equal(revoked.reset?.code, StreamErrorCode.DENIED);
    await until(() => (db.opens[0]?.resets.length ?? 0) > 0, 'agent leg reset');
    assert.equal(db.opens[0]?.resets[0]?.code, StreamErrorCode.PEER_GONE);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_policy_resets_total'), 1);
    // New opens follow the new policy.
    assert.equal((await alice.open({ agent: 'db', port: 5432 })).reset?.code, StreamErrorCode.NO_AGENT);
  });

  test('a reload that keeps access leaves open streams alone', async () => {
    const gw = await startGateway();
    await agent(gw.url, 'db');
    const alice = await client(gw.url, 'alice');
    const opened = await alice.open({ agent: 'db', port: 5432 });
    gw.gateway.applyConfig(makeConfig({ alicePorts: [5432, 9000] }));
    opened.stream.write(Buffer.from('still here'));
    await until(() => Buffer.concat(opened.data).toString() === 'still here', 'echo after reload');
    assert.equal(opened.reset, undefined);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_policy_resets_total'), 0);
  });

  test('an agent removed from the configuration is disconnected', async () => {
    const gw = await startGateway();
    const db = await agent(gw.url, 'db');
    const web = await agent(gw.url, 'web');
    gw.gateway.applyConfig(makeConfig({ withoutDb: true }));
    const closed = await db.waitClosed('agent removal');
    assert.equal(closed.code, 4403);
    await until(() => gw.gateway.sessionCount === 1, 'only web left');
    assert.equal(web.closeInfo, undefined, 'other agents stay attached');
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_sessions', { kind: 'agent' }), 1);
  });

  test('shutdown tells peers to go away and resets open streams with GATEWAY_SHUTTING_DOWN', async () => {
    const gw = await startGateway();
    await agent(gw.url, 'db');
    const alice = await client(gw.url, 'alice');
    const opened = await alice.open({ agent: 'db', port: 5432 });
    assert.ok(opened.ok);
    await gw.gateway.shutdown(50);
    await until(() => opened.reset !== undefined, 'reset on shutdown');
    assert.equal(opened.reset?.code, StreamErrorCode.GATEWAY_SHUTTING_DOWN);
    assert.ok(alice.controls.some((c) => c.type === 'goaway'));
    assert.equal((await alice.waitClosed()).code, 1001);
    await gw.stop();
  });
});
