import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { connect } from 'node:tls';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { makeTestCertificate, type TestCertificate } from '../../../test/helpers/tls.ts';
import { WebhookError } from './errors.ts';
import { applyJsonPatch, type JsonPatchOp } from './json-patch.ts';
import type { AdmissionReviewResponse, ReviewOutcome } from './review.ts';
import { buildWebhookApp, type ReviewEvent, startWebhookServer, type WebhookAppOptions } from './server.ts';
import { INJECT_ANNOTATIONS, TEST_SETTINGS } from './test-fixtures.ts';

const log = pino({ level: 'silent' });
const OWN_NAMESPACE = 'narrowlink-system';

interface PodJson {
  apiVersion: 'v1';
  kind: 'Pod';
  metadata: { name?: string; generateName?: string; namespace?: string; annotations?: Record<string, string>; labels?: Record<string, string> };
  spec: { containers: Array<{ name: string; env?: Array<{ name: string; value?: string }> }>; volumes?: Array<{ name: string }> };
}

function podJson(annotations?: Record<string, string>, name: string | null = 'web-1'): PodJson {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { ...(name ? { name } : { generateName: 'batch-' }), ...(annotations ? { annotations } : {}) },
    spec: { containers: [{ name: 'app' }] },
  };
}

let uidCounter = 0;
function review(object: unknown, over: Record<string, unknown> = {}): Record<string, unknown> {
  uidCounter += 1;
  const metadata = (object as PodJson).metadata ?? {};
  return {
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid: `uid-${uidCounter}`,
      kind: { group: '', version: 'v1', kind: 'Pod' },
      resource: { group: '', version: 'v1', resource: 'pods' },
      requestKind: { group: '', version: 'v1', kind: 'Pod' },
      operation: 'CREATE',
      ...(metadata.name ? { name: metadata.name } : {}),
      namespace: 'shop',
      userInfo: { username: 'admin' },
      object,
      oldObject: null,
      dryRun: false,
      options: { apiVersion: 'meta.k8s.io/v1', kind: 'CreateOptions' },
      ...over,
    },
  };
}

function app(over: Partial<WebhookAppOptions> = {}): FastifyInstance {
  return buildWebhookApp({ log, settings: TEST_SETTINGS, ownNamespace: OWN_NAMESPACE, ...over });
}

async function post(a: FastifyInstance, body: unknown): Promise<AdmissionReviewResponse & { uid: string }> {
  const res = await a.inject({ method: 'POST', url: '/mutate-pods', payload: body as Record<string, unknown> });
  assert.equal(res.statusCode, 200, res.body);
  assert.match(String(res.headers['content-type']), /^application\/json/);
  const parsed = res.json() as AdmissionReviewResponse;
  assert.equal(parsed.apiVersion, 'admission.k8s.io/v1');
  assert.equal(parsed.kind, 'AdmissionReview');
  return { ...parsed, uid: (body as { request?: { uid: string } }).request?.uid ?? '' };
}

function decodePatch(r: AdmissionReviewResponse): JsonPatchOp[] {
  assert.equal(r.response.patchType, 'JSONPatch');
  return JSON.parse(Buffer.from(r.response.patch as string, 'base64').toString('utf8')) as JsonPatchOp[];
}

