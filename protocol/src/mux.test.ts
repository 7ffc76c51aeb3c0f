import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, FrameError, ProtocolError, StreamErrorCode } from './errors.ts';
import { decodeFrame, encodeData, encodeFrame, FRAME_HEADER_BYTES, type Frame, MAX_STREAM_ID } from './frame-codec.ts';
import type { OpenPayload, ResetPayload } from './messages.ts';
import { Mux, type MuxHandlers, type MuxOptions, type MuxStream } from './mux.ts';

const target: OpenPayload = { agent: 'db', port: 5432 };

type PairOptions = Omit<MuxOptions, 'role' | 'send' | 'handlers'>;

/**
 * Two muxes back to back. Frames wait in a queue per direction until the test delivers them,
 * so every interleaving is explicit.
 */
function pair(options: { initiator?: PairOptions; acceptor?: PairOptions; window?: number } = {}) {
  const toAcceptor: Buffer[] = [];
  const toInitiator: Buffer[] = [];
  const sessionErrors: { side: 'initiator' | 'acceptor'; error: FrameError | ProtocolError }[] = [];
  const accepted: { stream: MuxStream; payload: OpenPayload }[] = [];
  const initiatorHandlers: MuxHandlers = {
    onSessionError: (error) => sessionErrors.push({ side: 'initiator', error }),
  };
  const acceptorHandlers: MuxHandlers = {
    onOpen: (stream, payload) => accepted.push({ stream, payload }),
    onSessionError: (error) => sessionErrors.push({ side: 'acceptor', error }),
  };
  const window = options.window;
  const windows = window === undefined ? {} : { localWindow: window, peerWindow: window };
  const initiator = new Mux({ role: 'initiator', send: (b) => toAcceptor.push(b), handlers: initiatorHandlers, ...windows, ...options.initiator });
  const acceptor = new Mux({ role: 'acceptor', send: (b) => toInitiator.push(b), handlers: acceptorHandlers, ...windows, ...options.acceptor });

  /** Delivers up to `n` queued frames towards the acceptor; returns how many were delivered. */
  function toA(n = Number.POSITIVE_INFINITY): number {
    let delivered = 0;
    while (delivered < n && toAcceptor.length > 0) {
      acceptor.receive(toAcceptor.shift() as Buffer);
      delivered++;
    }
    return delivered;
  }
  function toI(n = Number.POSITIVE_INFINITY): number {
    let delivered = 0;
    while (delivered < n && toInitiator.length > 0) {
      initiator.receive(toInitiator.shift() as Buffer);
      delivered++;
    }
    return delivered;
  }
  /** Delivers everything, both ways, until both queues are empty. */
  function flush(): void {
    while (toA() + toI() > 0);
  }
  return { initiator, acceptor, toAcceptor, toInitiator, toA, toI, flush, sessionErrors, accepted, initiatorHandlers, acceptorHandlers };
}

/** Opens a stream from the initiator, accepts it and returns both ends with recorded events. */
function openStream(p: ReturnType<typeof pair>, payload: OpenPayload = target) {
  const client = record(p.initiator.open(payload));
  p.flush();
  const entry = p.accepted.at(-1);
  assert.ok(entry && entry.stream.id === client.stream.id, 'acceptor saw the open');
  const server = record(entry.stream);
  server.stream.accept();
  p.flush();
  return { client, server };
}

/** Attaches handlers that record every stream event. */
function record(stream: MuxStream) {
  const events = {
    stream,
    data: [] as Buffer[],
    fins: 0,
    resets: [] as { reset: ResetPayload; local: boolean }[],
    credits: 0,
    closes: 0,
    openOks: [] as unknown[],
    text: () => Buffer.concat(events.data).toString(),
    bytes: () => events.data.reduce((n, b) => n + b.length, 0),
  };
  stream.handlers = {
    onOpenOk: (payload) => events.openOks.push(payload),
    onData: (data) => events.data.push(Buffer.from(data)),
    onFin: () => events.fins++,
    onReset: (reset, local) => events.resets.push({ reset, local }),
    onCredit: () => events.credits++,
    onClose: () => events.closes++,
  };
  return events;
}

function decoded(queue: Buffer[]): Frame[] {
  return queue.map((b) => decodeFrame(b));
}

