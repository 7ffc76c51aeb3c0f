import assert from 'node:assert/strict';
import { createHmac, generateKeyPairSync, sign as cryptoSign } from 'node:crypto';
import { before, describe, it } from 'node:test';
import { ConfigError, ErrorCode, TokenError } from './errors.ts';
import { generateProofKey, jwkThumbprint } from './proof.ts';
import { generateSigningKeyPair, signToken, tokenFingerprint, verifyToken } from './tokens.ts';

const NOW_MS = 1_700_000_000_000;
const NOW_S = NOW_MS / 1000;

let keyA: { privateKeyPem: string; publicKeyPem: string };
let keyB: { privateKeyPem: string; publicKeyPem: string };

before(async () => {
  keyA = await generateSigningKeyPair();
  keyB = await generateSigningKeyPair();
});

function b64url(value: unknown): string {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

/** Builds a correctly Ed25519-signed JWS over an arbitrary header and payload. */
function craftSigned(header: unknown, payload: unknown, privateKeyPem: string): string {
  const input = `${b64url(header)}.${b64url(payload)}`;
  const sig = cryptoSign(null, Buffer.from(input), privateKeyPem).toString('base64url');
  return `${input}.${sig}`;
}

function validPayload(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    typ: 'client',
    sub: 'alice',
    aud: 'narrowlink',
    groups: ['dev'],
    iat: NOW_S,
    exp: NOW_S + 3600,
    jti: 'id-1',
    ...overrides,
  };
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

function verifyOpts(overrides: Partial<Parameters<typeof verifyToken>[1]> = {}): Parameters<typeof verifyToken>[1] {
  return { publicKeysPem: [keyA.publicKeyPem], expectedType: 'client', nowMs: NOW_MS, ...overrides };
}

describe('generateSigningKeyPair', () => {
  it('returns PKCS8 and SPKI PEM', () => {
    assert.match(keyA.privateKeyPem, /^-----BEGIN PRIVATE KEY-----\n/);
    assert.match(keyA.publicKeyPem, /^-----BEGIN PUBLIC KEY-----\n/);
    assert.notEqual(keyA.publicKeyPem, keyB.publicKeyPem);
  });
});

describe('signToken / verifyToken round trip', () => {
  it('returns the claims that were signed', async () => {
    const token = await signToken(keyA.privateKeyPem, {
      typ: 'client',
      sub: 'alice',
      groups: ['dev', 'ops'],
      ttlSeconds: 600,
      nowMs: NOW_MS,
      jti: 'fixed-jti',
    });
    const claims = await verifyToken(token, verifyOpts());
    assert.deepEqual(claims, {
      typ: 'client',
      sub: 'alice',
      aud: 'narrowlink',
      groups: ['dev', 'ops'],
      iat: NOW_S,
      exp: NOW_S + 600,
      jti: 'fixed-jti',
    });
  });

  it('uses header alg EdDSA / typ JWT and puts typ in the payload', async () => {
    const token = await signToken(keyA.privateKeyPem, { typ: 'agent', sub: 'default/db', ttlSeconds: 60, nowMs: NOW_MS });
    const [h, p] = token.split('.');
    assert.deepEqual(JSON.parse(Buffer.from(h ?? '', 'base64url').toString()), { alg: 'EdDSA', typ: 'JWT' });
    const payload = JSON.parse(Buffer.from(p ?? '', 'base64url').toString());
    assert.equal(payload.typ, 'agent');
    assert.deepEqual(payload.groups, []);
    assert.match(payload.jti, /^[0-9a-f-]{36}$/);
  });

  it('honours a custom audience on both sides', async () => {
    const token = await signToken(keyA.privateKeyPem, {
      typ: 'agent',
      sub: 'ns/a',
      audience: 'gw-eu',
      ttlSeconds: 60,
      nowMs: NOW_MS,
    });
    const claims = await verifyToken(token, verifyOpts({ expectedType: 'agent', audience: 'gw-eu' }));
    assert.equal(claims.aud, 'gw-eu');
  });

  it('defaults groups to [] when the claim is absent', async () => {
    const { groups: _g, ...payload } = validPayload();
    const claims = await verifyToken(craftSigned({ alg: 'EdDSA' }, payload, keyA.privateKeyPem), verifyOpts());
    assert.deepEqual(claims.groups, []);
  });

  it('accepts an aud array containing the audience', async () => {
    const token = craftSigned({ alg: 'EdDSA' }, validPayload({ aud: ['other', 'narrowlink'] }), keyA.privateKeyPem);
    assert.equal((await verifyToken(token, verifyOpts())).aud, 'narrowlink');
  });

  it('verifies with the second key in the list (key rotation)', async () => {
    const token = await signToken(keyB.privateKeyPem, { typ: 'client', sub: 'bob', ttlSeconds: 60, nowMs: NOW_MS });
    const claims = await verifyToken(token, verifyOpts({ publicKeysPem: [keyA.publicKeyPem, keyB.publicKeyPem] }));
    assert.equal(claims.sub, 'bob');
    // And repeatedly, through the key cache.
    await verifyToken(token, verifyOpts({ publicKeysPem: [keyA.publicKeyPem, keyB.publicKeyPem] }));
  });
});

describe('verifyToken time checks', () => {
  it('rejects an expired token', async () => {
    const token = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 60, nowMs: NOW_MS });
    await expectCode(verifyToken(token, verifyOpts({ nowMs: NOW_MS + 60_000 + 30_000 })), ErrorCode.TOKEN_EXPIRED);
  });

  it('accepts an expired token within clock tolerance, rejects it with tolerance 0', async () => {
    const token = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 60, nowMs: NOW_MS });
    await verifyToken(token, verifyOpts({ nowMs: NOW_MS + 70_000 }));
    await expectCode(
      verifyToken(token, verifyOpts({ nowMs: NOW_MS + 60_000, clockToleranceSeconds: 0 })),
      ErrorCode.TOKEN_EXPIRED,
    );
  });

  it('rejects a token issued in the future (iat)', async () => {
    const token = await signToken(keyA.privateKeyPem, {
      typ: 'client',
      sub: 'a',
      ttlSeconds: 3600,
      nowMs: NOW_MS + 120_000,
    });
    await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_NOT_YET_VALID);
  });

  it('rejects a token whose nbf is in the future', async () => {
    const token = craftSigned({ alg: 'EdDSA' }, validPayload({ nbf: NOW_S + 300 }), keyA.privateKeyPem);
    await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_NOT_YET_VALID);
    await verifyToken(token, verifyOpts({ nowMs: NOW_MS + 300_000 }));
  });
});

