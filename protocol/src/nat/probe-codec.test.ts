import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { describe, test } from 'node:test';
import { ErrorCode, NatError } from '../errors.ts';
import {
  decodeProbeRequest,
  decodeProbeResponse,
  decodePunch,
  encodeProbeRequest,
  encodeProbeResponse,
  encodePunch,
  isRawDatagram,
  MAX_NAT_DATAGRAM_BYTES,
  PROBE_RESPONSE_BYTES,
  PUNCH_BYTES,
  rawDatagramKind,
  sessionIdBytes,
} from './probe-codec.ts';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const bytes = (h: string) => Uint8Array.from(Buffer.from(h.replace(/\s+/g, ''), 'hex'));
const PROBE_KEY = bytes('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f');
const PUNCH_KEY = new Uint8Array(32).fill(0x42);
const OTHER_KEY = new Uint8Array(32).fill(0x43);
const SESSION = '3f1c2a9e-0d4b-4c8e-9a57-1b2c3d4e5f60';
const ATTEMPT = bytes('0123456789abcdef');
const keyFor = () => PROBE_KEY;

function natCode(code: string) {
  return (error: unknown) => {
    assert.ok(error instanceof NatError, `expected NatError, got ${String(error)}`);
    assert.equal(error.code, code);
    return true;
  };
}

// Golden vectors. The MACs were checked independently with
// `openssl dgst -sha256 -mac HMAC -macopt hexkey:<key>` over the bytes before the MAC (first 16 bytes kept).
const VECTORS = {
  request: {
    hex: '00 01 01 00  00000001  24 33663163326139652d306434622d346338652d396135372d316232633364346535663630  934409d1c32c68841a41ba57eebfd9d8',
    value: { seq: 1, sessionId: sessionIdBytes(SESSION), changePort: false, changeAddress: false },
  },
  requestFlags: {
    hex: '00 01 01 03  01020304  01 aa  943feb5a3ddf6ed4579b18573eb6c2c6',
    value: { seq: 0x01020304, sessionId: bytes('aa'), changePort: true, changeAddress: true },
  },
  responseV4: {
    hex: '00 01 02 00  00000007  01 01 04 c6336402 9c40  6c46340712b6e90a243b001725d6c030',
    value: { seq: 7, receivedOn: 1, answeredFrom: 1, mapped: { address: '198.51.100.2', port: 40_000 } },
  },
  responseV6: {
    hex: '00 01 02 00  00000008  02 03 06 20010db8000000000000000000000001 01bb  77db71811c3617d8e6934b996c61f6c2',
    value: { seq: 8, receivedOn: 2, answeredFrom: 3, mapped: { address: '2001:db8::1', port: 443 } },
  },
  punch: {
    hex: '00 01 03 00  0123456789abcdef 01 00000001 00000000  e18cb5e61846ee45cc70f56cd54cc48e',
    value: { attemptId: ATTEMPT, role: 'client' as const, seq: 1, done: false },
  },
  punchAckDone: {
    hex: '00 01 03 03  0123456789abcdef 02 00000005 00000003  40f52c45854c2c312d1b204fd84ea30e',
    value: { attemptId: ATTEMPT, role: 'agent' as const, seq: 5, ackSeq: 3, done: true },
  },
};

