import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, NatError } from '../errors.ts';
import { type ClassifyInput, classifyNat, type NatClassification, type ProbeObservation } from './classify.ts';
import type { Endpoint } from './endpoint.ts';
import { MASQUERADE, RANDOM_FULLY, SimNetwork, SimPeer, SimProbeServer, type SimNatBehavior } from './nat-sim.testkit.ts';

const LOCAL: Endpoint[] = [{ address: '10.1.0.2', port: 50_000 }];
const PUB = '198.51.100.2';

/** Observations in probe order: one per target 0..n-1 with the given mapped ports. */
function seen(ports: number[], address = PUB): ProbeObservation[] {
  return ports.map((port, i) => ({ target: i, seq: i + 1, mapped: { address, port } }));
}

function pick(c: NatClassification): Record<string, unknown> {
  const { filtering: _f, destinations: _d, ...rest } = c;
  return rest;
}

describe('classifyNat: mapping', () => {
  const table: [string, ClassifyInput, Record<string, unknown>][] = [
    ['no responses at all (UDP blocked)', { observations: [], localEndpoints: LOCAL }, { type: 'unknown', reason: 'NoResponses' }],
    [
      'mapped equals the local endpoint: no NAT',
      { observations: seen([50_000, 50_000], '10.1.0.2'), localEndpoints: LOCAL },
      { type: 'no-nat', publicEndpoint: { address: '10.1.0.2', port: 50_000 } },
    ],
    [
      'no NAT is visible from one destination already',
      { observations: seen([50_000], '10.1.0.2'), localEndpoints: LOCAL },
      { type: 'no-nat', publicEndpoint: { address: '10.1.0.2', port: 50_000 } },
    ],
    [
      'MASQUERADE default: same mapping for both ports, port kept',
      { observations: seen([50_000, 50_000]), localEndpoints: LOCAL },
      { type: 'endpoint-independent', publicEndpoint: { address: PUB, port: 50_000 }, portPreserving: true },
    ],
    [
      'cone that rewrites the port',
      { observations: seen([31_337, 31_337, 31_337, 31_337]), localEndpoints: LOCAL },
      { type: 'endpoint-independent', publicEndpoint: { address: PUB, port: 31_337 }, portPreserving: false },
    ],
    [
      'one destination only: cone and symmetric look alike',
      { observations: seen([50_000]), localEndpoints: LOCAL },
      { type: 'unknown', reason: 'TooFewDestinations', publicEndpoint: { address: PUB, port: 50_000 } },
    ],
    [
      'two destinations, delta +1: predictable, low confidence',
      { observations: seen([40_000, 40_001]), localEndpoints: LOCAL },
      { type: 'endpoint-dependent-predictable', publicEndpoint: { address: PUB, port: 40_001 }, delta: 1, deltaSamples: 1, confidence: 'low' },
    ],
    [
      'three destinations, delta +2: medium confidence',
      { observations: seen([40_000, 40_002, 40_004]), localEndpoints: LOCAL },
      { type: 'endpoint-dependent-predictable', publicEndpoint: { address: PUB, port: 40_004 }, delta: 2, deltaSamples: 2, confidence: 'medium' },
    ],
    [
      'four destinations, delta -1: high confidence',
      { observations: seen([40_003, 40_002, 40_001, 40_000]), localEndpoints: LOCAL },
      { type: 'endpoint-dependent-predictable', publicEndpoint: { address: PUB, port: 40_000 }, delta: -1, deltaSamples: 3, confidence: 'high' },
    ],
    [
      'a constant large delta is believed from two samples',
      { observations: seen([10_000, 10_500, 11_000]), localEndpoints: LOCAL },
      { type: 'endpoint-dependent-predictable', publicEndpoint: { address: PUB, port: 11_000 }, delta: 500, deltaSamples: 2, confidence: 'medium' },
    ],
    [
      'two destinations, a large delta: random (--random-fully)',
      { observations: seen([23_871, 61_002]), localEndpoints: LOCAL },
      { type: 'endpoint-dependent-random', publicEndpoint: { address: PUB, port: 61_002 } },
    ],
    [
      'deltas that disagree: random',
      { observations: seen([40_000, 40_001, 40_003, 40_004]), localEndpoints: LOCAL },
      { type: 'endpoint-dependent-random', publicEndpoint: { address: PUB, port: 40_004 } },
    ],
    [
      'a different public address per destination: random',
      {
        observations: [
          { target: 0, seq: 1, mapped: { address: PUB, port: 40_000 } },
          { target: 1, seq: 2, mapped: { address: '198.51.100.3', port: 40_001 } },
        ],
        localEndpoints: LOCAL,
      },
      { type: 'endpoint-dependent-random', publicEndpoint: { address: '198.51.100.3', port: 40_001 } },
    ],
    [
      'one destination, two different mappings: unstable',
      {
        observations: [
          { target: 0, seq: 1, mapped: { address: PUB, port: 50_000 } },
          { target: 1, seq: 2, mapped: { address: PUB, port: 50_000 } },
          { target: 0, seq: 3, mapped: { address: PUB, port: 50_001 } },
        ],
        localEndpoints: LOCAL,
      },
      { type: 'unknown', reason: 'UnstableMapping', publicEndpoint: { address: PUB, port: 50_000 } },
    ],
  ];
  for (const [name, input, expected] of table) test(name, () => assert.deepEqual(pick(classifyNat(input)), expected));

  test('order is the probe order (seq), not the order observations were recorded in', () => {
    const observations: ProbeObservation[] = [
      { target: 2, seq: 3, mapped: { address: PUB, port: 40_004 } },
      { target: 0, seq: 1, mapped: { address: PUB, port: 40_000 } },
      { target: 1, seq: 2, mapped: { address: PUB, port: 40_002 } },
      { target: 0, seq: 9, mapped: { address: PUB, port: 40_000 } }, // repeat of a known destination: fine
    ];
    const c = classifyNat({ observations, localEndpoints: LOCAL });
    assert.equal(c.type, 'endpoint-dependent-predictable');
    assert.equal(c.type === 'endpoint-dependent-predictable' && c.delta, 2);
    assert.equal(c.destinations, 3);
  });

  test('addresses are compared in canonical form (IPv4-mapped IPv6 is IPv4)', () => {
    const c = classifyNat({ observations: seen([50_000, 50_000], '::ffff:10.1.0.2'), localEndpoints: LOCAL });
    assert.equal(c.type, 'no-nat');
  });

  test('the single-sample delta limit is configurable', () => {
    assert.equal(classifyNat({ observations: seen([40_000, 40_100]), localEndpoints: LOCAL }).type, 'endpoint-dependent-random');
    assert.equal(classifyNat({ observations: seen([40_000, 40_100]), localEndpoints: LOCAL, maxSingleSampleDelta: 100 }).type, 'endpoint-dependent-predictable');
  });

  test('invalid input is NL_ERR_NAT_INVALID_INPUT', () => {
    const invalid = (e: unknown) => e instanceof NatError && e.code === ErrorCode.NAT_INVALID_INPUT;
    assert.throws(() => classifyNat({ observations: [{ target: 4, seq: 1, mapped: { address: PUB, port: 1 } }], localEndpoints: [] }), invalid);
    assert.throws(() => classifyNat({ observations: [{ target: 0, seq: -1, mapped: { address: PUB, port: 1 } }], localEndpoints: [] }), invalid);
    assert.throws(() => classifyNat({ observations: [{ target: 0, seq: 1, mapped: { address: 'nat', port: 1 } }], localEndpoints: [] }), invalid);
    assert.throws(() => classifyNat({ observations: [], localEndpoints: [{ address: PUB, port: 0 }] }), invalid);
  });
});