describe('Mux: opening streams', () => {
  test('open → accept → onOpenOk', () => {
    const p = pair();
    const client = record(p.initiator.open(target));
    assert.equal(client.stream.state, 'opening');
    assert.deepEqual(decoded(p.toAcceptor), [{ type: 'open', streamId: 1, payload: target }]);
    p.toA();
    assert.equal(p.accepted.length, 1);
    assert.deepEqual(p.accepted[0]?.payload, target);
    const server = p.accepted[0]?.stream as MuxStream;
    assert.equal(server.id, 1);
    assert.equal(server.state, 'opening');
    server.accept({ path: 'relay' });
    assert.equal(server.state, 'open');
    assert.deepEqual(client.openOks, []);
    p.toI();
    assert.deepEqual(client.openOks, [{ path: 'relay' }]);
    assert.equal(client.stream.state, 'open');
    assert.equal(p.initiator.streamCount, 1);
    assert.equal(p.acceptor.streamCount, 1);
    assert.deepEqual(p.sessionErrors, []);
  });

  test('initiator ids are odd, acceptor ids are even, both increasing', () => {
    const p = pair();
    const fromInitiator: number[] = [];
    p.initiatorHandlers.onOpen = (stream) => {
      fromInitiator.push(stream.id);
      stream.accept();
    };
    const odd = [p.initiator.open(target), p.initiator.open(target), p.initiator.open(target)].map((s) => s.id);
    const even = [p.acceptor.open(target), p.acceptor.open(target)].map((s) => s.id);
    assert.deepEqual(odd, [1, 3, 5]);
    assert.deepEqual(even, [2, 4]);
    p.flush();
    assert.deepEqual(
      p.accepted.map((a) => a.stream.id),
      [1, 3, 5],
    );
    assert.deepEqual(fromInitiator, [2, 4]);
    assert.equal(p.initiator.streamCount, 5);
    assert.equal(p.acceptor.streamCount, 5);
    assert.deepEqual(p.sessionErrors, []);
  });

  test('an open with an id of the wrong parity is a session error', () => {
    const p = pair();
    p.acceptor.receive(encodeFrame({ type: 'open', streamId: 2, payload: target }));
    assert.equal(p.sessionErrors.length, 1);
    const { error } = p.sessionErrors[0] as { error: Error & { code: string } };
    assert.ok(error instanceof ProtocolError);
    assert.equal(error.code, ErrorCode.PROTOCOL_UNEXPECTED);
    assert.equal(p.accepted.length, 0);
    assert.equal(p.acceptor.streamCount, 0);
  });

  test('an open reusing an id, or going backwards, is a session error', () => {
    const p = pair();
    p.initiator.open(target); // 1
    p.initiator.open(target); // 3
    p.flush();
    assert.equal(p.accepted.length, 2);
    p.acceptor.receive(encodeFrame({ type: 'open', streamId: 3, payload: target }));
    p.acceptor.receive(encodeFrame({ type: 'open', streamId: 1, payload: target }));
    assert.deepEqual(
      p.sessionErrors.map((e) => [e.side, e.error instanceof ProtocolError, e.error.code]),
      [
        ['acceptor', true, ErrorCode.PROTOCOL_UNEXPECTED],
        ['acceptor', true, ErrorCode.PROTOCOL_UNEXPECTED],
      ],
    );
    assert.equal(p.accepted.length, 2);
    assert.equal(p.acceptor.streamCount, 2);
  });

  test('opens beyond maxStreams are reset TOO_MANY_STREAMS to the opener', () => {
    const p = pair({ acceptor: { maxStreams: 2 } });
    const streams = [1, 2, 3].map(() => record(p.initiator.open(target)));
    p.toA();
    assert.equal(p.accepted.length, 2);
    for (const { stream } of p.accepted) stream.accept();
    p.flush();
    const [a, b, c] = streams as [ReturnType<typeof record>, ReturnType<typeof record>, ReturnType<typeof record>];
    assert.equal(a.openOks.length, 1);
    assert.equal(b.openOks.length, 1);
    assert.deepEqual(c.resets.map((r) => [r.reset.code, r.local]), [[StreamErrorCode.TOO_MANY_STREAMS, false]]);
    assert.equal(c.closes, 1);
    assert.equal(c.stream.state, 'closed');
    assert.equal(p.initiator.streamCount, 2);
    assert.equal(p.acceptor.streamCount, 2);
    // A slot freed by a finished stream can be used again.
    a.stream.reset(StreamErrorCode.CANCELLED, 'done');
    p.flush();
    const d = record(p.initiator.open(target));
    p.flush();
    assert.equal(p.accepted.length, 3);
    assert.deepEqual(d.resets, []);
  });

  test('a side without onOpen refuses opens with PROTOCOL_ERROR', () => {
    const p = pair();
    const server = record(p.acceptor.open(target));
    p.flush();
    assert.deepEqual(server.resets.map((r) => r.reset.code), [StreamErrorCode.PROTOCOL_ERROR]);
    assert.equal(p.initiator.streamCount, 0);
    assert.equal(p.acceptor.streamCount, 0);
  });

  test('a bad JSON OPEN payload resets only that stream', () => {
    const p = pair();
    const { client, server } = openStream(p);
    // Corrupt the next OPEN in flight: same header, payload replaced by garbage.
    const victim = record(p.initiator.open(target));
    const original = p.toAcceptor.pop() as Buffer;
    const garbage = Buffer.from('{not json');
    const corrupt = Buffer.concat([original.subarray(0, FRAME_HEADER_BYTES), garbage]);
    corrupt.writeUInt32BE(garbage.length, 5);
    p.toAcceptor.push(corrupt);
    p.flush();
    assert.equal(p.accepted.length, 1, 'the bad open never reached onOpen');
    assert.deepEqual(victim.resets.map((r) => [r.reset.code, r.local]), [[StreamErrorCode.PROTOCOL_ERROR, false]]);
    assert.equal(victim.stream.state, 'closed');
    assert.deepEqual(p.sessionErrors, []);
    // The other stream and the session carry on.
    client.stream.write(Buffer.from('still here'));
    server.stream.write(Buffer.from('me too'));
    p.flush();
    assert.equal(server.text(), 'still here');
    assert.equal(client.text(), 'me too');
    const next = record(p.initiator.open(target));
    p.flush();
    assert.equal(p.accepted.length, 2);
    assert.deepEqual(next.resets, []);
  });

  test('a schema failure with a very long message still yields a decodable RESET', () => {
    const p = pair();
    // OPEN_OK for a stream the acceptor never saw, whose unknown key makes a long error message.
    const payload = Buffer.from(JSON.stringify({ ['k'.repeat(3000)]: 1 }));
    const bytes = Buffer.alloc(FRAME_HEADER_BYTES + payload.length);
    bytes[0] = 0x02;
    bytes.writeUInt32BE(7, 1);
    bytes.writeUInt32BE(payload.length, 5);
    payload.copy(bytes, FRAME_HEADER_BYTES);
    p.acceptor.receive(bytes);
    assert.equal(p.toInitiator.length, 1);
    const frame = decodeFrame(p.toInitiator[0] as Buffer);
    assert.ok(frame.type === 'reset');
    assert.equal(frame.streamId, 7);
    assert.equal(frame.payload.code, StreamErrorCode.PROTOCOL_ERROR);
    assert.ok(frame.payload.message.length <= 1024);
    assert.deepEqual(p.sessionErrors, []);
  });
});

