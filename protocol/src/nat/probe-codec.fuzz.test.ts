/**
 * Deterministic fuzzing of the raw datagram codec and the punch session fed hostile datagrams. The seed is in
 * the suite name; rerun a failure with NL_FUZZ_SEED=<seed>. Failure messages name the case and its bytes.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, NatError } from '../errors.ts';
import type { Endpoint } from './endpoint.ts';
import { Rng } from './nat-sim.testkit.ts';
import {
  decodeProbeRequest,
  decodeProbeResponse,
  decodePunch,
  encodeProbeRequest,
  encodeProbeResponse,
  encodePunch,
  MAX_NAT_DATAGRAM_BYTES,
  type ProbeRequest,
  type ProbeResponse,
  type PunchPacket,
} from './probe-codec.ts';
import { PunchSession } from './punch-session.ts';

const SEED = Number(process.env.NL_FUZZ_SEED ?? 0x6e61_7421) >>> 0;
const SEED_TEXT = `0x${SEED.toString(16).padStart(8, '0')}`;
const RANDOM_CASES = 30_000;
const MUTATION_CASES = 90_000;
const ROUND_TRIP_CASES = 20_000;
const SESSION_DATAGRAMS = 20_000;

const NAT_CODES = new Set<string>(
  Object.entries(ErrorCode)
    .filter(([key]) => key.startsWith('NAT_'))
    .map(([, code]) => code),
);

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

type Kind = 'request' | 'response' | 'punch';

function randomAddress(rng: Rng): string {
  if (rng.next() < 0.5) return `${rng.int(256)}.${rng.int(256)}.${rng.int(256)}.${rng.int(256)}`;
  const groups = Array.from({ length: 8 }, () => (rng.next() < 0.4 ? 0 : rng.int(65_536)).toString(16));
  return groups.join(':');
}

function randomValue(rng: Rng, kind: Kind): ProbeRequest | ProbeResponse | PunchPacket {
  const seq = rng.next() < 0.1 ? 0xffff_ffff : rng.int(2 ** 32);
  switch (kind) {
    case 'request':
      return { seq, sessionId: rng.bytes(1 + rng.int(128)), changePort: rng.next() < 0.5, changeAddress: rng.next() < 0.5 };
    case 'response':
      return { seq, receivedOn: rng.int(4), answeredFrom: rng.int(4), mapped: { address: randomAddress(rng), port: 1 + rng.int(65_535) } };
    case 'punch': {
      const ack = rng.next() < 0.5;
      const packet: PunchPacket = { attemptId: rng.bytes(8), role: rng.next() < 0.5 ? 'client' : 'agent', seq: Math.max(1, seq), done: ack && rng.next() < 0.5 };
      if (ack) packet.ackSeq = 1 + rng.int(2 ** 32 - 1);
      return packet;
    }
  }
}

function encode(kind: Kind, value: unknown, key: Uint8Array): Uint8Array {
  if (kind === 'request') return encodeProbeRequest(value as ProbeRequest, key);
  if (kind === 'response') return encodeProbeResponse(value as ProbeResponse, key);
  return encodePunch(value as PunchPacket, key);
}

function decode(kind: Kind, bytes: Uint8Array, key: Uint8Array): unknown {
  if (kind === 'request') return decodeProbeRequest(bytes, () => key);
  if (kind === 'response') return decodeProbeResponse(bytes, key);
  return decodePunch(bytes, key);
}

function normalize(value: unknown): unknown {
  if (value instanceof Uint8Array) return { hex: hex(value) };
  if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normalize(v)]));
  return value;
}

/** Decodes and requires: success, or a NatError with a NAT code. Returns whether it decoded. */
function decodeTyped(kind: Kind, bytes: Uint8Array, key: Uint8Array, label: string): unknown {
  try {
    return decode(kind, bytes, key);
  } catch (error) {
    if (!(error instanceof NatError) || !NAT_CODES.has(error.code)) {
      assert.fail(`${label}: untyped rejection ${String(error)} for ${hex(bytes)}`);
    }
    return undefined;
  }
}

function mutate(rng: Rng, original: Uint8Array): Uint8Array {
  let b = Uint8Array.from(original);
  const operations = 1 + rng.int(3);
  for (let i = 0; i < operations; i++) {
    switch (rng.int(6)) {
      case 0: {
        if (b.length === 0) break;
        const at = rng.int(b.length);
        b[at] = (b[at] as number) ^ (1 << rng.int(8));
        break;
      }
      case 1:
        if (b.length > 0) b[rng.int(b.length)] = rng.int(256);
        break;
      case 2:
        b = b.subarray(0, rng.int(b.length + 1));
        break;
      case 3:
        b = Uint8Array.from([...b, ...rng.bytes(1 + rng.int(rng.next() < 0.1 ? MAX_NAT_DATAGRAM_BYTES : 8))]);
        break;
      case 4: {
        // Header fields the parser branches on: marker, version, type, flags, lengths, family.
        const at = rng.int(Math.min(b.length, 12) || 1);
        if (at < b.length) b[at] = rng.pick([0, 1, 2, 3, 4, 6, 0x40, 0xc0, 0xff, rng.int(256)]);
        break;
      }
      case 5: {
        const cut = rng.int(b.length + 1);
        b = Uint8Array.from([...b.subarray(0, cut), ...b.subarray(cut + 1 + rng.int(4))]);
        break;
      }
    }
  }
  return b;
}

