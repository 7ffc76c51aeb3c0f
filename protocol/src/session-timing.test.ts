import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { backoffDelayMs, HEARTBEAT_DEAD_AFTER_MS, HEARTBEAT_INTERVAL_MS } from './session-timing.ts';

const low = () => 0;
/** The largest value below 1 that a [0, 1) source can return. */
const high = () => 1 - Number.EPSILON;

describe('backoffDelayMs', () => {
  test('grows exponentially from the base (defaults: 250 ms base)', () => {
    // random = 0 gives exactly half of the ceiling, so the ceiling doubles each attempt.
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5].map((attempt) => backoffDelayMs(attempt, { random: low })),
      [125, 250, 500, 1000, 2000, 4000],
    );
    assert.deepEqual(
      [0, 1, 2, 3].map((attempt) => backoffDelayMs(attempt, { random: high })),
      [250, 500, 1000, 2000],
    );
  });

  test('is capped at maxMs (default 30 s), even for huge attempt numbers', () => {
    for (const attempt of [7, 8, 10, 30, 31, 100, 1_000_000, Number.MAX_SAFE_INTEGER]) {
      assert.equal(backoffDelayMs(attempt, { random: low }), 15_000, `attempt ${attempt}`);
      assert.equal(backoffDelayMs(attempt, { random: high }), 30_000, `attempt ${attempt}`);
    }
    // 250 * 2^6 = 16 000 is still under the cap, 250 * 2^7 = 32 000 is over it.
    assert.equal(backoffDelayMs(6, { random: high }), 16_000);
    assert.equal(backoffDelayMs(7, { random: high }), 30_000);
  });

  test('honours custom base and cap', () => {
    assert.deepEqual(
      [0, 1, 2, 3, 4].map((attempt) => backoffDelayMs(attempt, { baseMs: 100, maxMs: 500, random: high })),
      [100, 200, 400, 500, 500],
    );
    assert.equal(backoffDelayMs(0, { baseMs: 100, maxMs: 500, random: low }), 50);
    assert.equal(backoffDelayMs(9, { baseMs: 100, maxMs: 500, random: low }), 250);
  });

  test('jitter stays within [ceiling / 2, ceiling]', () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = Math.min(30_000, 250 * 2 ** attempt);
      for (let i = 0; i <= 100; i++) {
        const r = i === 100 ? 1 - Number.EPSILON : i / 100;
        const delay = backoffDelayMs(attempt, { random: () => r });
        assert.ok(delay >= ceiling / 2 && delay <= ceiling, `attempt ${attempt}, random ${r}: ${delay}`);
      }
      assert.equal(backoffDelayMs(attempt, { random: () => 0.5 }), Math.round(ceiling * 0.75));
    }
  });

  test('the default random source also stays within bounds and returns whole milliseconds', () => {
    for (let i = 0; i < 1000; i++) {
      const delay = backoffDelayMs(3);
      assert.ok(delay >= 1000 && delay <= 2000, String(delay));
      assert.ok(Number.isInteger(delay));
    }
  });

  test('jitter actually spreads a fleet out', () => {
    const values = [0, 0.25, 0.5, 0.75].map((r) => backoffDelayMs(4, { random: () => r }));
    assert.deepEqual(values, [2000, 2500, 3000, 3500]);
  });
});

test('heartbeat constants: dead after three missed intervals', () => {
  assert.equal(HEARTBEAT_INTERVAL_MS, 10_000);
  assert.equal(HEARTBEAT_DEAD_AFTER_MS, 3 * HEARTBEAT_INTERVAL_MS);
});