describe('classifyNat: filtering', () => {
  const base = { observations: seen([50_000, 50_000]), localEndpoints: LOCAL };
  const table: [string, ClassifyInput['filtering'], string][] = [
    ['not tested', undefined, 'unknown'],
    ['an answer from the other address', { changePort: { sent: 2, received: 0 }, changeAddress: { sent: 2, received: 1 } }, 'endpoint-independent'],
    ['an answer from the other port only', { changePort: { sent: 2, received: 2 }, changeAddress: { sent: 2, received: 0 } }, 'address-dependent'],
    ['an answer from the other port, no second address', { changePort: { sent: 2, received: 1 } }, 'address-dependent'],
    ['no answer from the other port after 2 tries', { changePort: { sent: 2, received: 0 } }, 'address-and-port-dependent'],
    ['one unanswered try is not enough', { changePort: { sent: 1, received: 0 } }, 'unknown'],
  ];
  for (const [name, filtering, expected] of table) test(name, () => assert.equal(classifyNat({ ...base, filtering }).filtering, expected));
});

describe('classifyNat through simulated NATs (probe codec + gateway probe server)', () => {
  const SESSION = new TextEncoder().encode('session-1');
  const KEY = new Uint8Array(32).fill(9);

  function probeThrough(behavior: SimNatBehavior | undefined, secondAddress: boolean, seed = 7): NatClassification {
    const net = new SimNetwork();
    const server = new SimProbeServer(net, secondAddress ? ['192.0.2.1', '192.0.2.2'] : ['192.0.2.1'], [3478, 3479]);
    const nat = behavior ? net.addNat(PUB, behavior, seed) : undefined;
    const address = nat ? '10.1.0.2' : '198.51.100.77';
    const peer = new SimPeer(net, address, 50_000, nat);
    const report = peer.probe(server, SESSION, KEY);
    return classifyNat({ observations: report.observations, localEndpoints: [peer.socket.local], filtering: report.filtering });
  }

  const table: [string, SimNatBehavior | undefined, boolean, Record<string, unknown>, string][] = [
    ['public host', undefined, true, { type: 'no-nat', publicEndpoint: { address: '198.51.100.77', port: 50_000 } }, 'endpoint-independent'],
    // Without a second gateway address, "anyone" and "any port of a known address" cannot be told apart.
    ['public host, one gateway address', undefined, false, { type: 'no-nat', publicEndpoint: { address: '198.51.100.77', port: 50_000 } }, 'address-dependent'],
    [
      'NAT lab default (MASQUERADE + drop NEW)',
      MASQUERADE,
      false,
      { type: 'endpoint-independent', publicEndpoint: { address: PUB, port: 50_000 }, portPreserving: true },
      'address-and-port-dependent',
    ],
    [
      'MASQUERADE, gateway with a second address',
      MASQUERADE,
      true,
      { type: 'endpoint-independent', publicEndpoint: { address: PUB, port: 50_000 }, portPreserving: true },
      'address-and-port-dependent',
    ],
    [
      'full cone',
      { mapping: 'endpoint-independent', filtering: 'endpoint-independent' },
      true,
      { type: 'endpoint-independent', publicEndpoint: { address: PUB, port: 30_000 }, portPreserving: false },
      'endpoint-independent',
    ],
    [
      'address-restricted cone',
      { mapping: 'endpoint-independent', filtering: 'address-dependent', portPreserving: true },
      true,
      { type: 'endpoint-independent', publicEndpoint: { address: PUB, port: 50_000 }, portPreserving: true },
      'address-dependent',
    ],
    [
      'sequential symmetric NAT (+1), 4 destinations',
      { mapping: { delta: 1, start: 41_000 }, filtering: 'address-and-port-dependent' },
      true,
      { type: 'endpoint-dependent-predictable', publicEndpoint: { address: PUB, port: 41_003 }, delta: 1, deltaSamples: 3, confidence: 'high' },
      'address-and-port-dependent',
    ],
    [
      'sequential symmetric NAT (+2), 2 destinations',
      { mapping: { delta: 2, start: 41_000 }, filtering: 'address-and-port-dependent' },
      false,
      { type: 'endpoint-dependent-predictable', publicEndpoint: { address: PUB, port: 41_002 }, delta: 2, deltaSamples: 1, confidence: 'low' },
      'address-and-port-dependent',
    ],
  ];
  for (const [name, behavior, second, expected, filtering] of table) {
    test(name, () => {
      const c = probeThrough(behavior, second);
      assert.deepEqual(pick(c), expected);
      assert.equal(c.filtering, filtering);
    });
  }

  test('MASQUERADE --random-fully is random, over many seeds, with either gateway shape', () => {
    const counts = new Map<string, number>();
    for (let seed = 1; seed <= 200; seed++) {
      const c = probeThrough(RANDOM_FULLY, seed % 2 === 0, seed);
      counts.set(c.type, (counts.get(c.type) ?? 0) + 1);
      assert.equal(c.filtering, 'address-and-port-dependent');
    }
    // A two-destination sample can look like a small delta by chance (|d| ≤ 32 of ~64k ports: ~0.1%).
    assert.ok((counts.get('endpoint-dependent-random') ?? 0) >= 198, JSON.stringify([...counts]));
  });

  test('UDP blocked: unknown, NoResponses', () => {
    const c = probeThrough({ ...MASQUERADE, blockUdp: true }, true);
    assert.deepEqual(pick(c), { type: 'unknown', reason: 'NoResponses' });
  });
});
