/**
 * Why a QUIC connection ended, as the DirectError its users see: a pure function of what quiche reports (the
 * CONNECTION_CLOSE each side sent, whether the idle timer fired) and of the error we recorded ourselves.
 */
import type { ConnectionError } from '@matrixai/quic/native/types.js';
import { DirectError, DirectErrorCode } from './errors.ts';

/** TLS alert bad_certificate as a QUIC crypto error (0x100 + 42). */
export const QUIC_BAD_CERTIFICATE = 0x100 + 42;
/** QUIC transport error APPLICATION_ERROR: how a connection closes before the handshake completes. */
export const QUIC_APPLICATION_ERROR = 0x0c;

/** What is known about a connection once it ends (or the peer refuses the handshake). */
export interface CloseFacts {
  /** The error we recorded (fingerprint mismatch, handshake timeout, dead path, close during the handshake). */
  localError: DirectError | undefined;
  /** quiche `peerError()`: the CONNECTION_CLOSE the peer sent, if any. */
  peerError: ConnectionError | null;
  /** quiche `localError()`: the CONNECTION_CLOSE quiche sent on its own or for us, if any. */
  quicLocalError: ConnectionError | null;
  /** quiche `isTimedOut()`: the idle (or handshake) timer fired. */
  timedOut: boolean;
  /** The connection never got past the handshake. */
  handshaking: boolean;
}

/** Works out why the connection ended. Undefined for a graceful close (application code 0, either side). */
export function closeReasonOf(facts: CloseFacts): DirectError | undefined {
  if (facts.localError) return facts.localError;
  const peer = facts.peerError;
  if (peer) {
    if (!peer.isApp && peer.errorCode === QUIC_BAD_CERTIFICATE)
      return new DirectError(DirectErrorCode.PEER_MISMATCH, 'the peer rejected our certificate (fingerprint mismatch)', { quicCode: peer.errorCode, byPeer: true });
    if (peer.isApp && peer.errorCode === 0) return undefined;
    if (facts.handshaking && !peer.isApp && peer.errorCode === QUIC_APPLICATION_ERROR)
      return new DirectError(DirectErrorCode.CLOSED, `the peer abandoned the handshake (${Buffer.from(peer.reason).toString('utf8')})`, { quicCode: peer.errorCode, byPeer: true });
    return new DirectError(DirectErrorCode.QUIC, `the peer closed the connection with ${peer.isApp ? 'application' : 'transport'} error ${peer.errorCode}`, {
      quicCode: peer.isApp ? undefined : peer.errorCode,
      byPeer: true,
    });
  }
  const local = facts.quicLocalError;
  if (local && !(local.isApp && local.errorCode === 0))
    return new DirectError(DirectErrorCode.QUIC, `QUIC failed locally with ${local.isApp ? 'application' : 'transport'} error ${local.errorCode}`, {
      quicCode: local.isApp ? undefined : local.errorCode,
    });
  if (facts.timedOut) {
    if (facts.handshaking) return new DirectError(DirectErrorCode.TIMEOUT, 'the QUIC handshake timed out');
    return new DirectError(DirectErrorCode.IDLE, 'no packet from the peer within the idle timeout: the direct path is gone');
  }
  return undefined;
}