describe('probe codec: golden vectors', () => {
  test('probe request', () => {
    for (const v of [VECTORS.request, VECTORS.requestFlags]) {
      const encoded = encodeProbeRequest(v.value, PROBE_KEY);
      assert.equal(hex(encoded), hex(bytes(v.hex)));
      assert.deepEqual(decodeProbeRequest(bytes(v.hex), keyFor), v.value);
    }
  });

  test('probe response, IPv4 and IPv6', () => {
    for (const v of [VECTORS.responseV4, VECTORS.responseV6]) {
      assert.equal(hex(encodeProbeResponse(v.value, PROBE_KEY)), hex(bytes(v.hex)));
      assert.deepEqual(decodeProbeResponse(bytes(v.hex), PROBE_KEY), v.value);
    }
    assert.equal(bytes(VECTORS.responseV4.hex).length, PROBE_RESPONSE_BYTES[4]);
    assert.equal(bytes(VECTORS.responseV6.hex).length, PROBE_RESPONSE_BYTES[6]);
  });

  test('punch, plain and ACK+DONE', () => {
    for (const v of [VECTORS.punch, VECTORS.punchAckDone]) {
      assert.equal(hex(encodePunch(v.value, PUNCH_KEY)), hex(bytes(v.hex)));
      assert.deepEqual(decodePunch(bytes(v.hex), PUNCH_KEY), v.value);
      assert.equal(bytes(v.hex).length, PUNCH_BYTES);
    }
  });

  test('every raw datagram starts with 0x00 and is told apart from QUIC', () => {
    assert.equal(rawDatagramKind(bytes(VECTORS.request.hex)), 'probe-request');
    assert.equal(rawDatagramKind(bytes(VECTORS.responseV6.hex)), 'probe-response');
    assert.equal(rawDatagramKind(bytes(VECTORS.punch.hex)), 'punch');
    // QUIC long header (Initial) and short header packets: the 0x40 fixed bit is always set.
    for (const quic of ['c000000001', '4000', '40ffffff', 'ff']) {
      assert.equal(isRawDatagram(bytes(quic)), false);
      assert.equal(rawDatagramKind(bytes(quic)), undefined);
    }
    assert.equal(isRawDatagram(new Uint8Array(0)), false);
    assert.equal(rawDatagramKind(bytes('000109')), undefined, 'too short');
    assert.equal(rawDatagramKind(bytes('00010900')), undefined, 'unknown type');
    assert.equal(rawDatagramKind(bytes('00020100')), undefined, 'other version');
  });

  test('decoded byte fields are plain copies, not views into the datagram buffer', () => {
    const datagram = Buffer.from(bytes(VECTORS.request.hex));
    const request = decodeProbeRequest(datagram, keyFor);
    const punchBytes = Buffer.from(bytes(VECTORS.punch.hex));
    const punch = decodePunch(punchBytes, PUNCH_KEY);
    datagram.fill(0);
    punchBytes.fill(0);
    assert.equal(Buffer.from(request.sessionId).toString(), SESSION);
    assert.equal(hex(punch.attemptId), '0123456789abcdef');
    assert.equal(Object.getPrototypeOf(request.sessionId), Uint8Array.prototype);
  });

  test('IPv4-mapped IPv6 source addresses are encoded as IPv4', () => {
    const v6mapped = encodeProbeResponse({ seq: 7, receivedOn: 1, answeredFrom: 1, mapped: { address: '::ffff:198.51.100.2', port: 40_000 } }, PROBE_KEY);
    assert.equal(hex(v6mapped), hex(bytes(VECTORS.responseV4.hex)));
  });

  test('extremes round-trip: seq 0 and 2^32-1, 128-byte session id, port 65535', () => {
    const request = { seq: 0xffff_ffff, sessionId: new Uint8Array(128).fill(7), changePort: false, changeAddress: true };
    const encoded = encodeProbeRequest(request, PROBE_KEY);
    assert.ok(encoded.length <= MAX_NAT_DATAGRAM_BYTES);
    assert.deepEqual(decodeProbeRequest(encoded, keyFor), request);
    const response = { seq: 0, receivedOn: 3, answeredFrom: 0, mapped: { address: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', port: 65_535 } };
    assert.deepEqual(decodeProbeResponse(encodeProbeResponse(response, PROBE_KEY), PROBE_KEY), response);
    const punch = { attemptId: ATTEMPT, role: 'agent' as const, seq: 0xffff_ffff, ackSeq: 0xffff_ffff, done: false };
    assert.deepEqual(decodePunch(encodePunch(punch, PUNCH_KEY), PUNCH_KEY), punch);
  });
});

describe('probe codec: authentication', () => {
  test('a wrong key is a typed NL_ERR_NAT_BAD_MAC, for every packet type', () => {
    assert.throws(() => decodeProbeRequest(bytes(VECTORS.request.hex), () => OTHER_KEY), natCode(ErrorCode.NAT_BAD_MAC));
    assert.throws(() => decodeProbeResponse(bytes(VECTORS.responseV4.hex), OTHER_KEY), natCode(ErrorCode.NAT_BAD_MAC));
    assert.throws(() => decodePunch(bytes(VECTORS.punch.hex), OTHER_KEY), natCode(ErrorCode.NAT_BAD_MAC));
  });

  test('any single altered bit after the marker byte fails (MAC or structure), never decodes', () => {
    const cases: [string, (b: Uint8Array) => unknown][] = [
      [VECTORS.request.hex, (b) => decodeProbeRequest(b, keyFor)],
      [VECTORS.responseV6.hex, (b) => decodeProbeResponse(b, PROBE_KEY)],
      [VECTORS.punchAckDone.hex, (b) => decodePunch(b, PUNCH_KEY)],
    ];
    for (const [h, decode] of cases) {
      const original = bytes(h);
      for (let bit = 0; bit < original.length * 8; bit++) {
        const altered = Uint8Array.from(original);
        altered[bit >> 3] = (altered[bit >> 3] as number) ^ (1 << (bit & 7));
        assert.throws(() => decode(altered), (e: unknown) => e instanceof NatError, `bit ${bit} of ${h}`);
      }
    }
  });

  test('the session id selects the key; an unknown session is NL_ERR_NAT_UNKNOWN_SESSION', () => {
    const seen: string[] = [];
    decodeProbeRequest(bytes(VECTORS.request.hex), (sid) => {
      seen.push(Buffer.from(sid).toString());
      return PROBE_KEY;
    });
    assert.deepEqual(seen, [SESSION]);
    assert.throws(() => decodeProbeRequest(bytes(VECTORS.request.hex), () => undefined), natCode(ErrorCode.NAT_UNKNOWN_SESSION));
  });

  test('a request re-signed with the right key but another type byte is not accepted as a response', () => {
    assert.throws(() => decodeProbeResponse(bytes(VECTORS.request.hex), PROBE_KEY), natCode(ErrorCode.NAT_UNEXPECTED));
    assert.throws(() => decodePunch(bytes(VECTORS.responseV4.hex), PROBE_KEY), natCode(ErrorCode.NAT_UNEXPECTED));
    assert.throws(() => decodeProbeRequest(bytes(VECTORS.punch.hex), keyFor), natCode(ErrorCode.NAT_UNEXPECTED));
  });
});

describe('probe codec: typed rejections', () => {
  /** Re-seals a hand-edited packet so that the check after the MAC is what fails. */
  function resealPunch(edit: (b: Buffer) => void): Uint8Array {
    const b = Buffer.from(bytes(VECTORS.punch.hex));
    edit(b);
    const body = b.subarray(0, b.length - 16);
    createHmac('sha256', PUNCH_KEY).update(body).digest().copy(b, b.length - 16, 0, 16);
    return b;
  }

  const table: [string, Uint8Array, (b: Uint8Array) => unknown, string][] = [
    ['oversized datagram', new Uint8Array(MAX_NAT_DATAGRAM_BYTES + 1), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_TOO_LARGE],
    ['empty datagram', new Uint8Array(0), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_TRUNCATED],
    ['3-byte datagram', bytes('000103'), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_TRUNCATED],
    ['a QUIC packet', bytes('c0000000010000000000000000000000'), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_NOT_RAW],
    ['future version', bytes('00020300'), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_VERSION],
    ['unknown type', bytes('00010700'), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_UNKNOWN_TYPE],
    ['truncated punch', bytes(VECTORS.punch.hex).subarray(0, PUNCH_BYTES - 1), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_TRUNCATED],
    ['punch with a trailing byte', Uint8Array.from([...bytes(VECTORS.punch.hex), 0]), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_BAD_FIELD],
    ['request without session id', bytes('0001010000000001'), (b) => decodeProbeRequest(b, keyFor), ErrorCode.NAT_TRUNCATED],
    ['request with session id length 0', bytes(`000101000000000100${'00'.repeat(16)}`), (b) => decodeProbeRequest(b, keyFor), ErrorCode.NAT_BAD_FIELD],
    ['request with session id length 200', bytes(`0001010000000001c8${'00'.repeat(40)}`), (b) => decodeProbeRequest(b, keyFor), ErrorCode.NAT_BAD_FIELD],
    ['response with family 5', bytes(`000102000000000701010${'5'}${'00'.repeat(22)}`), (b) => decodeProbeResponse(b, PROBE_KEY), ErrorCode.NAT_BAD_FIELD],
    ['response v4 sized as v6', bytes(VECTORS.responseV4.hex).map((x, i) => (i === 10 ? 6 : x)), (b) => decodeProbeResponse(b, PROBE_KEY), ErrorCode.NAT_TRUNCATED],
    ['punch with reserved flag', resealPunch((b) => { b[3] = 0x04; }), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_BAD_FIELD],
    ['punch with role 3', resealPunch((b) => { b[12] = 3; }), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_BAD_FIELD],
    ['punch with seq 0', resealPunch((b) => { b.writeUInt32BE(0, 13); }), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_BAD_FIELD],
    ['punch ACK flag without ack seq', resealPunch((b) => { b[3] = 0x01; }), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_BAD_FIELD],
    ['punch ack seq without ACK flag', resealPunch((b) => { b.writeUInt32BE(9, 17); }), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_BAD_FIELD],
    ['punch DONE without ACK', resealPunch((b) => { b[3] = 0x02; }), (b) => decodePunch(b, PUNCH_KEY), ErrorCode.NAT_BAD_FIELD],
  ];
  for (const [name, input, decode, code] of table) {
    test(`${name} → ${code}`, () => assert.throws(() => decode(input), natCode(code)));
  }

  test('a response re-sealed with a bad field is rejected after the MAC check', () => {
    const b = Buffer.from(encodeProbeResponse(VECTORS.responseV4.value, PROBE_KEY));
    b.writeUInt16BE(0, 15); // mapped port 0
    createHmac('sha256', PROBE_KEY).update(b.subarray(0, b.length - 16)).digest().copy(b, b.length - 16, 0, 16);
    assert.throws(() => decodeProbeResponse(b, PROBE_KEY), natCode(ErrorCode.NAT_BAD_FIELD));
    b[8] = 4; // endpoint index out of range (MAC now wrong: the MAC check comes first)
    assert.throws(() => decodeProbeResponse(b, PROBE_KEY), natCode(ErrorCode.NAT_BAD_MAC));
  });

  test('encoders refuse invalid input with NL_ERR_NAT_INVALID_INPUT', () => {
    const invalid = natCode(ErrorCode.NAT_INVALID_INPUT);
    const short = new Uint8Array(15);
    assert.throws(() => encodePunch(VECTORS.punch.value, short), invalid);
    assert.throws(() => decodePunch(bytes(VECTORS.punch.hex), short), invalid);
    assert.throws(() => decodeProbeRequest(bytes(VECTORS.request.hex), () => short), invalid);
    assert.throws(() => encodeProbeRequest({ ...VECTORS.request.value, sessionId: new Uint8Array(0) }, PROBE_KEY), invalid);
    assert.throws(() => encodeProbeRequest({ ...VECTORS.request.value, sessionId: new Uint8Array(129) }, PROBE_KEY), invalid);
    assert.throws(() => encodeProbeRequest({ ...VECTORS.request.value, seq: -1 }, PROBE_KEY), invalid);
    assert.throws(() => encodeProbeRequest({ ...VECTORS.request.value, seq: 2 ** 32 }, PROBE_KEY), invalid);
    assert.throws(() => encodeProbeResponse({ ...VECTORS.responseV4.value, receivedOn: 4 }, PROBE_KEY), invalid);
    assert.throws(() => encodeProbeResponse({ ...VECTORS.responseV4.value, mapped: { address: 'gateway', port: 1 } }, PROBE_KEY), invalid);
    assert.throws(() => encodeProbeResponse({ ...VECTORS.responseV4.value, mapped: { address: '192.0.2.1', port: 0 } }, PROBE_KEY), invalid);
    assert.throws(() => encodePunch({ ...VECTORS.punch.value, seq: 0 }, PUNCH_KEY), invalid);
    assert.throws(() => encodePunch({ ...VECTORS.punch.value, attemptId: new Uint8Array(7) }, PUNCH_KEY), invalid);
    assert.throws(() => encodePunch({ ...VECTORS.punch.value, done: true }, PUNCH_KEY), invalid);
    assert.throws(() => encodePunch({ ...VECTORS.punch.value, role: 'gateway' as 'client' }, PUNCH_KEY), invalid);
  });

  test('responses are never larger than a request with a UUID session id (no amplification)', () => {
    const request = encodeProbeRequest(VECTORS.request.value, PROBE_KEY);
    assert.ok(PROBE_RESPONSE_BYTES[6] < request.length, `${PROBE_RESPONSE_BYTES[6]} < ${request.length}`);
  });
});
