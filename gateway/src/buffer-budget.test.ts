/** BufferBudget: per-session and per-process limits, reported once, deferred, the largest session first. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BufferBudget } from './buffer-budget.ts';

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function budget(sessionBytes: number, processBytes: number) {
  const exceeded: { owner: string; scope: string; heldBytes: number }[] = [];
  let gauge = 0;
  const b = new BufferBudget<string>({
    sessionBytes,
    processBytes,
    onExceeded: (owner, scope, heldBytes) => exceeded.push({ owner, scope, heldBytes }),
    onTotalChanged: (delta) => {
      gauge += delta;
    },
  });
  return { b, exceeded, gauge: () => gauge };
}

describe('BufferBudget', () => {
  test('a session over its budget is reported once, after the adding code returned', async () => {
    const { b, exceeded } = budget(100, 1000);
    const a = b.open('a');
    a.add(101);
    assert.deepEqual(exceeded, [], 'deferred: never inside the relay code that added the bytes');
    a.add(50);
    await tick();
    assert.deepEqual(exceeded, [{ owner: 'a', scope: 'session', heldBytes: 151 }]);
    a.add(10);
    await tick();
    assert.equal(exceeded.length, 1, 'once per account');
  });

  test('over the process budget, the session holding most goes, one at a time', async () => {
    const { b, exceeded } = budget(1000, 250);
    const small = b.open('small');
    const big = b.open('big');
    small.add(100);
    big.add(200);
    await tick();
    assert.deepEqual(exceeded, [{ owner: 'big', scope: 'process', heldBytes: 200 }]);
    big.close();
    small.add(10);
    await tick();
    assert.equal(exceeded.length, 1, 'back under the budget: nobody else goes');
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
    assert.throws(() => new BufferBudget<string>({ sessionBytes: 0, onExceeded: () => {} }), RangeError);
  });
});
