import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { Mux, type MuxStream, type OpenPayload, type ResetPayload, StreamErrorCode } from '@narrowlink/protocol';
import { splice } from './relay.ts';

/**
 * Four muxes: client ↔ gateway(client side) and gateway(agent side) ↔ agent. Every frame waits in
 * an explicit queue until the test delivers it, so the interleaving is under the test's control.
 */
function topology(options: { clientWindow?: number; agentWindow?: number; maxDataFrame?: number } = {}) {
  const clientWindow = options.clientWindow ?? 64 * 1024;
  const agentWindow = options.agentWindow ?? 64 * 1024;
  const maxDataFrame = options.maxDataFrame ?? 16 * 1024;
  const queues = { c2g: [] as Buffer[], g2c: [] as Buffer[], g2a: [] as Buffer[], a2g: [] as Buffer[] };
  const gatewayAccepted: { stream: MuxStream; payload: OpenPayload }[] = [];
  const agentAccepted: { stream: MuxStream; payload: OpenPayload }[] = [];
  // The gateway grants `clientWindow` to the client and the agent grants `agentWindow` to the gateway.
  const clientMux = new Mux({ role: 'initiator', send: (b) => queues.c2g.push(b), localWindow: clientWindow, peerWindow: clientWindow, maxDataFrame });
  const gwClient = new Mux({
    role: 'acceptor',
    send: (b) => queues.g2c.push(b),
    localWindow: clientWindow,
    peerWindow: clientWindow,
    maxDataFrame,
    handlers: { onOpen: (stream, payload) => gatewayAccepted.push({ stream, payload }) },
  });
  const gwAgent = new Mux({ role: 'acceptor', send: (b) => queues.g2a.push(b), localWindow: agentWindow, peerWindow: agentWindow, maxDataFrame });
  const agentMux = new Mux({
    role: 'initiator',
    send: (b) => queues.a2g.push(b),
    localWindow: agentWindow,
    peerWindow: agentWindow,
    maxDataFrame,
    handlers: { onOpen: (stream, payload) => agentAccepted.push({ stream, payload }) },
  });
  const links: Array<[Buffer[], Mux]> = [
    [queues.c2g, gwClient],
    [queues.g2c, clientMux],
    [queues.g2a, agentMux],
    [queues.a2g, gwAgent],
  ];
  /** Delivers one frame at a time, round robin, until every queue is empty; `afterEach` runs after each. */
  function flush(afterEach?: () => void): number {
    let delivered = 0;
    for (;;) {
      let moved = false;
      for (const [queue, mux] of links) {
        const frame = queue.shift();
        if (!frame) continue;
        mux.receive(frame);
        delivered++;
        moved = true;
        afterEach?.();
      }
      if (!moved) return delivered;
    }
  }
  return { clientMux, gwClient, gwAgent, agentMux, queues, gatewayAccepted, agentAccepted, flush, clientWindow, agentWindow };
}

function recorder(stream: MuxStream, options: { consume?: boolean } = {}) {
  const events = {
    stream,
    data: [] as Buffer[],
    fins: 0,
    resets: [] as { reset: ResetPayload; local: boolean }[],
    closes: 0,
    /** Order of events, for "FIN after the data" checks. */
    log: [] as string[],
    consume: options.consume ?? true,
    bytes: () => Buffer.concat(events.data),
  };
  stream.handlers = {
    ...stream.handlers,
    onData: (d) => {
      events.data.push(Buffer.from(d));
      events.log.push(`data:${d.length}`);
      if (events.consume) stream.consumed(d.length);
    },
    onFin: () => {
      events.fins++;
      events.log.push('fin');
    },
    onReset: (reset, local) => {
      events.resets.push({ reset, local });
      events.log.push(`reset:${reset.code}`);
    },
    onClose: () => {
      events.closes++;
    },
  };
  return events;
}

