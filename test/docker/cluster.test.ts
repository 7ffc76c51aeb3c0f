/**
 * The Docker tier: the whole product in a real Kubernetes (k3s in a container, testcontainers) with real
 * cert-manager, the project image built from deploy/Dockerfile and the chart installed with helm. What the
 * kube-apiserver tier (test/k8s) cannot show runs here: a kubelet starts the operator, the gateway and an
 * injected sidecar; cert-manager issues real Certificates; a client reaches nginx through the gateway Service.
 *
 * Without a container runtime (`getContainerRuntimeClient()` rejects) every test is marked skipped with
 * `docker tier: SKIPPED (no container runtime: ...)`, printed once: it never counts as passing.
 * Needs Docker (or a compatible engine testcontainers finds), network access to pull rancher/k3s, nginx, node,
 * cert-manager's manifest and images, and linux-amd64 helm/kubectl (test/k8s/tools.ts). See ./README.md.
 *
 * The tests run in order and build on each other (one cluster for the file).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { cpSync, createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { K3sContainer, type StartedK3sContainer } from '@testcontainers/k3s';
import { signToken } from '@narrowlink/protocol';
import { GenericContainer, getContainerRuntimeClient } from 'testcontainers';
import { registerChild, type StartedProcess, startProcess, stopAll, stopChild } from '../helpers/processes.ts';
import { helmPath, kubectlPath, toolsUnavailableReason } from '../k8s/tools.ts';
import { buildContextSources } from '../../deploy/image/dockerfile.ts';
import { ROOT } from '../helpers/paths.ts';
import { waitFor as poll } from '../helpers/wait.ts';

const run = promisify(execFile);

const K3S_IMAGE = 'rancher/k3s:v1.31.2-k3s1';
const CERT_MANAGER_VERSION = 'v1.16.2';
const CERT_MANAGER_MANIFEST = `https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml`;
const NGINX_IMAGE = 'nginx:1.27-alpine';
/** The project image as built here and imported into k3s's containerd (docker.io/library/...). */
const IMAGE_REPOSITORY = 'narrowlink-k8s';
const IMAGE_TAG = 'docker-tier';

const SYSTEM_NS = 'narrowlink-system';
const APP_NS = 'shop';
const ISSUER = 'docker-tier-selfsigned';
const GATEWAY_CA_CONFIGMAP = 'narrowlink-gateway-ca';
const PUBLISHED_DOMAIN = 'site.docker-tier.example';

const SKIP_PREFIX = 'docker tier: SKIPPED';

interface Condition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
}
interface KubeItem {
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec?: Record<string, unknown>;
  status?: { conditions?: Condition[]; containerStatuses?: Array<{ name: string; ready: boolean; state?: Record<string, unknown> }> };
  data?: Record<string, string>;
}

/** Polls every 2 s by default: each check here runs kubectl. */
function waitFor<T>(what: string, check: () => Promise<T | undefined | false | null>, timeoutMs: number, everyMs = 2000): Promise<T> {
  return poll(what, check, timeoutMs, everyMs);
}

function condition(item: KubeItem | undefined, type: string): Condition | undefined {
  return item?.status?.conditions?.find((c) => c.type === type);
}

/**
 * A build context holding only what deploy/Dockerfile copies: testcontainers honours a `.dockerignore` at the
 * context root only (not BuildKit's `deploy/Dockerfile.dockerignore`), and the repository root would send
 * node_modules and .git to the engine.
 */
function stageBuildContext(dir: string): string {
  const context = join(dir, 'build-context');
  mkdirSync(join(context, 'deploy'), { recursive: true });
  const dockerfile = readFileSync(join(ROOT, 'deploy', 'Dockerfile'), 'utf8');
  cpSync(join(ROOT, 'deploy', 'Dockerfile'), join(context, 'deploy', 'Dockerfile'));
  writeFileSync(join(context, '.dockerignore'), readFileSync(join(ROOT, 'deploy', 'Dockerfile.dockerignore')));
  // Exactly the paths the Dockerfile's COPY lines read (manifests, sources, build scripts, deploy/image).
  for (const source of buildContextSources(dockerfile)) {
    cpSync(join(ROOT, source), join(context, source), { recursive: true, filter: (file) => !file.endsWith('.test.ts') });
  }
  return context;
}