describe('Mux: data and half-close', () => {
  test('data flows both ways', () => {
    const p = pair();
    const { client, server } = openStream(p);
    assert.equal(client.stream.write(Buffer.from('hello ')), 6);
    assert.equal(client.stream.write(Buffer.from('server')), 6);
    assert.equal(server.stream.write(Buffer.from('hi client')), 9);
    p.flush();
    assert.equal(server.text(), 'hello server');
    assert.equal(client.text(), 'hi client');
    assert.equal(client.stream.bytesOut, 12);
    assert.equal(server.stream.bytesIn, 12);
    assert.equal(server.stream.bytesOut, 9);
    assert.equal(client.stream.bytesIn, 9);
  });

  test('a large write is split into frames of at most maxDataFrame bytes', () => {
    const p = pair({ initiator: { maxDataFrame: 4 } });
    const { client, server } = openStream(p);
    const payload = Buffer.from('0123456789');
    assert.equal(client.stream.write(payload), 10);
    assert.deepEqual(
      decoded(p.toAcceptor).map((f) => (f.type === 'data' ? Buffer.from(f.data).toString() : f.type)),
      ['0123', '4567', '89'],
    );
    p.flush();
    assert.equal(server.text(), '0123456789');
  });

  test('FIN half-closes each direction; both FINs close the stream on both sides', () => {
    const p = pair();
    const { client, server } = openStream(p);
    client.stream.fin();
    assert.equal(client.stream.write(Buffer.from('late')), 0, 'no writes after our FIN');
    p.flush();
    assert.equal(server.fins, 1);
    assert.equal(server.closes, 0);
    assert.equal(client.closes, 0);
    // The other direction still works.
    assert.equal(server.stream.write(Buffer.from('reply')), 5);
    p.flush();
    assert.equal(client.text(), 'reply');
    server.stream.fin();
    assert.equal(server.closes, 1, 'server has sent and received FIN');
    assert.equal(p.acceptor.streamCount, 0);
    p.flush();
    assert.equal(client.fins, 1);
    assert.equal(client.closes, 1);
    assert.equal(client.stream.state, 'closed');
    assert.equal(server.stream.state, 'closed');
    assert.equal(p.initiator.streamCount, 0);
    assert.equal(p.acceptor.streamCount, 0);
    assert.deepEqual(client.resets, []);
    assert.deepEqual(server.resets, []);
  });

  test('FIN from the acceptor first works the same', () => {
    const p = pair();
    const { client, server } = openStream(p);
    server.stream.fin();
    p.flush();
    assert.equal(client.fins, 1);
    client.stream.write(Buffer.from('after your fin'));
    client.stream.fin();
    p.flush();
    assert.equal(server.text(), 'after your fin');
    assert.equal(client.closes, 1);
    assert.equal(server.closes, 1);
    assert.equal(p.initiator.streamCount + p.acceptor.streamCount, 0);
  });

  test('RESET reaches the other side with its code and message', () => {
    const p = pair();
    const { client, server } = openStream(p);
    server.stream.reset(StreamErrorCode.DIAL_FAILED, 'connection refused');
    assert.deepEqual(server.resets, [{ reset: { code: StreamErrorCode.DIAL_FAILED, message: 'connection refused' }, local: true }]);
    assert.equal(server.closes, 1);
    assert.equal(p.acceptor.streamCount, 0);
    p.flush();
    assert.deepEqual(client.resets, [{ reset: { code: StreamErrorCode.DIAL_FAILED, message: 'connection refused' }, local: false }]);
    assert.equal(client.closes, 1);
    assert.equal(p.initiator.streamCount, 0);
    assert.equal(client.stream.write(Buffer.from('x')), 0);
  });

  test('frames racing a RESET for a forgotten stream are dropped', () => {
    const p = pair();
    const { client, server } = openStream(p);
    client.stream.reset(StreamErrorCode.CANCELLED, 'bye');
    server.stream.write(Buffer.from('in flight'));
    server.stream.fin();
    p.flush();
    assert.deepEqual(server.resets.map((r) => r.reset.code), [StreamErrorCode.CANCELLED]);
    assert.deepEqual(client.data, []);
    assert.deepEqual(p.sessionErrors, []);
    assert.equal(p.initiator.streamCount + p.acceptor.streamCount, 0);
  });

  test('DATA after FIN is reset PROTOCOL_ERROR', () => {
    const p = pair();
    const { client, server } = openStream(p);
    client.stream.fin();
    p.flush();
    p.acceptor.receive(encodeData(client.stream.id, Buffer.from('zombie')));
    assert.deepEqual(server.resets.map((r) => [r.reset.code, r.local]), [[StreamErrorCode.PROTOCOL_ERROR, true]]);
    assert.equal(server.text(), '');
    p.flush();
    assert.deepEqual(client.resets.map((r) => [r.reset.code, r.local]), [[StreamErrorCode.PROTOCOL_ERROR, false]]);
    assert.equal(p.initiator.streamCount + p.acceptor.streamCount, 0);
  });
});

