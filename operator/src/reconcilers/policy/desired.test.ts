import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AccessPolicy } from '../../crds/access-policy.ts';
import type { DesiredEvent } from '../../events.ts';
import { makePolicy } from '../test-fixtures.ts';
import { desiredPolicyStatus, PolicyConditionReason, type PolicyStatusInput } from './desired.ts';

const NOW = Date.parse('2026-11-25T12:00:00Z');
const NOW_ISO = new Date(NOW).toISOString();

describe('desiredPolicyStatus', () => {
  const cases: Array<{
    name: string;
    input: Omit<PolicyStatusInput, 'nowMs'>;
    ready: { status: 'True' | 'False'; reason: string; message: string };
    events?: DesiredEvent[];
    requeueAfterMs?: number;
  }> = [
    {
      name: 'without expiry: in force, nothing to wait for',
      input: { policy: makePolicy('devs') },
      ready: { status: 'True', reason: 'InForce', message: 'the policy is in the gateway configuration' },
    },
    {
      name: 'expiring later: in force, look again just after it expires',
      input: { policy: makePolicy('devs', { expiresAt: '2026-11-25T13:00:00Z' }) },
      ready: { status: 'True', reason: 'InForce', message: 'the policy is in the gateway configuration' },
      requeueAfterMs: 3_600_000 + 100,
    },
    {
      name: 'expiring this very instant: expired',
      input: { policy: makePolicy('devs', { expiresAt: NOW_ISO }) },
      ready: { status: 'False', reason: 'Expired', message: `expired at ${NOW_ISO}` },
    },
    {
      name: 'expired: False with the time as written in the spec',
      input: { policy: makePolicy('devs', { expiresAt: '2026-11-25T12:00:00+01:00' }) },
      ready: { status: 'False', reason: 'Expired', message: 'expired at 2026-11-25T12:00:00+01:00' },
    },
    {
      name: 'a compile problem outweighs expiry and comes with a Warning',
      input: { policy: makePolicy('devs', { expiresAt: '2020-01-01T00:00:00Z' }), problem: { reason: 'InvalidSpec', message: 'spec.rules[0].ports[0]: bad range' } },
      ready: { status: 'False', reason: 'InvalidSpec', message: 'spec.rules[0].ports[0]: bad range' },
      events: [{ type: 'Warning', reason: 'InvalidSpec', message: 'spec.rules[0].ports[0]: bad range' }],
    },
    {
      name: 'a problem with a policy that expires later still looks again at expiry',
      input: { policy: makePolicy('devs', { expiresAt: '2026-11-25T12:00:10Z' }), problem: { reason: 'InvalidName', message: 'metadata.name: too long' } },
      ready: { status: 'False', reason: 'InvalidName', message: 'metadata.name: too long' },
      events: [{ type: 'Warning', reason: 'InvalidName', message: 'metadata.name: too long' }],
      requeueAfterMs: 10_100,
    },
  ];

  for (const c of cases) {
    it(c.name, () => {
      const out = desiredPolicyStatus({ ...c.input, nowMs: NOW });
      assert.deepEqual(out.conditions, [{ type: 'Ready', observedGeneration: 1, lastTransitionTime: NOW_ISO, ...c.ready }]);
      assert.deepEqual(out.status, { conditions: out.conditions, observedGeneration: 1 });
      assert.deepEqual(out.events, c.events ?? []);
      assert.equal(out.requeueAfterMs, c.requeueAfterMs);
      assert.equal('requeueAfterMs' in out, c.requeueAfterMs !== undefined, 'absent, not undefined, when there is nothing to wait for');
    });
  }

  it('keeps lastTransitionTime while Ready keeps its status, and the generation it decided from', () => {
    const before = '2026-11-01T00:00:00.000Z';
    const policy: AccessPolicy = {
      ...makePolicy('devs', {}, { generation: 7 }),
      status: { observedGeneration: 6, conditions: [{ type: 'Ready', status: 'True', observedGeneration: 6, lastTransitionTime: before, reason: 'InForce', message: 'x' }] },
    };
    const out = desiredPolicyStatus({ policy, nowMs: NOW });
    assert.deepEqual(out.status, {
      observedGeneration: 7,
      conditions: [{ type: 'Ready', status: 'True', observedGeneration: 7, lastTransitionTime: before, reason: 'InForce', message: 'the policy is in the gateway configuration' }],
    });
    assert.deepEqual(desiredPolicyStatus({ policy: { ...policy, status: out.status }, nowMs: NOW + 1000 }).status, out.status);
  });

  it('names every reason it writes itself in PolicyConditionReason', () => {
    assert.deepEqual(Object.values(PolicyConditionReason).sort(), ['Expired', 'InForce']);
  });
});
