/** SendBuffer: counting unsent bytes, blocking with hysteresis, stall time for liveness, release. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { SEND_MESSAGE_OVERHEAD_BYTES, SendBuffer } from './send-buffer.ts';

/** A buffer counting bytes only (overhead 0) unless `messageOverheadBytes` is given. */
function buffer(highWaterBytes = 100, lowWaterBytes?: number, messageOverheadBytes = 0) {
  const changes: boolean[] = [];
  let held = 0;
  let now = 0;
  const sendBuffer = new SendBuffer({
    highWaterBytes,
    messageOverheadBytes,
    ...(lowWaterBytes === undefined ? {} : { lowWaterBytes }),
    onBlockedChange: (blocked) => changes.push(blocked),
    onBytes: (delta) => {
      held += delta;
    },
    now: () => now,
  });
  return { sendBuffer, changes, held: () => held, tick: (ms: number) => (now += ms) };
}

describe('SendBuffer', () => {
  test('blocks at the high-water mark and unblocks only at the low-water mark', () => {
    const { sendBuffer, changes, held } = buffer(100);
    const flushes = [sendBuffer.track(60), sendBuffer.track(39)];
    assert.deepEqual(changes, []);
    flushes.push(sendBuffer.track(1));
    assert.deepEqual(changes, [true]);
    assert.equal(held(), 100);
    flushes[1]?.();
    assert.deepEqual(changes, [true], '61 left is still over the low-water mark of 50');
    flushes[0]?.();
    assert.deepEqual(changes, [true, false]);
    assert.equal(sendBuffer.blocked, false);
    flushes[2]?.();
    assert.equal(sendBuffer.unflushedBytes, 0);
    assert.equal(held(), 0);
  });

  test('each message counts with its overhead: tiny messages block after a few, not after high-water-many bytes', () => {
    const { sendBuffer, changes, held } = buffer(16 * 1024, undefined, SEND_MESSAGE_OVERHEAD_BYTES);
    const flushes: Array<() => void> = [];
    while (!sendBuffer.blocked) flushes.push(sendBuffer.track(18));
    // 16 KiB of 18-byte PONGs by bytes alone is 910 messages; their real cost blocks at 16.
    assert.equal(flushes.length, Math.ceil((16 * 1024) / (18 + SEND_MESSAGE_OVERHEAD_BYTES)));
    assert.equal(held(), flushes.length * (18 + SEND_MESSAGE_OVERHEAD_BYTES));
    for (const flush of flushes) flush();
    assert.deepEqual(changes, [true, false]);
    assert.equal(held(), 0, 'what was counted with the overhead is released with it');
  });

  test('the default overhead is the measured one; a negative one is refused', () => {
    assert.equal(new SendBuffer({ onBlockedChange: () => {} }).messageOverheadBytes, SEND_MESSAGE_OVERHEAD_BYTES);
    assert.throws(() => new SendBuffer({ onBlockedChange: () => {}, messageOverheadBytes: -1 }), RangeError);
  });

  test('stall time counts from the block or the last flush, and is 0 while not blocked', () => {
    const { sendBuffer, tick } = buffer(10, 0);
    assert.equal(sendBuffer.stalledForMs(), 0);
    const first = sendBuffer.track(6);
    const second = sendBuffer.track(6);
    tick(1000);
    assert.equal(sendBuffer.stalledForMs(), 1000);
    first();
    tick(300);
    assert.equal(sendBuffer.stalledForMs(), 300, 'progress while blocked resets the stall');
    second();
    assert.equal(sendBuffer.stalledForMs(), 0);
  });

  test('release forgets what is counted; late flushes change nothing and it never blocks again', () => {
    const { sendBuffer, changes, held } = buffer(10);
    const flush = sendBuffer.track(20);
    sendBuffer.release();
    assert.equal(held(), 0);
    flush();
    assert.equal(held(), 0);
    assert.equal(sendBuffer.unflushedBytes, 0);
    sendBuffer.track(50);
    assert.deepEqual(changes, [true], 'no new block after release');
  });

  test('refuses marks that cannot work', () => {
    assert.throws(() => new SendBuffer({ highWaterBytes: 10, lowWaterBytes: 10, onBlockedChange: () => {} }), RangeError);
    assert.throws(() => new SendBuffer({ highWaterBytes: 0, onBlockedChange: () => {} }), RangeError);
  });
});
