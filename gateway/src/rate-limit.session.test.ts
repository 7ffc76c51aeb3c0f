/**
 * The per-session rate limits driven through a real Gateway: client and agent sessions over in-memory sockets
 * (every frame waits in a queue until `flush()`), an injected clock for the buckets. Each kind gets its typed
 * refusal, the session survives a burst, a session that keeps going is closed with 4429, and the other sessions
 * never notice.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PROTOCOL_VERSION, signToken } from '@narrowlink/protocol';
import { GatewayErrorCode } from './errors.ts';
import type { IdentityRateLimits, RateLimits } from './rate-limit.ts';
import { memoryGateway, memoryKeys as keys, metricValue as counter, T0 } from './testing/memory-gateway.ts';

function setup(rateLimits: Partial<RateLimits>, identityRateLimits: Partial<IdentityRateLimits> = {}) {
  return memoryGateway({ rateLimits, identityRateLimits });
}

describe('per-session rate limits through the gateway', () => {
  test('OPEN: a burst, then RATE_LIMITED (TOO_MANY_STREAMS for 1.2 clients); refilled by time; a flood is closed 4429; others unaffected', async () => {
    const { metrics, clock, connect, open, gateway } = setup({ open: { perSecond: 2, burst: 3 }, abuse: { perSecond: 1, burst: 3 } });
    connect('agent');
    const abuser = connect('client');
    const old = connect('client', { sub: 'bob', version: '1.2' });
    const victim = connect('client', { sub: 'carol' });
    assert.deepEqual([1, 2, 3].map(() => open(abuser).ok), [true, true, true]);
    assert.equal(open(abuser).reset?.code, 'RATE_LIMITED');
    assert.deepEqual([1, 2, 3].map(() => open(old).ok), [true, true, true]);
    assert.equal(open(old).reset?.code, 'TOO_MANY_STREAMS', 'an older client gets the nearest code it knows');
    // Half a second refills one token.
    clock.now += 500;
    assert.equal(open(abuser).ok, true);
    assert.equal(open(abuser).reset?.code, 'RATE_LIMITED');
    assert.equal(abuser.socket.closed, undefined, 'refusals within the tolerance keep the session');
    // Going on: the tolerated refusals run out and the session is closed.
    let closedAfter = 0;
    while (!abuser.socket.closed && closedAfter < 10) {
      open(abuser);
      closedAfter++;
    }
    assert.deepEqual(abuser.socket.closed, { code: 4429, reason: GatewayErrorCode.RATE_LIMITED });
    assert.ok(abuser.errors().includes(GatewayErrorCode.RATE_LIMITED));
    // The victim's session has its own buckets.
    assert.deepEqual([1, 2, 3].map(() => open(victim).ok), [true, true, true]);
    assert.equal(await counter(metrics, 'narrowlink_gateway_rate_limited_total', { kind: 'open' }), 2 + 1 + closedAfter);
    assert.equal(await counter(metrics, 'narrowlink_gateway_rate_limit_closes_total'), 1);
    assert.equal(await counter(metrics, 'narrowlink_gateway_streams_total', { result: 'RATE_LIMITED' }), 2 + closedAfter);
    await gateway.shutdown(0);
  });

  test('PING: a burst is answered, then PINGs go unanswered (the session stays); refilled by time; a flood is closed 4429', async () => {
    const { metrics, clock, connect, flush, gateway } = setup({ ping: { perSecond: 1, burst: 3 }, abuse: { perSecond: 1, burst: 5 } });
    const flooder = connect('client');
    const other = connect('client', { sub: 'carol' });
    let pongs = 0;
    flooder.mux.handlers.onPong = () => pongs++;
    let otherPongs = 0;
    other.mux.handlers.onPong = () => otherPongs++;
    const pings = (n: number): void => {
      for (let i = 0; i < n; i++) flooder.mux.ping();
      flush();
    };
    pings(4);
    assert.equal(pongs, 3, 'the burst is answered, the fourth PING is not');
    assert.equal(flooder.socket.closed, undefined, 'an unanswered PING keeps the session');
    clock.now += 1000;
    pings(2);
    assert.equal(pongs, 4, 'a second refills one answer');
    // Past the tolerance: closed like any other flood.
    for (let i = 0; i < 10 && !flooder.socket.closed; i++) pings(1);
    assert.deepEqual(flooder.socket.closed, { code: 4429, reason: GatewayErrorCode.RATE_LIMITED });
    assert.equal(pongs, 4);
    other.mux.ping();
    flush();
    assert.equal(otherPongs, 1, 'another session has its own bucket');
    assert.ok((await counter(metrics, 'narrowlink_gateway_rate_limited_total', { kind: 'ping' })) >= 6);
    await gateway.shutdown(0);
  });

  test('list_agents: over the limit a typed error, the session stays; the next token answers again', async () => {
    const { metrics, clock, connect, flush, gateway } = setup({ listAgents: { perSecond: 1, burst: 2 } });
    const client = connect('client');
    for (const requestId of [1, 2, 3]) client.mux.sendControl({ type: 'list_agents', requestId });
    flush();
    assert.deepEqual(
      client.controls.flatMap((c) => (c.type === 'agents' ? [c.requestId] : [])),
      [1, 2],
    );
    assert.deepEqual(client.errors(), [GatewayErrorCode.RATE_LIMITED]);
    assert.equal(client.socket.closed, undefined);
    clock.now += 1000;
    client.mux.sendControl({ type: 'list_agents', requestId: 4 });
    flush();
    assert.ok(client.controls.some((c) => c.type === 'agents' && c.requestId === 4));
    assert.equal(await counter(metrics, 'narrowlink_gateway_rate_limited_total', { kind: 'list_agents' }), 1);
    await gateway.shutdown(0);
  });

  test('direct_request: over the limit direct_refused RateLimited (TooManyAttempts for 1.2 clients)', async () => {
    const { connect, flush, gateway } = setup({ directRequest: { perSecond: 1, burst: 1 } });
    connect('agent');
    for (const [sub, version, expected] of [
      ['alice', PROTOCOL_VERSION, 'RateLimited'],
      ['bob', '1.2', 'TooManyAttempts'],
    ] as const) {
      const client = connect('client', { sub, version });
      client.mux.sendControl({ type: 'direct_request', requestId: 1, agent: 'db' });
      client.mux.sendControl({ type: 'direct_request', requestId: 2, agent: 'db' });
      flush();
      const refusals = client.controls.flatMap((c) => (c.type === 'direct_refused' ? [[c.requestId, c.reason]] : []));
      // The first goes to the broker (no probe ports here: ProbingDisabled), the second is rate-limited.
      assert.deepEqual(refusals, [
        [1, 'ProbingDisabled'],
        [2, expected],
      ]);
      assert.equal(client.socket.closed, undefined);
    }
    await gateway.shutdown(0);
  });

  test('reauth: over the limit a typed error and the current credential stays; the session is not closed', async () => {
    const { metrics, connect, flush, gateway } = setup({ reauth: { perSecond: 0.1, burst: 1 } });
    const client = connect('client');
    const fresh = await signToken(keys.privateKeyPem, { typ: 'client', sub: 'alice', groups: ['dev'], ttlSeconds: 7200, nowMs: T0 });
    client.mux.sendControl({ type: 'reauth', token: fresh });
    flush();
    // Authentication is asynchronous (the signature check runs off the main thread): let it finish, however
    // loaded the machine is (a fixed number of event-loop turns was not always enough under a full test run).
    for (const deadline = performance.now() + 10_000; performance.now() < deadline && !client.controls.some((c) => c.type === 'reauth_ok'); ) {
      await new Promise((r) => setTimeout(r, 5));
      flush();
    }
    assert.ok(client.controls.some((c) => c.type === 'reauth_ok'));
    client.mux.sendControl({ type: 'reauth', token: fresh });
    flush();
    assert.deepEqual(client.errors(), [GatewayErrorCode.RATE_LIMITED]);
    assert.equal(client.controls.filter((c) => c.type === 'reauth_ok').length, 1);
    assert.equal(client.socket.closed, undefined);
    assert.equal(await counter(metrics, 'narrowlink_gateway_rate_limited_total', { kind: 'reauth' }), 1);
    await gateway.shutdown(0);
  });

  test('reconnecting does not reset the limits: the abuse bucket follows the identity; its buckets span its sessions', async () => {
    const { connect, open, gateway, metrics } = setup({ open: { perSecond: 0.001, burst: 3 } }, { open: { perSecond: 0.001, burst: 5 }, abuse: { perSecond: 0.001, burst: 3 } });
    connect('agent');
    const first = connect('client', { sub: 'mallory' });
    for (let i = 0; i < 10 && !first.socket.closed; i++) open(first);
    assert.equal(first.socket.closed?.code, 4429);
    // A fresh session of the same identity: its first refusal closes it (the identity's tolerance is spent).
    const second = connect('client', { sub: 'mallory' });
    assert.equal(open(second).ok, true, 'the new session has its own burst of 3 left within the identity burst of 5');
    assert.equal(open(second).ok, true);
    // The identity bucket (5 over both sessions) is empty, and one refusal is one too many: the session is closed.
    assert.equal(open(second).ok, false);
    assert.equal(second.socket.closed?.code, 4429);
    // Another identity is untouched.
    const alice = connect('client', { sub: 'alice' });
    assert.equal(open(alice).ok, true);
    assert.equal(alice.socket.closed, undefined);
    assert.ok((await counter(metrics, 'narrowlink_gateway_rate_limit_closes_total')) >= 2);
    await gateway.shutdown(0);
  });

  test('connect: an identity opening sessions faster than its limit is closed 4429 before its hello; time refills it', async () => {
    const { connect, clock, gateway, metrics } = setup({}, { connect: { perSecond: 1, burst: 2 } });
    connect('client', { sub: 'loop' });
    connect('client', { sub: 'loop' });
    const third = connect('client', { sub: 'loop', expectHelloOk: false });
    assert.deepEqual(third.socket.closed, { code: 4429, reason: GatewayErrorCode.RATE_LIMITED });
    assert.ok(third.errors().includes(GatewayErrorCode.RATE_LIMITED));
    assert.equal(third.controls.some((c) => c.type === 'hello_ok'), false);
    connect('client', { sub: 'other' });
    clock.now += 1000;
    connect('client', { sub: 'loop' });
    assert.equal(await counter(metrics, 'narrowlink_gateway_rate_limited_total', { kind: 'connect' }), 1);
    await gateway.shutdown(0);
  });
});
