/**
 * Binary framing of one session. Every frame is
 *
 *   type (u8) | stream id (u32 BE) | payload length (u32 BE) | payload
 *
 * Over a WebSocket each binary message carries exactly one frame (`decodeFrame`); over a byte stream
 * frames follow each other (`FrameDecoder`). Decoding never throws anything but a FrameError, whose
 * `code` says what was wrong, so a peer sending garbage costs one typed error, never a crash.
 */
import { ErrorCode, FrameError } from './errors.ts';
import {
  type ControlMessage,
  controlMessageSchema,
  type OpenOk,
  type OpenPayload,
  openOkSchema,
  openPayloadSchema,
  type ResetPayload,
  resetSchema,
} from './messages.ts';

export const FRAME_HEADER_BYTES = 9;
/** Default ceiling on one frame's payload; larger frames are rejected before their payload is buffered. */
export const DEFAULT_MAX_FRAME_PAYLOAD = 1024 * 1024;
/** Largest stream id; ids are 31-bit so that they stay small integers everywhere. */
export const MAX_STREAM_ID = 0x7fff_ffff;

export const FrameType = {
  OPEN: 0x01,
  OPEN_OK: 0x02,
  DATA: 0x03,
  FIN: 0x04,
  RESET: 0x05,
  WINDOW: 0x06,
  PING: 0x07,
  PONG: 0x08,
  CONTROL: 0x09,
} as const;

export type Frame =
  | { type: 'open'; streamId: number; payload: OpenPayload }
  | { type: 'open_ok'; streamId: number; payload: OpenOk }
  | { type: 'data'; streamId: number; data: Uint8Array }
  | { type: 'fin'; streamId: number }
  | { type: 'reset'; streamId: number; payload: ResetPayload }
  | { type: 'window'; streamId: number; increment: number }
  | { type: 'ping'; opaque: Uint8Array }
  | { type: 'pong'; opaque: Uint8Array }
  | { type: 'control'; message: ControlMessage };

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

function header(type: number, streamId: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + length);
  out[0] = type;
  out.writeUInt32BE(streamId, 1);
  out.writeUInt32BE(length, 5);
  return out;
}

