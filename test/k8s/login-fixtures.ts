/**
 * Users for `narrowlink login` tests on the Kubernetes API tier (./cluster.ts): each helper writes a kubeconfig
 * that authenticates to the test apiserver the way a real cluster's users do (client certificate signed by the
 * cluster CA with `O=` groups, static bearer token, ServiceAccount token from the TokenRequest API), plus the
 * RBAC a login needs, taken from the chart's own templates.
 *
 *   const k8s = useApiServer({ staticTokenUsers: [CAROL] });          // static tokens are read at startup
 *   const alice = await clientCertUser(api, dir, { user: 'alice', groups: ['devs'] });
 *   const carol = staticTokenUser(api, dir, CAROL);
 *   const robot = await serviceAccountUser(api, dir, { namespace: 'ci', name: 'robot' });
 *   await applyChartObjects(api, { login: { subjects: [{ kind: 'Group', name: 'devs' }] } }, LOGIN_TEMPLATES);
 *   // alice.kubeconfigPath → `narrowlink login --kubeconfig ...`
 */
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { RestKubeClient, type ResourceType } from '@narrowlink/kube';
import { parseAllDocuments } from 'yaml';
import { ROOT } from '../helpers/paths.ts';
import type { ApiServer, StaticTokenUser } from './cluster.ts';
import { helmPath, kubectlPath } from './tools.ts';

const run = promisify(execFile);

/** Group the apiserver adds to every authenticated user. */
export const AUTHENTICATED_GROUP = 'system:authenticated';

/** A user with a kubeconfig of its own for the test apiserver. */
export interface TestUser {
  /** User name the apiserver authenticates (what a token's `sub` must be). */
  username: string;
  /** Groups the apiserver authenticates, including `system:authenticated` (what a token's `groups` must be). */
  groups: string[];
  /** Kubeconfig file with one context `<contextName>` (current), server and CA of the test apiserver. */
  kubeconfigPath: string;
  /** Name of the kubeconfig's context (and of its cluster and user entries). */
  contextName: string;
}

/** Credentials of a kubeconfig user entry. */
export type KubeconfigCredential = { token: string } | { certPem: string; keyPem: string };

/**
 * Writes a kubeconfig for the test apiserver: one cluster, one user, one context named `contextName` (current),
 * optionally with a default namespace. Mode 0600.
 */
export async function writeKubeconfig(
  api: ApiServer,
  file: string,
  contextName: string,
  credential: KubeconfigCredential,
  namespace?: string,
): Promise<string> {
  const b64 = (text: string) => Buffer.from(text).toString('base64');
  const user =
    'token' in credential
      ? `    token: ${credential.token}`
      : `    client-certificate-data: ${b64(credential.certPem)}\n    client-key-data: ${b64(credential.keyPem)}`;
  const text = `apiVersion: v1
kind: Config
clusters:
- name: ${contextName}
  cluster:
    server: ${api.server}
    certificate-authority-data: ${b64(api.caPem)}
users:
- name: ${contextName}
  user:
${user}
contexts:
- name: ${contextName}
  context:
    cluster: ${contextName}
    user: ${contextName}
${namespace ? `    namespace: ${namespace}\n` : ''}current-context: ${contextName}
`;
  await writeFile(file, text, { mode: 0o600 });
  return file;
}

/**
 * A user authenticated by a client certificate signed by the apiserver's client CA: `CN=<user>`, one `O=` per
 * group (how kubeadm clusters and `kubectl` certificates carry groups).
 */
