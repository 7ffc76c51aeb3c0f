/**
 * Control-frame limits: every message type has a maximum size on each side of a session, checked before the
 * payload is parsed (with the nesting depth), so a peer cannot make the gateway JSON.parse a 1 MiB (or deeply
 * nested) payload per frame. The largest legitimate message of each type is built here at the schema's limits
 * and must fit; one byte over its type's limit is refused with NL_ERR_FRAME_TOO_LARGE.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, FrameError, type ProtocolError } from './errors.ts';
import {
  ANY_CONTROL_LIMITS,
  type ControlLimits,
  decodeFrame,
  encodeFrame,
  FrameDecoder,
  FrameType,
  GATEWAY_CONTROL_LIMITS,
  MAX_CONTROL_DEPTH,
  PEER_CONTROL_LIMITS,
} from './frame-codec.ts';
import { type ControlMessage, controlMessageSchema } from './messages.ts';
import { Mux } from './mux.ts';

const text = (n: number): string => 'a'.repeat(n);
const ipv6 = 'ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255';
const fingerprint = 'f'.repeat(64);

/** The largest message of each type the schema admits with ASCII text (arrays at their max length). */
const largest: { [K in ControlMessage['type']]: Extract<ControlMessage, { type: K }> } = {
  hello: {
    type: 'hello',
    version: '9999.9999',
    role: 'agent',
    software: text(1024),
    streamWindow: 64 * 1024 * 1024,
    agent: { instanceId: text(128), expose: Array.from({ length: 256 }, () => ({ name: text(63), port: 65535, host: text(253) })) },
  },
  reauth: { type: 'reauth', token: text(16_384), proof: text(4096) },
  nat_report: {
    type: 'nat_report',
    localEndpoints: Array.from({ length: 32 }, () => ({ address: ipv6, port: 65535 })),
    filtering: { changePort: { sent: 1000, received: 1000 }, changeAddress: { sent: 1000, received: 1000 } },
    certFingerprint: fingerprint,
  },
  nat_reprobe: { type: 'nat_reprobe' },
  direct_request: { type: 'direct_request', requestId: 2 ** 32, agent: text(253) },
  direct_state: { type: 'direct_state', pathId: text(64), state: 'failed', reason: text(64), via: text(32), elapsedMs: 600_000 },
  list_agents: { type: 'list_agents', requestId: Number.MAX_SAFE_INTEGER },
  hello_ok: {
    type: 'hello_ok',
    version: '9999.9999',
    sessionId: text(128),
    // Groups come from the token, which an HTTP header carries (16 KiB in Node by default).
    identity: { sub: text(1024), groups: Array.from({ length: 16 }, () => text(1000)), typ: 'client', expiresAt: Number.MAX_SAFE_INTEGER },
    streamWindow: 64 * 1024 * 1024,
    heartbeatIntervalMs: Number.MAX_SAFE_INTEGER,
  },
  error: { type: 'error', code: text(1024), message: text(1024) },
  agents: {
    type: 'agents',
    requestId: 1,
    // 500 agents with 10 ports each: a large fleet.
    agents: Array.from({ length: 500 }, (_, i) => ({
      name: `agent-${i}`,
      namespace: 'production',
      mode: 'auto' as const,
      instances: 3,
      ports: Array.from({ length: 10 }, (_, p) => ({ name: `port-${p}`, port: 8000 + p, host: '127.0.0.1' })),
    })),
  },
  goaway: { type: 'goaway', reason: text(1024), drainMs: Number.MAX_SAFE_INTEGER },
  reauth_ok: { type: 'reauth_ok', expiresAt: Number.MAX_SAFE_INTEGER },
  nat_probe_info: {
    type: 'nat_probe_info',
    key: 'A'.repeat(172),
    endpoints: Array.from({ length: 4 }, (_, index) => ({ index, address: ipv6, port: 65535 })),
  },
  nat_status: {
    type: 'nat_status',
    natType: 'endpoint-dependent-predictable',
    filtering: 'address-and-port-dependent',
    destinations: 4,
    portPreserving: false,
    delta: -65535,
    publicEndpoint: { address: ipv6, port: 65535 },
    reason: text(64),
  },
  direct_refused: { type: 'direct_refused', requestId: 2 ** 32, reason: 'PortRestrictedVsRandom', message: text(1024) },
  punch_plan: {
    type: 'punch_plan',
    pathId: text(64),
    requestId: 2 ** 32,
    peer: text(1024),
    role: 'client',
    quicRole: 'server',
    strategy: 'reach-stable',
    attemptId: 'A'.repeat(12),
    punchKey: 'A'.repeat(44),
    candidates: Array.from({ length: 16 }, () => ({ address: ipv6, port: 65535, kind: 'filter-opener' as const })),
    initialDelayMs: 60_000,
    intervalMs: 10_000,
    budgetMs: 60_000,
    leadMs: 60_000,
    peerFingerprint: fingerprint,
  },
  direct_policy: {
    type: 'direct_policy',
    pathId: text(64),
    allow: Array.from({ length: 256 }, () => ({ name: text(63), host: text(253), port: 65535 })),
    expiresAt: Number.MAX_SAFE_INTEGER,
  },
  direct_close: { type: 'direct_close', pathId: text(64), reason: text(1024) },
};

