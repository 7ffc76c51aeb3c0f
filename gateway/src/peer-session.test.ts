/**
 * PeerSession without a network: a fake WebSocket (an EventEmitter that records sends and closes). A handler that
 * throws on a session's input ends that session with 1011, logged once, and never escapes the socket's event
 * handler (where it would be an uncaught exception: the whole gateway, every tenant, gone). A session whose
 * stream ids run out is told and closed with 4409.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { Writable } from 'node:stream';
import { describe, test } from 'node:test';
import { type ControlMessage, decodeFrame, ErrorCode, encodeFrame, MAX_STREAM_ID, type MuxHandlers, SEND_MESSAGE_OVERHEAD_BYTES } from '@narrowlink/protocol';
import { pino } from 'pino';
import type { WebSocket } from 'ws';
import { BufferBudget } from './buffer-budget.ts';
import { GatewayErrorCode } from './errors.ts';
import { PeerSession, SessionCloseCode } from './peer-session.ts';

class FakeSocket extends EventEmitter {
  readonly sent: Buffer[] = [];
  readonly closes: { code: number; reason: string }[] = [];
  terminated = 0;
  paused = false;
  /** Send callbacks not called yet: the bytes have not left (a peer that does not read). */
  readonly unflushed: (() => void)[] = [];
  /** When true, every send is flushed at once (a peer that reads). */
  flushing = true;
  /** ws's readyState: OPEN (1) until close() starts the closing handshake (CLOSING, 2). */
  readyState = 1;
  send(bytes: Buffer, _options?: unknown, flushed?: () => void): void {
    this.sent.push(bytes);
    if (!flushed) return;
    if (this.flushing) flushed();
    else this.unflushed.push(flushed);
  }
  /** The peer reads everything sent so far. */
  flush(): void {
    for (const flushed of this.unflushed.splice(0)) flushed();
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  close(code: number, reason: string): void {
    this.closes.push({ code, reason });
    this.readyState = 2;
  }
  terminate(): void {
    this.terminated++;
  }
  /** Control messages the session sent. */
  controls(): ControlMessage[] {
    return this.sent.flatMap((b) => {
      const frame = decodeFrame(b);
      return frame.type === 'control' ? [frame.message] : [];
    });
  }
}

function session(
  handlers: MuxHandlers,
  options: {
    onClosed?: () => void;
    firstLocalId?: number;
    budget?: BufferBudget<PeerSession>;
    sendHighWaterBytes?: number;
    onIdsExhausted?: (code: string) => void;
  } = {},
) {
  const ws = new FakeSocket();
  const records: { level: number; msg: string }[] = [];
  const log = pino(
    { level: 'debug' },
    new Writable({
      write(chunk, _encoding, done) {
        records.push(JSON.parse(String(chunk)) as { level: number; msg: string });
        done();
      },
    }),
  );
  const peer = new PeerSession({
    id: 's1',
    kind: 'client',
    identity: { sub: 'alice', groups: [], typ: 'client', expiresAtMs: Number.MAX_SAFE_INTEGER },
    ws: ws as unknown as WebSocket,
    log,
    localWindow: 256 * 1024,
    maxStreams: 16,
    handlers,
    onClosed: options.onClosed ?? (() => {}),
    budget: options.budget ?? new BufferBudget<PeerSession>({ stalledForMs: () => 0, onExceeded: () => {} }),
    ...(options.sendHighWaterBytes === undefined ? {} : { sendHighWaterBytes: options.sendHighWaterBytes }),
    ...(options.onIdsExhausted ? { onIdsExhausted: options.onIdsExhausted } : {}),
    ...(options.firstLocalId === undefined ? {} : { firstLocalId: options.firstLocalId }),
  });
  return { ws, peer, records };
}

const listAgents = encodeFrame({ type: 'control', message: { type: 'list_agents', requestId: 1 } });

