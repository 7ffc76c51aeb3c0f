import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, FrameError } from './errors.ts';
import {
  DEFAULT_MAX_FRAME_PAYLOAD,
  decodeFrame,
  encodeData,
  encodeFrame,
  FRAME_HEADER_BYTES,
  type Frame,
  FrameDecoder,
  MAX_STREAM_ID,
} from './frame-codec.ts';

/** Byte arrays compared as hex, so Buffer vs Uint8Array views never make equal frames differ. */
function normalize(value: unknown): unknown {
  if (value instanceof Uint8Array) return { hex: Buffer.from(value).toString('hex') };
  if (Array.isArray(value)) return value.map(normalize);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normalize(v)]));
  }
  return value;
}

function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ''), 'hex');
}

/** Builds a raw message from header fields and payload bytes, bypassing the encoder. */
function raw(type: number, streamId: number, payload: Uint8Array | string, announcedLength?: number): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : Buffer.from(payload);
  const out = Buffer.alloc(FRAME_HEADER_BYTES + body.length);
  out[0] = type;
  out.writeUInt32BE(streamId, 1);
  out.writeUInt32BE(announcedLength ?? body.length, 5);
  body.copy(out, FRAME_HEADER_BYTES);
  return out;
}

function expectFrameError(fn: () => unknown, code: string, streamId?: number): FrameError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof FrameError, `expected a FrameError, got ${String(caught)}`);
  assert.equal(caught.code, code);
  if (streamId !== undefined) assert.equal(caught.streamId, streamId);
  return caught;
}

// Layout: type (1 byte) | stream id (4 bytes BE) | payload length (4 bytes BE) | payload.
const golden: { name: string; frame: Frame; hex: string }[] = [
  {
    name: 'open with a client payload',
    frame: { type: 'open', streamId: 1, payload: { agent: 'db', port: 5432 } },
    // {"agent":"db","port":5432}
    hex: '01 00000001 0000001a 7b226167656e74223a226462222c22706f7274223a353433327d',
  },
  {
    name: 'open with an agent payload',
    frame: { type: 'open', streamId: 2, payload: { host: '127.0.0.1', port: 8080, client: 'alice' } },
    // {"host":"127.0.0.1","port":8080,"client":"alice"}
    hex:
      '01 00000002 00000031 ' +
      '7b22686f7374223a223132372e302e302e31222c22706f7274223a383038302c22636c69656e74223a22616c696365227d',
  },
  {
    name: 'open_ok',
    frame: { type: 'open_ok', streamId: 1, payload: { path: 'relay' } },
    // {"path":"relay"}
    hex: '02 00000001 00000010 7b2270617468223a2272656c6179227d',
  },
  {
    name: 'open_ok with an empty payload',
    frame: { type: 'open_ok', streamId: 4, payload: {} },
    // {}
    hex: '02 00000004 00000002 7b7d',
  },
  {
    name: 'data',
    frame: { type: 'data', streamId: 3, data: Buffer.from('hello') },
    hex: '03 00000003 00000005 68656c6c6f',
  },
  {
    name: 'empty data',
    frame: { type: 'data', streamId: 5, data: new Uint8Array(0) },
    hex: '03 00000005 00000000',
  },
  {
    name: 'fin',
    frame: { type: 'fin', streamId: 7 },
    hex: '04 00000007 00000000',
  },
  {
    name: 'reset',
    frame: { type: 'reset', streamId: 1, payload: { code: 'DENIED', message: 'no' } },
    // {"code":"DENIED","message":"no"}
    hex: '05 00000001 00000020 7b22636f6465223a2244454e494544222c226d657373616765223a226e6f227d',
  },
  {
    name: 'window on the largest stream id',
    frame: { type: 'window', streamId: MAX_STREAM_ID, increment: 65536 },
    hex: '06 7fffffff 00000004 00010000',
  },
  {
    name: 'window with the largest increment',
    frame: { type: 'window', streamId: 1, increment: 0xffffffff },
    hex: '06 00000001 00000004 ffffffff',
  },
  {
    name: 'ping',
    frame: { type: 'ping', opaque: hex('0102030405060708') },
    hex: '07 00000000 00000008 0102030405060708',
  },
  {
    name: 'pong',
    frame: { type: 'pong', opaque: hex('f0e0d0c0b0a09080') },
    hex: '08 00000000 00000008 f0e0d0c0b0a09080',
  },
  {
    name: 'control hello',
    frame: { type: 'control', message: { type: 'hello', version: '1.0', role: 'client', streamWindow: 1048576 } },
    // {"type":"hello","version":"1.0","role":"client","streamWindow":1048576}
    hex:
      '09 00000000 00000047 ' +
      '7b2274797065223a2268656c6c6f222c2276657273696f6e223a22312e30222c22726f6c65223a22636c69656e74222c' +
      '2273747265616d57696e646f77223a313034383537367d',
  },
];

