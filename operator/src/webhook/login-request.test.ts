import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { WebhookErrorCode } from './errors.ts';
import { applyJsonPatch, type JsonPatchOp } from './json-patch.ts';
import { type LoginReviewOutcome, reviewLoginRequest } from './login-request.ts';
import type { AdmissionRequest } from './review.ts';
import { buildWebhookApp, MUTATE_LOGIN_REQUESTS_PATH } from './server.ts';
import { TEST_SETTINGS } from './test-fixtures.ts';

const KIND = { group: 'narrowlink.io', version: 'v1alpha1', kind: 'ClientLoginRequest' };
const KEY = '11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo';

function loginObject(spec: Record<string, unknown>): Record<string, unknown> {
  return { apiVersion: 'narrowlink.io/v1alpha1', kind: 'ClientLoginRequest', metadata: { generateName: 'login-', namespace: 'narrowlink' }, spec };
}

function create(spec: unknown, userInfo: AdmissionRequest['userInfo'] = { username: 'alice', uid: 'u-1', groups: ['devs', 'system:authenticated'] }): AdmissionRequest {
  return { uid: 'r-1', kind: KIND, operation: 'CREATE', namespace: 'narrowlink', object: spec === undefined ? { metadata: {} } : loginObject(spec as Record<string, unknown>), userInfo };
}

function patchOf(response: { patch?: string }): JsonPatchOp[] {
  assert.ok(response.patch, 'a patch');
  return JSON.parse(Buffer.from(response.patch, 'base64').toString('utf8')) as JsonPatchOp[];
}

describe('reviewLoginRequest', () => {
  it('CREATE: stamps username, uid and groups from userInfo, nothing else', () => {
    const request = create({ publicKey: KEY, ttlSeconds: 3600 });
    const result = reviewLoginRequest(request);
    assert.equal(result.outcome, 'stamped');
    assert.equal(result.response.allowed, true);
    assert.equal(result.response.uid, 'r-1');
    assert.equal(result.response.patchType, 'JSONPatch');
    const patched = applyJsonPatch(request.object, patchOf(result.response)) as { spec: unknown };
    assert.deepEqual(patched.spec, { publicKey: KEY, ttlSeconds: 3600, username: 'alice', uid: 'u-1', groups: ['devs', 'system:authenticated'] });
  });

  it('CREATE by a user without uid or groups (a client certificate has no uid): no uid, groups []', () => {
    for (const userInfo of [{ username: 'alice' }, { username: 'alice', uid: '' }]) {
      const request = create({ publicKey: KEY }, userInfo);
      const patched = applyJsonPatch(request.object, patchOf(reviewLoginRequest(request).response)) as { spec: Record<string, unknown> };
      assert.deepEqual(patched.spec, { publicKey: KEY, username: 'alice', groups: [] });
    }
  });

  for (const [name, spec, fields] of [
    ['username', { publicKey: KEY, username: 'admin' }, 'spec.username is'],
    ['an empty uid', { publicKey: KEY, uid: '' }, 'spec.uid is'],
    ['groups', { publicKey: KEY, groups: ['system:masters'] }, 'spec.groups is'],
    ['all three', { publicKey: KEY, username: 'alice', uid: 'u-1', groups: [] }, 'spec.username, spec.uid, spec.groups are'],
    ['a null username', { publicKey: KEY, username: null }, 'spec.username is'],
  ] as const) {
    it(`CREATE that supplies ${name} is denied 403 with a code naming the fields`, () => {
      const result = reviewLoginRequest(create(spec));
      assert.equal(result.outcome, 'identity-supplied');
      assert.equal(result.response.allowed, false);
      assert.equal(result.response.patch, undefined);
      assert.equal(result.response.status?.code, 403);
      assert.ok(result.response.status?.message.startsWith(`${WebhookErrorCode.LOGIN_IDENTITY_SUPPLIED}: ${fields} set by the admission webhook`), result.response.status?.message);
    });
  }

  it('CREATE without spec, or without an authenticated user name, is denied 400', () => {
    const { userInfo: _, ...anonymous } = create({ publicKey: KEY });
    for (const request of [create(undefined), create({ publicKey: KEY }, {}), create({ publicKey: KEY }, { username: '' }), anonymous]) {
      const result = reviewLoginRequest(request);
      assert.equal(result.outcome, 'invalid');
      assert.equal(result.response.status?.code, 400);
      assert.ok(result.response.status?.message.startsWith(WebhookErrorCode.LOGIN_INVALID));
    }
  });

  it('UPDATE: metadata-only changes pass, any spec change is denied 403', () => {
    const stored = { ...loginObject({ publicKey: KEY, username: 'alice', uid: '', groups: ['devs'] }), metadata: { name: 'login-x' } };
    const update = (object: unknown): AdmissionRequest => ({ uid: 'r-2', kind: KIND, operation: 'UPDATE', object, oldObject: stored, userInfo: { username: 'alice' } });
    const relabelled = { ...stored, metadata: { name: 'login-x', labels: { a: 'b' } } };
    assert.deepEqual(reviewLoginRequest(update(relabelled)), { response: { uid: 'r-2', allowed: true }, outcome: 'unchanged' });
    for (const spec of [
      { publicKey: KEY, username: 'admin', uid: '', groups: ['devs'] },
      { publicKey: KEY, username: 'alice', uid: '', groups: ['devs', 'system:masters'] },
      { publicKey: KEY, username: 'alice', uid: '', groups: ['devs'], ttlSeconds: 60 },
      { publicKey: KEY.replace('1', '2'), username: 'alice', uid: '', groups: ['devs'] },
    ]) {
      const result = reviewLoginRequest(update({ ...stored, spec }));
      assert.equal(result.outcome, 'spec-changed');
      assert.equal(result.response.status?.code, 403);
      assert.ok(result.response.status?.message.startsWith(WebhookErrorCode.LOGIN_SPEC_IMMUTABLE));
    }
  });

  it('other kinds, subresources and operations are admitted untouched', () => {
    const base = create({ publicKey: KEY, username: 'admin' });
    for (const request of [
      { ...base, kind: { group: '', version: 'v1', kind: 'Pod' } },
      { ...base, subResource: 'status' },
      { ...base, operation: 'DELETE' },
    ]) {
      assert.deepEqual(reviewLoginRequest(request), { response: { uid: 'r-1', allowed: true }, outcome: 'skipped' });
    }
  });
});