function withPayload(type: number, streamId: number, payload: Uint8Array): Buffer {
  const out = header(type, streamId, payload.length);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

function json(type: number, streamId: number, value: unknown): Buffer {
  return withPayload(type, streamId, textEncoder.encode(JSON.stringify(value)));
}

/** Encodes one frame. The caller guarantees the frame is well-formed (stream ids in range). */
export function encodeFrame(frame: Frame): Buffer {
  switch (frame.type) {
    case 'open':
      return json(FrameType.OPEN, frame.streamId, frame.payload);
    case 'open_ok':
      return json(FrameType.OPEN_OK, frame.streamId, frame.payload);
    case 'data':
      return withPayload(FrameType.DATA, frame.streamId, frame.data);
    case 'fin':
      return header(FrameType.FIN, frame.streamId, 0);
    case 'reset':
      return json(FrameType.RESET, frame.streamId, frame.payload);
    case 'window': {
      const out = header(FrameType.WINDOW, frame.streamId, 4);
      out.writeUInt32BE(frame.increment, FRAME_HEADER_BYTES);
      return out;
    }
    case 'ping':
      return withPayload(FrameType.PING, 0, frame.opaque);
    case 'pong':
      return withPayload(FrameType.PONG, 0, frame.opaque);
    case 'control':
      return json(FrameType.CONTROL, 0, frame.message);
  }
}

/** DATA frame from a payload, the hot path: one allocation, one copy. */
export function encodeData(streamId: number, data: Uint8Array): Buffer {
  return withPayload(FrameType.DATA, streamId, data);
}

/**
 * Largest payload, in bytes, accepted for each control message type on one side of a session. Every type has
 * an entry (the compiler keeps the table complete); a type the side never receives legitimately gets a small
 * one, so dispatch still answers it as before (a protocol violation) without parsing much.
 */
export type ControlLimits = Readonly<Record<ControlMessage['type'], number>>;

/** Control messages that the other side of a session never sends us get at most this many bytes. */
const FOREIGN_CONTROL_MAX = 4 * 1024;

/**
 * What a gateway (the Mux `acceptor`) accepts from agents and clients. Sizes are the largest message the schema
 * allows with ASCII text (measured in frame-codec.test.ts), rounded up: an agent hello with 256 exposed ports of
 * 63-character names and 253-character hosts is 91,130 bytes; a reauth with a 16 KiB token and a 4 KiB proof 20,519; a nat_report
 * with 32 IPv6 endpoints 2,564.
 */
export const GATEWAY_CONTROL_LIMITS: ControlLimits = {
  hello: 128 * 1024,
  reauth: 24 * 1024,
  nat_report: 4 * 1024,
  nat_reprobe: 256,
  direct_request: 1024,
  direct_state: 1024,
  list_agents: 256,
  hello_ok: FOREIGN_CONTROL_MAX,
  error: FOREIGN_CONTROL_MAX,
  agents: FOREIGN_CONTROL_MAX,
  goaway: FOREIGN_CONTROL_MAX,
  reauth_ok: FOREIGN_CONTROL_MAX,
  nat_probe_info: FOREIGN_CONTROL_MAX,
  nat_status: FOREIGN_CONTROL_MAX,
  direct_refused: FOREIGN_CONTROL_MAX,
  punch_plan: FOREIGN_CONTROL_MAX,
  direct_policy: FOREIGN_CONTROL_MAX,
  direct_close: FOREIGN_CONTROL_MAX,
};

/**
 * What an agent or client (the Mux `initiator`) accepts from its gateway. A direct_policy with 256 targets is
 * 89,995 bytes, a punch_plan with 16 IPv6 candidates 3,011. The agent list has no count limit (it grows with the
 * configuration), so it keeps the whole frame ceiling; the peer trusts its gateway for that one.
 */
export const PEER_CONTROL_LIMITS: ControlLimits = {
  hello_ok: 64 * 1024,
  error: 8 * 1024,
  agents: DEFAULT_MAX_FRAME_PAYLOAD,
  goaway: 4 * 1024,
  reauth_ok: 256,
  nat_probe_info: 4 * 1024,
  nat_status: 4 * 1024,
  direct_refused: 4 * 1024,
  punch_plan: 8 * 1024,
  direct_policy: 128 * 1024,
  direct_close: 4 * 1024,
  hello: FOREIGN_CONTROL_MAX,
  reauth: FOREIGN_CONTROL_MAX,
  nat_report: FOREIGN_CONTROL_MAX,
  nat_reprobe: FOREIGN_CONTROL_MAX,
  direct_request: FOREIGN_CONTROL_MAX,
  direct_state: FOREIGN_CONTROL_MAX,
  list_agents: FOREIGN_CONTROL_MAX,
};

/** Either side's limit for each type: what `decodeFrame` applies when the caller does not say which side it is. */
export const ANY_CONTROL_LIMITS: ControlLimits = Object.fromEntries(
  Object.keys(GATEWAY_CONTROL_LIMITS).map((type) => {
    const t = type as ControlMessage['type'];
    return [t, Math.max(GATEWAY_CONTROL_LIMITS[t], PEER_CONTROL_LIMITS[t])];
  }),
) as ControlLimits;

/**
 * Deepest nesting of arrays and objects in a control message. The deepest legitimate one is the agent list
 * (`{agents: [{ports: [{`: 5 levels). JSON.parse of a 1 MiB `[[[[…` took 0.9 s; the scan that refuses it is linear
 * and allocates nothing.
 */
export const MAX_CONTROL_DEPTH = 8;

/** The largest entry of each table, computed once: the bound applied before the type is known. */
const largestLimit = new WeakMap<ControlLimits, number>();
function largestOf(limits: ControlLimits): number {
  let max = largestLimit.get(limits);
  if (max === undefined) {
    max = Math.max(...Object.values(limits));
    largestLimit.set(limits, max);
  }
  return max;
}

/** True when `payload` nests arrays/objects deeper than `maxDepth` (brackets inside strings do not count). */
function nestsDeeperThan(payload: Uint8Array, maxDepth: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < payload.length; i++) {
    const c = payload[i] as number;
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped byte
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > maxDepth) return true;
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return false;
}

/**
 * A control payload, checked before the expensive steps: the message type sits inside the JSON, so the size is
 * held to the largest limit of this side before JSON.parse (and the nesting to {@link MAX_CONTROL_DEPTH}), then
 * to the limit of its type before the schema. Any failure is a FrameError on stream 0: the session's
 * protocol-violation path.
 */
