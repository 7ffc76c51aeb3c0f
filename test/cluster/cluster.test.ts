/**
 * The cluster tier itself: a real single-node Kubernetes (test/cluster/cluster.sh) schedules a Pod from a locally
 * imported image onto containerd, the host reaches it over the cluster bridge, the Pod reaches the apiserver
 * through the `kubernetes` ClusterIP (kube-proxy), a NodePort Service answers on the bridge and loopback
 * addresses, and `down` puts the host back exactly as it was, twice in a row.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { CoreV1Api, RbacAuthorizationV1Api, type V1Pod } from '@kubernetes/client-node';
import { type Cluster, type ClusterResult, isSkipped, nodeTestImage, requireCluster, startCluster } from './harness.ts';
import { captureHostState, type HostState } from './host-state.ts';

const NS = 'cluster-tier';

/** HTTP server run by `node -e` in the workload container: answers with who it is. */
const serverScript = `
const http = require('node:http');
http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ pod: process.env.POD_NAME, path: req.url, uid: process.getuid() }));
}).listen(8080, '0.0.0.0');
`;

/** Run in a Pod: read its own Pod object through the kubernetes Service with its ServiceAccount token. */
const apiClientScript = `
const fs = require('node:fs');
const https = require('node:https');
const sa = '/var/run/secrets/kubernetes.io/serviceaccount/';
const host = process.env.KUBERNETES_SERVICE_HOST;
const port = process.env.KUBERNETES_SERVICE_PORT;
const path = '/api/v1/namespaces/' + fs.readFileSync(sa + 'namespace', 'utf8') + '/pods/' + process.env.POD_NAME;
https.get({ host, port, path, ca: fs.readFileSync(sa + 'ca.crt'),
  headers: { authorization: 'Bearer ' + fs.readFileSync(sa + 'token', 'utf8') } }, (res) => {
  let body = '';
  res.on('data', (c) => { body += c; });
  res.on('end', () => {
    const pod = JSON.parse(body);
    console.log(JSON.stringify({ status: res.statusCode, host, port, name: pod.metadata && pod.metadata.name }));
    process.exit(res.statusCode === 200 ? 0 : 1);
  });
}).on('error', (e) => { console.log(JSON.stringify({ error: e.message, host, port })); process.exit(2); });
`;

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
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ''}`);
}

/**
 * GET a JSON body over a NEW connection each time (agent: false): a kept-alive socket opened before kube-proxy
 * programmed a Service would stay bound to wherever its first packet went.
 */
function getJson(url: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, timeout: 3000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`${url}: HTTP ${res.statusCode}`));
        else resolve(JSON.parse(body));
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${url}: no answer within 3 s`)));
    req.on('error', reject);
  });
}

function podSpec(name: string, image: string, script: string, extra: Partial<V1Pod['spec']> = {}): V1Pod {
  return {
    metadata: { name, namespace: NS, labels: { app: name } },
    spec: {
      terminationGracePeriodSeconds: 1,
      containers: [
        {
          name: 'main',
          image,
          imagePullPolicy: 'Never',
          args: ['-e', script],
          env: [{ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }],
          resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { memory: '128Mi' } },
        },
      ],
      ...extra,
    },
  };
}

