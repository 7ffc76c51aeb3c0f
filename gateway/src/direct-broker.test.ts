/**
 * The direct-path broker driven through a real Gateway over WebSockets: peers say hello, "probe" (a fake probe
 * server hands the gateway the observations a NAT would produce), report, then ask for a path.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, describe, test } from 'node:test';
import {
  type ControlMessage,
  DEFAULT_STREAM_WINDOW,
  type DirectClose,
  type DirectPolicy,
  type DirectRefused,
  directPolicySchema,
  type Endpoint,
  type GatewayConfig,
  generateSigningKeyPair,
  Mux,
  type NatProbeInfo,
  type NatReport,
  PROTOCOL_VERSION,
  type ProbeObservation,
  type PunchPlanMessage,
  punchPlanSchema,
  signToken,
  validateGatewayConfig,
} from '@narrowlink/protocol';
import { pino } from 'pino';
import WebSocket from 'ws';
import { buildApp } from './app.ts';
import { DIRECT_RESOLVE_GRACE_MS, MAX_DIRECT_ATTEMPTS_PER_CLIENT } from './direct-broker.ts';
import { Gateway, type GatewayOptions } from './gateway.ts';
import { createMetrics, type GatewayMetrics } from './metrics.ts';
import type { NatProbeServer } from './nat-probe.ts';

const keys = await generateSigningKeyPair();
const log = pino({ level: 'silent' });
const T0 = Date.parse('2030-01-01T00:00:00Z');
const FP_CLIENT = 'c'.repeat(64);
const FP_AGENT = 'a'.repeat(64);

/** Stands in for the UDP probe ports: the test decides what each session's probes "looked like". */
class FakeProbe {
  readonly seen = new Map<string, ProbeObservation[]>();
  readonly #registered = new Set<string>();
  register(sessionId: string): NatProbeInfo {
    this.#registered.add(sessionId);
    return {
      type: 'nat_probe_info',
      key: Buffer.alloc(32, 7).toString('base64'),
      endpoints: [
        { index: 0, address: '192.0.2.1', port: 3478 },
        { index: 1, address: '192.0.2.1', port: 3479 },
      ],
    };
  }
  has(sessionId: string): boolean {
    return this.#registered.has(sessionId);
  }
  observations(sessionId: string): ProbeObservation[] {
    return [...(this.seen.get(sessionId) ?? [])];
  }
  unregister(sessionId: string): void {
    this.#registered.delete(sessionId);
    this.seen.delete(sessionId);
  }
}

/** What a peer's probes show and what it reports. */
interface NatSetup {
  observations: ProbeObservation[];
  localEndpoints: Endpoint[];
  filtering?: NatReport['filtering'];
}

/** Endpoint-independent mapping ("cone") to `address:port`. */
function stableNat(address: string, port: number, local: Endpoint): NatSetup {
  return {
    observations: [
      { target: 0, mapped: { address, port }, seq: 1 },
      { target: 1, mapped: { address, port }, seq: 2 },
    ],
    localEndpoints: [local],
    filtering: { changePort: { sent: 2, received: 2 } },
  };
}

/** A new, unpredictable port per destination (one large delta is taken for chance). */
function randomNat(address: string, local: Endpoint): NatSetup {
  return {
    observations: [
      { target: 0, mapped: { address, port: 40_001 }, seq: 1 },
      { target: 1, mapped: { address, port: 51_234 }, seq: 2 },
    ],
    localEndpoints: [local],
  };
}

/** No probe answered: UDP blocked. */
const blockedNat = (local: Endpoint): NatSetup => ({ observations: [], localEndpoints: [local] });

const CLIENT_NAT = stableNat('203.0.113.10', 61_000, { address: '192.168.1.10', port: 50_000 });
const AGENT_NAT = stableNat('198.51.100.20', 4433, { address: '10.0.0.5', port: 4433 });

interface ConfigOptions {
  /** Ports alice's policy allows on db (and web). */
  alicePorts?: number[];
  /** A second policy for alice, allowing db:9000 until this instant. */
  adminUntil?: string;
  withoutDb?: boolean;
  /** db in mode relay. */
  dbRelayOnly?: boolean;
}

