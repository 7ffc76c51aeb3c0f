/**
 * Issue 10, class 1 across identities: several identities, each within its own shares, must not fill an agent
 * between them. Driven through a real Gateway over in-memory sockets (an agent of 64 streams, so the numbers stay
 * small): the agent's last quarter is kept for identities holding few streams.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { StreamErrorCode } from '@narrowlink/protocol';
import { memoryGateway, metricValue } from './testing/memory-gateway.ts';

test('heavy identities stop at the agent reserve; a light user still opens; the refusal is SHARE_EXCEEDED (reserve)', async () => {
  const { connect, open, gateway, metrics } = memoryGateway({
    maxStreamsPerSession: 64,
    streamShares: { perSession: 20, perIdentity: 20, reserveFloor: 4 },
  });
  connect('agent');
  const heavy = ['h1', 'h2', 'h3', 'h4'].map((sub) => connect('client', { sub }));
  const results = heavy.map((peer) => Array.from({ length: 20 }, () => open(peer)));
  const opened = results.map((r) => r.filter((o) => o.ok).length);
  // 48 unreserved streams: h1 and h2 take 20 each, h3 8; then h3 (8 >= 4) is refused, h4 takes 4 of the reserve.
  assert.deepEqual(opened, [20, 20, 8, 4]);
  const refusal = results[2]?.find((o) => o.reset)?.reset;
  assert.equal(refusal?.code, StreamErrorCode.SHARE_EXCEEDED);
  assert.match(refusal?.message ?? '', /kept for identities holding fewer than 4/);
  const alice = connect('client', { sub: 'alice' });
  assert.equal(open(alice).ok, true, 'a light user gets in although four identities hold all they may');
  assert.equal(await metricValue(metrics, 'narrowlink_gateway_stream_shares_full', { kind: 'reserve' }), 1);
  assert.equal(await metricValue(metrics, 'narrowlink_gateway_stream_share_refusals_total', { kind: 'reserve' }), 12 + 16);
  await gateway.shutdown(0);
});