/** Who legitimately sends each type: the gateway's limits cover what peers send, the peers' what gateways send. */
const fromPeers = new Set<ControlMessage['type']>(['hello', 'reauth', 'nat_report', 'nat_reprobe', 'direct_request', 'direct_state', 'list_agents']);

/** A CONTROL frame whose payload is exactly `payload`. */
function controlFrame(payload: Buffer): Buffer {
  const out = Buffer.alloc(9 + payload.length);
  out[0] = FrameType.CONTROL;
  out.writeUInt32BE(payload.length, 5);
  payload.copy(out, 9);
  return out;
}

/** `message` encoded and padded with spaces (valid JSON) to exactly `size` bytes. */
function padded(message: ControlMessage, size: number): Buffer {
  const json = JSON.stringify(message);
  assert.ok(json.length <= size, `${message.type} is already ${json.length} bytes`);
  return Buffer.from(json + ' '.repeat(size - json.length));
}

function refusal(bytes: Buffer, limits: ControlLimits): FrameError {
  try {
    decodeFrame(bytes, undefined, limits);
  } catch (error) {
    assert.ok(error instanceof FrameError, String(error));
    return error;
  }
  assert.fail('the frame was accepted');
}

describe('control-frame limits', () => {
  test('the largest legitimate message of every type fits the limit of the side that receives it', () => {
    for (const [type, message] of Object.entries(largest) as [ControlMessage['type'], ControlMessage][]) {
      assert.ok(controlMessageSchema.safeParse(message).success, `${type}: the test message is valid`);
      const limits = fromPeers.has(type) ? GATEWAY_CONTROL_LIMITS : PEER_CONTROL_LIMITS;
      const size = Buffer.byteLength(JSON.stringify(message));
      assert.ok(size <= limits[type], `${type}: ${size} bytes > limit ${limits[type]}`);
      assert.deepEqual(decodeFrame(encodeFrame({ type: 'control', message }), undefined, limits), { type: 'control', message });
    }
  });

  test('table: at its limit a message decodes, one byte over it is NL_ERR_FRAME_TOO_LARGE', () => {
    for (const [name, limits] of [
      ['gateway', GATEWAY_CONTROL_LIMITS],
      ['peer', PEER_CONTROL_LIMITS],
      ['either', ANY_CONTROL_LIMITS],
    ] as const) {
      for (const message of Object.values(largest) as ControlMessage[]) {
        const limit = limits[message.type];
        if (Buffer.byteLength(JSON.stringify(message)) > limit) continue; // a foreign type: covered below
        assert.equal(decodeFrame(controlFrame(padded(message, limit)), undefined, limits).type, 'control', `${name} ${message.type} at ${limit}`);
        const error = refusal(controlFrame(padded(message, limit + 1)), limits);
        assert.equal(error.code, ErrorCode.FRAME_TOO_LARGE, `${name} ${message.type} at ${limit + 1}`);
        assert.equal(error.streamId, 0);
      }
    }
  });

  test('a gateway parses no large message of a type only gateways send', () => {
    // An `agents` list is legitimately large towards a client; from a client it is refused before parsing.
    const agents = Buffer.from(JSON.stringify(largest.agents));
    assert.ok(agents.length > 64 * 1024);
    assert.equal(refusal(controlFrame(agents), GATEWAY_CONTROL_LIMITS).code, ErrorCode.FRAME_TOO_LARGE);
    assert.equal(decodeFrame(controlFrame(agents), undefined, PEER_CONTROL_LIMITS).type, 'control');
    // Small ones still reach dispatch, which answers them as a protocol violation as before.
    assert.equal(decodeFrame(encodeFrame({ type: 'control', message: largest.reauth_ok }), undefined, GATEWAY_CONTROL_LIMITS).type, 'control');
  });

  test('anything larger than the largest limit of the side is refused before JSON.parse, whatever it claims to be', () => {
    const largestGateway = Math.max(...Object.values(GATEWAY_CONTROL_LIMITS));
    // Not even JSON: only a check before parsing can call this too large rather than unparseable.
    const junk = Buffer.alloc(largestGateway + 1, 0x7b);
    assert.equal(refusal(controlFrame(junk), GATEWAY_CONTROL_LIMITS).code, ErrorCode.FRAME_TOO_LARGE);
    const oneMiB = Buffer.alloc(1024 * 1024, 0x20);
    assert.equal(refusal(controlFrame(oneMiB), GATEWAY_CONTROL_LIMITS).code, ErrorCode.FRAME_TOO_LARGE);
  });

  test('nesting deeper than MAX_CONTROL_DEPTH is refused before parsing; brackets inside strings do not count', () => {
    const deep = (n: number): Buffer => Buffer.from(`{"type":"list_agents","requestId":${'['.repeat(n)}${']'.repeat(n)}}`);
    // depth = n + 1 (the object itself)
    assert.equal(refusal(controlFrame(deep(MAX_CONTROL_DEPTH)), GATEWAY_CONTROL_LIMITS).code, ErrorCode.FRAME_BAD_PAYLOAD);
    assert.match(refusal(controlFrame(deep(MAX_CONTROL_DEPTH)), GATEWAY_CONTROL_LIMITS).message, /nests deeper/);
    // At the limit it is parsed, and refused by the schema instead.
    assert.match(refusal(controlFrame(deep(MAX_CONTROL_DEPTH - 1)), GATEWAY_CONTROL_LIMITS).message, /is invalid/);
    const inString = encodeFrame({ type: 'control', message: { type: 'error', code: '[[[[[[[[[[{{{{{{{{{{', message: '\\"[[[[[[[[[[[[[[[[[[[' } });
    assert.equal(decodeFrame(inString, undefined, PEER_CONTROL_LIMITS).type, 'control');
    // The deepest legitimate message (the agent list) passes.
    assert.equal(decodeFrame(encodeFrame({ type: 'control', message: largest.agents }), undefined, PEER_CONTROL_LIMITS).type, 'control');
  });

  test('a deeply nested hello just under the size limit is refused by the scan, not parsed', () => {
    // JSON.parse of this took ~35 ms (a 1 MiB one 0.9 s); the scan stops at depth 9.
    const n = 60_000;
    const error = refusal(controlFrame(Buffer.from(`{"type":"hello","software":${'['.repeat(n)}${']'.repeat(n)}}`)), GATEWAY_CONTROL_LIMITS);
    assert.equal(error.code, ErrorCode.FRAME_BAD_PAYLOAD);
    assert.match(error.message, /nests deeper/);
    assert.equal(error.cause, undefined);
  });

  test('fuzz: random control payloads under every table decode or fail with a FrameError, never anything else', () => {
    let seed = 0x1234_5678;
    const next = (): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return seed >>> 0;
    };
    const alphabet = Buffer.from('{}[]":,\\ a1.-truefalsnl');
    const messages = Object.values(largest) as ControlMessage[];
    for (let i = 0; i < 3000; i++) {
      const base = Buffer.from(JSON.stringify(messages[next() % messages.length]));
      const payload = Buffer.from(base.subarray(0, Math.min(base.length, 1 + (next() % 4096))));
      for (let m = next() % 8; m > 0; m--) payload[next() % payload.length] = alphabet[next() % alphabet.length] as number;
      for (const limits of [GATEWAY_CONTROL_LIMITS, PEER_CONTROL_LIMITS]) {
        try {
          decodeFrame(controlFrame(payload), undefined, limits);
        } catch (error) {
          assert.ok(error instanceof FrameError, `${String(error)} for ${payload.toString().slice(0, 80)}`);
        }
      }
    }
  });

  test('FrameDecoder applies the limits it is given', () => {
    const decoder = new FrameDecoder(undefined, GATEWAY_CONTROL_LIMITS);
    assert.throws(() => decoder.push(controlFrame(Buffer.from(JSON.stringify(largest.agents)))), (e: FrameError) => e.code === ErrorCode.FRAME_TOO_LARGE);
  });

  test('a Mux uses its side’s table: an oversized control message is a session error, the gateway’s protocol-violation path', () => {
    const errors: (FrameError | ProtocolError)[] = [];
    const controls: ControlMessage[] = [];
    const gateway = new Mux({ role: 'acceptor', send: () => {}, handlers: { onSessionError: (e) => errors.push(e), onControl: (m) => controls.push(m) } });
    const peer = new Mux({ role: 'initiator', send: () => {}, handlers: { onSessionError: (e) => errors.push(e), onControl: (m) => controls.push(m) } });
    assert.equal(gateway.controlLimits, GATEWAY_CONTROL_LIMITS);
    assert.equal(peer.controlLimits, PEER_CONTROL_LIMITS);
    const list = controlFrame(padded({ type: 'list_agents', requestId: 1 }, GATEWAY_CONTROL_LIMITS.list_agents + 1));
    gateway.receive(list);
    assert.deepEqual(
      errors.map((e) => e.code),
      [ErrorCode.FRAME_TOO_LARGE],
    );
    assert.equal(controls.length, 0);
    peer.receive(encodeFrame({ type: 'control', message: largest.direct_policy }));
    assert.equal(controls.length, 1);
  });
});