describe('Mux: flow control', () => {
  const W = 64 * 1024;

  test('a sender with credit W sends exactly W bytes, then write() returns 0', () => {
    const p = pair({ window: W });
    const { client, server } = openStream(p);
    assert.equal(client.stream.sendCredit, W);
    assert.equal(client.stream.write(Buffer.alloc(W + 100, 1)), W);
    assert.equal(client.stream.sendCredit, 0);
    assert.equal(client.stream.write(Buffer.alloc(10, 2)), 0);
    p.flush();
    assert.equal(server.bytes(), W);
    assert.equal(server.stream.recvRemaining, 0);
  });

  test('consumed() grants WINDOW in quarter-window batches and onCredit fires', () => {
    const p = pair({ window: W });
    const { client, server } = openStream(p);
    client.stream.write(Buffer.alloc(W));
    p.flush();
    server.stream.consumed(W / 4 - 1);
    assert.equal(p.toInitiator.length, 0, 'below a quarter window: no WINDOW yet');
    server.stream.consumed(1);
    assert.deepEqual(decoded(p.toInitiator), [{ type: 'window', streamId: client.stream.id, increment: W / 4 }]);
    assert.equal(client.credits, 0);
    p.flush();
    assert.equal(client.credits, 1);
    assert.equal(client.stream.sendCredit, W / 4);
    assert.equal(client.stream.write(Buffer.alloc(W)), W / 4);
  });

  test('a receiver that never consumes caps the bytes in flight at the window', () => {
    const p = pair({ window: W });
    const { client, server } = openStream(p);
    let accepted = 0;
    for (let i = 0; i < 100; i++) {
      accepted += client.stream.write(Buffer.alloc(4096, i));
      p.flush();
      assert.ok(client.stream.sendCredit >= 0);
    }
    assert.equal(accepted, W);
    assert.equal(client.stream.sendCredit, 0);
    assert.equal(client.stream.bytesOut, W);
    assert.equal(server.bytes(), W);
    assert.equal(server.stream.recvRemaining, 0);
  });

  test('a peer exceeding the window gets the stream reset FLOW_CONTROL; other streams continue', () => {
    const p = pair({ window: W });
    const a = openStream(p);
    const b = openStream(p);
    // A misbehaving peer: bypass write() and put more than the window on the wire.
    p.acceptor.receive(encodeData(a.client.stream.id, Buffer.alloc(W + 1)));
    assert.deepEqual(a.server.resets.map((r) => [r.reset.code, r.local]), [[StreamErrorCode.FLOW_CONTROL, true]]);
    assert.equal(a.server.bytes(), 0, 'the excess data is not delivered');
    p.flush();
    assert.deepEqual(a.client.resets.map((r) => [r.reset.code, r.local]), [[StreamErrorCode.FLOW_CONTROL, false]]);
    assert.deepEqual(p.sessionErrors, []);
    assert.equal(b.client.stream.write(Buffer.from('fine')), 4);
    assert.equal(b.server.stream.write(Buffer.from('here too')), 8);
    p.flush();
    assert.equal(b.server.text(), 'fine');
    assert.equal(b.client.text(), 'here too');
    assert.equal(p.acceptor.streamCount, 1);
  });

  test('data split across frames that together exceed the window is caught too', () => {
    const p = pair({ window: W });
    const { client, server } = openStream(p);
    p.acceptor.receive(encodeData(client.stream.id, Buffer.alloc(W - 10)));
    assert.equal(server.resets.length, 0);
    p.acceptor.receive(encodeData(client.stream.id, Buffer.alloc(11)));
    assert.deepEqual(server.resets.map((r) => r.reset.code), [StreamErrorCode.FLOW_CONTROL]);
    assert.equal(server.bytes(), W - 10);
  });

  test('a slow stream does not stall another stream', () => {
    const p = pair({ window: W });
    const slow = openStream(p);
    const fast = openStream(p);
    fast.server.stream.handlers.onData = (data) => {
      fast.server.data.push(Buffer.from(data));
      fast.server.stream.consumed(data.length);
    };
    const chunk = Buffer.alloc(8192, 7);
    let fastSent = 0;
    for (let round = 0; round < 200; round++) {
      slow.client.stream.write(chunk);
      fastSent += fast.client.stream.write(chunk);
      p.flush();
    }
    assert.equal(slow.client.stream.bytesOut, W, 'the slow stream is stuck at one window');
    assert.equal(slow.client.stream.sendCredit, 0);
    assert.equal(fastSent, 200 * chunk.length, 'the fast stream never ran out of credit');
    assert.equal(fast.server.bytes(), 200 * chunk.length);
    assert.ok(fastSent > 10 * W);
  });

  test('a WINDOW overflowing the credit ceiling resets FLOW_CONTROL', () => {
    const p = pair({ window: W });
    const { client, server } = openStream(p);
    p.initiator.receive(encodeFrame({ type: 'window', streamId: client.stream.id, increment: 0x7fff_ffff }));
    assert.deepEqual(client.resets.map((r) => r.reset.code), [StreamErrorCode.FLOW_CONTROL]);
    p.flush();
    assert.deepEqual(server.resets.map((r) => r.reset.code), [StreamErrorCode.FLOW_CONTROL]);
  });
});

