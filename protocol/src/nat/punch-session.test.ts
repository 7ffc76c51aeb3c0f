import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, NatError } from '../errors.ts';
import { classifyNat } from './classify.ts';
import { type Endpoint, formatEndpoint } from './endpoint.ts';
import {
  ADDRESS_RESTRICTED_CONE,
  MASQUERADE,
  RANDOM_FULLY,
  Rng,
  runUntilSettled,
  type SimNat,
  type SimNatBehavior,
  SimNetwork,
  SimPeer,
  SimProbeServer,
} from './nat-sim.testkit.ts';
import { decodePunch, encodePunch, type PunchPacket } from './probe-codec.ts';
import { type PeerNatInfo, type PunchPlanResult, planPunch } from './punch-plan.ts';
import { type PunchOutput, PunchSession, type PunchSessionConfig } from './punch-session.ts';

const KEY = new Uint8Array(32).fill(0x5a);
const ATTEMPT = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
const A: Endpoint = { address: '198.51.100.2', port: 50_000 };
const B: Endpoint = { address: '203.0.113.2', port: 60_000 };

function config(role: 'client' | 'agent', to: Endpoint[], extra: Partial<PunchSessionConfig> = {}): PunchSessionConfig {
  return { role, attemptId: ATTEMPT, punchKey: KEY, candidates: to.map((endpoint) => ({ endpoint, kind: 'public' as const })), intervalMs: 50, budgetMs: 1000, ...extra };
}

function punchFrom(role: 'client' | 'agent', seq: number, ackSeq?: number, done = false, key = KEY, attemptId = ATTEMPT): Uint8Array {
  const packet: PunchPacket = { attemptId, role, seq, done };
  if (ackSeq !== undefined) packet.ackSeq = ackSeq;
  return encodePunch(packet, key);
}

const decoded = (out: PunchOutput) => out.transmits.map((t) => ({ to: formatEndpoint(t.to), ...decodePunch(t.bytes, KEY), attemptId: undefined }));

describe('PunchSession: timers', () => {
  test('rounds every interval to every candidate, failure exactly at start + budget, then silence', () => {
    const s = new PunchSession(config('client', [B, A]));
    assert.equal(s.state, 'idle');
    assert.equal(s.nextDeadline(), undefined);
    let out = s.start(10_000);
    assert.equal(s.state, 'punching');
    assert.deepEqual(decoded(out).map((p) => [p.to, p.seq, p.ackSeq, p.done, p.role]), [
      ['203.0.113.2:60000', 1, undefined, false, 'client'],
      ['198.51.100.2:50000', 2, undefined, false, 'client'],
    ]);
    assert.equal(out.deadlineMs, 10_050);
    assert.equal(s.tick(10_049).transmits.length, 0, 'nothing before the deadline');
    out = s.tick(10_050);
    assert.equal(out.transmits.length, 2);
    assert.equal(out.deadlineMs, 10_100);
    let rounds = 2;
    for (let t = 10_100; t < 11_000; t += 50) {
      out = s.tick(t);
      assert.equal(out.transmits.length, 2);
      assert.ok(out.deadlineMs !== undefined && out.deadlineMs > t && out.deadlineMs <= 11_000);
      rounds++;
    }
    assert.equal(rounds, 20);
    out = s.tick(11_000);
    assert.deepEqual(out.events, [{ type: 'failed', reason: 'Timeout', atMs: 11_000 }]);
    assert.equal(out.transmits.length, 0);
    assert.equal(out.deadlineMs, undefined);
    assert.equal(s.state, 'failed');
    assert.deepEqual(s.tick(20_000), { transmits: [], events: [], deadlineMs: undefined });
    assert.deepEqual(s.start(20_000), { transmits: [], events: [], deadlineMs: undefined }, 'start again does nothing');
    // Late punches after failure are dropped, not answered.
    assert.equal(s.receive(punchFrom('agent', 1), B, 20_001).transmits.length, 0);
    assert.equal(s.stats.dropped[ErrorCode.NAT_UNEXPECTED], 1);
  });

  test('initial delay: the first round waits, the budget counts from start', () => {
    const s = new PunchSession(config('agent', [A], { initialDelayMs: 25 }));
    const out = s.start(0);
    assert.equal(out.transmits.length, 0);
    assert.equal(out.deadlineMs, 25);
    assert.equal(s.tick(25).transmits.length, 1);
    assert.equal(s.nextDeadline(), 75);
    assert.equal(s.tick(1000).events[0]?.type, 'failed');
  });

  test('a late tick sends one round, not a burst, and keeps the budget', () => {
    const s = new PunchSession(config('client', [B]));
    s.start(0);
    const out = s.tick(420);
    assert.equal(out.transmits.length, 1);
    assert.equal(out.deadlineMs, 470);
    assert.equal(s.tick(999).transmits.length, 1);
    assert.equal(s.nextDeadline(), 1000);
  });

  test('a budget shorter than the interval still fails on time', () => {
    const s = new PunchSession(config('client', [B], { intervalMs: 500, budgetMs: 120 }));
    assert.equal(s.start(0).deadlineMs, 120);
    assert.equal(s.tick(120).events[0]?.type, 'failed');
  });
});

