/**
 * What the cluster tier may change on the host, captured so a test can prove `cluster.sh down` put it back:
 * interfaces of the cluster bridge, mounts under the cluster's paths, kubepods cgroups, every iptables/ip6tables
 * rule, the kernel settings the kubelet/kube-proxy/bridge plugin change, and the fixed host paths the daemons write.
 * Only the cluster's own names are looked at for links and mounts, so suites running beside it (the NAT lab's
 * namespaces) do not make the comparison flaky.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Kernel settings cluster.sh saves and restores (same list as its SYSCTLS). */
export const clusterSysctls: readonly string[] = [
  'vm.overcommit_memory',
  'vm.panic_on_oom',
  'kernel.panic',
  'kernel.panic_on_oops',
  'kernel.keys.root_maxkeys',
  'kernel.keys.root_maxbytes',
  'net.ipv4.ip_forward',
  'net.ipv4.conf.all.route_localnet',
  'net.bridge.bridge-nf-call-iptables',
  'net.bridge.bridge-nf-call-ip6tables',
];

/** Host paths the daemons write whatever their flags say (same list as cluster.sh's FIXED_PATHS). */
export const clusterFixedPaths: readonly string[] = [
  '/var/log/pods',
  '/var/log/containers',
  '/var/lib/kubelet',
  '/var/lib/cni',
  '/run/containerd',
  '/etc/cni',
  '/opt/cni',
];

/** A comparable picture of the host state the cluster touches. */
export interface HostState {
  /** Interfaces named like ours: the bridge and the CNI plugin's host-side veths (`veth` + 8 hex digits). */
  links: string[];
  /** Mount points under the cluster's state dir, /run/containerd, /var/lib/kubelet or /run/netns/cni-*. */
  mounts: string[];
  /** cgroup hierarchies (e.g. `memory`) that hold a `kubepods` cgroup. */
  kubepodsCgroups: string[];
  /** `iptables -S` / `ip6tables -S` of each table, sorted lines. */
  iptables: Record<string, string[]>;
  /** name → value of {@link clusterSysctls} (absent when the kernel lacks the setting). */
  sysctls: Record<string, string>;
  /** Which of {@link clusterFixedPaths} exist. */
  fixedPaths: string[];
  /** Command lines of processes that name the cluster's state dir (daemons, shims, the DNS): none after down. */
  processes: string[];
}

function run(cmd: string, args: string[]): string | undefined {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return undefined;
  }
}

/** Capture the host state that `cluster.sh up` changes (STATE_DIR defaults to cluster.sh's /tmp/narrowlink-cluster). */
export function captureHostState(stateDir = process.env.NARROWLINK_CLUSTER_DIR ?? '/tmp/narrowlink-cluster'): HostState {
  const links = (run('ip', ['-o', 'link', 'show']) ?? '')
    .split('\n')
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
    .filter((n): n is string => n !== undefined && (n === 'nlbr0' || /^veth[0-9a-f]{8}$/.test(n)))
    .sort();
  const prefixes = [`${stateDir}/`, '/run/containerd', '/var/lib/kubelet', '/run/netns/cni-', '/var/run/netns/cni-'];
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((m) => m === stateDir || prefixes.some((p) => m.startsWith(p)))
    .sort();
  const cgroupRoot = '/sys/fs/cgroup';
  const kubepodsCgroups = existsSync(cgroupRoot)
    ? readdirSync(cgroupRoot)
        .filter((h) => existsSync(join(cgroupRoot, h, 'kubepods')))
        .sort()
    : [];
  const iptables: Record<string, string[]> = {};
  for (const cmd of ['iptables', 'ip6tables']) {
    for (const table of ['filter', 'nat', 'mangle', 'raw']) {
      const out = run(cmd, ['-w', '5', '-t', table, '-S']);
      if (out !== undefined) iptables[`${cmd}/${table}`] = out.split('\n').filter(Boolean).sort();
    }
  }
  const sysctls: Record<string, string> = {};
  for (const name of clusterSysctls) {
    const file = `/proc/sys/${name.replaceAll('.', '/')}`;
    if (existsSync(file)) sysctls[name] = readFileSync(file, 'utf8').trim();
  }
  const fixedPaths = clusterFixedPaths.filter((p) => existsSync(p));
  const processes: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
    } catch {
      continue; // exited meanwhile
    }
    if (cmdline.includes(`${stateDir}/`)) processes.push(cmdline);
  }
  processes.sort();
  return { links, mounts, kubepodsCgroups, iptables, sysctls, fixedPaths, processes };
}
