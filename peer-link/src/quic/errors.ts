/**
 * Errors of the direct (peer-to-peer QUIC) path. Listed in docs/errors.md under `peer-link`. Callers match on
 * `code`, never on message text.
 */
import { NarrowlinkError } from '@narrowlink/protocol';

export const DirectErrorCode = {
  /** The peer's certificate fingerprint is not the one the gateway announced, or the peer rejected ours. */
  PEER_MISMATCH: 'NL_ERR_DIRECT_PEER_MISMATCH',
  /** The QUIC handshake did not complete within the connect/accept timeout. */
  TIMEOUT: 'NL_ERR_DIRECT_TIMEOUT',
  /** An established connection heard nothing from the peer for the idle timeout: the path died. */
  IDLE: 'NL_ERR_DIRECT_IDLE',
  /** The connection (or the endpoint) is closed: closed locally, or closed gracefully by the peer. */
  CLOSED: 'NL_ERR_DIRECT_CLOSED',
  /** QUIC or TLS failed (protocol violation, handshake failure), locally or as reported by the peer. */
  QUIC: 'NL_ERR_DIRECT_QUIC',
  /** The peer reset the stream or stopped reading it (the peer's application code is in `streamCode`). */
  STREAM_RESET: 'NL_ERR_DIRECT_STREAM_RESET',
  /**
   * No direct path to that peer: the gateway refused to plan one (reason in the message: BothSymmetric,
   * UdpBlocked, Denied, …), punching or the handshake failed, or the path died. `direct` mode fails with it.
   */
  UNAVAILABLE: 'NL_ERR_DIRECT_UNAVAILABLE',
  /** The UDP socket could not be bound or failed. */
  SOCKET: 'NL_ERR_DIRECT_SOCKET',
  /** The native QUIC binding cannot load on this platform or in this build (see quic/native.ts): relay only. */
  NATIVE_UNAVAILABLE: 'NL_ERR_DIRECT_NATIVE_UNAVAILABLE',
} as const;
export type DirectErrorCode = (typeof DirectErrorCode)[keyof typeof DirectErrorCode];

export class DirectError extends NarrowlinkError {
  /** QUIC transport/TLS error code (RFC 9000 §20; 0x100-0x1ff are TLS alerts), when one applies. */
  readonly quicCode: number | undefined;
  /** Application error code of a reset stream, for STREAM_RESET. */
  readonly streamCode: number | undefined;
  /** Whether the peer (rather than this side) ended the connection or stream. */
  readonly byPeer: boolean;
  /** UNAVAILABLE: the short reason (a direct_refused reason, `PunchTimeout`, `PathLost`, an NL_ERR_DIRECT_* code). */
  readonly reason: string | undefined;
  constructor(
    code: DirectErrorCode,
    message: string,
    options: { quicCode?: number; streamCode?: number; byPeer?: boolean; reason?: string; cause?: unknown } = {},
  ) {
    super(code, message, { cause: options.cause });
    this.reason = options.reason;
    this.quicCode = options.quicCode;
    this.streamCode = options.streamCode;
    this.byPeer = options.byPeer ?? false;
  }
}