describe('Mux: receive-window auto-tuning (initialWindow)', () => {
  const START = 16 * 1024;
  const MOST = 256 * 1024;
  /** The acceptor starts each stream at START and may grow it to MOST; the initiator's credit is what it announced. */
  const tuned = () => pair({ acceptor: { localWindow: MOST, initialWindow: START }, initiator: { peerWindow: START } });

  test('a stream starts at the initial window: a reader that never consumes caps the sender at it, not at the full window', () => {
    const p = tuned();
    const { client, server } = openStream(p);
    assert.equal(server.stream.recvWindow, START);
    assert.equal(client.stream.write(Buffer.alloc(MOST, 1)), START);
    p.flush();
    assert.equal(server.bytes(), START);
    assert.equal(server.stream.recvRemaining, 0);
    assert.equal(server.stream.recvWindow, START, 'nothing consumed: no growth');
  });

  test('a consumer that keeps up doubles the window per window consumed, up to the full window, and never trips FLOW_CONTROL', () => {
    const p = tuned();
    const { client, server } = openStream(p);
    server.stream.handlers.onData = (data) => {
      server.data.push(Buffer.from(data));
      server.stream.consumed(data.length);
    };
    const windows: number[] = [];
    const chunk = Buffer.alloc(4096, 3);
    let sent = 0;
    for (let round = 0; round < 2000; round++) {
      sent += client.stream.write(chunk);
      p.flush();
      if (windows.at(-1) !== server.stream.recvWindow) windows.push(server.stream.recvWindow);
    }
    assert.deepEqual(windows, [START, 2 * START, 4 * START, 8 * START, MOST], 'doubling, then capped at localWindow');
    assert.equal(server.bytes(), sent);
    assert.deepEqual(server.resets, [], 'the sender never exceeded what was granted');
    // At the full window the credit in flight is bounded by it, as with fixed windows.
    assert.ok(client.stream.sendCredit <= MOST);
    assert.ok(server.stream.recvRemaining <= MOST);
  });

  test('growth needs a whole window consumed since the last growth, not one batch', () => {
    const p = tuned();
    const { client, server } = openStream(p);
    client.stream.write(Buffer.alloc(START));
    p.flush();
    server.stream.consumed(START / 4);
    assert.deepEqual(decoded(p.toInitiator), [{ type: 'window', streamId: client.stream.id, increment: START / 4 }]);
    p.toI();
    assert.equal(server.stream.recvWindow, START);
    server.stream.consumed((3 * START) / 4);
    // The quarter-window batch that completes a whole window carries the growth (one more window) with it.
    assert.deepEqual(decoded(p.toInitiator), [{ type: 'window', streamId: client.stream.id, increment: (3 * START) / 4 + START }]);
    assert.equal(server.stream.recvWindow, 2 * START);
    p.flush();
    assert.equal(client.stream.sendCredit, 2 * START);
  });

  test('without initialWindow the window is fixed (every existing peer keeps its behaviour)', () => {
    const p = pair({ window: START });
    const { client, server } = openStream(p);
    server.stream.handlers.onData = (data) => server.stream.consumed(data.length);
    for (let round = 0; round < 100; round++) {
      client.stream.write(Buffer.alloc(4096));
      p.flush();
    }
    assert.equal(server.stream.recvWindow, START);
    assert.ok(client.stream.sendCredit <= START);
  });

  test('an initialWindow above localWindow is capped at it; zero is refused', () => {
    assert.equal(new Mux({ role: 'acceptor', send: () => {}, localWindow: START, initialWindow: MOST }).initialWindow, START);
    assert.throws(() => new Mux({ role: 'acceptor', send: () => {}, initialWindow: 0 }), RangeError);
  });
});

