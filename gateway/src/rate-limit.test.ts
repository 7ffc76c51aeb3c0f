import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  DEFAULT_IDENTITY_RATE_LIMITS,
  DEFAULT_RATE_LIMITS,
  IdentityRateLimiters,
  parseRateLimit,
  type RateDecision,
  type RateLimits,
  SessionRateLimiter,
  TokenBucket,
} from './rate-limit.ts';

describe('TokenBucket', () => {
  // Each row: the bucket, then [ms since start, expected take()] in order.
  const table: Array<{ name: string; perSecond: number; burst: number; takes: Array<[number, boolean]> }> = [
    { name: 'a full burst at once, then empty', perSecond: 1, burst: 3, takes: [[0, true], [0, true], [0, true], [0, false], [999, false], [1000, true], [1000, false]] },
    { name: 'refills at the rate, never above the burst', perSecond: 10, burst: 2, takes: [[0, true], [0, true], [0, false], [100, true], [10_000, true], [10_000, true], [10_000, false]] },
    { name: 'fractional rates accumulate', perSecond: 0.2, burst: 1, takes: [[0, true], [2500, false], [4999, false], [5000, true], [5001, false]] },
    { name: 'rate 0 is off', perSecond: 0, burst: 0, takes: [[0, true], [0, true], [0, true]] },
    { name: 'a clock stepping back refills nothing', perSecond: 1, burst: 1, takes: [[5000, true], [1000, false], [1999, false], [2000, true]] },
  ];
  for (const row of table) {
    test(row.name, () => {
      const bucket = new TokenBucket({ perSecond: row.perSecond, burst: row.burst }, 0);
      const got = row.takes.map(([ms]) => bucket.take(ms));
      assert.deepEqual(got, row.takes.map(([, ok]) => ok));
    });
  }

  test('retryAfterMs: 0 with a token, else the time to the next one', () => {
    const bucket = new TokenBucket({ perSecond: 4, burst: 1 }, 0);
    assert.equal(bucket.retryAfterMs(0), 0);
    assert.equal(bucket.take(0), true);
    assert.equal(bucket.retryAfterMs(0), 250);
    assert.equal(bucket.retryAfterMs(100), 150);
    assert.equal(bucket.retryAfterMs(250), 0);
  });
});

describe('SessionRateLimiter', () => {
  const limits: RateLimits = {
    open: { perSecond: 10, burst: 3 },
    listAgents: { perSecond: 1, burst: 1 },
    directRequest: { perSecond: 1, burst: 2 },
    reauth: { perSecond: 0, burst: 0 },
    ping: { perSecond: 1, burst: 1 },
    abuse: { perSecond: 1, burst: 2 },
  };

  test('each kind has its own bucket; refusals spend the abuse bucket, then the session is abusive', () => {
    let now = 0;
    const limiter = new SessionRateLimiter(limits, () => now);
    const opens: RateDecision[] = [1, 2, 3, 4].map(() => limiter.check('open'));
    assert.deepEqual(opens, ['allowed', 'allowed', 'allowed', 'refused']);
    // Another kind is unaffected by the open bucket.
    assert.equal(limiter.check('list_agents'), 'allowed');
    assert.equal(limiter.check('direct_request'), 'allowed');
    // reauth is off (rate 0).
    assert.deepEqual([1, 2, 3, 4, 5].map(() => limiter.check('reauth')), ['allowed', 'allowed', 'allowed', 'allowed', 'allowed']);
    // The second refusal spends the last abuse token; the third is abusive, whatever its kind.
    assert.equal(limiter.check('list_agents'), 'refused');
    assert.equal(limiter.check('open'), 'abusive');
    // Time refills both: a request within the limit is allowed again, and refusals are tolerated again.
    now = 1000;
    assert.equal(limiter.check('open'), 'allowed');
    assert.equal(limiter.check('list_agents'), 'allowed');
    assert.equal(limiter.check('list_agents'), 'refused');
    assert.equal(limiter.retryAfterMs('list_agents'), 1000);
  });

  test('a client within its limits is never refused, however long it runs', () => {
    let now = 0;
    const limiter = new SessionRateLimiter(DEFAULT_RATE_LIMITS, () => now);
    // 1,000 OPENs a second for a minute, in bursts of 100 every 100 ms, plus an ls a second.
    for (let tick = 0; tick < 600; tick++) {
      now = tick * 100;
      for (let i = 0; i < 100; i++) assert.equal(limiter.check('open'), 'allowed');
      if (tick % 10 === 0) assert.equal(limiter.check('list_agents'), 'allowed');
    }
  });

  test('a flood at full speed is closed after the tolerated refusals', () => {
    const limiter = new SessionRateLimiter(DEFAULT_RATE_LIMITS, () => 0);
    const counts: Record<RateDecision, number> = { allowed: 0, refused: 0, abusive: 0 };
    let decision: RateDecision = 'allowed';
    while (decision !== 'abusive') {
      decision = limiter.check('open');
      counts[decision]++;
    }
    assert.deepEqual(counts, { allowed: DEFAULT_RATE_LIMITS.open.burst, refused: DEFAULT_RATE_LIMITS.abuse.burst, abusive: 1 });
  });
});