describe('PeerSession handler boundary', () => {
  test('a handler that throws closes only that session, with 1011, logged once; later input is dropped', async () => {
    let calls = 0;
    const { ws, peer, records } = session({
      onControl: () => {
        calls++;
        throw new TypeError('a bug in a control handler');
      },
    });
    // Before the boundary this emit threw: from a real socket, an uncaught exception.
    assert.doesNotThrow(() => ws.emit('message', listAgents, true));
    assert.doesNotThrow(() => ws.emit('message', listAgents, true));
    assert.equal(calls, 1, 'input after the failure is dropped');
    assert.deepEqual(ws.closes, [{ code: SessionCloseCode.INTERNAL_ERROR, reason: GatewayErrorCode.INTERNAL }]);
    assert.equal(peer.state, 'closing');
    const errors = ws.controls().filter((m) => m.type === 'error');
    assert.deepEqual(errors, [{ type: 'error', code: GatewayErrorCode.INTERNAL, message: 'internal gateway error' }], 'masked');
    await new Promise((r) => setImmediate(r));
    assert.equal(records.filter((r) => r.level >= 50).length, 1, 'one error record');
  });

  test('a stream or session clean-up that throws on close does not escape the close event', () => {
    let detached = 0;
    const { ws, peer } = session(
      {
        onOpen: (stream) => {
          stream.handlers.onClose = () => {
            throw new Error('stream clean-up bug');
          };
          stream.accept();
        },
      },
      {
        onClosed: () => {
          detached++;
          throw new Error('detach bug');
        },
      },
    );
    ws.emit('message', encodeFrame({ type: 'open', streamId: 1, payload: { agent: 'db', port: 5432 } }), true);
    assert.equal(peer.mux.streamCount, 1);
    assert.doesNotThrow(() => ws.emit('close'));
    assert.equal(peer.state, 'closed');
    assert.equal(peer.mux.streamCount, 0);
    assert.equal(detached, 1, 'the gateway still hears the session is gone');
  });
});

describe('PeerSession stream id exhaustion', () => {
  test('the session that used its last stream id is told with a typed code and closed with 4409', () => {
    // The gateway is the acceptor: even ids. One open to go.
    const counted: string[] = [];
    const { ws, peer } = session({}, { firstLocalId: MAX_STREAM_ID - 1, onIdsExhausted: (code) => counted.push(code) });
    const stream = peer.mux.open({ host: '127.0.0.1', port: 5432, client: 'alice' });
    assert.equal(stream.id, MAX_STREAM_ID - 1);
    assert.deepEqual(ws.closes, [{ code: SessionCloseCode.STREAM_IDS_EXHAUSTED, reason: ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED }]);
    assert.equal(peer.state, 'closing', 'a closing session is never picked for a new stream');
    assert.deepEqual(
      ws.controls().map((m) => (m.type === 'error' ? m.code : m.type)),
      [ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED],
    );
    assert.throws(() => peer.mux.open({ host: '127.0.0.1', port: 5432, client: 'alice' }), { code: ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED });
    assert.deepEqual(counted, [ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED], 'counted once (metrics)');
  });
});

