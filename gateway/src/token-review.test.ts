import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { KubeClient, KubeObject, ResourceType } from '@narrowlink/kube';
import { KubeTokenReviewer, tokenReviews } from './token-review.ts';

type ReviewStatus = { authenticated?: boolean; error?: string; audiences?: string[]; user?: { username?: string; groups?: string[] } };

/** A KubeClient that implements only `create` (all a TokenReview needs), answering from `answer`. */
function fakeClient(answer: (token: string, audiences: string[]) => ReviewStatus | Error) {
  const calls: Array<{ type: ResourceType; object: KubeObject }> = [];
  const client = {
    async create(type: ResourceType, object: KubeObject): Promise<KubeObject> {
      calls.push({ type, object: structuredClone(object) });
      const spec = object.spec as { token: string; audiences: string[] };
      const status = answer(spec.token, spec.audiences);
      if (status instanceof Error) throw status;
      return { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', metadata: {}, spec, status };
    },
  };
  return { client: client as unknown as KubeClient, calls };
}

/** An unsigned JWT-shaped token: the reviewer reads `exp` only (the API server did the verifying). */
function jwt(claims: Record<string, unknown>, salt = ''): string {
  const part = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'RS256', kid: 'k' })}.${part(claims)}.${Buffer.from(`sig${salt}`).toString('base64url')}`;
}

const T0 = Date.parse('2030-01-01T00:00:00Z');
const EXP_S = T0 / 1000 + 600;
const SA_USER = 'system:serviceaccount:shop:orders-sa';
const authenticated = (audiences = ['narrowlink'], username = SA_USER): ReviewStatus => ({ authenticated: true, audiences, user: { username } });

describe('KubeTokenReviewer', () => {
  test('an authenticated ServiceAccount token → namespace, ServiceAccount and the JWT exp; the request is a v1 TokenReview', async () => {
    const { client, calls } = fakeClient(() => authenticated());
    const reviewer = new KubeTokenReviewer(client, { now: () => T0 });
    const token = jwt({ exp: EXP_S, sub: SA_USER });
    assert.deepEqual(await reviewer.review(token, 'narrowlink'), {
      authenticated: true,
      namespace: 'shop',
      serviceAccount: 'orders-sa',
      expiresAtMs: EXP_S * 1000,
    });
    assert.equal(calls.length, 1);
    assert.deepEqual(calls[0]?.type, tokenReviews);
    assert.deepEqual(tokenReviews, { group: 'authentication.k8s.io', version: 'v1', plural: 'tokenreviews', kind: 'TokenReview', namespaced: false });
    assert.deepEqual(calls[0]?.object, {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenReview',
      metadata: {},
      spec: { token, audiences: ['narrowlink'] },
    });
    assert.equal(reviewer.reviews, 1);
  });

  test('namespaces and ServiceAccount names with digits, dots and dashes are parsed whole', async () => {
    const { client } = fakeClient(() => authenticated(['narrowlink'], 'system:serviceaccount:team-1:build.bot-2'));
    const reviewer = new KubeTokenReviewer(client, { now: () => T0 });
    const result = await reviewer.review(jwt({ exp: EXP_S }), 'narrowlink');
    assert.deepEqual(result, { authenticated: true, namespace: 'team-1', serviceAccount: 'build.bot-2', expiresAtMs: EXP_S * 1000 });
  });

  test('rejections carry a reason: not authenticated, wrong audience, not a ServiceAccount, already expired', async () => {
    const cases: Array<[string, ReviewStatus, string]> = [
      ['unauthenticated', { authenticated: false, error: 'invalid bearer token' }, 'NL_ERR_TOKEN_REVIEW_REJECTED'],
      ['no status fields', {}, 'NL_ERR_TOKEN_REVIEW_REJECTED'],
      ['audiences without ours', authenticated(['https://kubernetes.default.svc.cluster.local']), 'NL_ERR_TOKEN_BAD_AUDIENCE'],
      ['a user', authenticated(['narrowlink'], 'admin'), 'NL_ERR_TOKEN_NOT_SERVICE_ACCOUNT'],
      ['a node', authenticated(['narrowlink'], 'system:node:worker-1'), 'NL_ERR_TOKEN_NOT_SERVICE_ACCOUNT'],
      ['an SA username with extra parts', authenticated(['narrowlink'], 'system:serviceaccount:shop:orders-sa:x'), 'NL_ERR_TOKEN_NOT_SERVICE_ACCOUNT'],
    ];
    for (const [what, status, reason] of cases) {
      const { client } = fakeClient(() => status);
      const reviewer = new KubeTokenReviewer(client, { now: () => T0 });
      assert.deepEqual(await reviewer.review(jwt({ exp: EXP_S }), 'narrowlink'), { authenticated: false, reason }, what);
    }
    // The API server still says yes for a token whose exp has passed on our clock (clock skew): not accepted.
    const { client } = fakeClient(() => authenticated());
    const reviewer = new KubeTokenReviewer(client, { now: () => EXP_S * 1000 + 1 });
    assert.deepEqual(await reviewer.review(jwt({ exp: EXP_S }), 'narrowlink'), { authenticated: false, reason: 'NL_ERR_TOKEN_EXPIRED' });
  });

  test('a success is cached until the token expires: no API call before, a fresh review after', async () => {
    let now = T0;
    const { client, calls } = fakeClient(() => authenticated());
    // A positive TTL past the expiry isolates the expiry bound; the default TTL is tested below.
    const reviewer = new KubeTokenReviewer(client, { now: () => now, positiveTtlMs: 24 * 3600 * 1000 });
    const token = jwt({ exp: EXP_S });
    const first = await reviewer.review(token, 'narrowlink');
    now = EXP_S * 1000 - 1;
    assert.deepEqual(await reviewer.review(token, 'narrowlink'), first);
    assert.equal(calls.length, 1, 'served from the cache');
    // Another audience is another question.
    const { client: client2, calls: calls2 } = fakeClient((_t, audiences) => authenticated(audiences));
    const reviewer2 = new KubeTokenReviewer(client2, { now: () => T0 });
    await reviewer2.review(token, 'narrowlink');
    await reviewer2.review(token, 'other');
    assert.equal(calls2.length, 2);
    // At expiry the cache no longer answers; the token is asked about again (and is now expired).
    now = EXP_S * 1000;
    assert.deepEqual(await reviewer.review(token, 'narrowlink'), { authenticated: false, reason: 'NL_ERR_TOKEN_EXPIRED' });
    assert.equal(calls.length, 2);
  });

  test('a rejection is remembered for negativeTtlMs only', async () => {
    let now = T0;
    let accept = false;
    const { client, calls } = fakeClient(() => (accept ? authenticated() : { authenticated: false }));
    const reviewer = new KubeTokenReviewer(client, { now: () => now, negativeTtlMs: 10_000 });
    assert.equal(reviewer.negativeTtlMs, 10_000);
    assert.equal(new KubeTokenReviewer(client).negativeTtlMs, 10_000, 'the default is 10 s');
    const token = jwt({ exp: EXP_S });
    for (let i = 0; i < 5; i++) assert.equal((await reviewer.review(token, 'narrowlink')).authenticated, false);
    assert.equal(calls.length, 1, 'a burst of the same bad token is one TokenReview');
    accept = true; // e.g. the ServiceAccount was created meanwhile
    now = T0 + 9_999;
    assert.equal((await reviewer.review(token, 'narrowlink')).authenticated, false, 'still the cached rejection');
    assert.equal(calls.length, 1);
    now = T0 + 10_000;
    assert.equal((await reviewer.review(token, 'narrowlink')).authenticated, true, 'asked again after negativeTtlMs');
    assert.equal(calls.length, 2);
  });

  test('an API failure rejects and is not cached', async () => {
    let fail = true;
    const { client, calls } = fakeClient(() => (fail ? new Error('connect ECONNREFUSED') : authenticated()));
    const reviewer = new KubeTokenReviewer(client, { now: () => T0 });
    const token = jwt({ exp: EXP_S });
    await assert.rejects(reviewer.review(token, 'narrowlink'), /ECONNREFUSED/);
    fail = false;
    assert.equal((await reviewer.review(token, 'narrowlink')).authenticated, true);
    assert.equal(calls.length, 2);
  });

  test('a token without exp is trusted for a minute at most', async () => {
    const { client } = fakeClient(() => authenticated());
    const reviewer = new KubeTokenReviewer(client, { now: () => T0 });
    const result = await reviewer.review(jwt({ sub: SA_USER }), 'narrowlink');
    assert.ok(result.authenticated);
    assert.equal(result.expiresAtMs, T0 + 60_000);
  });

  test('the cache is bounded: the oldest entry goes first', async () => {
    const { client, calls } = fakeClient(() => authenticated());
    const reviewer = new KubeTokenReviewer(client, { now: () => T0, maxEntries: 3 });
    const tokens = [0, 1, 2, 3].map((i) => jwt({ exp: EXP_S }, String(i)));
    for (const t of tokens) await reviewer.review(t, 'narrowlink');
    assert.equal(calls.length, 4);
    for (const t of tokens.slice(1)) await reviewer.review(t, 'narrowlink');
    assert.equal(calls.length, 4, 'the three newest are still cached');
    await reviewer.review(tokens[0] as string, 'narrowlink');
    assert.equal(calls.length, 5, 'the oldest was evicted');
    // Many distinct bad tokens never grow it past the bound either.
    const { client: badClient, calls: badCalls } = fakeClient(() => ({ authenticated: false }));
    const bounded = new KubeTokenReviewer(badClient, { now: () => T0, maxEntries: 10 });
    for (let i = 0; i < 100; i++) await bounded.review(jwt({ exp: EXP_S }, `bad-${i}`), 'narrowlink');
    await bounded.review(jwt({ exp: EXP_S }, 'bad-99'), 'narrowlink');
    await bounded.review(jwt({ exp: EXP_S }, 'bad-0'), 'narrowlink');
    assert.equal(badCalls.length, 101, 'bad-99 cached, bad-0 evicted');
  });

  test('a success is trusted for positiveTtlMs at most (30 s by default), so a deleted ServiceAccount is noticed soon', async () => {
    let now = T0;
    const { client, calls } = fakeClient(() => authenticated());
    const reviewer = new KubeTokenReviewer(client, { now: () => now });
    assert.equal(reviewer.positiveTtlMs, 30_000);
    const token = jwt({ exp: EXP_S });
    await reviewer.review(token, 'narrowlink');
    now = T0 + 29_999;
    await reviewer.review(token, 'narrowlink');
    assert.equal(calls.length, 1, 'still cached just before the TTL');
    now = T0 + 30_000;
    await reviewer.review(token, 'narrowlink');
    assert.equal(calls.length, 2, 'asked again once the TTL passed');
  });
});
