/**
 * Pieces of the cluster tier's user journey (issue 13, steps 3-5): the application the injected Pod runs, a real
 * developer user of the cluster (a client certificate from the CertificateSigningRequest API), the CLI as a user
 * installs it, HTTP through `narrowlink forward`, and an inventory of the cluster's objects for the uninstall check.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The application container's HTTP server (run by the node test image as `node -e APP_SERVER_JS`), port 8080. */
export const APP_PORT = 8080;

/**
 * GET /blob?bytes=N: N bytes of {@link appBlob} (a body of known content); GET /stream?bytes=N: N bytes of
 * the byte {@link STREAM_BYTE} repeated, written as fast as the reader takes them (a sustained download); POST /sha256: the byte count and sha256 of
 * the request body; GET /hold: a 200 whose body never ends (an open connection to revoke); anything else: a line.
 * Every answer names the Pod (`x-pod`), so the test can tell which instance answered.
 */
export const APP_SERVER_JS = `
const http = require('node:http'), crypto = require('node:crypto'), os = require('node:os');
function blob(n) {
  const out = Buffer.alloc(n);
  for (let i = 0, off = 0; off < n; i++, off += 32) crypto.createHash('sha256').update('narrowlink-journey:' + i).digest().copy(out, off);
  return out;
}
http.createServer((q, s) => {
  const u = new URL(q.url, 'http://app');
  s.setHeader('x-pod', os.hostname());
  if (u.pathname === '/blob') { const b = blob(Number(u.searchParams.get('bytes'))); s.setHeader('content-length', b.length); s.end(b); return; }
  if (u.pathname === '/stream') {
    let left = Number(u.searchParams.get('bytes'));
    const chunk = Buffer.alloc(65536, 0x6e);
    s.setHeader('content-length', left);
    const pump = () => { while (left > 0) { const n = Math.min(left, chunk.length); left -= n; if (!s.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return s.once('drain', pump); } s.end(); };
    pump();
    return;
  }
  if (u.pathname === '/sha256') {
    const h = crypto.createHash('sha256'); let n = 0;
    q.on('data', (c) => { h.update(c); n += c.length; });
    q.on('end', () => s.end(JSON.stringify({ bytes: n, sha256: h.digest('hex') })));
    return;
  }
  if (u.pathname === '/hold') { s.writeHead(200, { 'content-type': 'text/plain' }); s.write('held\\n'); return; }
  s.end('orders ' + q.url + '\\n');
}).listen(${APP_PORT});
`;

/** The byte GET /stream repeats. */
export const STREAM_BYTE = 0x6e;

/** What GET /blob?bytes=N returns: sha256('narrowlink-journey:' + i) for i = 0, 1, ... cut to N bytes. */
export function appBlob(bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  for (let i = 0, off = 0; off < bytes; i++, off += 32) createHash('sha256').update(`narrowlink-journey:${i}`).digest().copy(out, off);
  return out;
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** One HTTP exchange on a fresh TCP connection to 127.0.0.1:port (the forward's listener). */
export interface HttpAnswer {
  status: number;
  pod: string;
  body: Buffer;
}

export function httpThrough(port: number, path: string, options: { method?: string; body?: Buffer; timeoutMs?: number } = {}): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path, method: options.method ?? 'GET', agent: false, timeout: options.timeoutMs ?? 20_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, pod: String(res.headers['x-pod'] ?? ''), body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`HTTP ${path} through 127.0.0.1:${port}: no answer within ${options.timeoutMs ?? 20_000} ms`)));
    req.on('error', reject);
    req.end(options.body);
  });
}

/**
 * GET /stream?bytes=N through 127.0.0.1:port without keeping the body: how many bytes came and whether each was
 * {@link STREAM_BYTE} (a sustained download whose size the test process need not hold).
 */
