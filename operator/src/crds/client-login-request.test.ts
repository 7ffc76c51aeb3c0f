import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { clientLoginRequestCrd, ED25519_X_PATTERN, loginRequestResource } from './client-login-request.ts';
import { API_VERSION } from './common.ts';

const X = new RegExp(ED25519_X_PATTERN);

function freshX(): string {
  const jwk = generateKeyPairSync('ed25519').publicKey.export({ format: 'jwk' });
  return jwk.x as string;
}

describe('ClientLoginRequest CRD', () => {
  it('accepts the JWK x of real Ed25519 keys', () => {
    for (let i = 0; i < 200; i++) assert.match(freshX(), X);
  });

  it('refuses padding, standard base64, wrong lengths and non-canonical last characters', () => {
    const x = freshX();
    for (const bad of [`${x}=`, x.slice(0, 42), `${x}A`, `${x.slice(0, 42)}+`, `${x.slice(0, 41)}/A`, `${x.slice(0, 42)}B`, '']) {
      assert.doesNotMatch(bad, X, bad);
    }
  });

  it('has the names, short name and resource path of the contract', () => {
    assert.equal(clientLoginRequestCrd.metadata.name, 'clientloginrequests.narrowlink.io');
    assert.deepEqual(clientLoginRequestCrd.spec.names.shortNames, ['nllogin']);
    assert.equal(`${loginRequestResource.group}/${loginRequestResource.version}`, API_VERSION);
    const spec = clientLoginRequestCrd.spec.versions[0]?.schema.openAPIV3Schema.properties?.spec;
    assert.deepEqual(spec?.required, ['publicKey']);
    assert.deepEqual(Object.keys(spec?.properties ?? {}), ['publicKey', 'ttlSeconds', 'username', 'uid', 'groups']);
    const status = clientLoginRequestCrd.spec.versions[0]?.schema.openAPIV3Schema.properties?.status;
    assert.deepEqual(Object.keys(status?.properties ?? {}), ['token', 'expiresAt', 'conditions', 'observedGeneration']);
  });
});
