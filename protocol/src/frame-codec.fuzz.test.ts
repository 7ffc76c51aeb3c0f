/**
 * Deterministic fuzzing of the frame codec and of a Mux fed hostile input. The seed is printed in
 * the suite name; rerun a failure with NL_FUZZ_SEED=<seed>. Every failure message names the case
 * index and the offending bytes in hex.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, FrameError, ProtocolError, StreamErrorCode } from './errors.ts';
import {
  DEFAULT_MAX_FRAME_PAYLOAD,
  decodeFrame,
  encodeFrame,
  FRAME_HEADER_BYTES,
  type Frame,
  FrameDecoder,
  MAX_STREAM_ID,
} from './frame-codec.ts';
import type { ControlMessage, OpenPayload } from './messages.ts';
import { Mux, type MuxStream } from './mux.ts';

const SEED = Number(process.env.NL_FUZZ_SEED ?? 0x6e6c_2025) >>> 0;
const SEED_TEXT = `0x${SEED.toString(16).padStart(8, '0')}`;

const RANDOM_CASES = 40_000;
const MUTATION_CASES = 80_000;
const MUX_SEQUENCES = 8_000;

const FRAME_CODES = new Set<string>(
  Object.entries(ErrorCode)
    .filter(([key]) => key.startsWith('FRAME_'))
    .map(([, code]) => code),
);

/** mulberry32: tiny, fast, good enough to explore inputs, and reproducible from one u32. */
class Rng {
  #state: number;
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }
  next(): number {
    this.#state = (this.#state + 0x6d2b_79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  u32(): number {
    return (this.next() * 4_294_967_296) >>> 0;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
  text(maxLength: number, minLength = 0): string {
    const alphabet = ['a', 'z', 'Q', '0', '9', '-', '.', '_', ' ', '"', '\\', '/', 'é', 'ß', '€', '😀', '\n', '\u0000'];
    let s = '';
    const n = minLength + this.int(maxLength - minLength + 1);
    while (s.length < n) s += this.pick(alphabet);
    // An emoji may push past the limit by one code unit; trim without splitting it.
    return [...s].slice(0, n).join('').slice(0, maxLength).padEnd(minLength, 'a');
  }
}

function normalize(value: unknown): unknown {
  if (value instanceof Uint8Array) return { hex: Buffer.from(value).toString('hex') };
  if (Array.isArray(value)) return value.map(normalize);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normalize(v)]));
  }
  return value;
}

function where(index: number, bytes: Uint8Array): string {
  const hex = Buffer.from(bytes).toString('hex');
  return `seed ${SEED_TEXT}, case ${index}, bytes ${hex.length > 400 ? `${hex.slice(0, 400)}…` : hex}`;
}

// ---------------------------------------------------------------------------------------------
// Valid frames of every type

function streamId(rng: Rng): number {
  return rng.chance(0.8) ? 1 + rng.int(16) : rng.pick([MAX_STREAM_ID, MAX_STREAM_ID - 1, 1 + rng.int(MAX_STREAM_ID)]);
}

function openPayload(rng: Rng): OpenPayload {
  if (rng.chance(0.5)) {
    return {
      agent: rng.text(20, 1),
      port: rng.chance(0.5) ? 1 + rng.int(65535) : rng.text(10, 1),
      ...(rng.chance(0.3) ? { host: rng.text(30, 1) } : {}),
      ...(rng.chance(0.3) ? { mode: rng.pick(['auto', 'direct', 'relay'] as const) } : {}),
    };
  }
  return { host: rng.text(30, 1), port: 1 + rng.int(65535), client: rng.text(20) };
}

function controlMessage(rng: Rng): ControlMessage {
  switch (rng.int(6)) {
    case 0:
      return {
        type: 'hello',
        version: `${rng.int(3)}.${rng.int(20)}`,
        role: rng.pick(['agent', 'client'] as const),
        streamWindow: 16_384 + rng.int(1_000_000),
        ...(rng.chance(0.5) ? { software: rng.text(12) } : {}),
        ...(rng.chance(0.5)
          ? {
              agent: {
                instanceId: rng.text(10, 1),
                expose: Array.from({ length: rng.int(3) }, () => ({ name: rng.text(8, 1), port: 1 + rng.int(65535) })),
              },
            }
          : {}),
      };
    case 1:
      return {
        type: 'hello_ok',
        version: '1.0',
        sessionId: rng.text(12),
        identity: { sub: rng.text(8), groups: [rng.text(5)], typ: 'client', expiresAt: rng.int(2_000_000_000) },
        streamWindow: 65_536,
        heartbeatIntervalMs: 1 + rng.int(60_000),
      };
    case 2:
      return { type: 'error', code: rng.text(20), message: rng.text(40) };
    case 3:
      return { type: 'list_agents', requestId: rng.int(1000) };
    case 4:
      return {
        type: 'agents',
        requestId: rng.int(1000),
        agents: Array.from({ length: rng.int(3) }, () => ({
          name: rng.text(8),
          namespace: rng.text(8),
          mode: rng.pick(['auto', 'direct', 'relay'] as const),
          instances: rng.int(5),
          ports: [{ name: rng.text(5), port: 1 + rng.int(65535), host: rng.text(9) }],
        })),
      };
    default:
      return { type: 'goaway', reason: rng.text(20), drainMs: rng.int(100_000) };
  }
}

