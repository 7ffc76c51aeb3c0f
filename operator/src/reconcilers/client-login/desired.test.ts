import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { jwkThumbprint } from '@narrowlink/protocol';
import type { ClientLoginRequest } from '../../crds/client-login-request.ts';
import { deriveLoginStampKey, LOGIN_STAMP_ANNOTATION, loginStamp } from '../../login-stamp.ts';
import { DEFAULT_LOGIN_SETTINGS, issuedStatus, type LoginSettings, planLogin, refusedStatus } from './desired.ts';
import { LoginRateLimiter } from './rate-limit.ts';

const X = generateKeyPairSync('ed25519').publicKey.export({ format: 'jwk' }).x as string;
const T0 = Date.parse('2026-12-07T12:00:00Z');
const SETTINGS: LoginSettings = { ...DEFAULT_LOGIN_SETTINGS, tokenTtlSeconds: 3600 };

const KEY = deriveLoginStampKey(generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);

/** A request as the webhook leaves it: spec plus the stamp over it (unless `stamp` says otherwise). */
function request(spec: Partial<ClientLoginRequest['spec']>, extra: Partial<ClientLoginRequest> = {}, stamp?: string | null): ClientLoginRequest {
  const full = { publicKey: X, ...spec } as ClientLoginRequest['spec'];
  const computed = loginStamp(KEY, { namespace: 'narrowlink', publicKey: full.publicKey, ttlSeconds: full.ttlSeconds, username: full.username, uid: full.uid, groups: full.groups });
  const annotations = stamp === null ? undefined : { [LOGIN_STAMP_ANNOTATION]: stamp ?? computed };
  return {
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'ClientLoginRequest',
    metadata: { name: 'login-abc', namespace: 'narrowlink', uid: 'uid-1', generation: 1, creationTimestamp: '2026-12-07T12:00:00Z', ...(annotations ? { annotations } : {}) },
    spec: full,
    ...extra,
  };
}

const STAMP = { username: 'alice', groups: ['devs', 'system:authenticated'] };

