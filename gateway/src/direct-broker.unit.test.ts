/**
 * The direct-path broker driven with plain objects: BrokerPeer sessions that record what they are sent, a host
 * answering from a configuration, and an injected clock. No WebSocket, no Gateway (direct-broker.test.ts runs
 * the same broker end to end).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  type AgentConfig,
  agentKey,
  type CompiledPolicy,
  type ControlMessage,
  classifyNat,
  compilePolicy,
  type DirectRequest,
  type GatewayConfig,
  generateSigningKeyPair,
  validateGatewayConfig,
} from '@narrowlink/protocol';
import {
  type BrokerClient,
  type BrokerInstance,
  type BrokerPeer,
  DIRECT_RESOLVE_GRACE_MS,
  DirectPathBroker,
  MAX_DIRECT_ATTEMPTS_PER_CLIENT,
  MAX_DIRECT_PATHS_PER_CLIENT,
} from './direct-broker.ts';
import { createMetrics } from './metrics.ts';
import type { PeerNat } from './nat-registry.ts';

const keys = await generateSigningKeyPair();
const T0 = Date.parse('2030-01-01T00:00:00Z');
const FP_CLIENT = 'c'.repeat(64);
const FP_AGENT = 'a'.repeat(64);

function makeConfig(options: { alicePorts?: number[]; dbMode?: 'auto' | 'relay' | 'direct' } = {}): GatewayConfig {
  return validateGatewayConfig({
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'GatewayConfig',
    signingPublicKeys: [keys.publicKeyPem],
    agents: [
      {
        name: 'db',
        mode: options.dbMode ?? 'auto',
        expose: [
          { name: 'pg', port: 5432 },
          { name: 'admin', port: 9000 },
        ],
      },
      { name: 'cache', mode: 'relay', expose: [{ name: 'redis', port: 6379 }] },
    ],
    policies: [
      { name: 'alice', subjects: [{ kind: 'User', name: 'alice' }], rules: [{ action: 'Allow', agents: { names: ['db', 'cache'] }, ports: options.alicePorts ?? [5432, 6379] }] },
      // bob may reach db over the relay only.
      { name: 'bob', subjects: [{ kind: 'User', name: 'bob' }], rules: [{ action: 'Allow', agents: { names: ['db'] }, paths: ['Relay'] }] },
    ],
  });
}

const silent = { info: () => undefined, debug: () => undefined, warn: () => undefined };

/** A session that records what it is sent, in one order shared by every peer of a test. */
class FakePeer implements BrokerPeer {
  readonly id: string;
  readonly kind: 'agent' | 'client';
  readonly sub: string;
  readonly log = silent;
  state: BrokerPeer['state'] = 'open';
  streamCount = 0;
  readonly sent: ControlMessage[] = [];
  readonly #order: string[];
  constructor(id: string, kind: 'agent' | 'client', sub: string, order: string[]) {
    this.id = id;
    this.kind = kind;
    this.sub = sub;
    this.#order = order;
  }
  sendControl(message: ControlMessage): void {
    this.sent.push(message);
    this.#order.push(`${this.id}:${message.type}`);
  }
  of<T extends ControlMessage['type']>(type: T): Extract<ControlMessage, { type: T }>[] {
    return this.sent.filter((m): m is Extract<ControlMessage, { type: T }> => m.type === type);
  }
}

/** A NAT that plans (endpoint-independent) for a peer, with its fingerprint. */
function coneNat(address: string, port: number, local: { address: string; port: number }, certFingerprint: string): PeerNat {
  return {
    classification: classifyNat({
      observations: [
        { target: 0, mapped: { address, port }, seq: 1 },
        { target: 1, mapped: { address, port }, seq: 2 },
      ],
      localEndpoints: [local],
      filtering: { changePort: { sent: 2, received: 2 } },
    }),
    localEndpoints: [local],
    atMs: T0,
    certFingerprint,
  };
}