describe('verifyToken lifetime limit', () => {
  it('accepts exp - iat up to maxLifetimeSeconds and refuses one second more with TOKEN_LIFETIME_TOO_LONG', async () => {
    const day = 24 * 3600;
    const atLimit = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 30 * day, nowMs: NOW_MS });
    assert.equal((await verifyToken(atLimit, verifyOpts({ maxLifetimeSeconds: 30 * day }))).sub, 'a');
    const over = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 30 * day + 1, nowMs: NOW_MS });
    const err = await expectCode(verifyToken(over, verifyOpts({ maxLifetimeSeconds: 30 * day })), ErrorCode.TOKEN_LIFETIME_TOO_LONG);
    assert.ok(!err.message.includes(over), 'the token never appears in the message');
    // Without a limit (the default) any lifetime verifies, as before.
    const decade = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 3650 * day, nowMs: NOW_MS });
    await verifyToken(decade, verifyOpts());
  });

  it('judges the lifetime the token claims, not what is left of it', async () => {
    // Issued long ago with a long life: only an hour left, still refused.
    const token = craftSigned({ alg: 'EdDSA' }, validPayload({ iat: NOW_S - 365 * 24 * 3600, exp: NOW_S + 3600 }), keyA.privateKeyPem);
    await expectCode(verifyToken(token, verifyOpts({ maxLifetimeSeconds: 90 * 24 * 3600 })), ErrorCode.TOKEN_LIFETIME_TOO_LONG);
  });

  it('an expired token reports TOKEN_EXPIRED first', async () => {
    const token = craftSigned({ alg: 'EdDSA' }, validPayload({ iat: NOW_S - 400 * 24 * 3600, exp: NOW_S - 3600 }), keyA.privateKeyPem);
    await expectCode(verifyToken(token, verifyOpts({ maxLifetimeSeconds: 60 })), ErrorCode.TOKEN_EXPIRED);
  });
});

