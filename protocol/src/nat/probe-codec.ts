/**
 * Raw UDP datagrams of the direct path: NAT probes (peer ↔ gateway probe ports) and punch packets
 * (peer ↔ peer). They share the peer's QUIC socket, so every one starts with byte 0x00; a QUIC packet always
 * has the 0x40 fixed bit set in its first byte (RFC 9000 §17), so the two never collide.
 *
 * Common header (4 bytes):  0x00 | version (0x01) | type | flags
 *
 *   probe request   type 0x01  flags: 0x01 CHANGE_PORT, 0x02 CHANGE_ADDRESS (answer from the other probe port /
 *                              other public address: the filtering test)
 *                   seq u32 | session id length u8 (1..128) | session id | mac[16]
 *   probe response  type 0x02  flags: none
 *                   seq u32 | received-on u8 | answered-from u8 | family u8 (4|6) | address (4|16) | port u16 | mac[16]
 *   punch           type 0x03  flags: 0x01 ACK (ack seq valid), 0x02 DONE (sender is established; needs ACK)
 *                   attempt id [8] | role u8 (1 client, 2 agent) | seq u32 | ack seq u32 | mac[16]
 *
 * Integers are big-endian. Probe endpoint indices (received-on, answered-from) are 0..3: bit 0 = the gateway's
 * second probe port, bit 1 = its second public address. `mac` is HMAC-SHA256 over every byte before it,
 * truncated to 16 bytes; probes use the per-session probe key the gateway hands out, punch packets the per-pair
 * punch key from the punch plan. The type byte is covered, so one packet cannot pass for another.
 *
 * Decoding checks size, then structure, then the MAC (constant time), then field values, and throws only
 * `NatError` with an `NL_ERR_NAT_*` code: datagrams come from anyone, a bad one costs a typed error, never a crash.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { ErrorCode, NatError } from '../errors.ts';
import { addressToBytes, bytesToAddress, type Endpoint, isValidPort } from './endpoint.ts';

export const NAT_WIRE_VERSION = 0x01;
/** Every raw datagram is rejected above this size before it is parsed. All valid ones are far smaller. */
export const MAX_NAT_DATAGRAM_BYTES = 192;
export const NAT_MAC_BYTES = 16;
/** Shortest probe or punch key accepted (HMAC-SHA256 keys should carry at least 128 bits). */
export const MIN_NAT_KEY_BYTES = 16;
export const MAX_SESSION_ID_BYTES = 128;
export const ATTEMPT_ID_BYTES = 8;
const HEADER_BYTES = 4;
const MAX_U32 = 0xffff_ffff;

export const NatPacketType = { PROBE_REQUEST: 0x01, PROBE_RESPONSE: 0x02, PUNCH: 0x03 } as const;
export type NatPacketKind = 'probe-request' | 'probe-response' | 'punch';

const ProbeFlag = { CHANGE_PORT: 0x01, CHANGE_ADDRESS: 0x02 } as const;
const PunchFlag = { ACK: 0x01, DONE: 0x02 } as const;

/** Which end of a direct path a peer is. */
export type PeerRole = 'client' | 'agent';
const ROLE_BYTE: Record<PeerRole, number> = { client: 1, agent: 2 };

/** Sizes of the fixed-size packets. */
export const PROBE_RESPONSE_BYTES = { 4: HEADER_BYTES + 4 + 3 + 4 + 2 + NAT_MAC_BYTES, 6: HEADER_BYTES + 4 + 3 + 16 + 2 + NAT_MAC_BYTES } as const;
export const PUNCH_BYTES = HEADER_BYTES + ATTEMPT_ID_BYTES + 1 + 4 + 4 + NAT_MAC_BYTES;

export interface ProbeRequest {
  /** Chosen by the peer, unique per probe of its session (the gateway keeps a replay window). */
  seq: number;
  /** Opaque session id from `hello_ok` (its UTF-8 bytes; see {@link sessionIdBytes}). */
  sessionId: Uint8Array;
  /** Ask the gateway to answer from its other probe port (filtering test). */
  changePort: boolean;
  /** Ask the gateway to answer from its other public address, when it has one (filtering test). */
  changeAddress: boolean;
}

export interface ProbeResponse {
  /** The request's seq. */
  seq: number;
  /** Probe endpoint index (0..3) that received the request: the mapping below is towards this destination. */
  receivedOn: number;
  /** Probe endpoint index (0..3) the response was sent from. */
  answeredFrom: number;
  /** The request's source address and port as the gateway saw them: the peer's mapping. */
  mapped: Endpoint;
}