describe('webhook app: AdmissionReview round trips (inject)', () => {
  it('injects: uid echoed, base64 JSON patch that yields exactly one sidecar and the token volume', async () => {
    const a = app();
    const pod = podJson(INJECT_ANNOTATIONS);
    const r = await post(a, review(pod));
    assert.equal(r.response.uid, r.uid);
    assert.equal(r.response.allowed, true);
    assert.equal(r.response.warnings, undefined);
    const patched = applyJsonPatch(pod, decodePatch(r));
    assert.deepEqual(
      patched.spec.containers.map((c) => c.name),
      ['app', 'narrowlink-agent'],
    );
    assert.deepEqual(
      patched.spec.volumes?.map((v) => v.name),
      ['narrowlink-token'],
    );
    assert.equal(patched.metadata.annotations?.['narrowlink.io/injected'], 'true');
    assert.equal(patched.metadata.labels?.['narrowlink.io/agent'], 'web-1');

    // Re-invocation with the mutated pod: allowed, no patch.
    const again = await post(a, review(patched));
    assert.deepEqual(Object.keys(again.response).sort(), ['allowed', 'uid']);
    await a.close();
  });

  it('dry-run gets byte-identical patch', async () => {
    const a = app();
    const pod = podJson(INJECT_ANNOTATIONS);
    const wet = await post(a, review(pod));
    const dry = await post(a, review(pod, { dryRun: true }));
    assert.equal(dry.response.patch, wet.response.patch);
    assert.equal(dry.response.allowed, true);
    await a.close();
  });

  it('generateName pod: request.name absent, agent name from the prefix', async () => {
    const a = app();
    const pod = podJson(INJECT_ANNOTATIONS, null);
    const body = review(pod);
    assert.equal((body.request as Record<string, unknown>).name, undefined);
    const r = await post(a, body);
    const patched = applyJsonPatch(pod, decodePatch(r));
    assert.equal(patched.metadata.labels?.['narrowlink.io/agent'], 'batch');
    await a.close();
  });

  it('reports every outcome to onReview', async () => {
    const events: ReviewEvent[] = [];
    const a = app({ onReview: (e) => events.push(e) });
    await post(a, review(podJson(INJECT_ANNOTATIONS), { dryRun: true }));
    await post(a, review(podJson()));
    assert.deepEqual(
      events.map((e) => [e.outcome, e.dryRun]),
      [
        ['injected', true],
        ['not-requested', false],
      ],
    );
    assert.ok(events.every((e) => e.durationSeconds >= 0 && e.durationSeconds < 5));
    await a.close();
  });

  it('an onReview that throws does not change the answer', async () => {
    const a = app({
      onReview: () => {
        throw new Error('metrics broke');
      },
    });
    const r = await post(a, review(podJson(INJECT_ANNOTATIONS)));
    assert.equal(r.response.patchType, 'JSONPatch');
    await a.close();
  });
});

describe('webhook app: pods left alone', () => {
  const cases: Array<{ name: string; body: () => Record<string, unknown>; outcome: ReviewOutcome }> = [
    { name: 'no inject annotation', body: () => review(podJson()), outcome: 'not-requested' },
    { name: 'inject "false"', body: () => review(podJson({ ...INJECT_ANNOTATIONS, 'narrowlink.io/inject': 'false' })), outcome: 'not-requested' },
    { name: "the operator's own namespace", body: () => review(podJson(INJECT_ANNOTATIONS), { namespace: OWN_NAMESPACE }), outcome: 'skipped-own-namespace' },
    { name: 'UPDATE', body: () => review(podJson(INJECT_ANNOTATIONS), { operation: 'UPDATE' }), outcome: 'skipped-not-pod-create' },
    {
      name: 'not a Pod',
      body: () => review({ kind: 'Deployment', metadata: { annotations: INJECT_ANNOTATIONS } }, { kind: { group: 'apps', version: 'v1', kind: 'Deployment' } }),
      outcome: 'skipped-not-pod-create',
    },
    {
      name: 'a Pod subresource (ephemeralcontainers)',
      body: () => review(podJson(INJECT_ANNOTATIONS), { subResource: 'ephemeralcontainers' }),
      outcome: 'skipped-not-pod-create',
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const events: ReviewEvent[] = [];
      const a = app({ onReview: (e) => events.push(e) });
      const body = c.body();
      const r = await post(a, body);
      assert.deepEqual(r.response, { uid: r.uid, allowed: true });
      assert.equal(events[0]?.outcome, c.outcome);
      await a.close();
    });
  }
});