/** Opens client → gateway → agent, accepts on both hops and splices at the gateway the way gateway.ts does. */
function relayed(options: Parameters<typeof topology>[0] & { agentConsumes?: boolean } = {}) {
  const t = topology(options);
  const clientStream = t.clientMux.open({ agent: 'db', port: 5432 });
  const client = recorder(clientStream);
  t.flush();
  const gwClientStream = t.gatewayAccepted.at(-1)?.stream;
  assert.ok(gwClientStream, 'gateway saw the client OPEN');
  const gwAgentStream = t.gwAgent.open({ host: '127.0.0.1', port: 5432, client: 'alice' });
  let opened = false;
  gwAgentStream.handlers = { onOpenOk: () => (opened = true) };
  t.flush();
  const agentStream = t.agentAccepted.at(-1)?.stream;
  assert.ok(agentStream, 'agent saw the gateway OPEN');
  const agent = recorder(agentStream, { consume: options.agentConsumes ?? true });
  agentStream.accept({ path: 'relay' });
  t.flush();
  assert.ok(opened, 'gateway saw OPEN_OK');
  gwClientStream.accept({ path: 'relay' });
  const counted = { client_to_agent: 0, agent_to_client: 0, closed: 0, queued: 0 };
  const pipes = splice(gwClientStream, gwAgentStream, {
    onBytes: (direction, bytes) => {
      counted[direction] += bytes;
    },
    onQueued: (delta) => {
      counted.queued += delta;
    },
    onClosed: () => {
      counted.closed++;
    },
  });
  t.flush();
  assert.equal(clientStream.state, 'open');
  return { ...t, client, agent, gwClientStream, gwAgentStream, counted, pipes };
}

/** Writes all of `data`, resuming on credit, delivering frames in between; returns bytes accepted. */
function writeAll(r: ReturnType<typeof relayed>, stream: MuxStream, data: Buffer, afterEach?: () => void): number {
  let offset = 0;
  for (let round = 0; round < 10_000 && offset < data.length; round++) {
    offset += stream.write(data.subarray(offset));
    if (r.flush(afterEach) === 0 && stream.sendCredit === 0) break;
  }
  return offset;
}

