/**
 * Issue 13, journey step 1 in the real cluster: the project's own image (deploy/build-image.sh, loaded into the
 * cluster's containerd, never pulled) runs the chart's operator and gateway — `helm install charts/narrowlink`
 * with `imagePullPolicy: IfNotPresent` and without cert-manager, then both Deployments become Ready with real
 * containers of that image; journey step 2: a Deployment with the inject annotation gets the sidecar in a real Pod
 * and its NarrowlinkAgent reports the instance Connected; step 4 (part): scaling 1 → 3 → 0 and a deleted Pod, the
 * connected instances follow; `helm uninstall` leaves no Pod of the release behind.
 *
 * The image comes from `deploy/build-image.sh` (cached by its inputs; it exits 3 with a reason where it cannot
 * build, and the tests then skip with that reason). NARROWLINK_IMAGE_ARCHIVE=<docker-archive tar> uses an image
 * built beforehand instead (its name is read from the archive's manifest).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { AppsV1Api, CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { helmPath, toolsUnavailableReason } from '../k8s/tools.ts';
import { containerMemory, nodeTestImage, useCluster } from './harness.ts';

const run = promisify(execFile);
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const chartDir = join(repoRoot, 'charts', 'narrowlink');
const NS = 'narrowlink-system';
/** Namespace of the application whose Pods get the sidecar. */
const APP_NS = 'shop';

interface BuiltImage {
  image: string;
  archive: string;
}

