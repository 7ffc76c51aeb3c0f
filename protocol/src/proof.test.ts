import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, sign as cryptoSign } from 'node:crypto';
import { describe, it } from 'node:test';
import { ErrorCode, TokenError } from './errors.ts';
import {
  createProof,
  DEFAULT_PROOF_MAX_AGE_SECONDS,
  generateProofKey,
  isEd25519X,
  jwkThumbprint,
  MAX_PROOF_LENGTH,
  normalizeProofUrl,
  ProofReplayCache,
  proofKeyX,
  REAUTH_PROOF_METHOD,
  tokenHash,
  verifyProof,
} from './proof.ts';

const NOW_MS = 1_700_000_000_000;
const NOW_S = NOW_MS / 1000;
const TOKEN = 'eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2ln';
const HTU = 'wss://gw.example.com/v1/client';

const key = generateProofKey();
const other = generateProofKey();

function b64url(value: unknown): string {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

/** A proof signed by `privateKey` over an arbitrary header and payload (what a hostile client can send). */
function craft(header: unknown, payload: unknown, privateKey = key.privateKey): string {
  const input = `${b64url(header)}.${b64url(payload)}`;
  return `${input}.${cryptoSign(null, Buffer.from(input), privateKey).toString('base64url')}`;
}

function goodHeader(x = key.x): Record<string, unknown> {
  return { typ: 'dpop+jwt', alg: 'EdDSA', jwk: { kty: 'OKP', crv: 'Ed25519', x } };
}

function goodPayload(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return { jti: 'p-1', iat: NOW_S, htm: 'GET', htu: HTU, ath: tokenHash(TOKEN), ...overrides };
}

function opts(overrides: Partial<Parameters<typeof verifyProof>[1]> = {}): Parameters<typeof verifyProof>[1] {
  return { token: TOKEN, htm: 'GET', htu: HTU, expectedJkt: jwkThumbprint(key.x), nowMs: NOW_MS, replay: new ProofReplayCache(), ...overrides };
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<TokenError> {
  const err = await promise.then(
    () => assert.fail(`expected ${code}, got success`),
    (e: unknown) => e,
  );
  assert.ok(err instanceof TokenError, `expected TokenError, got ${String(err)}`);
  assert.equal(err.code, code);
  return err;
}

describe('jwkThumbprint', () => {
  it('matches RFC 8037 appendix A.3 (the Ed25519 example key)', () => {
    assert.equal(jwkThumbprint('11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo'), 'kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k');
  });

  it('hashes exactly {"crv","kty","x"} in that order, without whitespace', () => {
    const expected = createHash('sha256').update(`{"crv":"Ed25519","kty":"OKP","x":"${key.x}"}`).digest('base64url');
    assert.equal(jwkThumbprint(key.x), expected);
    assert.equal(jwkThumbprint(key.x).length, 43);
  });

  it('refuses an x that is not 32 bytes of canonical base64url', () => {
    for (const bad of ['', 'abc', `${key.x}A`, key.x.slice(0, 42), `${key.x.slice(0, 42)}B`, `${key.x.slice(0, 42)}=`, Buffer.alloc(32).toString('base64')]) {
      assert.throws(() => jwkThumbprint(bad), TypeError, bad);
    }
  });
});

describe('generateProofKey / proofKeyX', () => {
  it('gives an Ed25519 pair whose x is the raw public key', () => {
    assert.equal(key.privateKey.asymmetricKeyType, 'ed25519');
    assert.ok(isEd25519X(key.x));
    assert.equal(proofKeyX(key.privateKey), key.x);
    assert.equal(proofKeyX(key.publicKey), key.x);
    const raw = key.publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
    assert.equal(raw.toString('base64url'), key.x);
    assert.notEqual(key.x, other.x);
  });

  it('refuses other key types', () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    assert.throws(() => proofKeyX(privateKey), TypeError);
  });
});

describe('normalizeProofUrl', () => {
  it('keeps scheme, host and path; drops query, fragment and default ports; lower-cases the host', () => {
    assert.equal(normalizeProofUrl('wss://GW.Example.com:443/v1/client?x=1#f'), HTU);
    assert.equal(normalizeProofUrl('ws://127.0.0.1:8443/v1/client'), 'ws://127.0.0.1:8443/v1/client');
    assert.equal(normalizeProofUrl('not a url'), undefined);
  });
});

describe('createProof', () => {
  it('produces the RFC 9449 header and payload', async () => {
    const proof = await createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: `${HTU}?q=1`, nowMs: NOW_MS + 999, jti: 'j' });
    const [h = '', p = ''] = proof.split('.');
    assert.deepEqual(JSON.parse(Buffer.from(h, 'base64url').toString()), goodHeader());
    assert.deepEqual(JSON.parse(Buffer.from(p, 'base64url').toString()), { jti: 'j', iat: NOW_S, htm: 'GET', htu: HTU, ath: tokenHash(TOKEN) });
    assert.ok(proof.length < 1024);
  });

  it('never puts the private key in the header', async () => {
    const proof = await createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: HTU });
    const d = key.privateKey.export({ format: 'jwk' }).d as string;
    assert.ok(!Buffer.from(proof.split('.')[0] ?? '', 'base64url').toString().includes(d));
  });

  it('gives every proof its own jti', async () => {
    const a = await createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: HTU });
    const b = await createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: HTU });
    assert.notEqual(a, b);
  });

  it('refuses a public key, another key type, or a relative htu', async () => {
    await assert.rejects(createProof(key.publicKey, { token: TOKEN, htm: 'GET', htu: HTU }), TypeError);
    await assert.rejects(createProof(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, { token: TOKEN, htm: 'GET', htu: HTU }), TypeError);
    await assert.rejects(createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: '/v1/client' }), TypeError);
  });
});