describe('Mux: a blocked transport', () => {
  test('stream writes send nothing while blocked; on unblock every waiting stream gets onCredit once', () => {
    const p = pair();
    const a = openStream(p);
    const b = openStream(p);
    p.initiator.setTransportBlocked(true);
    assert.equal(a.client.stream.write(Buffer.from('held')), 0);
    assert.equal(b.client.stream.write(Buffer.from('held')), 0);
    assert.equal(a.client.stream.write(Buffer.from('again')), 0);
    assert.equal(p.toAcceptor.length, 0, 'nothing went out');
    assert.equal(a.client.stream.sendCredit, 4 * 1024 * 1024, 'credit is untouched');
    p.initiator.sendControl({ type: 'list_agents', requestId: 1 });
    assert.equal(p.toAcceptor.length, 1, 'control frames still go');
    p.initiator.setTransportBlocked(false);
    assert.equal(a.client.credits, 1);
    assert.equal(b.client.credits, 1);
    assert.equal(a.client.stream.write(Buffer.from('now')), 3);
  });

  test('a block raised by the adapter mid-write stops the write at a frame boundary', () => {
    let sent = 0;
    const p = pair({ initiator: { maxDataFrame: 1000 } });
    const { client } = openStream(p);
    const mux = p.initiator;
    const original = p.toAcceptor.push.bind(p.toAcceptor);
    p.toAcceptor.push = (...frames: Buffer[]) => {
      sent += frames.length;
      if (sent === 2) mux.setTransportBlocked(true);
      return original(...frames);
    };
    assert.equal(client.stream.write(Buffer.alloc(5000)), 2000, 'two frames, then the block');
    mux.setTransportBlocked(false);
    assert.equal(client.credits, 1, 'the stream that met the block is told');
  });

  test('a stream that re-blocks the transport on unblock keeps the others waiting for the next drain', () => {
    const p = pair();
    const first = openStream(p);
    const second = openStream(p);
    const mux = p.initiator;
    mux.setTransportBlocked(true);
    first.client.stream.write(Buffer.from('x'));
    second.client.stream.write(Buffer.from('y'));
    first.client.stream.handlers.onCredit = () => mux.setTransportBlocked(true);
    mux.setTransportBlocked(false);
    assert.equal(second.client.credits, 0, 'still waiting');
    mux.setTransportBlocked(false);
    assert.equal(second.client.credits, 1);
  });

  test('a stream closed while waiting is forgotten', () => {
    const p = pair();
    const { client } = openStream(p);
    p.initiator.setTransportBlocked(true);
    client.stream.write(Buffer.from('x'));
    client.stream.reset(StreamErrorCode.CANCELLED, 'bye');
    p.initiator.setTransportBlocked(false);
    assert.equal(client.credits, 0);
  });
});

