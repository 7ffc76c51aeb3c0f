/**
 * NAT probing across components on loopback: the real gateway (session handling + UDP probe server) and the real
 * GatewayLink with its prober. Loopback has no NAT, so every peer classifies as `no-nat` with 127.0.0.1.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { buildApp, createMetrics, Gateway, type GatewayMetrics, NatProbeServer } from '@narrowlink/gateway';
import { GatewayLink, type LinkNatStatus } from '@narrowlink/peer-link';
import { type ControlMessage, generateSigningKeyPair, Mux, signToken, validateGatewayConfig } from '@narrowlink/protocol';
import { pino } from 'pino';
import WebSocket from 'ws';

const keys = await generateSigningKeyPair();
const log = pino({ level: 'silent' });

async function udpSocket(): Promise<dgram.Socket> {
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind({ address: '127.0.0.1', port: 0 }, () => resolve()));
  return socket;
}

async function metricValue(metrics: GatewayMetrics, name: string, labels: Record<string, string>): Promise<number> {
  const metric = metrics.registry.getSingleMetric(name);
  assert.ok(metric, name);
  const { values } = await metric.get();
  return values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val))?.value ?? 0;
}

async function until(predicate: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('NAT probing: gateway probe server + GatewayLink on loopback', () => {
  let gateway: Gateway;
  let metrics: GatewayMetrics;
  let probe: NatProbeServer;
  let url: string;
  let app: ReturnType<typeof buildApp>;
  const closers: Array<() => Promise<void> | void> = [];
  /** What the gateway's onAgentsChanged option calls; a test swaps it to count notifications. */
  let onAgentsChanged: () => void = () => {};

  before(async () => {
    metrics = createMetrics({ defaultMetrics: false });
    probe = await NatProbeServer.start({ address: '127.0.0.1', port: 0, onResult: (result) => metrics.natProbes.inc({ result }) });
    gateway = new Gateway({ log, metrics, natProbe: probe, onAgentsChanged: () => onAgentsChanged() });
    gateway.applyConfig(
      validateGatewayConfig({
        apiVersion: 'narrowlink.io/v1alpha1',
        kind: 'GatewayConfig',
        signingPublicKeys: [keys.publicKeyPem],
        agents: [{ name: 'web', expose: [{ name: 'http', port: 8080 }] }],
        policies: [{ name: 'all', subjects: [{ kind: 'User', name: 'alice' }], rules: [{ action: 'Allow' }] }],
      }),
    );
    app = buildApp({ gateway, log });
    await app.listen({ host: '127.0.0.1', port: 0 });
    url = `ws://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  });
  after(async () => {
    for (const close of closers.reverse()) await close();
    await gateway.shutdown(0);
    await app.close();
    await probe.close();
  });

  function link(role: 'client' | 'agent', socket: dgram.Socket | undefined): GatewayLink {
    const token =
      role === 'client'
        ? signToken(keys.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 600 })
        : signToken(keys.privateKeyPem, { typ: 'agent', sub: 'default/web', ttlSeconds: 600 });
    const l = new GatewayLink({
      url,
      role,
      token: () => token,
      reconnect: false,
      ...(socket ? { udpSocket: socket } : {}),
      ...(role === 'agent' ? { agent: { instanceId: 'web-1', expose: [{ name: 'http', port: 8080 }] } } : {}),
    });
    closers.push(() => l.close());
    return l;
  }

  test('a client probing from its UDP socket is classified no-nat with 127.0.0.1 and its port', async () => {
    const socket = await udpSocket();
    closers.push(() => void socket.close());
    const client = link('client', socket).start();
    const startedAt = performance.now();
    await client.waitOpen(5000);
    await client.ping();
    assert.equal(client.natProbing, true);
    const nat = (await client.waitNat(5000)) as LinkNatStatus;
    const tookMs = performance.now() - startedAt;
    assert.ok(nat, 'classified');
    const port = socket.address().port;
    assert.equal(nat.natType, 'no-nat');
    assert.deepEqual(nat.publicEndpoint, { address: '127.0.0.1', port });
    assert.deepEqual(nat.localEndpoints, [{ address: '127.0.0.1', port }]);
    assert.equal(nat.destinations, 2);
    // Loopback answers from the other port: no filtering by port.
    assert.equal(nat.filtering, 'address-dependent');
    assert.deepEqual(client.stats.nat, nat);
    assert.ok(tookMs < 2000, `session to classification took ${Math.round(tookMs)} ms`);

    const session = client.stats.helloOk?.sessionId as string;
    assert.equal(gateway.natOf(session)?.classification.type, 'no-nat');
    assert.equal(await metricValue(metrics, 'narrowlink_gateway_nat_classifications_total', { type: 'no-nat' }), 1);
    assert.ok((await metricValue(metrics, 'narrowlink_gateway_nat_probes_total', { result: 'answered' })) >= 3);

    // The session's probe state goes with it.
    await client.close();
    await until(() => probe.sessionCount === 0, 'the probe session to be dropped');
    assert.equal(gateway.natOf(session), undefined);
  });

  test("an agent's NAT type reaches attachedAgents (the status ConfigMap entry) and triggers a status report", async () => {
    const socket = await udpSocket();
    closers.push(() => void socket.close());
    let changes = 0;
    onAgentsChanged = () => changes++;
    const agent = link('agent', socket).start();
    await agent.waitOpen(5000);
    await agent.ping();
    const nat = await agent.waitNat(5000);
    assert.equal(nat?.natType, 'no-nat');
    await until(() => gateway.attachedAgents()['default/web']?.nat !== undefined, 'nat in attachedAgents');
    assert.deepEqual(gateway.attachedAgents(), { 'default/web': { instances: 1, nat: 'no-nat' } });
    assert.ok(changes >= 2, 'attach and classification both notify the status reporter');
    await agent.close();
    await until(() => gateway.attachedAgents()['default/web'] === undefined, 'the agent to leave');
    onAgentsChanged = () => {};
  });

  test('reprobeNat: a fresh probe round (new key, the new socket port) replaces the classification; bounded per session', async () => {
    const socket = await udpSocket();
    closers.push(() => void socket.close());
    const client = link('client', socket).start();
    await client.waitOpen(5000);
    await client.ping();
    const first = (await client.waitNat(5000)) as LinkNatStatus;
    const session = client.stats.helloOk?.sessionId as string;
    assert.equal(first.natType, 'no-nat');
    assert.equal(client.reprobeNat(), true);
    assert.equal(client.stats.nat, undefined, 'the old classification is dropped locally at once');
    await client.ping();
    const second = (await client.waitNat(5000)) as LinkNatStatus;
    assert.equal(second.natType, 'no-nat', 'the fresh observations alone decide (old ones would read as unstable)');
    assert.deepEqual(second.publicEndpoint, first.publicEndpoint);
    assert.equal(gateway.natOf(session)?.classification.type, 'no-nat');
    // A peer that keeps asking stops being answered (no new probe info) once its budget is spent.
    for (let i = 0; i < 12; i++) {
      client.reprobeNat();
      await client.ping();
      await client.waitNat(2000);
    }
    assert.equal(client.reprobeNat(), true);
    await client.ping();
    assert.equal(client.natProbing, false, 'the gateway sent no new probe info (it precedes the pong)');
    assert.equal(await client.waitNat(300), undefined, 'no more probe rounds for this session');
    assert.equal(client.state, 'open', 'the session itself is unharmed');
    await client.close();
  });

  test('without a UDP socket the link does not probe; the session works as before', async () => {
    const client = link('client', undefined).start();
    await client.waitOpen(5000);
    await client.ping();
    assert.equal(client.natProbing, false);
    assert.equal(await client.waitNat(100), undefined);
    assert.equal((await client.listAgents()).length, 1);
  });

  test('a protocol 1.0 peer gets no nat_probe_info (it would not understand it)', async () => {
    const token = await signToken(keys.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 600 });
    const ws = new WebSocket(`${url}/v1/client`, { headers: { authorization: `Bearer ${token}` } });
    closers.push(() => ws.terminate());
    const controls: ControlMessage[] = [];
    const mux = new Mux({ role: 'initiator', send: (bytes) => ws.send(bytes, { binary: true }), handlers: { onControl: (m) => controls.push(m) } });
    ws.on('message', (data) => mux.receive(data as Buffer));
    await new Promise((resolve) => ws.once('open', resolve));
    mux.sendControl({ type: 'hello', version: '1.0', role: 'client', streamWindow: 1024 * 1024 });
    await until(() => controls.some((c) => c.type === 'hello_ok'), 'hello_ok');
    mux.sendControl({ type: 'list_agents', requestId: 1 });
    await until(() => controls.some((c) => c.type === 'agents'), 'agents');
    assert.deepEqual(
      controls.map((c) => c.type),
      ['hello_ok', 'agents'],
    );
    // A report nobody asked for is ignored: nothing is classified or counted.
    mux.sendControl({ type: 'nat_report', localEndpoints: [] });
    mux.sendControl({ type: 'list_agents', requestId: 2 });
    await until(() => controls.filter((c) => c.type === 'agents').length === 2, 'second agents');
    assert.ok(!controls.some((c) => c.type === 'nat_status'));
    assert.equal(await metricValue(metrics, 'narrowlink_gateway_nat_classifications_total', { type: 'unknown' }), 0);
  });
});