export function streamThrough(port: number, bytes: number, timeoutMs = 120_000): Promise<{ status: number; bytes: number; intact: boolean }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: `/stream?bytes=${bytes}`, agent: false, timeout: timeoutMs }, (res) => {
      let received = 0;
      let intact = true;
      res.on('data', (c: Buffer) => {
        received += c.length;
        if (intact && c.some((b) => b !== STREAM_BYTE)) intact = false;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes: received, intact }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET /stream through 127.0.0.1:${port}: stalled for ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** A developer: a kubeconfig whose user is a client certificate the cluster's CA signed for CN=user, O=group. */
export interface Developer {
  user: string;
  group: string;
  context: string;
  kubeconfig: string;
}

/**
 * Make a real user of the cluster the way an admin does without an identity provider: a key and CSR (openssl),
 * a CertificateSigningRequest for the signer kubernetes.io/kube-apiserver-client, `kubectl certificate approve`,
 * and a kubeconfig with the issued certificate (`kubectl config set-credentials --embed-certs`).
 */
export async function makeDeveloper(
  kubectl: string,
  adminKubeconfig: string,
  cluster: { apiserverUrl: string; caFile: string },
  dir: string,
  user: string,
  group: string,
): Promise<Developer> {
  const key = join(dir, `${user}.key`);
  const csr = join(dir, `${user}.csr`);
  const crt = join(dir, `${user}.crt`);
  const kubeconfig = join(dir, `${user}.kubeconfig`);
  await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${user}/O=${group}`]);
  const manifest = {
    apiVersion: 'certificates.k8s.io/v1',
    kind: 'CertificateSigningRequest',
    metadata: { name: user },
    spec: { request: readFileSync(csr).toString('base64'), signerName: 'kubernetes.io/kube-apiserver-client', usages: ['client auth'] },
  };
  const manifestFile = join(dir, `${user}-csr.json`);
  writeFileSync(manifestFile, JSON.stringify(manifest));
  const admin = ['--kubeconfig', adminKubeconfig];
  await run(kubectl, [...admin, 'create', '-f', manifestFile]);
  await run(kubectl, [...admin, 'certificate', 'approve', user]);
  const deadline = Date.now() + 60_000;
  let certificate = '';
  while (!certificate) {
    const { stdout } = await run(kubectl, [...admin, 'get', 'csr', user, '-o', 'jsonpath={.status.certificate}']);
    certificate = stdout.trim();
    if (certificate) break;
    if (Date.now() > deadline) throw new Error(`CSR ${user}: no certificate issued within 60 s (controller-manager's csrsigning?)`);
    await new Promise((r) => setTimeout(r, 500));
  }
  writeFileSync(crt, Buffer.from(certificate, 'base64'));
  const context = `${user}@narrowlink-test`;
  const own = ['--kubeconfig', kubeconfig];
  await run(kubectl, [...own, 'config', 'set-cluster', 'narrowlink-test', `--server=${cluster.apiserverUrl}`, `--certificate-authority=${cluster.caFile}`, '--embed-certs']);
  await run(kubectl, [...own, 'config', 'set-credentials', user, `--client-certificate=${crt}`, `--client-key=${key}`, '--embed-certs']);
  await run(kubectl, [...own, 'config', 'set-context', context, '--cluster=narrowlink-test', `--user=${user}`]);
  await run(kubectl, [...own, 'config', 'use-context', context]);
  return { user, group, context, kubeconfig };
}

/** One object of the cluster, as `kubectl get -o json` lists it. */
export interface ObjectRef {
  /** `resource.group` as kubectl names it (e.g. `secrets`, `leases.coordination.k8s.io`). */
  resource: string;
  namespace: string;
  name: string;
  labels: Record<string, string>;
  ownerKinds: string[];
  finalizers: string[];
}

export function refKey(o: Pick<ObjectRef, 'resource' | 'namespace' | 'name'>): string {
  return `${o.resource} ${o.namespace ? `${o.namespace}/` : ''}${o.name}`;
}

/** Resources never worth comparing: events come and go, and a few are virtual or per-request. */
const SKIPPED_RESOURCES = new Set(['events', 'events.events.k8s.io', 'componentstatuses', 'bindings']);

/** Every object of every listable resource, cluster-wide (kubectl api-resources + one `get -A` per resource). */
export async function inventory(kubectl: string, kubeconfig: string): Promise<ObjectRef[]> {
  const k = ['--kubeconfig', kubeconfig];
  const { stdout } = await run(kubectl, [...k, 'api-resources', '--verbs=list', '-o', 'name'], { maxBuffer: 8 * 1024 * 1024 });
  const resources = stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !SKIPPED_RESOURCES.has(l));
  const all: ObjectRef[] = [];
  for (const resource of resources) {
    const { stdout: json } = await run(kubectl, [...k, 'get', resource, '-A', '-o', 'json'], { maxBuffer: 64 * 1024 * 1024 });
    const list = JSON.parse(json) as {
      items: Array<{ metadata: { name: string; namespace?: string; labels?: Record<string, string>; ownerReferences?: Array<{ kind: string }>; finalizers?: string[] } }>;
    };
    for (const item of list.items) {
      all.push({
        resource,
        namespace: item.metadata.namespace ?? '',
        name: item.metadata.name,
        labels: item.metadata.labels ?? {},
        ownerKinds: (item.metadata.ownerReferences ?? []).map((o) => o.kind),
        finalizers: item.metadata.finalizers ?? [],
      });
    }
  }
  return all;
}
