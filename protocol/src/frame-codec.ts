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

function parseJson<T>(payload: Uint8Array, schema: { safeParse(v: unknown): { success: true; data: T } | { success: false; error: { issues: { path: PropertyKey[]; message: string }[] } } }, what: string): T {
  let value: unknown;
  try {
    value = JSON.parse(textDecoder.decode(payload));
  } catch (cause) {
    throw new FrameError(ErrorCode.FRAME_BAD_PAYLOAD, `${what} payload is not UTF-8 JSON`, { cause });
  }
  const result = schema.safeParse(value);
  if (!result.success) {
    const issues = result.error.issues.map((i) => `${i.path.map(String).join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new FrameError(ErrorCode.FRAME_BAD_PAYLOAD, `${what} payload is invalid: ${issues}`);
  }
  return result.data;
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

function decodeBody(type: number, streamId: number, payload: Uint8Array): Frame {
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
      return { type: 'control', message: parseJson(payload, controlMessageSchema, 'CONTROL') };
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

/** Decodes a buffer that holds exactly one frame (one WebSocket message). */
export function decodeFrame(bytes: Uint8Array, maxPayload = DEFAULT_MAX_FRAME_PAYLOAD): Frame {
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
  return decodeBodyNamingStream(type, streamId, bytes.subarray(FRAME_HEADER_BYTES));
}

/** Tags a body error with the stream it named, so a session can reset that stream alone. */
function decodeBodyNamingStream(type: number, streamId: number, payload: Uint8Array): Frame {
  try {
    return decodeBody(type, streamId, payload);
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
  #pending: Buffer = Buffer.alloc(0);

  constructor(maxPayload = DEFAULT_MAX_FRAME_PAYLOAD) {
    this.#maxPayload = maxPayload;
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
      frames.push(decodeBodyNamingStream(type, streamId, payload));
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
