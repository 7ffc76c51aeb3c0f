/**
 * The chart's default install without cert-manager (ADR 0015), on a real kube-apiserver 1.20:
 *
 * 1. the operator's CA Secret and the gateway certificate it issues: a TLS client that trusts only ca.crt
 *    reaches a server with tls.crt/tls.key by every Service name and an extra IP SAN; a second pass keeps the
 *    certificate; 61 days later it is renewed with a new key under the same CA; changed SANs re-issue; racing
 *    replicas end with one CA; a deleted Secret is repaired by the manager;
 * 2. the webhook serving certificate from the same kept CA: a renewal changes the leaf, not caBundle;
 * 3. the webhook's CA projection is `optional: true`, and the 1.20 API server stores it so (a namespace
 *    without the copy never blocks the pod);
 * 4. the CA copies: `narrowlink-ca` appears in every namespace with an injected pod (and only there), owned by the
 *    webhook configuration, follows a CA change, and an empty ca.crt (public certificate) is copied as empty.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, describe, it, type TestContext } from 'node:test';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { type KubeObject, Resources, RestKubeClient } from '@narrowlink/kube';
import {
  applyJsonPatch,
  CaBundleDistributor,
  ensureGatewayCertificate,
  ensureOperatorCa,
  ensureWebhookCertificate,
  GatewayTlsManager,
  mutatingWebhookConfigurations,
  sidecarPatch,
} from '@narrowlink/operator/testing';
import { type ApiServer, useApiServer } from './cluster.ts';
import { waitFor } from '../helpers/wait.ts';
import { kubectlPath, toolsUnavailableReason } from './tools.ts';

const run = promisify(execFile);

const NS = 'narrowlink-system';
const FIELD_MANAGER = 'narrowlink-test';
const DAY_MS = 24 * 3600 * 1000;
const quiet = { info() {}, warn() {}, debug() {} };

function text(secret: KubeObject | undefined, key: string): string {
  const b64 = (secret?.data as Record<string, string> | undefined)?.[key];
  assert.ok(b64 !== undefined, `Secret ${secret?.metadata.name} lacks ${key}`);
  return Buffer.from(b64, 'base64').toString('utf8');
}

/** Completes a TLS handshake to a server using `cert`/`key`, trusting only `caPem`, as `servername` (or by IP). */
async function handshake(cert: string, key: string, caPem: string, host: string): Promise<void> {
  const server = tls.createServer({ cert, key }, (socket) => socket.end('ok'));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const { port } = server.address() as AddressInfo;
    const socket = tls.connect({ host: '127.0.0.1', port, ca: caPem, ...(host === '127.0.0.1' ? {} : { servername: host }), checkServerIdentity: (_h, peer) => tls.checkServerIdentity(host, peer) });
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    await once(socket, 'end');
    assert.equal(Buffer.concat(chunks).toString(), 'ok');
    socket.destroy();
  } finally {
    server.close();
  }
}

