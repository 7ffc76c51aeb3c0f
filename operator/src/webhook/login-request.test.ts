import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { deriveLoginStampKey, LOGIN_STAMP_ANNOTATION, verifyLoginStamp } from '../login-stamp.ts';
import { WebhookErrorCode } from './errors.ts';
import { applyJsonPatch, type JsonPatchOp } from './json-patch.ts';
import { type LoginReviewOutcome, reviewLoginRequest } from './login-request.ts';
import type { AdmissionRequest } from './review.ts';
import { buildWebhookApp, MUTATE_LOGIN_REQUESTS_PATH } from './server.ts';
import { TEST_SETTINGS } from './test-fixtures.ts';

const KIND = { group: 'narrowlink.io', version: 'v1alpha1', kind: 'ClientLoginRequest' };
const X = '11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo';
const KEY = deriveLoginStampKey('test signing key');

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
    const request = create({ publicKey: X, ttlSeconds: 3600 });
    const result = reviewLoginRequest(request, KEY);
    assert.equal(result.outcome, 'stamped');
    assert.equal(result.response.allowed, true);
    assert.equal(result.response.uid, 'r-1');
    assert.equal(result.response.patchType, 'JSONPatch');
    const patched = applyJsonPatch(request.object, patchOf(result.response)) as { spec: Record<string, unknown>; metadata: { annotations?: Record<string, string> } };
    assert.deepEqual(patched.spec, { publicKey: X, ttlSeconds: 3600, username: 'alice', uid: 'u-1', groups: ['devs', 'system:authenticated'] });
    // The stamp the operator checks: over the namespace and exactly the stamped spec.
    const stamp = patched.metadata.annotations?.[LOGIN_STAMP_ANNOTATION];
    assert.ok(verifyLoginStamp(KEY, { namespace: 'narrowlink', publicKey: X, ttlSeconds: 3600, username: 'alice', uid: 'u-1', groups: ['devs', 'system:authenticated'] }, stamp));
    assert.ok(!verifyLoginStamp(deriveLoginStampKey('other'), { namespace: 'narrowlink', publicKey: X, ttlSeconds: 3600, username: 'alice', uid: 'u-1', groups: ['devs', 'system:authenticated'] }, stamp));
  });

  it('CREATE: a stamp annotation the client wrote itself is replaced, other annotations are kept', () => {
    const request = create({ publicKey: X });
    (request.object as { metadata: Record<string, unknown> }).metadata.annotations = { [LOGIN_STAMP_ANNOTATION]: 'forged', note: 'mine' };
    const patched = applyJsonPatch(request.object, patchOf(reviewLoginRequest(request, KEY).response)) as { metadata: { annotations: Record<string, string> } };
    assert.equal(patched.metadata.annotations.note, 'mine');
    assert.notEqual(patched.metadata.annotations[LOGIN_STAMP_ANNOTATION], 'forged');
    assert.ok(verifyLoginStamp(KEY, { namespace: 'narrowlink', publicKey: X, ttlSeconds: undefined, username: 'alice', uid: 'u-1', groups: ['devs', 'system:authenticated'] }, patched.metadata.annotations[LOGIN_STAMP_ANNOTATION]));
  });

  it('CREATE outside the login namespace is refused (400) naming the namespace; UPDATE there is not judged by it', () => {
    const elsewhere = { ...create({ publicKey: X }), namespace: 'default' };
    const result = reviewLoginRequest(elsewhere, KEY, 'narrowlink');
    assert.equal(result.outcome, 'invalid');
    assert.equal(result.response.status?.code, 400);
    assert.match(result.response.status?.message ?? '', /^NL_ERR_WEBHOOK_LOGIN_INVALID: ClientLoginRequests are answered only in namespace "narrowlink"/);
    assert.equal(reviewLoginRequest(create({ publicKey: X }), KEY, 'narrowlink').outcome, 'stamped');
  });

  it('CREATE without a stamp key configured is refused (500), not admitted unverifiable', () => {
    const result = reviewLoginRequest(create({ publicKey: X }), undefined);
    assert.equal(result.response.allowed, false);
    assert.equal(result.response.status?.code, 500);
  });

  it('CREATE by a user without uid or groups (a client certificate has no uid): no uid, groups []', () => {
    for (const userInfo of [{ username: 'alice' }, { username: 'alice', uid: '' }]) {
      const request = create({ publicKey: X }, userInfo);
      const patched = applyJsonPatch(request.object, patchOf(reviewLoginRequest(request, KEY).response)) as { spec: Record<string, unknown> };
      assert.deepEqual(patched.spec, { publicKey: X, username: 'alice', groups: [] });
    }
  });

  for (const [name, spec, fields] of [
    ['username', { publicKey: X, username: 'admin' }, 'spec.username is'],
    ['an empty uid', { publicKey: X, uid: '' }, 'spec.uid is'],
    ['groups', { publicKey: X, groups: ['system:masters'] }, 'spec.groups is'],
    ['all three', { publicKey: X, username: 'alice', uid: 'u-1', groups: [] }, 'spec.username, spec.uid, spec.groups are'],
    ['a null username', { publicKey: X, username: null }, 'spec.username is'],
  ] as const) {
    it(`CREATE that supplies ${name} is denied 403 with a code naming the fields`, () => {
      const result = reviewLoginRequest(create(spec), KEY);
      assert.equal(result.outcome, 'identity-supplied');
      assert.equal(result.response.allowed, false);
      assert.equal(result.response.patch, undefined);
      assert.equal(result.response.status?.code, 403);
      assert.ok(result.response.status?.message.startsWith(`${WebhookErrorCode.LOGIN_IDENTITY_SUPPLIED}: ${fields} set by the admission webhook`), result.response.status?.message);
    });
  }

  it('CREATE without spec, or without an authenticated user name, is denied 400', () => {
    const { userInfo: _, ...anonymous } = create({ publicKey: X });
    for (const request of [create(undefined), create({ publicKey: X }, {}), create({ publicKey: X }, { username: '' }), anonymous]) {
      const result = reviewLoginRequest(request, KEY);
      assert.equal(result.outcome, 'invalid');
      assert.equal(result.response.status?.code, 400);
      assert.ok(result.response.status?.message.startsWith(WebhookErrorCode.LOGIN_INVALID));
    }
  });

  it('UPDATE: metadata-only changes pass, any spec change is denied 403', () => {
    const stored = { ...loginObject({ publicKey: X, username: 'alice', uid: '', groups: ['devs'] }), metadata: { name: 'login-x' } };
    const update = (object: unknown): AdmissionRequest => ({ uid: 'r-2', kind: KIND, operation: 'UPDATE', object, oldObject: stored, userInfo: { username: 'alice' } });
    const relabelled = { ...stored, metadata: { name: 'login-x', labels: { a: 'b' } } };
    assert.deepEqual(reviewLoginRequest(update(relabelled), KEY), { response: { uid: 'r-2', allowed: true }, outcome: 'unchanged' });
    for (const spec of [
      { publicKey: X, username: 'admin', uid: '', groups: ['devs'] },
      { publicKey: X, username: 'alice', uid: '', groups: ['devs', 'system:masters'] },
      { publicKey: X, username: 'alice', uid: '', groups: ['devs'], ttlSeconds: 60 },
      { publicKey: X.replace('1', '2'), username: 'alice', uid: '', groups: ['devs'] },
    ]) {
      const result = reviewLoginRequest(update({ ...stored, spec }), KEY);
      assert.equal(result.outcome, 'spec-changed');
      assert.equal(result.response.status?.code, 403);
      assert.ok(result.response.status?.message.startsWith(WebhookErrorCode.LOGIN_SPEC_IMMUTABLE));
    }
  });

  it('other kinds, subresources and operations are admitted untouched', () => {
    const base = create({ publicKey: X, username: 'admin' });
    for (const request of [
      { ...base, kind: { group: '', version: 'v1', kind: 'Pod' } },
      { ...base, subResource: 'status' },
      { ...base, operation: 'DELETE' },
    ]) {
      assert.deepEqual(reviewLoginRequest(request, KEY), { response: { uid: 'r-1', allowed: true }, outcome: 'skipped' });
    }
  });
});

describe(`POST ${MUTATE_LOGIN_REQUESTS_PATH}`, () => {
  it('answers an AdmissionReview with the stamp and reports the outcome', async () => {
    const outcomes: LoginReviewOutcome[] = [];
    const app = buildWebhookApp({ log: pino({ level: 'silent' }), settings: TEST_SETTINGS, ownNamespace: 'narrowlink', loginStampKey: KEY, onLoginReview: (o) => outcomes.push(o) });
    try {
      const request = create({ publicKey: X });
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
        payload: { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: create({ publicKey: X, username: 'admin' }) },
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
