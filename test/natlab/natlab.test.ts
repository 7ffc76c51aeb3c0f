/**
 * NAT probing through real Linux NATs (network namespaces, iptables MASQUERADE with home-router inbound
 * filtering; see lab.ts). The gateway runs in `pub` on 192.0.2.1 (TLS listener + UDP probe ports), peers run
 * behind the routers; what they report is what the kernel's NAT did. Needs root: without it (or without
 * network namespaces) every test is skipped with a printed reason, never passed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test, type TestContext } from 'node:test';
import { type NatClassification, planPunch } from '@narrowlink/protocol';
import { LAB, labAvailable } from './lab.ts';
import { LabStack, metricValue, SCRIPTS } from './stack.ts';

const availability = await labAvailable();
const skipReason = availability === true ? undefined : availability.skipped;
if (skipReason) process.stderr.write(`nat lab: SKIPPED (${skipReason})\n`);

/** Skips the test (reported as skipped, never as passed) when the lab cannot run here. */
function skipped(t: TestContext): boolean {
  if (!skipReason) return false;
  t.skip(`nat lab: SKIPPED (${skipReason})`);
  return true;
}

/** What `narrowlink status -o json` prints under `nat`. */
interface StatusNat {
  natType: NatClassification['type'];
  filtering: NatClassification['filtering'];
  destinations: number;
  portPreserving?: boolean;
  delta?: number;
  reason?: string;
  publicEndpoint?: { address: string; port: number };
  localEndpoints: { address: string; port: number }[];
  measuredInMs: number;
}

/** Rebuilds the classification the gateway made from what it told the peer (for planPunch). */
function classification(nat: StatusNat): NatClassification {
  const common = { filtering: nat.filtering, destinations: nat.destinations };
  const pub = nat.publicEndpoint as { address: string; port: number };
  switch (nat.natType) {
    case 'no-nat':
      return { ...common, type: 'no-nat', publicEndpoint: pub };
    case 'endpoint-independent':
      return { ...common, type: 'endpoint-independent', publicEndpoint: pub, portPreserving: nat.portPreserving ?? false };
    case 'endpoint-dependent-predictable':
      return { ...common, type: 'endpoint-dependent-predictable', publicEndpoint: pub, delta: nat.delta ?? 0, deltaSamples: 1, confidence: 'low' };
    case 'endpoint-dependent-random':
      return { ...common, type: 'endpoint-dependent-random', publicEndpoint: pub };
    case 'unknown':
      return { ...common, type: 'unknown', reason: (nat.reason ?? 'NoResponses') as 'NoResponses', ...(nat.publicEndpoint ? { publicEndpoint: pub } : {}) };
  }
}

const FINGERPRINT_A = 'a'.repeat(64);
const FINGERPRINT_B = 'b'.repeat(64);

describe('nat lab: MASQUERADE on both routers (cone), h1b on h1 LAN, second gateway address', { timeout: 60_000 }, () => {
  const stack = new LabStack();
  before(async () => {
    if (!skipReason) await stack.start({ nat1: 'masquerade', nat2: 'masquerade', h1b: true, secondGatewayAddress: true });
  });
  after(() => stack.stop());

  test('peers behind both routers: endpoint-independent, port-preserving, the NAT outside address; h1b shares h1 public address', async (t) => {
    if (skipped(t)) return;
    const [h1, h1b, h2] = await Promise.all([stack.status('h1'), stack.status('h1b'), stack.status('h2')]);
    for (const [host, { status, tookMs }, outside, local] of [
      ['h1', h1, LAB.nat1Outside, LAB.h1],
      ['h1b', h1b, LAB.nat1Outside, LAB.h1b],
      ['h2', h2, LAB.nat2Outside, LAB.h2],
    ] as const) {
      const nat = status.nat as StatusNat;
      t.diagnostic(`${host}: ${JSON.stringify(nat)}; status command ${Math.round(tookMs)} ms`);
      assert.ok(nat, `${host} got a classification`);
      assert.equal(nat.natType, 'endpoint-independent', host);
      assert.equal(nat.portPreserving, true, host);
      assert.equal(nat.destinations, 4, `${host}: all four probe endpoints answered`);
      const localPort = nat.localEndpoints.find((e) => e.address === local)?.port;
      assert.ok(localPort, `${host} reported its LAN address ${local}: ${JSON.stringify(nat.localEndpoints)}`);
      assert.deepEqual(nat.publicEndpoint, { address: outside, port: localPort }, host);
      // conntrack + drop-NEW: answers from another port or address of the gateway never get in.
      assert.equal(nat.filtering, 'address-and-port-dependent', host);
      assert.ok(nat.measuredInMs < 1000, `${host}: probe info to classification took ${nat.measuredInMs} ms`);
    }
    // Two hosts behind one NAT: the plan puts their LAN endpoints first.
    const a = h1.status.nat as StatusNat;
    const b = h1b.status.nat as StatusNat;
    assert.equal(a.publicEndpoint?.address, b.publicEndpoint?.address);
    const plan = planPunch({
      client: { nat: classification(a), localEndpoints: a.localEndpoints, certFingerprint: FINGERPRINT_A },
      agent: { nat: classification(b), localEndpoints: b.localEndpoints, certFingerprint: FINGERPRINT_B },
      nowMs: 0,
      random: (n) => new Uint8Array(n).fill(1),
    });
    assert.ok(plan.viable);
    assert.equal(plan.sameLan, true);
    assert.deepEqual(plan.client.candidates[0]?.endpoint, b.localEndpoints.find((e) => e.address === LAB.h1b));
    // Across the two routers: both stable, aimed at each other's public endpoint.
    const c = h2.status.nat as StatusNat;
    const across = planPunch({
      client: { nat: classification(a), localEndpoints: a.localEndpoints, certFingerprint: FINGERPRINT_A },
      agent: { nat: classification(c), localEndpoints: c.localEndpoints, certFingerprint: FINGERPRINT_B },
      nowMs: 0,
      random: (n) => new Uint8Array(n).fill(2),
    });
    assert.ok(across.viable);
    assert.equal(across.strategy, 'public');
  });

  test("an agent in h2 is classified by the gateway; the classification is counted in the gateway's metrics", async (t) => {
    if (skipped(t)) return;
    const before = metricValue(await stack.metrics(), 'narrowlink_gateway_nat_classifications_total', 'type="endpoint-independent"');
    const agent = stack.lab.spawnNode('h2', [SCRIPTS.peer, '--gateway', stack.url, '--token', stack.agentToken, '--ca-file', stack.caFile, '--role', 'agent'], stack.env);
    try {
      const open = await agent.waitFor((l) => l.event === 'open', 15_000);
      const nat = await agent.waitFor((l) => l.event === 'nat', 5000);
      t.diagnostic(`agent in h2: ${JSON.stringify(nat)}`);
      assert.equal(nat.natType, 'endpoint-independent');
      assert.deepEqual(nat.publicEndpoint, { address: LAB.nat2Outside, port: open.localPort });
      const after = metricValue(await stack.metrics(), 'narrowlink_gateway_nat_classifications_total', 'type="endpoint-independent"');
      assert.equal(after, before + 1);
      const answered = metricValue(await stack.metrics(), 'narrowlink_gateway_nat_probes_total', 'result="answered"');
      assert.ok(answered >= 4, `answered probes: ${answered}`);
    } finally {
      await agent.stop();
    }
  });
});