describe('Mux: session', () => {
  test('ping/pong reports the round trip on the injected clock', () => {
    let now = 1_000;
    const rtts: (number | undefined)[] = [];
    const p = pair({ initiator: { now: () => now } });
    p.initiatorHandlers.onPong = (rtt) => rtts.push(rtt);
    p.initiator.ping();
    now += 5;
    p.initiator.ping();
    const [first, second] = decoded(p.toAcceptor);
    assert.ok(first?.type === 'ping' && second?.type === 'ping');
    assert.notEqual(Buffer.from(first.opaque).toString('hex'), Buffer.from(second.opaque).toString('hex'));
    p.toA();
    assert.deepEqual(
      decoded(p.toInitiator).map((f) => f.type),
      ['pong', 'pong'],
    );
    now = 1_042;
    p.toI(1);
    now = 1_050;
    p.toI(1);
    assert.deepEqual(rtts, [42, 45]);
    // A PONG nobody asked for, or a duplicate, has no known round trip.
    p.initiator.receive(encodeFrame({ type: 'pong', opaque: first.opaque }));
    p.initiator.receive(encodeFrame({ type: 'pong', opaque: Buffer.alloc(8, 0xee) }));
    assert.deepEqual(rtts, [42, 45, undefined, undefined]);
  });

  test('control messages are delivered to onControl', () => {
    const p = pair();
    const got: unknown[] = [];
    p.acceptorHandlers.onControl = (m) => got.push(m);
    p.initiator.sendControl({ type: 'list_agents', requestId: 3 });
    p.flush();
    assert.deepEqual(got, [{ type: 'list_agents', requestId: 3 }]);
  });

  test('session-level garbage is reported through onSessionError with a code', () => {
    const p = pair();
    p.acceptor.receive(Buffer.from('nonsense'));
    p.acceptor.receive(encodeFrame({ type: 'data', streamId: 1, data: Buffer.alloc(0) }).fill(0x42, 0, 1));
    assert.deepEqual(
      p.sessionErrors.map((e) => [e.error instanceof FrameError, e.error.code]),
      [
        [true, ErrorCode.FRAME_TRUNCATED],
        [true, ErrorCode.FRAME_UNKNOWN_TYPE],
      ],
    );
  });

  test('close() resets every stream locally with PEER_GONE and sends nothing', () => {
    const p = pair();
    const a = openStream(p);
    const b = openStream(p);
    const pendingOpen = record(p.initiator.open(target));
    p.initiator.close();
    assert.equal(p.toAcceptor.length, 1, 'only the earlier OPEN is queued; close() itself sends nothing');
    for (const side of [a.client, b.client, pendingOpen]) {
      assert.deepEqual(side.resets, [{ reset: { code: StreamErrorCode.PEER_GONE, message: 'session closed' }, local: false }]);
      assert.equal(side.closes, 1);
      assert.equal(side.stream.state, 'closed');
      assert.equal(side.stream.write(Buffer.from('x')), 0);
    }
    assert.equal(p.initiator.streamCount, 0);
    assert.equal(p.initiator.closed, true);
    assert.throws(() => p.initiator.open(target), (err: unknown) => err instanceof ProtocolError && err.code === ErrorCode.PROTOCOL_UNEXPECTED);
    // Further input is ignored.
    p.initiator.receive(encodeData(a.client.stream.id, Buffer.from('late')));
    assert.deepEqual(a.client.data, []);
    p.initiator.ping();
    assert.equal(p.toAcceptor.length, 1);
  });

  test('resetAll() resets every stream and tells the peer', () => {
    const p = pair();
    const a = openStream(p);
    const b = openStream(p);
    p.acceptor.resetAll(StreamErrorCode.GATEWAY_SHUTTING_DOWN, 'draining');
    p.flush();
    for (const side of [a.client, b.client]) assert.deepEqual(side.resets.map((r) => r.reset.code), [StreamErrorCode.GATEWAY_SHUTTING_DOWN]);
    assert.equal(p.initiator.streamCount + p.acceptor.streamCount, 0);
    assert.equal(p.acceptor.closed, false);
  });

  test('forwardDataMessage relays a received DATA message, rewriting the stream id in place', () => {
    // client ⇄ gateway (pair 1), gateway ⇄ agent (pair 2): the gateway relays DATA without copying.
    const front = pair();
    const back = pair();
    openStream(front); // stream 1, so the relayed stream gets a different id (3)
    const inbound = openStream(front);
    const outbound = openStream(back);
    assert.equal(inbound.server.stream.id, 3);
    assert.equal(outbound.client.stream.id, 1);
    const forwarded: Buffer[] = [];
    inbound.server.stream.handlers.onData = (data) => {
      const raw = front.acceptor.lastRawData;
      assert.ok(raw && Buffer.isBuffer(raw));
      assert.equal(raw.length - FRAME_HEADER_BYTES, data.length);
      const creditBefore = outbound.client.stream.sendCredit;
      outbound.client.stream.forwardDataMessage(raw, data.length);
      assert.equal(outbound.client.stream.sendCredit, creditBefore - data.length);
      forwarded.push(raw);
    };
    inbound.client.stream.write(Buffer.from('through the relay'));
    front.flush();
    assert.equal(forwarded.length, 1);
    assert.equal(front.acceptor.lastRawData, undefined, 'only set while dispatching');
    assert.equal(back.toAcceptor[0], forwarded[0], 'the very same buffer is sent on');
    assert.equal((forwarded[0] as Buffer).readUInt32BE(1), 1, 'stream id rewritten in place');
    back.flush();
    assert.equal(outbound.server.text(), 'through the relay');
    assert.equal(outbound.client.stream.bytesOut, 'through the relay'.length);
  });
});

