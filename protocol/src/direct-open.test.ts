import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { directOpenReader, directOpenReplyReader, encodeDirectOpen, encodeDirectOpenReply, MAX_DIRECT_HEADER_BYTES } from './direct-open.ts';
import { ErrorCode, type ProtocolError } from './errors.ts';

const hex = (b: Buffer): string => b.toString('hex');
const ofHex = (h: string): Buffer => Buffer.from(h.replaceAll(' ', ''), 'hex');
const coded = (code: string) => (error: unknown) => (error as ProtocolError).code === code;

describe('direct stream open header: encoding (golden vectors)', () => {
  test('{port: 5432}', () => {
    // 000d = 13 bytes of JSON: {"port":5432}
    assert.equal(hex(encodeDirectOpen({ port: 5432 })), `000d${hex(Buffer.from('{"port":5432}'))}`);
  });
  test('{port: "http", host: "db"}', () => {
    const json = '{"port":"http","host":"db"}';
    assert.equal(hex(encodeDirectOpen({ port: 'http', host: 'db' })), `${json.length.toString(16).padStart(4, '0')}${hex(Buffer.from(json))}`);
  });
  test('replies', () => {
    assert.equal(hex(encodeDirectOpenReply({ ok: true })), `000b${hex(Buffer.from('{"ok":true}'))}`);
    const json = '{"code":"DENIED","message":"no"}';
    assert.equal(hex(encodeDirectOpenReply({ code: 'DENIED', message: 'no' })), `0020${hex(Buffer.from(json))}`);
  });
  test('refuses what the schema refuses and headers over the size limit', () => {
    assert.throws(() => encodeDirectOpen({ port: 0 }));
    assert.throws(() => encodeDirectOpen({ port: 70_000 }));
    assert.throws(() => encodeDirectOpen({ port: 'x'.repeat(64) }));
    assert.throws(() => encodeDirectOpenReply({ code: 'DENIED', message: 'm'.repeat(1025) }));
    // host is capped at 253 by the schema, so the size limit is reached through a long message instead.
    assert.throws(() => encodeDirectOpenReply({ code: 'DIAL_FAILED', message: 'm'.repeat(MAX_DIRECT_HEADER_BYTES - 20) }), coded(ErrorCode.FRAME_TOO_LARGE));
  });
});

describe('direct stream open header: reading', () => {
  test('one chunk: the value and the payload that followed', () => {
    const reader = directOpenReader();
    const out = reader.push(Buffer.concat([encodeDirectOpen({ port: 22, host: '127.0.0.1' }), Buffer.from('SSH-2.0')]));
    assert.deepEqual(out?.value, { port: 22, host: '127.0.0.1' });
    assert.equal(out?.rest.toString(), 'SSH-2.0');
  });

  test('split at every byte boundary, including inside the length prefix', () => {
    const header = encodeDirectOpen({ port: 'metrics' });
    const wire = Buffer.concat([header, Buffer.from([1, 2, 3])]);
    for (let cut = 1; cut < wire.length; cut++) {
      const reader = directOpenReader();
      const first = reader.push(wire.subarray(0, cut));
      if (cut < header.length) {
        assert.equal(first, undefined, `cut at ${cut}`);
        const out = reader.push(wire.subarray(cut));
        assert.deepEqual(out?.value, { port: 'metrics' }, `cut at ${cut}`);
        assert.deepEqual([...(out?.rest ?? [])], [1, 2, 3], `cut at ${cut}`);
      } else {
        assert.deepEqual(first?.value, { port: 'metrics' }, `cut at ${cut}`);
        assert.deepEqual([...(first?.rest ?? [])], [1, 2, 3].slice(0, cut - header.length), `cut at ${cut}`);
      }
    }
  });

  test('one byte at a time', () => {
    const wire = encodeDirectOpenReply({ ok: true });
    const reader = directOpenReplyReader();
    for (let i = 0; i < wire.length - 1; i++) assert.equal(reader.push(wire.subarray(i, i + 1)), undefined);
    const out = reader.push(wire.subarray(wire.length - 1));
    assert.deepEqual(out?.value, { ok: true });
    assert.equal(out?.rest.length, 0);
  });

  const bad: Array<[string, Buffer, string]> = [
    ['a length over the limit, refused before the body arrives', ofHex('0401'), ErrorCode.FRAME_TOO_LARGE],
    ['the largest length', ofHex('ffff'), ErrorCode.FRAME_TOO_LARGE],
    ['not JSON', Buffer.concat([ofHex('0003'), Buffer.from('{{{')]), ErrorCode.FRAME_BAD_PAYLOAD],
    ['JSON of the wrong shape', Buffer.concat([ofHex('000a'), Buffer.from('{"port":0}')]), ErrorCode.FRAME_BAD_PAYLOAD],
    ['an unknown field', Buffer.concat([ofHex('0015'), Buffer.from('{"port":1,"evil":true}').subarray(0, 0x15)]), ErrorCode.FRAME_BAD_PAYLOAD],
    ['an empty header', ofHex('0000'), ErrorCode.FRAME_BAD_PAYLOAD],
  ];
  for (const [name, wire, code] of bad) {
    test(`a typed error for ${name}`, () => assert.throws(() => directOpenReader().push(wire), coded(code)));
  }

  test('a reply with a code that is not a stream code is refused', () => {
    const json = Buffer.from('{"code":"NOPE","message":"x"}');
    const wire = Buffer.concat([Buffer.from([0, json.length]), json]);
    assert.throws(() => directOpenReplyReader().push(wire), coded(ErrorCode.FRAME_BAD_PAYLOAD));
  });

  test('a reader reads one header only', () => {
    const reader = directOpenReader();
    assert.ok(reader.push(encodeDirectOpen({ port: 1 })));
    assert.throws(() => reader.push(encodeDirectOpen({ port: 1 })), coded(ErrorCode.PROTOCOL_UNEXPECTED));
  });
});
