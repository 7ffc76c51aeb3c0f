/**
 * The sidecar-injection webhook on a real kube-apiserver 1.20: the API server calls the webhook at
 * https://127.0.0.1:PORT/mutate-pods (test CA in caBundle), and the stored Pod carries the sidecar. Covers
 * dry-run, pods that do not opt in, the operator's own namespace, a namespace excluded by the selector,
 * invalid annotations (admitted with a Warning header), generateName pods, and a real re-invocation
 * (a second webhook mutates after ours; `reinvocationPolicy: IfNeeded` calls ours again) that must not add a
 * second sidecar. No scheduler or kubelet: pods stay Pending, which is all this needs.
 */
import assert from 'node:assert/strict';
import { createServer, request, type Server } from 'node:https';
import { after, describe, it } from 'node:test';
import { AdmissionregistrationV1Api, CoreV1Api, type V1MutatingWebhookConfiguration } from '@kubernetes/client-node';
import { pino } from 'pino';
import { type ReviewEvent, type SidecarSettings, startWebhookServer, type WebhookServer } from '@narrowlink/operator/testing';
import { makeTestCertificate, type TestCertificate } from '../helpers/tls.ts';
import type { ApiServer } from './cluster.ts';
import { useApiServer } from './cluster.ts';

const OWN_NAMESPACE = 'narrowlink-system';
const APP_NAMESPACE = 'shop';
const OPTED_OUT_NAMESPACE = 'opted-out';
const DISABLE_LABEL = 'narrowlink.io/inject-disabled';
const RELABEL_SELECTOR = 'test.narrowlink.io/relabel';

const SETTINGS: SidecarSettings = {
  image: 'ghcr.io/narrowlink/narrowlink-k8s:0.1.0',
  resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { memory: '128Mi' } },
  gatewayUrl: 'wss://narrowlink-gateway.narrowlink-system.svc:443',
  tokenAudience: 'narrowlink',
  tokenExpirationSeconds: 600,
};

interface Container {
  name: string;
  image?: string;
  env?: Array<{ name: string; value?: string }>;
  securityContext?: Record<string, unknown>;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
}
interface Pod {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name?: string;
    generateName?: string;
    namespace?: string;
    annotations?: Record<string, string>;
    labels?: Record<string, string>;
    uid?: string;
  };
  spec: {
    serviceAccountName?: string;
    containers: Container[];
    volumes?: Array<{ name: string; projected?: { sources: Array<Record<string, unknown>> } }>;
  };
}

interface KubeResponse<T> {
  status: number;
  body: T;
  /** Every `Warning` header value, unquoted message part. */
  warnings: string[];
}

/** One call to the API server with the admin token, keeping the response headers (client-node hides them). */
function kube<T>(api: ApiServer, method: string, path: string, body?: unknown): Promise<KubeResponse<T>> {
  return new Promise((resolve, reject) => {
    const req = request(
      new URL(path, api.server),
      {
        method,
        ca: api.caPem,
        headers: { authorization: `Bearer ${api.token}`, accept: 'application/json', 'content-type': 'application/json' },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          text += d;
        });
        res.on('end', () => {
          const warnings: string[] = [];
          for (let i = 0; i < res.rawHeaders.length; i += 2) {
            if (res.rawHeaders[i]?.toLowerCase() !== 'warning') continue;
            // RFC 7234 warning: 299 - "text"
            const m = /^\d{3} \S+ "(.*)"$/.exec(res.rawHeaders[i + 1] ?? '');
            warnings.push(m?.[1]?.replaceAll('\\"', '"') ?? (res.rawHeaders[i + 1] as string));
          }
          resolve({ status: res.statusCode ?? 0, body: (text ? JSON.parse(text) : undefined) as T, warnings });
        });
      },
    );
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

function podBody(opts: { name?: string; generateName?: string; annotations?: Record<string, string>; labels?: Record<string, string> }): Pod {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      ...(opts.name ? { name: opts.name } : {}),
      ...(opts.generateName ? { generateName: opts.generateName } : {}),
      ...(opts.annotations ? { annotations: opts.annotations } : {}),
      ...(opts.labels ? { labels: opts.labels } : {}),
    },
    spec: { containers: [{ name: 'app', image: 'nginx:1.27' }] },
  };
}