describe('webhook app: invalid annotations and internal errors', () => {
  const invalid = { 'narrowlink.io/inject': 'true', 'narrowlink.io/expose': 'HTTP=99999' };

  it('non-strict: admitted unchanged with coded warnings', async () => {
    const a = app();
    const r = await post(a, review(podJson(invalid)));
    assert.equal(r.response.allowed, true);
    assert.equal(r.response.patch, undefined);
    assert.equal(r.response.patchType, undefined);
    const warnings = r.response.warnings ?? [];
    assert.equal(warnings.length, 3);
    assert.ok(warnings.slice(0, 2).every((w) => w.startsWith('NL_ERR_WEBHOOK_INVALID_ANNOTATIONS: narrowlink.io/expose: ')));
    assert.match(warnings[2] as string, /admitted without the narrowlink-agent sidecar/);
    await a.close();
  });

  it('strict: denied with a status naming the code and every problem', async () => {
    const a = app({ strict: true });
    const r = await post(a, review(podJson(invalid)));
    assert.equal(r.response.allowed, false);
    assert.equal(r.response.status?.code, 400);
    assert.match(r.response.status?.message ?? '', /^NL_ERR_WEBHOOK_INVALID_ANNOTATIONS: .*port name "HTTP".*; .*port "99999"/);
    assert.equal(r.response.patch, undefined);
    await a.close();
  });

  it('strict still admits pods that do not opt in, and its own namespace', async () => {
    const a = app({ strict: true });
    assert.equal((await post(a, review(podJson()))).response.allowed, true);
    assert.equal((await post(a, review(podJson(invalid), { namespace: OWN_NAMESPACE }))).response.allowed, true);
    await a.close();
  });

  const broken = () => {
    throw new TypeError('boom: secret detail');
  };
  it('internal error, non-strict: admitted unchanged with a masked warning', async () => {
    const a = app({ patcher: broken });
    const r = await post(a, review(podJson(INJECT_ANNOTATIONS)));
    assert.equal(r.response.allowed, true);
    assert.equal(r.response.patch, undefined);
    assert.match(r.response.warnings?.[0] ?? '', /^NL_ERR_WEBHOOK_INTERNAL: /);
    assert.ok(!JSON.stringify(r).includes('secret detail'), 'internal details never reach the API server');
    await a.close();
  });

  it('internal error, strict: denied with 500 in the status, still HTTP 200', async () => {
    const a = app({ patcher: broken, strict: true });
    const r = await post(a, review(podJson(INJECT_ANNOTATIONS)));
    assert.equal(r.response.allowed, false);
    assert.equal(r.response.status?.code, 500);
    assert.ok(!JSON.stringify(r).includes('secret detail'));
    await a.close();
  });
});

describe('webhook app: malformed requests', () => {
  const cases: Array<{ name: string; payload: string; contentType?: string; status: number }> = [
    { name: 'not JSON', payload: '{"apiVersion":', status: 400 },
    { name: 'empty JSON body', payload: '', status: 400 },
    { name: 'JSON array', payload: '[]', status: 400 },
    { name: 'v1beta1 review', payload: JSON.stringify({ ...review(podJson()), apiVersion: 'admission.k8s.io/v1beta1' }), status: 400 },
    { name: 'no request', payload: JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview' }), status: 400 },
    {
      name: 'request without uid',
      payload: JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE' } }),
      status: 400,
    },
    { name: 'plain text', payload: 'hello', contentType: 'text/plain', status: 400 },
    { name: 'unsupported content type', payload: '<x/>', contentType: 'application/xml', status: 415 },
  ];
  for (const c of cases) {
    it(`${c.name} → ${c.status} with a coded JSON error`, async () => {
      const a = app();
      const res = await a.inject({
        method: 'POST',
        url: '/mutate-pods',
        payload: c.payload,
        headers: { 'content-type': c.contentType ?? 'application/json' },
      });
      assert.equal(res.statusCode, c.status, res.body);
      const body = res.json() as { code: string; message: string };
      assert.equal(body.code, 'NL_ERR_WEBHOOK_BAD_REQUEST');
      assert.ok(body.message.length > 0);
      await a.close();
    });
  }

  it('names the bad field', async () => {
    const a = app();
    const res = await a.inject({ method: 'POST', url: '/mutate-pods', payload: { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: 7 } } });
    assert.match((res.json() as { message: string }).message, /request\.uid/);
    await a.close();
  });

  it('unknown route → 404 coded; /healthz answers', async () => {
    const a = app();
    const res = await a.inject({ method: 'GET', url: '/mutate-pods' });
    assert.equal(res.statusCode, 404);
    assert.equal((res.json() as { code: string }).code, 'NL_ERR_WEBHOOK_NOT_FOUND');
    const health = await a.inject({ method: 'GET', url: '/healthz' });
    assert.deepEqual(health.json(), { status: 'ok' });
    await a.close();
  });
});

/** The leaf certificate a TLS server presents on a fresh connection, as its SHA-256 fingerprint. */
function servedFingerprint(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      const cert = socket.getPeerCertificate();
      socket.end();
      resolve(cert.fingerprint256);
    });
    socket.on('error', reject);
  });
}