function parseControl(payload: Uint8Array, limits: ControlLimits): ControlMessage {
  const largest = largestOf(limits);
  if (payload.length > largest) {
    throw new FrameError(ErrorCode.FRAME_TOO_LARGE, `CONTROL payload of ${payload.length} bytes exceeds the largest control message of ${largest} bytes`);
  }
  if (nestsDeeperThan(payload, MAX_CONTROL_DEPTH)) {
    throw new FrameError(ErrorCode.FRAME_BAD_PAYLOAD, `CONTROL payload nests deeper than ${MAX_CONTROL_DEPTH} levels`);
  }
  const value = parseJsonValue(payload, 'CONTROL');
  const type = typeof value === 'object' && value !== null ? (value as { type?: unknown }).type : undefined;
  if (typeof type === 'string' && Object.hasOwn(limits, type)) {
    const limit = limits[type as ControlMessage['type']];
    if (payload.length > limit) {
      throw new FrameError(ErrorCode.FRAME_TOO_LARGE, `CONTROL ${type} payload of ${payload.length} bytes exceeds its limit of ${limit} bytes`);
    }
  }
  return validate(value, controlMessageSchema, 'CONTROL');
}

function parseJsonValue(payload: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(textDecoder.decode(payload));
  } catch (cause) {
    throw new FrameError(ErrorCode.FRAME_BAD_PAYLOAD, `${what} payload is not UTF-8 JSON`, { cause });
  }
}

type Schema<T> = { safeParse(v: unknown): { success: true; data: T } | { success: false; error: { issues: { path: PropertyKey[]; message: string }[] } } };