describe('parseRateLimit', () => {
  const table: Array<[string, ReturnType<typeof parseRateLimit>]> = [
    ['1000:2000', { perSecond: 1000, burst: 2000 }],
    ['0.2:10', { perSecond: 0.2, burst: 10 }],
    [' 5:20 ', { perSecond: 5, burst: 20 }],
    ['0', { perSecond: 0, burst: 0 }],
    ['0:5', { perSecond: 0, burst: 5 }],
    ['10', undefined],
    ['10:0', undefined],
    ['10:1.5', undefined],
    ['-1:5', undefined],
    ['ten:5', undefined],
    ['', undefined],
  ];
  for (const [text, expected] of table) test(JSON.stringify(text), () => assert.deepEqual(parseRateLimit(text), expected));
});

describe('IdentityRateLimiters', () => {
  test('an identity\'s buckets outlive its sessions until they have refilled, then are forgotten', () => {
    const clock = { now: 0 };
    const limits = { ...DEFAULT_IDENTITY_RATE_LIMITS, open: { perSecond: 10, burst: 20 }, connect: { perSecond: 1, burst: 2 } };
    const identities = new IdentityRateLimiters(limits, () => clock.now);
    const first = identities.acquire('client\u0000alice');
    assert.ok(first);
    const limiter = new SessionRateLimiter(DEFAULT_RATE_LIMITS, () => clock.now, first);
    for (let i = 0; i < 20; i++) assert.equal(limiter.check('open'), 'allowed');
    assert.equal(limiter.check('open'), 'refused', 'the identity burst of 20 is spent (the session allows 2,000)');
    identities.release(first);
    identities.sweep();
    assert.equal(identities.size, 1, 'kept right after its last session: a reconnect must not start afresh');
    const again = identities.acquire('client\u0000alice');
    assert.equal(again, first, 'a reconnect gets the same buckets');
    assert.equal(identities.acquire('client\u0000alice'), undefined, 'a third session within the connect burst of 2 is refused');
    identities.release(first);
    // The slowest bucket of these limits is reauth's (20 at 0.5/s = 40 s).
    clock.now += 39_999;
    identities.sweep();
    assert.equal(identities.size, 1);
    clock.now += 1;
    identities.sweep();
    assert.equal(identities.size, 0);
  });

  test('defaults: an identity may do twice what one session may', () => {
    assert.equal(DEFAULT_IDENTITY_RATE_LIMITS.open.perSecond, 2 * DEFAULT_RATE_LIMITS.open.perSecond);
    assert.equal(DEFAULT_IDENTITY_RATE_LIMITS.listAgents.perSecond, 2 * DEFAULT_RATE_LIMITS.listAgents.perSecond);
    assert.equal(DEFAULT_IDENTITY_RATE_LIMITS.directRequest.perSecond, 2 * DEFAULT_RATE_LIMITS.directRequest.perSecond);
  });
});