function makeConfig(options: ConfigOptions = {}): GatewayConfig {
  return validateGatewayConfig({
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'GatewayConfig',
    signingPublicKeys: [keys.publicKeyPem],
    agents: [
      {
        name: 'db',
        mode: options.dbRelayOnly ? 'relay' : 'auto',
        expose: [
          { name: 'pg', port: 5432 },
          { name: 'admin', port: 9000 },
        ],
      },
      { name: 'web', mode: 'relay', expose: [{ name: 'http', port: 8080 }] },
      { name: 'secret', expose: [{ name: 'ssh', port: 22 }] },
    ].filter((a) => !(options.withoutDb && a.name === 'db')),
    policies: [
      {
        name: 'alice-dev',
        subjects: [{ kind: 'User', name: 'alice' }],
        rules: [{ action: 'Allow', agents: { names: ['db', 'web'] }, ports: options.alicePorts ?? [5432, 8080] }],
      },
      ...(options.adminUntil
        ? [
            {
              name: 'alice-admin',
              expiresAt: options.adminUntil,
              subjects: [{ kind: 'User', name: 'alice' }],
              rules: [{ action: 'Allow', agents: { names: ['db'] }, ports: [9000] }],
            },
          ]
        : []),
      // bob may reach db, but over the relay only.
      { name: 'bob-relay', subjects: [{ kind: 'User', name: 'bob' }], rules: [{ action: 'Allow', agents: { names: ['db'] }, paths: ['Relay'] }] },
    ],
  });
}

const stops: Array<() => Promise<void>> = [];
after(async () => {
  for (const stop of stops.reverse()) await stop();
});

interface Started {
  gateway: Gateway;
  metrics: GatewayMetrics;
  probe: FakeProbe;
  url: string;
  clock: { now: number };
}

async function startGateway(
  options: { probing?: boolean; config?: GatewayConfig; logLines?: string[] } & Partial<Omit<GatewayOptions, 'log' | 'metrics'>> = {},
): Promise<Started> {
  const metrics = createMetrics({ defaultMetrics: false });
  const probe = new FakeProbe();
  const clock = { now: T0 };
  const lines = options.logLines;
  const gateway = new Gateway({
    log: lines ? pino({ level: 'debug' }, { write: (line: string) => lines.push(line) }) : log,
    metrics,
    now: () => clock.now,
    ...(options.probing === false ? {} : { natProbe: probe as unknown as NatProbeServer }),
  });
  gateway.applyConfig(options.config ?? makeConfig());
  const app = buildApp({ gateway, log });
  await app.listen({ host: '127.0.0.1', port: 0 });
  stops.push(async () => {
    await gateway.shutdown(0);
    await app.close();
  });
  return { gateway, metrics, probe, url: `ws://127.0.0.1:${(app.server.address() as AddressInfo).port}`, clock };
}

async function metricValue(metrics: GatewayMetrics, name: string, labels: Record<string, string> = {}, sample = name): Promise<number> {
  const metric = metrics.registry.getSingleMetric(name);
  assert.ok(metric, `metric ${name} exists`);
  const { values } = await metric.get();
  // Summed: series carry more labels than a test names (direct_paths_total also has the NAT types).
  const matches = values.filter((v) => ((v as { metricName?: string }).metricName ?? name) === sample && Object.entries(labels).every(([k, val]) => v.labels[k] === val));
  return matches.reduce((sum, v) => sum + v.value, 0);
}