const INJECT = { 'narrowlink.io/inject': 'true', 'narrowlink.io/expose': 'http=8080,metrics=9090' };

async function createPod(api: ApiServer, namespace: string, pod: Pod, dryRun = false): Promise<KubeResponse<Pod>> {
  return kube<Pod>(api, 'POST', `/api/v1/namespaces/${namespace}/pods${dryRun ? '?dryRun=All' : ''}`, pod);
}

function sidecars(pod: Pod): Container[] {
  return pod.spec.containers.filter((c) => c.name === 'narrowlink-agent');
}

async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs = 30_000, detail = () => ''): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what} ${detail()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A second mutating webhook (plain node https) that adds a label, so the API server re-invokes ours. */
function startRelabeler(cert: TestCertificate): Promise<{ server: Server; port: number; calls: () => number }> {
  let calls = 0;
  const server = createServer({ key: cert.key, cert: cert.cert }, (req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => {
      text += d;
    });
    req.on('end', () => {
      calls += 1;
      const review = JSON.parse(text) as { request: { uid: string } };
      const patch = [{ op: 'add', path: '/metadata/labels/relabeled', value: String(calls) }];
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          apiVersion: 'admission.k8s.io/v1',
          kind: 'AdmissionReview',
          response: { uid: review.request.uid, allowed: true, patchType: 'JSONPatch', patch: Buffer.from(JSON.stringify(patch)).toString('base64') },
        }),
      );
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      resolve({ server, port: typeof address === 'object' && address ? address.port : 0, calls: () => calls });
    });
  });
}