function setup(options: { probing?: boolean } = {}) {
  const order: string[] = [];
  const state = { config: makeConfig(), now: T0, pathsChanged: 0 };
  const instances = new Map<string, Array<BrokerInstance & { agent: AgentConfig }>>();
  const nats = new Map<string, PeerNat>();
  const findAgent = (key: string): AgentConfig | undefined => state.config.agents.find((a) => agentKey(a.namespace, a.name) === key);
  const metrics = createMetrics({ defaultMetrics: false });
  const broker = new DirectPathBroker({
    metrics,
    now: () => state.now,
    host: {
      probing: options.probing ?? true,
      resolveAgent: (policy, ref) => policy.visibleAgents().find((v) => v.agent.name === ref)?.agent,
      instancesOf: (key) => instances.get(key) ?? [],
      findAgent,
      natOf: (sessionId) => nats.get(sessionId),
      onPathsChanged: () => state.pathsChanged++,
    },
  });
  let n = 0;
  const agent = (name: string, options: { version?: string; probed?: boolean } = {}) => {
    const session = new FakePeer(`agent-${++n}`, 'agent', `default/${name}`, order);
    const key = agentKey('default', name);
    const instance = { session, instanceId: session.id, agent: findAgent(key) as AgentConfig, version: options.version ?? '1.2' };
    instances.set(key, [...(instances.get(key) ?? []), instance]);
    if (options.probed ?? true) nats.set(session.id, coneNat('198.51.100.20', 4433 + n, { address: '10.0.0.5', port: 4433 }, FP_AGENT));
    return session;
  };
  const client = (sub: string, options: { probed?: boolean } = {}) => {
    const session = new FakePeer(`client-${++n}`, 'client', sub, order);
    if (options.probed ?? true) nats.set(session.id, coneNat('203.0.113.10', 61_000 + n, { address: '192.168.1.10', port: 50_000 }, FP_CLIENT));
    const role: { session: FakePeer; policy: CompiledPolicy } = { session, policy: compilePolicy(state.config, { sub, groups: [] }, state.now) };
    return role satisfies BrokerClient;
  };
  const request = (c: BrokerClient, requestId: number, agentName = 'db'): void => {
    const message: DirectRequest = { type: 'direct_request', requestId, agent: agentName };
    broker.request(c, message);
  };
  /** The answer the client got to `requestId`. */
  const answer = (c: { session: FakePeer }, requestId: number) =>
    c.session.sent.find((m) => (m.type === 'direct_refused' || m.type === 'punch_plan') && m.requestId === requestId);
  const refusal = (c: { session: FakePeer }, requestId: number): string | undefined => {
    const a = answer(c, requestId);
    return a?.type === 'direct_refused' ? a.reason : undefined;
  };
  const planned = (c: { session: FakePeer }, requestId: number): string => {
    const a = answer(c, requestId);
    assert.equal(a?.type, 'punch_plan', `request ${requestId} planned: ${JSON.stringify(a)}`);
    return (a as { pathId: string }).pathId;
  };
  return { broker, state, order, metrics, agent, client, request, refusal, planned, nats };
}

