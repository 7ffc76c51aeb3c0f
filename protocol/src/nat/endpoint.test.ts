import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, NatError } from '../errors.ts';
import { addressToBytes, bytesToAddress, endpoint, formatEndpoint, normalizeAddress, sameEndpoint } from './endpoint.ts';
import { ReplayWindow } from './replay-window.ts';

describe('addresses', () => {
  const canonical: [string, string, string][] = [
    ['198.51.100.2', '198.51.100.2', 'c6336402'],
    ['0.0.0.0', '0.0.0.0', '00000000'],
    ['2001:db8::1', '2001:db8::1', '20010db8000000000000000000000001'],
    ['2001:DB8:0:0:0:0:0:1', '2001:db8::1', '20010db8000000000000000000000001'],
    ['::', '::', '00000000000000000000000000000000'],
    ['::1', '::1', '00000000000000000000000000000001'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1', '20010db8000000000001000000000001'],
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1', '20010000000000010000000000000001'],
    ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2:3:4:5:6', '20010db8000100020003000400050006'],
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1', '20010db8000000010001000100010001'],
    ['fe80::', 'fe80::', 'fe800000000000000000000000000000'],
    ['64:ff9b::192.0.2.33', '64:ff9b::c000:221', '0064ff9b0000000000000000c0000221'],
  ];
  for (const [input, text, hex] of canonical) {
    test(`${input} → ${text}`, () => {
      assert.equal(normalizeAddress(input), text);
      const { bytes } = addressToBytes(input);
      assert.equal(Buffer.from(bytes).toString('hex'), hex);
      assert.equal(bytesToAddress(bytes.length === 4 ? 4 : 6, bytes), text);
    });
  }

  test('IPv4-mapped IPv6 becomes IPv4 (dual-stack sockets report it for IPv4 peers)', () => {
    assert.equal(normalizeAddress('::ffff:192.0.2.1'), '192.0.2.1');
    assert.equal(normalizeAddress('::FFFF:c000:0201'), '192.0.2.1');
    assert.deepEqual(addressToBytes('::ffff:192.0.2.1'), { family: 4, bytes: Uint8Array.from([192, 0, 2, 1]) });
  });

  test('rejects what is not an address, and zone ids', () => {
    for (const bad of ['', 'example.com', '1.2.3', '256.1.1.1', '1:2:3', 'fe80::1%eth0', ' 1.2.3.4', '::ffff:1.2.3.4.5']) {
      assert.throws(() => normalizeAddress(bad), (e: unknown) => e instanceof NatError && e.code === ErrorCode.NAT_INVALID_INPUT, bad);
    }
  });

  test('endpoints: validated ports, canonical text, bracketed IPv6', () => {
    assert.deepEqual(endpoint('::ffff:10.0.0.1', 443), { address: '10.0.0.1', port: 443 });
    assert.equal(formatEndpoint(endpoint('2001:db8::0:1', 4000)), '[2001:db8::1]:4000');
    assert.equal(formatEndpoint(endpoint('192.0.2.1', 65535)), '192.0.2.1:65535');
    assert.ok(sameEndpoint(endpoint('2001:db8::1', 1), endpoint('2001:DB8:0::1', 1)));
    for (const port of [0, 65_536, 1.5, -1, Number.NaN]) {
      assert.throws(() => endpoint('192.0.2.1', port), (e: unknown) => e instanceof NatError && e.code === ErrorCode.NAT_INVALID_INPUT);
    }
  });
});

describe('ReplayWindow', () => {
  test('accepts each sequence once, in any order within the window', () => {
    const w = new ReplayWindow(4);
    assert.ok(w.accept(10));
    assert.ok(!w.accept(10));
    assert.ok(w.accept(8));
    assert.ok(w.accept(7));
    assert.ok(!w.accept(8));
    assert.ok(!w.accept(6), '10 - 4 = 6 is outside the window');
    assert.ok(w.accept(11));
    assert.ok(!w.accept(7), 'now outside');
    assert.ok(w.accept(9));
    assert.ok(w.check(12) && !w.check(11));
  });

  test('a large jump forgets the old sequences without accepting them again', () => {
    const w = new ReplayWindow(128);
    for (let s = 0; s < 1000; s++) assert.ok(w.accept(s));
    assert.ok(w.accept(100_000));
    for (const s of [0, 999, 100_000 - 128]) assert.ok(!w.accept(s));
    assert.ok(w.accept(100_000 - 127));
  });
});
