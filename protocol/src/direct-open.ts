/**
 * The header that starts every stream on a direct (QUIC) path, and the agent's answer to it. The relay path
 * opens streams with an OPEN frame the gateway checks; a direct stream has no gateway in between, so its first
 * bytes say which target it wants and the agent answers before any payload flows:
 *
 *   client → agent: u16 length (big endian) | JSON {port: number | exposed name, host?}
 *   agent → client: u16 length | JSON {ok: true} or {code: StreamErrorCode, message}
 *
 * Both are at most MAX_DIRECT_HEADER_BYTES; bytes after the header are the stream's payload.
 */
import * as z from 'zod/mini';
import { ErrorCode, ProtocolError, StreamErrorCode } from './errors.ts';
import { useEnglishMessages } from './zod-english.ts';

// zod/mini, as messages.ts: zod-english.ts says why.
useEnglishMessages();

export const MAX_DIRECT_HEADER_BYTES = 1024;

export const directOpenSchema = z.strictObject({
  port: z.union([z.number().check(z.int(), z.gte(1), z.lte(65535)), z.string().check(z.minLength(1), z.maxLength(63))]),
  host: z.optional(z.string().check(z.minLength(1), z.maxLength(253))),
});
export type DirectOpen = z.infer<typeof directOpenSchema>;

export const directOpenReplySchema = z.union([
  z.strictObject({ ok: z.literal(true) }),
  z.strictObject({
    code: z.enum(Object.values(StreamErrorCode) as [StreamErrorCode, ...StreamErrorCode[]]),
    message: z.string().check(z.maxLength(1024)),
  }),
]);
export type DirectOpenReply = z.infer<typeof directOpenReplySchema>;

function encode(value: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(value), 'utf8');
  if (json.length > MAX_DIRECT_HEADER_BYTES) throw new ProtocolError(ErrorCode.FRAME_TOO_LARGE, `direct stream header of ${json.length} bytes exceeds ${MAX_DIRECT_HEADER_BYTES}`);
  const out = Buffer.allocUnsafe(2 + json.length);
  out.writeUInt16BE(json.length, 0);
  json.copy(out, 2);
  return out;
}

export function encodeDirectOpen(open: DirectOpen): Buffer {
  return encode(directOpenSchema.parse(open));
}

export function encodeDirectOpenReply(reply: DirectOpenReply): Buffer {
  return encode(directOpenReplySchema.parse(reply));
}

/**
 * Collects one length-prefixed header from a byte stream. `push` returns `undefined` until the header is
 * complete, then the parsed value and the bytes that followed it (payload). Throws ProtocolError
 * (NL_ERR_FRAME_TOO_LARGE, NL_ERR_FRAME_BAD_PAYLOAD) for an oversized or malformed header.
 */
export class DirectHeaderReader<T> {
  readonly #schema: z.core.$ZodType<T>;
  readonly #what: string;
  #chunks: Buffer[] = [];
  #length = 0;
  #done = false;

  /** `schema`: any zod schema (zod/mini or classic). */
  constructor(schema: z.core.$ZodType<T>, what: string) {
    this.#schema = schema;
    this.#what = what;
  }

  push(chunk: Buffer): { value: T; rest: Buffer } | undefined {
    if (this.#done) throw new ProtocolError(ErrorCode.PROTOCOL_UNEXPECTED, `${this.#what} already read`);
    this.#chunks.push(chunk);
    this.#length += chunk.length;
    if (this.#length < 2) return undefined;
    const all = this.#chunks.length === 1 ? (this.#chunks[0] as Buffer) : Buffer.concat(this.#chunks);
    this.#chunks = [all];
    const size = all.readUInt16BE(0);
    if (size > MAX_DIRECT_HEADER_BYTES) throw new ProtocolError(ErrorCode.FRAME_TOO_LARGE, `${this.#what} of ${size} bytes exceeds ${MAX_DIRECT_HEADER_BYTES}`);
    if (all.length < 2 + size) return undefined;
    this.#done = true;
    let json: unknown;
    try {
      json = JSON.parse(all.toString('utf8', 2, 2 + size));
    } catch {
      throw new ProtocolError(ErrorCode.FRAME_BAD_PAYLOAD, `${this.#what} is not JSON`);
    }
    const parsed = z.safeParse(this.#schema, json);
    if (!parsed.success) throw new ProtocolError(ErrorCode.FRAME_BAD_PAYLOAD, `${this.#what} is invalid: ${parsed.error.issues[0]?.message ?? 'bad shape'}`);
    return { value: parsed.data, rest: all.subarray(2 + size) };
  }
}

export function directOpenReader(): DirectHeaderReader<DirectOpen> {
  return new DirectHeaderReader(directOpenSchema, 'direct stream open header');
}

export function directOpenReplyReader(): DirectHeaderReader<DirectOpenReply> {
  return new DirectHeaderReader(directOpenReplySchema, 'direct stream open reply');
}
