/**
 * Public error codes of the protocol package. Callers match on `code`, never on message text.
 * Every code here is documented in docs/errors.md; a test keeps the two in sync.
 */

/** Codes carried on the wire in a stream RESET (short, stable, upper snake case). */
export const StreamErrorCode = {
  /** The compiled policy of the client does not allow this target. */
  DENIED: 'DENIED',
  /** No attached instance of the requested agent, or the agent does not expose the port. */
  NO_AGENT: 'NO_AGENT',
  /** The agent could not connect to its local target (reason in the message). */
  DIAL_FAILED: 'DIAL_FAILED',
  /** The other side did not answer the open in time. */
  TIMEOUT: 'TIMEOUT',
  /** The gateway is draining and accepts no new streams. */
  GATEWAY_SHUTTING_DOWN: 'GATEWAY_SHUTTING_DOWN',
  /** The peer broke the framing or flow-control rules on this stream. */
  PROTOCOL_ERROR: 'PROTOCOL_ERROR',
  /** The peer sent more than its flow-control window allowed. */
  FLOW_CONTROL: 'FLOW_CONTROL',
  /** The far end of a relayed stream went away (session lost, process killed). */
  PEER_GONE: 'PEER_GONE',
  /** The local side abandoned the stream (socket closed, user cancelled). */
  CANCELLED: 'CANCELLED',
  /** A direct path was required but none could be set up. */
  DIRECT_UNAVAILABLE: 'DIRECT_UNAVAILABLE',
  /**
   * The relay does not carry this stream: the agent offers direct paths only (spec.mode direct), or the policy
   * allows this target over Direct only. Clients in auto mode then wait for the direct path.
   */
  RELAY_NOT_OFFERED: 'RELAY_NOT_OFFERED',
  /** Too many streams open on this session. */
  TOO_MANY_STREAMS: 'TOO_MANY_STREAMS',
  /**
   * The gateway refused a relayed OPEN because the client session, or its identity (token `sub`), already holds its
   * share of that agent's streams (protocol 1.3; older clients get TOO_MANY_STREAMS).
   */
  SHARE_EXCEEDED: 'SHARE_EXCEEDED',
  /** The gateway reset a relayed stream that carried no bytes either way for its idle timeout (protocol 1.3). */
  IDLE_TIMEOUT: 'IDLE_TIMEOUT',
  /**
   * The gateway refused an OPEN because the client session opens streams faster than its rate limit allows
   * (protocol 1.3; older clients get TOO_MANY_STREAMS). Retry after a short pause.
   */
  RATE_LIMITED: 'RATE_LIMITED',
  /** Any other failure; details are masked. */
  INTERNAL: 'INTERNAL',
} as const;
export type StreamErrorCode = (typeof StreamErrorCode)[keyof typeof StreamErrorCode];

/** Base class: every error this package throws has a permanent `code`. */
export class NarrowlinkError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Malformed bytes on the wire: wrong type, length, payload shape. The session or stream is at fault. */
export class FrameError extends NarrowlinkError {
  /** The stream the bad frame named, when its header could be read; 0 for session-level frames. */
  streamId = 0;
}

/** A control message failed validation or came from an incompatible protocol version. */
export class ProtocolError extends NarrowlinkError {}

/** A stream ended abnormally; `streamCode` is the wire code the peer (or we) sent. */
export class StreamResetError extends NarrowlinkError {
  readonly streamCode: StreamErrorCode;
  constructor(streamCode: StreamErrorCode, message: string, options?: { cause?: unknown }) {
    super(`NL_ERR_STREAM_${streamCode}`, message, options);
    this.streamCode = streamCode;
  }
}

/** Token could not be verified. `code` says why (expired, audience, type, signature, malformed, algorithm). */
export class TokenError extends NarrowlinkError {}

/** A gateway configuration document failed validation. */
export class ConfigError extends NarrowlinkError {}

/**
 * A raw (non-QUIC) UDP datagram of the direct path (NAT probe or punch packet) was rejected, or the NAT core
 * was called with invalid input. Datagrams come from the open internet: callers drop them and count the `code`.
 */
export class NatError extends NarrowlinkError {}

