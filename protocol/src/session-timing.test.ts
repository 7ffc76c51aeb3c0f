import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  backoffDelayMs,
  HEARTBEAT_DEAD_AFTER_MS,
  HEARTBEAT_INTERVAL_MS,
  MAX_TIMER_DELAY_MS,
  reauthDueAt,
  reauthRecheckInMs,
  reauthResendInMs,
  reconnectDelayMs,
  timerStepMs,
} from './session-timing.ts';

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

const DAY_MS = 24 * 3600 * 1000;

describe('reauthDueAt', () => {
  // [now, expiresAt, due]: 80 % of the time left, never sooner than 1 s from now, nothing once expired.
  const vectors: Array<[number, number, number | undefined]> = [
    [0, 2000, 1600],
    [1600, 3100, 2800],
    [0, 1500, 1200],
    [1_000_000, 1_010_000, 1_008_000],
    [0, 1250, 1000],
    [0, 1000, 1000],
    [0, 500, 1000],
    [5000, 5001, 6000],
    [0, 90 * DAY_MS, 72 * DAY_MS],
    [1_700_000_000_000, 1_700_003_600_000, 1_700_002_880_000],
    [0, 0, undefined],
    [5000, 5000, undefined],
    [5000, 4999, undefined],
    [5000, 0, undefined],
  ];
  for (const [nowMs, expiresAtMs, due] of vectors) {
    test(`now ${nowMs}, expires ${expiresAtMs} → ${due}`, () => {
      assert.equal(reauthDueAt(nowMs, expiresAtMs), due);
    });
  }
});

describe('timerStepMs', () => {
  test('is 2^31 - 1 ms, the most setTimeout honours', () => {
    assert.equal(MAX_TIMER_DELAY_MS, 2_147_483_647);
  });

  // [now, at, step]: the time left, never negative, in steps no longer than setTimeout can wait.
  const vectors: Array<[number, number, number]> = [
    [0, 1600, 1600],
    [100, 1600, 1500],
    [1600, 1600, 0],
    [1700, 1600, 0],
    [0, 2 ** 31 - 1, 2 ** 31 - 1],
    [0, 2 ** 31, 2 ** 31 - 1],
    [0, 72 * DAY_MS, 2 ** 31 - 1],
    [2 ** 31 - 1, 72 * DAY_MS, 2 ** 31 - 1],
    [2 * (2 ** 31 - 1), 72 * DAY_MS, 72 * DAY_MS - 2 * (2 ** 31 - 1)],
  ];
  for (const [nowMs, atMs, step] of vectors) {
    test(`now ${nowMs}, at ${atMs} → ${step}`, () => {
      assert.equal(timerStepMs(nowMs, atMs), step);
    });
  }

  test('a reauth due at 72 days (80 % of 90) is waited for in three steps, none past the limit', () => {
    const dueMs = reauthDueAt(0, 90 * DAY_MS) as number;
    const steps: number[] = [];
    for (let nowMs = 0; nowMs < dueMs; nowMs += steps.at(-1) as number) steps.push(timerStepMs(nowMs, dueMs));
    assert.deepEqual(steps, [2 ** 31 - 1, 2 ** 31 - 1, 72 * DAY_MS - 2 * (2 ** 31 - 1)]);
  });
});

describe('reauthRecheckInMs', () => {
  // [now, expiresAt, recheck]: a quarter of the time left, at most 30 s, nothing once 2 s or less remain.
  const vectors: Array<[number, number, number | undefined]> = [
    [1200, 1500, undefined],
    [0, 2000, undefined],
    [0, 2001, 500.25],
    [0, 4000, 1000],
    [0, 120_000, 30_000],
    [0, 120_004, 30_000],
    [0, 119_996, 29_999],
    [72 * DAY_MS, 90 * DAY_MS, 30_000],
    [5000, 0, undefined],
  ];
  for (const [nowMs, expiresAtMs, recheck] of vectors) {
    test(`now ${nowMs}, expires ${expiresAtMs} → ${recheck}`, () => {
      assert.equal(reauthRecheckInMs(nowMs, expiresAtMs), recheck);
    });
  }
});

describe('reauthResendInMs', () => {
  // [now, expiresAt, resend]: half the time left, at most 15 s, nothing below 500 ms.
  const vectors: Array<[number, number, number | undefined]> = [
    [0, 30_000, 15_000],
    [0, 60_000, 15_000],
    [0, 20_000, 10_000],
    [0, 1000, 500],
    [0, 999, undefined],
    [1600, 3100, 750],
    [2800, 3100, undefined],
    [5000, 0, undefined],
  ];
  for (const [nowMs, expiresAtMs, resend] of vectors) {
    test(`now ${nowMs}, expires ${expiresAtMs} → ${resend}`, () => {
      assert.equal(reauthResendInMs(nowMs, expiresAtMs), resend);
    });
  }
});

describe('reconnectDelayMs', () => {
  test('a peer that never had a session backs off like backoffDelayMs (up to maxMs)', () => {
    for (const attempt of [0, 3, 7, 20]) assert.equal(reconnectDelayMs(attempt, 5_000, undefined, { random: high }), backoffDelayMs(attempt, { random: high }));
  });

  test('a peer whose session just ended retries within recentMaxMs (default 1 s), however many attempts failed', () => {
    const lostAtMs = 1_000_000;
    for (const attempt of [0, 2, 3, 10, 100]) {
      assert.ok(reconnectDelayMs(attempt, lostAtMs + 3_000, lostAtMs, { random: high }) <= 1000, `attempt ${attempt}`);
    }
    assert.equal(reconnectDelayMs(0, lostAtMs, lostAtMs, { random: high }), 250);
    assert.equal(reconnectDelayMs(9, lostAtMs + 100, lostAtMs, { random: high }), 1000);
  });

  test('past the window (default 60 s) the cap grows with a quarter of the outage beyond it, up to maxMs', () => {
    const lostAtMs = 0;
    assert.equal(reconnectDelayMs(20, 59_000, lostAtMs, { random: high }), 1000);
    assert.equal(reconnectDelayMs(20, 68_000, lostAtMs, { random: high }), 2_000);
    assert.equal(reconnectDelayMs(20, 100_000, lostAtMs, { random: high }), 10_000);
    assert.equal(reconnectDelayMs(20, 10 * 60_000, lostAtMs, { random: high }), 30_000);
    const custom = { random: high, recentWindowMs: 10_000, outageFraction: 0.1, recentMaxMs: 500 };
    assert.equal(reconnectDelayMs(20, 12_000, lostAtMs, custom), 500);
    assert.equal(reconnectDelayMs(20, 40_000, lostAtMs, { ...custom, maxMs: 2_500 }), 2_500);
    // A clock that went backwards counts as no outage.
    assert.equal(reconnectDelayMs(20, -5_000, lostAtMs, { random: high }), 1000);
  });
});