describe('DirectPathBroker with plain peers', () => {
  test('policy is checked first: a client allowed over the relay only is Denied, and the agent hears nothing', () => {
    const t = setup();
    const bob = t.client('bob');
    t.request(bob, 1);
    assert.equal(t.refusal(bob, 1), 'Denied', 'no instance is attached, yet policy answers first');
    const db = t.agent('db');
    t.request(bob, 2);
    assert.equal(t.refusal(bob, 2), 'Denied');
    assert.deepEqual(db.sent, []);
    assert.equal(t.broker.size, 0);
  });

  test('refusals in order: ProbingDisabled, NoAgent, AgentRelayOnly, AgentTooOld, NotProbed', () => {
    const off = setup({ probing: false });
    const a = off.client('alice');
    off.agent('db');
    off.request(a, 1);
    assert.equal(off.refusal(a, 1), 'ProbingDisabled');

    const t = setup();
    const alice = t.client('alice');
    t.request(alice, 1, 'ghost');
    assert.equal(t.refusal(alice, 1), 'NoAgent');
    t.request(alice, 2);
    assert.equal(t.refusal(alice, 2), 'NoAgent', 'no instance');
    const cache = t.agent('cache');
    t.request(alice, 3, 'cache');
    assert.equal(t.refusal(alice, 3), 'AgentRelayOnly');
    assert.deepEqual(cache.sent, []);
    t.agent('db', { version: '1.1' });
    t.request(alice, 4);
    assert.equal(t.refusal(alice, 4), 'AgentTooOld');
    t.agent('db', { probed: false });
    t.request(alice, 5);
    assert.equal(t.refusal(alice, 5), 'NotProbed', 'the only capable instance is not probed');
    const unprobed = t.client('alice', { probed: false });
    t.request(unprobed, 6);
    assert.equal(t.refusal(unprobed, 6), 'NotProbed');
    assert.equal(t.broker.size, 0);
  });

  test('a plan reaches the agent (direct_policy, then punch_plan) before the client gets its half', () => {
    const t = setup();
    const db = t.agent('db');
    const alice = t.client('alice');
    t.request(alice, 7);
    const pathId = t.planned(alice, 7);
    assert.deepEqual(t.order, [`${db.id}:direct_policy`, `${db.id}:punch_plan`, `${alice.session.id}:punch_plan`]);
    assert.deepEqual(db.of('direct_policy'), [{ type: 'direct_policy', pathId, allow: [{ name: 'pg', host: '127.0.0.1', port: 5432 }] }]);
    const agentPlan = db.of('punch_plan')[0];
    assert.equal(agentPlan?.pathId, pathId);
    assert.equal(agentPlan?.peer, 'alice', "the agent's plan names the client");
    assert.equal(agentPlan?.requestId, undefined);
    assert.equal(alice.session.of('punch_plan')[0]?.peer, 'default/db');
    assert.deepEqual(t.broker.paths(), [{ pathId, clientSession: alice.session.id, agentSession: db.id, agent: 'default/db', state: 'punching', createdAt: T0 }]);
  });

  test('the least loaded capable instance is chosen: fewest paths, then fewest streams', () => {
    const t = setup();
    const busy = t.agent('db');
    busy.streamCount = 5;
    const idle = t.agent('db');
    const alice = t.client('alice');
    t.request(alice, 1);
    t.request(alice, 2);
    const agentOf = (requestId: number) => t.broker.paths().find((p) => p.pathId === t.planned(alice, requestId))?.agentSession;
    assert.equal(agentOf(1), idle.id, 'fewer streams');
    assert.equal(agentOf(2), busy.id, 'fewer paths wins over fewer streams');
  });

  test('up is counted once and reported to the host; a report from a stranger is ignored', () => {
    const t = setup();
    const db = t.agent('db');
    const alice = t.client('alice');
    const mallory = t.client('alice');
    t.request(alice, 1);
    const pathId = t.planned(alice, 1);
    t.broker.state(mallory.session, { type: 'direct_state', pathId, state: 'failed' });
    assert.equal(t.broker.paths()[0]?.state, 'punching');
    t.broker.state(alice.session, { type: 'direct_state', pathId, state: 'up', elapsedMs: 120 });
    t.broker.state(db, { type: 'direct_state', pathId, state: 'up' });
    assert.equal(t.broker.paths()[0]?.state, 'up');
    assert.equal(t.state.pathsChanged, 1);
    assert.deepEqual(t.broker.upByAgent(), new Map([['default/db', 1]]));
  });

  test('a reload that narrows the allow list sends a new direct_policy; one that revokes everything closes both sides', () => {
    const t = setup();
    const db = t.agent('db');
    const alice = t.client('alice');
    t.request(alice, 1);
    const pathId = t.planned(alice, 1);
    // Same policy: nothing is sent.
    t.broker.policyChanged(alice);
    assert.equal(db.of('direct_policy').length, 1);
    // Wider: a new allow list goes to the agent only.
    t.state.config = makeConfig({ alicePorts: [5432, 9000] });
    alice.policy = compilePolicy(t.state.config, { sub: 'alice', groups: [] }, T0);
    t.broker.policyChanged(alice);
    assert.deepEqual(db.of('direct_policy')[1]?.allow.map((a) => a.port), [5432, 9000]);
    assert.deepEqual(alice.session.of('direct_policy'), []);
    // Revoked: both sides hear direct_close and the path is gone.
    t.state.config = makeConfig({ alicePorts: [6379] });
    alice.policy = compilePolicy(t.state.config, { sub: 'alice', groups: [] }, T0);
    t.broker.policyChanged(alice);
    assert.deepEqual(db.of('direct_close'), [{ type: 'direct_close', pathId, reason: 'access revoked by a policy change' }]);
    assert.deepEqual(alice.session.of('direct_close'), [{ type: 'direct_close', pathId, reason: 'access revoked by a policy change' }]);
    assert.equal(t.broker.size, 0);
  });

  test('an agent turned relay-only on reload closes its paths on both sides', () => {
    const t = setup();
    const db = t.agent('db');
    const alice = t.client('alice');
    t.request(alice, 1);
    t.state.config = makeConfig({ dbMode: 'relay' });
    t.broker.policyChanged(alice);
    assert.equal(db.of('direct_close')[0]?.reason, 'the agent offers the relay only now (mode relay)');
    assert.equal(alice.session.of('direct_close')[0]?.reason, 'the agent offers the relay only now (mode relay)');
  });

  test('a client session ending closes its paths on the agent side, and the other way round', () => {
    const t = setup();
    const db = t.agent('db');
    const alice = t.client('alice');
    t.request(alice, 1);
    const first = t.planned(alice, 1);
    alice.session.state = 'closed';
    t.broker.sessionClosed(alice.session);
    assert.deepEqual(db.of('direct_close'), [{ type: 'direct_close', pathId: first, reason: 'the client session ended' }]);
    assert.deepEqual(alice.session.of('direct_close'), [], 'a closed session is sent nothing');
    assert.equal(t.broker.size, 0);

    const carol = t.client('alice');
    t.request(carol, 2);
    const second = t.planned(carol, 2);
    t.broker.state(carol.session, { type: 'direct_state', pathId: second, state: 'up' });
    db.state = 'closed';
    t.broker.sessionClosed(db);
    assert.deepEqual(carol.session.of('direct_close'), [{ type: 'direct_close', pathId: second, reason: 'the agent session ended' }]);
    assert.equal(t.broker.size, 0);
    assert.deepEqual(t.broker.upByAgent(), new Map());
    assert.equal(t.state.pathsChanged, 2, 'up, then down');
  });

  test(`at most ${MAX_DIRECT_ATTEMPTS_PER_CLIENT} attempts in flight per client; a resolved one frees a slot`, () => {
    const t = setup();
    t.agent('db');
    const alice = t.client('alice');
    for (let i = 1; i <= MAX_DIRECT_ATTEMPTS_PER_CLIENT; i++) t.request(alice, i);
    t.request(alice, 100);
    assert.equal(t.refusal(alice, 100), 'TooManyAttempts');
    t.broker.state(alice.session, { type: 'direct_state', pathId: t.planned(alice, 1), state: 'up' });
    t.request(alice, 101);
    t.planned(alice, 101);
    assert.equal(t.broker.size, MAX_DIRECT_ATTEMPTS_PER_CLIENT + 1);
  });

  test(`at most ${MAX_DIRECT_PATHS_PER_CLIENT} paths per client, up or not`, () => {
    const t = setup();
    t.agent('db');
    const alice = t.client('alice');
    for (let i = 1; i <= MAX_DIRECT_PATHS_PER_CLIENT; i++) {
      t.request(alice, i);
      t.broker.state(alice.session, { type: 'direct_state', pathId: t.planned(alice, i), state: 'up' });
    }
    t.request(alice, 1000);
    assert.equal(t.refusal(alice, 1000), 'TooManyAttempts');
    const refused = alice.session.of('direct_refused').at(-1);
    assert.match(refused?.message ?? '', new RegExp(`at most ${MAX_DIRECT_PATHS_PER_CLIENT}`));
    assert.equal(t.broker.size, MAX_DIRECT_PATHS_PER_CLIENT);
    // Another client is not limited by alice's paths.
    const other = t.client('alice');
    t.request(other, 1);
    t.planned(other, 1);
  });

  test('an attempt unresolved past its deadline is dropped on the sweep and closed on both sides', () => {
    const t = setup();
    const db = t.agent('db');
    const alice = t.client('alice');
    t.request(alice, 1);
    const pathId = t.planned(alice, 1);
    t.broker.sweep();
    assert.equal(t.broker.size, 1);
    t.state.now = T0 + 60_000 + DIRECT_RESOLVE_GRACE_MS;
    t.broker.sweep();
    assert.equal(t.broker.size, 0);
    assert.equal(db.of('direct_close')[0]?.pathId, pathId);
    assert.equal(alice.session.of('direct_close')[0]?.reason, 'the punch attempt was not reported up in time');
  });
});
