import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { generateSigningKeyPair, signToken, verifyToken } from '@narrowlink/protocol';
import { LABEL_COMPONENT, LABEL_OWNER_NAME } from '../../labels.ts';
import type { Secret } from '../../objects.ts';
import { makeAgent } from '../test-fixtures.ts';
import {
  AGENT_TOKEN_KEY,
  AGENT_TOKEN_SECRET_TYPE,
  type AgentTokenSigner,
  agentTokenSecretName,
  DEFAULT_AGENT_TOKEN_TTL_SECONDS,
  desiredAgentTokenSecret,
  needsRotation,
  RotationReason,
  rotationDueMs,
  SIGNING_KEY_ANNOTATION,
  signingKeyId,
  TOKEN_EXPIRES_ANNOTATION,
  tokenRotationReason,
} from './desired.ts';

const DAY = 86_400;
const NOW = Date.parse('2025-06-01T00:00:00Z');

/** An unsigned JWT-shaped token: the decision only reads claims, the gateway verifies signatures. */
function fakeJwt(claims: Record<string, unknown>): string {
  const part = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'EdDSA', typ: 'JWT' })}.${part(claims)}.c2ln`;
}

/** A Secret holding a token issued `ageSeconds` ago with `ttlSeconds`. */
function secretWith(token: string | undefined, annotations: Record<string, string> = {}): Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: 'web-narrowlink-token', namespace: 'default', annotations },
    ...(token === undefined ? {} : { data: { [AGENT_TOKEN_KEY]: Buffer.from(token).toString('base64') } }),
  };
}

function issued(ageSeconds: number, ttlSeconds: number, sub = 'default/web'): string {
  const iat = NOW / 1000 - ageSeconds;
  return fakeJwt({ typ: 'agent', sub, iat, exp: iat + ttlSeconds });
}

/** A signer that records calls and returns fake tokens consistent with the request. */
function recordingSigner(): AgentTokenSigner & { calls: number } {
  const sign = async (req: { sub: string; ttlSeconds: number; nowMs: number }) => {
    sign.calls += 1;
    const iat = Math.floor(req.nowMs / 1000);
    return fakeJwt({ typ: 'agent', sub: req.sub, iat, exp: iat + req.ttlSeconds, n: sign.calls });
  };
  sign.calls = 0;
  return sign;
}

describe('tokenRotationReason / needsRotation', () => {
  const KEY = 'aaaaaaaaaaaaaaaa';
  const cases: Array<{ name: string; secret: Secret | undefined; opts?: Parameters<typeof tokenRotationReason>[2]; want: RotationReason | undefined }> = [
    { name: 'no Secret', secret: undefined, want: RotationReason.Missing },
    { name: 'Secret without token', secret: secretWith(undefined), want: RotationReason.Missing },
    { name: 'garbage token', secret: secretWith('not-a-jwt'), want: RotationReason.Unreadable },
    { name: 'payload not JSON', secret: secretWith('a.b.c'), want: RotationReason.Unreadable },
    { name: 'exp before iat', secret: secretWith(fakeJwt({ sub: 'default/web', iat: 10, exp: 5 })), want: RotationReason.Unreadable },
    { name: 'fresh (half the lifetime left)', secret: secretWith(issued(45 * DAY, 90 * DAY)), want: undefined },
    { name: 'just before the 80% mark', secret: secretWith(issued(72 * DAY - 1, 90 * DAY)), want: undefined },
    { name: 'at the 80% mark', secret: secretWith(issued(72 * DAY, 90 * DAY)), want: RotationReason.NearExpiry },
    { name: 'expired', secret: secretWith(issued(91 * DAY, 90 * DAY)), want: RotationReason.Expired },
    {
      name: 'custom fraction: 50% left rotates at 0.6',
      secret: secretWith(issued(45 * DAY, 90 * DAY)),
      opts: { renewBeforeFraction: 0.6 },
      want: RotationReason.NearExpiry,
    },
    {
      name: 'token of another agent',
      secret: secretWith(issued(1, 90 * DAY, 'default/other')),
      opts: { sub: 'default/web' },
      want: RotationReason.WrongSubject,
    },
    {
      name: 'signed by a retired key',
      secret: secretWith(issued(1, 90 * DAY), { [SIGNING_KEY_ANNOTATION]: 'bbbbbbbbbbbbbbbb' }),
      opts: { signingKeyId: KEY },
      want: RotationReason.SigningKeyChanged,
    },
    {
      name: 'signed by the current key',
      secret: secretWith(issued(1, 90 * DAY), { [SIGNING_KEY_ANNOTATION]: KEY }),
      opts: { signingKeyId: KEY, sub: 'default/web' },
      want: undefined,
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      assert.equal(tokenRotationReason(c.secret, NOW, c.opts), c.want);
      assert.equal(needsRotation(c.secret, NOW, c.opts), c.want !== undefined);
    });
  }

  it('reads real tokens from protocol signToken', async () => {
    const { privateKeyPem } = await generateSigningKeyPair();
    const token = await signToken(privateKeyPem, { typ: 'agent', sub: 'default/web', ttlSeconds: 100, nowMs: NOW });
    assert.equal(rotationDueMs(secretWith(token)), NOW + 80_000);
    assert.equal(needsRotation(secretWith(token), NOW + 79_999), false);
    assert.equal(needsRotation(secretWith(token), NOW + 80_000), true);
  });
});

describe('desiredAgentTokenSecret', () => {
  const external = makeAgent('web', { external: true });

  it('wants no Secret for in-cluster agents (they use ServiceAccount tokens) and agents being deleted', async () => {
    const sign = recordingSigner();
    const deleting = makeAgent('web', { external: true }, { deletionTimestamp: '2025-06-01T00:00:00Z' });
    for (const agent of [makeAgent('web'), makeAgent('web', { external: false }), deleting]) {
      assert.deepEqual(await desiredAgentTokenSecret(agent, undefined, { nowMs: NOW, sign }), { secret: undefined });
    }
    assert.equal(sign.calls, 0);
  });

  it('mints a token Secret for an external agent', async () => {
    const sign = recordingSigner();
    const plan = await desiredAgentTokenSecret(external, undefined, { nowMs: NOW, sign, signingKeyId: 'k1' });
    assert.equal(sign.calls, 1);
    assert.ok(plan.secret);
    assert.equal(plan.minted, RotationReason.Missing);
    const { secret } = plan;
    assert.equal(secret.metadata.name, agentTokenSecretName('web'));
    assert.equal(secret.metadata.name, 'web-narrowlink-token');
    assert.equal(secret.metadata.namespace, 'default');
    assert.equal(secret.type, AGENT_TOKEN_SECRET_TYPE);
    assert.deepEqual(Object.keys(secret.data ?? {}), [AGENT_TOKEN_KEY]);
    assert.equal(secret.metadata.labels?.[LABEL_COMPONENT], 'agent-token');
    assert.equal(secret.metadata.labels?.[LABEL_OWNER_NAME], 'web');
    assert.equal(secret.metadata.ownerReferences?.[0]?.uid, external.metadata.uid);
    assert.equal(secret.metadata.annotations?.[SIGNING_KEY_ANNOTATION], 'k1');
    const expiresMs = NOW + DEFAULT_AGENT_TOKEN_TTL_SECONDS * 1000;
    assert.equal(secret.metadata.annotations?.[TOKEN_EXPIRES_ANNOTATION], new Date(expiresMs).toISOString());
    assert.equal(plan.rotateAtMs, NOW + 0.8 * DEFAULT_AGENT_TOKEN_TTL_SECONDS * 1000);
  });

  it('keeps a good token byte for byte without signing', async () => {
    const first = recordingSigner();
    const minted = await desiredAgentTokenSecret(external, undefined, { nowMs: NOW, sign: first, signingKeyId: 'k1' });
    const sign = recordingSigner();
    const later = NOW + 10 * DAY * 1000;
    const kept = await desiredAgentTokenSecret(external, minted.secret, { nowMs: later, sign, signingKeyId: 'k1' });
    assert.equal(sign.calls, 0);
    assert.deepEqual(kept.secret, minted.secret);
    assert.equal('minted' in kept, false);
  });

  it('rotates near expiry and when the signing key changes', async () => {
    const minted = await desiredAgentTokenSecret(external, undefined, { nowMs: NOW, sign: recordingSigner(), ttlSeconds: 100, signingKeyId: 'k1' });
    const sign = recordingSigner();
    const near = await desiredAgentTokenSecret(external, minted.secret, { nowMs: NOW + 80_000, sign, ttlSeconds: 100, signingKeyId: 'k1' });
    assert.equal(near.secret === undefined ? undefined : near.minted, RotationReason.NearExpiry);
    assert.notDeepEqual(near.secret?.data, minted.secret?.data);
    const rekeyed = await desiredAgentTokenSecret(external, minted.secret, { nowMs: NOW + 1000, sign, ttlSeconds: 100, signingKeyId: 'k2' });
    assert.equal(rekeyed.secret === undefined ? undefined : rekeyed.minted, RotationReason.SigningKeyChanged);
    assert.equal(sign.calls, 2);
  });

  it('produces a token the gateway accepts when wired to protocol signToken', async () => {
    const { privateKeyPem, publicKeyPem } = await generateSigningKeyPair();
    const sign: AgentTokenSigner = (r) => signToken(privateKeyPem, { typ: 'agent', sub: r.sub, ttlSeconds: r.ttlSeconds, nowMs: r.nowMs });
    const plan = await desiredAgentTokenSecret(makeAgent('db', { external: true }, { namespace: 'data' }), undefined, {
      nowMs: Date.now(),
      sign,
      signingKeyId: signingKeyId(publicKeyPem),
    });
    const token = Buffer.from(plan.secret?.data?.[AGENT_TOKEN_KEY] ?? '', 'base64').toString('utf8');
    const claims = await verifyToken(token, { publicKeysPem: [publicKeyPem], expectedType: 'agent' });
    assert.equal(claims.sub, 'data/db');
  });

  it('rejects a signer that returns no JWT', async () => {
    await assert.rejects(desiredAgentTokenSecret(external, undefined, { nowMs: NOW, sign: async () => 'nope' }), TypeError);
  });
});

describe('agentTokenSecretName / signingKeyId', () => {
  it('stays a valid Secret name for long agent names', () => {
    const name = agentTokenSecretName('a'.repeat(253));
    assert.ok(name.length <= 253);
    assert.match(name, /-[0-9a-f]{8}$/);
  });
  it('identifies a key independently of surrounding whitespace', () => {
    assert.equal(signingKeyId('PEM\n'), signingKeyId('PEM'));
    assert.match(signingKeyId('PEM'), /^[0-9a-f]{16}$/);
  });
});