describe('PunchSession: handshake', () => {
  test('two sessions over a perfect wire: both establish, answers never ping-pong', () => {
    const client = new PunchSession(config('client', [B]));
    const agent = new PunchSession(config('agent', [A]));
    const queue: { to: 'client' | 'agent'; bytes: Uint8Array }[] = [];
    const push = (to: 'client' | 'agent', out: PunchOutput) => {
      for (const t of out.transmits) queue.push({ to, bytes: t.bytes });
      return out;
    };
    push('agent', client.start(0));
    push('client', agent.start(0));
    let delivered = 0;
    while (queue.length > 0) {
      const next = queue.shift() as { to: 'client' | 'agent'; bytes: Uint8Array };
      delivered++;
      if (next.to === 'client') push('agent', client.receive(next.bytes, B, 1));
      else push('client', agent.receive(next.bytes, A, 1));
      assert.ok(delivered < 20, 'answers ping-pong');
    }
    assert.equal(client.state, 'established');
    assert.equal(agent.state, 'established');
    assert.deepEqual(client.remote, B);
    assert.deepEqual(agent.remote, A);
    assert.equal(client.nextDeadline(), undefined);
  });

  test('step by step: ACK establishes, the answer carries DONE, DONE is not answered', () => {
    const s = new PunchSession(config('client', [B]));
    s.start(0); // sent seq 1
    // The agent heard nothing yet: its punch has no ACK. We answer at once with an ACK of its seq.
    let out = s.receive(punchFrom('agent', 7), B, 10);
    assert.equal(s.state, 'punching');
    assert.deepEqual(decoded(out).map((p) => [p.to, p.seq, p.ackSeq, p.done]), [['203.0.113.2:60000', 2, 7, false]]);
    // Our next round carries the ACK too.
    out = s.tick(50);
    assert.deepEqual(decoded(out).map((p) => [p.seq, p.ackSeq]), [[3, 7]]);
    // The agent acknowledges our seq 2: established; the answer says DONE so the agent can finish.
    out = s.receive(punchFrom('agent', 8, 2), B, 60);
    assert.equal(s.state, 'established');
    assert.deepEqual(out.events, [{ type: 'established', remote: B, via: 'public', atMs: 60, elapsedMs: 60 }]);
    assert.deepEqual(decoded(out).map((p) => [p.seq, p.ackSeq, p.done]), [[4, 8, true]]);
    assert.equal(out.deadlineMs, undefined);
    // Late punches from the agent are answered (DONE), DONE punches are not; no second event.
    out = s.receive(punchFrom('agent', 9, 3), B, 70);
    assert.deepEqual([out.events.length, decoded(out).map((p) => p.done)], [0, [true]]);
    out = s.receive(punchFrom('agent', 10, 4, true), B, 80);
    assert.deepEqual([out.events.length, out.transmits.length], [0, 0]);
    assert.equal(s.stats.received, 4);
  });

  test('a punch from an unknown source is learned (peer-reflexive), aimed at first, and can establish', () => {
    const s = new PunchSession(config('agent', [{ address: '198.51.100.2', port: 1 }]));
    s.start(0);
    const reflexive = { address: '198.51.100.2', port: 61_111 };
    s.receive(punchFrom('client', 1), reflexive, 5);
    const round = s.tick(50);
    assert.deepEqual(round.transmits.map((t) => formatEndpoint(t.to)), ['198.51.100.2:61111', '198.51.100.2:1']);
    const out = s.receive(punchFrom('client', 2, 3), { address: '::ffff:198.51.100.2', port: 61_111 }, 60);
    assert.deepEqual(out.events, [{ type: 'established', remote: reflexive, via: 'peer-reflexive', atMs: 60, elapsedMs: 60 }]);
  });

  test('before start: answers the peer (opening our NAT early) but starts no timer', () => {
    const s = new PunchSession(config('client', [B]));
    const out = s.receive(punchFrom('agent', 1), B, 0);
    assert.equal(s.state, 'idle');
    assert.equal(out.deadlineMs, undefined);
    assert.deepEqual(decoded(out).map((p) => [p.seq, p.ackSeq]), [[1, 1]]);
    const started = s.start(5);
    assert.deepEqual(decoded(started).map((p) => [p.seq, p.ackSeq]), [[2, 1]]);
    assert.equal(started.deadlineMs, 55);
  });

  test('drops, typed and counted: wrong key, other attempt, own role reflected, ack of an unsent seq, replay, not a punch', () => {
    const s = new PunchSession(config('client', [B]));
    s.start(0); // sent seq 1
    const cases: [Uint8Array, string][] = [
      [punchFrom('agent', 1, undefined, false, new Uint8Array(32).fill(1)), ErrorCode.NAT_BAD_MAC],
      [punchFrom('agent', 1, undefined, false, KEY, Uint8Array.from([9, 9, 9, 9, 9, 9, 9, 9])), ErrorCode.NAT_UNEXPECTED],
      [punchFrom('client', 1), ErrorCode.NAT_UNEXPECTED],
      [punchFrom('agent', 1, 99), ErrorCode.NAT_UNEXPECTED],
      [Uint8Array.from([0xc0, 0, 0, 0, 1]), ErrorCode.NAT_NOT_RAW],
      [new Uint8Array(500), ErrorCode.NAT_TOO_LARGE],
    ];
    for (const [bytes, code] of cases) {
      const out = s.receive(bytes, B, 1);
      assert.deepEqual([out.transmits.length, out.events.length, out.deadlineMs], [0, 0, 50], code);
    }
    assert.equal(s.receive(punchFrom('agent', 5), B, 2).transmits.length, 1);
    assert.equal(s.receive(punchFrom('agent', 5), { address: '192.0.2.66', port: 9 }, 3).transmits.length, 0, 'a replay from elsewhere is not answered');
    assert.deepEqual(s.stats.dropped, {
      [ErrorCode.NAT_BAD_MAC]: 1,
      [ErrorCode.NAT_UNEXPECTED]: 3,
      [ErrorCode.NAT_NOT_RAW]: 1,
      [ErrorCode.NAT_TOO_LARGE]: 1,
      [ErrorCode.NAT_REPLAYED]: 1,
    });
    assert.equal(s.state, 'punching');
  });

  test('invalid configuration is NL_ERR_NAT_INVALID_INPUT', () => {
    const invalid = (e: unknown) => e instanceof NatError && e.code === ErrorCode.NAT_INVALID_INPUT;
    assert.throws(() => new PunchSession(config('client', [B], { punchKey: new Uint8Array(8) })), invalid);
    assert.throws(() => new PunchSession(config('client', [B], { attemptId: new Uint8Array(4) })), invalid);
    assert.throws(() => new PunchSession(config('client', [B], { intervalMs: 0 })), invalid);
    assert.throws(() => new PunchSession(config('client', [B], { budgetMs: 1.5 })), invalid);
    assert.throws(() => new PunchSession(config('client', [{ address: 'peer', port: 1 }])), invalid);
    assert.throws(() => new PunchSession({ ...config('client', [B]), role: 'gateway' as 'client' }), invalid);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Whole pipeline over simulated NATs: probe the gateway → classify → plan → punch → check the hole.

interface SideSpec {
  /** NAT in front of the peer; undefined = public host. */
  nat?: SimNatBehavior;
  /** Put this peer behind the other peer's NAT (same LAN). */
  shareNatWithClient?: boolean;
}

interface Outcome {
  result: PunchPlanResult;
  client: SimPeer;
  agent: SimPeer;
  net: SimNetwork;
  startAtMs: number;
}

function scenario(client: SideSpec, agent: SideSpec, options: { seed?: number; filteringTests?: number; loss?: (index: number, socketIndex: number, from: Endpoint) => boolean } = {}): Outcome {
  const seed = options.seed ?? 1;
  const net = new SimNetwork();
  const server = new SimProbeServer(net, ['192.0.2.1', '192.0.2.2'], [3478, 3479]);
  const clientNat: SimNat | undefined = client.nat ? net.addNat('198.51.100.2', client.nat, seed) : undefined;
  const clientPeer = new SimPeer(net, clientNat ? '10.1.0.2' : '198.51.100.9', 50_000, clientNat);
  let agentNat: SimNat | undefined;
  let agentAddress = '203.0.113.9';
  if (agent.shareNatWithClient) {
    agentNat = clientNat;
    agentAddress = '10.1.0.3';
  } else if (agent.nat) {
    agentNat = net.addNat('203.0.113.2', agent.nat, seed * 7919 + 13);
    agentAddress = '10.2.0.2';
  }
  const agentPeer = new SimPeer(net, agentAddress, 50_000, agentNat);
  const rng = new Rng(seed);
  const info = (peer: SimPeer, name: string, fingerprint: string): PeerNatInfo => {
    const sessionId = new TextEncoder().encode(name);
    const report = peer.probe(server, sessionId, rng.bytes(32), { filteringTests: options.filteringTests ?? 2 });
    const nat = classifyNat({ observations: report.observations, localEndpoints: [peer.socket.local], filtering: report.filtering });
    return { nat, localEndpoints: [peer.socket.local], certFingerprint: fingerprint };
  };
  const clientInfo = info(clientPeer, 'client-session', 'c'.repeat(64));
  const agentInfo = info(agentPeer, 'agent-session', 'a'.repeat(64));
  if (options.loss) {
    const loss = options.loss;
    net.loss = (p) => p.bytes[0] === 0 && p.bytes[2] === 3 && loss(p.index, p.socketIndex, p.from);
  }
  const result = planPunch({ client: clientInfo, agent: agentInfo, nowMs: net.nowMs, random: (n) => rng.bytes(n) });
  if (result.viable) {
    clientPeer.attach(new PunchSession(result.client), result.startAtMs);
    agentPeer.attach(new PunchSession(result.agent), result.startAtMs);
    runUntilSettled(net, [clientPeer, agentPeer], result.deadlineAtMs + 1000);
  }
  return { result, client: clientPeer, agent: agentPeer, net, startAtMs: result.viable ? result.startAtMs : net.nowMs };
}

function established(peer: SimPeer) {
  const event = peer.events.find((e) => e.type === 'established');
  assert.ok(event && event.type === 'established', `not established: ${JSON.stringify(peer.events)}`);
  return event;
}

/** After punching, a QUIC-looking datagram sent to the established remote must arrive, both ways. */
function assertHoleOpen(o: Outcome): void {
  for (const [from, to] of [
    [o.client, o.agent],
    [o.agent, o.client],
  ] as const) {
    const remote = from.session?.remote;
    assert.ok(remote);
    const marker = Uint8Array.from([0x40, 0xde, 0xad, from === o.client ? 1 : 2]);
    from.socket.send(remote, marker);
    o.net.run(o.net.nowMs + 200);
    assert.ok(
      o.net.delivered.some((p) => Buffer.from(p.bytes).equals(Buffer.from(marker)) && p.to.address === to.socket.local.address),
      `datagram from ${from.socket.local.address} to ${formatEndpoint(remote)} did not arrive`,
    );
  }
}

describe('the simulated NAT model (so that the scenarios below mean something)', () => {
  function twoHosts(behavior: SimNatBehavior) {
    const net = new SimNetwork();
    const nat = net.addNat('198.51.100.2', behavior, 3);
    const got: string[] = [];
    net.addHost('10.1.0.2', nat);
    const inside = net.bind('10.1.0.2', 50_000, (b, from) => got.push(`${Buffer.from(b).toString()} from ${formatEndpoint(from)}`));
    net.addHost('203.0.113.9');
    const outside = net.bind('203.0.113.9', 7000, () => {});
    net.addHost('203.0.113.10');
    const other = net.bind('203.0.113.10', 7000, () => {});
    const outsidePort2 = net.bind('203.0.113.9', 7001, () => {});
    return { net, nat, got, inside, outside, other, outsidePort2 };
  }

  test('address-and-port-dependent filtering drops unsolicited packets until we sent to that exact endpoint', () => {
    const h = twoHosts(MASQUERADE);
    const mapped = { address: '198.51.100.2', port: 50_000 };
    h.outside.send(mapped, Buffer.from('early'));
    h.net.run(100);
    h.inside.send(h.outside.local, Buffer.from('out'));
    h.net.run(200);
    h.outside.send(mapped, Buffer.from('reply'));
    h.outsidePort2.send(mapped, Buffer.from('other-port'));
    h.other.send(mapped, Buffer.from('other-host'));
    h.net.run(300);
    assert.deepEqual(h.got, ['reply from 203.0.113.9:7000']);
  });

  test('address-dependent filtering admits any port of an address we sent to', () => {
    const h = twoHosts(ADDRESS_RESTRICTED_CONE);
    h.inside.send(h.outside.local, Buffer.from('out'));
    h.net.run(100);
    const mapped = { address: '198.51.100.2', port: 50_000 };
    h.outsidePort2.send(mapped, Buffer.from('other-port'));
    h.other.send(mapped, Buffer.from('other-host'));
    h.net.run(200);
    assert.deepEqual(h.got, ['other-port from 203.0.113.9:7001']);
  });

  test('random mapping: a new unpredictable port per destination, stable per destination', () => {
    const h = twoHosts(RANDOM_FULLY);
    const seen: Record<string, string[]> = {};
    const record = (name: string) => (_b: Uint8Array, from: Endpoint) => {
      seen[name] = [...(seen[name] ?? []), formatEndpoint(from)];
    };
    h.net.bind('203.0.113.9', 7000, record('a'));
    h.net.bind('203.0.113.10', 7000, record('b'));
    h.inside.send(h.outside.local, Buffer.from('1'));
    h.inside.send(h.outside.local, Buffer.from('2'));
    h.inside.send(h.other.local, Buffer.from('3'));
    h.net.run(100);
    assert.equal(seen.a?.length, 2);
    assert.equal(seen.a?.[0], seen.a?.[1]);
    assert.notEqual(seen.a?.[0], seen.b?.[0]);
    assert.equal(h.nat.mappingCount, 2);
  });
});

describe('PunchSession over simulated NATs', () => {
  test('cone / cone (NAT lab default, drop NEW): established over the public endpoints, quickly', () => {
    const o = scenario({ nat: MASQUERADE }, { nat: MASQUERADE });
    assert.ok(o.result.viable && o.result.strategy === 'public');
    const c = established(o.client);
    const a = established(o.agent);
    assert.deepEqual(c.remote, { address: '203.0.113.2', port: 50_000 });
    assert.deepEqual(a.remote, { address: '198.51.100.2', port: 50_000 });
    assert.equal(c.via, 'public');
    // Two one-way trips of ~22 ms plus at most one round of filter opening.
    assert.ok(c.elapsedMs <= 150 && a.elapsedMs <= 150, `${c.elapsedMs} / ${a.elapsedMs} ms`);
    assertHoleOpen(o);
  });

  test('public host / cone', () => {
    const o = scenario({}, { nat: MASQUERADE });
    established(o.client);
    established(o.agent);
    assertHoleOpen(o);
  });

  test('cone (address-restricted) / random: the random side reaches the stable endpoint, the cone answers what arrives', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const o = scenario({ nat: ADDRESS_RESTRICTED_CONE }, { nat: RANDOM_FULLY }, { seed });
      assert.ok(o.result.viable && o.result.strategy === 'reach-stable', `seed ${seed}: ${JSON.stringify(o.result.viable || o.result.reason)}`);
      const c = established(o.client);
      const a = established(o.agent);
      assert.equal(c.via, 'peer-reflexive', 'the cone side learns the random port from the traffic');
      assert.deepEqual(a.remote, { address: '198.51.100.2', port: 50_000 });
      assert.equal(c.remote.address, '203.0.113.2');
      assertHoleOpen(o);
    }
  });

  test('random / cone (roles swapped) establishes too', () => {
    const o = scenario({ nat: RANDOM_FULLY }, { nat: ADDRESS_RESTRICTED_CONE });
    established(o.client);
    established(o.agent);
    assertHoleOpen(o);
  });

  test('cone (port-restricted, Linux MASQUERADE) / random: known filtering → not viable, no attempt', () => {
    const o = scenario({ nat: MASQUERADE }, { nat: RANDOM_FULLY });
    assert.deepEqual([o.result.viable, !o.result.viable && o.result.reason], [false, 'PortRestrictedVsRandom']);
  });

  test('cone (port-restricted) / random with untested filtering: attempted, fails by the deadline, no hang', () => {
    const o = scenario({ nat: MASQUERADE }, { nat: RANDOM_FULLY }, { filteringTests: 0 });
    assert.ok(o.result.viable);
    for (const peer of [o.client, o.agent]) {
      assert.deepEqual(peer.events, [{ type: 'failed', reason: 'Timeout', atMs: o.startAtMs + 3000 }]);
    }
  });

  test('random / random: the plan says BothSymmetric; punching anyway fails exactly at the deadline', () => {
    const o = scenario({ nat: RANDOM_FULLY }, { nat: RANDOM_FULLY });
    assert.deepEqual([o.result.viable, !o.result.viable && o.result.reason], [false, 'BothSymmetric']);
    // Force an attempt: each side aims at the other's last observed mapping.
    const net = o.net;
    const start = net.nowMs + 10;
    const base = { attemptId: ATTEMPT, punchKey: KEY, intervalMs: 50, budgetMs: 2000 };
    o.client.attach(new PunchSession({ ...base, role: 'client', candidates: [{ endpoint: { address: '203.0.113.2', port: 40_000 }, kind: 'public' }] }), start);
    o.agent.attach(new PunchSession({ ...base, role: 'agent', candidates: [{ endpoint: { address: '198.51.100.2', port: 40_000 }, kind: 'public' }] }), start);
    runUntilSettled(net, [o.client, o.agent], start + 60_000);
    for (const peer of [o.client, o.agent]) assert.deepEqual(peer.events, [{ type: 'failed', reason: 'Timeout', atMs: start + 2000 }]);
    assert.equal(net.nowMs, start + 2000, 'settled at the deadline, not later');
  });

  test('UDP blocked on one side: not viable, UdpBlocked', () => {
    const o = scenario({ nat: MASQUERADE }, { nat: { ...MASQUERADE, blockUdp: true } });
    assert.deepEqual([o.result.viable, !o.result.viable && o.result.reason], [false, 'UdpBlocked']);
  });

  test('loss of the first N punch packets of each side is tolerated', () => {
    for (const n of [1, 3, 10, 25]) {
      const o = scenario({ nat: MASQUERADE }, { nat: MASQUERADE }, { loss: (_i, socketIndex) => socketIndex < n + 9 /* 9 probes first */ });
      const c = established(o.client);
      const a = established(o.agent);
      // One punch per round per side until something passes: nothing can get through before round n.
      assert.ok(c.elapsedMs >= 50 * (n - 1), `n=${n}: established after ${c.elapsedMs} ms, before any punch could pass`);
      assert.ok(c.elapsedMs < 3000 && a.elapsedMs < 3000);
      assertHoleOpen(o);
    }
  });

  test('30% random loss on every punch datagram: still established (20 seeds)', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const lossRng = new Rng(seed * 31);
      const o = scenario({ nat: MASQUERADE }, { nat: MASQUERADE }, { seed, loss: () => lossRng.next() < 0.3 });
      established(o.client);
      established(o.agent);
    }
  });

  test('same LAN behind one cone NAT without hairpinning: established over the LAN candidate', () => {
    const o = scenario({ nat: MASQUERADE }, { shareNatWithClient: true });
    assert.ok(o.result.viable && o.result.sameLan);
    const c = established(o.client);
    const a = established(o.agent);
    assert.deepEqual([c.via, a.via], ['lan', 'lan']);
    assert.deepEqual(c.remote, { address: '10.1.0.3', port: 50_000 });
    assertHoleOpen(o);
  });

  test('same LAN behind one symmetric NAT: LAN-only plan, established', () => {
    const o = scenario({ nat: RANDOM_FULLY }, { shareNatWithClient: true });
    assert.ok(o.result.viable && o.result.strategy === 'lan');
    assert.equal(established(o.client).via, 'lan');
    established(o.agent);
  });

  test('cone / predictable (+1): the cone side hits the predicted port', () => {
    const o = scenario({ nat: MASQUERADE }, { nat: { mapping: { delta: 1, start: 41_000 }, filtering: 'address-and-port-dependent' } });
    assert.ok(o.result.viable && o.result.strategy === 'predicted');
    const c = established(o.client);
    established(o.agent);
    // Four probe destinations took 41000..41003; the path to the client is the next one.
    assert.deepEqual([c.via, c.remote], ['predicted', { address: '203.0.113.2', port: 41_004 }]);
    assertHoleOpen(o);
  });

  test('predictable / predictable (lockstep, +1 and +3): the k-th new mappings meet', () => {
    const o = scenario(
      { nat: { mapping: { delta: 1, start: 41_000 }, filtering: 'address-and-port-dependent' } },
      { nat: { mapping: { delta: 3, start: 20_000 }, filtering: 'address-and-port-dependent' } },
    );
    assert.ok(o.result.viable && o.result.strategy === 'lockstep');
    established(o.client);
    established(o.agent);
    assertHoleOpen(o);
  });
});
