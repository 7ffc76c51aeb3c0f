/**
 * node:test fixture for the "cluster" tier: a real single-node Kubernetes 1.20.2 (etcd, kube-apiserver,
 * controller-manager, scheduler, kubelet on containerd with the CNI bridge, kube-proxy in iptables mode) started
 * and stopped by `test/cluster/cluster.sh` (see ../shared/notes/real-cluster.md for the machine facts behind it).
 *
 *   describe('my suite', () => {
 *     const cluster = useCluster();                     // one cluster for the suite (before/after hooks)
 *     it('runs a pod', async (t) => {
 *       const c = cluster.require(t);                   // t.skip('cluster tier: SKIPPED (...)') when unavailable
 *       if (!c) return;
 *       await importImage(archive);                     // docker-archive tar, e.g. from deploy/build-image.sh
 *     });
 *   });
 *
 * Networking: the apiserver listens on the cluster bridge's address (10.88.0.1:6443), pods reach it through the
 * `kubernetes` ClusterIP Service; the machine's own interface address is never used. No CoreDNS image can be
 * fetched here, so the tier runs its own small DNS (dns.mjs on the bridge address): Service names
 * (`<name>.<namespace>.svc.cluster.local` and the usual search path) resolve, nothing else does.
 *
 * A machine that truly cannot run it (not root, not Debian 12 amd64, no cgroup v1, the build fails) yields a
 * *skipped* test with the reason, never a pass. Any other failure rejects and fails the suite. One cluster per
 * machine: a second `startCluster()` waits for the first to stop. Set NARROWLINK_CLUSTER_SKIP=1 to skip on purpose.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { TestContext } from 'node:test';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import { KubeConfig } from '@kubernetes/client-node';

/** Absolute path of cluster.sh. */
export const clusterScript: string = join(dirname(fileURLToPath(import.meta.url)), 'cluster.sh');

/** Exit code of `cluster.sh build|up` meaning "this machine cannot run the tier". */
const EXIT_SKIPPED = 3;

/** The `up` ready line of cluster.sh (the issue-13 contract: dir, kubeconfig, apiserverUrl, nodeName, ...). */
export interface ClusterReadyLine {
  event: 'ready';
  dir: string;
  kubeconfig: string;
  apiserverUrl: string;
  caFile: string;
  token: string;
  nodeName: string;
  bridge: string;
  bridgeIp: string;
  podCidr: string;
  serviceCidr: string;
  kubernetesServiceIp: string;
  containerdSocket: string;
  pauseImage: string;
  /** Wall time of `up` until the node was Ready and the default ServiceAccount existed. */
  upSeconds: number;
  /** Summed RSS of the daemons right after up (KiB). */
  daemonsRssKiB: number;
}

/** A running cluster. Admin access (group `system:masters`) through {@link Cluster.kubeconfigPath}. */
export interface Cluster extends Omit<ClusterReadyLine, 'event' | 'kubeconfig'> {
  /** kubeconfig for kubectl/helm/client-node (apiserver URL, CA, admin token). */
  kubeconfigPath: string;
  /** PEM of the CA that signed the apiserver's serving certificate. */
  caPem: string;
  /** A fresh client-node KubeConfig (admin token, verified TLS). */
  kubeConfig(): KubeConfig;
  /** Import a docker-archive/OCI tar into the cluster's containerd (namespace k8s.io) for `IfNotPresent`/`Never`. */
  importImage(archive: string): Promise<void>;
  /** Tear everything down and restore the host (see `cluster.sh down`). Idempotent; resolves with its wall time. */
  stop(): Promise<{ seconds: number }>;
}

/** Returned instead of a {@link Cluster} when this machine cannot run the tier. */
export interface ClusterSkipped {
  skipped: string;
}

export type ClusterResult = Cluster | ClusterSkipped;

