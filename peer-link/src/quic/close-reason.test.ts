import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ConnectionError } from '@matrixai/quic/native/types.js';
import { type CloseFacts, closeReasonOf, QUIC_APPLICATION_ERROR, QUIC_BAD_CERTIFICATE } from './close-reason.ts';
import { DirectError, DirectErrorCode } from './errors.ts';

function transport(errorCode: number, reason = ''): ConnectionError {
  return { isApp: false, errorCode, reason: Buffer.from(reason) };
}
function app(errorCode: number, reason = ''): ConnectionError {
  return { isApp: true, errorCode, reason: Buffer.from(reason) };
}

const nothing: CloseFacts = { localError: undefined, peerError: null, quicLocalError: null, timedOut: false, handshaking: false };

/** The parts of the DirectError a caller may look at; `undefined` for a graceful close. */
type Want = { code: string; message: string; quicCode?: number; byPeer: boolean } | undefined;

const cases: Array<[string, Partial<CloseFacts>, Want]> = [
  ['nothing went wrong: graceful', {}, undefined],
  ['nothing went wrong during the handshake either', { handshaking: true }, undefined],
  ['the peer closed gracefully (application code 0)', { peerError: app(0) }, undefined],
  ['we closed gracefully (application code 0)', { quicLocalError: app(0) }, undefined],
  [
    'the peer rejected our certificate (TLS bad_certificate)',
    { peerError: transport(QUIC_BAD_CERTIFICATE) },
    { code: DirectErrorCode.PEER_MISMATCH, message: 'the peer rejected our certificate (fingerprint mismatch)', quicCode: 0x12a, byPeer: true },
  ],
  [
    'the peer rejected our certificate during the handshake',
    { peerError: transport(QUIC_BAD_CERTIFICATE), handshaking: true },
    { code: DirectErrorCode.PEER_MISMATCH, message: 'the peer rejected our certificate (fingerprint mismatch)', quicCode: 0x12a, byPeer: true },
  ],
  [
    'the bad_certificate number as an application code is just an application error',
    { peerError: app(QUIC_BAD_CERTIFICATE) },
    { code: DirectErrorCode.QUIC, message: 'the peer closed the connection with application error 298', quicCode: undefined, byPeer: true },
  ],
  [
    'the peer abandoned the handshake (APPLICATION_ERROR with its reason)',
    { peerError: transport(QUIC_APPLICATION_ERROR, 'NL_ERR_DIRECT_TIMEOUT'), handshaking: true },
    { code: DirectErrorCode.CLOSED, message: 'the peer abandoned the handshake (NL_ERR_DIRECT_TIMEOUT)', quicCode: 0x0c, byPeer: true },
  ],
  [
    'APPLICATION_ERROR once open is a transport error',
    { peerError: transport(QUIC_APPLICATION_ERROR, 'x') },
    { code: DirectErrorCode.QUIC, message: 'the peer closed the connection with transport error 12', quicCode: 0x0c, byPeer: true },
  ],
  [
    'the peer closed with an application error',
    { peerError: app(7) },
    { code: DirectErrorCode.QUIC, message: 'the peer closed the connection with application error 7', quicCode: undefined, byPeer: true },
  ],
  [
    'the peer closed with a transport error (PROTOCOL_VIOLATION)',
    { peerError: transport(0x0a) },
    { code: DirectErrorCode.QUIC, message: 'the peer closed the connection with transport error 10', quicCode: 0x0a, byPeer: true },
  ],
  [
    'quiche failed locally with a transport error',
    { quicLocalError: transport(0x03) },
    { code: DirectErrorCode.QUIC, message: 'QUIC failed locally with transport error 3', quicCode: 3, byPeer: false },
  ],
  [
    'quiche closed locally with an application error',
    { quicLocalError: app(5) },
    { code: DirectErrorCode.QUIC, message: 'QUIC failed locally with application error 5', quicCode: undefined, byPeer: false },
  ],
  [
    'the peer error wins over our quiche error and the idle timer',
    { peerError: app(9), quicLocalError: transport(3), timedOut: true },
    { code: DirectErrorCode.QUIC, message: 'the peer closed the connection with application error 9', quicCode: undefined, byPeer: true },
  ],
  [
    'a graceful peer close wins over our quiche error',
    { peerError: app(0), quicLocalError: transport(3) },
    undefined,
  ],
  [
    'the idle timer fired on an open connection',
    { timedOut: true },
    { code: DirectErrorCode.IDLE, message: 'no packet from the peer within the idle timeout: the direct path is gone', byPeer: false },
  ],
  [
    'the idle timer fired after our own graceful close',
    { quicLocalError: app(0), timedOut: true },
    { code: DirectErrorCode.IDLE, message: 'no packet from the peer within the idle timeout: the direct path is gone', byPeer: false },
  ],
  ['the timer fired during the handshake', { timedOut: true, handshaking: true }, { code: DirectErrorCode.TIMEOUT, message: 'the QUIC handshake timed out', byPeer: false }],
  [
    'our quiche error wins over the timer',
    { quicLocalError: transport(1), timedOut: true, handshaking: true },
    { code: DirectErrorCode.QUIC, message: 'QUIC failed locally with transport error 1', quicCode: 1, byPeer: false },
  ],
];

describe('closeReasonOf', () => {
  for (const [name, facts, want] of cases) {
    test(name, () => {
      const got = closeReasonOf({ ...nothing, ...facts });
      if (want === undefined) return assert.equal(got, undefined);
      assert.ok(got instanceof DirectError);
      assert.equal(got.code, want.code);
      assert.equal(got.message, want.message);
      assert.equal(got.quicCode, want.quicCode);
      assert.equal(got.byPeer, want.byPeer);
      assert.equal(got.streamCode, undefined);
    });
  }

  test('an error we recorded ourselves wins over everything quiche reports, as the same object', () => {
    const ours = new DirectError(DirectErrorCode.PEER_MISMATCH, 'the peer fingerprint is wrong');
    for (const facts of [{}, { peerError: app(0) }, { peerError: transport(QUIC_BAD_CERTIFICATE), quicLocalError: transport(3), timedOut: true, handshaking: true }]) {
      assert.equal(closeReasonOf({ ...nothing, ...facts, localError: ours }), ours);
    }
  });
});
