/**
 * The cluster side of `narrowlink login` on a real kube-apiserver 1.20 (./cluster.ts): the CRDs of crds/, the
 * chart's login RBAC and discovery ConfigMap, the operator's webhook (called by the API server over HTTPS) and
 * its control loop, all from ./login-fixtures.ts. Users authenticated three ways (client certificate with O=
 * groups, static bearer token, ServiceAccount token) each create a ClientLoginRequest with their own credential
 * and get a token whose sub/groups are exactly what the API server authenticated, bound to their key. A request
 * naming another user, a spec change, a user without the RBAC grant, a second request over the rate limit, a
 * request that bypassed the webhook (its configuration deleted) and requests left behind are each checked. The tests share one apiserver and run in order.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { KubeConfig } from '@kubernetes/client-node';
import { KubeError, type KubeObject, RestKubeClient, Resources } from '@narrowlink/kube';
import { type ClientLoginRequest, loginRequestResource } from '@narrowlink/operator';
import { LOGIN_STAMP_ANNOTATION } from '@narrowlink/operator/testing';
import { generateProofKey, jwkThumbprint, verifyToken } from '@narrowlink/protocol';
import { waitFor } from '../helpers/wait.ts';
import { type ApiServer, type StaticTokenUser, useApiServer } from './cluster.ts';
import { clientCertUser, LOGIN_WEBHOOK_CONFIGURATION, type LoginBackend, serviceAccountUser, startLoginBackend, staticTokenUser, type TestUser } from './login-fixtures.ts';
import { toolsUnavailableReason } from './tools.ts';

const NS = 'narrowlink-system';
const TTL_CAP_SECONDS = 3600;
/** Short collection times so the test sees the operator delete what nobody deleted. */
const RETAIN_AFTER_DONE_MS = 6_000;
const REQUEST_TTL_MS = 20_000;

const CAROL: StaticTokenUser = { token: randomBytes(24).toString('hex'), user: 'carol', uid: 'carol-uid-7', groups: ['ops', 'oncall'] };

/** A client acting with the user's own kubeconfig credential. */
async function clientOf(user: TestUser): Promise<RestKubeClient> {
  const kc = new KubeConfig();
  kc.loadFromFile(user.kubeconfigPath);
  return RestKubeClient.fromKubeConfig(kc);
}

function loginRequest(spec: Record<string, unknown>, name?: string): KubeObject {
  return {
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'ClientLoginRequest',
    metadata: name ? { name, namespace: NS } : { generateName: 'login-', namespace: NS },
    spec,
  };
}

function ready(request: KubeObject | undefined): { status: string; reason: string; message: string } | undefined {
  return (request as unknown as ClientLoginRequest | undefined)?.status?.conditions?.find((c) => c.type === 'Ready');
}

/** Creates a request as `user` and waits (as `user`, like the CLI) until the operator decided it. */
async function login(user: TestUser, spec: Record<string, unknown>): Promise<{ request: ClientLoginRequest; client: RestKubeClient }> {
  const client = await clientOf(user);
  const created = await client.create(loginRequestResource, loginRequest(spec));
  const name = created.metadata.name ?? '';
  const decided = await waitFor(`ClientLoginRequest ${name} decided`, async () => {
    const current = await client.get(loginRequestResource, NS, name);
    return ready(current) ? current : undefined;
  });
  return { request: decided as unknown as ClientLoginRequest, client };
}

async function expectRefused(promise: Promise<unknown>, status: number, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof KubeError, String(error));
    assert.equal(error.status, status, error.message);
    assert.match(error.message, pattern);
    return true;
  });
}

