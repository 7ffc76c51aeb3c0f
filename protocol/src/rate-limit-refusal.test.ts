import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatRateLimitRefusal, parseRateLimitRefusal } from './rate-limit-refusal.ts';

test('a refusal message round-trips its kind and retry time', () => {
  assert.deepEqual(parseRateLimitRefusal(formatRateLimitRefusal('list_agents', 199.2)), { kind: 'list_agents', retryAfterMs: 200 });
  assert.deepEqual(parseRateLimitRefusal(formatRateLimitRefusal('reauth', -5)), { kind: 'reauth', retryAfterMs: 0 });
});

test('anything else is not a refusal', () => {
  for (const text of ['', 'list_agents rate limit', 'open rate limit; retry in 5 ms', 'list_agents rate limit; retry in 5 ms extra', 'reauth rate limit; retry in 1234567890 ms']) {
    assert.equal(parseRateLimitRefusal(text), undefined, text);
  }
});