const FRAME_KINDS = ['open', 'open_ok', 'data', 'fin', 'reset', 'window', 'ping', 'pong', 'control'] as const;
const RESET_CODES = Object.values(StreamErrorCode);

function validFrame(rng: Rng, kind: (typeof FRAME_KINDS)[number] = rng.pick(FRAME_KINDS), id = streamId(rng)): Frame {
  switch (kind) {
    case 'open':
      return { type: 'open', streamId: id, payload: openPayload(rng) };
    case 'open_ok':
      return { type: 'open_ok', streamId: id, payload: rng.chance(0.5) ? {} : { path: rng.pick(['relay', 'direct'] as const) } };
    case 'data':
      return { type: 'data', streamId: id, data: rng.bytes(rng.chance(0.2) ? 0 : rng.int(48)) };
    case 'fin':
      return { type: 'fin', streamId: id };
    case 'reset':
      return { type: 'reset', streamId: id, payload: { code: rng.pick(RESET_CODES), message: rng.text(40) } };
    case 'window':
      return { type: 'window', streamId: id, increment: rng.chance(0.5) ? 1 + rng.int(100_000) : Math.max(1, rng.u32()) };
    case 'ping':
      return { type: 'ping', opaque: rng.bytes(8) };
    case 'pong':
      return { type: 'pong', opaque: rng.bytes(8) };
    case 'control':
      return { type: 'control', message: controlMessage(rng) };
  }
}

// ---------------------------------------------------------------------------------------------
// Mutations

const MUTATIONS = ['bitflip', 'replace', 'truncate', 'extend', 'length', 'type', 'stream', 'splice', 'concat'] as const;

function mutate(rng: Rng, original: Buffer, other: () => Buffer): { op: string; bytes: Buffer } {
  const bytes = Buffer.from(original);
  const op = rng.pick(MUTATIONS);
  switch (op) {
    case 'bitflip': {
      for (let n = 1 + rng.int(4); n > 0; n--) {
        const i = rng.int(bytes.length);
        bytes[i] = (bytes[i] as number) ^ (1 << rng.int(8));
      }
      return { op, bytes };
    }
    case 'replace': {
      for (let n = 1 + rng.int(4); n > 0; n--) bytes[rng.int(bytes.length)] = rng.int(256);
      return { op, bytes };
    }
    case 'truncate':
      return { op, bytes: bytes.subarray(0, rng.int(bytes.length)) };
    case 'extend':
      return { op, bytes: Buffer.concat([bytes, rng.bytes(1 + rng.int(8))]) };
    case 'length': {
      const length = bytes.readUInt32BE(5);
      const choices = [
        Math.max(0, length - 1 - rng.int(3)),
        length + 1 + rng.int(3),
        0,
        rng.u32(),
        DEFAULT_MAX_FRAME_PAYLOAD,
        DEFAULT_MAX_FRAME_PAYLOAD + 1,
        0xffff_ffff,
      ];
      bytes.writeUInt32BE(rng.pick(choices) >>> 0, 5);
      return { op, bytes };
    }
    case 'type':
      bytes[0] = rng.chance(0.8) ? rng.int(11) : rng.int(256);
      return { op, bytes };
    case 'stream':
      bytes.writeUInt32BE(rng.pick([0, 1, 2, 3, MAX_STREAM_ID, MAX_STREAM_ID + 1, 0xffff_ffff, rng.u32()]) >>> 0, 1);
      return { op, bytes };
    case 'splice': {
      const b = other();
      return { op, bytes: Buffer.concat([bytes.subarray(0, rng.int(bytes.length + 1)), b.subarray(rng.int(b.length + 1))]) };
    }
    case 'concat':
      return { op, bytes: Buffer.concat([bytes, other()]) };
  }
}

// ---------------------------------------------------------------------------------------------
// Properties

