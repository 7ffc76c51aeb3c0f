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
import { type ControlMessage, decodeFrame, ErrorCode, encodeFrame, MAX_STREAM_ID, type MuxHandlers } from '@narrowlink/protocol';
import { pino } from 'pino';
import type { WebSocket } from 'ws';
import { GatewayErrorCode } from './errors.ts';
import { PeerSession, SessionCloseCode } from './peer-session.ts';

class FakeSocket extends EventEmitter {
  readonly sent: Buffer[] = [];
  readonly closes: { code: number; reason: string }[] = [];
  terminated = 0;
  send(bytes: Buffer): void {
    this.sent.push(bytes);
  }
  close(code: number, reason: string): void {
    this.closes.push({ code, reason });
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

function session(handlers: MuxHandlers, options: { onClosed?: () => void; firstLocalId?: number } = {}) {
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
    const { ws, peer } = session({}, { firstLocalId: MAX_STREAM_ID - 1 });
    const stream = peer.mux.open({ host: '127.0.0.1', port: 5432, client: 'alice' });
    assert.equal(stream.id, MAX_STREAM_ID - 1);
    assert.deepEqual(ws.closes, [{ code: SessionCloseCode.STREAM_IDS_EXHAUSTED, reason: ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED }]);
    assert.equal(peer.state, 'closing', 'a closing session is never picked for a new stream');
    assert.deepEqual(
      ws.controls().map((m) => (m.type === 'error' ? m.code : m.type)),
      [ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED],
    );
    assert.throws(() => peer.mux.open({ host: '127.0.0.1', port: 5432, client: 'alice' }), { code: ErrorCode.PROTOCOL_STREAM_IDS_EXHAUSTED });
  });
});
