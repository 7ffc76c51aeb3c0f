import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type AdmissionSlot, OpenAdmission } from './open-admission.ts';

/** Requests of one identity, recording the order in which they were started and keeping their slots. */
function recorder(admission: OpenAdmission) {
  const started: string[] = [];
  const slots = new Map<string, AdmissionSlot>();
  const ask = (identity: string, label: string) =>
    admission.request(identity, (slot) => {
      started.push(label);
      slots.set(label, slot);
    });
  return { started, slots, ask };
}

describe('OpenAdmission', () => {
  it('starts at once while slots are free, then queues', () => {
    const admission = new OpenAdmission({ perAgent: 2, perIdentity: 2 });
    const { started, slots, ask } = recorder(admission);
    assert.equal(ask('a', 'a1').queued, false);
    assert.equal(ask('b', 'b1').queued, false);
    const third = ask('c', 'c1');
    assert.equal(third.queued, true);
    assert.deepEqual(started, ['a1', 'b1']);
    assert.equal(admission.outstanding, 2);
    assert.equal(admission.queued, 1);
    slots.get('a1')?.release();
    assert.deepEqual(started, ['a1', 'b1', 'c1']);
    assert.equal(third.queued, false);
    assert.equal(admission.queued, 0);
  });

  it('gives a light identity the next slot however many a heavy one has queued (round robin)', () => {
    const admission = new OpenAdmission({ perAgent: 4, perIdentity: 4 });
    const { started, slots, ask } = recorder(admission);
    for (let i = 0; i < 100; i++) ask('heavy', `h${i}`);
    assert.equal(started.length, 4);
    ask('light', 'l0');
    slots.get('h0')?.release();
    assert.equal(started.at(-1), 'l0', 'the light identity goes before the heavy one\'s 96 queued opens');
    // Then the heavy one again, one at a time as slots free.
    slots.get('h1')?.release();
    assert.equal(started.at(-1), 'h4');
  });

  it('caps one identity below the agent limit, leaving room for the others', () => {
    const admission = new OpenAdmission({ perAgent: 10, perIdentity: 3 });
    const { started, ask } = recorder(admission);
    for (let i = 0; i < 8; i++) ask('heavy', `h${i}`);
    assert.equal(admission.outstandingOf('heavy'), 3);
    assert.equal(admission.queued, 5);
    ask('other', 'o0');
    assert.equal(started.at(-1), 'o0', 'another identity starts at once: the agent has free slots');
  });

  it('cancel takes a queued request out; a started one keeps its slot until released', () => {
    const admission = new OpenAdmission({ perAgent: 1, perIdentity: 1 });
    const { started, slots, ask } = recorder(admission);
    const first = ask('a', 'a1');
    const second = ask('b', 'b1');
    second.cancel();
    assert.equal(admission.queued, 0);
    first.cancel(); // started: cancel is a no-op, the slot stays held
    assert.equal(admission.outstanding, 1);
    ask('c', 'c1');
    assert.deepEqual(started, ['a1']);
    slots.get('a1')?.release();
    slots.get('a1')?.release(); // idempotent
    assert.deepEqual(started, ['a1', 'c1']);
    assert.equal(admission.outstanding, 1);
  });

  it('survives a start that releases at once, without recursion, and leaves no state behind', () => {
    const admission = new OpenAdmission({ perAgent: 1, perIdentity: 1 });
    let runs = 0;
    const blocker: AdmissionSlot[] = [];
    admission.request('x', (slot) => blocker.push(slot));
    for (let i = 0; i < 20_000; i++) {
      admission.request(`id${i % 7}`, (slot) => {
        runs++;
        slot.release();
      });
    }
    blocker[0]?.release();
    assert.equal(runs, 20_000);
    assert.equal(admission.outstanding, 0);
    assert.equal(admission.queued, 0);
    assert.equal(admission.outstandingOf('x'), 0);
  });

  it('refuses limits that are not positive integers', () => {
    assert.throws(() => new OpenAdmission({ perAgent: 0 }), RangeError);
    assert.throws(() => new OpenAdmission({ perIdentity: 1.5 }), RangeError);
  });
});