async function until(predicate: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Waits a little to show that nothing (more) arrives. */
const settle = () => new Promise((r) => setTimeout(r, 80));

/** One peer over a real WebSocket with a Mux (which validates every control message it receives). */
class Peer {
  readonly ws: WebSocket;
  readonly mux: Mux;
  readonly controls: ControlMessage[] = [];
  closeInfo: { code: number; reason: string } | undefined;
  sessionId = '';
  pongs = 0;

  constructor(ws: WebSocket) {
    this.ws = ws;
    this.mux = new Mux({
      role: 'initiator',
      send: (bytes) => ws.send(bytes, { binary: true }),
      handlers: {
        onControl: (message) => this.controls.push(message),
        onPong: () => {
          this.pongs++;
        },
        onSessionError: (error) => this.controls.push({ type: 'error', code: `LOCAL:${error.code}`, message: error.message }),
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

  static async connect(url: string, role: 'agent' | 'client', sub: string, hello: { version?: string; instanceId?: string } = {}): Promise<Peer> {
    const bearer = await signToken(keys.privateKeyPem, { typ: role, sub, ttlSeconds: 3600, groups: [], nowMs: T0 });
    const ws = new WebSocket(`${url}/v1/${role}`, { headers: { authorization: `Bearer ${bearer}` }, perMessageDeflate: false });
    const peer = new Peer(ws);
    stops.push(async () => {
      ws.terminate();
    });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    peer.mux.sendControl({
      type: 'hello',
      version: hello.version ?? PROTOCOL_VERSION,
      role,
      streamWindow: DEFAULT_STREAM_WINDOW,
      ...(role === 'agent' ? { agent: { instanceId: hello.instanceId ?? 'i-1', expose: [{ name: 'pg', port: 5432 }] } } : {}),
    });
    await until(() => peer.controls.some((c) => c.type === 'hello_ok' || c.type === 'error') || peer.closeInfo !== undefined, 'hello_ok');
    const ok = peer.controls.find((c) => c.type === 'hello_ok');
    if (!ok) throw new Error(`no hello_ok: ${JSON.stringify(peer.controls)}`);
    peer.sessionId = ok.sessionId;
    return peer;
  }

  of<T extends ControlMessage['type']>(type: T): Extract<ControlMessage, { type: T }>[] {
    return this.controls.filter((c): c is Extract<ControlMessage, { type: T }> => c.type === type);
  }

  /** "Probes" (the fake probe server takes the observations), reports, and waits for nat_status. */
  async classify(probe: FakeProbe, nat: NatSetup, certFingerprint: string | undefined): Promise<void> {
    const before = this.of('nat_status').length;
    probe.seen.set(this.sessionId, nat.observations);
    this.mux.sendControl({
      type: 'nat_report',
      localEndpoints: nat.localEndpoints,
      ...(nat.filtering ? { filtering: nat.filtering } : {}),
      ...(certFingerprint ? { certFingerprint } : {}),
    });
    await until(() => this.of('nat_status').length > before, 'nat_status');
  }

  /** Sends direct_request and waits for the answer carrying its requestId. */
  async direct(requestId: number, agent: string): Promise<DirectRefused | PunchPlanMessage> {
    this.mux.sendControl({ type: 'direct_request', requestId, agent });
    const answer = () => this.controls.find((c) => (c.type === 'direct_refused' || c.type === 'punch_plan') && c.requestId === requestId);
    await until(() => answer() !== undefined || this.closeInfo !== undefined, `answer to direct_request ${requestId}`);
    const reply = answer();
    assert.ok(reply && (reply.type === 'direct_refused' || reply.type === 'punch_plan'), `answer to ${requestId}: ${JSON.stringify(this.controls.at(-1))}`);
    return reply;
  }

  async refused(requestId: number, agent: string): Promise<DirectRefused> {
    const reply = await this.direct(requestId, agent);
    assert.equal(reply.type, 'direct_refused', `request ${requestId} for ${agent}: ${JSON.stringify(reply)}`);
    return reply as DirectRefused;
  }

  async planned(requestId: number, agent: string): Promise<PunchPlanMessage> {
    const reply = await this.direct(requestId, agent);
    assert.equal(reply.type, 'punch_plan', `request ${requestId} for ${agent}: ${JSON.stringify(reply)}`);
    return reply as PunchPlanMessage;
  }

  async closeFor(pathId: string): Promise<DirectClose> {
    await until(() => this.of('direct_close').some((c) => c.pathId === pathId), `direct_close for ${pathId}`);
    return this.of('direct_close').find((c) => c.pathId === pathId) as DirectClose;
  }

  /** The session still answers (a PING round trip: works for agents and clients) and was never closed. */
  async alive(): Promise<void> {
    const before = this.pongs;
    this.mux.ping();
    await until(() => this.pongs > before || this.closeInfo !== undefined, 'pong');
    assert.equal(this.closeInfo, undefined, 'the session stays up');
    assert.equal(
      this.controls.find((c) => c.type === 'error'),
      undefined,
      'no session error',
    );
  }
}

/** A gateway with alice and one probed db instance, both able to plan. */
async function probedPair(options: Parameters<typeof startGateway>[0] = {}) {
  const gw = await startGateway(options);
  const db = await Peer.connect(gw.url, 'agent', 'default/db');
  await db.classify(gw.probe, AGENT_NAT, FP_AGENT);
  const alice = await Peer.connect(gw.url, 'client', 'alice');
  await alice.classify(gw.probe, CLIENT_NAT, FP_CLIENT);
  return { gw, db, alice };
}

describe('direct_request refusals', () => {
  test('ProbingDisabled when the gateway runs no probe ports; the session stays', async () => {
    const gw = await startGateway({ probing: false });
    await Peer.connect(gw.url, 'agent', 'default/db');
    const alice = await Peer.connect(gw.url, 'client', 'alice');
    const refused = await alice.refused(1, 'db');
    assert.equal(refused.reason, 'ProbingDisabled');
    assert.ok(refused.message.length > 0);
    await alice.alive();
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_requests_total', { result: 'ProbingDisabled' }), 1);
  });

  test('NoAgent for an unknown agent, one the client may not see, and one without an instance', async () => {
    const gw = await startGateway();
    await Peer.connect(gw.url, 'agent', 'default/secret');
    const alice = await Peer.connect(gw.url, 'client', 'alice');
    await alice.classify(gw.probe, CLIENT_NAT, FP_CLIENT);
    assert.equal((await alice.refused(1, 'nosuch')).reason, 'NoAgent');
    assert.equal((await alice.refused(2, 'secret')).reason, 'NoAgent', 'an invisible agent is reported absent');
    assert.equal((await alice.refused(3, 'default/db')).reason, 'NoAgent', 'no instance attached');
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_requests_total', { result: 'NoAgent' }), 3);
    await alice.alive();
  });

  test('AgentRelayOnly for an agent in mode relay', async () => {
    const gw = await startGateway();
    const web = await Peer.connect(gw.url, 'agent', 'default/web');
    await web.classify(gw.probe, AGENT_NAT, FP_AGENT);
    const alice = await Peer.connect(gw.url, 'client', 'alice');
    await alice.classify(gw.probe, CLIENT_NAT, FP_CLIENT);
    assert.equal((await alice.refused(1, 'web')).reason, 'AgentRelayOnly');
    assert.deepEqual(web.of('punch_plan'), []);
    await alice.alive();
  });

  test('Denied when the policy allows the agent over the relay only, before any instance check', async () => {
    const gw = await startGateway();
    const bob = await Peer.connect(gw.url, 'client', 'bob');
    await bob.classify(gw.probe, CLIENT_NAT, FP_CLIENT);
    // db is visible to bob (relay), so the refusal is about the path, not the name.
    bob.mux.sendControl({ type: 'list_agents', requestId: 9 });
    await until(() => bob.of('agents').length === 1, 'agents');
    assert.deepEqual(
      bob.of('agents')[0]?.agents.map((a) => a.name),
      ['db'],
    );
    assert.equal((await bob.refused(1, 'db')).reason, 'Denied', 'no instance attached, yet policy answers first');
    const db = await Peer.connect(gw.url, 'agent', 'default/db');
    await db.classify(gw.probe, AGENT_NAT, FP_AGENT);
    assert.equal((await bob.refused(2, 'db')).reason, 'Denied');
    assert.deepEqual(db.of('direct_policy'), [], 'the agent heard nothing');
    assert.deepEqual(db.of('punch_plan'), []);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_requests_total', { result: 'Denied' }), 2);
    await bob.alive();
  });

  test('AgentTooOld when every instance speaks protocol 1.1; a 1.2 instance gets the plan', async () => {
    const gw = await startGateway();
    const old = await Peer.connect(gw.url, 'agent', 'default/db', { version: '1.1', instanceId: 'old' });
    await old.classify(gw.probe, AGENT_NAT, FP_AGENT);
    const alice = await Peer.connect(gw.url, 'client', 'alice');
    await alice.classify(gw.probe, CLIENT_NAT, FP_CLIENT);
    assert.equal((await alice.refused(1, 'db')).reason, 'AgentTooOld');

    const current = await Peer.connect(gw.url, 'agent', 'default/db', { instanceId: 'new' });
    await current.classify(gw.probe, AGENT_NAT, FP_AGENT);
    const plan = await alice.planned(2, 'db');
    assert.equal(current.of('punch_plan')[0]?.pathId, plan.pathId);
    assert.deepEqual(old.of('punch_plan'), [], 'the old instance never sees a direct message');
    assert.deepEqual(old.of('direct_policy'), []);
  });

  test('NotProbed while either side is unclassified or reported no certificate fingerprint', async () => {
    const gw = await startGateway();
    const db = await Peer.connect(gw.url, 'agent', 'default/db');
    const alice = await Peer.connect(gw.url, 'client', 'alice');
    assert.equal((await alice.refused(1, 'db')).reason, 'NotProbed', 'nobody probed');
    await alice.classify(gw.probe, CLIENT_NAT, undefined);
    assert.equal((await alice.refused(2, 'db')).reason, 'NotProbed', 'client without fingerprint');
    await alice.classify(gw.probe, CLIENT_NAT, FP_CLIENT);
    assert.equal(gw.gateway.natOf(alice.sessionId)?.certFingerprint, FP_CLIENT);
    assert.equal((await alice.refused(3, 'db')).reason, 'NotProbed', 'agent not probed');
    await db.classify(gw.probe, AGENT_NAT, undefined);
    assert.equal((await alice.refused(4, 'db')).reason, 'NotProbed', 'agent without fingerprint');
    await db.classify(gw.probe, AGENT_NAT, FP_AGENT);
    assert.equal((await alice.planned(5, 'db')).peerFingerprint, FP_AGENT);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_requests_total', { result: 'NotProbed' }), 4);
  });

  test('planner reasons pass through: BothSymmetric, UdpBlocked', async () => {
    const gw = await startGateway();
    const db = await Peer.connect(gw.url, 'agent', 'default/db');
    await db.classify(gw.probe, randomNat('198.51.100.20', { address: '10.0.0.5', port: 4433 }), FP_AGENT);
    const alice = await Peer.connect(gw.url, 'client', 'alice');
    await alice.classify(gw.probe, randomNat('203.0.113.10', { address: '192.168.1.10', port: 50_000 }), FP_CLIENT);
    assert.equal(gw.gateway.natOf(alice.sessionId)?.classification.type, 'endpoint-dependent-random');
    const symmetric = await alice.refused(1, 'db');
    assert.equal(symmetric.reason, 'BothSymmetric');
    assert.match(symmetric.message, /map per destination/);

    await alice.classify(gw.probe, blockedNat({ address: '192.168.1.10', port: 50_000 }), FP_CLIENT);
    assert.equal((await alice.refused(2, 'db')).reason, 'UdpBlocked');
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_requests_total', { result: 'BothSymmetric' }), 1);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_requests_total', { result: 'UdpBlocked' }), 1);
    assert.equal(gw.gateway.directBroker.size, 0);
    await alice.alive();
  });

  test(`TooManyAttempts past ${MAX_DIRECT_ATTEMPTS_PER_CLIENT} unresolved attempts; a resolved one frees a slot`, async () => {
    const { gw, alice } = await probedPair();
    const plans: PunchPlanMessage[] = [];
    for (let i = 1; i <= MAX_DIRECT_ATTEMPTS_PER_CLIENT; i++) plans.push(await alice.planned(i, 'db'));
    assert.equal(new Set(plans.map((p) => p.pathId)).size, MAX_DIRECT_ATTEMPTS_PER_CLIENT, 'distinct path ids');
    assert.equal((await alice.refused(100, 'db')).reason, 'TooManyAttempts');
    alice.mux.sendControl({ type: 'direct_state', pathId: plans[0]?.pathId as string, state: 'failed', reason: 'Timeout' });
    assert.equal((await alice.planned(101, 'db')).type, 'punch_plan');
    // An attempt that went up no longer counts as unresolved.
    alice.mux.sendControl({ type: 'direct_state', pathId: plans[1]?.pathId as string, state: 'up', via: 'public', elapsedMs: 300 });
    assert.equal((await alice.planned(102, 'db')).type, 'punch_plan');
    assert.equal((await alice.refused(103, 'db')).reason, 'TooManyAttempts');
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_requests_total', { result: 'TooManyAttempts' }), 2);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_requests_total', { result: 'planned' }), MAX_DIRECT_ATTEMPTS_PER_CLIENT + 2);
    await alice.alive();
  });

  test('direct_request from an agent is a protocol violation', async () => {
    const gw = await startGateway();
    const db = await Peer.connect(gw.url, 'agent', 'default/db');
    db.mux.sendControl({ type: 'direct_request', requestId: 1, agent: 'db' });
    await until(() => db.closeInfo !== undefined, 'close');
    assert.equal(db.closeInfo?.code, 4400);
  });
});

describe('direct path planned', () => {
  test('the agent gets direct_policy, then its punch_plan; the client gets the matching half', async () => {
    const logLines: string[] = [];
    const { gw, db, alice } = await probedPair({ logLines });
    const clientPlan = punchPlanSchema.parse(await alice.planned(42, 'db'));
    await until(() => db.of('punch_plan').length === 1, 'agent plan');
    const policyIndex = db.controls.findIndex((c) => c.type === 'direct_policy');
    const planIndex = db.controls.findIndex((c) => c.type === 'punch_plan');
    assert.ok(policyIndex >= 0 && policyIndex < planIndex, 'direct_policy comes first');
    const policy = directPolicySchema.parse(db.controls[policyIndex]);
    const agentPlan = punchPlanSchema.parse(db.controls[planIndex]);

    assert.equal(policy.pathId, clientPlan.pathId);
    assert.match(policy.pathId, /^[A-Za-z0-9_-]{22}$/, '16 random bytes, base64url');
    assert.deepEqual(policy.allow, [{ name: 'pg', host: '127.0.0.1', port: 5432 }], 'alice may not reach admin:9000');
    assert.equal(policy.expiresAt, undefined);

    assert.equal(agentPlan.pathId, clientPlan.pathId);
    assert.equal(clientPlan.requestId, 42);
    assert.equal(agentPlan.requestId, undefined);
    assert.equal(clientPlan.peer, 'default/db');
    assert.equal(agentPlan.peer, 'alice');
    assert.deepEqual([clientPlan.role, clientPlan.quicRole, agentPlan.role, agentPlan.quicRole], ['client', 'client', 'agent', 'server']);
    assert.equal(clientPlan.strategy, 'public');
    assert.equal(agentPlan.strategy, 'public');
    assert.equal(clientPlan.attemptId, agentPlan.attemptId);
    assert.equal(clientPlan.punchKey, agentPlan.punchKey);
    assert.equal(Buffer.from(clientPlan.attemptId, 'base64').length, 8);
    assert.equal(Buffer.from(clientPlan.punchKey, 'base64').length, 32);
    assert.equal(clientPlan.peerFingerprint, FP_AGENT, 'each side pins the other');
    assert.equal(agentPlan.peerFingerprint, FP_CLIENT);
    assert.deepEqual(clientPlan.candidates, [{ address: '198.51.100.20', port: 4433, kind: 'public' }]);
    assert.deepEqual(agentPlan.candidates, [{ address: '203.0.113.10', port: 61_000, kind: 'public' }]);
    assert.equal(clientPlan.leadMs, agentPlan.leadMs);

    assert.deepEqual(gw.gateway.directBroker.paths(), [
      { pathId: clientPlan.pathId, clientSession: alice.sessionId, agentSession: db.sessionId, agent: 'default/db', state: 'punching', createdAt: T0 },
    ]);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_requests_total', { result: 'planned' }), 1);
    const planned = logLines.filter((l) => l.includes(clientPlan.pathId));
    assert.ok(planned.length >= 2, 'both sessions log the plan');
    assert.ok(!logLines.some((l) => l.includes(clientPlan.punchKey)), 'the punch key is never logged');
  });

  test('a time-limited rule puts its expiry in direct_policy', async () => {
    const until2030 = new Date(T0 + 3_600_000).toISOString();
    const { db, alice } = await probedPair({ config: makeConfig({ adminUntil: until2030 }) });
    await alice.planned(1, 'db');
    await until(() => db.of('direct_policy').length === 1, 'direct_policy');
    assert.deepEqual(db.of('direct_policy')[0], {
      type: 'direct_policy',
      pathId: db.of('direct_policy')[0]?.pathId,
      allow: [
        { name: 'pg', host: '127.0.0.1', port: 5432 },
        { name: 'admin', host: '127.0.0.1', port: 9000 },
      ],
      expiresAt: T0 + 3_600_000,
    });
  });
});

describe('direct_state and direct_close', () => {
  test('up is counted (paths, gauge, time to ready, agent status); failed from the agent closes the client side', async () => {
    const { gw, db, alice } = await probedPair();
    const plan = await alice.planned(1, 'db');
    alice.mux.sendControl({ type: 'direct_state', pathId: plan.pathId, state: 'up', via: 'public', elapsedMs: 420 });
    await until(() => gw.gateway.directBroker.paths()[0]?.state === 'up', 'path up');
    // The agent's own up report changes nothing more.
    db.mux.sendControl({ type: 'direct_state', pathId: plan.pathId, state: 'up', via: 'public', elapsedMs: 410 });
    await settle();
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_total', { result: 'up' }), 1);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_up'), 1);
    const readyCount = await metricValue(gw.metrics, 'narrowlink_gateway_direct_ready_seconds', {}, 'narrowlink_gateway_direct_ready_seconds_count');
    const readySum = await metricValue(gw.metrics, 'narrowlink_gateway_direct_ready_seconds', {}, 'narrowlink_gateway_direct_ready_seconds_sum');
    assert.deepEqual([readyCount, readySum], [1, 0.42], 'observed once, from the client report');
    assert.deepEqual(gw.gateway.attachedAgents()['default/db'], { instances: 1, nat: 'endpoint-independent', directPaths: 1 });

    db.mux.sendControl({ type: 'direct_state', pathId: plan.pathId, state: 'failed', reason: 'NL_ERR_DIRECT_IDLE' });
    const close = await alice.closeFor(plan.pathId);
    assert.match(close.reason, /agent reported the path failed \(NL_ERR_DIRECT_IDLE\)/);
    await settle();
    assert.deepEqual(db.of('direct_close'), [], 'the reporting side is not told again');
    assert.equal(gw.gateway.directBroker.size, 0);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_up'), 0);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_total', { result: 'failed' }), 0, 'it had come up');
    assert.deepEqual(gw.gateway.attachedAgents()['default/db'], { instances: 1, nat: 'endpoint-independent' });
    await alice.alive();
    await db.alive();
  });

  test('failed or closed from the client before up: the agent hears direct_close, the attempt counts as failed', async () => {
    const { gw, db, alice } = await probedPair();
    const first = await alice.planned(1, 'db');
    const second = await alice.planned(2, 'db');
    alice.mux.sendControl({ type: 'direct_state', pathId: first.pathId, state: 'failed', reason: 'Timeout' });
    alice.mux.sendControl({ type: 'direct_state', pathId: second.pathId, state: 'closed' });
    assert.match((await db.closeFor(first.pathId)).reason, /client reported the path failed \(Timeout\)/);
    assert.match((await db.closeFor(second.pathId)).reason, /client reported the path closed/);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_total', { result: 'failed' }), 2);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_total', { result: 'up' }), 0);
    assert.deepEqual(alice.of('direct_close'), []);
  });

  test('direct_state for an unknown path, a path of another client, or a late repeat is ignored; sessions stay', async () => {
    const { gw, db, alice } = await probedPair();
    const plan = await alice.planned(1, 'db');
    const mallory = await Peer.connect(gw.url, 'client', 'alice');
    const web = await Peer.connect(gw.url, 'agent', 'default/web');
    mallory.mux.sendControl({ type: 'direct_state', pathId: plan.pathId, state: 'failed' });
    web.mux.sendControl({ type: 'direct_state', pathId: plan.pathId, state: 'closed' });
    mallory.mux.sendControl({ type: 'direct_state', pathId: 'no-such-path', state: 'up', elapsedMs: 1 });
    await mallory.alive();
    await web.alive();
    assert.equal(gw.gateway.directBroker.paths()[0]?.state, 'punching', 'the path is untouched');
    assert.deepEqual([alice.of('direct_close'), db.of('direct_close')], [[], []]);

    alice.mux.sendControl({ type: 'direct_state', pathId: plan.pathId, state: 'closed' });
    await db.closeFor(plan.pathId);
    // The agent's report crossing the close arrives late: nothing happens.
    db.mux.sendControl({ type: 'direct_state', pathId: plan.pathId, state: 'closed' });
    alice.mux.sendControl({ type: 'direct_state', pathId: plan.pathId, state: 'up' });
    await alice.alive();
    await db.alive();
    assert.deepEqual(alice.of('direct_close'), []);
    assert.equal(db.of('direct_close').length, 1);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_total', { result: 'up' }), 0);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_total', { result: 'failed' }), 1);
  });

  test('a client session closing sends the agent direct_close for each of its paths', async () => {
    const { gw, db, alice } = await probedPair();
    const a = await alice.planned(1, 'db');
    const b = await alice.planned(2, 'db');
    alice.mux.sendControl({ type: 'direct_state', pathId: a.pathId, state: 'up', elapsedMs: 100 });
    await until(() => gw.gateway.directBroker.paths().some((p) => p.state === 'up'), 'up');
    alice.ws.close(1000);
    assert.match((await db.closeFor(a.pathId)).reason, /client session ended/);
    await db.closeFor(b.pathId);
    assert.equal(gw.gateway.directBroker.size, 0);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_up'), 0);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_total', { result: 'failed' }), 1, 'only the attempt that never came up');
  });

  test('an agent session closing sends the client direct_close', async () => {
    const { gw, db, alice } = await probedPair();
    const plan = await alice.planned(1, 'db');
    db.ws.close(1000);
    assert.match((await alice.closeFor(plan.pathId)).reason, /agent session ended/);
    assert.equal(gw.gateway.directBroker.size, 0);
    await alice.alive();
  });

  test('an attempt nobody reports within its deadline is dropped, closed on both sides and counted failed', async () => {
    const { gw, db, alice } = await probedPair();
    const plan = await alice.planned(1, 'db');
    gw.clock.now = T0 + plan.leadMs + plan.budgetMs + DIRECT_RESOLVE_GRACE_MS + 1;
    await alice.closeFor(plan.pathId); // the gateway's sweep runs every second
    await db.closeFor(plan.pathId);
    assert.equal(gw.gateway.directBroker.size, 0);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_total', { result: 'failed' }), 1);
  });
});

