/**
 * Issue 13, the user's journey in the real cluster, in the order of README "On Kubernetes":
 *  1. `helm install charts/narrowlink` with the project's own image (deploy/build-image.sh, loaded into the cluster's
 *     containerd, never pulled), `imagePullPolicy: IfNotPresent`, no cert-manager, the gateway on a NodePort that
 *     the host reaches on 127.0.0.1 (in gateway.tls.extraSans and login.gatewayUrls): operator and gateway Ready.
 *  2. A Deployment with the inject annotation gets the sidecar in a real Pod; NarrowlinkAgent Connected.
 *  3. The developer's side, from the host: a real cluster user (client certificate from the CSR API, O=developers)
 *     bound to narrowlink-login; an AccessPolicy for the group; the packed CLI, installed with npm and run by the
 *     oldest supported Node: `narrowlink login`, `ls`, `forward` to the app's HTTP server, 1 MiB each way with its
 *     sha256 verified.
 *  4. `kubectl rollout restart` of the app: `forward` keeps its listener (never refused) and new connections reach
 *     the new Pod within a bounded time (printed); then scaling 1 → 3 → 0 and a deleted Pod: the instances follow.
 *  3b. Deleting the AccessPolicy (the only Allow) revokes: the open connection is reset DENIED, a new one is refused
 *      NO_AGENT (an agent the user may not reach is never confirmed to exist).
 *  5. `helm uninstall`: nothing of the release is left but what the chart documents as kept.
 * Memory: each component's working set (its cgroup) at idle and after the transfers of step 3 is printed: the
 * numbers behind the chart's default requests/limits (values.yaml).
 *
 * The image comes from `deploy/build-image.sh` (cached by its inputs; it exits 3 with a reason where it cannot
 * build, and the tests then skip with that reason). NARROWLINK_IMAGE_ARCHIVE=<docker-archive tar> uses an image
 * built beforehand instead (its name is read from the archive's manifest).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { AppsV1Api, CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions, type V1Pod } from '@kubernetes/client-node';
import { helmPath, kubectlPath, toolsUnavailableReason } from '../k8s/tools.ts';
import { freePort } from '../helpers/ports.ts';
import { type BinaryProcess, installGlobal, otherNodeBin, packCli, pathWithout, runBinary, startBinary } from '../package/fixtures.ts';
import { type ContainerMemory, containerMemory, nodeTestImage, useCluster } from './harness.ts';
import { APP_SERVER_JS, appBlob, type Developer, httpThrough, inventory, makeDeveloper, type ObjectRef, refKey, sha256, streamThrough } from './journey.ts';

const run = promisify(execFile);
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const chartDir = join(repoRoot, 'charts', 'narrowlink');
const NS = 'narrowlink-system';
/** Namespace of the application whose Pods get the sidecar. */
const APP_NS = 'shop';
const APP = 'orders-api';
/** The gateway's wss node port, reached from the host on loopback (kube-proxy --nodeport-addresses has 127.0.0.0/8). */
const GATEWAY_NODE_PORT = 30443;
const GATEWAY_URL = `wss://127.0.0.1:${GATEWAY_NODE_PORT}`;
const MiB = 1024 * 1024;

