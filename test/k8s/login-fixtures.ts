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
 *   const backend = await startLoginBackend(api, {                      // CRDs, chart RBAC, webhook, operator
 *     scratchDir: dir,
 *     chartValues: { login: { subjects: [{ kind: 'Group', name: 'devs' }], gatewayUrls: [url], caBundle: caPem } },
 *   });
 *   // alice.kubeconfigPath → `narrowlink login --kubeconfig ...`; backend.signingKey.publicKeyPem → the gateway
 */
import { execFile } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { type KubeObject, RestKubeClient, type ResourceType } from '@narrowlink/kube';
import { DEFAULT_LOGIN_SETTINGS, type LoginSettings, loginRequestResource } from '@narrowlink/operator';
import { deriveLoginStampKey, ensureSigningKey, Operator, type SigningKey, startWebhookServer, type WebhookServer } from '@narrowlink/operator/testing';
import { pino } from 'pino';
import { parseAllDocuments } from 'yaml';
import { ROOT } from '../helpers/paths.ts';
import { makeTestCertificate } from '../helpers/tls.ts';
import { waitFor } from '../helpers/wait.ts';
import type { ApiServer, StaticTokenUser } from './cluster.ts';
import { applyCrd } from './fixtures/fake-cert-manager.ts';
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

const mutatingWebhookConfigurations: ResourceType = {
  group: 'admissionregistration.k8s.io',
  version: 'v1',
  plural: 'mutatingwebhookconfigurations',
  kind: 'MutatingWebhookConfiguration',
  namespaced: false,
};
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

/** Options of {@link startLoginBackend}. */
export interface LoginBackendOptions {
  /** The release namespace: login requests, discovery ConfigMap, signing key. Default `narrowlink-system`. */
  namespace?: string;
  /** Directory for certificates, rendered values and objects (the caller removes it). */
  scratchDir: string;
  /** Overrides of the operator's login settings (e.g. short collection times). */
  login?: Partial<LoginSettings>;
  /** Chart values for the login templates (login.subjects, login.gatewayUrls, login.caBundle, ...). */
  chartValues?: Record<string, unknown>;
}

/** The cluster side of `narrowlink login`, running in this process against the test apiserver. */
export interface LoginBackend {
  namespace: string;
  /** The operator's signing key: its public half verifies issued tokens (give it to a gateway). */
  signingKey: SigningKey;
  /** Every log line of the operator and webhook, parsed (check that no token leaks). */
  logs: Array<Record<string, unknown>>;
  /** Chart objects applied (ClusterRole narrowlink-login, bindings, discovery ConfigMap + Role/RoleBinding). */
  chartObjects: RenderedObject[];
  operator: Operator;
  webhook: WebhookServer;
  /** The MutatingWebhookConfiguration as registered (delete and re-apply it to test a missing webhook). */
  webhookConfiguration: KubeObject;
  /** Stops the operator and the webhook, and removes the webhook configuration. */
  stop(): Promise<void>;
}

/** Name of the MutatingWebhookConfiguration {@link startLoginBackend} registers. */
export const LOGIN_WEBHOOK_CONFIGURATION = 'narrowlink-login-test';

/**
 * Everything `narrowlink login` needs on the cluster side, from the repository's own pieces: the CRDs of crds/,
 * the chart's login RBAC and discovery ConfigMap (helm template, applied), the operator's webhook (HTTPS on
 * 127.0.0.1 with a test CA) registered with the chart's `login-requests.narrowlink.io` entry (its clientConfig
 * pointed at the local URL), and the operator's control loop with a fresh signing key. Resolves once the API
 * server calls the webhook (probed with dry-run creates) and the operator runs.
 */
export async function startLoginBackend(api: ApiServer, options: LoginBackendOptions): Promise<LoginBackend> {
  const namespace = options.namespace ?? 'narrowlink-system';
  const client = await RestKubeClient.fromKubeConfig(api.kubeConfig());
  await ensureNamespace(client, namespace);
  for (const file of (await readdir(join(ROOT, 'crds'))).filter((f) => f.endsWith('.yaml'))) {
    for (const doc of parseAllDocuments(await readFile(join(ROOT, 'crds', file), 'utf8'))) {
      const crd = doc.toJS() as KubeObject | null;
      if (crd) await applyCrd(client, crd);
    }
  }
  const chartObjects = await applyChartObjects(api, namespace, options.chartValues ?? {}, options.scratchDir);

  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') logs.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  const log = pino({ level: 'debug' }, sink);

  const signingKey = await ensureSigningKey(client, namespace, 'narrowlink-signing-key');
  const cert = await makeTestCertificate(join(options.scratchDir, 'webhook-tls'));
  const webhook = await startWebhookServer({
    log,
    loginStampKey: deriveLoginStampKey(signingKey.privateKeyPem),
    settings: { image: 'unused.example/narrowlink:0', resources: {}, gatewayUrl: 'wss://unused.example', tokenAudience: 'narrowlink', tokenExpirationSeconds: 600 },
    ownNamespace: namespace,
    host: '127.0.0.1',
    port: 0,
    certFile: cert.certFile,
    keyFile: cert.keyFile,
  });
  const [rendered] = (await renderChart(namespace, {}, ['templates/webhook.yaml'], options.scratchDir)).filter((o) => o.kind === 'MutatingWebhookConfiguration');
  const loginHook = (rendered?.webhooks as Array<{ name: string; clientConfig: { service?: { path: string } } }> | undefined)?.find(
    (w) => w.name === 'login-requests.narrowlink.io',
  );
  if (!loginHook?.clientConfig.service) throw new Error('the chart renders no login-requests.narrowlink.io webhook');
  const configuration = {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'MutatingWebhookConfiguration',
    metadata: { name: LOGIN_WEBHOOK_CONFIGURATION },
    webhooks: [{ ...loginHook, clientConfig: { url: `${webhook.url}${loginHook.clientConfig.service.path}`, caBundle: Buffer.from(cert.ca).toString('base64') } }],
  };
  await client.apply(mutatingWebhookConfigurations, configuration, { fieldManager: 'narrowlink-test', force: true });
  // The API server loads webhook configurations asynchronously: wait until a dry-run create is stamped.
  const probe = {
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'ClientLoginRequest',
    metadata: { name: 'webhook-probe', namespace },
    spec: { publicKey: 'A'.repeat(43) },
  };
  await waitFor(
    'the login webhook to stamp requests',
    async () => {
      const created = await client.apply(loginRequestResource, probe, { fieldManager: 'narrowlink-test', dryRun: true });
      return (created.spec as { username?: string } | undefined)?.username === 'admin';
    },
    30_000,
    200,
  );

  const operator = new Operator({
    client,
    log,
    signingKey,
    settings: {
      namespace,
      gatewayConfigSecret: 'narrowlink-gateway-config',
      allowCrossNamespacePolicies: false,
      login: { ...DEFAULT_LOGIN_SETTINGS, ...options.login },
    },
  });
  await operator.start();
  return {
    namespace,
    signingKey,
    logs,
    chartObjects,
    operator,
    webhook,
    webhookConfiguration: configuration,
    async stop() {
      await operator.stop();
      await webhook.close();
      await client.delete(mutatingWebhookConfigurations, undefined, LOGIN_WEBHOOK_CONFIGURATION).catch(() => false);
      await cert.remove();
    },
  };
}