type Outcome = { frames: Frame[]; code?: string; streamId?: number; buffered?: number };

function expectKnownFrameError(err: unknown, context: string): FrameError {
  if (!(err instanceof FrameError) || !FRAME_CODES.has(err.code)) {
    assert.fail(`expected a FrameError with a FRAME_* code, got ${err instanceof Error ? `${err.name} ${(err as { code?: unknown }).code} ${err.message}` : String(err)} (${context})`);
  }
  assert.ok(Number.isInteger(err.streamId) && err.streamId >= 0 && err.streamId <= MAX_STREAM_ID, `streamId ${err.streamId} (${context})`);
  return err;
}

/** A decoded frame must re-encode and re-decode to an equal frame, and re-encoding is stable. */
function checkRoundTrip(frame: Frame, context: string): void {
  const once = encodeFrame(frame);
  let again: Frame;
  try {
    again = decodeFrame(once);
  } catch (err) {
    assert.fail(`re-encoded frame does not decode: ${String(err)} (${context})`);
  }
  assert.deepStrictEqual(normalize(again), normalize(frame), context);
  assert.ok(encodeFrame(again).equals(once), `re-encoding is not stable (${context})`);
}

function decodeOnce(bytes: Uint8Array, context: string): Outcome {
  let frame: Frame;
  try {
    frame = decodeFrame(bytes);
  } catch (err) {
    const e = expectKnownFrameError(err, context);
    return { frames: [], code: e.code, streamId: e.streamId };
  }
  checkRoundTrip(frame, context);
  return { frames: [frame] };
}

function decodeChunked(bytes: Uint8Array, cuts: number[], context: string): Outcome {
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  let start = 0;
  try {
    for (const cut of [...cuts, bytes.length]) {
      frames.push(...decoder.push(bytes.subarray(start, cut)));
      start = cut;
    }
  } catch (err) {
    const e = expectKnownFrameError(err, context);
    return { frames, code: e.code, streamId: e.streamId };
  }
  for (const frame of frames) checkRoundTrip(frame, context);
  return { frames, buffered: decoder.bufferedBytes };
}

function randomCuts(rng: Rng, length: number): number[] {
  const cuts: number[] = [];
  const n = rng.int(Math.min(length, 6) + 1);
  for (let i = 0; i < n; i++) cuts.push(rng.int(length + 1));
  return cuts.sort((a, b) => a - b);
}

function checkCase(rng: Rng, bytes: Buffer, context: string): void {
  const single = decodeOnce(bytes, context);
  const whole = decodeChunked(bytes, [], context);
  const chunked = decodeChunked(bytes, randomCuts(rng, bytes.length), context);

  // Chunking never changes the result, except that frames completed before an error in an
  // earlier push were already handed out.
  assert.equal(chunked.code, whole.code, `chunked vs whole error code (${context})`);
  assert.equal(chunked.streamId, whole.streamId, `chunked vs whole error stream (${context})`);
  if (whole.code === undefined) {
    assert.deepStrictEqual(chunked.frames.map(normalize), whole.frames.map(normalize), `chunked vs whole frames (${context})`);
    assert.equal(chunked.buffered, whole.buffered, `chunked vs whole buffered bytes (${context})`);
  }

  // The stream decoder agrees with the one-message decoder where their contracts overlap.
  const announced = bytes.length >= FRAME_HEADER_BYTES ? bytes.readUInt32BE(5) : -1;
  const trailing = announced >= 0 && announced <= DEFAULT_MAX_FRAME_PAYLOAD && bytes.length > FRAME_HEADER_BYTES + announced;
  if (single.code === undefined) {
    assert.deepStrictEqual(whole.frames.map(normalize), single.frames.map(normalize), `decoder vs decodeFrame (${context})`);
    assert.equal(whole.buffered, 0, context);
  } else if (single.code === ErrorCode.FRAME_TRUNCATED) {
    assert.equal(whole.code, undefined, `a truncated message is just incomplete for the decoder (${context})`);
    assert.equal(whole.frames.length, 0, context);
    assert.equal(whole.buffered, bytes.length, context);
  } else if (!trailing) {
    assert.equal(whole.code, single.code, `decoder vs decodeFrame error code (${context})`);
    assert.equal(whole.streamId, single.streamId, `decoder vs decodeFrame error stream (${context})`);
  }
}

// ---------------------------------------------------------------------------------------------