describe('gateway TLS and CA copies without cert-manager, on a real kube-apiserver 1.20', () => {
  const k8s = useApiServer();
  let clientPromise: Promise<RestKubeClient> | undefined;
  const stops: Array<{ stop(): void }> = [];
  after(() => {
    for (const s of stops) s.stop();
  });

  async function setup(t: TestContext): Promise<{ api: ApiServer; client: RestKubeClient } | undefined> {
    const api = k8s.require(t);
    if (!api) return undefined;
    clientPromise ??= (async () => {
      const client = await RestKubeClient.fromKubeConfig(api.kubeConfig(), { requestTimeoutMs: 10_000 });
      for (const name of [NS, 'shop', 'billing', 'idle']) {
        await client.apply(Resources.namespace, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } }, { fieldManager: FIELD_MANAGER });
      }
      return client;
    })();
    return { api, client: await clientPromise };
  }

  const settings = { namespace: NS, caSecretName: 'narrowlink-ca', tlsSecretName: 'narrowlink-gateway-tls', serviceName: 'narrowlink-gateway', extraSans: ['gw.example.com', '127.0.0.1'] };

  it('issues the gateway certificate from the operator CA, keeps it, renews it under the same CA, re-issues for new SANs', async (t) => {
    const ctx = await setup(t);
    if (!ctx) return;
    const { client } = ctx;
    const now = Date.now();
    const first = await ensureGatewayCertificate(client, settings, now);
    assert.equal(first.issued, 'missing');
    const ca = await client.get(Resources.secret, NS, 'narrowlink-ca');
    const gw = await client.get(Resources.secret, NS, 'narrowlink-gateway-tls');
    assert.equal(ca?.type, 'kubernetes.io/tls');
    assert.equal(gw?.type, 'kubernetes.io/tls');
    assert.equal(gw?.metadata.labels?.['app.kubernetes.io/managed-by'], 'narrowlink-operator');
    const caPem = text(ca, 'tls.crt');
    assert.equal(text(ca, 'ca.crt'), caPem);
    assert.equal(text(gw, 'ca.crt'), caPem, 'the gateway Secret carries its CA (what the discovery ConfigMap and the sidecars trust)');
    assert.equal(first.caPem, caPem);
    const caCert = new X509Certificate(caPem);
    assert.equal(caCert.ca, true);
    const leaf = new X509Certificate(text(gw, 'tls.crt'));
    assert.ok(leaf.verify(caCert.publicKey), 'signed by the CA');
    assert.equal(leaf.ca, false);
    assert.ok(Math.abs(new Date(leaf.validTo).getTime() - (now + 90 * DAY_MS)) < 5_000, `90 days: ${leaf.validTo}`);
    assert.equal(
      leaf.subjectAltName,
      `DNS:narrowlink-gateway, DNS:narrowlink-gateway.${NS}, DNS:narrowlink-gateway.${NS}.svc, DNS:narrowlink-gateway.${NS}.svc.cluster.local, DNS:gw.example.com, IP Address:127.0.0.1`,
    );
    // A client trusting only ca.crt reaches it by the in-cluster name, the extra DNS name and the extra IP.
    for (const host of [`narrowlink-gateway.${NS}.svc`, 'gw.example.com', '127.0.0.1']) await handshake(text(gw, 'tls.crt'), text(gw, 'tls.key'), caPem, host);
    await assert.rejects(handshake(text(gw, 'tls.crt'), text(gw, 'tls.key'), caPem, 'other.example.com'), /altnames|Hostname/);

    // Nothing due: the same certificate stays.
    const again = await ensureGatewayCertificate(client, settings, now + DAY_MS);
    assert.equal(again.issued, undefined);
    assert.equal(text(await client.get(Resources.secret, NS, 'narrowlink-gateway-tls'), 'tls.crt'), text(gw, 'tls.crt'));

    // 61 days later (29 left): renewed, new key, same CA.
    const renewed = await ensureGatewayCertificate(client, settings, now + 61 * DAY_MS);
    assert.equal(renewed.issued, 'due for renewal');
    const gw2 = await client.get(Resources.secret, NS, 'narrowlink-gateway-tls');
    assert.notEqual(text(gw2, 'tls.key'), text(gw, 'tls.key'));
    assert.equal(text(gw2, 'ca.crt'), caPem);
    assert.equal(text(await client.get(Resources.secret, NS, 'narrowlink-ca'), 'tls.crt'), caPem, 'the CA is unchanged');
    assert.ok(new X509Certificate(text(gw2, 'tls.crt')).verify(caCert.publicKey));

    // New SANs (helm upgrade with gateway.tls.extraSans): re-issued for them.
    const moved = await ensureGatewayCertificate(client, { ...settings, extraSans: ['10.0.0.7'] }, now + 61 * DAY_MS);
    assert.equal(moved.issued, 'SANs changed');
    const gw3 = await client.get(Resources.secret, NS, 'narrowlink-gateway-tls');
    assert.match(new X509Certificate(text(gw3, 'tls.crt')).subjectAltName ?? '', /IP Address:10\.0\.0\.7$/);
    // And back, so the later tests see the first settings' names.
    await ensureGatewayCertificate(client, settings, now + 61 * DAY_MS);
  });

  it('replicas racing for a missing CA end with one; an edited CA Secret is replaced', async (t) => {
    const ctx = await setup(t);
    if (!ctx) return;
    const { client } = ctx;
    const results = await Promise.all([1, 2, 3].map(() => ensureOperatorCa(client, { namespace: NS, secretName: 'race-ca', nowMs: Date.now() })));
    const stored = text(await client.get(Resources.secret, NS, 'race-ca'), 'tls.crt');
    for (const r of results) assert.equal(r.certPem, stored);
    // A Secret that holds no CA (someone put a leaf there) is replaced by a CA.
    await client.mergePatch(Resources.secret, NS, 'race-ca', { data: { 'tls.crt': Buffer.from('garbage').toString('base64') } });
    const replaced = await ensureOperatorCa(client, { namespace: NS, secretName: 'race-ca', nowMs: Date.now() });
    assert.equal(new X509Certificate(replaced.certPem).ca, true);
    assert.equal(text(await client.get(Resources.secret, NS, 'race-ca'), 'tls.crt'), replaced.certPem);
  });

  it('the manager repairs a deleted gateway Secret', async (t) => {
    const ctx = await setup(t);
    if (!ctx) return;
    const { client } = ctx;
    const manager = new GatewayTlsManager({ client, settings, log: quiet, recheckMs: 300 });
    stops.push(manager);
    await manager.start();
    const before = await client.get(Resources.secret, NS, 'narrowlink-gateway-tls');
    assert.ok(before);
    await client.delete(Resources.secret, NS, 'narrowlink-gateway-tls');
    const repaired = await waitFor('the gateway TLS Secret back', () => client.get(Resources.secret, NS, 'narrowlink-gateway-tls'), 10_000);
    assert.equal(text(repaired, 'ca.crt'), text(before, 'ca.crt'), 'same CA');
    manager.stop();
  });

  it('the webhook certificate from the kept CA: renewed a year later with a new leaf, caBundle unchanged', async (t) => {
    const ctx = await setup(t);
    if (!ctx) return;
    const { client } = ctx;
    await client.apply(
      mutatingWebhookConfigurations,
      {
        apiVersion: 'admissionregistration.k8s.io/v1',
        kind: 'MutatingWebhookConfiguration',
        metadata: { name: 'kept-ca-webhook' },
        webhooks: [
          {
            name: 'sidecar-injector.narrowlink.io',
            admissionReviewVersions: ['v1'],
            sideEffects: 'None',
            failurePolicy: 'Ignore',
            clientConfig: { service: { name: 'narrowlink-operator', namespace: NS, path: '/mutate-pods', port: 443 } },
            rules: [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'] }],
          },
        ],
      },
      { fieldManager: FIELD_MANAGER },
    );
    const options = { namespace: NS, secretName: 'kept-ca-webhook-tls', serviceName: 'narrowlink-operator', webhookConfiguration: 'kept-ca-webhook', caSecretName: 'narrowlink-ca' };
    const caBundle = async (): Promise<string | undefined> =>
      ((await client.get(mutatingWebhookConfigurations, undefined, 'kept-ca-webhook'))?.webhooks as Array<{ clientConfig: { caBundle?: string } }> | undefined)?.[0]?.clientConfig.caBundle;
    const now = Date.now();
    const first = await ensureWebhookCertificate(client, { ...options, nowMs: now });
    const caPem = text(await client.get(Resources.secret, NS, 'narrowlink-ca'), 'tls.crt');
    assert.equal(first.caPem, caPem, 'signed by the operator CA the gateway certificate also comes from');
    assert.ok(new X509Certificate(first.certPem).verify(new X509Certificate(caPem).publicKey));
    assert.equal(await caBundle(), Buffer.from(caPem).toString('base64'));
    await handshake(first.certPem, first.keyPem, caPem, `narrowlink-operator.${NS}.svc`);
    const renewed = await ensureWebhookCertificate(client, { ...options, nowMs: now + 340 * DAY_MS });
    assert.notEqual(renewed.certPem, first.certPem, 'renewed with 25 days left');
    assert.equal(renewed.caPem, caPem);
    assert.equal(await caBundle(), Buffer.from(caPem).toString('base64'), 'caBundle unchanged: replicas still serving the old leaf stay trusted');
  });

  it('copies the gateway CA into each namespace with an injected pod, owned by the webhook configuration, and follows changes', async (t) => {
    const ctx = await setup(t);
    if (!ctx) return;
    const { client, api } = ctx;
    const webhook = await client.apply(
      mutatingWebhookConfigurations,
      { apiVersion: 'admissionregistration.k8s.io/v1', kind: 'MutatingWebhookConfiguration', metadata: { name: 'narrowlink-sidecar-injector' }, webhooks: [] },
      { fieldManager: FIELD_MANAGER },
    );
    const pod = (namespace: string, name: string, agent?: string): KubeObject => ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace, labels: agent ? { 'narrowlink.io/agent': agent } : { app: name } },
      spec: { containers: [{ name: 'app', image: 'nginx:1.27' }] },
    });
    await client.create(Resources.pod, pod('shop', 'web-1', 'web'));
    await client.create(Resources.pod, pod('idle', 'plain-1')); // not injected: no copy there

    const distributor = new CaBundleDistributor({
      client,
      log: quiet,
      settings: { namespace: NS, sourceSecret: 'narrowlink-gateway-tls', configMap: 'narrowlink-ca', ownerWebhookConfiguration: 'narrowlink-sidecar-injector' },
      recheckMs: 300,
    });
    stops.push(distributor);
    await distributor.start();
    const caPem = text(await client.get(Resources.secret, NS, 'narrowlink-gateway-tls'), 'ca.crt');
    const copy = await client.get(Resources.configMap, 'shop', 'narrowlink-ca');
    assert.equal((copy?.data as Record<string, string> | undefined)?.['ca.crt'], caPem);
    assert.deepEqual((copy?.metadata.ownerReferences as Array<{ kind: string; name: string; uid: string }> | undefined)?.map((o) => `${o.kind}/${o.name}/${o.uid}`), [`MutatingWebhookConfiguration/narrowlink-sidecar-injector/${webhook.metadata.uid}`]);
    assert.equal(await client.get(Resources.configMap, 'idle', 'narrowlink-ca'), undefined);

    // A first injected pod in another namespace: the copy follows without any step there.
    await client.create(Resources.pod, pod('billing', 'api-1', 'api'));
    await waitFor('the copy in billing', () => client.get(Resources.configMap, 'billing', 'narrowlink-ca'), 10_000);
    await distributor.idle();
    assert.deepEqual(distributor.namespaces, ['billing', 'shop']);

    // A copy someone deleted comes back (every copy is re-applied now and then; reapplyMs is short here).
    const repairing = new CaBundleDistributor({
      client,
      log: quiet,
      settings: { namespace: NS, sourceSecret: 'narrowlink-gateway-tls', configMap: 'narrowlink-ca' },
      recheckMs: 100,
      reapplyMs: 200,
    });
    stops.push(repairing);
    await repairing.start();
    await client.delete(Resources.configMap, 'billing', 'narrowlink-ca');
    await waitFor('the deleted copy in billing back', () => client.get(Resources.configMap, 'billing', 'narrowlink-ca'), 10_000);
    // A namespace that is gone is dropped, not retried forever (kubectl makes the finalize call below).
    if (!toolsUnavailableReason()) {
      await client.create(Resources.namespace, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'gone' } });
      await client.create(Resources.pod, pod('gone', 'tmp-1', 'tmp'));
      await waitFor('the copy in gone', () => client.get(Resources.configMap, 'gone', 'narrowlink-ca'), 10_000);
      // This tier has no namespace controller: finish the deletion by hand (empty spec.finalizers), as it would.
      await client.delete(Resources.namespace, undefined, 'gone');
      const finalize = join(api.dir, 'finalize-gone.json');
      writeFileSync(finalize, JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'gone' }, spec: { finalizers: [] } }));
      await run(kubectlPath(), ['--kubeconfig', api.kubeconfigPath, 'replace', '--raw', '/api/v1/namespaces/gone/finalize', '-f', finalize], { timeout: 30_000 });
      await waitFor('namespace gone deleted', async () => (await client.get(Resources.namespace, undefined, 'gone')) === undefined, 10_000);
      await waitFor('gone dropped', async () => !repairing.namespaces.includes('gone'), 15_000);
    }
    repairing.stop();

    // The CA changes (a new CA in the Secret): every copy follows.
    const otherCa = '-----BEGIN CERTIFICATE-----\nMIIBnew\n-----END CERTIFICATE-----\n';
    await client.mergePatch(Resources.secret, NS, 'narrowlink-gateway-tls', { data: { 'ca.crt': Buffer.from(otherCa).toString('base64') } });
    for (const namespace of ['shop', 'billing']) {
      await waitFor(`the new CA in ${namespace}`, async () => {
        const cm = await client.get(Resources.configMap, namespace, 'narrowlink-ca');
        return (cm?.data as Record<string, string> | undefined)?.['ca.crt'] === otherCa ? cm : undefined;
      }, 10_000);
    }
    // A publicly trusted certificate (no ca.crt): the copies become empty, which the sidecar reads as "system CAs".
    await client.apply(
      Resources.secret,
      { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'public-tls', namespace: NS }, type: 'Opaque', data: { 'tls.crt': Buffer.from('x').toString('base64') } },
      { fieldManager: FIELD_MANAGER },
    );
    distributor.stop();
    const publicCopies = new CaBundleDistributor({ client, log: quiet, settings: { namespace: NS, sourceSecret: 'public-tls', configMap: 'public-ca' } });
    stops.push(publicCopies);
    await publicCopies.start();
    const empty = await client.get(Resources.configMap, 'shop', 'public-ca');
    assert.equal((empty?.data as Record<string, string> | undefined)?.['ca.crt'], '');
    assert.equal(empty?.metadata.ownerReferences, undefined, 'no owner configured, none set');
    publicCopies.stop();
  });

  it('an injected pod stores the CA projection as optional (what keeps it from waiting for a missing ConfigMap)', async (t) => {
    const ctx = await setup(t);
    if (!ctx) return;
    const { client } = ctx;
    const pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'optional-ca', namespace: 'idle', annotations: { 'narrowlink.io/inject': 'true', 'narrowlink.io/expose': 'http=8080' } },
      spec: { serviceAccountName: 'default', containers: [{ name: 'app', image: 'nginx:1.27' }] },
    };
    const result = sidecarPatch(pod, {
      image: 'localhost/narrowlink:0.1.0',
      resources: {},
      gatewayUrl: `wss://narrowlink-gateway.${NS}.svc:443`,
      caConfigMap: 'narrowlink-ca',
      tokenAudience: 'narrowlink',
      tokenExpirationSeconds: 600,
    });
    assert.equal(result.outcome, 'injected');
    const stored = await client.create(Resources.pod, applyJsonPatch(pod, result.patch) as KubeObject);
    const volume = (stored.spec as { volumes: Array<{ name: string; projected?: { sources: Array<{ configMap?: Record<string, unknown> }> } }> }).volumes.find(
      (v) => v.name === 'narrowlink-token',
    );
    assert.deepEqual(volume?.projected?.sources.find((s) => s.configMap)?.configMap, { name: 'narrowlink-ca', items: [{ key: 'ca.crt', path: 'ca.crt' }], optional: true });
    const sidecar = (stored.spec as { containers: Array<{ name: string; command?: string[]; env?: Array<{ name: string; value?: string }> }> }).containers.find(
      (c) => c.name === 'narrowlink-agent',
    );
    assert.deepEqual(sidecar?.command, ['node', '--max-semi-space-size=1', 'dist/server/agent.mjs']);
    assert.equal(sidecar?.env?.find((e) => e.name === 'NARROWLINK_CA_FILE')?.value, '/var/run/secrets/narrowlink/ca.crt');
  });
});