describe('direct paths follow policy changes', () => {
  test('a reload that changes the allow list sends a new direct_policy; one that changes nothing sends none', async () => {
    const { gw, db, alice } = await probedPair();
    const plan = await alice.planned(1, 'db');
    await until(() => db.of('direct_policy').length === 1, 'first policy');
    gw.gateway.applyConfig(makeConfig());
    await settle();
    assert.equal(db.of('direct_policy').length, 1, 'same allow list: nothing sent');
    gw.gateway.applyConfig(makeConfig({ alicePorts: [5432, 9000] }));
    await until(() => db.of('direct_policy').length === 2, 'widened policy');
    assert.deepEqual(db.of('direct_policy')[1], {
      type: 'direct_policy',
      pathId: plan.pathId,
      allow: [
        { name: 'pg', host: '127.0.0.1', port: 5432 },
        { name: 'admin', host: '127.0.0.1', port: 9000 },
      ],
    } satisfies DirectPolicy);
    gw.gateway.applyConfig(makeConfig({ alicePorts: [9000] }));
    await until(() => db.of('direct_policy').length === 3, 'narrowed policy');
    assert.deepEqual(db.of('direct_policy')[2]?.allow, [{ name: 'admin', host: '127.0.0.1', port: 9000 }]);
    assert.deepEqual(alice.of('direct_close'), []);
  });

  test('a reload that leaves nothing allowed closes the path on both sides', async () => {
    const { gw, db, alice } = await probedPair();
    const plan = await alice.planned(1, 'db');
    alice.mux.sendControl({ type: 'direct_state', pathId: plan.pathId, state: 'up', elapsedMs: 100 });
    await until(() => gw.gateway.directBroker.paths()[0]?.state === 'up', 'up');
    gw.gateway.applyConfig(makeConfig({ alicePorts: [8080] }));
    assert.equal((await alice.closeFor(plan.pathId)).reason, 'access revoked by a policy change');
    assert.equal((await db.closeFor(plan.pathId)).reason, 'access revoked by a policy change');
    assert.equal(gw.gateway.directBroker.size, 0);
    assert.equal(await metricValue(gw.metrics, 'narrowlink_gateway_direct_paths_up'), 0);
    await alice.alive();
    await db.alive();
  });

  test('the agent leaving the configuration closes the client side', async () => {
    const { gw, alice } = await probedPair();
    const plan = await alice.planned(1, 'db');
    gw.gateway.applyConfig(makeConfig({ withoutDb: true }));
    assert.equal((await alice.closeFor(plan.pathId)).reason, 'agent removed from configuration');
    assert.equal(gw.gateway.directBroker.size, 0);
    await alice.alive();
  });

  test('the agent turning relay-only closes the path on both sides', async () => {
    const { gw, db, alice } = await probedPair();
    const plan = await alice.planned(1, 'db');
    gw.gateway.applyConfig(makeConfig({ dbRelayOnly: true }));
    assert.match((await alice.closeFor(plan.pathId)).reason, /relay only/);
    assert.match((await db.closeFor(plan.pathId)).reason, /relay only/);
    assert.equal((await alice.refused(2, 'db')).reason, 'AgentRelayOnly');
  });

  test('a time-limited rule lapsing sends the narrower direct_policy without expiry', async () => {
    const expiry = T0 + 60_000;
    const { gw, db, alice } = await probedPair({ config: makeConfig({ adminUntil: new Date(expiry).toISOString() }) });
    const plan = await alice.planned(1, 'db');
    await until(() => db.of('direct_policy').length === 1, 'first policy');
    assert.equal(db.of('direct_policy')[0]?.expiresAt, expiry);
    gw.clock.now = expiry;
    await until(() => db.of('direct_policy').length === 2, 'policy after expiry (next sweep)');
    assert.deepEqual(db.of('direct_policy')[1], { type: 'direct_policy', pathId: plan.pathId, allow: [{ name: 'pg', host: '127.0.0.1', port: 5432 }] });
  });
});
