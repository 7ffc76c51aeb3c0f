import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Condition } from '../crds/common.ts';
import { CONDITION_MESSAGE_MAX, findCondition, isConditionTrue, setCondition } from './conditions.ts';

const T0 = '2025-01-01T00:00:00Z';
const T1 = '2025-01-01T00:05:00Z';

const ready = (status: Condition['status'], reason: string, gen = 1): Condition => ({
  type: 'Ready',
  status,
  observedGeneration: gen,
  lastTransitionTime: T0,
  reason,
  message: '',
});

describe('setCondition', () => {
  const cases: Array<{
    name: string;
    before: Condition[] | undefined;
    update: { type: string; status: Condition['status']; reason: string; message: string; observedGeneration: number };
    after: Condition[];
  }> = [
    {
      name: 'appends a new type with now as transition time',
      before: undefined,
      update: { type: 'Ready', status: 'True', reason: 'Accepted', message: 'ok', observedGeneration: 3 },
      after: [{ type: 'Ready', status: 'True', observedGeneration: 3, lastTransitionTime: T1, reason: 'Accepted', message: 'ok' }],
    },
    {
      name: 'same status keeps lastTransitionTime, updates reason, message and generation',
      before: [ready('False', 'InvalidSpec')],
      update: { type: 'Ready', status: 'False', reason: 'DomainConflict', message: 'taken', observedGeneration: 2 },
      after: [{ type: 'Ready', status: 'False', observedGeneration: 2, lastTransitionTime: T0, reason: 'DomainConflict', message: 'taken' }],
    },
    {
      name: 'status change moves lastTransitionTime',
      before: [ready('False', 'InvalidSpec')],
      update: { type: 'Ready', status: 'True', reason: 'Accepted', message: '', observedGeneration: 2 },
      after: [{ type: 'Ready', status: 'True', observedGeneration: 2, lastTransitionTime: T1, reason: 'Accepted', message: '' }],
    },
    {
      name: 'other types stay in place and untouched',
      before: [
        { ...ready('True', 'Attached'), type: 'Connected' },
        ready('Unknown', 'Pending'),
      ],
      update: { type: 'Ready', status: 'True', reason: 'Accepted', message: '', observedGeneration: 1 },
      after: [
        { ...ready('True', 'Attached'), type: 'Connected' },
        { type: 'Ready', status: 'True', observedGeneration: 1, lastTransitionTime: T1, reason: 'Accepted', message: '' },
      ],
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const frozen = structuredClone(c.before);
      assert.deepEqual(setCondition(c.before, c.update, T1), c.after);
      assert.deepEqual(c.before, frozen, 'input not modified');
    });
  }

  it('is idempotent: applying the same update twice gives equal lists', () => {
    const u = { type: 'Ready', status: 'True' as const, reason: 'Accepted', message: 'm', observedGeneration: 1 };
    const once = setCondition([], u, T0);
    assert.deepEqual(setCondition(once, u, T1), once);
  });

  it('rejects reasons the apiserver would refuse', () => {
    for (const reason of ['', 'not camel', '1Bad', 'Trailing-']) {
      assert.throws(
        () => setCondition([], { type: 'Ready', status: 'True', reason, message: '', observedGeneration: 1 }, T0),
        RangeError,
      );
    }
  });

  it('truncates messages to the schema limit', () => {
    const out = setCondition([], { type: 'Ready', status: 'False', reason: 'InvalidSpec', message: 'x'.repeat(40000), observedGeneration: 1 }, T0);
    assert.equal(out[0]?.message.length, CONDITION_MESSAGE_MAX);
  });
});

describe('findCondition / isConditionTrue', () => {
  const list = [ready('True', 'Accepted', 2)];
  it('finds by type', () => {
    assert.equal(findCondition(list, 'Ready')?.reason, 'Accepted');
    assert.equal(findCondition(list, 'Connected'), undefined);
    assert.equal(findCondition(undefined, 'Ready'), undefined);
  });
  it('treats a condition from an older generation as not true', () => {
    assert.equal(isConditionTrue(list, 'Ready'), true);
    assert.equal(isConditionTrue(list, 'Ready', 2), true);
    assert.equal(isConditionTrue(list, 'Ready', 3), false);
    assert.equal(isConditionTrue([ready('False', 'X')], 'Ready'), false);
  });
});