describe('stream id exhaustion', () => {
  test('the side that uses its last id is told once, and every later open() throws a typed error', () => {
    for (const role of ['initiator', 'acceptor'] as const) {
      const exhausted: ProtocolError[] = [];
      const sent: Buffer[] = [];
      // The last id of the role's parity minus one step: two opens to go.
      const last = role === 'initiator' ? MAX_STREAM_ID : MAX_STREAM_ID - 1;
      const mux = new Mux({ role, send: (b) => sent.push(b), firstLocalId: last - 2, handlers: { onStreamIdsExhausted: (e) => exhausted.push(e) } });
      assert.equal(mux.open(target).id, last - 2);
      assert.equal(exhausted.length, 0);
      assert.equal(mux.canOpen, true);
      const lastStream = mux.open(target);
      assert.equal(lastStream.id, last);
      assert.equal(lastStream.state, 'opening', 'the last id still opens its stream');
      assert.equal(sent.length, 2);
      assert.deepEqual(
        exhausted.map((e) => e.code),
        [ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED],
        `${role}: told when the last id went`,
      );
      assert.equal(mux.canOpen, false);
      for (let i = 0; i < 2; i++) {
        assert.throws(
          () => mux.open(target),
          (e: unknown) => e instanceof ProtocolError && e.code === ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED,
        );
      }
      assert.equal(exhausted.length, 1, 'told once');
      assert.equal(sent.length, 2, 'nothing sent for refused opens');
    }
  });

  test('firstLocalId must have the role parity', () => {
    assert.throws(() => new Mux({ role: 'initiator', send: () => {}, firstLocalId: 2 }), RangeError);
    assert.throws(() => new Mux({ role: 'acceptor', send: () => {}, firstLocalId: 1 }), RangeError);
  });

  test('the last id reaches the peer as a normal OPEN', () => {
    const p = pair({ initiator: { firstLocalId: MAX_STREAM_ID } });
    const stream = p.initiator.open(target);
    p.toA();
    assert.equal(p.accepted[0]?.stream.id, MAX_STREAM_ID);
    assert.equal(stream.state, 'opening');
    assert.equal(p.sessionErrors.length, 0);
  });

  test('close() terminates every stream even when one stream handler throws, then rethrows the first error', () => {
    const mux = new Mux({ role: 'initiator', send: () => {} });
    const closed: number[] = [];
    const a = mux.open(target, {
      onClose: () => {
        throw new Error('boom');
      },
    });
    const b = mux.open(target, { onClose: () => closed.push(b.id) });
    assert.throws(() => mux.close(), /boom/);
    assert.equal(a.state, 'closed');
    assert.deepEqual(closed, [b.id]);
    assert.equal(mux.streamCount, 0);
  });
});
