import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, type ProtocolError } from './errors.ts';
import { checkVersion, clientOpenSchema, controlMessageSchema, DIRECT_PATH_MINOR, helloSchema, NAT_PROBING_MINOR, PROTOCOL_VERSION, peerSupportsMinor, resetSchema } from './messages.ts';

describe('protocol versions', () => {
  test('our own version is one we speak and understands every minor feature', () => {
    assert.doesNotThrow(() => checkVersion(PROTOCOL_VERSION));
    assert.equal(peerSupportsMinor(PROTOCOL_VERSION, NAT_PROBING_MINOR), true);
    assert.equal(peerSupportsMinor(PROTOCOL_VERSION, DIRECT_PATH_MINOR), true);
  });

  const majors: Array<[string, boolean]> = [
    ['1.0', true],
    ['1.9999', true],
    ['2.0', false],
    ['0.9', false],
    ['garbage', false],
  ];
  for (const [version, ok] of majors) {
    test(`checkVersion(${version}) ${ok ? 'accepts' : 'refuses with NL_ERR_PROTOCOL_VERSION'}`, () => {
      if (ok) assert.doesNotThrow(() => checkVersion(version));
      else assert.throws(() => checkVersion(version), (e: unknown) => (e as ProtocolError).code === ErrorCode.PROTOCOL_VERSION);
    });
  }

  const minors: Array<[string, number, boolean]> = [
    ['1.0', NAT_PROBING_MINOR, false],
    ['1.1', NAT_PROBING_MINOR, true],
    ['1.1', DIRECT_PATH_MINOR, false],
    ['1.2', DIRECT_PATH_MINOR, true],
    ['2.5', NAT_PROBING_MINOR, false],
    ['1', NAT_PROBING_MINOR, false],
  ];
  for (const [version, minor, ok] of minors) {
    test(`peerSupportsMinor(${version}, ${minor}) = ${ok}`, () => assert.equal(peerSupportsMinor(version, minor), ok));
  }
});

describe('control messages are strict', () => {
  const hello = { type: 'hello', version: '1.2', role: 'client', streamWindow: 4 * 1024 * 1024 };
  test('a minimal hello parses', () => assert.deepEqual(controlMessageSchema.parse(hello), hello));

  const refused: Array<[string, unknown]> = [
    ['an unknown type', { type: 'sudo' }],
    ['an unknown field', { ...hello, admin: true }],
    ['a window below 16 KiB', { ...hello, streamWindow: 1024 }],
    ['a window over 64 MiB', { ...hello, streamWindow: 65 * 1024 * 1024 }],
    ['a version that is not MAJOR.MINOR', { ...hello, version: '1.2.3' }],
    ['a role that is not agent or client', { ...hello, role: 'gateway' }],
    ['more than 256 exposed ports', { ...hello, role: 'agent', agent: { instanceId: 'i', expose: Array.from({ length: 257 }, (_, i) => ({ name: `p${i}`, port: 1000 + i })) } }],
    ['a reauth without a token', { type: 'reauth', token: '' }],
  ];
  for (const [name, message] of refused) {
    test(`refuses ${name}`, () => assert.equal(controlMessageSchema.safeParse(message).success, false));
  }
  test('the hello schema is the one the union dispatches to', () => assert.equal(helloSchema.safeParse({ ...hello, extra: 1 }).success, false));
});

describe('stream payloads', () => {
  const opens: Array<[unknown, boolean]> = [
    [{ agent: 'db', port: 5432 }, true],
    [{ agent: 'db', port: 'postgres', host: 'db.internal', mode: 'direct' }, true],
    [{ agent: '', port: 1 }, false],
    [{ agent: 'db', port: 0 }, false],
    [{ agent: 'db', port: 65536 }, false],
    [{ agent: 'db', port: 1, mode: 'tun' }, false],
    [{ agent: 'db', port: 1, host: 'h'.repeat(254) }, false],
  ];
  for (const [open, ok] of opens) {
    test(`OPEN ${JSON.stringify(open).slice(0, 60)} → ${ok ? 'valid' : 'refused'}`, () => assert.equal(clientOpenSchema.safeParse(open).success, ok));
  }
  test('a RESET carries a known stream code only', () => {
    assert.equal(resetSchema.safeParse({ code: 'DENIED', message: 'no rule' }).success, true);
    assert.equal(resetSchema.safeParse({ code: 'NL_ERR_STREAM_DENIED', message: 'no rule' }).success, false);
  });
});

describe('validation messages', () => {
  // The schemas are zod/mini, which sets no locale of its own; this file loads no classic zod, so these are the
  // messages a process that only parses the protocol (the agent sidecar) puts into its errors.
  test('are zod English messages, with the path of each issue', () => {
    const result = controlMessageSchema.safeParse({ type: 'goaway', reason: 'r'.repeat(1025), drainMs: 1.5, extra: true });
    assert.equal(result.success, false);
    assert.deepEqual(
      result.error?.issues.map((i) => [i.path.join('.'), i.message]),
      [
        ['reason', 'Too big: expected string to have <=1024 characters'],
        ['drainMs', 'Invalid input: expected int, received number'],
        ['', 'Unrecognized key: "extra"'],
      ],
    );
    assert.equal(clientOpenSchema.safeParse({ agent: 'db', port: 65536 }).error?.issues[0]?.message, 'Too big: expected number to be <=65535');
  });
});