export interface PunchPacket {
  /** Identifies one punch attempt (from the plan); packets of other attempts are ignored. */
  attemptId: Uint8Array;
  /** Role of the sender; a side ignores packets carrying its own role (its own packets reflected back). */
  role: PeerRole;
  /** Per-sender packet number, 1..2^32-1. */
  seq: number;
  /** Highest seq the sender received from us, when it has received one. */
  ackSeq?: number;
  /** The sender has already established the path; do not answer. Only with `ackSeq`. */
  done: boolean;
}

function natError(code: string, message: string): NatError {
  return new NatError(code, message);
}

function requireKey(key: Uint8Array, what: string): void {
  if (!(key instanceof Uint8Array) || key.length < MIN_NAT_KEY_BYTES) {
    throw natError(ErrorCode.NAT_INVALID_INPUT, `${what} key must be at least ${MIN_NAT_KEY_BYTES} bytes`);
  }
}

function requireU32(value: number, min: number, what: string): void {
  if (!Number.isInteger(value) || value < min || value > MAX_U32) {
    throw natError(ErrorCode.NAT_INVALID_INPUT, `${what} must be an integer in ${min}..${MAX_U32}, got ${value}`);
  }
}

function requireIndex(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 3) throw natError(ErrorCode.NAT_INVALID_INPUT, `${what} must be a probe endpoint index 0..3`);
}

function mac(key: Uint8Array, data: Uint8Array): Buffer {
  return createHmac('sha256', key).update(data).digest().subarray(0, NAT_MAC_BYTES);
}

/** Appends the MAC over `out[0..length-16)` into the last 16 bytes of `out`. */
function seal(out: Buffer, key: Uint8Array): Buffer {
  const body = out.length - NAT_MAC_BYTES;
  mac(key, out.subarray(0, body)).copy(out, body);
  return out;
}

function verify(bytes: Uint8Array, key: Uint8Array, what: string): void {
  const body = bytes.length - NAT_MAC_BYTES;
  const expected = mac(key, bytes.subarray(0, body));
  const received = bytes.subarray(body);
  if (!timingSafeEqual(expected, received)) throw natError(ErrorCode.NAT_BAD_MAC, `${what} MAC does not verify (wrong key or altered packet)`);
}

function header(type: number, flags: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  out[0] = 0x00;
  out[1] = NAT_WIRE_VERSION;
  out[2] = type;
  out[3] = flags;
  return out;
}

/** True when `bytes` is a raw direct-path datagram (first byte 0x00) rather than a QUIC packet. */
export function isRawDatagram(bytes: Uint8Array): boolean {
  return bytes.length > 0 && bytes[0] === 0x00;
}

/**
 * Cheap routing of a datagram read from the shared socket: the kind of raw packet it claims to be, or
 * `undefined` for QUIC and for anything unrecognisable. Claims are not trusted: decode (and verify) next.
 */
export function rawDatagramKind(bytes: Uint8Array): NatPacketKind | undefined {
  if (bytes.length < HEADER_BYTES || bytes[0] !== 0x00 || bytes[1] !== NAT_WIRE_VERSION) return undefined;
  switch (bytes[2]) {
    case NatPacketType.PROBE_REQUEST:
      return 'probe-request';
    case NatPacketType.PROBE_RESPONSE:
      return 'probe-response';
    case NatPacketType.PUNCH:
      return 'punch';
    default:
      return undefined;
  }
}

/** The session id bytes a peer puts in its probes: the UTF-8 of `hello_ok.sessionId`. */
export function sessionIdBytes(sessionId: string): Uint8Array {
  return new TextEncoder().encode(sessionId);
}

/** Size, marker, version and type checks shared by every decoder; returns the flags byte. */
function readHeader(bytes: Uint8Array, type: number, what: string): number {
  if (!(bytes instanceof Uint8Array)) throw natError(ErrorCode.NAT_INVALID_INPUT, `${what}: datagram must be a Uint8Array`);
  if (bytes.length > MAX_NAT_DATAGRAM_BYTES) {
    throw natError(ErrorCode.NAT_TOO_LARGE, `${what}: datagram of ${bytes.length} bytes exceeds ${MAX_NAT_DATAGRAM_BYTES}`);
  }
  if (bytes.length < HEADER_BYTES) throw natError(ErrorCode.NAT_TRUNCATED, `${what}: datagram of ${bytes.length} bytes is shorter than the header`);
  if (bytes[0] !== 0x00) throw natError(ErrorCode.NAT_NOT_RAW, `${what}: first byte 0x${(bytes[0] as number).toString(16).padStart(2, '0')} is not 0x00`);
  if (bytes[1] !== NAT_WIRE_VERSION) throw natError(ErrorCode.NAT_VERSION, `${what}: version ${bytes[1]} is not ${NAT_WIRE_VERSION}`);
  const actual = bytes[2] as number;
  if (actual !== NatPacketType.PROBE_REQUEST && actual !== NatPacketType.PROBE_RESPONSE && actual !== NatPacketType.PUNCH) {
    throw natError(ErrorCode.NAT_UNKNOWN_TYPE, `${what}: unknown packet type 0x${actual.toString(16).padStart(2, '0')}`);
  }
  if (actual !== type) throw natError(ErrorCode.NAT_UNEXPECTED, `${what}: got packet type 0x${actual.toString(16).padStart(2, '0')}`);
  return bytes[3] as number;
}