describe('narrowlink login, cluster side, on a real kube-apiserver', () => {
  let backend: LoginBackend | undefined;
  let dir: string | undefined;
  after(async () => {
    await backend?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  const k8s = useApiServer({ staticTokenUsers: [CAROL] });

  let alice: TestUser;
  let mallory: TestUser;
  const issuedTokens: string[] = [];

  const setup = async (t: Parameters<typeof k8s.require>[0]): Promise<ApiServer | undefined> => {
    const api = k8s.require(t);
    if (!api) return undefined;
    const tools = toolsUnavailableReason();
    if (tools) {
      t.skip(`k8s tier: SKIPPED (${tools})`);
      return undefined;
    }
    if (backend) return api;
    dir = await mkdtemp(join(tmpdir(), 'nl-k8s-login-'));
    backend = await startLoginBackend(api, {
      namespace: NS,
      scratchDir: dir,
      login: { tokenTtlSeconds: TTL_CAP_SECONDS, rateLimitPerMinute: 1, retainAfterDoneMs: RETAIN_AFTER_DONE_MS, requestTtlMs: REQUEST_TTL_MS },
      // Who may log in, through the chart's own value: a group (from alice's certificate), a user (carol's
      // static token) and a ServiceAccount.
      chartValues: {
        login: {
          tokenTtlSeconds: TTL_CAP_SECONDS,
          subjects: [
            { kind: 'Group', name: 'devs' },
            { kind: 'User', name: 'carol' },
            { kind: 'ServiceAccount', name: 'robot', namespace: 'ci' },
          ],
        },
      },
    });
    alice = await clientCertUser(api, dir, { user: 'alice', groups: ['devs', 'qa'] });
    mallory = await clientCertUser(api, dir, { user: 'mallory', groups: ['contractors'] });
    return api;
  };

  /** Checks the token of an issued request against what the API server authenticated and the key. */
  async function checkIssued(request: ClientLoginRequest, user: TestUser, x: string, ttlSeconds: number): Promise<void> {
    const condition = ready(request as unknown as KubeObject);
    assert.equal(condition?.status, 'True', condition?.message);
    assert.equal(condition?.reason, 'Issued');
    assert.deepEqual([request.spec.username, request.spec.groups], [user.username, user.groups], 'the webhook stamped the authenticated identity');
    const token = request.status?.token ?? '';
    issuedTokens.push(token);
    const claims = await verifyToken(token, { publicKeysPem: [backend?.signingKey.publicKeyPem ?? ''], expectedType: 'client' });
    assert.equal(claims.sub, user.username);
    assert.deepEqual(claims.groups, user.groups);
    assert.deepEqual(claims.cnf, { jkt: jwkThumbprint(x) }, 'bound to the requester key');
    assert.equal(claims.exp - claims.iat, ttlSeconds);
    assert.equal(Date.parse(request.status?.expiresAt ?? ''), claims.exp * 1000);
  }

  it('setup: CRDs, chart RBAC + discovery ConfigMap, webhook and operator; every authenticated user reads the discovery ConfigMap', async (t) => {
    const api = await setup(t);
    if (!api) return;
    const discovery = await (await clientOf(mallory)).get(Resources.configMap, NS, 'narrowlink-discovery');
    const data = discovery?.data as Record<string, string> | undefined;
    assert.equal(data?.loginNamespace, NS);
    assert.equal(data?.tokenTtlSeconds, String(TTL_CAP_SECONDS));
    assert.deepEqual(JSON.parse(data?.gatewayUrls ?? ''), [`wss://narrowlink-gateway.${NS}.svc:443`]);
    assert.deepEqual(JSON.parse(data?.natProbePorts ?? ''), [3478, 3479]);
    // ...and nothing else in the namespace.
    await expectRefused((await clientOf(mallory)).list(Resources.configMap, { namespace: NS }), 403, /forbidden/i);
  });

  it('a client-certificate user (group from O=) gets a token for exactly its name and groups, bound to its key', async (t) => {
    const api = await setup(t);
    if (!api) return;
    const key = generateProofKey();
    const { request } = await login(alice, { publicKey: key.x, ttlSeconds: 600 });
    assert.deepEqual(alice.groups, ['devs', 'qa', 'system:authenticated']);
    await checkIssued(request, alice, key.x, 600);
  });

  it('a static-token user gets its name, uid and groups; a lifetime above the cap is capped', async (t) => {
    const api = await setup(t);
    if (!api || !dir) return;
    const carol = await staticTokenUser(api, dir, CAROL);
    const key = generateProofKey();
    const { request } = await login(carol, { publicKey: key.x, ttlSeconds: 999_999 });
    assert.equal(request.spec.uid, CAROL.uid);
    await checkIssued(request, carol, key.x, TTL_CAP_SECONDS);
  });

  it('a ServiceAccount (TokenRequest token) gets system:serviceaccount:NS:NAME and its groups; no ttlSeconds means the cap', async (t) => {
    const api = await setup(t);
    if (!api || !dir) return;
    const robot = await serviceAccountUser(api, dir, { namespace: 'ci', name: 'robot' });
    const key = generateProofKey();
    const { request } = await login(robot, { publicKey: key.x });
    assert.equal(request.spec.username, 'system:serviceaccount:ci:robot');
    await checkIssued(request, robot, key.x, TTL_CAP_SECONDS);
  });

  it('the webhook refuses a request that names a user, uid or groups itself, and any spec change', async (t) => {
    const api = await setup(t);
    if (!api) return;
    const client = await clientOf(alice);
    const { x } = generateProofKey();
    await expectRefused(client.create(loginRequestResource, loginRequest({ publicKey: x, username: 'admin' })), 403, /NL_ERR_WEBHOOK_LOGIN_IDENTITY_SUPPLIED: spec\.username is set by the admission webhook/);
    await expectRefused(client.create(loginRequestResource, loginRequest({ publicKey: x, groups: ['system:masters'] })), 403, /NL_ERR_WEBHOOK_LOGIN_IDENTITY_SUPPLIED: spec\.groups/);
    // The admin is refused the same way: nobody chooses whom a token names.
    const admin = await RestKubeClient.fromKubeConfig(api.kubeConfig());
    await expectRefused(admin.create(loginRequestResource, loginRequest({ publicKey: x, username: 'alice', uid: '', groups: [] })), 403, /NL_ERR_WEBHOOK_LOGIN_IDENTITY_SUPPLIED/);

    // Requests are answered in the login namespace only; elsewhere they are refused at once.
    await expectRefused(
      admin.create(loginRequestResource, { ...loginRequest({ publicKey: x }), metadata: { generateName: 'login-', namespace: 'default' } }),
      400,
      new RegExp(`NL_ERR_WEBHOOK_LOGIN_INVALID: ClientLoginRequests are answered only in namespace "${NS}"`),
    );

    // A stored request cannot be re-pointed at another user or key, not even by the admin.
    const stored = await admin.create(loginRequestResource, loginRequest({ publicKey: x }, 'immutable'));
    assert.equal((stored.spec as { username?: string }).username, 'admin');
    await expectRefused(admin.mergePatch(loginRequestResource, NS, 'immutable', { spec: { username: 'alice' } }), 403, /NL_ERR_WEBHOOK_LOGIN_SPEC_IMMUTABLE/);
    await expectRefused(admin.mergePatch(loginRequestResource, NS, 'immutable', { spec: { publicKey: generateProofKey().x } }), 403, /NL_ERR_WEBHOOK_LOGIN_SPEC_IMMUTABLE/);
    // Metadata may change.
    await admin.mergePatch(loginRequestResource, NS, 'immutable', { metadata: { labels: { note: 'ok' } } });
    // A user cannot write a token into status: that subresource is the operator's.
    await expectRefused((await clientOf(alice)).mergePatch(loginRequestResource, NS, 'immutable', { status: { token: 'forged' } }, { subresource: 'status' }), 403, /forbidden/i);
  });

  it('a user without the narrowlink-login grant is Forbidden by RBAC', async (t) => {
    const api = await setup(t);
    if (!api) return;
    const client = await clientOf(mallory);
    await expectRefused(
      client.create(loginRequestResource, loginRequest({ publicKey: generateProofKey().x })),
      403,
      /clientloginrequests\.narrowlink\.io is forbidden: User "mallory" cannot create resource "clientloginrequests"/,
    );
  });

  it('a second request within the minute is RateLimited (limit 1/min per user), with no token', async (t) => {
    const api = await setup(t);
    if (!api) return;
    // alice used her one token of this minute above.
    const { request } = await login(alice, { publicKey: generateProofKey().x });
    const condition = ready(request as unknown as KubeObject);
    assert.equal(condition?.status, 'False');
    assert.equal(condition?.reason, 'RateLimited');
    assert.match(condition?.message ?? '', /^alice asked for more than 1 tokens a minute; create a new request in \d+ s$/);
    assert.equal(request.status?.token, undefined);
  });

  it('with the webhook configuration gone, a request naming another user (and a copied stamp) is Denied: nothing is signed', async (t) => {
    const api = await setup(t);
    if (!api || !backend) return;
    const admin = await RestKubeClient.fromKubeConfig(api.kubeConfig());
    const webhookConfigurations = { group: 'admissionregistration.k8s.io', version: 'v1', plural: 'mutatingwebhookconfigurations', kind: 'MutatingWebhookConfiguration', namespaced: false };
    // A stamp from a real request of alice's, to copy.
    const { x } = generateProofKey();
    const genuine = await admin.create(loginRequestResource, loginRequest({ publicKey: x }, 'genuine'));
    const copied = genuine.metadata.annotations?.[LOGIN_STAMP_ANNOTATION];
    assert.ok(copied, 'the webhook stamped the request');
    await admin.delete(webhookConfigurations, undefined, LOGIN_WEBHOOK_CONFIGURATION);
    try {
      // The API server drops the webhook asynchronously: wait until a create naming a user is stored as written.
      const forged = await waitFor('requests stored without the webhook', async () => {
        const name = `forged-${Date.now()}`;
        const created = await (await clientOf(alice)).create(
          loginRequestResource,
          {
            ...loginRequest({ publicKey: x, username: 'admin', groups: ['system:masters', 'system:authenticated'] }, name),
            metadata: { name, namespace: NS, annotations: { [LOGIN_STAMP_ANNOTATION]: copied } },
          },
        ).catch(() => undefined);
        return created && (created.spec as { username?: string }).username === 'admin' ? created : undefined;
      }, 30_000, 300);
      const decided = await waitFor('the forged request decided', async () => {
        const current = await admin.get(loginRequestResource, NS, forged.metadata.name ?? '');
        return ready(current) ? (current as unknown as ClientLoginRequest) : undefined;
      });
      const condition = ready(decided as unknown as KubeObject);
      assert.deepEqual([condition?.status, condition?.reason], ['False', 'Denied']);
      assert.equal(decided.status?.token, undefined);
      // ...and a Warning Event on it for the admin.
      await waitFor('a Denied Event', async () =>
        (await admin.list(Resources.event, { namespace: NS })).items.some(
          (e) => (e.involvedObject as { name?: string }).name === forged.metadata.name && e.reason === 'Denied' && e.type === 'Warning',
        ),
      );
    } finally {
      await admin.apply(webhookConfigurations, backend.webhookConfiguration, { fieldManager: 'narrowlink-test', force: true });
    }
  });

  it('requests nobody deleted are collected by the operator; the token never reaches its log', async (t) => {
    const api = await setup(t);
    if (!api || !backend) return;
    const admin = await RestKubeClient.fromKubeConfig(api.kubeConfig());
    // Every request here was decided (issued, or refused as RateLimited), including the admin's "immutable" one:
    // each goes RETAIN_AFTER_DONE_MS after its decision, and nothing outlives the request TTL.
    await waitFor(
      'every ClientLoginRequest collected',
      async () => (await admin.list(loginRequestResource, { namespace: NS })).items.length === 0,
      REQUEST_TTL_MS + 10_000,
      250,
    );
    const logText = JSON.stringify(backend.logs);
    assert.ok(issuedTokens.length >= 3);
    for (const token of issuedTokens) {
      assert.ok(!logText.includes(token), 'an issued token appears in the operator log');
      assert.ok(!logText.includes(token.split('.')[2] ?? '-'), 'a token signature appears in the operator log');
    }
    assert.ok(backend.logs.some((l) => l.msg === 'client token issued' && l.user === 'alice'), 'issuance is logged (without the token)');
    assert.ok(backend.logs.some((l) => l.msg === 'login request collected'), 'collection is logged');
  });
});