describe('docker tier: k3s + real cert-manager + the project image + the chart', () => {
  let runtimeProblem: string | undefined;
  let announced = false;
  let dir: string | undefined;
  let k3s: StartedK3sContainer | undefined;
  let kubeconfig = '';
  let portForward: ChildProcess | undefined;
  let forward: StartedProcess | undefined;

  before(async () => {
    try {
      await getContainerRuntimeClient();
    } catch (error) {
      runtimeProblem = `no container runtime: ${(error as Error).message.split('\n')[0]}`;
      return;
    }
    const tools = toolsUnavailableReason();
    if (tools) runtimeProblem = `no helm/kubectl: ${tools}`;
  });

  after(async () => {
    if (forward) await forward.stop();
    if (portForward) await stopChild(portForward);
    await stopAll();
    await k3s?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** False (after marking the test skipped with the reason, printed once) when this machine has no Docker. */
  const available = (t: TestContext): boolean => {
    if (runtimeProblem === undefined) return true;
    const message = `${SKIP_PREFIX} (${runtimeProblem})`;
    if (!announced) {
      announced = true;
      process.stderr.write(`${message}\n`);
    }
    t.skip(message);
    return false;
  };

  const kubectl = async (args: string[], options: { input?: string; timeoutMs?: number } = {}): Promise<string> => {
    const child = execFile(kubectlPath(), ['--kubeconfig', kubeconfig, ...args], { maxBuffer: 64 * 1024 * 1024, timeout: options.timeoutMs ?? 120_000 });
    const output = new Promise<string>((resolveOutput, reject) => {
      let stdout = '';
      let stderr = '';
      child.stdout?.on('data', (chunk: Buffer) => {
        stdout += chunk.toString('utf8');
      });
      child.stderr?.on('data', (chunk: Buffer) => {
        stderr += chunk.toString('utf8');
      });
      child.once('error', reject);
      child.once('close', (code) => (code === 0 ? resolveOutput(stdout) : reject(new Error(`kubectl ${args.join(' ')}: exit ${code}: ${stderr.trim()}`))));
    });
    child.stdin?.end(options.input ?? '');
    return output;
  };
  const apply = (manifest: object): Promise<string> => kubectl(['apply', '-f', '-'], { input: JSON.stringify(manifest) });
  const getJson = async (args: string[]): Promise<KubeItem> => JSON.parse(await kubectl(['get', ...args, '-o', 'json'])) as KubeItem;
  const getList = async (args: string[]): Promise<KubeItem[]> => (JSON.parse(await kubectl(['get', ...args, '-o', 'json'])) as { items: KubeItem[] }).items;

  it('setup: k3s, cert-manager, the project image loaded into k3s, helm install of charts/narrowlink', { timeout: 25 * 60_000 }, async (t) => {
    if (!available(t)) return;
    dir = mkdtempSync(join(tmpdir(), 'nl-docker-tier-'));

    // The image first (the slow part), while nothing else runs.
    const image = `${IMAGE_REPOSITORY}:${IMAGE_TAG}`;
    await GenericContainer.fromDockerfile(stageBuildContext(dir), 'deploy/Dockerfile').build(image, { deleteOnExit: false });

    k3s = await new K3sContainer(K3S_IMAGE).start();
    kubeconfig = join(dir, 'kubeconfig.yaml');
    writeFileSync(kubeconfig, k3s.getKubeConfig(), { mode: 0o600 });

    // docker save → k3s's containerd (the chart uses pullPolicy Never: no registry involved).
    const tarball = join(dir, 'image.tar');
    const runtime = await getContainerRuntimeClient();
    await pipeline(await runtime.container.dockerode.getImage(image).get(), createWriteStream(tarball));
    await k3s.copyFilesToContainer([{ source: tarball, target: '/tmp/narrowlink-image.tar' }]);
    const imported = await k3s.exec(['ctr', '-n', 'k8s.io', 'images', 'import', '/tmp/narrowlink-image.tar']);
    assert.equal(imported.exitCode, 0, imported.output);

    // cert-manager from its release manifest; its webhook must answer before any cert-manager object is applied.
    await kubectl(['apply', '-f', CERT_MANAGER_MANIFEST], { timeoutMs: 300_000 });
    for (const deployment of ['cert-manager', 'cert-manager-cainjector', 'cert-manager-webhook']) {
      await kubectl(['-n', 'cert-manager', 'rollout', 'status', `deployment/${deployment}`, '--timeout=300s'], { timeoutMs: 320_000 });
    }
    const clusterIssuer = { apiVersion: 'cert-manager.io/v1', kind: 'ClusterIssuer', metadata: { name: ISSUER }, spec: { selfSigned: {} } };
    await waitFor('the cert-manager webhook to admit a ClusterIssuer', () => apply(clusterIssuer), 180_000);
    await waitFor('ClusterIssuer Ready', async () => condition(await getJson(['clusterissuer', ISSUER]), 'Ready')?.status === 'True', 120_000);

    // The chart, with the image just imported and the self-signed ClusterIssuer for published domains.
    const values = {
      image: { repository: IMAGE_REPOSITORY, tag: IMAGE_TAG, pullPolicy: 'Never' },
      issuer: { defaultIssuer: { name: ISSUER, kind: 'ClusterIssuer' } },
      // Fail: a pod created before the webhook serves is refused and retried by its ReplicaSet, never admitted bare.
      webhook: { failurePolicy: 'Fail' },
      sidecar: { caConfigMap: GATEWAY_CA_CONFIGMAP },
      // The test reaches the gateway through `kubectl port-forward` as wss://localhost:PORT.
      gateway: { service: { type: 'ClusterIP' }, tls: { dnsNames: ['localhost'] } },
    };
    const valuesFile = join(dir, 'values.json');
    writeFileSync(valuesFile, JSON.stringify(values));
    await run(
      helmPath(),
      ['install', 'narrowlink', join(ROOT, 'charts', 'narrowlink'), '--kubeconfig', kubeconfig, '--namespace', SYSTEM_NS, '--create-namespace', '--values', valuesFile, '--timeout', '300s'],
      { maxBuffer: 16 * 1024 * 1024, timeout: 320_000 },
    );
    for (const deployment of ['narrowlink-operator', 'narrowlink-gateway']) {
      await kubectl(['-n', SYSTEM_NS, 'wait', '--for=condition=Available', `deployment/${deployment}`, '--timeout=300s'], { timeoutMs: 320_000 });
    }
    // cainjector has put the webhook CA in place: from now on pods get the sidecar.
    await waitFor(
      'caBundle of the sidecar-injection webhook',
      async () => {
        const webhook = JSON.parse(await kubectl(['get', 'mutatingwebhookconfiguration', 'narrowlink-sidecar-injector', '-o', 'json'])) as {
          webhooks?: Array<{ clientConfig?: { caBundle?: string } }>;
        };
        return (webhook.webhooks ?? []).every((w) => (w.clientConfig?.caBundle ?? '').length > 0) && (webhook.webhooks ?? []).length > 0;
      },
      180_000,
    );
  });

  it('an annotated nginx Deployment gets the narrowlink-agent sidecar; its NarrowlinkAgent becomes Ready and Connected', { timeout: 10 * 60_000 }, async (t) => {
    if (!available(t)) return;
    assert.ok(k3s, 'the setup test did not complete');
    await apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: APP_NS } });
    // The sidecar trusts the chart's CA (the gateway certificate's issuer) through this ConfigMap.
    const gatewayTls = await waitFor('the gateway TLS Secret', () => getJson(['-n', SYSTEM_NS, 'secret', 'narrowlink-gateway-tls']), 180_000);
    const caPem = Buffer.from(gatewayTls.data?.['ca.crt'] ?? '', 'base64').toString('utf8');
    assert.match(caPem, /BEGIN CERTIFICATE/);
    writeFileSync(join(dir ?? '', 'gateway-ca.crt'), caPem);
    await apply({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: GATEWAY_CA_CONFIGMAP, namespace: APP_NS }, data: { 'ca.crt': caPem } });

    await apply({
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'web', namespace: APP_NS, labels: { app: 'web' } },
      spec: {
        replicas: 1,
        selector: { matchLabels: { app: 'web' } },
        template: {
          metadata: { labels: { app: 'web' }, annotations: { 'narrowlink.io/inject': 'true', 'narrowlink.io/expose': 'http=80' } },
          spec: { containers: [{ name: 'nginx', image: NGINX_IMAGE, ports: [{ name: 'http', containerPort: 80 }] }] },
        },
      },
    });
    await apply({
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'AccessPolicy',
      metadata: { name: 'alice-web', namespace: APP_NS },
      spec: { subjects: [{ kind: 'User', name: 'alice' }], rules: [{ action: 'Allow', agents: { names: ['web'] } }] },
    });
    await kubectl(['-n', APP_NS, 'rollout', 'status', 'deployment/web', '--timeout=300s'], { timeoutMs: 320_000 });

    const pods = await getList(['-n', APP_NS, 'pods', '-l', 'app=web']);
    assert.equal(pods.length, 1, pods.map((p) => p.metadata.name).join(', '));
    const sidecar = pods[0]?.status?.containerStatuses?.find((c) => c.name === 'narrowlink-agent');
    assert.ok(sidecar, `no narrowlink-agent container in ${JSON.stringify(pods[0]?.status?.containerStatuses?.map((c) => c.name))}`);
    assert.ok(sidecar.state?.running, `narrowlink-agent is not running: ${JSON.stringify(sidecar.state)}`);
    assert.equal(sidecar.ready, true);

    const agent = await waitFor(
      'NarrowlinkAgent shop/web Ready=True and Connected=True',
      async () => {
        const a = await getJson(['-n', APP_NS, 'narrowlinkagent', 'web']);
        return condition(a, 'Ready')?.status === 'True' && condition(a, 'Connected')?.status === 'True' ? a : undefined;
      },
      180_000,
    );
    assert.equal((agent.spec?.expose as Array<{ name: string; port: number }> | undefined)?.[0]?.port, 80);
  });

  it('a published domain gets a Certificate issued by real cert-manager (Ready) and the agent reports CertificatesReady', { timeout: 5 * 60_000 }, async (t) => {
    if (!available(t)) return;
    assert.ok(k3s, 'the setup test did not complete');
    await apply({
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'NarrowlinkAgent',
      metadata: { name: 'site', namespace: APP_NS },
      spec: {
        external: true,
        expose: [{ name: 'http', port: 80, host: `web.${APP_NS}.svc` }],
        publish: [{ domain: PUBLISHED_DOMAIN, port: 80, tls: 'Terminate' }],
      },
    });
    const certificate = await waitFor(
      `a Ready Certificate for ${PUBLISHED_DOMAIN}`,
      async () => {
        const items = await getList(['-n', APP_NS, 'certificates.cert-manager.io', '-l', 'narrowlink.io/owner-name=site']);
        return items.find((c) => condition(c, 'Ready')?.status === 'True');
      },
      180_000,
    );
    assert.deepEqual(certificate.spec?.dnsNames, [PUBLISHED_DOMAIN]);
    assert.deepEqual(certificate.spec?.issuerRef, { name: ISSUER, kind: 'ClusterIssuer', group: 'cert-manager.io' });
    const secretName = String(certificate.spec?.secretName);
    const tls = await getJson(['-n', APP_NS, 'secret', secretName]);
    assert.match(Buffer.from(tls.data?.['tls.crt'] ?? '', 'base64').toString('utf8'), /BEGIN CERTIFICATE/);
    await waitFor(
      'NarrowlinkAgent shop/site CertificatesReady=True',
      async () => condition(await getJson(['-n', APP_NS, 'narrowlinkagent', 'site']), 'CertificatesReady')?.status === 'True',
      120_000,
    );
  });

  it('narrowlink forward through the gateway Service (kubectl port-forward) reaches nginx in the pod', { timeout: 5 * 60_000 }, async (t) => {
    if (!available(t)) return;
    assert.ok(k3s && dir, 'the setup test did not complete');
    portForward = spawn(kubectlPath(), ['--kubeconfig', kubeconfig, '-n', SYSTEM_NS, 'port-forward', 'service/narrowlink-gateway', ':443'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    registerChild(portForward);
    const child = portForward;
    const gatewayPort = await new Promise<number>((resolvePort, reject) => {
      let seen = '';
      const timer = setTimeout(() => reject(new Error(`kubectl port-forward printed no port: ${seen}`)), 60_000);
      child.stdout?.on('data', (chunk: Buffer) => {
        seen += chunk.toString('utf8');
        const m = /Forwarding from 127\.0\.0\.1:(\d+)/.exec(seen);
        if (m) {
          clearTimeout(timer);
          resolvePort(Number(m[1]));
        }
      });
      child.stderr?.on('data', (chunk: Buffer) => {
        seen += chunk.toString('utf8');
      });
      child.once('exit', (code) => reject(new Error(`kubectl port-forward exited ${code}: ${seen}`)));
    });

    // A client token signed with the chart-generated key (what an admin would hand to alice).
    const signing = await getJson(['-n', SYSTEM_NS, 'secret', 'narrowlink-signing-key']);
    const privateKeyPem = Buffer.from(signing.data?.['private.pem'] ?? '', 'base64').toString('utf8');
    const token = await signToken(privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 600 });
    const tokenFile = join(dir, 'alice.token');
    writeFileSync(tokenFile, token, { mode: 0o600 });
    forward = await startProcess(
      'narrowlink forward',
      [
        join(ROOT, 'client-cli/src/main.ts'),
        'forward',
        '-o',
        'json',
        '-L',
        `127.0.0.1:0:${APP_NS}/web:http`,
        '--gateway',
        `wss://localhost:${gatewayPort}`,
        '--ca-file',
        join(dir, 'gateway-ca.crt'),
        '--token-file',
        tokenFile,
      ],
      { timeoutMs: 60_000, env: { XDG_CONFIG_HOME: join(dir, 'xdg'), NARROWLINK_GATEWAY: undefined, NARROWLINK_TOKEN: undefined, NARROWLINK_TOKEN_FILE: undefined } },
    );
    const localPort = Number((forward.readyLine.listeners as Array<{ port: number }>)[0]?.port);
    const response = await waitFor(
      'nginx through the relay',
      async () => {
        const r = await fetch(`http://127.0.0.1:${localPort}/`, { signal: AbortSignal.timeout(10_000) });
        return { status: r.status, body: await r.text(), server: r.headers.get('server') };
      },
      60_000,
    );
    assert.equal(response.status, 200);
    assert.match(response.server ?? '', /^nginx/);
    assert.match(response.body, /Welcome to nginx!/);
  });
});