function fingerprintOf(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('startWebhookServer: TLS and certificate rotation', () => {
  const certs: TestCertificate[] = [];
  after(async () => {
    for (const c of certs) await c.remove();
  });

  it('serves AdmissionReviews over TLS and picks up a rotated certificate (rename over the files)', async () => {
    const first = await makeTestCertificate();
    const second = await makeTestCertificate();
    certs.push(first, second);
    // The served files live in their own directory, like a mounted Secret.
    const served = await makeTestCertificate();
    certs.push(served);
    await copyFile(first.certFile, join(served.dir, 'tls.crt'));
    await copyFile(first.keyFile, join(served.dir, 'tls.key'));
    const server = await startWebhookServer({
      log,
      settings: TEST_SETTINGS,
      ownNamespace: OWN_NAMESPACE,
      host: '127.0.0.1',
      port: 0,
      certFile: join(served.dir, 'tls.crt'),
      keyFile: join(served.dir, 'tls.key'),
      certPollMs: 60_000, // the directory watch must do it
    });
    try {
      assert.match(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
      assert.equal(await servedFingerprint(server.port, first.ca), fingerprintOf(first.cert));

      const res = await fetch(`${server.url}/healthz`).catch((e: unknown) => e);
      assert.ok(res instanceof Error, 'an untrusted client is refused by TLS');

      // A real HTTPS round trip with the CA.
      const { request } = await import('node:https');
      const body = JSON.stringify(review(podJson(INJECT_ANNOTATIONS)));
      const answer = await new Promise<{ status: number; json: AdmissionReviewResponse }>((resolve, reject) => {
        const req = request(
          `${server.url}/mutate-pods`,
          { method: 'POST', ca: first.ca, headers: { 'content-type': 'application/json' } },
          (r) => {
            let text = '';
            r.setEncoding('utf8');
            r.on('data', (d: string) => {
              text += d;
            });
            r.on('end', () => resolve({ status: r.statusCode ?? 0, json: JSON.parse(text) as AdmissionReviewResponse }));
          },
        );
        req.on('error', reject);
        req.end(body);
      });
      assert.equal(answer.status, 200);
      assert.equal(answer.json.response.patchType, 'JSONPatch');

      // Rotate: write the new pair next to the old one, then rename over (what writers and the kubelet do).
      await writeFile(join(served.dir, 'tls.key.new'), second.key);
      await writeFile(join(served.dir, 'tls.crt.new'), second.cert);
      await rename(join(served.dir, 'tls.key.new'), join(served.dir, 'tls.key'));
      await rename(join(served.dir, 'tls.crt.new'), join(served.dir, 'tls.crt'));
      await waitFor('the rotated certificate to be served', async () => (await servedFingerprint(server.port, second.ca).catch(() => '')) === fingerprintOf(second.cert));
    } finally {
      await server.close();
    }
  });

  it('a half-rotated pair (new cert, old key) keeps the old certificate until the key arrives', async () => {
    const first = await makeTestCertificate();
    const second = await makeTestCertificate();
    certs.push(first, second);
    const server = await startWebhookServer({
      log,
      settings: TEST_SETTINGS,
      ownNamespace: OWN_NAMESPACE,
      host: '127.0.0.1',
      port: 0,
      certFile: first.certFile,
      keyFile: first.keyFile,
      certPollMs: 60_000,
    });
    try {
      await writeFile(first.certFile, second.cert);
      assert.equal(await server.reloadCertificate(), false);
      assert.equal(await servedFingerprint(server.port, first.ca), fingerprintOf(first.cert));
      await writeFile(first.keyFile, second.key);
      // The watcher may have reloaded already; either way the new pair is served now.
      await server.reloadCertificate();
      assert.equal(await servedFingerprint(server.port, second.ca), fingerprintOf(second.cert));
      assert.equal(await server.reloadCertificate(), false, 'unchanged files: no reload');
    } finally {
      await server.close();
    }
  });

  it('refuses to start without a valid pair', async () => {
    const a = await makeTestCertificate();
    const b = await makeTestCertificate();
    certs.push(a, b);
    const base = { log, settings: TEST_SETTINGS, ownNamespace: OWN_NAMESPACE, host: '127.0.0.1', port: 0 };
    for (const files of [
      { certFile: a.certFile, keyFile: b.keyFile },
      { certFile: join(a.dir, 'missing.crt'), keyFile: a.keyFile },
    ]) {
      await assert.rejects(startWebhookServer({ ...base, ...files }), (err: unknown) => err instanceof WebhookError && err.code === 'NL_ERR_WEBHOOK_TLS');
    }
  });
});
