import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { deriveLoginStampKey, loginStamp, verifyLoginStamp } from './login-stamp.ts';

const FIELDS = { namespace: 'narrowlink', publicKey: 'x', ttlSeconds: 600, username: 'alice', uid: undefined, groups: ['devs'] };

describe('login stamp', () => {
  it('the key is a deterministic 32-byte function of the signing key', () => {
    assert.equal(deriveLoginStampKey('pem-a').length, 32);
    assert.deepEqual(deriveLoginStampKey('pem-a\n'), deriveLoginStampKey('pem-a'));
    assert.notDeepEqual(deriveLoginStampKey('pem-a'), deriveLoginStampKey('pem-b'));
  });

  it('verifies its own stamp and nothing else', () => {
    const key = deriveLoginStampKey('pem-a');
    const stamp = loginStamp(key, FIELDS);
    assert.match(stamp, /^[A-Za-z0-9_-]{43}$/);
    assert.ok(verifyLoginStamp(key, FIELDS, stamp));
    assert.ok(!verifyLoginStamp(deriveLoginStampKey('pem-b'), FIELDS, stamp));
    for (const changed of [{ namespace: 'other' }, { publicKey: 'y' }, { ttlSeconds: 601 }, { ttlSeconds: undefined }, { username: 'admin' }, { uid: '' }, { groups: ['devs', 'ops'] }, { groups: [] }]) {
      assert.ok(!verifyLoginStamp(key, { ...FIELDS, ...changed }, stamp), JSON.stringify(changed));
    }
    for (const bad of [undefined, 7, '', `${stamp}A`, stamp.slice(1)]) assert.ok(!verifyLoginStamp(key, FIELDS, bad));
  });

  it('field boundaries are unambiguous (no concatenation collisions)', () => {
    const key = deriveLoginStampKey('pem-a');
    assert.notEqual(loginStamp(key, { ...FIELDS, username: 'al', groups: ['icedevs'] }), loginStamp(key, { ...FIELDS, username: 'alice', groups: ['devs'] }));
  });
});