describe(`POST ${MUTATE_LOGIN_REQUESTS_PATH}`, () => {
  it('answers an AdmissionReview with the stamp and reports the outcome', async () => {
    const outcomes: LoginReviewOutcome[] = [];
    const app = buildWebhookApp({ log: pino({ level: 'silent' }), settings: TEST_SETTINGS, ownNamespace: 'narrowlink', onLoginReview: (o) => outcomes.push(o) });
    try {
      const request = create({ publicKey: KEY });
      const reply = await app.inject({ method: 'POST', url: MUTATE_LOGIN_REQUESTS_PATH, payload: { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request } });
      assert.equal(reply.statusCode, 200);
      const body = reply.json() as { apiVersion: string; kind: string; response: { uid: string; allowed: boolean; patch?: string } };
      assert.equal(body.kind, 'AdmissionReview');
      assert.equal(body.response.allowed, true);
      const patched = applyJsonPatch(request.object, patchOf(body.response)) as { spec: Record<string, unknown> };
      assert.equal(patched.spec.username, 'alice');

      const denied = await app.inject({
        method: 'POST',
        url: MUTATE_LOGIN_REQUESTS_PATH,
        payload: { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: create({ publicKey: KEY, username: 'admin' }) },
      });
      assert.equal((denied.json() as { response: { allowed: boolean } }).response.allowed, false);
      assert.deepEqual(outcomes, ['stamped', 'identity-supplied']);

      const bad = await app.inject({ method: 'POST', url: MUTATE_LOGIN_REQUESTS_PATH, payload: { kind: 'AdmissionReview' } });
      assert.equal(bad.statusCode, 400);
      assert.equal((bad.json() as { code: string }).code, WebhookErrorCode.BAD_REQUEST);
    } finally {
      await app.close();
    }
  });
});