/** The image to install: NARROWLINK_IMAGE_ARCHIVE, else deploy/build-image.sh's archive; or why not. */
async function projectImage(): Promise<BuiltImage | { skipped: string }> {
  const given = process.env.NARROWLINK_IMAGE_ARCHIVE;
  if (given) {
    const { stdout } = await run('tar', ['-xOf', given, 'manifest.json'], { maxBuffer: 1024 * 1024 });
    const tags = (JSON.parse(stdout) as Array<{ RepoTags?: string[] }>)[0]?.RepoTags ?? [];
    const image = tags[0];
    if (!image) throw new Error(`${given}: a docker-archive without an image name`);
    return { image, archive: given };
  }
  try {
    const { stdout } = await run('bash', [join(repoRoot, 'deploy', 'build-image.sh')], {
      maxBuffer: 64 * 1024 * 1024,
      timeout: 30 * 60_000,
    });
    const line = stdout.split('\n').find((l) => l.startsWith('{') && l.includes('"archive"'));
    if (!line) throw new Error(`deploy/build-image.sh printed no JSON line:\n${stdout}`);
    const built = JSON.parse(line) as BuiltImage;
    return { image: built.image, archive: built.archive };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    const reason = /image: SKIPPED \((.*)\)/.exec(e.stdout ?? '')?.[1];
    if (e.code === 3 && reason) return { skipped: `the image cannot be built here: ${reason}` };
    throw new Error(`deploy/build-image.sh failed (exit ${e.code}):\n${(e.stderr ?? '').split('\n').slice(-30).join('\n')}`);
  }
}

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ''}`);
}

describe('cluster tier: helm install of charts/narrowlink with the project image', { timeout: 60 * 60_000 }, () => {
  const cluster = useCluster();
  let image: BuiltImage | { skipped: string } | undefined;

  before(async () => {
    const c = cluster.result;
    if (!c || 'skipped' in c) return;
    const toolsReason = toolsUnavailableReason();
    if (toolsReason) {
      image = { skipped: toolsReason };
      return;
    }
    image = await projectImage();
    if ('skipped' in image) return;
    await c.importImage(image.archive);
  });

  it('operator and gateway Pods become Ready from the locally loaded image, without cert-manager', async (t) => {
    const c = cluster.require(t);
    if (!c) return;
    assert.ok(image);
    if ('skipped' in image) {
      t.skip(image.skipped);
      return;
    }
    const colon = image.image.lastIndexOf(':');
    const repository = image.image.slice(0, colon);
    const tag = image.image.slice(colon + 1);
    const started = Date.now();
    // No --wait: helm would wait for a LoadBalancer address no single-node cluster hands out; readiness is
    // checked below through the API instead.
    await run(
      helmPath(),
      [
        '--kubeconfig', c.kubeconfigPath, 'install', 'narrowlink', chartDir, '--namespace', NS, '--create-namespace',
        '--set', `image.repository=${repository}`, '--set', `image.tag=${tag}`, '--set', 'image.pullPolicy=IfNotPresent',
        '--set', 'gateway.service.type=NodePort', '--timeout', '120s',
      ],
      { maxBuffer: 16 * 1024 * 1024 },
    );
    const kc = c.kubeConfig();
    const apps = kc.makeApiClient(AppsV1Api);
    const core = kc.makeApiClient(CoreV1Api);
    const deployments = await apps.listNamespacedDeployment({ namespace: NS });
    const names = deployments.items.map((d) => d.metadata?.name ?? '').sort();
    assert.ok(names.length >= 2, `Deployments: ${names.join(', ')}`);
    for (const name of names) {
      await waitFor(`Deployment ${name} Ready`, 5 * 60_000, async () => {
        const d = await apps.readNamespacedDeployment({ name, namespace: NS });
        const want = d.spec?.replicas ?? 1;
        return (d.status?.readyReplicas ?? 0) >= want && (d.status?.updatedReplicas ?? 0) >= want ? d : undefined;
      }).catch(async (err) => {
        const pods = await core.listNamespacedPod({ namespace: NS });
        const states = pods.items.map((p) => `${p.metadata?.name}: ${p.status?.phase} ${JSON.stringify(p.status?.containerStatuses?.map((s) => s.state))}`);
        throw new Error(`${String(err)}\n${states.join('\n')}`);
      });
    }
    t.diagnostic(`helm install to every Deployment Ready: ${((Date.now() - started) / 1000).toFixed(1)} s (${names.join(', ')})`);
    const pods = await core.listNamespacedPod({ namespace: NS });
    assert.ok(pods.items.length >= names.length);
    for (const pod of pods.items) {
      assert.equal(pod.status?.phase, 'Running', pod.metadata?.name);
      for (const status of pod.status?.containerStatuses ?? []) {
        assert.equal(status.ready, true, `${pod.metadata?.name}/${status.name}`);
        // The container runs the image we loaded: containerd knows it only from the import, nothing was pulled.
        assert.equal(status.image, image.image, `${pod.metadata?.name}/${status.name}`);
        assert.match(status.containerID ?? '', /^containerd:\/\/[0-9a-f]{64}$/);
      }
    }
    // What each component really uses in the cluster (its cgroup), next to the limit the chart gives it: the
    // numbers the chart's defaults are sized from.
    for (const pod of pods.items) {
      for (const status of pod.status?.containerStatuses ?? []) {
        const mem = containerMemory(pod.metadata?.uid ?? '', status.containerID ?? '');
        assert.ok(mem.rssBytes > 0 && mem.workingSetBytes >= mem.rssBytes / 2, JSON.stringify(mem));
        assert.ok(mem.workingSetBytes < mem.limitBytes, `${pod.metadata?.name}: working set within its limit`);
        const mib = (n: number) => (n / 1048576).toFixed(1);
        t.diagnostic(
          `${pod.metadata?.name}/${status.name}: working set ${mib(mem.workingSetBytes)} MiB, rss ${mib(mem.rssBytes)} MiB, limit ${mem.limitBytes > 2 ** 50 ? 'none' : `${mib(mem.limitBytes)} MiB`}`,
        );
      }
    }
    const events = await core.listNamespacedEvent({ namespace: NS });
    assert.deepEqual(
      events.items.filter((e) => e.reason === 'Pulling' || e.reason === 'Failed').map((e) => `${e.reason}: ${e.message}`),
      [],
    );
  });

  it('a Deployment with the inject annotation gets the sidecar in a real Pod, which attaches: NarrowlinkAgent Connected', async (t) => {
    const c = cluster.require(t);
    if (!c) return;
    assert.ok(image);
    if ('skipped' in image) {
      t.skip(image.skipped);
      return;
    }
    const app = await nodeTestImage();
    await c.importImage(app.archive);
    const kc = c.kubeConfig();
    const core = kc.makeApiClient(CoreV1Api);
    const apps = kc.makeApiClient(AppsV1Api);
    const custom = kc.makeApiClient(CustomObjectsApi);
    await core.createNamespace({ body: { metadata: { name: APP_NS } } });
    await waitFor('the default ServiceAccount', 60_000, async () =>
      core.readNamespacedServiceAccount({ name: 'default', namespace: APP_NS }).then(() => true),
    );
    await apps.createNamespacedDeployment({
      namespace: APP_NS,
      body: {
        metadata: { name: 'orders-api', labels: { app: 'orders-api' } },
        spec: {
          replicas: 1,
          selector: { matchLabels: { app: 'orders-api' } },
          template: {
            metadata: {
              labels: { app: 'orders-api' },
              annotations: { 'narrowlink.io/inject': 'true', 'narrowlink.io/expose': 'http=8080' },
            },
            spec: {
              containers: [
                {
                  name: 'api',
                  image: app.image,
                  imagePullPolicy: 'Never',
                  args: ['-e', "require('node:http').createServer((q, s) => s.end('orders ' + q.url)).listen(8080)"],
                  ports: [{ name: 'http', containerPort: 8080 }],
                },
              ],
            },
          },
        },
      },
    });
    const pod = await waitFor('the injected Pod Ready', 5 * 60_000, async () => {
      const pods = await core.listNamespacedPod({ namespace: APP_NS, labelSelector: 'app=orders-api' });
      const p = pods.items[0];
      const statuses = p?.status?.containerStatuses ?? [];
      return statuses.length >= 2 && statuses.every((s) => s.ready) ? p : undefined;
    });
    assert.equal(pod.metadata?.annotations?.['narrowlink.io/injected'], 'true');
    const sidecar = pod.status?.containerStatuses?.find((s) => s.name !== 'api');
    assert.ok(sidecar, 'a second container was injected');
    // The sidecar runs the project image loaded into the cluster (the chart's image), with a real container.
    assert.equal(sidecar.image, image.image);
    assert.match(sidecar.containerID ?? '', /^containerd:\/\/[0-9a-f]{64}$/);
    const agent = await waitFor('NarrowlinkAgent orders-api Connected', 3 * 60_000, async () => {
      const list = (await custom.listNamespacedCustomObject({
        group: 'narrowlink.io',
        version: 'v1alpha1',
        namespace: APP_NS,
        plural: 'narrowlinkagents',
      })) as { items: Array<{ metadata: { name: string }; status?: { connectedInstances?: number; conditions?: Array<{ type: string; status: string }> } }> };
      const a = list.items.find((i) => i.metadata.name === 'orders-api');
      const connected = a?.status?.conditions?.find((cond) => cond.type === 'Connected')?.status === 'True';
      return connected && a?.status?.connectedInstances === 1 ? a : undefined;
    });
    assert.equal(agent.status?.connectedInstances, 1);
    const mem = containerMemory(pod.metadata?.uid ?? '', sidecar.containerID ?? '');
    assert.ok(mem.workingSetBytes < mem.limitBytes, 'the sidecar stays within its limit');
    t.diagnostic(
      `sidecar ${sidecar.name} once attached: working set ${(mem.workingSetBytes / 1048576).toFixed(1)} MiB, rss ${(mem.rssBytes / 1048576).toFixed(1)} MiB, limit ${(mem.limitBytes / 1048576).toFixed(0)} MiB`,
    );
  });

  it('scaling the injected Deployment 1 → 3 → 0 and deleting a Pod: the connected instances follow', async (t) => {
    const c = cluster.require(t);
    if (!c) return;
    assert.ok(image);
    if ('skipped' in image) {
      t.skip(image.skipped);
      return;
    }
    const kc = c.kubeConfig();
    const apps = kc.makeApiClient(AppsV1Api);
    const core = kc.makeApiClient(CoreV1Api);
    const custom = kc.makeApiClient(CustomObjectsApi);
    const instances = async () => {
      const a = (await custom.getNamespacedCustomObject({
        group: 'narrowlink.io',
        version: 'v1alpha1',
        namespace: APP_NS,
        plural: 'narrowlinkagents',
        name: 'orders-api',
      })) as { status?: { connectedInstances?: number } };
      return a.status?.connectedInstances ?? 0;
    };
    const scale = async (replicas: number) => {
      const started = Date.now();
      await apps.patchNamespacedDeploymentScale(
        { name: 'orders-api', namespace: APP_NS, body: { spec: { replicas } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      await waitFor(`${replicas} connected instance(s)`, 4 * 60_000, async () => ((await instances()) === replicas ? true : undefined));
      t.diagnostic(`scaled to ${replicas}: instances followed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    };
    await scale(3);
    // A deleted Pod is replaced by the ReplicaSet; its sidecar attaches and the count is back at 3 without the old one.
    const before = await core.listNamespacedPod({ namespace: APP_NS, labelSelector: 'app=orders-api' });
    const victim = before.items[0]?.metadata?.name;
    assert.ok(victim);
    await core.deleteNamespacedPod({ name: victim, namespace: APP_NS, gracePeriodSeconds: 1 });
    await waitFor('the replacement Pod Ready and 3 instances', 4 * 60_000, async () => {
      const pods = await core.listNamespacedPod({ namespace: APP_NS, labelSelector: 'app=orders-api' });
      const ready = pods.items.filter(
        (p) => p.metadata?.name !== victim && (p.status?.containerStatuses ?? []).every((s) => s.ready) && p.status?.phase === 'Running',
      );
      return ready.length === 3 && (await instances()) === 3 ? true : undefined;
    });
    await scale(0);
  });

  it('helm uninstall removes every Pod of the release', async (t) => {
    const c = cluster.require(t);
    if (!c) return;
    assert.ok(image);
    if ('skipped' in image) {
      t.skip(image.skipped);
      return;
    }
    await run(helmPath(), ['--kubeconfig', c.kubeconfigPath, 'uninstall', 'narrowlink', '--namespace', NS, '--timeout', '120s']);
    const core = c.kubeConfig().makeApiClient(CoreV1Api);
    await waitFor('no Pod left in the release namespace', 120_000, async () => {
      const pods = await core.listNamespacedPod({ namespace: NS });
      return pods.items.length === 0 ? true : undefined;
    });
  });
});