describe('frame codec golden vectors', () => {
  for (const { name, frame, hex: expected } of golden) {
    test(`${name}: encodes to the exact bytes`, () => {
      assert.equal(encodeFrame(frame).toString('hex'), expected.replace(/\s+/g, ''));
    });
    test(`${name}: decodes back to the same frame`, () => {
      const decoded = decodeFrame(hex(expected));
      assert.deepEqual(normalize(decoded), normalize(frame));
    });
  }

  test('encodeData produces the same bytes as encodeFrame for DATA', () => {
    const data = Buffer.from('hello');
    assert.equal(encodeData(3, data).toString('hex'), '030000000300000005' + '68656c6c6f');
    assert.deepEqual(encodeData(3, data), encodeFrame({ type: 'data', streamId: 3, data }));
  });

  test('decodes a frame that sits at an offset inside a larger buffer', () => {
    const backing = Buffer.concat([Buffer.from('garbage!'), hex('06 00000009 00000004 00000100'), Buffer.from('tail')]);
    const view = backing.subarray(8, 8 + 13);
    assert.deepEqual(decodeFrame(view), { type: 'window', streamId: 9, increment: 256 });
    const plain = new Uint8Array(backing.buffer, backing.byteOffset + 8, 13);
    assert.deepEqual(decodeFrame(plain), { type: 'window', streamId: 9, increment: 256 });
  });

  test('decodes every control message kind', () => {
    const messages = [
      {
        type: 'hello',
        version: '1.7',
        role: 'agent',
        software: 'narrowlink-agent/0.1.0',
        streamWindow: 16384,
        agent: { instanceId: 'pod-1', expose: [{ name: 'http', port: 80 }, { name: 'pg', port: 5432, host: 'db.local' }] },
      },
      {
        type: 'hello_ok',
        version: '1.0',
        sessionId: 's-1',
        identity: { sub: 'alice', groups: ['dev'], typ: 'client', expiresAt: 1_700_000_000 },
        streamWindow: 1048576,
        heartbeatIntervalMs: 10000,
      },
      { type: 'error', code: 'NL_ERR_X', message: 'bad' },
      { type: 'list_agents', requestId: 0 },
      {
        type: 'agents',
        requestId: 7,
        agents: [{ name: 'db', namespace: 'prod', mode: 'auto', instances: 2, ports: [{ name: 'pg', port: 5432, host: 'localhost' }] }],
      },
      { type: 'goaway', reason: 'draining', drainMs: 5000 },
    ] as const;
    for (const message of messages) {
      const frame = { type: 'control', message } as Frame;
      assert.deepEqual(decodeFrame(encodeFrame(frame)), frame);
    }
  });
});