describe('verifyProof', () => {
  it('accepts a fresh proof and returns its id, time and key thumbprint', async () => {
    const proof = await createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: HTU, nowMs: NOW_MS, jti: 'ok-1' });
    assert.deepEqual(await verifyProof(proof, opts()), { jti: 'ok-1', iat: NOW_S, jkt: jwkThumbprint(key.x) });
  });

  it('compares htu after normalisation (the client may dial with a default port or a query)', async () => {
    const proof = await createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: 'wss://gw.example.com:443/v1/client?token=no', nowMs: NOW_MS });
    await verifyProof(proof, opts({ htu: 'wss://GW.example.com/v1/client' }));
  });

  it('refuses an absent proof as MISSING', async () => {
    await expectCode(verifyProof(undefined, opts()), ErrorCode.TOKEN_PROOF_MISSING);
    await expectCode(verifyProof('', opts()), ErrorCode.TOKEN_PROOF_MISSING);
  });

  it('refuses a proof signed by another key than the token is bound to', async () => {
    const proof = await createProof(other.privateKey, { token: TOKEN, htm: 'GET', htu: HTU, nowMs: NOW_MS });
    await expectCode(verifyProof(proof, opts()), ErrorCode.TOKEN_PROOF_KEY_MISMATCH);
  });

  it('refuses a proof whose embedded jwk is not the key that signed it', async () => {
    // Header names the bound key, signature is by another: a copied header does not make a proof.
    await expectCode(verifyProof(craft(goodHeader(key.x), goodPayload(), other.privateKey), opts()), ErrorCode.TOKEN_PROOF_INVALID);
  });

  it('refuses a proof for another token, method or URL', async () => {
    const make = (o: Record<string, unknown>) => createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: HTU, nowMs: NOW_MS, ...o });
    await expectCode(verifyProof(await make({ token: `${TOKEN}x` }), opts()), ErrorCode.TOKEN_PROOF_INVALID);
    await expectCode(verifyProof(await make({ htm: REAUTH_PROOF_METHOD }), opts()), ErrorCode.TOKEN_PROOF_INVALID);
    await expectCode(verifyProof(await make({ htu: 'wss://other.example.com/v1/client' }), opts()), ErrorCode.TOKEN_PROOF_INVALID);
    await expectCode(verifyProof(await make({ htu: 'ws://gw.example.com/v1/client' }), opts()), ErrorCode.TOKEN_PROOF_INVALID);
    await expectCode(verifyProof(await make({ htu: 'wss://gw.example.com/v1/agent' }), opts()), ErrorCode.TOKEN_PROOF_INVALID);
  });

  it('refuses an iat outside the window, either way, as STALE', async () => {
    for (const skew of [DEFAULT_PROOF_MAX_AGE_SECONDS + 1, -(DEFAULT_PROOF_MAX_AGE_SECONDS + 1)]) {
      const proof = await createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: HTU, nowMs: NOW_MS + skew * 1000 });
      await expectCode(verifyProof(proof, opts()), ErrorCode.TOKEN_PROOF_STALE);
    }
    const edge = await createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: HTU, nowMs: NOW_MS - 10_000 });
    await expectCode(verifyProof(edge, opts({ maxAgeSeconds: 5 })), ErrorCode.TOKEN_PROOF_STALE);
    await verifyProof(edge, opts({ maxAgeSeconds: 10 }));
  });

  it('accepts a proof once: the same jti again is REPLAYED', async () => {
    const replay = new ProofReplayCache();
    const proof = await createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: HTU, nowMs: NOW_MS });
    await verifyProof(proof, opts({ replay }));
    await expectCode(verifyProof(proof, opts({ replay, nowMs: NOW_MS + 1000 })), ErrorCode.TOKEN_PROOF_REPLAYED);
  });

  it('does not record a proof that failed another check (a bad proof cannot burn a jti)', async () => {
    const replay = new ProofReplayCache();
    const wrongUrl = await createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: 'wss://x.example/v1/client', nowMs: NOW_MS, jti: 'same' });
    await expectCode(verifyProof(wrongUrl, opts({ replay })), ErrorCode.TOKEN_PROOF_INVALID);
    assert.equal(replay.size, 0);
    const good = await createProof(key.privateKey, { token: TOKEN, htm: 'GET', htu: HTU, nowMs: NOW_MS, jti: 'same' });
    await verifyProof(good, opts({ replay }));
    assert.equal(replay.size, 1);
  });

  describe('hostile or malformed proofs are INVALID, before any crypto where possible', () => {
    const cases: Array<[string, () => string]> = [
      ['not a JWS', () => 'garbage'],
      ['four parts', () => `${craft(goodHeader(), goodPayload())}.x`],
      ['an empty signature', () => `${b64url(goodHeader())}.${b64url(goodPayload())}.`],
      ['a header that is not JSON', () => `${b64url('{nope')}.${b64url(goodPayload())}.c2ln`],
      ['a header that is an array', () => craft([goodHeader()], goodPayload())],
      ['alg none', () => `${b64url({ ...goodHeader(), alg: 'none' })}.${b64url(goodPayload())}.c2ln`],
      ['alg HS256', () => `${b64url({ ...goodHeader(), alg: 'HS256' })}.${b64url(goodPayload())}.c2ln`],
      ['typ JWT', () => craft({ ...goodHeader(), typ: 'JWT' }, goodPayload())],
      ['no jwk', () => craft({ typ: 'dpop+jwt', alg: 'EdDSA' }, goodPayload())],
      ['a jwk with the private key d', () => craft({ ...goodHeader(), jwk: key.privateKey.export({ format: 'jwk' }) }, goodPayload())],
      ['a jwk on curve X25519', () => craft({ ...goodHeader(), jwk: { kty: 'OKP', crv: 'X25519', x: key.x } }, goodPayload())],
      ['a jwk of type EC', () => craft({ ...goodHeader(), jwk: { kty: 'EC', crv: 'Ed25519', x: key.x } }, goodPayload())],
      ['a jwk with a short x', () => craft({ ...goodHeader(), jwk: { kty: 'OKP', crv: 'Ed25519', x: key.x.slice(1) } }, goodPayload())],
      ['a jwk with extra members', () => craft({ ...goodHeader(), jwk: { kty: 'OKP', crv: 'Ed25519', x: key.x, kid: 'k' } }, goodPayload())],
      ['a crit header', () => craft({ ...goodHeader(), crit: ['b64'], b64: false }, goodPayload())],
      ['a jku header', () => craft({ ...goodHeader(), jku: 'https://attacker.example/keys' }, goodPayload())],
      ['a huge header', () => craft({ ...goodHeader(), pad: 'a'.repeat(MAX_PROOF_LENGTH) }, goodPayload())],
      ['a payload that is not an object', () => craft(goodHeader(), 'just a string')],
      ['a missing jti', () => craft(goodHeader(), goodPayload({ jti: undefined }))],
      ['a jti too long for the replay cache', () => craft(goodHeader(), goodPayload({ jti: 'j'.repeat(200) }))],
      ['an iat that is a string', () => craft(goodHeader(), goodPayload({ iat: String(NOW_S) }))],
      ['no ath', () => craft(goodHeader(), goodPayload({ ath: undefined }))],
      ['an htu that is not a URL', () => craft(goodHeader(), goodPayload({ htu: 'gw.example.com/v1/client' }))],
    ];
    for (const [name, build] of cases) {
      it(name, async () => {
        const replay = new ProofReplayCache();
        await expectCode(verifyProof(build(), opts({ replay })), ErrorCode.TOKEN_PROOF_INVALID);
        assert.equal(replay.size, 0);
      });
    }

    it('a hand-crafted but correct proof passes (the cases above fail for their one defect)', async () => {
      await verifyProof(craft(goodHeader(), goodPayload()), opts());
    });
  });
});