export async function clientCertUser(api: ApiServer, dir: string, opts: { user: string; groups?: string[]; contextName?: string }): Promise<TestUser> {
  const groups = opts.groups ?? [];
  const base = join(dir, `cert-${opts.user.replace(/[^A-Za-z0-9_-]/g, '_')}`);
  const subject = `/CN=${escapeDn(opts.user)}${groups.map((g) => `/O=${escapeDn(g)}`).join('')}`;
  await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', subject]);
  await writeFile(`${base}.ext`, 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n');
  await run('openssl', [
    'x509', '-req', '-in', `${base}.csr`, '-CA', api.clientCaCertPath, '-CAkey', api.clientCaKeyPath, '-CAcreateserial',
    '-out', `${base}.crt`, '-days', '1', '-sha256', '-extfile', `${base}.ext`,
  ]);
  const [certPem, keyPem] = await Promise.all([readFile(`${base}.crt`, 'utf8'), readFile(`${base}.key`, 'utf8')]);
  const contextName = opts.contextName ?? `cert-${opts.user}`;
  const kubeconfigPath = await writeKubeconfig(api, `${base}.kubeconfig`, contextName, { certPem, keyPem });
  return { username: opts.user, groups: [...groups, AUTHENTICATED_GROUP], kubeconfigPath, contextName };
}

/** `openssl -subj` needs `/`, `+`, `=` and `,` escaped inside a value. */
function escapeDn(value: string): string {
  return value.replace(/[\\/+=,]/g, (c) => `\\${c}`);
}

/**
 * A kubeconfig for a static-token user. The user must have been passed to `useApiServer({ staticTokenUsers })`
 * (the apiserver reads its token file at startup only).
 */
export async function staticTokenUser(api: ApiServer, dir: string, user: StaticTokenUser, contextName = `token-${user.user}`): Promise<TestUser> {
  const kubeconfigPath = await writeKubeconfig(api, join(dir, `token-${user.user.replace(/[^A-Za-z0-9_-]/g, '_')}.kubeconfig`), contextName, { token: user.token });
  return { username: user.user, groups: [...user.groups, AUTHENTICATED_GROUP], kubeconfigPath, contextName };
}

const serviceAccounts: ResourceType = { group: '', version: 'v1', plural: 'serviceaccounts', kind: 'ServiceAccount', namespaced: true };
const namespaces: ResourceType = { group: '', version: 'v1', plural: 'namespaces', kind: 'Namespace', namespaced: false };

/** Creates a namespace unless it exists. */
export async function ensureNamespace(client: RestKubeClient, name: string): Promise<void> {
  if (await client.get(namespaces, undefined, name)) return;
  await client.create(namespaces, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
}

/**
 * A ServiceAccount (created, with its namespace, when absent) and a kubeconfig holding a TokenRequest token for
 * it (audience: the apiserver's own, lifetime `expirationSeconds`, default 1 h), as a CI robot would have.
 */
export async function serviceAccountUser(
  api: ApiServer,
  dir: string,
  opts: { namespace: string; name: string; expirationSeconds?: number; contextName?: string },
): Promise<TestUser> {
  const client = await RestKubeClient.fromKubeConfig(api.kubeConfig());
  await ensureNamespace(client, opts.namespace);
  if (!(await client.get(serviceAccounts, opts.namespace, opts.name))) {
    await client.create(serviceAccounts, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: opts.name, namespace: opts.namespace } });
  }
  const tokenRequest: ResourceType = { group: '', version: 'v1', plural: `serviceaccounts/${opts.name}/token`, kind: 'TokenRequest', namespaced: true };
  const answer = await client.create(tokenRequest, {
    apiVersion: 'authentication.k8s.io/v1',
    kind: 'TokenRequest',
    metadata: { namespace: opts.namespace },
    spec: { expirationSeconds: opts.expirationSeconds ?? 3600 },
  } as never);
  const token = (answer.status as { token?: string } | undefined)?.token;
  if (!token) throw new Error(`TokenRequest for ${opts.namespace}/${opts.name} returned no token`);
  const contextName = opts.contextName ?? `sa-${opts.namespace}-${opts.name}`;
  const kubeconfigPath = await writeKubeconfig(api, join(dir, `${contextName}.kubeconfig`), contextName, { token });
  return {
    username: `system:serviceaccount:${opts.namespace}:${opts.name}`,
    groups: ['system:serviceaccounts', `system:serviceaccounts:${opts.namespace}`, AUTHENTICATED_GROUP],
    kubeconfigPath,
    contextName,
  };
}

/** The chart templates a login needs: the `narrowlink-login` ClusterRole (+ bindings) and the discovery ConfigMap and its RBAC. */
export const LOGIN_TEMPLATES = ['templates/rbac-login.yaml', 'templates/configmap-discovery.yaml'] as const;

/** Release name and namespace the fixtures render the chart with. */
export const CHART_RELEASE = 'narrowlink';

/** A rendered Kubernetes object. */
export interface RenderedObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; [key: string]: unknown };
  [key: string]: unknown;
}

/** `helm template` of charts/narrowlink with `values`, only the listed templates, parsed. */
export async function renderChart(
  namespace: string,
  values: Record<string, unknown>,
  templates: readonly string[],
  scratchDir: string,
): Promise<RenderedObject[]> {
  const valuesFile = join(scratchDir, `values-${process.hrtime.bigint()}.json`);
  await writeFile(valuesFile, JSON.stringify(values));
  const args = ['template', CHART_RELEASE, join(ROOT, 'charts', 'narrowlink'), '--namespace', namespace, '--values', valuesFile];
  for (const t of templates) args.push('--show-only', t);
  const { stdout } = await run(helmPath(), args, { maxBuffer: 16 * 1024 * 1024, timeout: 120_000 });
  return parseAllDocuments(stdout)
    .map((d) => d.toJS() as RenderedObject | null)
    .filter((o): o is RenderedObject => o !== null && typeof o === 'object');
}

/**
 * Renders the listed chart templates (default {@link LOGIN_TEMPLATES}) into `namespace` and applies them with
 * kubectl as the admin (server-side apply, so re-applying with other values updates them). Returns the objects.
 */
export async function applyChartObjects(
  api: ApiServer,
  namespace: string,
  values: Record<string, unknown>,
  scratchDir: string,
  templates: readonly string[] = LOGIN_TEMPLATES,
): Promise<RenderedObject[]> {
  const objects = await renderChart(namespace, values, templates, scratchDir);
  const file = join(scratchDir, `objects-${process.hrtime.bigint()}.json`);
  await writeFile(file, JSON.stringify({ apiVersion: 'v1', kind: 'List', items: objects }));
  await run(kubectlPath(), ['--kubeconfig', api.kubeconfigPath, 'apply', '--server-side', '--force-conflicts', '--field-manager', 'helm', '-f', file], {
    timeout: 120_000,
  });
  return objects;
}