describe('cluster tier: a real single-node Kubernetes', { timeout: 45 * 60_000 }, () => {
  let hostBefore: HostState;
  let result: ClusterResult | undefined;
  let image: { image: string; archive: string };

  before(async () => {
    hostBefore = captureHostState();
    result = await startCluster();
    if (isSkipped(result)) return;
    image = await nodeTestImage();
    await result.importImage(image.archive);
    const core = result.kubeConfig().makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: NS } } });
    // The namespace's default ServiceAccount appears a moment after the namespace; Pods need it.
    await waitFor('the default ServiceAccount', 60_000, async () =>
      core.readNamespacedServiceAccount({ name: 'default', namespace: NS }).then(() => true),
    );
  });

  after(async () => {
    if (result && !isSkipped(result)) await result.stop();
  });

  it('the node is Ready at v1.20.2 with the bridge address as its only address', async (t) => {
    const c = requireCluster(t, result);
    if (!c) return;
    t.diagnostic(`up to node Ready: ${c.upSeconds} s; daemons RSS after up: ${Math.round(c.daemonsRssKiB / 1024)} MiB`);
    const core = c.kubeConfig().makeApiClient(CoreV1Api);
    const node = await core.readNode({ name: c.nodeName });
    const ready = node.status?.conditions?.find((cond) => cond.type === 'Ready');
    assert.equal(ready?.status, 'True', JSON.stringify(node.status?.conditions));
    assert.equal(node.status?.nodeInfo?.kubeletVersion, 'v1.20.2');
    assert.match(node.status?.nodeInfo?.containerRuntimeVersion ?? '', /^containerd:\/\//);
    const internal = node.status?.addresses?.filter((a) => a.type === 'InternalIP').map((a) => a.address);
    assert.deepEqual(internal, [c.bridgeIp]);
    assert.equal(c.apiserverUrl, `https://${c.bridgeIp}:6443`);
    // The kubernetes Service points at the bridge address, never at the machine's own interface.
    const endpoints = await core.readNamespacedEndpoints({ name: 'kubernetes', namespace: 'default' });
    assert.deepEqual(
      endpoints.subsets?.flatMap((s) => s.addresses?.map((a) => a.ip) ?? []),
      [c.bridgeIp],
    );
  });

  it('a Pod from a locally imported image runs a real container that the host reaches over the bridge', async (t) => {
    const c = requireCluster(t, result);
    if (!c) return;
    const core = c.kubeConfig().makeApiClient(CoreV1Api);
    const pod = podSpec('web', image.image, serverScript);
    const container = pod.spec?.containers[0];
    assert.ok(container);
    container.ports = [{ containerPort: 8080 }];
    container.readinessProbe = { httpGet: { path: '/ready', port: 8080 }, periodSeconds: 1 };
    await core.createNamespacedPod({ namespace: NS, body: pod });
    const running = await waitFor('pod web Ready', 180_000, async () => {
      const p = await core.readNamespacedPod({ name: 'web', namespace: NS });
      return p.status?.containerStatuses?.[0]?.ready ? p : undefined;
    });
    assert.equal(running.status?.phase, 'Running');
    const podIp = running.status?.podIP ?? '';
    assert.ok(podIp.startsWith('10.88.'), `pod IP ${podIp} is in the cluster's pod range ${c.podCidr}`);

    // A real process: the container's task in containerd is a node process in a kubepods cgroup.
    const containerId = running.status?.containerStatuses?.[0]?.containerID?.replace(/^containerd:\/\//, '') ?? '';
    assert.match(containerId, /^[0-9a-f]{64}$/);
    const tasks = execFileSync('ctr', ['-a', c.containerdSocket, '-n', 'k8s.io', 'tasks', 'ls'], { encoding: 'utf8' });
    const line = tasks.split('\n').find((l) => l.startsWith(containerId));
    assert.ok(line, `task ${containerId} in:\n${tasks}`);
    const [, pid, status] = line.trim().split(/\s+/);
    assert.equal(status, 'RUNNING');
    assert.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), /node/);
    assert.match(readFileSync(`/proc/${pid}/cgroup`, 'utf8'), /kubepods/);

    const answer = (await getJson(`http://${podIp}:8080/hello`)) as { pod: string; path: string; uid: number };
    assert.deepEqual(answer, { pod: 'web', path: '/hello', uid: 65534 });
  });

  it('a Pod reaches the apiserver through the kubernetes ClusterIP with its ServiceAccount token', async (t) => {
    const c = requireCluster(t, result);
    if (!c) return;
    const kc = c.kubeConfig();
    const core = kc.makeApiClient(CoreV1Api);
    const rbac = kc.makeApiClient(RbacAuthorizationV1Api);
    await core.createNamespacedServiceAccount({ namespace: NS, body: { metadata: { name: 'reader' } } });
    await rbac.createNamespacedRole({
      namespace: NS,
      body: { metadata: { name: 'pod-reader' }, rules: [{ apiGroups: [''], resources: ['pods'], verbs: ['get'] }] },
    });
    await rbac.createNamespacedRoleBinding({
      namespace: NS,
      body: {
        metadata: { name: 'pod-reader' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'pod-reader' },
        subjects: [{ kind: 'ServiceAccount', name: 'reader', namespace: NS }],
      },
    });
    // The token Secret of the new ServiceAccount is created asynchronously; the Pod is admitted once it exists.
    await waitFor('the reader token', 60_000, async () => {
      const sa = await core.readNamespacedServiceAccount({ name: 'reader', namespace: NS });
      return (sa.secrets?.length ?? 0) > 0 ? true : undefined;
    });
    await core.createNamespacedPod({
      namespace: NS,
      body: podSpec('api-client', image.image, apiClientScript, { restartPolicy: 'Never', serviceAccountName: 'reader' }),
    });
    const done = await waitFor('pod api-client to finish', 180_000, async () => {
      const p = await core.readNamespacedPod({ name: 'api-client', namespace: NS });
      return p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed' ? p : undefined;
    });
    // The log comes through apiserver → kubelet (client certificate of our CA, webhook authn/authz on 10250).
    const log = await core.readNamespacedPodLog({ name: 'api-client', namespace: NS });
    assert.equal(done.status?.phase, 'Succeeded', log);
    assert.deepEqual(JSON.parse(log.trim()), { status: 200, host: c.kubernetesServiceIp, port: '443', name: 'api-client' });
  });

  it('ClusterIP and NodePort Services answer from the host on the bridge and loopback addresses', async (t) => {
    const c = requireCluster(t, result);
    if (!c) return;
    const core = c.kubeConfig().makeApiClient(CoreV1Api);
    const svc = await core.createNamespacedService({
      namespace: NS,
      body: {
        metadata: { name: 'web' },
        spec: { type: 'NodePort', selector: { app: 'web' }, ports: [{ port: 80, targetPort: 8080 }] },
      },
    });
    const nodePort = svc.spec?.ports?.[0]?.nodePort;
    const clusterIp = svc.spec?.clusterIP;
    assert.ok(nodePort && clusterIp);
    for (const url of [`http://${clusterIp}/via-cluster-ip`, `http://${c.bridgeIp}:${nodePort}/via-bridge`, `http://127.0.0.1:${nodePort}/via-loopback`]) {
      // kube-proxy programs the rules within a second or two of the Service and its Endpoints.
      const answer = await waitFor(url, 30_000, () => getJson(url));
      assert.deepEqual(answer, { pod: 'web', path: new URL(url).pathname, uid: 65534 });
    }
  });

  it('Pods resolve Service names through the cluster DNS and reach a Service by name', async (t) => {
    const c = requireCluster(t, result);
    if (!c) return;
    const core = c.kubeConfig().makeApiClient(CoreV1Api);
    const web = await core.readNamespacedService({ name: 'web', namespace: NS });
    const script = `
const dns = require('node:dns').promises;
const http = require('node:http');
const look = (n) => dns.lookup(n, { family: 4 }).then((a) => a.address, (e) => e.code);
(async () => {
  const out = {
    kubernetes: await look('kubernetes.default.svc.cluster.local'),
    short: await look('web'),
    missing: await look('nope.${NS}.svc.cluster.local'),
  };
  out.body = await new Promise((resolve) => http.get('http://web/by-name', { agent: false }, (res) => {
    let b = ''; res.on('data', (c) => { b += c; }); res.on('end', () => resolve(JSON.parse(b)));
  }).on('error', (e) => resolve(e.code)));
  console.log(JSON.stringify(out));
})();
`;
    await core.createNamespacedPod({ namespace: NS, body: podSpec('resolver', image.image, script, { restartPolicy: 'Never' }) });
    await waitFor('pod resolver to finish', 180_000, async () => {
      const p = await core.readNamespacedPod({ name: 'resolver', namespace: NS });
      return p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed' ? p : undefined;
    });
    const log = await core.readNamespacedPodLog({ name: 'resolver', namespace: NS });
    assert.deepEqual(JSON.parse(log.trim()), {
      kubernetes: c.kubernetesServiceIp,
      short: web.spec?.clusterIP,
      missing: 'ENOTFOUND',
      body: { pod: 'web', path: '/by-name', uid: 65534 },
    });
  });

  it('traffic from a Pod to anything off the bridge is refused at once, not routed out of the machine', async (t) => {
    const c = requireCluster(t, result);
    if (!c) return;
    const core = c.kubeConfig().makeApiClient(CoreV1Api);
    // 198.51.100.1 (TEST-NET-2) stands for "somewhere outside": without the bridge egress rule the SYN would be
    // forwarded to the machine's default route and time out (or reach whatever answers there).
    const probe = `
const s = require('node:net').connect(80, '198.51.100.1');
const t0 = Date.now();
s.setTimeout(10000, () => { console.log(JSON.stringify({ result: 'timeout' })); process.exit(0); });
s.on('connect', () => { console.log(JSON.stringify({ result: 'connected' })); process.exit(0); });
s.on('error', (e) => { console.log(JSON.stringify({ result: e.code, fast: Date.now() - t0 < 5000 })); process.exit(0); });
`;
    await core.createNamespacedPod({ namespace: NS, body: podSpec('egress', image.image, probe, { restartPolicy: 'Never' }) });
    await waitFor('pod egress to finish', 180_000, async () => {
      const p = await core.readNamespacedPod({ name: 'egress', namespace: NS });
      return p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed' ? p : undefined;
    });
    const log = await core.readNamespacedPodLog({ name: 'egress', namespace: NS });
    assert.deepEqual(JSON.parse(log.trim()), { result: 'ECONNREFUSED', fast: true });
  });

  it('down puts the host back as it was, and a second up/down cycle does too', async (t) => {
    const c: Cluster | undefined = requireCluster(t, result);
    if (!c) return;
    const during = captureHostState();
    assert.deepEqual(during.links.includes(c.bridge), true, 'the bridge exists while the cluster runs');
    assert.ok(during.kubepodsCgroups.length > 0, 'kubepods cgroups exist while the cluster runs');
    const first = await c.stop();
    t.diagnostic(`down: ${first.seconds.toFixed(1)} s`);
    assert.deepEqual(captureHostState(), hostBefore);

    const again = await startCluster();
    assert.ok(!isSkipped(again), 'a second cluster starts on the same machine');
    try {
      const node = await again.kubeConfig().makeApiClient(CoreV1Api).readNode({ name: again.nodeName });
      assert.equal(node.status?.conditions?.find((cond) => cond.type === 'Ready')?.status, 'True');
      t.diagnostic(`second up to node Ready: ${again.upSeconds} s`);
    } finally {
      const second = await again.stop();
      t.diagnostic(`second down: ${second.seconds.toFixed(1)} s`);
    }
    assert.deepEqual(captureHostState(), hostBefore);
  });
});