describe(`NAT codec fuzz (seed ${SEED_TEXT})`, () => {
  const kinds: Kind[] = ['request', 'response', 'punch'];

  test(`${ROUND_TRIP_CASES} random valid packets round-trip exactly`, () => {
    const rng = new Rng(SEED);
    for (let i = 0; i < ROUND_TRIP_CASES; i++) {
      const kind = kinds[i % 3] as Kind;
      const key = rng.bytes(16 + rng.int(48));
      const value = randomValue(rng, kind);
      const bytes = encode(kind, value, key);
      assert.ok(bytes.length <= MAX_NAT_DATAGRAM_BYTES && bytes[0] === 0, `case ${i}`);
      const decoded = decode(kind, bytes, key);
      assert.equal(hex(encode(kind, decoded, key)), hex(bytes), `case ${i}: re-encoding differs`);
      if (kind !== 'response') assert.deepEqual(normalize(decoded), normalize(value), `case ${i}`);
    }
  });

  test(`${RANDOM_CASES} random datagrams: every rejection typed, nothing forged`, () => {
    const rng = new Rng(SEED ^ 0x1111_1111);
    const key = rng.bytes(32);
    let decoded = 0;
    for (let i = 0; i < RANDOM_CASES; i++) {
      const length = rng.next() < 0.05 ? MAX_NAT_DATAGRAM_BYTES + rng.int(1500) : rng.int(80);
      const b = rng.bytes(length);
      if (b.length > 0 && rng.next() < 0.8) b[0] = 0;
      if (b.length > 1 && rng.next() < 0.8) b[1] = 1;
      if (b.length > 2 && rng.next() < 0.8) b[2] = 1 + rng.int(3);
      if (b.length > 3 && rng.next() < 0.5) b[3] = rng.int(4);
      for (const kind of kinds) if (decodeTyped(kind, b, key, `random case ${i} as ${kind}`) !== undefined) decoded++;
    }
    assert.equal(decoded, 0, 'a random datagram passed the MAC');
  });

  test(`${MUTATION_CASES} mutated valid packets: typed rejection, or the unmodified packet`, () => {
    const rng = new Rng(SEED ^ 0x2222_2222);
    const codes = new Map<string, number>();
    for (let i = 0; i < MUTATION_CASES; i++) {
      const kind = kinds[i % 3] as Kind;
      const key = rng.bytes(32);
      const original = encode(kind, randomValue(rng, kind), key);
      const mutated = mutate(rng, original);
      try {
        decode(kind, mutated, key);
        assert.equal(hex(mutated), hex(original), `mutation case ${i}: altered ${kind} accepted`);
      } catch (error) {
        if (error instanceof assert.AssertionError) throw error;
        assert.ok(error instanceof NatError && NAT_CODES.has(error.code), `mutation case ${i}: untyped ${String(error)} for ${hex(mutated)}`);
        codes.set(error.code, (codes.get(error.code) ?? 0) + 1);
      }
    }
    // The mutations must reach the parser's branches, not only the MAC check.
    for (const code of [ErrorCode.NAT_BAD_MAC, ErrorCode.NAT_TRUNCATED, ErrorCode.NAT_BAD_FIELD, ErrorCode.NAT_NOT_RAW, ErrorCode.NAT_VERSION, ErrorCode.NAT_UNKNOWN_TYPE, ErrorCode.NAT_UNEXPECTED, ErrorCode.NAT_TOO_LARGE]) {
      assert.ok((codes.get(code) ?? 0) > 0, `no mutation produced ${code}: ${JSON.stringify([...codes])}`);
    }
  });

  test(`${SESSION_DATAGRAMS} hostile datagrams into a punch session: no throw, never established, always a deadline`, () => {
    const rng = new Rng(SEED ^ 0x3333_3333);
    const key = rng.bytes(32);
    const attemptId = rng.bytes(8);
    const session = new PunchSession({
      role: 'client',
      attemptId,
      punchKey: key,
      candidates: [{ endpoint: { address: '203.0.113.2', port: 4000 }, kind: 'public' }],
      intervalMs: 50,
      budgetMs: 10 * SESSION_DATAGRAMS,
    });
    let now = 1000;
    session.start(now);
    const from: Endpoint = { address: '203.0.113.2', port: 4000 };
    for (let i = 0; i < SESSION_DATAGRAMS; i++) {
      now += rng.int(3);
      // Valid-looking punches: wrong key, other attempt, our own role reflected, or mutated.
      const packet: PunchPacket = { attemptId: rng.next() < 0.5 ? attemptId : rng.bytes(8), role: rng.next() < 0.5 ? 'client' : 'agent', seq: 1 + rng.int(1000), ackSeq: 1 + rng.int(1000), done: false };
      let bytes = encodePunch(packet, rng.next() < 0.5 ? key : rng.bytes(32));
      if (hex(packet.attemptId) === hex(attemptId) && packet.role === 'agent') {
        // The one combination that would be genuine: always alter it (a mutation that changes nothing is redone).
        const original = hex(bytes);
        do bytes = mutate(rng, bytes);
        while (hex(bytes) === original);
      }
      const ticked = i % 7 === 0;
      const out = ticked ? session.tick(now) : session.receive(bytes, from, now);
      assert.equal(session.state, 'punching');
      assert.ok(out.deadlineMs !== undefined, `case ${i}: no deadline while punching`);
      if (ticked) assert.ok(out.deadlineMs > now, `case ${i}: a tick left a deadline that is not in the future`);
    }
    const { dropped, received } = session.stats;
    assert.equal(received, 0, 'no hostile datagram counts as a valid punch');
    for (const code of Object.keys(dropped)) assert.ok(NAT_CODES.has(code), code);
    for (const code of [ErrorCode.NAT_BAD_MAC, ErrorCode.NAT_UNEXPECTED]) assert.ok((dropped[code] ?? 0) > 0, `no drop counted as ${code}`);
  });
});