export const ErrorCode = {
  FRAME_TRUNCATED: 'NL_ERR_FRAME_TRUNCATED',
  FRAME_TOO_LARGE: 'NL_ERR_FRAME_TOO_LARGE',
  FRAME_UNKNOWN_TYPE: 'NL_ERR_FRAME_UNKNOWN_TYPE',
  FRAME_BAD_STREAM_ID: 'NL_ERR_FRAME_BAD_STREAM_ID',
  FRAME_BAD_PAYLOAD: 'NL_ERR_FRAME_BAD_PAYLOAD',
  PROTOCOL_VERSION: 'NL_ERR_PROTOCOL_VERSION',
  PROTOCOL_UNEXPECTED: 'NL_ERR_PROTOCOL_UNEXPECTED',
  PROTOCOL_STREAM_IDS_EXHAUSTED: 'NL_ERR_PROTOCOL_STREAM_IDS_EXHAUSTED',
  TOKEN_MALFORMED: 'NL_ERR_TOKEN_MALFORMED',
  TOKEN_EXPIRED: 'NL_ERR_TOKEN_EXPIRED',
  TOKEN_NOT_YET_VALID: 'NL_ERR_TOKEN_NOT_YET_VALID',
  TOKEN_BAD_AUDIENCE: 'NL_ERR_TOKEN_BAD_AUDIENCE',
  TOKEN_WRONG_TYPE: 'NL_ERR_TOKEN_WRONG_TYPE',
  TOKEN_BAD_SIGNATURE: 'NL_ERR_TOKEN_BAD_SIGNATURE',
  TOKEN_ALG_NOT_ALLOWED: 'NL_ERR_TOKEN_ALG_NOT_ALLOWED',
  TOKEN_MISSING_CLAIM: 'NL_ERR_TOKEN_MISSING_CLAIM',
  TOKEN_LIFETIME_TOO_LONG: 'NL_ERR_TOKEN_LIFETIME_TOO_LONG',
  TOKEN_REVOKED: 'NL_ERR_TOKEN_REVOKED',
  /** A key-bound token (`cnf.jkt`) came without a proof of possession. */
  TOKEN_PROOF_MISSING: 'NL_ERR_TOKEN_PROOF_MISSING',
  /** The proof is malformed, badly signed, or made for another method, URL or token. */
  TOKEN_PROOF_INVALID: 'NL_ERR_TOKEN_PROOF_INVALID',
  /** The proof is signed by another key than the token's (or, on `reauth`, the session's) `cnf.jkt`. */
  TOKEN_PROOF_KEY_MISMATCH: 'NL_ERR_TOKEN_PROOF_KEY_MISMATCH',
  /** The proof's `iat` lies outside the verifier's window (clock skew, or a proof kept for later). */
  TOKEN_PROOF_STALE: 'NL_ERR_TOKEN_PROOF_STALE',
  /** The proof's `jti` was accepted before. */
  TOKEN_PROOF_REPLAYED: 'NL_ERR_TOKEN_PROOF_REPLAYED',
  CONFIG_INVALID: 'NL_ERR_CONFIG_INVALID',
  CONFIG_PARSE: 'NL_ERR_CONFIG_PARSE',
  NAT_NOT_RAW: 'NL_ERR_NAT_NOT_RAW',
  NAT_TRUNCATED: 'NL_ERR_NAT_TRUNCATED',
  NAT_TOO_LARGE: 'NL_ERR_NAT_TOO_LARGE',
  NAT_VERSION: 'NL_ERR_NAT_VERSION',
  NAT_UNKNOWN_TYPE: 'NL_ERR_NAT_UNKNOWN_TYPE',
  NAT_BAD_FIELD: 'NL_ERR_NAT_BAD_FIELD',
  NAT_BAD_MAC: 'NL_ERR_NAT_BAD_MAC',
  NAT_UNKNOWN_SESSION: 'NL_ERR_NAT_UNKNOWN_SESSION',
  NAT_UNEXPECTED: 'NL_ERR_NAT_UNEXPECTED',
  NAT_REPLAYED: 'NL_ERR_NAT_REPLAYED',
  NAT_INVALID_INPUT: 'NL_ERR_NAT_INVALID_INPUT',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * True for the gateway's authentication refusals (`NL_ERR_AUTH_*`: missing or invalid token, wrong endpoint,
 * unknown agent, …). The family is part of the wire contract: a peer that gets one cannot succeed by retrying
 * with the same credentials. The codes themselves are the gateway's (`GatewayErrorCode.AUTH_*`).
 */
export function isAuthRefusalCode(code: string | undefined): boolean {
  return code?.startsWith('NL_ERR_AUTH_') ?? false;
}

/** True for the token verification codes (`NL_ERR_TOKEN_*`, {@link ErrorCode}`.TOKEN_*`). */
export function isTokenCode(code: string | undefined): boolean {
  return code?.startsWith('NL_ERR_TOKEN_') ?? false;
}