describe(`frame codec fuzz (seed ${SEED_TEXT})`, () => {
  test(`decodeFrame and FrameDecoder survive ${RANDOM_CASES} random byte strings`, () => {
    const rng = new Rng(SEED ^ 0x1111_1111);
    const seen = new Map<string, number>();
    for (let i = 0; i < RANDOM_CASES; i++) {
      let bytes = rng.bytes(rng.int(65));
      // Plain random bytes nearly always fail on the type byte; give half of them a plausible header.
      if (rng.chance(0.5) && bytes.length >= FRAME_HEADER_BYTES) {
        bytes[0] = rng.chance(0.9) ? 1 + rng.int(9) : rng.int(256);
        bytes.writeUInt32BE(rng.chance(0.5) ? rng.int(8) : rng.u32(), 1);
        if (rng.chance(0.7)) bytes.writeUInt32BE(bytes.length - FRAME_HEADER_BYTES, 5);
      }
      if (rng.chance(0.1)) bytes = Buffer.from(bytes.subarray(0, rng.int(FRAME_HEADER_BYTES + 1)));
      checkCase(rng, bytes, `random ${where(i, bytes)}`);
      const outcome = decodeOnce(bytes, '');
      const key = outcome.code ?? outcome.frames[0]?.type ?? '?';
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }
    // The generator must reach every error code, or it is not exploring.
    for (const code of FRAME_CODES) assert.ok((seen.get(code) ?? 0) > 0, `no random case produced ${code}`);
  });

  test(`decodeFrame and FrameDecoder survive ${MUTATION_CASES} mutated frames of every type`, () => {
    const rng = new Rng(SEED ^ 0x2222_2222);
    const corpus = Array.from({ length: 600 }, (_, i) => encodeFrame(validFrame(rng, FRAME_KINDS[i % FRAME_KINDS.length])));
    const other = () => rng.pick(corpus);
    const decodedKinds = new Set<string>();
    const codes = new Set<string>();
    for (let i = 0; i < MUTATION_CASES; i++) {
      const original = corpus[i % corpus.length] as Buffer;
      const { op, bytes } = mutate(rng, original, other);
      checkCase(rng, bytes, `${op} ${where(i, bytes)}`);
      const outcome = decodeOnce(bytes, '');
      if (outcome.code) codes.add(outcome.code);
      else decodedKinds.add(outcome.frames[0]?.type ?? '?');
    }
    for (const code of FRAME_CODES) assert.ok(codes.has(code), `no mutation produced ${code}`);
    for (const kind of FRAME_KINDS) assert.ok(decodedKinds.has(kind), `no mutation of a ${kind} frame still decoded`);
  });

  test('unmutated frames of every type round-trip through both decoders', () => {
    const rng = new Rng(SEED ^ 0x3333_3333);
    for (let i = 0; i < 2_000; i++) {
      const frame = validFrame(rng, FRAME_KINDS[i % FRAME_KINDS.length]);
      const bytes = encodeFrame(frame);
      const outcome = decodeOnce(bytes, where(i, bytes));
      assert.equal(outcome.code, undefined, where(i, bytes));
      assert.deepStrictEqual(normalize(outcome.frames[0]), normalize(frame), where(i, bytes));
      checkCase(rng, bytes, where(i, bytes));
    }
  });

  test(`Mux acceptor survives ${MUX_SEQUENCES} sequences of hostile messages`, () => {
    const rng = new Rng(SEED ^ 0x4444_4444);
    let messages = 0;
    let sessionErrors = 0;
    for (let seq = 0; seq < MUX_SEQUENCES; seq++) {
      const script = sessionScript(rng);
      messages += script.length;
      sessionErrors += runMux(rng, script, seq);
    }
    assert.ok(messages >= 30_000, `only ${messages} messages`);
    assert.ok(sessionErrors > 0, 'no sequence produced a session error');
  });
});

// ---------------------------------------------------------------------------------------------
// Mux fuzzing

/** A plausible initiator conversation (odd ids opened in order, traffic on them), then corrupted. */
function sessionScript(rng: Rng): Buffer[] {
  const out: Buffer[] = [];
  let nextId = 1;
  const ids: number[] = [2, 4];
  const length = 4 + rng.int(14);
  for (let i = 0; i < length; i++) {
    let frame: Frame;
    const r = rng.int(10);
    if (r < 3) {
      frame = { type: 'open', streamId: nextId, payload: openPayload(rng) };
      ids.push(nextId);
      nextId += 2;
    } else if (r < 8) {
      const kind = rng.pick(['data', 'data', 'data', 'window', 'fin', 'reset', 'open_ok'] as const);
      frame = validFrame(rng, kind, rng.chance(0.9) ? rng.pick(ids) : streamId(rng));
    } else if (r < 9) {
      frame = validFrame(rng, rng.pick(['ping', 'pong', 'control'] as const));
    } else {
      out.push(verboseJsonFrame(rng, ids));
      continue;
    }
    const bytes = encodeFrame(frame);
    const p = rng.next();
    if (p < 0.35) out.push(mutate(rng, bytes, () => encodeFrame(validFrame(rng))).bytes);
    else if (p < 0.4) out.push(rng.bytes(rng.int(65)));
    else out.push(bytes);
  }
  return out;
}