describe('verifyToken claim checks', () => {
  it('rejects the wrong audience', async () => {
    const token = await signToken(keyA.privateKeyPem, {
      typ: 'client',
      sub: 'a',
      audience: 'other',
      ttlSeconds: 60,
      nowMs: NOW_MS,
    });
    await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_BAD_AUDIENCE);
  });

  it('rejects a missing audience', async () => {
    const { aud: _a, ...payload } = validPayload();
    await expectCode(
      verifyToken(craftSigned({ alg: 'EdDSA' }, payload, keyA.privateKeyPem), verifyOpts()),
      ErrorCode.TOKEN_BAD_AUDIENCE,
    );
  });

  it('rejects an agent token where a client token is expected, and vice versa', async () => {
    const agent = await signToken(keyA.privateKeyPem, { typ: 'agent', sub: 'ns/a', ttlSeconds: 60, nowMs: NOW_MS });
    await expectCode(verifyToken(agent, verifyOpts({ expectedType: 'client' })), ErrorCode.TOKEN_WRONG_TYPE);
    const client = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 60, nowMs: NOW_MS });
    await expectCode(verifyToken(client, verifyOpts({ expectedType: 'agent' })), ErrorCode.TOKEN_WRONG_TYPE);
  });

  it('rejects an unknown typ value as wrong type', async () => {
    const token = craftSigned({ alg: 'EdDSA' }, validPayload({ typ: 'admin' }), keyA.privateKeyPem);
    await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_WRONG_TYPE);
  });

  const missingCases: Array<[string, Record<string, unknown>]> = [
    ['sub absent', { sub: undefined }],
    ['sub empty', { sub: '' }],
    ['sub number', { sub: 42 }],
    ['exp absent', { exp: undefined }],
    ['exp string', { exp: String(NOW_S + 60) }],
    ['iat absent', { iat: undefined }],
    ['jti absent', { jti: undefined }],
    ['jti number', { jti: 7 }],
    ['typ absent', { typ: undefined }],
    ['typ number', { typ: 1 }],
    ['groups not an array', { groups: 'dev' }],
    ['groups with a number', { groups: ['dev', 3] }],
    ['nbf string', { nbf: 'soon' }],
  ];
  for (const [name, overrides] of missingCases) {
    it(`rejects ${name} with TOKEN_MISSING_CLAIM`, async () => {
      // JSON.stringify drops undefined properties, which is how "absent" is produced.
      const token = craftSigned({ alg: 'EdDSA' }, validPayload(overrides), keyA.privateKeyPem);
      await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_MISSING_CLAIM);
    });
  }
});