describe('nat lab: MASQUERADE --random-fully on nat2 (symmetric)', { timeout: 60_000 }, () => {
  const stack = new LabStack();
  before(async () => {
    if (!skipReason) await stack.start({ nat1: 'masquerade', nat2: 'random-fully', secondGatewayAddress: true });
  });
  after(() => stack.stop());

  test('h2 maps per destination (not endpoint-independent); h1 stays cone; punching them is not viable', async (t) => {
    if (skipped(t)) return;
    const [h1, h2] = await Promise.all([stack.status('h1'), stack.status('h2')]);
    const a = h1.status.nat as StatusNat;
    const b = h2.status.nat as StatusNat;
    t.diagnostic(`h1: ${JSON.stringify(a)}`);
    t.diagnostic(`h2 (--random-fully): ${JSON.stringify(b)}`);
    t.diagnostic(`nat2 conntrack (UDP): ${(await stack.lab.conntrackList('nat2')).trim().replaceAll('\n', ' | ')}`);
    assert.equal(a.natType, 'endpoint-independent');
    assert.ok(b, 'h2 got a classification');
    assert.notEqual(b.natType, 'endpoint-independent');
    assert.ok(['endpoint-dependent-random', 'endpoint-dependent-predictable'].includes(b.natType), b.natType);
    assert.equal(b.publicEndpoint?.address, LAB.nat2Outside);
    assert.equal(b.destinations, 4);
    const plan = planPunch({
      client: { nat: classification(a), localEndpoints: a.localEndpoints, certFingerprint: FINGERPRINT_A },
      agent: { nat: classification(b), localEndpoints: b.localEndpoints, certFingerprint: FINGERPRINT_B },
      nowMs: 0,
      random: (n) => new Uint8Array(n).fill(3),
    });
    if (b.natType === 'endpoint-dependent-random') {
      assert.equal(plan.viable, false);
      assert.equal(!plan.viable && plan.reason, 'PortRestrictedVsRandom');
    }
  });
});

describe('nat lab: UDP blocked on nat1', { timeout: 60_000 }, () => {
  const stack = new LabStack();
  before(async () => {
    if (!skipReason) await stack.start({ nat1: 'udp-blocked', nat2: 'masquerade' });
  });
  after(() => stack.stop());

  test('h1 is unknown/NoResponses within a bounded time; its session works; h2 is unaffected', async (t) => {
    if (skipped(t)) return;
    const [h1, h2] = await Promise.all([stack.status('h1'), stack.status('h2')]);
    const a = h1.status.nat as StatusNat;
    t.diagnostic(`h1 (UDP blocked): ${JSON.stringify(a)}; status command ${Math.round(h1.tookMs)} ms`);
    assert.equal(h1.status.state, 'open', 'the relay session itself is fine');
    assert.ok(a, 'h1 got a classification');
    assert.equal(a.natType, 'unknown');
    assert.equal(a.reason, 'NoResponses');
    assert.equal(a.destinations, 0);
    assert.ok(a.measuredInMs < 3000, `probing gave up after ${a.measuredInMs} ms`);
    assert.ok(h1.tookMs < 8000, `status took ${Math.round(h1.tookMs)} ms`);
    assert.equal((h2.status.nat as StatusNat).natType, 'endpoint-independent');
    const plan = planPunch({
      client: { nat: classification(a), localEndpoints: a.localEndpoints, certFingerprint: FINGERPRINT_A },
      agent: { nat: classification(h2.status.nat as StatusNat), localEndpoints: (h2.status.nat as StatusNat).localEndpoints, certFingerprint: FINGERPRINT_B },
      nowMs: 0,
      random: (n) => new Uint8Array(n).fill(4),
    });
    assert.equal(!plan.viable && plan.reason, 'UdpBlocked');
  });
});