/**
 * A JSON frame whose schema failure produces a long error message (a huge unknown key), on a
 * stream the acceptor may or may not know: error text must never make the answer undecodable.
 */
function verboseJsonFrame(rng: Rng, ids: number[]): Buffer {
  const type = rng.pick([1, 2, 5, 9]);
  const id = type === 9 ? 0 : rng.chance(0.5) ? rng.pick(ids) : 1 + 2 * rng.int(40);
  const key = rng.text(rng.pick([10, 600, 1100, 3000]));
  const payload = Buffer.from(JSON.stringify({ [key]: rng.text(5) }));
  const out = Buffer.alloc(FRAME_HEADER_BYTES + payload.length);
  out[0] = type;
  out.writeUInt32BE(id, 1);
  out.writeUInt32BE(payload.length, 5);
  payload.copy(out, FRAME_HEADER_BYTES);
  return out;
}

function runMux(rng: Rng, script: Buffer[], seq: number): number {
  const sent: Buffer[] = [];
  let sessionErrors = 0;
  let current = '';
  const streamHandlers = (stream: MuxStream) => ({
    onData: (data: Uint8Array) => {
      if (rng.chance(0.7)) stream.consumed(data.length);
      if (rng.chance(0.2)) stream.write(rng.bytes(rng.int(300)));
    },
    onFin: () => {
      if (rng.chance(0.5)) stream.fin();
    },
    onCredit: () => {
      if (rng.chance(0.5)) stream.write(rng.bytes(rng.int(300)));
    },
    onOpenOk: () => {
      if (rng.chance(0.5)) stream.write(rng.bytes(rng.int(100)));
    },
  });
  const mux = new Mux({
    role: 'acceptor',
    send: (bytes) => sent.push(bytes),
    localWindow: 4096,
    peerWindow: 4096,
    maxStreams: 4,
    maxDataFrame: 128,
    now: () => seq,
    handlers: {
      onOpen: (stream) => {
        stream.handlers = streamHandlers(stream);
        const r = rng.int(4);
        if (r === 0) stream.reset(StreamErrorCode.DENIED, 'no');
        else if (r < 3) stream.accept(rng.chance(0.5) ? {} : { path: 'relay' });
        if (r === 2) stream.write(rng.bytes(rng.int(200)));
      },
      onSessionError: (error) => {
        sessionErrors++;
        const ok = (error instanceof FrameError || error instanceof ProtocolError) && typeof error.code === 'string' && error.code.startsWith('NL_ERR_');
        assert.ok(ok, `session error without a code: ${String(error)} (seed ${SEED_TEXT}, sequence ${seq}, message ${current})`);
      },
      onControl: () => {},
      onPong: (rtt) => assert.ok(rtt === undefined || rtt >= 0),
    },
  });
  // Our own streams (even ids) so that frames naming them reach stream state too.
  for (let i = 0; i < 2; i++) {
    const stream = mux.open({ agent: 'a', port: 1 });
    stream.handlers = streamHandlers(stream);
  }
  mux.ping();
  for (let i = 0; i < script.length; i++) {
    const message = script[i] as Buffer;
    current = Buffer.from(message).toString('hex');
    try {
      mux.receive(message);
    } catch (err) {
      assert.fail(`Mux.receive threw ${String(err)} (seed ${SEED_TEXT}, sequence ${seq}, message ${i}: ${current})`);
    }
    for (const stream of mux.streams()) {
      assert.notEqual(stream.state, 'closed', 'a closed stream stayed in the table');
      assert.ok(stream.sendCredit >= 0 && stream.recvRemaining >= 0, `negative credit on stream ${stream.id}`);
    }
    if (rng.chance(0.01)) mux.close();
  }
  // Whatever garbage came in, what goes out must be well-formed.
  for (const bytes of sent) {
    try {
      decodeFrame(bytes);
    } catch (err) {
      assert.fail(`Mux sent an undecodable frame ${bytes.toString('hex').slice(0, 200)}: ${String(err)} (seed ${SEED_TEXT}, sequence ${seq})`);
    }
  }
  return sessionErrors;
}
