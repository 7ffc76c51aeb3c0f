import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { StreamErrorCode } from '@narrowlink/protocol';
import {
  checkIdle,
  DEFAULT_STREAM_SHARES,
  type IdleState,
  idleScanIntervalMs,
  isShareRefusal,
  limitCode,
  type ShareKind,
  type ShareLease,
  StreamShares,
} from './stream-shares.ts';

/** One step of a scenario: acquire for (agent, session, sub) expecting a lease or a refusal kind, or release lease #n. */
type Step = { acquire: [string, string, string]; expect: 'ok' | ShareKind } | { release: number };

describe('StreamShares', () => {
  const limits = { perSession: 2, perIdentity: 3 };
  const cases: Array<{ name: string; steps: Step[]; full?: Record<ShareKind, number> }> = [
    {
      name: 'a session gets its share, then SHARE_EXCEEDED (session)',
      steps: [
        { acquire: ['db', 's1', 'alice'], expect: 'ok' },
        { acquire: ['db', 's1', 'alice'], expect: 'ok' },
        { acquire: ['db', 's1', 'alice'], expect: 'session' },
      ],
      full: { session: 1, identity: 0, reserve: 0 },
    },
    {
      name: 'the identity share spans sessions',
      steps: [
        { acquire: ['db', 's1', 'alice'], expect: 'ok' },
        { acquire: ['db', 's1', 'alice'], expect: 'ok' },
        { acquire: ['db', 's2', 'alice'], expect: 'ok' },
        { acquire: ['db', 's2', 'alice'], expect: 'identity' },
        { acquire: ['db', 's3', 'alice'], expect: 'identity' },
      ],
      full: { session: 1, identity: 1, reserve: 0 },
    },
    {
      name: 'shares are per agent: a full share on db leaves web alone',
      steps: [
        { acquire: ['db', 's1', 'alice'], expect: 'ok' },
        { acquire: ['db', 's1', 'alice'], expect: 'ok' },
        { acquire: ['web', 's1', 'alice'], expect: 'ok' },
        { acquire: ['web', 's1', 'alice'], expect: 'ok' },
        { acquire: ['db', 's1', 'alice'], expect: 'session' },
      ],
      full: { session: 2, identity: 0, reserve: 0 },
    },
    {
      name: 'another identity is not affected by a full one (the victim case)',
      steps: [
        { acquire: ['db', 's1', 'mallory'], expect: 'ok' },
        { acquire: ['db', 's1', 'mallory'], expect: 'ok' },
        { acquire: ['db', 's2', 'mallory'], expect: 'ok' },
        { acquire: ['db', 's3', 'mallory'], expect: 'identity' },
        { acquire: ['db', 's4', 'alice'], expect: 'ok' },
      ],
      full: { session: 1, identity: 1, reserve: 0 },
    },
    {
      name: 'a release makes room again; a second release of the same lease changes nothing',
      steps: [
        { acquire: ['db', 's1', 'alice'], expect: 'ok' },
        { acquire: ['db', 's1', 'alice'], expect: 'ok' },
        { release: 0 },
        { release: 0 },
        { acquire: ['db', 's1', 'alice'], expect: 'ok' },
        { acquire: ['db', 's1', 'alice'], expect: 'session' },
      ],
      full: { session: 1, identity: 0, reserve: 0 },
    },
    {
      name: 'a refused OPEN takes nothing: the identity count does not move when the session share refuses',
      steps: [
        { acquire: ['db', 's1', 'alice'], expect: 'ok' },
        { acquire: ['db', 's1', 'alice'], expect: 'ok' },
        { acquire: ['db', 's1', 'alice'], expect: 'session' },
        { acquire: ['db', 's1', 'alice'], expect: 'session' },
        { acquire: ['db', 's2', 'alice'], expect: 'ok' },
      ],
      full: { session: 1, identity: 1, reserve: 0 },
    },
  ];
  for (const { name, steps, full } of cases) {
    test(name, () => {
      const gauge: Record<ShareKind, number> = { session: 0, identity: 0, reserve: 0 };
      const shares = new StreamShares({ limits, onFullChanged: (kind, delta) => (gauge[kind] += delta) });
      const leases: ShareLease[] = [];
      for (const [i, step] of steps.entries()) {
        if ('release' in step) {
          leases[step.release]?.release();
          continue;
        }
        const result = shares.acquire(...step.acquire);
        if (isShareRefusal(result)) {
          assert.equal(result.refused, step.expect, `step ${i}`);
          assert.equal(result.limit, result.refused === 'session' ? limits.perSession : limits.perIdentity);
        } else {
          assert.equal(step.expect, 'ok', `step ${i}`);
          leases.push(result);
        }
      }
      if (full) assert.deepEqual(gauge, full);
      for (const lease of leases) lease.release();
      assert.equal(shares.entries, 0, 'every count is forgotten once released');
      assert.deepEqual(gauge, { session: 0, identity: 0, reserve: 0 }, 'no share is full any more');
    });
  }

  test('counts per session and per identity', () => {
    const shares = new StreamShares({ limits });
    shares.acquire('db', 's1', 'alice');
    shares.acquire('db', 's2', 'alice');
    assert.equal(shares.heldBySession('db', 's1'), 1);
    assert.equal(shares.heldByIdentity('db', 'alice'), 2);
    assert.equal(shares.heldByIdentity('web', 'alice'), 0);
  });

  test('defaults: 256 per session, 1024 per identity, well below the agent limit of 4096; a reserve of 1024 for light holders', () => {
    assert.deepEqual(new StreamShares().limits, DEFAULT_STREAM_SHARES);
    assert.deepEqual(DEFAULT_STREAM_SHARES, { perSession: 256, perIdentity: 1024, reserve: 1024, reserveFloor: 64 });
  });

  test('many heavy identities fill the agent only up to its reserve; light holders still get in', () => {
    const gauge: Record<ShareKind, number> = { session: 0, identity: 0, reserve: 0 };
    const shares = new StreamShares({ onFullChanged: (kind, delta) => (gauge[kind] += delta) });
    const capacity = 4096;
    const leases: ShareLease[] = [];
    // Twenty identities each open as much as their session share allows (20 x 256 = 5120 > 4096).
    let refusedReserve = 0;
    for (let id = 0; id < 20; id++) {
      for (let i = 0; i < 256; i++) {
        const result = shares.acquire('db', `s-${id}`, `heavy-${id}`, capacity);
        if (isShareRefusal(result)) {
          assert.equal(result.refused, 'reserve');
          assert.equal(result.limit, capacity - 1024);
          refusedReserve++;
        } else leases.push(result);
      }
    }
    // Twelve identities fill the unreserved 3072; the last eight, still light, take 64 each from the reserve and stop.
    assert.equal(shares.heldByAll('db'), 3072 + 8 * 64);
    assert.equal(refusedReserve, 20 * 256 - (3072 + 8 * 64));
    assert.equal(gauge.reserve, 1);
    // 200 light users, one stream each, and one with 63: all in, from the reserve.
    for (let id = 0; id < 200; id++) {
      const result = shares.acquire('db', `light-s-${id}`, `light-${id}`, capacity);
      assert.equal(isShareRefusal(result), false, `light user ${id}`);
      if (!isShareRefusal(result)) leases.push(result);
    }
    for (let i = 0; i < 63; i++) {
      const result = shares.acquire('db', 'pool', 'pool-user', capacity);
      assert.equal(isShareRefusal(result), false);
      if (!isShareRefusal(result)) leases.push(result);
    }
    const sixtyFourth = shares.acquire('db', 'pool', 'pool-user', capacity);
    if (!isShareRefusal(sixtyFourth)) leases.push(sixtyFourth);
    const sixtyFifth = shares.acquire('db', 'pool', 'pool-user', capacity);
    assert.equal(isShareRefusal(sixtyFifth) && sixtyFifth.refused, 'reserve', 'at 64 streams an identity is heavy');
    for (const lease of leases) lease.release();
    assert.equal(shares.entries, 0);
    assert.equal(gauge.reserve, 0);
  });

  test('the reserve is at most a quarter of a small capacity, and 0 turns it off', () => {
    const small = new StreamShares({ limits: { reserveFloor: 1 } });
    const leases = [0, 1, 2].map(() => small.acquire('db', 's', 'a', 4));
    assert.deepEqual(leases.map((l) => isShareRefusal(l)), [false, false, false]);
    assert.equal((small.acquire('db', 's', 'a', 4) as { refused?: string }).refused, 'reserve');
    assert.equal(isShareRefusal(small.acquire('db', 's2', 'b', 4)), false, 'a new identity takes the last one');
    const off = new StreamShares({ limits: { reserve: 0, reserveFloor: 1 } });
    for (let i = 0; i < 4; i++) assert.equal(isShareRefusal(off.acquire('db', 's', 'a', 4)), false);
  });

  test('limits must be integers >= 1', () => {
    for (const bad of [0, -1, 1.5, Number.NaN]) {
      assert.throws(() => new StreamShares({ limits: { perSession: bad } }), RangeError);
      assert.throws(() => new StreamShares({ limits: { perIdentity: bad } }), RangeError);
    }
  });
});