describe('frame codec errors', () => {
  test('NL_ERR_FRAME_TRUNCATED: shorter than the header', () => {
    expectFrameError(() => decodeFrame(new Uint8Array(0)), ErrorCode.FRAME_TRUNCATED);
    expectFrameError(() => decodeFrame(hex('03 00000001 0000')), ErrorCode.FRAME_TRUNCATED);
  });

  test('NL_ERR_FRAME_TRUNCATED: payload shorter than announced', () => {
    expectFrameError(() => decodeFrame(hex('03 00000001 0000000a 0102030405')), ErrorCode.FRAME_TRUNCATED);
    expectFrameError(() => decodeFrame(hex('06 00000001 00000004')), ErrorCode.FRAME_TRUNCATED);
  });

  test('NL_ERR_FRAME_TOO_LARGE: header announces more than the limit', () => {
    // Only the header is present: the limit is checked before waiting for the payload.
    const announced = DEFAULT_MAX_FRAME_PAYLOAD + 1;
    expectFrameError(() => decodeFrame(raw(3, 1, '', announced)), ErrorCode.FRAME_TOO_LARGE);
    expectFrameError(() => decodeFrame(hex('03 00000001 ffffffff')), ErrorCode.FRAME_TOO_LARGE);
    // A custom limit applies to complete frames too.
    expectFrameError(() => decodeFrame(encodeData(1, new Uint8Array(5)), 4), ErrorCode.FRAME_TOO_LARGE);
    assert.equal(decodeFrame(encodeData(1, new Uint8Array(4)), 4).type, 'data');
    // Exactly at the default limit is accepted.
    const atLimit = decodeFrame(encodeData(1, new Uint8Array(DEFAULT_MAX_FRAME_PAYLOAD)));
    assert.equal(atLimit.type === 'data' && atLimit.data.length, DEFAULT_MAX_FRAME_PAYLOAD);
  });

  test('NL_ERR_FRAME_UNKNOWN_TYPE', () => {
    for (const type of [0x00, 0x0a, 0x7f, 0xff]) {
      expectFrameError(() => decodeFrame(raw(type, 1, '')), ErrorCode.FRAME_UNKNOWN_TYPE);
    }
  });

  test('NL_ERR_FRAME_BAD_STREAM_ID', () => {
    const cases: [string, Buffer][] = [
      ['DATA on stream 0', raw(3, 0, 'x')],
      ['OPEN on stream 0', raw(1, 0, '{"agent":"db","port":1}')],
      ['OPEN_OK on stream 0', raw(2, 0, '{}')],
      ['FIN on stream 0', raw(4, 0, '')],
      ['RESET on stream 0', raw(5, 0, '{"code":"DENIED","message":""}')],
      ['WINDOW on stream 0', raw(6, 0, hex('00000001'))],
      ['PING on stream 3', raw(7, 3, new Uint8Array(8))],
      ['PONG on stream 1', raw(8, 1, new Uint8Array(8))],
      ['CONTROL on stream 2', raw(9, 2, '{"type":"list_agents","requestId":1}')],
      ['DATA on stream 0x80000000', raw(3, 0x8000_0000, 'x')],
      ['OPEN on stream 0xffffffff', raw(1, 0xffff_ffff, '{"agent":"db","port":1}')],
    ];
    for (const [name, bytes] of cases) {
      const err = expectFrameError(() => decodeFrame(bytes), ErrorCode.FRAME_BAD_STREAM_ID);
      assert.ok(err instanceof FrameError, name);
    }
  });

  test('NL_ERR_FRAME_BAD_STREAM_ID: ids beyond 31 bits are not reported as a stream', () => {
    expectFrameError(() => decodeFrame(raw(3, 0x8000_0000, 'x')), ErrorCode.FRAME_BAD_STREAM_ID, 0);
  });

  test('NL_ERR_FRAME_BAD_PAYLOAD: WINDOW increment 0', () => {
    expectFrameError(() => decodeFrame(hex('06 00000009 00000004 00000000')), ErrorCode.FRAME_BAD_PAYLOAD, 9);
  });

  test('NL_ERR_FRAME_BAD_PAYLOAD: wrong fixed payload sizes', () => {
    const cases: [Buffer, number][] = [
      [raw(6, 3, hex('000001')), 3],
      [raw(6, 3, hex('0000000100')), 3],
      [raw(4, 5, 'x'), 5],
      [raw(7, 0, new Uint8Array(7)), 0],
      [raw(7, 0, new Uint8Array(9)), 0],
      [raw(8, 0, new Uint8Array(0)), 0],
    ];
    for (const [bytes, streamId] of cases) expectFrameError(() => decodeFrame(bytes), ErrorCode.FRAME_BAD_PAYLOAD, streamId);
  });

  test('NL_ERR_FRAME_BAD_PAYLOAD: invalid JSON', () => {
    expectFrameError(() => decodeFrame(raw(1, 5, '{"agent":')), ErrorCode.FRAME_BAD_PAYLOAD, 5);
    expectFrameError(() => decodeFrame(raw(1, 5, '')), ErrorCode.FRAME_BAD_PAYLOAD, 5);
    expectFrameError(() => decodeFrame(raw(2, 6, 'null garbage')), ErrorCode.FRAME_BAD_PAYLOAD, 6);
    expectFrameError(() => decodeFrame(raw(5, 7, '{')), ErrorCode.FRAME_BAD_PAYLOAD, 7);
    expectFrameError(() => decodeFrame(raw(9, 0, '[')), ErrorCode.FRAME_BAD_PAYLOAD, 0);
  });

  test('NL_ERR_FRAME_BAD_PAYLOAD: JSON failing the schema', () => {
    const cases: [number, number, string][] = [
      [1, 1, '{"agent":"db"}'],
      [1, 1, '{"agent":"db","port":0}'],
      [1, 1, '{"agent":"db","port":70000}'],
      [1, 1, '{"agent":"db","port":80,"extra":true}'],
      [1, 1, '{"host":"h","port":80}'],
      [1, 1, 'null'],
      [1, 1, '[]'],
      [1, 1, '"db:80"'],
      [2, 2, '{"path":"carrier-pigeon"}'],
      [5, 3, '{"code":"NOPE","message":""}'],
      [5, 3, `{"code":"DENIED","message":"${'x'.repeat(1025)}"}`],
      [9, 0, '{"type":"hello","version":"1.0","role":"client","streamWindow":1}'],
      [9, 0, '{"type":"nonsense"}'],
      [9, 0, '{}'],
    ];
    for (const [type, streamId, json] of cases) {
      expectFrameError(() => decodeFrame(raw(type, streamId, json)), ErrorCode.FRAME_BAD_PAYLOAD, streamId);
    }
  });

  test('NL_ERR_FRAME_BAD_PAYLOAD: invalid UTF-8', () => {
    // {"agent":"<ff>","port":1}
    const bytes = Buffer.concat([Buffer.from('{"agent":"'), hex('ff'), Buffer.from('","port":1}')]);
    expectFrameError(() => decodeFrame(raw(1, 11, bytes)), ErrorCode.FRAME_BAD_PAYLOAD, 11);
    // A lone surrogate half encoded as UTF-8 (ed a0 80) is not valid UTF-8 either.
    const surrogate = Buffer.concat([Buffer.from('{"type":"error","code":"'), hex('eda080'), Buffer.from('","message":""}')]);
    expectFrameError(() => decodeFrame(raw(9, 0, surrogate)), ErrorCode.FRAME_BAD_PAYLOAD, 0);
  });

  test('NL_ERR_FRAME_BAD_PAYLOAD: trailing bytes after the announced payload', () => {
    const bytes = Buffer.concat([encodeFrame({ type: 'fin', streamId: 1 }), hex('00')]);
    expectFrameError(() => decodeFrame(bytes), ErrorCode.FRAME_BAD_PAYLOAD);
    const two = Buffer.concat([encodeData(1, Buffer.from('a')), encodeData(1, Buffer.from('b'))]);
    expectFrameError(() => decodeFrame(two), ErrorCode.FRAME_BAD_PAYLOAD);
  });

  test('deeply nested JSON is a FrameError, not a crash', () => {
    const deep = `{"agent":${'['.repeat(100_000)}${']'.repeat(100_000)},"port":1}`;
    expectFrameError(() => decodeFrame(raw(1, 1, deep)), ErrorCode.FRAME_BAD_PAYLOAD, 1);
  });

  test('decoding leaves the input bytes untouched', () => {
    const bytes = encodeFrame({ type: 'data', streamId: 3, data: Buffer.from('hello') });
    const copy = Buffer.from(bytes);
    decodeFrame(bytes);
    assert.deepEqual(bytes, copy);
  });
});