function requireLength(bytes: Uint8Array, length: number, what: string): void {
  if (bytes.length < length) throw natError(ErrorCode.NAT_TRUNCATED, `${what}: ${bytes.length} bytes, need ${length}`);
  if (bytes.length > length) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: ${bytes.length - length} trailing bytes`);
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---------------------------------------------------------------------------------------------------------
// Probe request

export function encodeProbeRequest(request: ProbeRequest, probeKey: Uint8Array): Uint8Array {
  requireKey(probeKey, 'probe');
  requireU32(request.seq, 0, 'probe seq');
  const sid = request.sessionId;
  if (!(sid instanceof Uint8Array) || sid.length < 1 || sid.length > MAX_SESSION_ID_BYTES) {
    throw natError(ErrorCode.NAT_INVALID_INPUT, `session id must be 1..${MAX_SESSION_ID_BYTES} bytes`);
  }
  const flags = (request.changePort ? ProbeFlag.CHANGE_PORT : 0) | (request.changeAddress ? ProbeFlag.CHANGE_ADDRESS : 0);
  const out = header(NatPacketType.PROBE_REQUEST, flags, HEADER_BYTES + 4 + 1 + sid.length + NAT_MAC_BYTES);
  out.writeUInt32BE(request.seq, 4);
  out[8] = sid.length;
  out.set(sid, 9);
  return seal(out, probeKey);
}

/**
 * Decodes and authenticates a probe request. `keyFor` maps the (still unauthenticated) session id to that
 * session's probe key, or `undefined` for an unknown session (→ NL_ERR_NAT_UNKNOWN_SESSION).
 */
export function decodeProbeRequest(bytes: Uint8Array, keyFor: (sessionId: Uint8Array) => Uint8Array | undefined): ProbeRequest {
  const what = 'probe request';
  const flags = readHeader(bytes, NatPacketType.PROBE_REQUEST, what);
  if (bytes.length < HEADER_BYTES + 5) throw natError(ErrorCode.NAT_TRUNCATED, `${what}: ${bytes.length} bytes`);
  const sidLength = bytes[8] as number;
  if (sidLength === 0 || sidLength > MAX_SESSION_ID_BYTES) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: session id length ${sidLength}`);
  requireLength(bytes, HEADER_BYTES + 5 + sidLength + NAT_MAC_BYTES, what);
  const sessionId = Uint8Array.from(bytes.subarray(9, 9 + sidLength));
  const key = keyFor(sessionId);
  if (key === undefined) throw natError(ErrorCode.NAT_UNKNOWN_SESSION, `${what}: no session with this id`);
  requireKey(key, 'probe');
  verify(bytes, key, what);
  if ((flags & ~(ProbeFlag.CHANGE_PORT | ProbeFlag.CHANGE_ADDRESS)) !== 0) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: reserved flags set`);
  return {
    seq: view(bytes).getUint32(4),
    sessionId,
    changePort: (flags & ProbeFlag.CHANGE_PORT) !== 0,
    changeAddress: (flags & ProbeFlag.CHANGE_ADDRESS) !== 0,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Probe response

export function encodeProbeResponse(response: ProbeResponse, probeKey: Uint8Array): Uint8Array {
  requireKey(probeKey, 'probe');
  requireU32(response.seq, 0, 'probe seq');
  requireIndex(response.receivedOn, 'receivedOn');
  requireIndex(response.answeredFrom, 'answeredFrom');
  if (!isValidPort(response.mapped.port)) throw natError(ErrorCode.NAT_INVALID_INPUT, `mapped port ${response.mapped.port} is not 1..65535`);
  const address = addressToBytes(response.mapped.address);
  const out = header(NatPacketType.PROBE_RESPONSE, 0, PROBE_RESPONSE_BYTES[address.family]);
  out.writeUInt32BE(response.seq, 4);
  out[8] = response.receivedOn;
  out[9] = response.answeredFrom;
  out[10] = address.family;
  out.set(address.bytes, 11);
  out.writeUInt16BE(response.mapped.port, 11 + address.bytes.length);
  return seal(out, probeKey);
}

export function decodeProbeResponse(bytes: Uint8Array, probeKey: Uint8Array): ProbeResponse {
  const what = 'probe response';
  requireKey(probeKey, 'probe');
  const flags = readHeader(bytes, NatPacketType.PROBE_RESPONSE, what);
  if (bytes.length < HEADER_BYTES + 7) throw natError(ErrorCode.NAT_TRUNCATED, `${what}: ${bytes.length} bytes`);
  const family = bytes[10] as number;
  if (family !== 4 && family !== 6) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: address family ${family}`);
  requireLength(bytes, PROBE_RESPONSE_BYTES[family], what);
  verify(bytes, probeKey, what);
  if (flags !== 0) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: reserved flags set`);
  const receivedOn = bytes[8] as number;
  const answeredFrom = bytes[9] as number;
  if (receivedOn > 3 || answeredFrom > 3) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: probe endpoint index out of range`);
  const addressLength = family === 4 ? 4 : 16;
  const port = view(bytes).getUint16(11 + addressLength);
  if (port === 0) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: mapped port 0`);
  const address = bytesToAddress(family, bytes.subarray(11, 11 + addressLength));
  return { seq: view(bytes).getUint32(4), receivedOn, answeredFrom, mapped: { address, port } };
}

// ---------------------------------------------------------------------------------------------------------
// Punch

export function encodePunch(packet: PunchPacket, punchKey: Uint8Array): Uint8Array {
  requireKey(punchKey, 'punch');
  if (!(packet.attemptId instanceof Uint8Array) || packet.attemptId.length !== ATTEMPT_ID_BYTES) {
    throw natError(ErrorCode.NAT_INVALID_INPUT, `attempt id must be ${ATTEMPT_ID_BYTES} bytes`);
  }
  const roleByte = ROLE_BYTE[packet.role];
  if (roleByte === undefined) throw natError(ErrorCode.NAT_INVALID_INPUT, `role must be client or agent`);
  requireU32(packet.seq, 1, 'punch seq');
  if (packet.ackSeq !== undefined) requireU32(packet.ackSeq, 1, 'punch ack seq');
  if (packet.done && packet.ackSeq === undefined) throw natError(ErrorCode.NAT_INVALID_INPUT, 'a DONE punch must carry an ack seq');
  const flags = (packet.ackSeq !== undefined ? PunchFlag.ACK : 0) | (packet.done ? PunchFlag.DONE : 0);
  const out = header(NatPacketType.PUNCH, flags, PUNCH_BYTES);
  out.set(packet.attemptId, 4);
  out[12] = roleByte;
  out.writeUInt32BE(packet.seq, 13);
  out.writeUInt32BE(packet.ackSeq ?? 0, 17);
  return seal(out, punchKey);
}

export function decodePunch(bytes: Uint8Array, punchKey: Uint8Array): PunchPacket {
  const what = 'punch';
  requireKey(punchKey, 'punch');
  const flags = readHeader(bytes, NatPacketType.PUNCH, what);
  requireLength(bytes, PUNCH_BYTES, what);
  verify(bytes, punchKey, what);
  if ((flags & ~(PunchFlag.ACK | PunchFlag.DONE)) !== 0) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: reserved flags set`);
  const roleByte = bytes[12];
  const role: PeerRole | undefined = roleByte === 1 ? 'client' : roleByte === 2 ? 'agent' : undefined;
  if (role === undefined) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: role ${roleByte}`);
  const v = view(bytes);
  const seq = v.getUint32(13);
  const ackSeq = v.getUint32(17);
  const ack = (flags & PunchFlag.ACK) !== 0;
  const done = (flags & PunchFlag.DONE) !== 0;
  if (seq === 0) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: seq 0`);
  if (ack !== (ackSeq !== 0)) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: ACK flag and ack seq disagree`);
  if (done && !ack) throw natError(ErrorCode.NAT_BAD_FIELD, `${what}: DONE without ACK`);
  const packet: PunchPacket = { attemptId: Uint8Array.from(bytes.subarray(4, 12)), role, seq, done };
  if (ack) packet.ackSeq = ackSeq;
  return packet;
}
