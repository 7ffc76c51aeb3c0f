import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type Endpoint, ErrorCode, type NatProbeInfo, type NatReport, NatError, type ProbeObservation } from '@narrowlink/protocol';
import { MAX_NAT_REPORTS, NatRegistry, natStatusMessage, type NatProbePorts } from './nat-registry.ts';

/** The probe ports as the registry sees them: the test decides what each session's probes "looked like". */
class FakeProbe implements NatProbePorts {
  readonly seen = new Map<string, ProbeObservation[]>();
  readonly registered = new Map<string, number>();
  readonly unregistered: string[] = [];
  register(sessionId: string): NatProbeInfo {
    const round = (this.registered.get(sessionId) ?? 0) + 1;
    this.registered.set(sessionId, round);
    return { type: 'nat_probe_info', key: Buffer.alloc(32, round).toString('base64'), endpoints: [{ index: 0, address: '192.0.2.1', port: 3478 }] };
  }
  unregister(sessionId: string): void {
    this.unregistered.push(sessionId);
    this.registered.delete(sessionId);
  }
  has(sessionId: string): boolean {
    return this.registered.has(sessionId);
  }
  observations(sessionId: string): ProbeObservation[] {
    return this.seen.get(sessionId) ?? [];
  }
}

const LOCAL: Endpoint = { address: '192.168.1.10', port: 50_000 };
const CONE: ProbeObservation[] = [
  { target: 0, mapped: { address: '203.0.113.10', port: 61_000 }, seq: 1 },
  { target: 1, mapped: { address: '203.0.113.10', port: 61_000 }, seq: 2 },
];
const PREDICTABLE: ProbeObservation[] = [
  { target: 0, mapped: { address: '203.0.113.10', port: 40_001 }, seq: 1 },
  { target: 1, mapped: { address: '203.0.113.10', port: 40_003 }, seq: 2 },
];
const FP = 'c'.repeat(64);
const report = (extra: Partial<NatReport> = {}): NatReport => ({ type: 'nat_report', localEndpoints: [LOCAL], ...extra });

function setup() {
  const probe = new FakeProbe();
  const clock = { now: 1_000 };
  const nat = new NatRegistry({ probe, now: () => clock.now });
  return { probe, clock, nat };
}