describe('FrameDecoder', () => {
  const frames = golden.map((g) => g.frame);
  const stream = Buffer.concat(frames.map((f) => encodeFrame(f)));
  const expected = frames.map(normalize);

  test('decodes frames pushed all at once', () => {
    const decoder = new FrameDecoder();
    assert.deepEqual(decoder.push(stream).map(normalize), expected);
    assert.equal(decoder.bufferedBytes, 0);
  });

  test('split at every byte boundary decodes identically', () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const decoder = new FrameDecoder();
      const out = [...decoder.push(stream.subarray(0, cut)), ...decoder.push(stream.subarray(cut))];
      assert.deepEqual(out.map(normalize), expected, `cut at ${cut}`);
      assert.equal(decoder.bufferedBytes, 0);
    }
  });

  test('one byte at a time decodes identically and buffers only the incomplete frame', () => {
    const decoder = new FrameDecoder();
    const out: Frame[] = [];
    let frameStart = 0;
    for (let i = 0; i < stream.length; i++) {
      const got = decoder.push(stream.subarray(i, i + 1));
      out.push(...got);
      if (got.length > 0) frameStart = i + 1;
      assert.equal(decoder.bufferedBytes, i + 1 - frameStart);
    }
    assert.deepEqual(out.map(normalize), expected);
    assert.equal(decoder.bufferedBytes, 0);
  });

  test('DATA payloads survive later pushes (they are not views of the receive buffer)', () => {
    const decoder = new FrameDecoder();
    const chunk = Buffer.concat([encodeData(1, Buffer.from('abc')), encodeData(1, Buffer.from('de')).subarray(0, 4)]);
    const [first] = decoder.push(chunk);
    chunk.fill(0);
    decoder.push(Buffer.from('zzzz'));
    assert.ok(first?.type === 'data');
    assert.equal(Buffer.from(first.data).toString(), 'abc');
  });

  test('rejects an oversized frame as soon as its header arrives', () => {
    const decoder = new FrameDecoder(16);
    expectFrameError(() => decoder.push(hex('03 00000001 00000011')), ErrorCode.FRAME_TOO_LARGE);
  });

  test('errors carry their code and stream id', () => {
    const decoder = new FrameDecoder();
    assert.equal(decoder.push(encodeData(1, Buffer.from('ok'))).length, 1);
    expectFrameError(() => decoder.push(raw(1, 13, '{"agent":1}')), ErrorCode.FRAME_BAD_PAYLOAD, 13);
    expectFrameError(() => new FrameDecoder().push(raw(0x42, 1, '')), ErrorCode.FRAME_UNKNOWN_TYPE);
    expectFrameError(() => new FrameDecoder().push(raw(3, 0, '')), ErrorCode.FRAME_BAD_STREAM_ID);
  });
});
