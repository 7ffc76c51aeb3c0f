/**
 * Issue 10, class 4 at its cause: an OPEN flood from one identity must not queue everyone else's OPEN behind its
 * dials at the agent. Driven through a real Gateway over in-memory sockets; the agent holds every OPEN until the
 * test answers it, oldest first, as an agent's one event loop does.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { StreamErrorCode } from '@narrowlink/protocol';
import { memoryGateway, metricValue } from './testing/memory-gateway.ts';

describe('fair OPEN admission per agent instance', () => {
  test('an OPEN-and-cancel flood holds at most its identity cap of dials; a victim is dialled next', async () => {
    const { connect, open, flush, gateway, metrics } = memoryGateway({ openAdmission: { perAgent: 64, perIdentity: 8 } });
    const agent = connect('agent', { holdOpens: true });
    const mallory = connect('client', { sub: 'mallory' });
    const alice = connect('client', { sub: 'alice' });
    // 200 OPENs, each cancelled at once, as fast as the socket drains.
    for (let i = 0; i < 200; i++) {
      const attempt = open(mallory, false);
      attempt.stream.reset(StreamErrorCode.CANCELLED, 'never mind');
    }
    flush();
    assert.equal(agent.received.length, 8, 'the agent sees only the identity cap of OPENs, cancelled or not');
    assert.equal(await metricValue(metrics, 'narrowlink_gateway_relay_opens_queued'), 0, 'cancelled queued OPENs leave the queue');
    const victim = open(alice);
    assert.deepEqual(agent.received.at(-1), 'alice', 'the victim is dialled at once: the agent has free slots');
    // The agent answers in order: mallory's eight cancelled dials first (the gateway resets them), then alice.
    while (agent.inbox.length > 0) {
      agent.inbox.shift()?.accept({ path: 'relay' });
      flush();
    }
    assert.equal(victim.ok, true);
    assert.equal(agent.received.filter((who) => who === 'mallory').length, 8, 'cancelled OPENs never reached the agent');
    await gateway.shutdown(0);
  });

  test('one identity cannot take every dial slot; queued OPENs start as slots free, lightest identity first', async () => {
    const { connect, open, flush, gateway, metrics } = memoryGateway({ openAdmission: { perAgent: 4, perIdentity: 3 } });
    const agent = connect('agent', { holdOpens: true });
    const heavy = connect('client', { sub: 'heavy' });
    const other = connect('client', { sub: 'other' });
    const light = connect('client', { sub: 'light' });
    const heavyOpens = Array.from({ length: 10 }, () => open(heavy, false));
    flush();
    assert.equal(agent.received.length, 3);
    const others = [open(other), open(other)];
    assert.deepEqual(agent.received.slice(3), ['other'], 'the agent limit leaves one slot; other takes it');
    assert.equal(await metricValue(metrics, 'narrowlink_gateway_relay_opens_queued'), 8);
    const lightOpen = open(light);
    // One answer frees one slot: light (nothing outstanding) goes before other's second and heavy's seven.
    agent.inbox.shift()?.accept({ path: 'relay' });
    flush();
    assert.equal(agent.received.at(-1), 'light');
    while (agent.inbox.length > 0) {
      agent.inbox.shift()?.accept({ path: 'relay' });
      flush();
    }
    assert.ok([...heavyOpens, ...others, lightOpen].every((o) => o.ok), 'every queued OPEN was served in the end');
    assert.equal(await metricValue(metrics, 'narrowlink_gateway_relay_opens_queued'), 0);
    await gateway.shutdown(0);
  });

  test('queued OPENs fail PEER_GONE when the instance leaves, and a policy change revokes them DENIED', async () => {
    const { connect, open, flush, gateway, metrics, peers } = memoryGateway({ openAdmission: { perAgent: 1, perIdentity: 1 } });
    const agent = connect('agent', { holdOpens: true });
    const client = connect('client');
    const first = open(client);
    const queued = [open(client), open(client)];
    assert.equal(agent.received.length, 1);
    agent.socket.close(1001, 'going away');
    flush();
    assert.equal(first.reset?.code !== undefined, true, 'the dialling OPEN ends with its agent');
    assert.deepEqual(
      queued.map((q) => q.reset?.code),
      [StreamErrorCode.PEER_GONE, StreamErrorCode.PEER_GONE],
      'queued OPENs fail at once, not at the open timeout',
    );
    assert.equal(await metricValue(metrics, 'narrowlink_gateway_relay_opens_queued'), 0);

    const agent2 = connect('agent', { holdOpens: true });
    open(client);
    const waiting = open(client);
    assert.equal(agent2.received.length, 1);
    const config = gateway.config;
    assert.ok(config);
    gateway.applyConfig({ ...config, policies: [] });
    flush();
    assert.equal(waiting.reset?.code, StreamErrorCode.DENIED, 'revocation reaches OPENs still queued');
    assert.equal(peers.length, 3);
    await gateway.shutdown(0);
  });
});