describe('splice', () => {
  test('reports queued bytes as deltas that track the queues and return to zero after a reset', () => {
    const window = 32 * 1024;
    const r = relayed({ clientWindow: window, agentWindow: window, agentConsumes: false });
    writeAll(r, r.client.stream, randomBytes(2 * window));
    assert.equal(r.counted.queued, r.pipes.up.queuedBytes);
    assert.equal(r.counted.queued, window);
    r.client.stream.reset(StreamErrorCode.CANCELLED, 'user gave up');
    r.flush();
    assert.equal(r.counted.closed, 1);
    assert.equal(r.counted.queued, 0, 'nothing is reported as held once both legs closed');
  });

  test('relays bytes in both directions and counts them', () => {
    const r = relayed();
    const up = randomBytes(300_000);
    const down = randomBytes(200_000);
    assert.equal(writeAll(r, r.client.stream, up), up.length);
    assert.equal(writeAll(r, r.agent.stream, down), down.length);
    r.flush();
    assert.ok(r.agent.bytes().equals(up), 'agent received exactly the client bytes');
    assert.ok(r.client.bytes().equals(down), 'client received exactly the agent bytes');
    assert.equal(r.counted.client_to_agent, up.length);
    assert.equal(r.counted.agent_to_client, down.length);
    assert.equal(r.pipes.up.queuedBytes, 0);
    assert.equal(r.pipes.down.queuedBytes, 0);
  });

  test('a FIN from each side ends the relay cleanly and closes both legs once', () => {
    const r = relayed();
    r.client.stream.write(Buffer.from('ping'));
    r.client.stream.fin();
    r.flush();
    assert.equal(r.agent.bytes().toString(), 'ping');
    assert.equal(r.agent.fins, 1);
    assert.equal(r.counted.closed, 0, 'half-closed: the other direction still runs');
    r.agent.stream.write(Buffer.from('pong'));
    r.agent.stream.fin();
    r.flush();
    assert.equal(r.client.bytes().toString(), 'pong');
    assert.equal(r.client.fins, 1);
    assert.equal(r.counted.closed, 1);
    assert.equal(r.client.resets.length + r.agent.resets.length, 0);
    for (const mux of [r.clientMux, r.gwClient, r.gwAgent, r.agentMux]) assert.equal(mux.streamCount, 0);
  });

  test('FIN is forwarded only after the queued bytes drained to the slow side', () => {
    const window = 32 * 1024;
    const r = relayed({ clientWindow: window, agentWindow: window, agentConsumes: false });
    const data = randomBytes(2 * window);
    const sent = writeAll(r, r.client.stream, data);
    assert.equal(sent, 2 * window, 'one window in the agent, one queued at the gateway');
    assert.equal(r.pipes.up.queuedBytes, window);
    r.client.stream.fin();
    r.flush();
    assert.equal(r.agent.fins, 0, 'FIN waits behind the queued bytes');
    assert.equal(r.agent.bytes().length, window);
    // The agent reads: credit flows back, the gateway drains its queue, then forwards the FIN.
    r.agent.consume = true;
    r.agent.stream.consumed(window);
    r.flush();
    assert.equal(r.pipes.up.queuedBytes, 0);
    assert.equal(r.agent.fins, 1);
    assert.ok(r.agent.bytes().equals(data));
    assert.equal(r.agent.log.at(-1), 'fin', 'FIN is the last thing the agent saw');
  });

  test('a FIN from the agent reaches the client after queued bytes too', () => {
    const window = 32 * 1024;
    const r = relayed({ clientWindow: window, agentWindow: window });
    r.client.consume = false;
    const data = randomBytes(2 * window);
    assert.equal(writeAll(r, r.agent.stream, data), 2 * window);
    r.agent.stream.fin();
    r.flush();
    assert.equal(r.client.fins, 0);
    r.client.consume = true;
    r.client.stream.consumed(window);
    r.flush();
    assert.equal(r.client.fins, 1);
    assert.ok(r.client.bytes().equals(data));
    assert.equal(r.client.log.at(-1), 'fin');
  });

  test('client CANCELLED reaches the agent as CANCELLED', () => {
    const r = relayed();
    r.client.stream.reset(StreamErrorCode.CANCELLED, 'user pressed ^C');
    r.flush();
    assert.deepEqual(
      r.agent.resets.map((x) => [x.reset.code, x.local]),
      [[StreamErrorCode.CANCELLED, false]],
    );
    assert.equal(r.counted.closed, 1);
    assert.equal(r.gwAgent.streamCount, 0);
    assert.equal(r.agentMux.streamCount, 0);
  });

  test('any other client reset reaches the agent as PEER_GONE', () => {
    const r = relayed();
    r.client.stream.reset(StreamErrorCode.INTERNAL, 'client crashed');
    r.flush();
    assert.deepEqual(
      r.agent.resets.map((x) => x.reset.code),
      [StreamErrorCode.PEER_GONE],
    );
    assert.equal(r.counted.closed, 1);
  });

  test('agent PEER_GONE and DIAL_FAILED reach the client unchanged; agent CANCELLED becomes PEER_GONE', () => {
    for (const [sent, expected] of [
      [StreamErrorCode.PEER_GONE, StreamErrorCode.PEER_GONE],
      [StreamErrorCode.DIAL_FAILED, StreamErrorCode.DIAL_FAILED],
      [StreamErrorCode.CANCELLED, StreamErrorCode.PEER_GONE],
    ] as const) {
      const r = relayed();
      r.agent.stream.reset(sent, 'target went away');
      r.flush();
      assert.deepEqual(
        r.client.resets.map((x) => [x.reset.code, x.local]),
        [[expected, false]],
        `agent ${sent}`,
      );
      assert.equal(r.counted.closed, 1);
      assert.equal(r.gwClient.streamCount, 0);
    }
  });

  test('losing the agent session resets the client leg with PEER_GONE', () => {
    const r = relayed();
    r.gwAgent.close(StreamErrorCode.PEER_GONE, 'agent session closed');
    r.flush();
    assert.deepEqual(
      r.client.resets.map((x) => x.reset.code),
      [StreamErrorCode.PEER_GONE],
    );
    assert.equal(r.counted.closed, 1);
  });

  test('losing the client session cancels the agent leg', () => {
    const r = relayed();
    r.gwClient.close(StreamErrorCode.PEER_GONE, 'client session closed');
    r.flush();
    assert.deepEqual(
      r.agent.resets.map((x) => x.reset.code),
      [StreamErrorCode.PEER_GONE],
    );
    assert.equal(r.counted.closed, 1);
  });

  test('a reset after the queue filled drops the queued bytes and resets the other side', () => {
    const window = 16 * 1024;
    const r = relayed({ clientWindow: window, agentWindow: window, agentConsumes: false });
    writeAll(r, r.client.stream, randomBytes(2 * window));
    assert.equal(r.pipes.up.queuedBytes, window);
    r.agent.stream.reset(StreamErrorCode.PEER_GONE, 'agent gone');
    r.flush();
    assert.deepEqual(
      r.client.resets.map((x) => x.reset.code),
      [StreamErrorCode.PEER_GONE],
    );
    assert.equal(r.counted.closed, 1);
    assert.equal(r.counted.client_to_agent, window, 'queued bytes were never counted as relayed');
  });

  test('backpressure: a reader that never consumes bounds the gateway queue to the client window', () => {
    for (const [clientWindow, agentWindow] of [
      [64 * 1024, 64 * 1024],
      [64 * 1024, 16 * 1024],
      [16 * 1024, 64 * 1024],
    ] as const) {
      const r = relayed({ clientWindow, agentWindow, agentConsumes: false });
      let maxQueued = 0;
      const watch = (): void => {
        maxQueued = Math.max(maxQueued, r.pipes.up.queuedBytes);
        assert.ok(r.pipes.up.queuedBytes <= clientWindow, `queued ${r.pipes.up.queuedBytes} > window ${clientWindow}`);
      };
      const data = randomBytes(10 * (clientWindow + agentWindow));
      const sent = writeAll(r, r.client.stream, data, watch);
      r.flush(watch);
      assert.equal(r.client.stream.sendCredit, 0, 'the client ran out of credit');
      assert.ok(sent < data.length, 'the client could not send everything');
      assert.equal(sent, agentWindow + r.pipes.up.queuedBytes, 'everything sent is either at the agent or queued');
      assert.equal(r.agent.bytes().length, agentWindow, 'the agent holds exactly its window');
      assert.equal(r.gwAgentStream.sendCredit, 0);
      assert.ok(maxQueued <= clientWindow && maxQueued > 0, `max queued ${maxQueued}`);
      // Another write attempt is refused until credit returns.
      assert.equal(r.client.stream.write(Buffer.from('more')), 0);
      // Once the agent reads, everything arrives, in order.
      r.agent.consume = true;
      r.agent.stream.consumed(r.agent.bytes().length);
      const rest = writeAll(r, r.client.stream, data.subarray(sent));
      r.flush();
      assert.equal(sent + rest, data.length);
      assert.ok(r.agent.bytes().equals(data));
    }
  });

  test('zero-copy forwarding delivers identical bytes and reuses the received DATA message', () => {
    const r = relayed({ maxDataFrame: 4096 });
    let forwarded = 0;
    const original = r.gwAgentStream.forwardDataMessage.bind(r.gwAgentStream);
    r.gwAgentStream.forwardDataMessage = (message, length) => {
      forwarded++;
      original(message, length);
    };
    const delivered: Buffer[] = [];
    // Watch the client→gateway queue: the very Buffer objects the gateway receives should leave towards the agent.
    const sizes = [1, 9, 100, 4095, 4096, 4097, 20_000];
    const chunks = sizes.map((n) => randomBytes(n));
    for (const chunk of chunks) {
      r.client.stream.write(chunk);
      const inbound = [...r.queues.c2g];
      r.flush();
      delivered.push(...inbound);
    }
    const total = Buffer.concat(chunks);
    assert.ok(r.agent.bytes().equals(total), 'agent got the same bytes');
    const frames = sizes.reduce((n, s) => n + Math.ceil(s / 4096), 0);
    assert.equal(forwarded, frames, 'every DATA frame took the zero-copy path');
    assert.equal(r.counted.client_to_agent, total.length);
    // The forwarded messages carry the agent-leg stream id (rewritten in place).
    for (const message of delivered.filter((m) => m[0] === 0x03)) assert.equal(message.readUInt32BE(1), r.gwAgentStream.id);
  });

  test('when the sink lacks credit the relay copies through the queue and still delivers identical bytes', () => {
    const window = 16 * 1024;
    const r = relayed({ clientWindow: window, agentWindow: window, agentConsumes: false });
    let forwarded = 0;
    const original = r.gwAgentStream.forwardDataMessage.bind(r.gwAgentStream);
    r.gwAgentStream.forwardDataMessage = (message, length) => {
      forwarded++;
      original(message, length);
    };
    const data = randomBytes(2 * window);
    writeAll(r, r.client.stream, data);
    const zeroCopyBefore = forwarded;
    assert.ok(r.pipes.up.queuedBytes > 0);
    r.agent.consume = true;
    r.agent.stream.consumed(r.agent.bytes().length);
    r.flush();
    assert.equal(forwarded, zeroCopyBefore, 'queued bytes are written, not forwarded as messages');
    assert.ok(r.agent.bytes().equals(data));
  });
});