describe('NatRegistry', () => {
  test('without probe ports nothing is registered, classified or reprobed', () => {
    const nat = new NatRegistry({ now: () => 0 });
    assert.equal(nat.probing, false);
    assert.equal(nat.register('s1'), undefined);
    assert.equal(nat.report('s1', report()), undefined);
    assert.equal(nat.reprobe('s1'), undefined);
    assert.equal(nat.get('s1'), undefined);
    nat.forget('s1');
  });

  test('a report from a session that was never asked to probe is ignored', () => {
    const { probe, nat } = setup();
    assert.equal(nat.probing, true);
    probe.seen.set('s1', CONE);
    assert.equal(nat.report('s1', report()), undefined);
    assert.equal(nat.get('s1'), undefined);
  });

  test('a report classifies from the observations and the report; get returns the record without counters', () => {
    const { probe, clock, nat } = setup();
    const info = nat.register('s1');
    assert.equal(info?.type, 'nat_probe_info');
    probe.seen.set('s1', CONE);
    clock.now = 5_000;
    const classification = nat.report('s1', report({ filtering: { changePort: { sent: 2, received: 2 } }, certFingerprint: FP }));
    assert.equal(classification?.type, 'endpoint-independent');
    assert.deepEqual(nat.get('s1'), { classification, localEndpoints: [LOCAL], atMs: 5_000, certFingerprint: FP });
    // Without a fingerprint the field is absent, not undefined.
    nat.report('s1', report());
    assert.deepEqual(Object.keys(nat.get('s1') ?? {}).sort(), ['atMs', 'classification', 'localEndpoints']);
  });

  test(`at most ${MAX_NAT_REPORTS} reports per session are classified; later ones are ignored`, () => {
    const { probe, clock, nat } = setup();
    nat.register('s1');
    probe.seen.set('s1', CONE);
    for (let i = 0; i < MAX_NAT_REPORTS; i++) {
      clock.now = i;
      assert.ok(nat.report('s1', report()), `report ${i + 1}`);
    }
    probe.seen.set('s1', PREDICTABLE);
    clock.now = 99;
    assert.equal(nat.report('s1', report()), undefined);
    assert.equal(nat.get('s1')?.classification.type, 'endpoint-independent');
    assert.equal(nat.get('s1')?.atMs, MAX_NAT_REPORTS - 1);
  });

  test('a report the classifier rejects throws and leaves the record as it was', () => {
    const { probe, nat } = setup();
    nat.register('s1');
    probe.seen.set('s1', CONE);
    const first = nat.get('s1');
    assert.equal(first, undefined);
    nat.report('s1', report());
    const before = nat.get('s1');
    assert.throws(
      () => nat.report('s1', report({ localEndpoints: [{ address: 'not-an-ip', port: 1 }] })),
      (error: unknown) => error instanceof NatError && error.code === ErrorCode.NAT_INVALID_INPUT,
    );
    assert.deepEqual(nat.get('s1'), before);
  });

  test(`reprobe re-registers a classified session (a new key), at most ${MAX_NAT_REPORTS} times; the old classification stays`, () => {
    const { probe, nat } = setup();
    assert.equal(nat.reprobe('s1'), undefined, 'not probed');
    nat.register('s1');
    assert.equal(nat.reprobe('s1'), undefined, 'not classified yet');
    probe.seen.set('s1', CONE);
    nat.report('s1', report());
    const keys = new Set<string>();
    for (let i = 0; i < MAX_NAT_REPORTS; i++) {
      const info = nat.reprobe('s1');
      assert.ok(info, `reprobe ${i + 1}`);
      keys.add(info.key);
    }
    assert.equal(keys.size, MAX_NAT_REPORTS, 'each reprobe is a fresh registration');
    assert.equal(probe.registered.get('s1'), MAX_NAT_REPORTS + 1);
    assert.equal(nat.reprobe('s1'), undefined, 'budget spent');
    assert.equal(nat.get('s1')?.classification.type, 'endpoint-independent');
  });

  test('latestType: the NAT type classified last among the sessions', () => {
    const { probe, clock, nat } = setup();
    for (const [id, observations, at] of [
      ['a', CONE, 10],
      ['b', PREDICTABLE, 20],
    ] as const) {
      nat.register(id);
      probe.seen.set(id, [...observations]);
      clock.now = at;
      nat.report(id, report());
    }
    assert.equal(nat.latestType(['a', 'b']), 'endpoint-dependent-predictable');
    assert.equal(nat.latestType(['a', 'nobody']), 'endpoint-independent');
    assert.equal(nat.latestType(['nobody']), undefined);
  });

  test('forget drops the probe registration and the classification', () => {
    const { probe, nat } = setup();
    nat.register('s1');
    probe.seen.set('s1', CONE);
    nat.report('s1', report());
    nat.forget('s1');
    assert.deepEqual(probe.unregistered, ['s1']);
    assert.equal(nat.get('s1'), undefined);
    assert.equal(nat.reprobe('s1'), undefined);
  });
});

describe('natStatusMessage', () => {
  test('carries the fields of each classification type', () => {
    const { probe, nat } = setup();
    nat.register('cone');
    probe.seen.set('cone', CONE);
    const cone = nat.report('cone', report({ filtering: { changePort: { sent: 2, received: 2 } } }));
    assert.ok(cone);
    assert.deepEqual(natStatusMessage(cone), {
      type: 'nat_status',
      natType: 'endpoint-independent',
      filtering: 'address-dependent',
      destinations: 2,
      publicEndpoint: { address: '203.0.113.10', port: 61_000 },
      portPreserving: false,
    });
    nat.register('pred');
    probe.seen.set('pred', PREDICTABLE);
    const predictable = nat.report('pred', report());
    assert.ok(predictable);
    assert.deepEqual(natStatusMessage(predictable), {
      type: 'nat_status',
      natType: 'endpoint-dependent-predictable',
      filtering: 'unknown',
      destinations: 2,
      publicEndpoint: { address: '203.0.113.10', port: 40_003 },
      delta: 2,
    });
    nat.register('blocked');
    const blocked = nat.report('blocked', report());
    assert.ok(blocked);
    assert.deepEqual(natStatusMessage(blocked), { type: 'nat_status', natType: 'unknown', filtering: 'unknown', destinations: 0, reason: 'NoResponses' });
  });
});