describe('ProofReplayCache', () => {
  it('forgets an entry once its proof would be stale anyway', () => {
    const cache = new ProofReplayCache(10);
    assert.equal(cache.checkAndRemember('a', NOW_S, NOW_MS + 60_000, NOW_MS), true);
    assert.equal(cache.checkAndRemember('a', NOW_S, NOW_MS + 60_000, NOW_MS + 59_999), false);
    assert.equal(cache.checkAndRemember('b', NOW_S + 60, NOW_MS + 120_000, NOW_MS + 60_000), true);
    assert.equal(cache.size, 1, 'a was dropped at its expiry');
  });

  it('stays within maxEntries under a flood, and refuses what it can no longer rule out', () => {
    const cache = new ProofReplayCache(100);
    // 10,000 distinct proofs within the same second, all still inside the window.
    for (let i = 0; i < 10_000; i++) cache.checkAndRemember(`flood-${i}`, NOW_S - 5, NOW_MS + 55_000, NOW_MS);
    assert.ok(cache.size <= 100);
    // An early flood entry was evicted: its replay must still be refused (its iat is at the floor).
    assert.equal(cache.checkAndRemember('flood-0', NOW_S - 5, NOW_MS + 55_000, NOW_MS), false);
    // A genuine proof made after the flood's second is accepted.
    assert.equal(cache.checkAndRemember('fresh', NOW_S, NOW_MS + 60_000, NOW_MS), true);
    assert.ok(cache.size <= 100);
  });

  it('rejects a bad capacity', () => {
    assert.throws(() => new ProofReplayCache(0), RangeError);
    assert.throws(() => new ProofReplayCache(1.5), RangeError);
  });
});