interface ScriptResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run cluster.sh with ARGS; never rejects (the exit code tells). */
export function runClusterScript(args: string[], timeoutMs: number): Promise<ScriptResult> {
  return new Promise((resolve) => {
    execFile(
      'bash',
      [clusterScript, ...args],
      // The cluster DNS (dns.mjs) runs under this process's Node.
      { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, killSignal: 'SIGKILL', env: { ...process.env, NARROWLINK_CLUSTER_NODE: process.execPath } },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

function skipReason(result: ScriptResult): string {
  const m = /cluster tier: SKIPPED \((.*)\)\s*$/m.exec(result.stdout);
  return m?.[1] ?? 'cluster.sh reported the tier as unavailable';
}

function tail(text: string, lines = 40): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

function jsonLine<T>(result: ScriptResult, what: string, mustInclude: string): T {
  const line = result.stdout
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l.startsWith('{') && l.includes(mustInclude));
  if (result.code !== 0 || !line) {
    throw new Error(`cluster.sh ${what} failed (exit ${result.code}):\n${tail(result.stderr)}`);
  }
  return JSON.parse(line) as T;
}

let current: Cluster | undefined;

/**
 * Build (cached after the first time; 20-30 min cold) and start the cluster. Resolves `{ skipped: reason }` when
 * this machine cannot run the tier; rejects on any other failure. The cluster is tied to this process: if it dies
 * without stop(), the script's reaper tears the cluster down within seconds.
 */
export async function startCluster(): Promise<ClusterResult> {
  if (process.env.NARROWLINK_CLUSTER_SKIP === '1') return { skipped: 'NARROWLINK_CLUSTER_SKIP=1' };
  const build = await runClusterScript(['build'], 60 * 60_000);
  if (build.code === EXIT_SKIPPED) return { skipped: skipReason(build) };
  if (build.code !== 0) throw new Error(`cluster.sh build failed (exit ${build.code}):\n${tail(build.stderr)}`);
  // Waiting for another cluster on this machine (the lock) counts against this timeout too.
  const up = await runClusterScript(['up', String(process.pid)], 20 * 60_000);
  if (up.code === EXIT_SKIPPED) return { skipped: skipReason(up) };
  const ready = jsonLine<ClusterReadyLine>(up, 'up', '"ready"');
  let stopped: Promise<{ seconds: number }> | undefined;
  const { event: _event, kubeconfig, ...rest } = ready;
  const cluster: Cluster = {
    ...rest,
    kubeconfigPath: kubeconfig,
    caPem: readFileSync(ready.caFile, 'utf8'),
    kubeConfig() {
      const kc = new KubeConfig();
      kc.loadFromFile(kubeconfig);
      return kc;
    },
    async importImage(archive) {
      if (stopped) throw new Error('cluster already stopped');
      const result = await runClusterScript(['import', ready.dir, archive], 10 * 60_000);
      if (result.code !== 0) throw new Error(`cluster.sh import ${archive} failed (exit ${result.code}):\n${tail(result.stderr)}`);
    },
    stop() {
      stopped ??= (async () => {
        const startedMs = Date.now();
        const down = await runClusterScript(['down', ready.dir], 5 * 60_000);
        if (current === cluster) current = undefined;
        if (down.code !== 0) throw new Error(`cluster.sh down failed (exit ${down.code}):\n${tail(down.stderr)}`);
        return { seconds: (Date.now() - startedMs) / 1000 };
      })();
      return stopped;
    },
  };
  current = cluster;
  return cluster;
}

/** Import ARCHIVE (docker-archive/OCI tar) into the running cluster's containerd; throws when none is running. */
export async function importImage(archive: string, cluster: Cluster | undefined = current): Promise<void> {
  if (!cluster) throw new Error('importImage: no cluster is running (startCluster() first)');
  await cluster.importImage(archive);
}

/** A minimal image holding this process's Node binary (see `cluster.sh node-image`): the tests' workload. */
export async function nodeTestImage(): Promise<{ image: string; archive: string }> {
  const result = await runClusterScript(['node-image', process.execPath], 10 * 60_000);
  return jsonLine<{ image: string; archive: string }>(result, 'node-image', '"image"');
}

/** Memory of one container as its cgroup (v1 memory controller) counts it. */
export interface ContainerMemory {
  /** memory.usage_in_bytes: everything charged, page cache included. */
  usageBytes: number;
  /** usage minus inactive file pages: what the kubelet calls the working set (evictions and OOM decisions). */
  workingSetBytes: number;
  /** Anonymous memory (memory.stat total_rss): the process heaps. */
  rssBytes: number;
  /** The container's memory limit (memory.limit_in_bytes); a huge number when unlimited. */
  limitBytes: number;
  /** The highest usage since the container started (memory.max_usage_in_bytes, page cache included). */
  maxUsageBytes: number;
}

/**
 * Read a running container's memory from its cgroup on this node (kubelet cgroupfs layout:
 * `kubepods[/<qos>]/pod<uid>/<container id>`). `containerId` may carry the `containerd://` prefix of a Pod status.
 */
export function containerMemory(podUid: string, containerId: string): ContainerMemory {
  const id = containerId.replace(/^containerd:\/\//, '');
  const root = '/sys/fs/cgroup/memory/kubepods';
  const candidates = [join(root, `pod${podUid}`, id), ...['burstable', 'besteffort'].map((q) => join(root, q, `pod${podUid}`, id))];
  const dir = candidates.find((d) => existsSync(join(d, 'memory.usage_in_bytes')));
  if (!dir) throw new Error(`no memory cgroup for pod ${podUid} container ${id} (looked in ${candidates.join(', ')})`);
  const read = (f: string) => Number(readFileSync(join(dir, f), 'utf8').trim());
  const stat = new Map(
    readFileSync(join(dir, 'memory.stat'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [k, v] = l.split(' ');
        return [k ?? '', Number(v)] as const;
      }),
  );
  const usageBytes = read('memory.usage_in_bytes');
  const inactiveFile = stat.get('total_inactive_file') ?? 0;
  return {
    usageBytes,
    workingSetBytes: Math.max(0, usageBytes - inactiveFile),
    rssBytes: stat.get('total_rss') ?? 0,
    limitBytes: read('memory.limit_in_bytes'),
    maxUsageBytes: read('memory.max_usage_in_bytes'),
  };
}

/** True when {@link startCluster} could not run the tier here. */
export function isSkipped(result: ClusterResult | undefined): result is ClusterSkipped {
  return result !== undefined && 'skipped' in result;
}

const announced = new Set<string>();

/**
 * The running cluster, or `undefined` after marking the test skipped with `cluster tier: SKIPPED (reason)`.
 * Throws when the fixture was never started (a bug in the suite, not a reason to skip).
 */
export function requireCluster(t: TestContext, result: ClusterResult | undefined): Cluster | undefined {
  if (result === undefined) throw new Error('requireCluster: the cluster fixture was not started (missing before hook?)');
  if (isSkipped(result)) {
    const message = `cluster tier: SKIPPED (${result.skipped})`;
    if (!announced.has(message)) {
      announced.add(message);
      process.stderr.write(`${message}\n`);
    }
    t.skip(message);
    return undefined;
  }
  return result;
}

/** Handle returned by {@link useCluster}. */
export interface ClusterHandle {
  /** See {@link requireCluster}. */
  require(t: TestContext): Cluster | undefined;
  /** The fixture result once the `before` hook ran (undefined before). */
  readonly result: ClusterResult | undefined;
}

/** Register suite-level `before`/`after` hooks (inside `describe`) that start ONE cluster and stop it afterwards. */
export function useCluster(): ClusterHandle {
  let result: ClusterResult | undefined;
  before(async () => {
    result = await startCluster();
  });
  after(async () => {
    if (result && !isSkipped(result)) await result.stop();
  });
  return {
    require: (t) => requireCluster(t, result),
    get result() {
      return result;
    },
  };
}