describe('PeerSession send buffer (a peer that does not read)', () => {
  const ping = encodeFrame({ type: 'ping', opaque: new Uint8Array(8) });

  test('over the high-water mark stream writes wait, the socket is not read, and a drain resumes both', () => {
    const { ws, peer } = session({}, { sendHighWaterBytes: 64 * 1024 });
    ws.flushing = false;
    const opened = peer.mux.open({ host: 'h', port: 1, client: 'alice' });
    opened.sendCredit = 1024 * 1024;
    let credits = 0;
    opened.handlers.onCredit = () => credits++;
    const sent = opened.write(new Uint8Array(256 * 1024));
    // Frames of 256 KiB: the first one crosses the mark, nothing more goes until the peer reads.
    assert.equal(sent, 256 * 1024);
    assert.equal(peer.mux.transportBlocked, true);
    assert.equal(ws.paused, true, 'the peer socket is not read while its send buffer is full');
    assert.equal(opened.write(new Uint8Array(1024)), 0, 'a blocked transport takes no stream bytes');
    ws.flush();
    assert.equal(peer.mux.transportBlocked, false);
    assert.equal(ws.paused, false);
    assert.equal(credits, 1, 'the stream that met the block is told to write again');
    assert.equal(peer.sendBuffer.unflushedBytes, 0);
  });

  test('control replies stop once the buffer is full: a PING flood pins at most the high-water mark', () => {
    const { ws, peer } = session({}, { sendHighWaterBytes: 16 * 1024 });
    ws.flushing = false;
    // What a real socket does when paused: the frames already read are still delivered, nothing after them.
    let delivered = 0;
    for (let i = 0; i < 100_000 && !ws.paused; i++) {
      ws.emit('message', ping, true);
      delivered++;
    }
    assert.equal(ws.paused, true);
    // Each PONG counts with its overhead (SEND_MESSAGE_OVERHEAD_BYTES, ~1 KiB of real memory while it waits).
    const perPong = 18 + SEND_MESSAGE_OVERHEAD_BYTES;
    assert.ok(peer.sendBuffer.unflushedBytes <= 16 * 1024 + perPong, `unsent bytes ${peer.sendBuffer.unflushedBytes}`);
    // Counted by bytes alone, ~900 PONGs (60 times the mark in real memory) waited before the socket was paused.
    assert.ok(delivered <= 17, `stopped reading after ${delivered} PINGs`);
    assert.equal(peer.bufferAccount.heldBytes, peer.sendBuffer.unflushedBytes, 'the budget counts what is really unsent');
  });

  test('once closing, what still arrives is not processed and nothing more is sent (no reply to the rest of a flood)', () => {
    const { ws, peer } = session({});
    peer.close(4429, 'too many');
    const sentAtClose = ws.sent.length;
    for (let i = 0; i < 1000; i++) ws.emit('message', ping, true);
    assert.equal(ws.sent.length, sentAtClose, 'no PONG for PINGs after the close started');
    peer.sendControl({ type: 'error', code: 'X', message: 'late' });
    assert.equal(ws.sent.length, sentAtClose, 'nothing is handed to a closing socket');
    assert.equal(peer.sendBuffer.unflushedBytes, 0);
  });

  test('a session over its budget is told with a typed code, its streams reset, closed with 4413', () => {
    const { ws, peer } = session({});
    const opened = peer.mux.open({ host: 'h', port: 1, client: 'alice' });
    peer.closeOverBudget('held too much');
    assert.equal(ws.paused, true);
    assert.equal(opened.state, 'closed');
    assert.deepEqual(ws.closes, [{ code: SessionCloseCode.BUFFER_LIMIT, reason: GatewayErrorCode.BUFFER_LIMIT }]);
    const errors = ws.controls().filter((m) => m.type === 'error');
    assert.deepEqual(errors, [{ type: 'error', code: GatewayErrorCode.BUFFER_LIMIT, message: 'held too much' }]);
  });

  test('closing releases the account and the unsent bytes', () => {
    const budget = new BufferBudget<PeerSession>({ stalledForMs: () => 0, onExceeded: () => {} });
    const { ws, peer } = session({}, { budget });
    ws.flushing = false;
    peer.sendControl({ type: 'error', code: 'X', message: 'y' });
    assert.ok(budget.totalBytes > 0);
    ws.emit('close');
    assert.equal(budget.totalBytes, 0);
    ws.flush();
    assert.equal(budget.totalBytes, 0, 'a late flush callback changes nothing');
  });

  test('a PONG ends the outstanding PING', () => {
    const { ws, peer } = session({});
    peer.ping(1000);
    peer.ping(2000);
    assert.equal(peer.pingOutstandingSince, 1000, 'the oldest unanswered PING counts');
    const sentPing = ws.sent.map((b) => decodeFrame(b)).find((f) => f.type === 'ping');
    assert.ok(sentPing && sentPing.type === 'ping');
    ws.emit('message', encodeFrame({ type: 'pong', opaque: sentPing.opaque }), true);
    assert.equal(peer.pingOutstandingSince, undefined);
  });
});