function validate<T>(value: unknown, schema: Schema<T>, what: string): T {
  const result = schema.safeParse(value);
  if (!result.success) {
    const issues = result.error.issues.map((i) => `${i.path.map(String).join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new FrameError(ErrorCode.FRAME_BAD_PAYLOAD, `${what} payload is invalid: ${issues}`);
  }
  return result.data;
}

function parseJson<T>(payload: Uint8Array, schema: Schema<T>, what: string): T {
  return validate(parseJsonValue(payload, what), schema, what);
}

function requireStream(streamId: number, what: string): void {
  if (streamId === 0 || streamId > MAX_STREAM_ID) {
    throw new FrameError(ErrorCode.FRAME_BAD_STREAM_ID, `${what} needs a stream id in 1..${MAX_STREAM_ID}, got ${streamId}`);
  }
}

function requireSession(streamId: number, what: string): void {
  if (streamId !== 0) throw new FrameError(ErrorCode.FRAME_BAD_STREAM_ID, `${what} must use stream id 0, got ${streamId}`);
}

function requireLength(payload: Uint8Array, length: number, what: string): void {
  if (payload.length !== length) {
    throw new FrameError(ErrorCode.FRAME_BAD_PAYLOAD, `${what} payload must be ${length} bytes, got ${payload.length}`);
  }
}

function decodeBody(type: number, streamId: number, payload: Uint8Array, controlLimits: ControlLimits): Frame {
  switch (type) {
    case FrameType.OPEN:
      requireStream(streamId, 'OPEN');
      return { type: 'open', streamId, payload: parseJson(payload, openPayloadSchema, 'OPEN') };
    case FrameType.OPEN_OK:
      requireStream(streamId, 'OPEN_OK');
      return { type: 'open_ok', streamId, payload: parseJson(payload, openOkSchema, 'OPEN_OK') };
    case FrameType.DATA:
      requireStream(streamId, 'DATA');
      return { type: 'data', streamId, data: payload };
    case FrameType.FIN:
      requireStream(streamId, 'FIN');
      requireLength(payload, 0, 'FIN');
      return { type: 'fin', streamId };
    case FrameType.RESET:
      requireStream(streamId, 'RESET');
      return { type: 'reset', streamId, payload: parseJson(payload, resetSchema, 'RESET') };
    case FrameType.WINDOW: {
      requireStream(streamId, 'WINDOW');
      requireLength(payload, 4, 'WINDOW');
      const increment = Buffer.from(payload.buffer, payload.byteOffset, 4).readUInt32BE(0);
      if (increment === 0) throw new FrameError(ErrorCode.FRAME_BAD_PAYLOAD, 'WINDOW increment must be positive');
      return { type: 'window', streamId, increment };
    }
    case FrameType.PING:
      requireSession(streamId, 'PING');
      requireLength(payload, 8, 'PING');
      return { type: 'ping', opaque: payload };
    case FrameType.PONG:
      requireSession(streamId, 'PONG');
      requireLength(payload, 8, 'PONG');
      return { type: 'pong', opaque: payload };
    case FrameType.CONTROL:
      requireSession(streamId, 'CONTROL');
      return { type: 'control', message: parseControl(payload, controlLimits) };
    default:
      throw new FrameError(ErrorCode.FRAME_UNKNOWN_TYPE, `unknown frame type 0x${type.toString(16).padStart(2, '0')}`);
  }
}

function readHeader(bytes: Uint8Array, offset: number, maxPayload: number): { type: number; streamId: number; length: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, FRAME_HEADER_BYTES);
  const type = view.getUint8(0);
  const streamId = view.getUint32(1);
  const length = view.getUint32(5);
  if (length > maxPayload) {
    throw new FrameError(ErrorCode.FRAME_TOO_LARGE, `frame payload of ${length} bytes exceeds the limit of ${maxPayload}`);
  }
  return { type, streamId, length };
}

/**
 * Decodes a buffer that holds exactly one frame (one WebSocket message). `controlLimits` caps CONTROL payloads by
 * message type (default: the larger of either side's limit; a Mux passes its own side's).
 */
export function decodeFrame(bytes: Uint8Array, maxPayload = DEFAULT_MAX_FRAME_PAYLOAD, controlLimits: ControlLimits = ANY_CONTROL_LIMITS): Frame {
  if (bytes.length < FRAME_HEADER_BYTES) {
    throw new FrameError(ErrorCode.FRAME_TRUNCATED, `frame of ${bytes.length} bytes is shorter than its ${FRAME_HEADER_BYTES}-byte header`);
  }
  const { type, streamId, length } = readHeader(bytes, 0, maxPayload);
  if (bytes.length !== FRAME_HEADER_BYTES + length) {
    throw new FrameError(
      bytes.length < FRAME_HEADER_BYTES + length ? ErrorCode.FRAME_TRUNCATED : ErrorCode.FRAME_BAD_PAYLOAD,
      `frame header announces ${length} payload bytes, message carries ${bytes.length - FRAME_HEADER_BYTES}`,
    );
  }
  return decodeBodyNamingStream(type, streamId, bytes.subarray(FRAME_HEADER_BYTES), controlLimits);
}

/** Tags a body error with the stream it named, so a session can reset that stream alone. */
function decodeBodyNamingStream(type: number, streamId: number, payload: Uint8Array, controlLimits: ControlLimits): Frame {
  try {
    return decodeBody(type, streamId, payload, controlLimits);
  } catch (err) {
    if (err instanceof FrameError) err.streamId = streamId <= MAX_STREAM_ID ? streamId : 0;
    throw err;
  }
}

/**
 * Incremental decoder for frames carried back to back on a byte stream. Buffers at most one
 * frame header plus one payload (bounded by `maxPayload`). After it throws, it must not be reused.
 */
export class FrameDecoder {
  readonly #maxPayload: number;
  readonly #controlLimits: ControlLimits;
  #pending: Buffer = Buffer.alloc(0);

  constructor(maxPayload = DEFAULT_MAX_FRAME_PAYLOAD, controlLimits: ControlLimits = ANY_CONTROL_LIMITS) {
    this.#maxPayload = maxPayload;
    this.#controlLimits = controlLimits;
  }

  /** Appends bytes and returns every frame now complete, in order. */
  push(chunk: Uint8Array): Frame[] {
    this.#pending = this.#pending.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.#pending, chunk]);
    const frames: Frame[] = [];
    let offset = 0;
    while (this.#pending.length - offset >= FRAME_HEADER_BYTES) {
      const { type, streamId, length } = readHeader(this.#pending, offset, this.#maxPayload);
      const end = offset + FRAME_HEADER_BYTES + length;
      if (this.#pending.length < end) break;
      // Copy the payload out so a retained DATA frame does not pin the whole receive buffer.
      const payload = Uint8Array.prototype.slice.call(this.#pending, offset + FRAME_HEADER_BYTES, end);
      frames.push(decodeBodyNamingStream(type, streamId, payload, this.#controlLimits));
      offset = end;
    }
    this.#pending = this.#pending.subarray(offset);
    return frames;
  }

  /** Bytes held for an incomplete frame. */
  get bufferedBytes(): number {
    return this.#pending.length;
  }
}