describe('verifyToken signature and algorithm checks', () => {
  it('rejects a token signed by another key', async () => {
    const token = await signToken(keyB.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 60, nowMs: NOW_MS });
    const err = await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_BAD_SIGNATURE);
    assert.ok(err.cause instanceof Error, 'wraps the jose error as cause');
  });

  it('rejects a tampered payload', async () => {
    const token = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 60, nowMs: NOW_MS });
    const [h, , s] = token.split('.');
    const forged = `${h}.${b64url(validPayload({ sub: 'root', groups: ['admins'] }))}.${s}`;
    await expectCode(verifyToken(forged, verifyOpts()), ErrorCode.TOKEN_BAD_SIGNATURE);
  });

  it('rejects alg none', async () => {
    const token = `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url(validPayload())}.`;
    await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_ALG_NOT_ALLOWED);
  });

  it('rejects alg "None" / missing alg', async () => {
    await expectCode(
      verifyToken(`${b64url({ alg: 'None' })}.${b64url(validPayload())}.`, verifyOpts()),
      ErrorCode.TOKEN_ALG_NOT_ALLOWED,
    );
    await expectCode(
      verifyToken(`${b64url({ typ: 'JWT' })}.${b64url(validPayload())}.c2ln`, verifyOpts()),
      ErrorCode.TOKEN_ALG_NOT_ALLOWED,
    );
  });

  it('rejects an HS256 token keyed with the public key PEM (alg confusion)', async () => {
    const input = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(validPayload())}`;
    const sig = createHmac('sha256', keyA.publicKeyPem).update(input).digest('base64url');
    await expectCode(verifyToken(`${input}.${sig}`, verifyOpts()), ErrorCode.TOKEN_ALG_NOT_ALLOWED);
  });

  it('rejects RS256 and ES256 headers', async () => {
    for (const alg of ['RS256', 'ES256', 'Ed25519', 'eddsa']) {
      const token = `${b64url({ alg })}.${b64url(validPayload())}.c2lnbmF0dXJl`;
      await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_ALG_NOT_ALLOWED);
    }
  });

  it('rejects an unknown crit header as malformed', async () => {
    const token = craftSigned({ alg: 'EdDSA', crit: ['x-unknown'], 'x-unknown': 1 }, validPayload(), keyA.privateKeyPem);
    await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_MALFORMED);
  });
});

describe('verifyToken malformed input', () => {
  const garbage: Array<[string, string]> = [
    ['empty string', ''],
    ['one part', 'abc'],
    ['two parts', 'abc.def'],
    ['four parts', 'a.b.c.d'],
    ['dots only', '..'],
    ['not base64url', 'ab$.cd.ef'],
    ['padding', `${b64url({ alg: 'EdDSA' })}=.${b64url(validPayload())}.c2ln`],
    ['header not JSON', `${b64url('not json')}.${b64url(validPayload())}.c2ln`],
    ['header JSON array', `${b64url([1, 2])}.${b64url(validPayload())}.c2ln`],
    ['header JSON null', `${b64url('null')}.${b64url(validPayload())}.c2ln`],
    ['payload not JSON', `${b64url({ alg: 'EdDSA' })}.${b64url('{oops')}.c2ln`],
    ['payload JSON string', `${b64url({ alg: 'EdDSA' })}.${b64url('"hi"')}.c2ln`],
    ['empty payload', `${b64url({ alg: 'EdDSA' })}..c2ln`],
    ['EdDSA without signature', `${b64url({ alg: 'EdDSA' })}.${b64url(validPayload())}.`],
    ['whitespace', ` ${b64url({ alg: 'EdDSA' })}.${b64url(validPayload())}.c2ln`],
  ];
  for (const [name, token] of garbage) {
    it(`rejects ${name} with TOKEN_MALFORMED`, async () => {
      await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_MALFORMED);
    });
  }

  it('rejects a correctly signed non-JSON payload as malformed', async () => {
    const input = `${b64url({ alg: 'EdDSA' })}.${b64url('plain text')}`;
    const sig = cryptoSign(null, Buffer.from(input), keyA.privateKeyPem).toString('base64url');
    await expectCode(verifyToken(`${input}.${sig}`, verifyOpts()), ErrorCode.TOKEN_MALFORMED);
  });

  it('never puts the token in the error message', async () => {
    const token = await signToken(keyB.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 60, nowMs: NOW_MS });
    const [h, p, s] = token.split('.') as [string, string, string];
    const variants = [token, `${h}.${p}`, `${h}.${p}.${s}x`, `${b64url({ alg: 'none' })}.${p}.`];
    for (const t of variants) {
      const err = await verifyToken(t, verifyOpts()).then(
        () => assert.fail('expected failure'),
        (e: Error) => e,
      );
      for (const part of t.split('.').filter((x) => x.length > 8)) {
        assert.ok(!err.message.includes(part), `message leaks token part: ${err.message}`);
      }
    }
  });
});

describe('key configuration errors', () => {
  it('throws ConfigError for an empty key list', async () => {
    const token = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 60, nowMs: NOW_MS });
    await assert.rejects(verifyToken(token, verifyOpts({ publicKeysPem: [] })), (e: unknown) => {
      return e instanceof ConfigError && e.code === ErrorCode.CONFIG_INVALID;
    });
  });

  it('throws ConfigError for a non-Ed25519 or private key in the public key list', async () => {
    const token = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 60, nowMs: NOW_MS });
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' });
    for (const bad of [String(rsa), keyA.privateKeyPem, 'not a pem']) {
      await assert.rejects(verifyToken(token, verifyOpts({ publicKeysPem: [bad] })), (e: unknown) => {
        return e instanceof ConfigError && e.code === ErrorCode.CONFIG_INVALID;
      });
    }
  });

  it('signToken rejects a non-Ed25519 private key and bad options', async () => {
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    await assert.rejects(signToken(String(ec), { typ: 'client', sub: 'a', ttlSeconds: 60 }), (e: unknown) => {
      return e instanceof ConfigError && e.code === ErrorCode.CONFIG_INVALID;
    });
    await assert.rejects(signToken(keyA.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 0 }), RangeError);
    await assert.rejects(signToken(keyA.privateKeyPem, { typ: 'client', sub: '', ttlSeconds: 60 }), RangeError);
  });
});

describe('tokenFingerprint', () => {
  it('is the first 12 hex chars of sha256', () => {
    // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
    assert.equal(tokenFingerprint('abc'), 'ba7816bf8f01');
  });
  it('differs between tokens and never contains the token', async () => {
    const t1 = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 60, nowMs: NOW_MS });
    const t2 = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'b', ttlSeconds: 60, nowMs: NOW_MS });
    assert.match(tokenFingerprint(t1), /^[0-9a-f]{12}$/);
    assert.notEqual(tokenFingerprint(t1), tokenFingerprint(t2));
  });
});

describe('key-bound tokens (cnf.jkt)', () => {
  const jkt = jwkThumbprint(generateProofKey().x);

  it('signs and returns cnf.jkt; a token without cnf has none', async () => {
    const bound = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 60, nowMs: NOW_MS, cnf: { jkt } });
    assert.deepEqual((await verifyToken(bound, verifyOpts())).cnf, { jkt });
    const bearer = await signToken(keyA.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 60, nowMs: NOW_MS });
    const claims = await verifyToken(bearer, verifyOpts());
    assert.equal(claims.cnf, undefined);
    assert.ok(!('cnf' in claims));
  });

  it('refuses a cnf that is not exactly { jkt: <thumbprint> } as TOKEN_MISSING_CLAIM', async () => {
    const bad: unknown[] = [null, 'x', [jkt], {}, { jkt: 42 }, { jkt: 'short' }, { jkt, jwk: {} }, { 'x5t#S256': jkt }];
    for (const cnf of bad) {
      const token = craftSigned({ alg: 'EdDSA', typ: 'JWT' }, validPayload({ cnf }), keyA.privateKeyPem);
      await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_MISSING_CLAIM);
    }
  });

  it('checks the claim after the signature: a forged cnf reports BAD_SIGNATURE', async () => {
    const token = craftSigned({ alg: 'EdDSA', typ: 'JWT' }, validPayload({ cnf: 'garbage' }), keyB.privateKeyPem);
    await expectCode(verifyToken(token, verifyOpts()), ErrorCode.TOKEN_BAD_SIGNATURE);
  });

  it('signToken refuses a malformed cnf', async () => {
    for (const cnf of [{ jkt: '' }, { jkt: 'not-a-thumbprint' }, {} as { jkt: string }]) {
      await assert.rejects(signToken(keyA.privateKeyPem, { typ: 'client', sub: 'a', ttlSeconds: 60, cnf }), RangeError);
    }
  });
});
