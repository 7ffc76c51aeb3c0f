import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, NatError } from '../errors.ts';
import type { FilteringBehavior, NatClassification } from './classify.ts';
import type { Endpoint } from './endpoint.ts';
import { certificateFingerprint, type PeerNatInfo, type PunchPlan, type PunchPlanResult, planPunch, type RandomBytes } from './punch-plan.ts';

const FP_CLIENT = certificateFingerprint(new TextEncoder().encode('client certificate DER'));
const FP_AGENT = certificateFingerprint(new TextEncoder().encode('agent certificate DER'));
const NOW = 1_000_000;

/** Deterministic "random": 0x00, 0x01, ... so the attempt id and key are recognisable. */
function counter(): RandomBytes {
  let next = 0;
  return (n) => Uint8Array.from({ length: n }, () => next++ & 0xff);
}

const ep = (address: string, port: number): Endpoint => ({ address, port });

function cone(publicEndpoint: Endpoint, filtering: FilteringBehavior = 'address-and-port-dependent'): NatClassification {
  return { type: 'endpoint-independent', publicEndpoint, portPreserving: true, filtering, destinations: 2 };
}
function random(publicEndpoint: Endpoint): NatClassification {
  return { type: 'endpoint-dependent-random', publicEndpoint, filtering: 'address-and-port-dependent', destinations: 2 };
}
function predictable(publicEndpoint: Endpoint, delta: number): NatClassification {
  return { type: 'endpoint-dependent-predictable', publicEndpoint, delta, deltaSamples: 3, confidence: 'high', filtering: 'address-and-port-dependent', destinations: 4 };
}

function peer(nat: NatClassification, local: Endpoint[], certFingerprint: string): PeerNatInfo {
  return { nat, localEndpoints: local, certFingerprint };
}
const clientAt = (nat: NatClassification, local = [ep('10.1.0.2', 50_000)]) => peer(nat, local, FP_CLIENT);
const agentAt = (nat: NatClassification, local = [ep('10.2.0.2', 60_000)]) => peer(nat, local, FP_AGENT);

function viable(result: PunchPlanResult): PunchPlan {
  assert.ok(result.viable, `expected a plan, got ${JSON.stringify(result)}`);
  return result;
}
const targets = (plan: PunchPlan, role: 'client' | 'agent') => plan[role].candidates.map((c) => `${c.kind} ${c.endpoint.address}:${c.endpoint.port}`);