describe('limitCode', () => {
  const cases: Array<[string, StreamErrorCode]> = [
    ['1.3', StreamErrorCode.SHARE_EXCEEDED],
    ['1.4', StreamErrorCode.SHARE_EXCEEDED],
    ['1.2', StreamErrorCode.TOO_MANY_STREAMS],
    ['1.0', StreamErrorCode.TOO_MANY_STREAMS],
    ['2.9', StreamErrorCode.TOO_MANY_STREAMS],
  ];
  for (const [version, expected] of cases) {
    test(`a ${version} peer gets ${expected}`, () => {
      assert.equal(limitCode(version, StreamErrorCode.SHARE_EXCEEDED, StreamErrorCode.TOO_MANY_STREAMS), expected);
    });
  }
});

describe('checkIdle', () => {
  // [bytes now, now, expected idle]: one stream over time with a 100 ms timeout, starting at 0 bytes, t = 0.
  const steps: Array<[number, number, boolean]> = [
    [0, 50, false],
    [0, 99, false],
    [10, 100, false], // bytes moved: active again at 100
    [10, 150, false],
    [10, 199, false],
    [10, 200, true], // 100 ms without a byte either way
    [10, 500, true],
    [11, 501, false],
  ];
  test('a stream is idle after timeoutMs without bytes, and active again at the next byte', () => {
    const state: IdleState = { lastBytes: 0, lastActiveAt: 0 };
    for (const [bytes, now, idle] of steps) assert.equal(checkIdle(state, bytes, now, 100), idle, `at ${now} with ${bytes} bytes`);
  });

  test('a timeout of 0 turns the rule off', () => {
    const state: IdleState = { lastBytes: 0, lastActiveAt: 0 };
    assert.equal(checkIdle(state, 0, 10 * 24 * 3600_000, 0), false);
  });

  test('scan interval: an eighth of the timeout, within 1 s .. 60 s', () => {
    assert.deepEqual(
      [100, 8_000, 80_000, 4 * 3600_000].map(idleScanIntervalMs),
      [1000, 1000, 10_000, 60_000],
    );
  });
});
