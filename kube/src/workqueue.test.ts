import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';
import { WorkQueue } from './workqueue.ts';

/** The largest value below 1: backoffDelayMs then returns exactly the ceiling (base * 2^failures, capped). */
const high = () => 1 - Number.EPSILON;

/** Settles pending promise continuations (a woken get() resumes in a microtask). */
async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

/** Resolves with the next key, or 'pending' when get() does not resolve once microtasks have run. */
async function poll(queue: WorkQueue): Promise<string | undefined | 'pending'> {
  let result: string | undefined | 'pending' = 'pending';
  void queue.get().then((key) => {
    result = key;
  });
  await flush();
  return result;
}

describe('WorkQueue', () => {
  it('queues a key once however often it is added, in first-added order', async () => {
    const queue = new WorkQueue();
    queue.add('a');
    queue.add('b');
    queue.add('a');
    queue.add('a');
    assert.equal(queue.length, 2);
    assert.equal(await queue.get(), 'a');
    assert.equal(await queue.get(), 'b');
    assert.equal(queue.length, 0);
    queue.done('a');
    queue.done('b');
    // Done and not re-added: nothing comes back.
    assert.equal(queue.length, 0);
    queue.shutDown();
  });

  it('never hands out a key that is being processed; an add meanwhile re-queues it once after done()', async () => {
    const queue = new WorkQueue();
    queue.add('k');
    assert.equal(await queue.get(), 'k');

    // Added three times while a worker holds it: not handed to a second worker...
    queue.add('k');
    queue.add('k');
    queue.add('k');
    assert.equal(queue.length, 0);
    const second = queue.get();
    await flush();
    let secondKey: string | undefined;
    void second.then((key) => {
      secondKey = key;
    });
    await flush();
    assert.equal(secondKey, undefined, 'a second worker got a key that is still being processed');

    // ...other keys still flow to other workers...
    queue.add('other');
    assert.equal(await second, 'other');
    queue.done('other');

    // ...and after done() it comes back exactly once.
    queue.done('k');
    assert.equal(queue.length, 1);
    assert.equal(await queue.get(), 'k');
    queue.done('k');
    assert.equal(queue.length, 0);
    assert.equal(await poll(queue), 'pending');
    queue.shutDown();
  });

  it('done() without a concurrent add does not re-queue', async () => {
    const queue = new WorkQueue();
    queue.add('k');
    const key = await queue.get();
    assert.equal(key, 'k');
    queue.done('k');
    assert.equal(queue.length, 0);
    queue.shutDown();
  });

  describe('rate limiting (mock timers)', () => {
    beforeEach(() => mock.timers.enable({ apis: ['setTimeout'] }));
    afterEach(() => mock.timers.reset());

    it('delays grow per failure of a key, independently per key, up to the cap; forget() resets', async () => {
      const queue = new WorkQueue({ baseDelayMs: 100, maxDelayMs: 1000, random: high });
      const delays = [0, 1, 2, 3, 4, 5].map(() => queue.addRateLimited('k'));
      assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000]);
      assert.equal(queue.failures('k'), 6);
      // Another key has its own count.
      assert.equal(queue.addRateLimited('other'), 100);

      queue.forget('k');
      assert.equal(queue.failures('k'), 0);
      assert.equal(queue.addRateLimited('k'), 100);
      assert.equal(queue.failures('other'), 1);
      queue.shutDown();
    });

    it('a rate-limited key is queued only after its delay has passed', async () => {
      const queue = new WorkQueue({ baseDelayMs: 100, maxDelayMs: 1000, random: high });
      assert.equal(queue.addRateLimited('k'), 100);
      assert.equal(queue.length, 0);
      mock.timers.tick(99);
      assert.equal(queue.length, 0);
      mock.timers.tick(1);
      assert.equal(queue.length, 1);
      assert.equal(await queue.get(), 'k');
      queue.done('k');

      // Second failure: 200 ms.
      assert.equal(queue.addRateLimited('k'), 200);
      mock.timers.tick(199);
      assert.equal(queue.length, 0);
      mock.timers.tick(1);
      assert.equal(await queue.get(), 'k');
      queue.done('k');

      // forget() → the next retry is at the base delay again.
      queue.forget('k');
      assert.equal(queue.addRateLimited('k'), 100);
      mock.timers.tick(100);
      assert.equal(queue.length, 1);
      queue.shutDown();
    });

    it('a retry that fires while the key is processed waits for done(), then runs once', async () => {
      const queue = new WorkQueue({ baseDelayMs: 50, random: high });
      queue.add('k');
      assert.equal(await queue.get(), 'k');
      queue.addRateLimited('k');
      mock.timers.tick(50);
      assert.equal(queue.length, 0, 'handed out again while still processing');
      queue.done('k');
      assert.equal(queue.length, 1);
      assert.equal(await queue.get(), 'k');
      queue.done('k');
      assert.equal(queue.length, 0);
      queue.shutDown();
    });

    it('shutDown() cancels pending retries', async () => {
      const queue = new WorkQueue({ baseDelayMs: 50, random: high });
      queue.addRateLimited('k');
      queue.shutDown();
      mock.timers.tick(1000);
      assert.equal(queue.length, 0);
      assert.equal(await queue.get(), undefined);
    });
  });

  it('a get() waiting on an empty queue resolves when a key is added', async () => {
    const queue = new WorkQueue();
    const waiting = [queue.get(), queue.get()];
    await flush();
    queue.add('x');
    queue.add('y');
    assert.deepEqual((await Promise.all(waiting)).sort(), ['x', 'y']);
    queue.shutDown();
  });

  it('shutDown() releases every waiting get() with undefined and refuses new keys', async () => {
    const queue = new WorkQueue();
    const waiting = [queue.get(), queue.get(), queue.get()];
    await flush();
    queue.shutDown();
    assert.deepEqual(await Promise.all(waiting), [undefined, undefined, undefined]);
    queue.add('late');
    assert.equal(queue.length, 0);
    assert.equal(await queue.get(), undefined);
  });

  it('after shutDown() keys already queued are still handed out, then get() returns undefined', async () => {
    const queue = new WorkQueue();
    queue.add('a');
    queue.shutDown();
    assert.equal(await queue.get(), 'a');
    queue.done('a');
    assert.equal(await queue.get(), undefined);
  });
});