describe('planPunch', () => {
  test('cone / cone: each sends to the other public endpoint; timing, roles, keys, fingerprints', () => {
    const plan = viable(planPunch({ client: clientAt(cone(ep('198.51.100.2', 50_000))), agent: agentAt(cone(ep('203.0.113.2', 60_000))), nowMs: NOW, random: counter() }));
    assert.equal(plan.strategy, 'public');
    assert.equal(plan.sameLan, false);
    assert.deepEqual(targets(plan, 'client'), ['public 203.0.113.2:60000']);
    assert.deepEqual(targets(plan, 'agent'), ['public 198.51.100.2:50000']);
    assert.equal(plan.startAtMs, NOW + 200);
    assert.equal(plan.deadlineAtMs, NOW + 200 + 3000);
    assert.equal(plan.firstSender, 'both');
    assert.equal(plan.quicClient, 'client');
    assert.equal(plan.client.quicRole, 'client');
    assert.equal(plan.agent.quicRole, 'server');
    assert.equal(plan.client.initialDelayMs, 0);
    assert.equal(plan.agent.initialDelayMs, 0);
    // Attempt id first, then the key, both from the injected source and identical on both sides.
    assert.equal(Buffer.from(plan.attemptId).toString('hex'), '0001020304050607');
    assert.equal(Buffer.from(plan.punchKey).toString('hex'), Buffer.from(Array.from({ length: 32 }, (_, i) => i + 8)).toString('hex'));
    assert.deepEqual(plan.client.punchKey, plan.agent.punchKey);
    assert.deepEqual(plan.client.attemptId, plan.attemptId);
    // Each side learns the other's fingerprint only.
    assert.equal(plan.client.peerFingerprint, FP_AGENT);
    assert.equal(plan.agent.peerFingerprint, FP_CLIENT);
    assert.deepEqual(plan.fingerprints, { client: FP_CLIENT, agent: FP_AGENT });
  });

  test('options: lead, interval, budget', () => {
    const plan = viable(
      planPunch({
        client: clientAt(cone(ep('198.51.100.2', 50_000))),
        agent: agentAt(cone(ep('203.0.113.2', 60_000))),
        nowMs: NOW,
        random: counter(),
        options: { leadMs: 0, intervalMs: 20, budgetMs: 1500 },
      }),
    );
    assert.equal(plan.startAtMs, NOW);
    assert.equal(plan.client.intervalMs, 20);
    assert.equal(plan.agent.budgetMs, 1500);
    assert.equal(plan.deadlineAtMs, NOW + 1500);
  });

  test('no NAT on one side is just another stable endpoint', () => {
    const nat: NatClassification = { type: 'no-nat', publicEndpoint: ep('192.0.2.50', 443), filtering: 'unknown', destinations: 2 };
    const plan = viable(planPunch({ client: clientAt(cone(ep('198.51.100.2', 50_000))), agent: agentAt(nat, [ep('192.0.2.50', 443)]), nowMs: NOW, random: counter() }));
    assert.deepEqual(targets(plan, 'client'), ['public 192.0.2.50:443']);
    assert.equal(plan.strategy, 'public');
  });

  test('cone / random: the random side aims at the stable endpoint, the cone side opens its filter first', () => {
    for (const filtering of ['unknown', 'address-dependent', 'endpoint-independent'] as const) {
      const plan = viable(planPunch({ client: clientAt(cone(ep('198.51.100.2', 50_000), filtering)), agent: agentAt(random(ep('203.0.113.2', 41_234))), nowMs: NOW, random: counter() }));
      assert.equal(plan.strategy, 'reach-stable');
      assert.equal(plan.firstSender, 'client');
      assert.deepEqual(targets(plan, 'agent'), ['public 198.51.100.2:50000']);
      // The cone side sends towards the random side's address (its port is a guess) to open an address filter;
      // it answers whatever arrives.
      assert.deepEqual(targets(plan, 'client'), ['filter-opener 203.0.113.2:41234']);
      assert.equal(plan.client.initialDelayMs, 0);
      assert.equal(plan.agent.initialDelayMs, 25);
    }
  });

  test('random / cone is symmetric in roles', () => {
    const plan = viable(planPunch({ client: clientAt(random(ep('198.51.100.2', 1111))), agent: agentAt(cone(ep('203.0.113.2', 60_000), 'unknown')), nowMs: NOW, random: counter() }));
    assert.equal(plan.firstSender, 'agent');
    assert.equal(plan.client.initialDelayMs, 25);
    assert.deepEqual(targets(plan, 'client'), ['public 203.0.113.2:60000']);
  });

  test('cone known to filter by address and port / random: not viable', () => {
    const result = planPunch({ client: clientAt(cone(ep('198.51.100.2', 50_000))), agent: agentAt(random(ep('203.0.113.2', 41_234))), nowMs: NOW, random: counter() });
    assert.deepEqual([result.viable, !result.viable && result.reason], [false, 'PortRestrictedVsRandom']);
  });

  test('cone / predictable: the cone side sends to last + k·delta, the predictable side to the cone', () => {
    const plan = viable(planPunch({ client: clientAt(cone(ep('198.51.100.2', 50_000))), agent: agentAt(predictable(ep('203.0.113.2', 41_003), 2)), nowMs: NOW, random: counter(), options: { maxPredictedPorts: 4 } }));
    assert.equal(plan.strategy, 'predicted');
    assert.deepEqual(targets(plan, 'client'), ['predicted 203.0.113.2:41005', 'predicted 203.0.113.2:41007', 'predicted 203.0.113.2:41009', 'predicted 203.0.113.2:41011']);
    assert.deepEqual(targets(plan, 'agent'), ['public 198.51.100.2:50000']);
  });

  test('predicted ports stay in 1..65535 and are capped', () => {
    const plan = viable(planPunch({ client: clientAt(cone(ep('198.51.100.2', 50_000))), agent: agentAt(predictable(ep('203.0.113.2', 65_532), 1)), nowMs: NOW, random: counter() }));
    assert.deepEqual(targets(plan, 'client'), ['predicted 203.0.113.2:65533', 'predicted 203.0.113.2:65534', 'predicted 203.0.113.2:65535']);
    const many = viable(planPunch({ client: clientAt(cone(ep('198.51.100.2', 50_000))), agent: agentAt(predictable(ep('203.0.113.2', 1000), 3)), nowMs: NOW, random: counter(), options: { maxPredictedPorts: 100, maxCandidates: 5 } }));
    assert.equal(many.client.candidates.length, 5);
  });

  test('predictable / predictable: lockstep on both sides', () => {
    const plan = viable(planPunch({ client: clientAt(predictable(ep('198.51.100.2', 40_000), 1)), agent: agentAt(predictable(ep('203.0.113.2', 41_000), -1)), nowMs: NOW, random: counter(), options: { maxPredictedPorts: 3 } }));
    assert.equal(plan.strategy, 'lockstep');
    assert.deepEqual(targets(plan, 'client'), ['predicted 203.0.113.2:40999', 'predicted 203.0.113.2:40998', 'predicted 203.0.113.2:40997']);
    assert.deepEqual(targets(plan, 'agent'), ['predicted 198.51.100.2:40001', 'predicted 198.51.100.2:40002', 'predicted 198.51.100.2:40003']);
  });

  const notViable: [string, NatClassification, NatClassification, string][] = [
    ['symmetric / symmetric', random(ep('198.51.100.2', 1234)), random(ep('203.0.113.2', 4321)), 'BothSymmetric'],
    ['random / predictable', random(ep('198.51.100.2', 1234)), predictable(ep('203.0.113.2', 4321), 1), 'BothSymmetric'],
    ['UDP blocked on one side', cone(ep('198.51.100.2', 50_000)), { type: 'unknown', reason: 'NoResponses', filtering: 'unknown', destinations: 0 }, 'UdpBlocked'],
    [
      'too few destinations answered',
      cone(ep('198.51.100.2', 50_000)),
      { type: 'unknown', reason: 'TooFewDestinations', publicEndpoint: ep('203.0.113.2', 1), filtering: 'unknown', destinations: 1 },
      'UnknownNatType',
    ],
    ['IPv4 / IPv6', cone(ep('198.51.100.2', 50_000)), cone(ep('2001:db8::2', 60_000)), 'NoCommonAddressFamily'],
  ];
  for (const [name, c, a, reason] of notViable) {
    test(`${name}: not viable, ${reason}`, () => {
      let drawn = 0;
      const result = planPunch({ client: clientAt(c), agent: agentAt(a), nowMs: NOW, random: (n) => {
        drawn += n;
        return new Uint8Array(n);
      } });
      assert.equal(result.viable, false);
      assert.equal(!result.viable && result.reason, reason);
      assert.ok(!result.viable && result.message.length > 0);
      assert.equal(drawn, 0, 'no key material is drawn for a plan that is not made');
    });
  }

  test('same LAN (one public address): local candidates first, then the public ones', () => {
    const plan = viable(
      planPunch({
        client: clientAt(cone(ep('198.51.100.2', 50_000)), [ep('10.1.0.2', 50_000), ep('2001:db8:1::2', 50_000)]),
        agent: agentAt(cone(ep('198.51.100.2', 50_001)), [ep('10.1.0.3', 50_000), ep('192.168.9.3', 50_000)]),
        nowMs: NOW,
        random: counter(),
      }),
    );
    assert.equal(plan.sameLan, true);
    assert.equal(plan.strategy, 'public');
    assert.deepEqual(targets(plan, 'client'), ['lan 10.1.0.3:50000', 'lan 192.168.9.3:50000', 'public 198.51.100.2:50001']);
    // The IPv6 local address is left out for an IPv4 sender.
    assert.deepEqual(targets(plan, 'agent'), ['lan 10.1.0.2:50000', 'public 198.51.100.2:50000']);
  });

  test('same LAN behind a symmetric NAT: viable on the LAN candidates alone', () => {
    const plan = viable(planPunch({ client: clientAt(random(ep('198.51.100.2', 1234)), [ep('10.1.0.2', 50_000)]), agent: agentAt(random(ep('198.51.100.2', 4321)), [ep('10.1.0.3', 50_000)]), nowMs: NOW, random: counter() }));
    assert.equal(plan.strategy, 'lan');
    assert.deepEqual(targets(plan, 'client'), ['lan 10.1.0.3:50000']);
    assert.deepEqual(targets(plan, 'agent'), ['lan 10.1.0.2:50000']);
  });

  test('same LAN: a public or loopback "local endpoint" a peer reports is never planned as a LAN candidate (issue 10)', () => {
    const plan = viable(
      planPunch({
        client: clientAt(cone(ep('198.51.100.2', 50_000)), [ep('8.8.8.8', 53), ep('127.0.0.1', 6379), ep('10.1.0.2', 50_000), ep('224.0.0.251', 5353)]),
        agent: agentAt(cone(ep('198.51.100.2', 50_001)), [ep('10.1.0.3', 50_000)]),
        nowMs: NOW,
        random: counter(),
      }),
    );
    assert.deepEqual(targets(plan, 'agent'), ['lan 10.1.0.2:50000', 'public 198.51.100.2:50000']);
    // Only public garbage left: no LAN, so a symmetric pair is not viable on it.
    const none = planPunch({
      client: clientAt(random(ep('198.51.100.2', 1234)), [ep('8.8.8.8', 53)]),
      agent: agentAt(random(ep('198.51.100.2', 4321)), [ep('10.1.0.3', 50_000)]),
      nowMs: NOW,
      random: counter(),
    });
    assert.equal(none.viable, false);
    // Loopback towards a peer that is itself on loopback (the local stack: every process on one host).
    const local = viable(
      planPunch({
        client: clientAt(cone(ep('127.0.0.1', 50_000)), [ep('127.0.0.1', 50_000)]),
        agent: agentAt(cone(ep('127.0.0.1', 50_001)), [ep('127.0.0.1', 50_001), ep('10.1.0.3', 50_001)]),
        nowMs: NOW,
        random: counter(),
      }),
    );
    assert.deepEqual(targets(local, 'agent'), ['lan 127.0.0.1:50000']);
  });

  test('invalid input is NL_ERR_NAT_INVALID_INPUT', () => {
    const invalid = (e: unknown) => e instanceof NatError && e.code === ErrorCode.NAT_INVALID_INPUT;
    const c = clientAt(cone(ep('198.51.100.2', 50_000)));
    const a = agentAt(cone(ep('203.0.113.2', 60_000)));
    assert.throws(() => planPunch({ client: { ...c, certFingerprint: FP_CLIENT.toUpperCase() }, agent: a, nowMs: NOW, random: counter() }), invalid);
    assert.throws(() => planPunch({ client: c, agent: { ...a, certFingerprint: 'abc' }, nowMs: NOW, random: counter() }), invalid);
    assert.throws(() => planPunch({ client: c, agent: a, nowMs: NOW, random: () => new Uint8Array(3) }), invalid);
    assert.throws(() => planPunch({ client: c, agent: a, nowMs: Number.NaN, random: counter() }), invalid);
    assert.throws(() => planPunch({ client: c, agent: a, nowMs: NOW, random: counter(), options: { intervalMs: 0 } }), invalid);
    assert.throws(() => planPunch({ client: { ...c, localEndpoints: [ep('10.1.0.2', 0)] }, agent: a, nowMs: NOW, random: counter() }), invalid);
  });

  test('certificateFingerprint is sha256 hex of the DER bytes', () => {
    assert.equal(certificateFingerprint(new Uint8Array(0)), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});