/** What `helm uninstall` may leave (charts/narrowlink/README.md "Upgrade and uninstall"; NOTES.txt's last line). */
const DOCUMENTED_KEPT = new Set([
  'customresourcedefinitions.apiextensions.k8s.io accesspolicies.narrowlink.io',
  'customresourcedefinitions.apiextensions.k8s.io clientloginrequests.narrowlink.io',
  'customresourcedefinitions.apiextensions.k8s.io narrowlinkagents.narrowlink.io',
  // The API server's own registration of the CRDs' group version: goes with the CRDs.
  'apiservices.apiregistration.k8s.io v1alpha1.narrowlink.io',
  `secrets ${NS}/narrowlink-signing-key`,
  `secrets ${NS}/narrowlink-ca`,
  `secrets ${NS}/narrowlink-gateway-tls`,
  `secrets ${NS}/narrowlink-webhook-tls`,
  // Written by the operator, not by Helm, and inert without it; a reinstall takes both over (README "Upgrade and
  // uninstall"): the last compiled gateway config and the leader-election Lease.
  `secrets ${NS}/narrowlink-gateway-config`,
  `leases.coordination.k8s.io ${NS}/narrowlink-operator`,
  // "the CRDs (and so every NarrowlinkAgent / AccessPolicy)": the operator's agent for the workload.
  `narrowlinkagents.narrowlink.io ${APP_NS}/${APP}`,
]);

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

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, intervalMs = 500): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ''}`);
}

const mib = (n: number) => (n / MiB).toFixed(1);

function describeMemory(mem: ContainerMemory): string {
  return `working set ${mib(mem.workingSetBytes)} MiB, rss ${mib(mem.rssBytes)} MiB, peak usage ${mib(mem.maxUsageBytes)} MiB, limit ${mem.limitBytes > 2 ** 50 ? 'none' : `${mib(mem.limitBytes)} MiB`}`;
}

describe('cluster tier: the user journey with charts/narrowlink and the project image', { timeout: 60 * 60_000 }, () => {
  const cluster = useCluster();
  let image: BuiltImage | { skipped: string } | undefined;
  let work = '';
  /** Every object of the cluster before `helm install` (step 5 compares against it). */
  let baseline: ObjectRef[] = [];
  let kubectl = '';
  let developer: Developer | undefined;
  /** The installed CLI (`narrowlink` bin of the npm prefix) and the environment a developer's shell gives it. */
  let cli: { narrowlink: string; env: Record<string, string> } | undefined;
  let forward: BinaryProcess | undefined;
  let forwardPort = 0;

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
    kubectl = kubectlPath();
    work = mkdtempSync(join(tmpdir(), 'nl-cluster-journey-'));
    baseline = await inventory(kubectl, c.kubeconfigPath);
  });

  after(async () => {
    await forward?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /** The running cluster and image, or undefined after marking the test skipped (with the reason). */
  function ready(t: Parameters<typeof cluster.require>[0]) {
    const c = cluster.require(t);
    if (!c) return undefined;
    assert.ok(image);
    if ('skipped' in image) {
      t.skip(image.skipped);
      return undefined;
    }
    return { c, image };
  }

  /** Admin kubectl (the cluster's system:masters token). */
  async function admin(c: { kubeconfigPath: string }, args: string[], input?: string): Promise<string> {
    if (input === undefined) return (await run(kubectl, ['--kubeconfig', c.kubeconfigPath, ...args], { maxBuffer: 16 * MiB })).stdout;
    const file = join(work, `input-${Date.now()}.yaml`);
    writeFileSync(file, input);
    return (await run(kubectl, ['--kubeconfig', c.kubeconfigPath, ...args, '-f', file], { maxBuffer: 16 * MiB })).stdout;
  }

  async function appPods(core: CoreV1Api): Promise<V1Pod[]> {
    return (await core.listNamespacedPod({ namespace: APP_NS, labelSelector: `app=${APP}` })).items;
  }

  /** Memory of the named container in every Pod of a namespace matching `labelSelector`. */
  async function memoryOf(core: CoreV1Api, namespace: string, labelSelector: string, container?: string) {
    const pods = await core.listNamespacedPod({ namespace, labelSelector });
    return pods.items.flatMap((pod) =>
      (pod.status?.containerStatuses ?? [])
        .filter((s) => (container ? s.name === container : true) && s.state?.running)
        .map((s) => ({ name: `${pod.metadata?.name}/${s.name}`, mem: containerMemory(pod.metadata?.uid ?? '', s.containerID ?? '') })),
    );
  }

  it('step 1: operator and gateway Pods become Ready from the locally loaded image, without cert-manager', async (t) => {
    const r = ready(t);
    if (!r) return;
    const { c, image } = r;
    const colon = image.image.lastIndexOf(':');
    const repository = image.image.slice(0, colon);
    const tag = image.image.slice(colon + 1);
    const started = Date.now();
    // No --wait: helm would wait for a LoadBalancer address no single-node cluster hands out; readiness is
    // checked below through the API instead. The values are README "On Kubernetes"'s.
    const { stdout: notes } = await run(
      helmPath(),
      [
        '--kubeconfig', c.kubeconfigPath, 'install', 'narrowlink', chartDir, '--namespace', NS, '--create-namespace',
        '--set', `image.repository=${repository}`, '--set', `image.tag=${tag}`, '--set', 'image.pullPolicy=IfNotPresent',
        '--set', 'gateway.service.type=NodePort', '--set', `gateway.service.nodePort=${GATEWAY_NODE_PORT}`,
        '--set', 'gateway.tls.extraSans={127.0.0.1}', '--set', `login.gatewayUrls={${GATEWAY_URL}}`,
        '--timeout', '120s',
      ],
      { maxBuffer: 16 * 1024 * 1024 },
    );
    assert.match(notes, new RegExp(`wss://NODE_ADDRESS:${GATEWAY_NODE_PORT}`), 'NOTES name the fixed node port');
    // Kubernetes 1.20 (this cluster): keep the webhook out of the release namespace (NOTES.txt step 1).
    await admin(c, ['label', 'namespace', NS, 'narrowlink.io/inject-disabled=true']);
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
        t.diagnostic(`memory idle ${pod.metadata?.name}/${status.name}: ${describeMemory(mem)}`);
      }
    }
    const events = await core.listNamespacedEvent({ namespace: NS });
    assert.deepEqual(
      events.items.filter((e) => e.reason === 'Pulling' || e.reason === 'Failed').map((e) => `${e.reason}: ${e.message}`),
      [],
    );
    const svc = await core.readNamespacedService({ name: 'narrowlink-gateway', namespace: NS });
    assert.equal(svc.spec?.ports?.find((p) => p.name === 'wss')?.nodePort, GATEWAY_NODE_PORT);
  });

  it('step 2: a Deployment with the inject annotation gets the sidecar in a real Pod, which attaches: NarrowlinkAgent Connected', async (t) => {
    const r = ready(t);
    if (!r) return;
    const { c, image } = r;
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
        metadata: { name: APP, labels: { app: APP } },
        spec: {
          replicas: 1,
          selector: { matchLabels: { app: APP } },
          template: {
            metadata: {
              labels: { app: APP },
              annotations: { 'narrowlink.io/inject': 'true', 'narrowlink.io/expose': 'http=8080' },
            },
            spec: {
              terminationGracePeriodSeconds: 5,
              containers: [
                {
                  name: 'api',
                  image: app.image,
                  imagePullPolicy: 'Never',
                  args: ['-e', APP_SERVER_JS],
                  ports: [{ name: 'http', containerPort: 8080 }],
                },
              ],
            },
          },
        },
      },
    });
    const pod = await waitFor('the injected Pod Ready', 5 * 60_000, async () => {
      const p = (await appPods(core))[0];
      const statuses = p?.status?.containerStatuses ?? [];
      return statuses.length >= 2 && statuses.every((s) => s.ready) ? p : undefined;
    });
    assert.equal(pod.metadata?.annotations?.['narrowlink.io/injected'], 'true');
    const sidecar = pod.status?.containerStatuses?.find((s) => s.name !== 'api');
    assert.ok(sidecar, 'a second container was injected');
    // The sidecar runs the project image loaded into the cluster (the chart's image), with a real container.
    assert.equal(sidecar.image, image.image);
    assert.match(sidecar.containerID ?? '', /^containerd:\/\/[0-9a-f]{64}$/);
    const agent = await waitFor(`NarrowlinkAgent ${APP} Connected`, 3 * 60_000, async () => {
      const list = (await custom.listNamespacedCustomObject({
        group: 'narrowlink.io',
        version: 'v1alpha1',
        namespace: APP_NS,
        plural: 'narrowlinkagents',
      })) as { items: Array<{ metadata: { name: string }; status?: { connectedInstances?: number; conditions?: Array<{ type: string; status: string }> } }> };
      const a = list.items.find((i) => i.metadata.name === APP);
      const connected = a?.status?.conditions?.find((cond) => cond.type === 'Connected')?.status === 'True';
      return connected && a?.status?.connectedInstances === 1 ? a : undefined;
    });
    assert.equal(agent.status?.connectedInstances, 1);
    const mem = containerMemory(pod.metadata?.uid ?? '', sidecar.containerID ?? '');
    assert.ok(mem.workingSetBytes < mem.limitBytes, 'the sidecar stays within its limit');
    t.diagnostic(`memory idle sidecar ${sidecar.name} once attached: ${describeMemory(mem)}`);
  });

  it('step 3: a cluster user logs in with the packed CLI and forwards to the Pod: 1 MiB each way, sha256 verified', async (t) => {
    const r = ready(t);
    if (!r) return;
    const { c } = r;
    const nodeBin = await otherNodeBin();
    assert.ok(nodeBin, 'npm has a node package for this platform (the tier runs on linux-x64 only)');
    // The cluster admin: a user alice in group developers, allowed to log in, and a policy for the group.
    developer = await makeDeveloper(kubectl, c.kubeconfigPath, c, work, 'alice', 'developers');
    await admin(c, ['-n', NS, 'create', 'rolebinding', 'narrowlink-login', '--clusterrole', 'narrowlink-login', '--group', 'developers']);
    await admin(
      c,
      ['apply'],
      `apiVersion: narrowlink.io/v1alpha1
kind: AccessPolicy
metadata: { name: developers, namespace: ${APP_NS} }
spec:
  subjects: [{ kind: Group, name: developers }]
  rules: [{ action: Allow, agents: { names: [${APP}] } }]
`,
    );
    // The developer: the CLI as npm installs it, run by Node 22.19, with nothing but alice's kubeconfig.
    const tarball = await packCli(join(work, 'pack'));
    const bin = await installGlobal(tarball, join(work, 'prefix'));
    const env = {
      PATH: pathWithout([bin, nodeBin]),
      HOME: join(work, 'home'),
      XDG_CONFIG_HOME: join(work, 'xdg'),
      KUBECONFIG: developer.kubeconfig,
    };
    cli = { narrowlink: join(bin, 'narrowlink'), env };
    const login = await runBinary(cli.narrowlink, ['login'], env, 120_000);
    assert.equal(login.code, 0, login.stderr);
    t.diagnostic(`$ narrowlink login\n${login.stdout.trimEnd()}`);
    assert.match(login.stdout, new RegExp(`^logged in to context "${developer.context}" as alice \\(groups developers, system:authenticated\\)\\n`));
    // 8 h (login.tokenTtlSeconds), printed rounded down to the minute.
    assert.match(login.stdout, new RegExp(`^gateway ${GATEWAY_URL}; token expires \\S+ \\(in (8h 0m|7h 59m)\\)$`, 'm'));
    // The policy reaches the gateway through the operator: wait until ls shows the agent with its instance.
    const listed = await waitFor('narrowlink ls lists the agent', 60_000, async () => {
      const ls = await runBinary(cli?.narrowlink ?? '', ['ls', '-o', 'json'], env);
      if (ls.code !== 0) throw new Error(ls.stderr);
      const { agents } = JSON.parse(ls.stdout) as { agents: Array<{ name: string; namespace: string; instances: number }> };
      return agents.find((a) => a.namespace === APP_NS && a.name === APP && a.instances > 0);
    });
    assert.equal(listed.instances, 1);
    const ls = await runBinary(cli.narrowlink, ['ls'], env);
    t.diagnostic(`$ narrowlink ls\n${ls.stdout.trimEnd()}`);
    // What a person sees (README "On Kubernetes"): forward in normal mode and one request through it.
    const humanPort = await freePort();
    const human = startBinary(cli.narrowlink, ['forward', String(humanPort), `${APP_NS}/${APP}:http`], env);
    try {
      // Normal mode: the human lines go to stderr, stdout stays free.
      await waitFor('the normal-mode forward listening', 60_000, async () =>
        human.stderr().includes(`forwarding 127.0.0.1:${humanPort} -> ${APP_NS}/${APP}:http`) ? true : undefined,
      );
      const hello = await waitFor('an answer through the normal-mode forward', 60_000, () => httpThrough(humanPort, '/'));
      assert.equal(hello.body.toString(), 'orders /\n');
    } finally {
      assert.equal(await human.stop(), 0);
    }
    assert.deepEqual(human.lines, [], 'nothing on stdout in normal mode');
    t.diagnostic(`$ narrowlink forward ${humanPort} ${APP_NS}/${APP}:http\n${human.stderr().trimEnd()}`);
    forwardPort = await freePort();
    forward = startBinary(cli.narrowlink, ['forward', '-o', 'json', '-v', String(forwardPort), `${APP_NS}/${APP}:http`], env);
    const readyLine = await forward.waitEvent('ready', 60_000);
    assert.deepEqual(
      (readyLine.listeners as Array<{ port: number }>).map((l) => l.port),
      [forwardPort],
    );
    const core = c.kubeConfig().makeApiClient(CoreV1Api);
    const appPod = (await appPods(core))[0]?.metadata?.name;
    // A body of known content down, random bytes up: both hashed on the other side.
    const down = await waitFor('the first answer through forward', 60_000, () => httpThrough(forwardPort, `/blob?bytes=${MiB}`));
    assert.equal(down.status, 200);
    assert.equal(down.pod, appPod, 'answered by the injected Pod');
    assert.equal(down.body.length, MiB);
    assert.equal(sha256(down.body), sha256(appBlob(MiB)));
    const upload = randomBytes(MiB);
    const up = await httpThrough(forwardPort, '/sha256', { method: 'POST', body: upload });
    assert.deepEqual(JSON.parse(up.body.toString()), { bytes: MiB, sha256: sha256(upload) });
    // Eight concurrent streams of 1 MiB: what the memory numbers below have seen.
    const parallel = await Promise.all(Array.from({ length: 8 }, () => httpThrough(forwardPort, `/blob?bytes=${MiB}`)));
    for (const answer of parallel) assert.equal(sha256(answer.body), sha256(appBlob(MiB)));
    // A sustained download, eight streams of 32 MiB at once: what a sidecar's memory limit must hold (V8 lets
    // garbage buffers pile up under throughput before it collects them), not only a few MiB.
    const sustainedStart = performance.now();
    const sustained = await Promise.all(Array.from({ length: 8 }, () => streamThrough(forwardPort, 32 * MiB)));
    for (const answer of sustained) assert.deepEqual(answer, { status: 200, bytes: 32 * MiB, intact: true });
    t.diagnostic(`256 MiB over 8 streams through forward in ${((performance.now() - sustainedStart) / 1000).toFixed(1)} s`);
    const paths = forward.lines.filter((l) => l.event === 'stream-open').map((l) => l.path);
    t.diagnostic(`18 streams through forward, paths: ${[...new Set(paths)].join(', ')}`);
    const measured = [
      ...(await memoryOf(core, APP_NS, `app=${APP}`)).filter((m) => !m.name.endsWith('/api')),
      ...(await memoryOf(core, NS, 'app.kubernetes.io/component=gateway')),
      ...(await memoryOf(core, NS, 'app.kubernetes.io/component=operator')),
    ];
    for (const m of measured) {
      assert.ok(m.mem.workingSetBytes < m.mem.limitBytes, `${m.name} within its limit`);
      t.diagnostic(`memory after 266 MiB through ${m.name}: ${describeMemory(m.mem)}`);
    }
  });

  it("step 4: a rollout restarts the sidecars; forward keeps its listener and reaches the new Pod", async (t) => {
    const r = ready(t);
    if (!r) return;
    const { c } = r;
    assert.ok(forward && forwardPort, 'step 3 started forward');
    const core = c.kubeConfig().makeApiClient(CoreV1Api);
    const oldPods = new Set((await appPods(core)).map((p) => p.metadata?.name));
    // The listener must never refuse: probe it with bare TCP connects all through the rollout.
    let probing = true;
    let refusals = 0;
    let probes = 0;
    const prober = (async () => {
      while (probing) {
        await new Promise<void>((resolveProbe) => {
          const socket = connect({ host: '127.0.0.1', port: forwardPort });
          socket.once('connect', () => {
            probes++;
            socket.destroy();
            resolveProbe();
          });
          socket.once('error', (err: NodeJS.ErrnoException) => {
            if (err.code === 'ECONNREFUSED') refusals++;
            resolveProbe();
          });
        });
        await new Promise((r2) => setTimeout(r2, 250));
      }
    })();
    const started = Date.now();
    await admin(c, ['-n', APP_NS, 'rollout', 'restart', `deployment/${APP}`]);
    await run(kubectl, ['--kubeconfig', c.kubeconfigPath, '-n', APP_NS, 'rollout', 'status', `deployment/${APP}`, '--timeout=240s']);
    const rolledMs = Date.now() - started;
    // Ready Pods only: the old one may still be terminating.
    const answered = await waitFor('an answer from a new Pod through the same forward', 120_000, async () => {
      const answer = await httpThrough(forwardPort, '/', { timeoutMs: 10_000 });
      return answer.status === 200 && answer.pod && !oldPods.has(answer.pod) ? answer : undefined;
    }, 250);
    const recoveredMs = Date.now() - started;
    probing = false;
    await prober;
    assert.equal(refusals, 0, 'the listener was never closed');
    assert.ok(probes > 0);
    assert.equal(forward.child.exitCode, null, 'forward still runs');
    assert.equal(forward.lines.filter((l) => l.event === 'ready').length, 1, 'forward never restarted its listeners');
    const down = await httpThrough(forwardPort, `/blob?bytes=${MiB}`);
    assert.equal(sha256(down.body), sha256(appBlob(MiB)));
    t.diagnostic(
      `rollout restart: rollout status done after ${(rolledMs / 1000).toFixed(1)} s, first answer from the new Pod ${answered.pod} after ${(recoveredMs / 1000).toFixed(1)} s (${((recoveredMs - rolledMs) / 1000).toFixed(1)} s after the rollout); listener probed ${probes} times, never refused`,
    );
    // Bounded: the new Pod's sidecar attaches within seconds of being Ready.
    assert.ok(recoveredMs - rolledMs < 60_000, `reached the new Pod ${recoveredMs - rolledMs} ms after the rollout finished`);
  });

  it('step 3b: deleting the AccessPolicy revokes: the open connection is reset DENIED, a new one is refused NO_AGENT', async (t) => {
    const r = ready(t);
    if (!r) return;
    const { c } = r;
    assert.ok(forward && cli, 'step 3 started forward');
    // An open connection: the response to /hold never ends.
    const held = await new Promise<{ closed: Promise<number> }>((resolveHeld, reject) => {
      const req = request({ host: '127.0.0.1', port: forwardPort, path: '/hold', agent: false }, (res) => {
        res.once('data', () => {
          const closed = new Promise<number>((resolveClosed) => {
            const done = () => resolveClosed(Date.now());
            res.once('close', done);
            res.once('error', done);
            req.once('error', done);
          });
          resolveHeld({ closed });
        });
      });
      req.once('error', reject);
      req.end();
    });
    const seen = forward.lines.length;
    const started = Date.now();
    // The only Allow for the group goes (a policy needs at least one rule, so the policy goes).
    await admin(c, ['-n', APP_NS, 'delete', 'accesspolicy', 'developers']);
    const closedAt = await Promise.race([held.closed, new Promise<number>((_, reject) => setTimeout(() => reject(new Error('the held connection was not closed within 60 s')), 60_000))]);
    const heldPath = forward.lines.slice(0, seen).filter((l) => l.event === 'stream-open').at(-1)?.path;
    // forward reports how the stream ended: reset by the gateway (relay) or the agent (direct) with DENIED.
    const ended = await waitFor('forward reports the end of the held stream', 15_000, async () =>
      forward?.lines.slice(seen).find((l) => l.event === 'stream-closed'),
    );
    const reset = forward.lines.slice(seen).find((l) => l.event === 'stream-reset');
    assert.equal(ended.code, 'DENIED', `the held stream (${heldPath}) ended: ${JSON.stringify(forward.lines.slice(seen))}`);
    assert.equal(reset?.code, 'DENIED');
    // A new connection is refused. The agent is now invisible to this user, and the names of invisible agents are
    // never confirmed: NO_AGENT (docs/errors.md: NO_AGENT · NL_ERR_STREAM_NO_AGENT), not DENIED.
    const seenBefore = forward.lines.length;
    await assert.rejects(httpThrough(forwardPort, '/', { timeoutMs: 20_000 }));
    const failed = await waitFor('forward reports the refused stream', 10_000, async () =>
      forward?.lines.slice(seenBefore).find((l) => l.event === 'stream-failed'),
    );
    assert.equal(failed.code, 'NO_AGENT', JSON.stringify(failed));
    // The one-shot form says the same with its exit code (1: a stream failed), by port number too.
    const connect1 = await runBinary(cli.narrowlink, ['connect', `${APP_NS}/${APP}`, '8080'], cli.env, 30_000);
    assert.equal(connect1.code, 1, connect1.stderr);
    assert.match(connect1.stderr, /NO_AGENT/);
    const ls = await runBinary(cli.narrowlink, ['ls', '-o', 'json'], cli.env);
    assert.deepEqual(JSON.parse(ls.stdout), { agents: [] }, 'ls lists nothing any more');
    t.diagnostic(
      `revoked: the open connection (${heldPath}) closed ${((closedAt - started) / 1000).toFixed(1)} s after kubectl delete returned; new streams: ${failed.code}; connect: ${connect1.stderr.trim().split('\n').at(-1)}`,
    );
    assert.equal(await forward.stop(), 0);
    forward = undefined;
  });

  it('step 4: scaling the injected Deployment 1 → 3 → 0 and deleting a Pod: the connected instances follow', async (t) => {
    const r = ready(t);
    if (!r) return;
    const { c } = r;
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
        name: APP,
      })) as { status?: { connectedInstances?: number } };
      return a.status?.connectedInstances ?? 0;
    };
    const scale = async (replicas: number) => {
      const started = Date.now();
      await apps.patchNamespacedDeploymentScale(
        { name: APP, namespace: APP_NS, body: { spec: { replicas } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      await waitFor(`${replicas} connected instance(s)`, 4 * 60_000, async () => ((await instances()) === replicas ? true : undefined));
      t.diagnostic(`scaled to ${replicas}: instances followed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    };
    await scale(3);
    // A deleted Pod is replaced by the ReplicaSet; its sidecar attaches and the count is back at 3 without the old one.
    const victim = (await appPods(core))[0]?.metadata?.name;
    assert.ok(victim);
    await core.deleteNamespacedPod({ name: victim, namespace: APP_NS, gracePeriodSeconds: 1 });
    await waitFor('the replacement Pod Ready and 3 instances', 4 * 60_000, async () => {
      const ready3 = (await appPods(core)).filter(
        (p) => p.metadata?.name !== victim && (p.status?.containerStatuses ?? []).every((s) => s.ready) && p.status?.phase === 'Running',
      );
      return ready3.length === 3 && (await instances()) === 3 ? true : undefined;
    });
    await scale(0);
  });

  it('step 5: helm uninstall leaves nothing of the release but what the chart documents as kept', async (t) => {
    const r = ready(t);
    if (!r) return;
    const { c } = r;
    await run(helmPath(), ['--kubeconfig', c.kubeconfigPath, 'uninstall', 'narrowlink', '--namespace', NS, '--timeout', '120s']);
    const core = c.kubeConfig().makeApiClient(CoreV1Api);
    await waitFor('no Pod left in the release namespace', 120_000, async () => {
      const pods = await core.listNamespacedPod({ namespace: NS });
      return pods.items.length === 0 ? true : undefined;
    });
    const before = new Set(baseline.map(refKey));
    /** What the test itself made as the cluster's admin and user (not the chart's business), and namespace defaults. */
    const ours = (o: ObjectRef): boolean =>
      (o.resource === 'namespaces' && (o.name === NS || o.name === APP_NS)) ||
      // Every namespace gets these from Kubernetes itself.
      (o.resource === 'serviceaccounts' && o.name === 'default') ||
      (o.resource === 'secrets' && o.name.startsWith('default-token-')) ||
      (o.resource === 'configmaps' && o.name === 'kube-root-ca.crt') ||
      // The application (its Deployment and what that owns) and the developer's user and login grant.
      (o.namespace === APP_NS &&
        ((o.resource === 'deployments.apps' && o.name === APP) || (o.resource === 'replicasets.apps' && o.ownerKinds.includes('Deployment')) || (o.resource === 'pods' && o.ownerKinds.includes('ReplicaSet')))) ||
      (o.resource === 'certificatesigningrequests.certificates.k8s.io' && o.name === developer?.user) ||
      (o.resource === 'rolebindings.rbac.authorization.k8s.io' && o.namespace === NS && o.name === 'narrowlink-login') ||
      // The admin's policy (step 3b deletes it; left only when that step did not run).
      (o.resource === 'accesspolicies.narrowlink.io' && o.namespace === APP_NS && o.name === 'developers');
    let left: ObjectRef[] = [];
    let undocumented: ObjectRef[] = [];
    try {
      // Garbage collection (the CA ConfigMaps owned by the webhook configuration) takes a moment.
      await waitFor('only documented objects left', 120_000, async () => {
        left = (await inventory(kubectl, c.kubeconfigPath)).filter((o) => !before.has(refKey(o)) && !ours(o));
        undocumented = left.filter((o) => !DOCUMENTED_KEPT.has(refKey(o)));
        return undocumented.length === 0 ? true : undefined;
      }, 5000);
    } finally {
      t.diagnostic(`left after helm uninstall: ${left.map(refKey).join(', ')}`);
    }
    assert.deepEqual(undocumented.map(refKey), []);
    // The documented way to remove the rest: the agents' cleanup finalizer has no operator left to run it, so it is
    // removed by hand (charts/narrowlink/README.md "Upgrade and uninstall"); then the namespaces go completely.
    const agentLeft = left.find((o) => o.resource === 'narrowlinkagents.narrowlink.io');
    assert.deepEqual(agentLeft?.finalizers, ['narrowlink.io/cleanup']);
    await admin(c, ['-n', APP_NS, 'patch', 'narrowlinkagent', APP, '--type', 'merge', '-p', '{"metadata":{"finalizers":null}}']);
    const started = Date.now();
    await admin(c, ['delete', 'namespace', APP_NS, NS, '--timeout=180s']);
    t.diagnostic(`kubectl delete namespace ${APP_NS} ${NS}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
    const namespaces = (await core.listNamespace()).items.map((n) => n.metadata?.name);
    assert.ok(!namespaces.includes(APP_NS) && !namespaces.includes(NS), namespaces.join(', '));
  });
});
