import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type GatewayStatusConfigMap, presenceOf } from './presence.ts';

const NOW = Date.parse('2026-11-25T12:00:00Z');

function lease(name: string, renewedAgoMs: number, agents: unknown, durationSeconds = 30): GatewayStatusConfigMap {
  return {
    metadata: {
      name,
      annotations: {
        'narrowlink.io/agents': typeof agents === 'string' ? agents : JSON.stringify(agents),
        'narrowlink.io/renew-time': new Date(NOW - renewedAgoMs).toISOString(),
        'narrowlink.io/lease-duration-seconds': String(durationSeconds),
      },
    },
  };
}

describe('presenceOf', () => {
  test('sums instances over live replicas and reports the earliest expiry', () => {
    const out = presenceOf('shop/orders', [lease('a', 1000, { 'shop/orders': { instances: 2 } }), lease('b', 5000, { 'shop/orders': { instances: 1, nat: 'endpoint-independent' } })], NOW);
    assert.deepEqual(out, { instances: 3, nat: 'endpoint-independent', expiresAtMs: NOW - 5000 + 30_000 });
  });

  test('direct paths add up over replicas; nonsense counts are ignored', () => {
    const out = presenceOf(
      'shop/orders',
      [lease('a', 0, { 'shop/orders': { instances: 1, directPaths: 2 } }), lease('b', 0, { 'shop/orders': { instances: 1, directPaths: 3 } }), lease('c', 0, { 'shop/orders': { instances: 1, directPaths: -4 } })],
      NOW,
    );
    assert.equal(out.directPaths, 5);
    assert.equal(presenceOf('shop/orders', [lease('a', 0, { 'shop/orders': { instances: 1 } })], NOW).directPaths, undefined);
  });

  test('an expired Lease (a replica that died) does not count', () => {
    assert.deepEqual(presenceOf('shop/orders', [lease('dead', 31_000, { 'shop/orders': { instances: 4 } })], NOW), { instances: 0 });
  });

  test('other agents, zero or malformed entries and malformed annotations count as absent', () => {
    const leases = [lease('a', 0, { 'shop/web': { instances: 1 } }), lease('b', 0, { 'shop/orders': { instances: 0 } }), lease('c', 0, '{not json'), lease('d', 0, '[1,2]'), lease('e', 0, { 'shop/orders': { instances: 'many' } })];
    assert.deepEqual(presenceOf('shop/orders', leases, NOW), { instances: 0 });
  });

  test('one without a renew time does not count', () => {
    assert.deepEqual(presenceOf('shop/orders', [{ metadata: { annotations: { 'narrowlink.io/agents': '{"shop/orders":{"instances":1}}' } } }], NOW), { instances: 0 });
  });
});
