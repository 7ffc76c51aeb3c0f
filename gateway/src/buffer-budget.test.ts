/**
 * BufferBudget: a session over its budget is closed only when it also stalls (does not read), or when it is far
 * over; over the process budget the largest stalled one goes, and far over it the largest. Reports are once per
 * account and deferred.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BufferBudget, HARD_LIMIT_FACTOR, PROCESS_STALL_GRACE_MS } from './buffer-budget.ts';

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function budget(sessionBytes: number, processBytes: number) {
  const exceeded: { owner: string; scope: string; heldBytes: number }[] = [];
  const stalled = new Map<string, number>();
  let gauge = 0;
  const b = new BufferBudget<string>({
    sessionBytes,
    processBytes,
    stallGraceMs: 1000,
    stalledForMs: (owner) => stalled.get(owner) ?? 0,
    onExceeded: (owner, scope, heldBytes) => exceeded.push({ owner, scope, heldBytes }),
    onTotalChanged: (delta) => {
      gauge += delta;
    },
  });
  return { b, exceeded, stalled, gauge: () => gauge };
}

describe('BufferBudget', () => {
  test('a reading session over its budget is not closed for a burst', async () => {
    const { b, exceeded } = budget(100, 10_000);
    const a = b.open('a');
    a.add(101);
    a.add(150);
    b.sweep();
    await tick();
    assert.deepEqual(exceeded, [], 'it drains what the windows let it hold');
  });

  test('over its budget and stalled past the grace, it is reported once, after the adding code returned', async () => {
    const { b, exceeded, stalled } = budget(100, 10_000);
    const a = b.open('a');
    stalled.set('a', 1500);
    a.add(101);
    assert.deepEqual(exceeded, [], 'deferred: never inside the relay code that added the bytes');
    a.add(10);
    await tick();
    assert.deepEqual(exceeded, [{ owner: 'a', scope: 'session', heldBytes: 111 }]);
  });

  test('a session that stalls after its last byte arrived is found by the sweep', async () => {
    const { b, exceeded, stalled } = budget(100, 10_000);
    const a = b.open('a');
    a.add(150);
    b.sweep();
    await tick();
    assert.deepEqual(exceeded, [], 'still reading');
    stalled.set('a', 1000);
    b.sweep();
    await tick();
    assert.equal(exceeded.length, 1);
  });

  test(`far over its budget (${HARD_LIMIT_FACTOR}x) a session goes even while it reads`, async () => {
    const { b, exceeded } = budget(100, 10_000);
    const a = b.open('a');
    a.add(HARD_LIMIT_FACTOR * 100 + 1);
    await tick();
    assert.deepEqual(exceeded, [{ owner: 'a', scope: 'session', heldBytes: HARD_LIMIT_FACTOR * 100 + 1 }]);
  });

  test('over the process budget the largest stalled one goes; far over, the largest goes', async () => {
    const { b, exceeded, stalled } = budget(1000, 250);
    const small = b.open('small');
    const big = b.open('big');
    small.add(100);
    big.add(200);
    await tick();
    assert.deepEqual(exceeded, [], 'nobody stalled');
    stalled.set('small', 2000);
    b.sweep();
    await tick();
    assert.deepEqual(exceeded, [{ owner: 'small', scope: 'process', heldBytes: 100 }], 'the stalled one, though smaller');
    big.add(300);
    await tick();
    assert.deepEqual(exceeded.at(-1), { owner: 'big', scope: 'process', heldBytes: 500 }, 'over twice the budget');
  });

  test(`over the process budget a session that took nothing for ${PROCESS_STALL_GRACE_MS} ms counts as stalled (short of the 1 s grace)`, async () => {
    const { b, exceeded, stalled } = budget(1000, 250);
    const reading = b.open('reading');
    const hog = b.open('hog');
    reading.add(200);
    hog.add(100);
    stalled.set('reading', 20);
    stalled.set('hog', PROCESS_STALL_GRACE_MS - 1);
    b.sweep();
    await tick();
    assert.deepEqual(exceeded, [], 'not yet');
    stalled.set('hog', PROCESS_STALL_GRACE_MS);
    b.sweep();
    await tick();
    assert.deepEqual(exceeded, [{ owner: 'hog', scope: 'process', heldBytes: 100 }], 'the one that does not read goes, not the larger one that does');
  });

  test('the total and the gauge follow adds, releases and closes', () => {
    const { b, gauge } = budget(1000, 1000);
    const a = b.open('a');
    a.add(300);
    a.add(-100);
    assert.equal(b.totalBytes, 200);
    a.close();
    assert.equal(b.totalBytes, 0);
    assert.equal(gauge(), 0);
    a.add(50);
    assert.equal(b.totalBytes, 0, 'a closed account counts nothing');
  });

  test('refuses budgets that are not positive', () => {
    assert.throws(() => new BufferBudget<string>({ sessionBytes: 0, stalledForMs: () => 0, onExceeded: () => {} }), RangeError);
  });
});