function webhookConfig(
  name: string,
  webhookName: string,
  url: string,
  caPem: string,
  extra: { objectSelector?: Record<string, unknown> } = {},
): V1MutatingWebhookConfiguration {
  return {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'MutatingWebhookConfiguration',
    metadata: { name },
    webhooks: [
      {
        name: webhookName,
        clientConfig: { url, caBundle: Buffer.from(caPem).toString('base64') },
        rules: [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' }],
        sideEffects: 'None',
        admissionReviewVersions: ['v1'],
        reinvocationPolicy: 'IfNeeded',
        failurePolicy: 'Fail',
        timeoutSeconds: 10,
        namespaceSelector: { matchExpressions: [{ key: DISABLE_LABEL, operator: 'DoesNotExist' }] },
        ...extra,
      },
    ],
  };
}

describe('sidecar-injection webhook on a real kube-apiserver', () => {
  const k8s = useApiServer();
  const events: ReviewEvent[] = [];
  let setup: Promise<{ webhook: WebhookServer; relabelCalls: () => number }> | undefined;
  let cert: TestCertificate | undefined;
  let webhook: WebhookServer | undefined;
  let relabeler: Server | undefined;

  after(async () => {
    await webhook?.close();
    await new Promise<void>((r) => (relabeler ? relabeler.close(() => r()) : r()));
    await cert?.remove();
  });

  /** Once per suite: webhook server, namespaces, both MutatingWebhookConfigurations, and wait until active. */
  function ready(api: ApiServer): Promise<{ webhook: WebhookServer; relabelCalls: () => number }> {
    setup ??= (async () => {
      const started = Date.now();
      cert = await makeTestCertificate();
      webhook = await startWebhookServer({
        log: pino({ level: 'silent' }),
        settings: SETTINGS,
        ownNamespace: OWN_NAMESPACE,
        host: '127.0.0.1',
        port: 0,
        certFile: cert.certFile,
        keyFile: cert.keyFile,
        onReview: (e) => events.push(e),
      });
      const relabel = await startRelabeler(cert);
      relabeler = relabel.server;

      const kc = api.kubeConfig();
      const core = kc.makeApiClient(CoreV1Api);
      const admission = kc.makeApiClient(AdmissionregistrationV1Api);
      for (const [name, labels] of [
        [APP_NAMESPACE, {}],
        [OWN_NAMESPACE, {}],
        [OPTED_OUT_NAMESPACE, { [DISABLE_LABEL]: 'true' }],
      ] as const) {
        await core.createNamespace({ body: { metadata: { name, labels } } });
      }
      // Webhooks run in configuration-name order: ours first, then the relabeler, which makes ours run again.
      await admission.createMutatingWebhookConfiguration({
        body: webhookConfig('a-narrowlink-sidecar-injector', 'inject.narrowlink.io', `${webhook.url}/mutate-pods`, cert.ca),
      });
      await admission.createMutatingWebhookConfiguration({
        body: webhookConfig('b-test-relabeler', 'relabel.test.narrowlink.io', `https://127.0.0.1:${relabel.port}/relabel`, cert.ca, {
          objectSelector: { matchLabels: { [RELABEL_SELECTOR]: 'yes' } },
        }),
      });
      // The API server loads webhook configurations asynchronously: probe with dry-run pods until ours acts.
      let last: KubeResponse<Pod> | undefined;
      await waitUntil(
        'the webhook to be active',
        async () => {
          last = await createPod(api, APP_NAMESPACE, podBody({ name: 'probe', annotations: INJECT }), true);
          return last.status === 201 && sidecars(last.body).length === 1;
        },
        30_000,
        () => JSON.stringify(last),
      );
      process.stderr.write(`webhook k8s setup: ${Date.now() - started} ms\n`);
      return { webhook, relabelCalls: relabel.calls };
    })();
    return setup;
  }

  it('injects the sidecar into a stored pod: container, projected token volume, annotation, label', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    await ready(api);
    const created = await createPod(api, APP_NAMESPACE, podBody({ name: 'web', annotations: INJECT }));
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.deepEqual(created.warnings, []);

    const stored = (await kube<Pod>(api, 'GET', `/api/v1/namespaces/${APP_NAMESPACE}/pods/web`)).body;
    assert.deepEqual(
      stored.spec.containers.map((c) => c.name),
      ['app', 'narrowlink-agent'],
    );
    const sidecar = sidecars(stored)[0] as Container;
    assert.equal(sidecar.image, SETTINGS.image);
    const env = Object.fromEntries((sidecar.env ?? []).map((e) => [e.name, e.value]));
    assert.equal(env.NARROWLINK_EXPOSE, 'http=8080,metrics=9090');
    assert.equal(env.NARROWLINK_AGENT_NAME, 'web');
    assert.equal(env.NARROWLINK_AGENT_TOKEN_FILE, '/var/run/secrets/narrowlink/token');
    assert.equal(env.NARROWLINK_GATEWAY, SETTINGS.gatewayUrl);
    assert.equal(sidecar.securityContext?.runAsNonRoot, true);
    assert.equal(sidecar.securityContext?.readOnlyRootFilesystem, true);
    assert.equal(sidecar.securityContext?.allowPrivilegeEscalation, false);
    assert.deepEqual(sidecar.securityContext?.capabilities, { drop: ['ALL'] });
    assert.deepEqual(sidecar.volumeMounts, [{ name: 'narrowlink-token', mountPath: '/var/run/secrets/narrowlink', readOnly: true }]);

    const volume = stored.spec.volumes?.find((v) => v.name === 'narrowlink-token');
    assert.deepEqual(volume?.projected?.sources, [{ serviceAccountToken: { audience: 'narrowlink', expirationSeconds: 600, path: 'token' } }]);
    assert.equal(stored.metadata.annotations?.['narrowlink.io/injected'], 'true');
    assert.equal(stored.metadata.labels?.['narrowlink.io/agent'], 'web');
    // The token projection is only valid with a ServiceAccount; this apiserver runs without the plugin that sets it.
    assert.equal(stored.spec.serviceAccountName, 'default');
  });

  it('dry-run: the response carries the mutated pod, nothing is stored', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    await ready(api);
    const before = events.length;
    const created = await createPod(api, APP_NAMESPACE, podBody({ name: 'dry', annotations: INJECT }), true);
    assert.equal(created.status, 201);
    assert.equal(sidecars(created.body).length, 1);
    assert.equal(created.body.metadata.annotations?.['narrowlink.io/injected'], 'true');
    const lookup = await kube(api, 'GET', `/api/v1/namespaces/${APP_NAMESPACE}/pods/dry`);
    assert.equal(lookup.status, 404);
    assert.ok(
      events.slice(before).some((e) => e.dryRun && e.outcome === 'injected' && e.pod === 'dry'),
      'the webhook saw the dry-run request',
    );
  });

  it('a pod without the inject annotation is stored untouched', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    await ready(api);
    const created = await createPod(api, APP_NAMESPACE, podBody({ name: 'plain', labels: { app: 'plain' } }));
    assert.equal(created.status, 201);
    const stored = (await kube<Pod>(api, 'GET', `/api/v1/namespaces/${APP_NAMESPACE}/pods/plain`)).body;
    assert.deepEqual(
      stored.spec.containers.map((c) => c.name),
      ['app'],
    );
    assert.equal(stored.spec.volumes, undefined);
    assert.equal(stored.metadata.annotations, undefined);
    assert.deepEqual(stored.metadata.labels, { app: 'plain' });
  });

  it("the operator's own namespace is never injected (the webhook is called and skips it)", async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    await ready(api);
    const before = events.length;
    const created = await createPod(api, OWN_NAMESPACE, podBody({ name: 'operator-like', annotations: INJECT }));
    assert.equal(created.status, 201);
    assert.deepEqual(
      created.body.spec.containers.map((c) => c.name),
      ['app'],
    );
    assert.equal(created.body.metadata.annotations?.['narrowlink.io/injected'], undefined);
    assert.ok(events.slice(before).some((e) => e.outcome === 'skipped-own-namespace' && e.namespace === OWN_NAMESPACE));
  });

  it('a namespace labelled narrowlink.io/inject-disabled is excluded by the selector (the webhook is not even called)', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    await ready(api);
    const before = events.length;
    const created = await createPod(api, OPTED_OUT_NAMESPACE, podBody({ name: 'excluded', annotations: INJECT }));
    assert.equal(created.status, 201);
    assert.deepEqual(
      created.body.spec.containers.map((c) => c.name),
      ['app'],
    );
    assert.equal(
      events.slice(before).filter((e) => e.namespace === OPTED_OUT_NAMESPACE).length,
      0,
    );
  });

  it('invalid annotations: admitted unchanged, with a Warning header naming the code (non-strict)', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    await ready(api);
    const annotations = { 'narrowlink.io/inject': 'true', 'narrowlink.io/expose': 'http=99999' };
    const created = await createPod(api, APP_NAMESPACE, podBody({ name: 'bad-expose', annotations }));
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.deepEqual(
      created.body.spec.containers.map((c) => c.name),
      ['app'],
    );
    assert.deepEqual(created.body.metadata.annotations, annotations);
    assert.ok(
      created.warnings.some((w) => w.startsWith('NL_ERR_WEBHOOK_INVALID_ANNOTATIONS: narrowlink.io/expose: port "99999"')),
      `warnings: ${JSON.stringify(created.warnings)}`,
    );
  });

  it('a generateName pod (no request.name) is injected with the agent named after its prefix', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    await ready(api);
    const created = await createPod(api, APP_NAMESPACE, podBody({ generateName: 'batch-', annotations: INJECT }));
    assert.equal(created.status, 201);
    assert.match(created.body.metadata.name ?? '', /^batch-[a-z0-9]{5}$/);
    assert.equal(sidecars(created.body).length, 1);
    assert.equal(created.body.metadata.labels?.['narrowlink.io/agent'], 'batch');
  });

  it('re-invocation after another webhook mutated the pod adds no second sidecar', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    const { relabelCalls } = await ready(api);
    const before = events.length;
    const relabelBefore = relabelCalls();
    const created = await createPod(api, APP_NAMESPACE, podBody({ name: 'reinvoked', annotations: INJECT, labels: { [RELABEL_SELECTOR]: 'yes' } }));
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const stored = (await kube<Pod>(api, 'GET', `/api/v1/namespaces/${APP_NAMESPACE}/pods/reinvoked`)).body;
    assert.equal(sidecars(stored).length, 1, 'exactly one narrowlink-agent container');
    assert.equal(stored.spec.volumes?.filter((v) => v.name === 'narrowlink-token').length, 1);
    assert.ok(stored.metadata.labels?.relabeled, 'the other webhook ran');
    assert.equal(relabelCalls() - relabelBefore, 1);
    // Ours ran twice for this pod: once injecting, once (re-invoked) seeing it already injected.
    assert.deepEqual(
      events
        .slice(before)
        .filter((e) => e.pod === 'reinvoked')
        .map((e) => e.outcome),
      ['injected', 'already-injected'],
    );
  });
});