describe('planLogin', () => {
  it('signs a stamped request for the stamped identity, bound to the key thumbprint, default lifetime = the cap', () => {
    assert.deepEqual(planLogin(request(STAMP), SETTINGS, T0 + 1000, KEY), {
      action: 'sign',
      grant: { sub: 'alice', groups: ['devs', 'system:authenticated'], jkt: jwkThumbprint(X), ttlSeconds: 3600 },
    });
  });

  it('caps the requested lifetime and keeps a shorter one', () => {
    const ttl = (ttlSeconds: number) => {
      const plan = planLogin(request({ ...STAMP, ttlSeconds }), SETTINGS, T0, KEY);
      assert.equal(plan.action, 'sign');
      return plan.action === 'sign' ? plan.grant.ttlSeconds : 0;
    };
    assert.equal(ttl(999_999), 3600);
    assert.equal(ttl(600), 600);
  });

  for (const [name, spec] of [
    ['no stamp at all', {}],
    ['an empty username', { ...STAMP, username: '' }],
    ['no groups', { username: 'alice', uid: 'u' }],
    ['a uid that is not a string', { ...STAMP, uid: 7 as unknown as string }],
    ['groups not a list', { ...STAMP, groups: 'devs' as unknown as string[] }],
    ['a group that is not a string', { ...STAMP, groups: [1 as unknown as string] }],
  ] as Array<[string, Partial<ClientLoginRequest['spec']>]>) {
    it(`denies a request with ${name}: nothing is signed`, () => {
      const plan = planLogin(request(spec), SETTINGS, T0, KEY);
      assert.equal(plan.action, 'refuse');
      assert.equal(plan.action === 'refuse' && plan.reason, 'Denied');
    });
  }

  it('denies a request whose stamp is missing, forged, from another key, or over other fields', () => {
    const otherKey = deriveLoginStampKey('another signing key');
    const cases: Array<[string, ClientLoginRequest]> = [
      ['no annotation', request(STAMP, {}, null)],
      ['a made-up stamp', request(STAMP, {}, 'A'.repeat(43))],
      ['a stamp under another key', request(STAMP, {}, loginStamp(otherKey, { namespace: 'narrowlink', publicKey: X, ...STAMP, ttlSeconds: undefined, uid: undefined }))],
      ['the stamp of another user', request({ ...STAMP, username: 'admin' }, {}, loginStamp(KEY, { namespace: 'narrowlink', publicKey: X, ...STAMP, ttlSeconds: undefined, uid: undefined }))],
      ['the stamp of other groups', request({ ...STAMP, groups: ['system:masters'] }, {}, loginStamp(KEY, { namespace: 'narrowlink', publicKey: X, ...STAMP, ttlSeconds: undefined, uid: undefined }))],
      ['the stamp of another namespace', request(STAMP, {}, loginStamp(KEY, { namespace: 'elsewhere', publicKey: X, ...STAMP, ttlSeconds: undefined, uid: undefined }))],
      ['the stamp of a longer lifetime', request({ ...STAMP, ttlSeconds: 600 }, {}, loginStamp(KEY, { namespace: 'narrowlink', publicKey: X, ...STAMP, ttlSeconds: 3600, uid: undefined }))],
    ];
    for (const [name, r] of cases) {
      const plan = planLogin(r, SETTINGS, T0, KEY);
      assert.equal(plan.action === 'refuse' && plan.reason, 'Denied', name);
    }
    // The control: the webhook's own stamp over exactly these fields is accepted.
    assert.equal(planLogin(request({ ...STAMP, uid: 'u-9', ttlSeconds: 600 }), SETTINGS, T0, KEY).action, 'sign');
  });

  it('refuses a malformed key or lifetime as Invalid', () => {
    for (const spec of [
      { ...STAMP, publicKey: `${X}=` },
      { ...STAMP, publicKey: Buffer.alloc(31).toString('base64url') },
      { ...STAMP, ttlSeconds: 0 },
      { ...STAMP, ttlSeconds: 1.5 },
    ]) {
      const plan = planLogin(request(spec), SETTINGS, T0, KEY);
      assert.equal(plan.action === 'refuse' && plan.reason, 'Invalid', JSON.stringify(spec));
    }
  });

  it('leaves a decided request alone until retainAfterDoneMs after the decision, then collects it', () => {
    const decided = request(STAMP, {
      status: refusedStatus(request(STAMP), 'RateLimited', 'slow down', T0 + 2000),
    });
    assert.deepEqual(planLogin(decided, SETTINGS, T0 + 3000, KEY), { action: 'wait', requeueAfterMs: SETTINGS.retainAfterDoneMs - 1000 });
    assert.deepEqual(planLogin(decided, SETTINGS, T0 + 2000 + SETTINGS.retainAfterDoneMs, KEY), { action: 'collect', why: 'done' });
  });

  it('collects any request requestTtlMs after creation, decided or not', () => {
    assert.deepEqual(planLogin(request(STAMP), SETTINGS, T0 + SETTINGS.requestTtlMs, KEY), { action: 'collect', why: 'expired' });
    assert.deepEqual(planLogin(request({}), SETTINGS, T0 + SETTINGS.requestTtlMs + 1, KEY), { action: 'collect', why: 'expired' });
  });

  it('issuedStatus: token, expiresAt (RFC 3339) and Ready=True Issued with observedGeneration', () => {
    const status = issuedStatus(request(STAMP), 'a.b.c', T0 + 3_600_000, T0);
    assert.equal(status?.token, 'a.b.c');
    assert.equal(status?.expiresAt, '2026-12-07T13:00:00Z');
    assert.deepEqual(status?.conditions?.map((c) => [c.type, c.status, c.reason, c.observedGeneration, c.lastTransitionTime]), [
      ['Ready', 'True', 'Issued', 1, '2026-12-07T12:00:00Z'],
    ]);
    assert.equal(status?.observedGeneration, 1);
  });
});

describe('LoginRateLimiter', () => {
  it('allows a burst of perMinute, then refuses with the wait until the next token', () => {
    const limiter = new LoginRateLimiter(2);
    assert.deepEqual(limiter.take('alice', T0), { allowed: true });
    assert.deepEqual(limiter.take('alice', T0), { allowed: true });
    assert.deepEqual(limiter.take('alice', T0), { allowed: false, retryAfterMs: 30_000 });
    assert.deepEqual(limiter.take('bob', T0), { allowed: true }, 'per user');
    assert.deepEqual(limiter.take('alice', T0 + 20_000), { allowed: false, retryAfterMs: 10_000 });
    assert.deepEqual(limiter.take('alice', T0 + 30_000), { allowed: true });
  });

  it('0 turns the limit off; negative or fractional limits are refused', () => {
    const off = new LoginRateLimiter(0);
    for (let i = 0; i < 100; i++) assert.deepEqual(off.take('alice', T0), { allowed: true });
    assert.throws(() => new LoginRateLimiter(-1), RangeError);
    assert.throws(() => new LoginRateLimiter(1.5), RangeError);
  });

  it('forgets users whose bucket is full again once many users came by', () => {
    const limiter = new LoginRateLimiter(1);
    for (let i = 0; i < 1025; i++) limiter.take(`user-${i}`, T0);
    assert.equal(limiter.size, 1025);
    limiter.take('late', T0 + 60_000);
    assert.equal(limiter.size, 1);
  });
});
