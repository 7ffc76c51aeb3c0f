/**
 * The Helm chart `charts/narrowlink`: `helm lint --strict` and `helm template` over a values matrix (every
 * rendered object parsed and validated with kubernetes-models / @kubernetes-models/cert-manager, security
 * contexts, webhook scope and RBAC checked), then install / upgrade / uninstall into the real kube-apiserver 1.20
 * of the test tier: every rendered object exists and keeps every rendered field (helm checks the manifests against
 * the 1.20 OpenAPI first; a field the API server silently dropped would also show), the ServiceAccounts get exactly
 * the access they need (SubjectAccessReview), the signing key survives upgrades and reinstalls, and a caBundle
 * patched in by the operator survives `helm upgrade`. The install tests run in order and build on each other.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Certificate } from '@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate';
import { Issuer } from '@kubernetes-models/cert-manager/cert-manager.io/v1/Issuer';
import { AuthorizationV1Api } from '@kubernetes/client-node';
import { MutatingWebhookConfiguration } from 'kubernetes-models/admissionregistration.k8s.io/v1/MutatingWebhookConfiguration';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { PodDisruptionBudget as PodDisruptionBudgetV1 } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { PodDisruptionBudget as PodDisruptionBudgetV1beta1 } from 'kubernetes-models/policy/v1beta1/PodDisruptionBudget';
import { ClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import { ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import { Role } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import { RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { parseAllDocuments } from 'yaml';
import { parseGatewayTokenRules } from '@narrowlink/protocol';
import { SIDECAR_COMMAND, SIDECAR_ENV } from '@narrowlink/operator';
import { NODE_OPTIONS, RUNTIME_ENV } from '../../scripts/build-server.ts';
import { type ApiServer, useApiServer } from './cluster.ts';
import { helmPath, kubectlPath, toolsUnavailableReason } from './tools.ts';

const run = promisify(execFile);

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const chartDir = join(repoRoot, 'charts', 'narrowlink');
const examplesDir = join(repoRoot, 'deploy', 'examples');

const RELEASE = 'narrowlink';
const NS = 'narrowlink-system';
const OPERATOR_SA = `system:serviceaccount:${NS}:narrowlink-operator`;
const GATEWAY_SA = `system:serviceaccount:${NS}:narrowlink-gateway`;

/** A rendered Kubernetes object (only what the assertions read is typed). */
interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

interface PolicyRule {
  apiGroups?: string[];
  resources?: string[];
  resourceNames?: string[];
  verbs: string[];
}

interface Container {
  name: string;
  image: string;
  imagePullPolicy?: string;
  command?: string[];
  args?: string[];
  ports?: Array<{ name?: string; containerPort: number; protocol?: string }>;
  resources?: unknown;
  readinessProbe?: { httpGet?: { path: string; port: string | number; scheme?: string } };
  livenessProbe?: { httpGet?: { path: string; port: string | number; scheme?: string } };
  securityContext?: {
    runAsNonRoot?: boolean;
    runAsUser?: number;
    readOnlyRootFilesystem?: boolean;
    allowPrivilegeEscalation?: boolean;
    privileged?: boolean;
    capabilities?: { drop?: string[]; add?: string[] };
    seccompProfile?: { type: string };
  };
  volumeMounts?: Array<{ name: string; mountPath: string }>;
  env?: Array<{ name: string; value?: string }>;
}

interface DeploymentShape {
  spec: {
    replicas: number;
    selector: { matchLabels: Record<string, string> };
    template: {
      metadata: { labels: Record<string, string> };
      spec: {
        serviceAccountName: string;
        securityContext?: { runAsNonRoot?: boolean; seccompProfile?: { type: string } };
        containers: Container[];
        volumes?: Array<{ name: string; secret?: { secretName: string; optional?: boolean } }>;
      };
    };
  };
}

interface WebhookShape {
  webhooks: Array<{
    name: string;
    sideEffects: string;
    admissionReviewVersions: string[];
    reinvocationPolicy: string;
    failurePolicy: string;
    timeoutSeconds: number;
    clientConfig: { caBundle?: string; service?: { name: string; namespace: string; path: string; port: number } };
    rules: Array<{ operations: string[]; apiGroups: string[]; apiVersions: string[]; resources: string[] }>;
    namespaceSelector?: { matchExpressions?: Array<{ key: string; operator: string; values?: string[] }> };
    objectSelector?: { matchExpressions?: Array<{ key: string; operator: string; values?: string[] }> };
  }>;
}

interface ServiceShape {
  spec: {
    type?: string;
    clusterIP?: string;
    selector: Record<string, string>;
    ports: Array<{ name: string; port: number; targetPort: string | number; protocol: string }>;
  };
}

// ------------------------------------------------------------------------------------------------ the matrix

interface MatrixEntry {
  name: string;
  values: Record<string, unknown>;
  /** `helm template --api-versions`: what the cluster serves beyond the built-in APIs (cert-manager detection). */
  apiVersions?: string[];
}

/** What `.Capabilities.APIVersions` must hold for the chart to use cert-manager with certManager.enabled=auto. */
const CERT_MANAGER_API = 'cert-manager.io/v1/Certificate';

const customResources = {
  requests: { cpu: '250m', memory: '300Mi' },
  limits: { cpu: '1', memory: '700Mi' },
};

const MATRIX: MatrixEntry[] = [
  { name: 'defaults', values: {} },
  { name: 'defaults, cluster with cert-manager', values: {}, apiVersions: [CERT_MANAGER_API] },
  { name: 'certManager.enabled=false', values: { certManager: { enabled: false } } },
  { name: 'certManager.enabled=true', values: { certManager: { enabled: true } }, apiVersions: [CERT_MANAGER_API] },
  {
    name: 'no cert-manager, extra SANs, user-managed CA ConfigMap',
    values: { gateway: { tls: { dnsNames: ['gw.example.com'], extraSans: ['10.1.2.3', 'gw.internal', 'gw.example.com'] } }, sidecar: { caConfigMap: 'corp-ca', distributeCa: false } },
  },
  { name: 'strict webhook', values: { webhook: { strict: true } } },
  {
    name: 'custom images and resources',
    values: {
      image: { repository: 'registry.example.com/nl/all', tag: '1.2.3', pullPolicy: 'Always' },
      imagePullSecrets: [{ name: 'regcred' }],
      operator: { image: { repository: 'registry.example.com/nl/operator' }, resources: customResources, replicas: 3 },
      gateway: { image: { tag: 'sha256:0123456789abcdef' }, resources: customResources },
      sidecar: { image: { repository: 'registry.example.com/nl/sidecar', tag: '9.9.9', pullPolicy: 'Never' }, resources: customResources },
    },
  },
  {
    name: 'gateway TLS from an existing secret',
    values: {
      gateway: { tls: { existingSecret: 'my-gateway-tls' }, service: { type: 'ClusterIP' }, admin: { port: 9102 } },
      login: { gatewayUrls: ['wss://gw.internal.example:8443'], caBundle: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n' },
    },
  },
  {
    name: 'public issuer, default issuer, cross-namespace policies, no UDP',
    apiVersions: [CERT_MANAGER_API],
    values: {
      issuer: { defaultIssuer: { name: 'letsencrypt-prod', kind: 'ClusterIssuer' } },
      policies: { allowCrossNamespacePolicies: true },
      webhook: { failurePolicy: 'Fail', excludedNamespaces: [] },
      login: {
        tokenTtlSeconds: 3600,
        rateLimitPerMinute: 0,
        subjects: [
          { kind: 'Group', name: 'developers' },
          { kind: 'User', name: 'alice@example.com' },
          { kind: 'ServiceAccount', name: 'deployer', namespace: 'ci' },
          { kind: 'ServiceAccount', name: 'local' },
        ],
      },
      sidecar: { gatewayUrl: 'wss://gw.example.com', caConfigMap: 'narrowlink-ca' },
      gateway: {
        udp: { enabled: false },
        service: { type: 'NodePort' },
        tls: { issuerRef: { name: 'letsencrypt-prod', kind: 'ClusterIssuer', group: 'cert-manager.io' }, dnsNames: ['gw.example.com'] },
      },
    },
  },
];

/** Kubernetes versions `helm template` renders for: 1.20 (policy/v1beta1, split UDP load balancer) and helm's default. */
const KUBE_VERSIONS = ['1.20.2', undefined] as const;

// ------------------------------------------------------------------------------------------------ helpers

const scratch = mkdtempSync(join(tmpdir(), 'narrowlink-chart-'));
let valuesFiles = 0;

function valuesFile(values: Record<string, unknown>): string {
  const file = join(scratch, `values-${valuesFiles++}.json`);
  writeFileSync(file, JSON.stringify(values));
  return file;
}

async function helm(args: string[], kubeconfig?: string): Promise<string> {
  const full = kubeconfig ? ['--kubeconfig', kubeconfig, ...args] : args;
  try {
    const { stdout } = await run(helmPath(), full, { maxBuffer: 32 * 1024 * 1024, timeout: 120_000 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    throw new Error(`helm ${args.join(' ')} failed: ${e.stderr || e.message}\n${e.stdout ?? ''}`);
  }
}

async function kubectl(api: ApiServer, args: string[]): Promise<string> {
  try {
    const { stdout } = await run(kubectlPath(), ['--kubeconfig', api.kubeconfigPath, ...args], {
      maxBuffer: 32 * 1024 * 1024,
      timeout: 120_000,
    });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`kubectl ${args.join(' ')} failed: ${e.stderr || e.message}`);
  }
}

/** Parses a multi-document YAML stream; every document must parse without errors or warnings. */
function parseObjects(text: string): Obj[] {
  const objects: Obj[] = [];
  for (const doc of parseAllDocuments(text)) {
    assert.deepEqual(doc.errors, [], `YAML errors: ${doc.errors.map((e) => e.message).join('; ')}`);
    assert.deepEqual(doc.warnings, [], `YAML warnings: ${doc.warnings.map((e) => e.message).join('; ')}`);
    const value = doc.toJS() as unknown;
    if (value === null || value === undefined) continue;
    assert.equal(typeof value, 'object', `a document is not a mapping: ${String(value)}`);
    const obj = value as Obj;
    assert.ok(obj.apiVersion && obj.kind && obj.metadata?.name, `object without apiVersion/kind/name: ${JSON.stringify(obj)}`);
    objects.push(obj);
  }
  return objects;
}

async function render(values: Record<string, unknown>, kubeVersion?: string, apiVersions: string[] = []): Promise<Obj[]> {
  const args = ['template', RELEASE, chartDir, '--namespace', NS, '--values', valuesFile(values)];
  if (kubeVersion) args.push('--kube-version', kubeVersion);
  for (const api of apiVersions) args.push('--api-versions', api);
  return parseObjects(await helm(args));
}

/**
 * Whether the chart uses cert-manager for `entry` (certManager.enabled: true, or auto with the Certificate API
 * served or a gateway.tls.issuerRef), as `narrowlink.certManager` decides.
 */
function usesCertManager(entry: MatrixEntry): boolean {
  const values = entry.values as { certManager?: { enabled?: boolean | 'auto' }; gateway?: { tls?: { issuerRef?: { name?: string } } } };
  const enabled = values.certManager?.enabled ?? 'auto';
  if (typeof enabled === 'boolean') return enabled;
  return (entry.apiVersions ?? []).includes(CERT_MANAGER_API) || Boolean(values.gateway?.tls?.issuerRef?.name);
}

/** kubernetes-models validator per apiVersion/kind: every kind the chart renders must have one. */
const validators: Record<string, (obj: Obj) => void> = {
  'apps/v1/Deployment': (o) => new Deployment(o as never).validate(),
  'v1/Service': (o) => new Service(o as never).validate(),
  'v1/ServiceAccount': (o) => new ServiceAccount(o as never).validate(),
  'v1/Secret': (o) => new Secret(o as never).validate(),
  'v1/ConfigMap': (o) => new ConfigMap(o as never).validate(),
  'rbac.authorization.k8s.io/v1/ClusterRole': (o) => new ClusterRole(o as never).validate(),
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': (o) => new ClusterRoleBinding(o as never).validate(),
  'rbac.authorization.k8s.io/v1/Role': (o) => new Role(o as never).validate(),
  'rbac.authorization.k8s.io/v1/RoleBinding': (o) => new RoleBinding(o as never).validate(),
  'admissionregistration.k8s.io/v1/MutatingWebhookConfiguration': (o) => new MutatingWebhookConfiguration(o as never).validate(),
  'policy/v1/PodDisruptionBudget': (o) => new PodDisruptionBudgetV1(o as never).validate(),
  'policy/v1beta1/PodDisruptionBudget': (o) => new PodDisruptionBudgetV1beta1(o as never).validate(),
  'cert-manager.io/v1/Certificate': (o) => new Certificate(o as never).validate(),
  'cert-manager.io/v1/Issuer': (o) => new Issuer(o as never).validate(),
};

const CLUSTER_SCOPED = new Set(['ClusterRole', 'ClusterRoleBinding', 'MutatingWebhookConfiguration', 'CustomResourceDefinition']);

function find(objects: Obj[], kind: string, name: string): Obj {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  assert.ok(found, `${kind} ${name} not rendered (have: ${objects.map((o) => `${o.kind}/${o.metadata.name}`).join(', ')})`);
  return found;
}

function deployment(objects: Obj[], name: string): DeploymentShape & Obj {
  return find(objects, 'Deployment', name) as DeploymentShape & Obj;
}

function argValue(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}

/** Deep merge of plain objects (values overlays), right wins; arrays are replaced. */
function merge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && !Array.isArray(b)
        ? merge(b as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/** `group/resource[/subresource]:verb` triples a rule set grants, with `@name` when restricted by resourceNames. */
function grants(rules: PolicyRule[]): string[] {
  const out: string[] = [];
  for (const rule of rules) {
    for (const group of rule.apiGroups ?? []) {
      for (const resource of rule.resources ?? []) {
        for (const verb of rule.verbs) {
          const names = rule.resourceNames ?? [];
          if (names.length === 0) out.push(`${group}/${resource}:${verb}`);
          else for (const name of names) out.push(`${group}/${resource}:${verb}@${name}`);
        }
      }
    }
  }
  return out.sort();
}

function expand(group: string, resources: string[], verbs: string[], names: string[] = []): string[] {
  return grants([{ apiGroups: [group], resources, verbs, resourceNames: names }]);
}

/** Paths of `rendered` (object keys, array indexes) that `stored` lacks: fields the API server dropped. */
function droppedPaths(rendered: unknown, stored: unknown, path = ''): string[] {
  if (rendered === null || typeof rendered !== 'object') return [];
  if (stored === null || typeof stored !== 'object') return [path || '<root>'];
  if (Array.isArray(rendered)) {
    if (!Array.isArray(stored)) return [path];
    return rendered.flatMap((item, i) => (i < stored.length ? droppedPaths(item, stored[i], `${path}[${i}]`) : [`${path}[${i}]`]));
  }
  const out: string[] = [];
  for (const [key, value] of Object.entries(rendered)) {
    const s = (stored as Record<string, unknown>)[key];
    if (s === undefined) out.push(`${path}.${key}`);
    else out.push(...droppedPaths(value, s, `${path}.${key}`));
  }
  return out;
}

// ------------------------------------------------------------------------------------------------ checks on one render

/**
 * The signing key Secret's data: an Ed25519 PKCS#8 private key under private.pem and exactly its SPKI public key
 * under public.pem, byte for byte as Node exports it (the chart cuts the public key out of a certificate).
 */
function checkSigningKey(data: Record<string, string>): void {
  assert.deepEqual(Object.keys(data).sort(), ['private.pem', 'public.pem']);
  const privatePem = Buffer.from(data['private.pem'] ?? '', 'base64').toString('utf8');
  const publicPem = Buffer.from(data['public.pem'] ?? '', 'base64').toString('utf8');
  const key = createPrivateKey(privatePem);
  assert.equal(key.asymmetricKeyType, 'ed25519');
  assert.equal(publicPem, createPublicKey(key).export({ type: 'spki', format: 'pem' }));
  // And the pair works: a signature made with the private key verifies with the public one.
  const message = Buffer.from('narrowlink');
  assert.ok(verify(null, message, createPublicKey(publicPem), sign(null, message, key)));
}

function checkRender(entry: MatrixEntry, objects: Obj[], kubeVersion: string | undefined): void {
  const values = entry.values as {
    certManager?: { enabled?: boolean | 'auto' };
    sidecar?: { caConfigMap?: string; distributeCa?: boolean };
    webhook?: { strict?: boolean; failurePolicy?: string };
    gateway?: {
      tls?: { existingSecret?: string; issuerRef?: { name?: string } };
      udp?: { enabled?: boolean };
      service?: { type?: string };
      admin?: { port?: number };
    };
    operator?: { replicas?: number };
    login?: { tokenTtlSeconds?: number; rateLimitPerMinute?: number; subjects?: Array<{ kind: string; name: string; namespace?: string }>; gatewayUrls?: string[]; caBundle?: string };
  };
  const certManager = usesCertManager(entry);
  const udp = values.gateway?.udp?.enabled ?? true;
  const serviceType = values.gateway?.service?.type ?? 'LoadBalancer';
  const adminPort = values.gateway?.admin?.port ?? 9090;
  const is120 = kubeVersion === '1.20.2';

  // Every object: a validator exists and passes; namespaced objects live in the release namespace; no duplicates.
  const seen = new Set<string>();
  for (const obj of objects) {
    const key = `${obj.apiVersion}/${obj.kind}`;
    const validate = validators[key];
    assert.ok(validate, `no kubernetes-models validator for ${key} (${obj.metadata.name})`);
    assert.doesNotThrow(() => validate(obj), `${key} ${obj.metadata.name} is invalid`);
    if (CLUSTER_SCOPED.has(obj.kind)) assert.equal(obj.metadata.namespace, undefined, `${obj.kind} ${obj.metadata.name}`);
    else assert.equal(obj.metadata.namespace, NS, `${obj.kind} ${obj.metadata.name} namespace`);
    const id = `${obj.kind}/${obj.metadata.namespace ?? ''}/${obj.metadata.name}`;
    assert.ok(!seen.has(id), `duplicate ${id}`);
    seen.add(id);
    assert.equal(obj.metadata.labels?.['app.kubernetes.io/part-of'], 'narrowlink', `${id} lacks the part-of label`);
  }

  // Security: every pod non-root, read-only root, no privilege escalation, no capabilities, RuntimeDefault seccomp.
  const deployments = objects.filter((o) => o.kind === 'Deployment') as Array<DeploymentShape & Obj>;
  assert.deepEqual(deployments.map((d) => d.metadata.name).sort(), ['narrowlink-gateway', 'narrowlink-operator']);
  for (const d of deployments) {
    const pod = d.spec.template.spec;
    assert.equal(pod.securityContext?.runAsNonRoot, true, `${d.metadata.name} pod runAsNonRoot`);
    assert.equal(pod.securityContext?.seccompProfile?.type, 'RuntimeDefault', `${d.metadata.name} pod seccomp`);
    for (const c of pod.containers) {
      const sc = c.securityContext;
      assert.equal(sc?.runAsNonRoot, true, `${c.name} runAsNonRoot`);
      assert.ok((sc?.runAsUser ?? 0) > 0, `${c.name} runAsUser`);
      assert.equal(sc?.readOnlyRootFilesystem, true, `${c.name} readOnlyRootFilesystem`);
      assert.equal(sc?.allowPrivilegeEscalation, false, `${c.name} allowPrivilegeEscalation`);
      assert.equal(sc?.privileged, false, `${c.name} privileged`);
      assert.deepEqual(sc?.capabilities?.drop, ['ALL'], `${c.name} drops ALL`);
      assert.equal(sc?.capabilities?.add, undefined, `${c.name} adds capabilities`);
      assert.equal(sc?.seccompProfile?.type, 'RuntimeDefault', `${c.name} seccomp`);
      assert.ok(c.volumeMounts?.some((m) => m.mountPath === '/tmp'), `${c.name} has a writable /tmp`);
    }
    // Services and PDBs select exactly these pods.
    assert.equal(pod.serviceAccountName, d.metadata.name);
    for (const [k, v] of Object.entries(d.spec.selector.matchLabels)) assert.equal(d.spec.template.metadata.labels[k], v);
    assert.equal(d.spec.template.metadata.labels['narrowlink.io/inject-disabled'], 'true', 'own pods opt out of injection');
  }

  // Operator: replicas, command, flags, ports, probes.
  const operator = deployment(objects, 'narrowlink-operator');
  assert.equal(operator.spec.replicas, values.operator?.replicas ?? 2);
  const op = operator.spec.template.spec.containers[0];
  assert.ok(op);
  // The image ships the compiled bundles only (npm run build:server), run from /app with the Node options the
  // build script measured for each component (runtime-deps.json nodeOptions); the webhook's sidecar likewise.
  assert.deepEqual(op.command, ['node', ...NODE_OPTIONS.operator, 'dist/server/operator.mjs']);
  assert.deepEqual(SIDECAR_COMMAND, ['node', ...NODE_OPTIONS.agent, 'dist/server/agent.mjs']);
  assert.deepEqual(SIDECAR_ENV, RUNTIME_ENV.agent, 'the sidecar runs with the environment the build measured for the agent');
  const opArgs = op.args ?? [];
  assert.equal(argValue(opArgs, '--namespace'), NS);
  assert.equal(argValue(opArgs, '--lease-name'), 'narrowlink-operator');
  assert.equal(argValue(opArgs, '--gateway-config-secret'), 'narrowlink-gateway-config');
  assert.equal(argValue(opArgs, '--signing-key-secret'), 'narrowlink-signing-key');
  assert.equal(argValue(opArgs, '--identity'), '$(POD_NAME)');
  assert.equal(argValue(opArgs, '--listen'), '0.0.0.0:8080');
  assert.equal(argValue(opArgs, '--webhook-listen'), '0.0.0.0:9443');
  assert.equal(argValue(opArgs, '--webhook-cert-file'), '/etc/narrowlink/webhook/tls.crt');
  assert.equal(argValue(opArgs, '--webhook-key-file'), '/etc/narrowlink/webhook/tls.key');
  assert.equal(argValue(opArgs, '--webhook-strict'), String(values.webhook?.strict === true));
  // Without cert-manager the operator manages the webhook CA: the Secret it keeps it in and the webhook to patch.
  assert.equal(argValue(opArgs, '--webhook-ca-secret'), certManager ? undefined : 'narrowlink-webhook-tls');
  assert.equal(argValue(opArgs, '--webhook-configuration'), 'narrowlink-sidecar-injector', 'named always: the CA copies are owned by it');
  // Without cert-manager and without an existing Secret the operator issues the gateway certificate from its CA
  // (ADR 0015), for the Service names plus dnsNames and extraSans.
  const tlsValues = values.gateway?.tls as { existingSecret?: string; dnsNames?: string[]; extraSans?: string[] } | undefined;
  const operatorIssues = !certManager && !tlsValues?.existingSecret;
  assert.equal(argValue(opArgs, '--gateway-tls-secret'), operatorIssues ? 'narrowlink-gateway-tls' : undefined);
  assert.equal(argValue(opArgs, '--ca-secret'), operatorIssues ? 'narrowlink-ca' : undefined);
  assert.equal(argValue(opArgs, '--gateway-service'), operatorIssues ? 'narrowlink-gateway' : undefined);
  const sans = [...new Set([...(tlsValues?.dnsNames ?? []), ...(tlsValues?.extraSans ?? [])])];
  assert.equal(argValue(opArgs, '--gateway-tls-extra-sans'), operatorIssues && sans.length > 0 ? sans.join(',') : undefined);
  // Sidecars trust the gateway CA through a ConfigMap the operator copies into their namespaces (default), or one
  // the user provides; the webhook projects it optional.
  const caConfigMap = values.sidecar?.caConfigMap ?? 'narrowlink-ca';
  const distributeCa = (values.sidecar?.distributeCa ?? true) && caConfigMap !== '';
  assert.equal(argValue(opArgs, '--sidecar-ca-configmap'), caConfigMap || undefined);
  assert.equal(argValue(opArgs, '--distribute-ca-from'), distributeCa ? values.gateway?.tls?.existingSecret || 'narrowlink-gateway-tls' : undefined);
  // narrowlink login: the token lifetime cap and rate limit, and the discovery CA copy unless the values give a CA.
  assert.equal(argValue(opArgs, '--login-token-ttl-seconds'), String(values.login?.tokenTtlSeconds ?? 28800));
  assert.equal(argValue(opArgs, '--login-rate-limit-per-minute'), String(values.login?.rateLimitPerMinute ?? 10));
  assert.equal(argValue(opArgs, '--discovery-configmap'), values.login?.caBundle ? undefined : 'narrowlink-discovery');
  assert.equal(argValue(opArgs, '--discovery-ca-secret'), values.login?.caBundle ? undefined : values.gateway?.tls?.existingSecret || 'narrowlink-gateway-tls');
  assert.deepEqual(
    (op.ports ?? []).map((p) => `${p.name}:${p.containerPort}/${p.protocol}`),
    ['webhook:9443/TCP', 'metrics:8080/TCP'],
  );
  assert.equal(op.readinessProbe?.httpGet?.path, '/readyz');
  assert.equal(op.livenessProbe?.httpGet?.path, '/healthz');
  const webhookVolume = operator.spec.template.spec.volumes?.find((v) => v.name === 'webhook-tls');
  assert.equal(webhookVolume?.secret?.secretName, 'narrowlink-webhook-tls');
  assert.ok(op.volumeMounts?.some((m) => m.name === 'webhook-tls' && m.mountPath === '/etc/narrowlink/webhook'));
  assert.equal(webhookVolume?.secret?.optional, !certManager, 'without cert-manager the operator creates the Secret later');

  // Gateway: command, flags, ports, TLS volume.
  const gateway = deployment(objects, 'narrowlink-gateway');
  const gw = gateway.spec.template.spec.containers[0];
  assert.ok(gw);
  assert.deepEqual(gw.command, ['node', ...NODE_OPTIONS.gateway, 'dist/server/gateway.mjs']);
  const gwArgs = gw.args ?? [];
  assert.equal(argValue(gwArgs, '--config-source'), 'kubernetes');
  assert.equal(argValue(gwArgs, '--config-secret'), 'narrowlink-gateway-config');
  assert.equal(argValue(gwArgs, '--config-namespace'), NS);
  assert.equal(argValue(gwArgs, '--tls-cert'), '/tls/tls.crt');
  assert.equal(argValue(gwArgs, '--tls-key'), '/tls/tls.key');
  assert.equal(argValue(gwArgs, '--listen'), '0.0.0.0:8443');
  // Health, readiness and metrics on the admin listener, on the pod network (issue 10: not on the public port).
  assert.equal(argValue(gwArgs, '--admin-listen'), `0.0.0.0:${adminPort}`);
  // Fair shares of each agent's streams and the idle limit (issue 10); a large idle value renders as an integer.
  assert.equal(argValue(gwArgs, '--agent-streams-per-session'), '256');
  assert.equal(argValue(gwArgs, '--agent-streams-per-identity'), '1024');
  // The agent reserve, fair OPEN admission and per-identity limits (issue 10: reconnecting starts nothing afresh).
  assert.equal(argValue(gwArgs, '--agent-streams-reserve'), '1024');
  assert.equal(argValue(gwArgs, '--agent-streams-reserve-floor'), '64');
  assert.equal(argValue(gwArgs, '--open-admission-per-agent'), '64');
  assert.equal(argValue(gwArgs, '--open-admission-per-identity'), '16');
  assert.equal(argValue(gwArgs, '--identity-rate-limit-open'), '2000:4000');
  assert.equal(argValue(gwArgs, '--identity-rate-limit-connect'), '10:200');
  assert.equal(argValue(gwArgs, '--identity-rate-limit-list-agents'), '10:40');
  assert.equal(argValue(gwArgs, '--stream-idle-timeout-ms'), '14400000');
  // Buffer budgets for peers that do not read (issue 10, ADR 0011); rendered as integers, not 6.7108864e+07.
  assert.equal(argValue(gwArgs, '--session-buffer-bytes'), '67108864');
  assert.equal(argValue(gwArgs, '--process-buffer-bytes'), '67108864');
  assert.equal(argValue(gwArgs, '--send-high-water-bytes'), '1048576');
  assert.equal(gw.env?.find((e) => e.name === 'NARROWLINK_GATEWAY_NAT_PROBE_PORT')?.value, udp ? '3478' : undefined);
  // Probes are answered from the pod IP (a specific address); peers are told the advertised one when set.
  assert.equal(gw.env?.find((e) => e.name === 'NARROWLINK_GATEWAY_NAT_PROBE_ADDRESS')?.value, udp ? '$(POD_IP)' : undefined);
  assert.ok((gw.env ?? []).findIndex((e) => e.name === 'POD_IP') < (gw.env ?? []).findIndex((e) => e.name === 'NARROWLINK_GATEWAY_NAT_PROBE_ADDRESS') || !udp);
  assert.deepEqual(
    (gw.ports ?? []).map((p) => `${p.name}:${p.containerPort}/${p.protocol}`),
    udp ? ['wss:8443/TCP', `admin:${adminPort}/TCP`, 'nat-probe:3478/UDP', 'nat-probe-alt:3479/UDP'] : ['wss:8443/TCP', `admin:${adminPort}/TCP`],
  );
  // The kubelet probes the admin port in plain HTTP; the wss port answers no HTTP paths.
  assert.deepEqual(gw.readinessProbe?.httpGet, { path: '/readyz', port: 'admin', scheme: 'HTTP' });
  assert.deepEqual(gw.livenessProbe?.httpGet, { path: '/healthz', port: 'admin', scheme: 'HTTP' });
  const tlsSecret = values.gateway?.tls?.existingSecret || 'narrowlink-gateway-tls';
  assert.equal(gateway.spec.template.spec.volumes?.find((v) => v.name === 'tls')?.secret?.secretName, tlsSecret);

  // Gateway Services: 443 -> wss; UDP probe ports on the same Service, or their own LoadBalancer before 1.26.
  const gwService = find(objects, 'Service', 'narrowlink-gateway') as ServiceShape & Obj;
  assert.equal(gwService.spec.type, serviceType);
  const splitUdp = udp && serviceType === 'LoadBalancer' && is120;
  const udpPorts = ['nat-probe:3478->nat-probe/UDP', 'nat-probe-alt:3479->nat-probe-alt/UDP'];
  const portsOf = (s: ServiceShape) => s.spec.ports.map((p) => `${p.name}:${p.port}->${p.targetPort}/${p.protocol}`);
  assert.deepEqual(portsOf(gwService), ['wss:443->wss/TCP', ...(udp && !splitUdp ? udpPorts : [])]);
  const udpService = objects.find((o) => o.kind === 'Service' && o.metadata.name === 'narrowlink-gateway-udp') as
    | (ServiceShape & Obj)
    | undefined;
  if (splitUdp) assert.deepEqual(udpService && portsOf(udpService), udpPorts);
  else assert.equal(udpService, undefined);
  const peers = find(objects, 'Service', 'narrowlink-gateway-peers') as ServiceShape & Obj;
  assert.equal(peers.spec.clusterIP, 'None');
  // The admin port is reachable in the cluster only: its own ClusterIP Service, on no LoadBalancer or NodePort
  // Service, and on no Service but that one.
  const adminService = find(objects, 'Service', 'narrowlink-gateway-admin') as ServiceShape & Obj;
  assert.equal(adminService.spec.type, 'ClusterIP');
  assert.deepEqual(portsOf(adminService), [`admin:${adminPort}->admin/TCP`]);
  for (const s of objects.filter((o) => o.kind === 'Service') as Array<ServiceShape & Obj>) {
    if (s === adminService) continue;
    assert.ok(
      s.spec.ports.every((p) => p.targetPort !== 'admin' && p.targetPort !== adminPort && p.port !== adminPort),
      `${s.metadata.name} (${s.spec.type ?? 'ClusterIP'}) exposes the admin port: ${portsOf(s).join(', ')}`,
    );
    if (s.spec.type === 'LoadBalancer' || s.spec.type === 'NodePort') assert.ok(portsOf(s).every((p) => /^(wss|nat-probe|nat-probe-alt):/.test(p)), s.metadata.name);
  }
  const operatorService = find(objects, 'Service', 'narrowlink-operator') as ServiceShape & Obj;
  assert.deepEqual(portsOf(operatorService), ['webhook:443->webhook/TCP', 'metrics:8080->metrics/TCP']);
  for (const s of [gwService, peers, adminService, operatorService, ...(udpService ? [udpService] : [])]) {
    const target = s.metadata.name === 'narrowlink-operator' ? operator : gateway;
    for (const [k, v] of Object.entries(s.spec.selector)) assert.equal(target.spec.template.metadata.labels[k], v, `${s.metadata.name} selector`);
  }

  // Webhook: Pod CREATE, side-effect free, scoped away from the release namespace and the chart's own pods.
  const webhookConfig = find(objects, 'MutatingWebhookConfiguration', 'narrowlink-sidecar-injector') as WebhookShape & Obj;
  assert.deepEqual(
    webhookConfig.webhooks.map((w) => w.name),
    ['sidecar-injector.narrowlink.io', 'login-requests.narrowlink.io'],
  );
  const hook = webhookConfig.webhooks[0];
  assert.ok(hook);
  assert.equal(hook.sideEffects, 'None');
  assert.deepEqual(hook.admissionReviewVersions, ['v1']);
  assert.equal(hook.reinvocationPolicy, 'IfNeeded');
  assert.equal(hook.timeoutSeconds, 5);
  assert.equal(hook.failurePolicy, values.webhook?.failurePolicy || (values.webhook?.strict ? 'Fail' : 'Ignore'));
  assert.deepEqual(hook.rules, [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' }]);
  assert.deepEqual(hook.clientConfig.service, { name: 'narrowlink-operator', namespace: NS, path: '/mutate-pods', port: 443 });
  assert.equal(hook.clientConfig.caBundle, undefined, 'caBundle is never rendered (cert-manager or the operator fills it)');
  const nsExpressions = hook.namespaceSelector?.matchExpressions ?? [];
  assert.ok(
    nsExpressions.some((e) => e.key === 'kubernetes.io/metadata.name' && e.operator === 'NotIn' && e.values?.includes(NS)),
    'the release namespace is excluded by name',
  );
  assert.ok(
    nsExpressions.some((e) => e.key === 'narrowlink.io/inject-disabled' && e.operator === 'NotIn' && e.values?.includes('true')),
    'namespaces can opt out by label',
  );
  assert.ok(
    hook.objectSelector?.matchExpressions?.some((e) => e.key === 'narrowlink.io/inject-disabled' && e.operator === 'NotIn'),
    'the chart pods are excluded',
  );
  // The login webhook: ClientLoginRequest CREATE and UPDATE in every namespace, Fail (an unstamped request must
  // never exist), never re-invoked (its own stamp would read as client-supplied).
  const loginHook = webhookConfig.webhooks[1];
  assert.ok(loginHook);
  assert.equal(loginHook.failurePolicy, 'Fail');
  assert.equal(loginHook.reinvocationPolicy, 'Never');
  assert.equal(loginHook.sideEffects, 'None');
  assert.deepEqual(loginHook.admissionReviewVersions, ['v1']);
  assert.deepEqual(loginHook.rules, [
    { operations: ['CREATE', 'UPDATE'], apiGroups: ['narrowlink.io'], apiVersions: ['v1alpha1'], resources: ['clientloginrequests'], scope: 'Namespaced' },
  ]);
  assert.deepEqual(loginHook.clientConfig.service, { name: 'narrowlink-operator', namespace: NS, path: '/mutate-clientloginrequests', port: 443 });
  assert.equal(loginHook.clientConfig.caBundle, undefined);
  assert.equal(loginHook.namespaceSelector, undefined, 'the webhook sees every namespace (and refuses requests outside the release namespace)');
  assert.equal(loginHook.objectSelector, undefined);
  assert.equal(
    webhookConfig.metadata.annotations?.['cert-manager.io/inject-ca-from'],
    certManager ? `${NS}/narrowlink-webhook` : undefined,
  );

  // cert-manager objects only with cert-manager; the gateway Certificate only without an existing Secret.
  const certs = objects.filter((o) => o.kind === 'Certificate').map((o) => o.metadata.name).sort();
  const issuers = objects.filter((o) => o.kind === 'Issuer').map((o) => o.metadata.name).sort();
  if (!certManager) {
    assert.deepEqual([...certs, ...issuers], []);
  } else {
    assert.deepEqual(issuers, ['narrowlink-ca', 'narrowlink-selfsigned']);
    const expected = ['narrowlink-ca', 'narrowlink-webhook', ...(values.gateway?.tls?.existingSecret ? [] : ['narrowlink-gateway'])];
    assert.deepEqual(certs, expected.sort());
    const webhookCert = find(objects, 'Certificate', 'narrowlink-webhook') as Obj & { spec: { secretName: string; dnsNames: string[] } };
    assert.equal(webhookCert.spec.secretName, 'narrowlink-webhook-tls');
    assert.ok(webhookCert.spec.dnsNames.includes(`narrowlink-operator.${NS}.svc`));
  }

  // Signing key: an Ed25519 key pair as the operator reads it, kept on uninstall.
  const signingKey = find(objects, 'Secret', 'narrowlink-signing-key') as Obj & { data: Record<string, string> };
  assert.equal(signingKey.metadata.annotations?.['helm.sh/resource-policy'], 'keep');
  checkSigningKey(signingKey.data);

  // PDB: policy/v1beta1 on 1.20, policy/v1 later.
  const pdbs = objects.filter((o) => o.kind === 'PodDisruptionBudget');
  assert.deepEqual(
    pdbs.map((p) => `${p.apiVersion}/${p.metadata.name}`),
    [`${is120 ? 'policy/v1beta1' : 'policy/v1'}/narrowlink-operator`],
  );

  // RBAC: no wildcard anywhere, and exactly the expected grants.
  const rbacKinds = new Set(['ClusterRole', 'Role']);
  for (const role of objects.filter((o) => rbacKinds.has(o.kind))) {
    for (const rule of (role as Obj & { rules: PolicyRule[] }).rules) {
      for (const field of [rule.apiGroups, rule.resources, rule.verbs, rule.resourceNames]) {
        for (const item of field ?? []) assert.ok(!item.includes('*'), `wildcard in ${role.kind} ${role.metadata.name}: ${JSON.stringify(rule)}`);
      }
    }
  }
  const rulesOf = (kind: string, name: string) => grants((find(objects, kind, name) as Obj & { rules: PolicyRule[] }).rules);
  assert.deepEqual(
    rulesOf('ClusterRole', 'narrowlink-operator'),
    [
      ...expand('narrowlink.io', ['narrowlinkagents'], ['get', 'list', 'watch', 'create', 'patch']),
      ...expand('narrowlink.io', ['accesspolicies'], ['get', 'list', 'watch', 'patch']),
      ...expand('narrowlink.io', ['narrowlinkagents/status', 'accesspolicies/status'], ['patch']),
      ...expand('narrowlink.io', ['narrowlinkagents/finalizers'], ['update']),
      ...expand('cert-manager.io', ['certificates'], ['get', 'list', 'watch', 'create', 'patch', 'delete']),
      ...expand('', ['secrets'], ['get', 'list', 'watch', 'create', 'patch', 'delete']),
      ...expand('', ['pods'], ['get', 'list', 'watch']),
      ...expand('apps', ['replicasets'], ['get']),
      ...expand('', ['events'], ['create', 'patch']),
      ...expand('admissionregistration.k8s.io', ['mutatingwebhookconfigurations'], certManager ? ['get'] : ['get', 'patch'], ['narrowlink-sidecar-injector']),
      ...(distributeCa ? [...expand('', ['configmaps'], ['create']), ...expand('', ['configmaps'], ['get', 'patch'], [caConfigMap])] : []),
    ].sort(),
  );
  assert.deepEqual(
    rulesOf('Role', 'narrowlink-operator-leader-election'),
    [
      ...expand('coordination.k8s.io', ['leases'], ['get', 'update', 'patch'], ['narrowlink-operator']),
      ...expand('coordination.k8s.io', ['leases'], ['create']),
      ...expand('', ['configmaps'], ['list', 'watch']),
      ...expand('narrowlink.io', ['clientloginrequests'], ['get', 'list', 'watch', 'delete']),
      ...expand('narrowlink.io', ['clientloginrequests/status'], ['patch']),
      ...expand('', ['configmaps'], ['get', 'patch'], ['narrowlink-discovery']),
    ].sort(),
  );
  // narrowlink login: the ClusterRole admins bind, and the discovery ConfigMap every authenticated user may read.
  assert.deepEqual(rulesOf('ClusterRole', 'narrowlink-login'), expand('narrowlink.io', ['clientloginrequests'], ['create', 'get', 'list', 'watch', 'delete']));
  assert.deepEqual(rulesOf('Role', 'narrowlink-discovery'), expand('', ['configmaps'], ['get'], ['narrowlink-discovery']));
  const discoveryBinding = find(objects, 'RoleBinding', 'narrowlink-discovery') as Obj & { roleRef: unknown; subjects: unknown[] };
  assert.deepEqual(discoveryBinding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'narrowlink-discovery' });
  assert.deepEqual(discoveryBinding.subjects, [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'Group', name: 'system:authenticated' }]);
  const discovery = find(objects, 'ConfigMap', 'narrowlink-discovery') as Obj & { data: Record<string, string> };
  const port = 443;
  const dnsNames = (values.gateway?.tls as { dnsNames?: string[] } | undefined)?.dnsNames ?? [];
  assert.deepEqual(
    JSON.parse(discovery.data.gatewayUrls ?? ''),
    values.login?.gatewayUrls ?? [...dnsNames.map((n) => `wss://${n}`), `wss://narrowlink-gateway.${NS}.svc:${port}`],
  );
  assert.deepEqual(JSON.parse(discovery.data.natProbePorts ?? ''), udp ? [3478, 3479] : []);
  assert.equal(discovery.data.loginNamespace, NS);
  assert.equal(discovery.data.tokenTtlSeconds, String(values.login?.tokenTtlSeconds ?? 28800));
  assert.equal(discovery.data['ca.crt'], values.login?.caBundle || undefined, 'ca.crt only from login.caBundle; else the operator fills it');
  const loginSubjects = values.login?.subjects ?? [];
  const loginBinding = objects.find((o) => o.kind === 'RoleBinding' && o.metadata.name === 'narrowlink-login') as
    | (Obj & { roleRef: unknown; subjects: unknown[] })
    | undefined;
  if (loginSubjects.length === 0) assert.equal(loginBinding, undefined, 'no login binding by default');
  else {
    assert.deepEqual(loginBinding?.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'narrowlink-login' });
    assert.deepEqual(
      loginBinding?.subjects,
      loginSubjects.map((s) =>
        s.kind === 'ServiceAccount'
          ? { kind: s.kind, name: s.name, namespace: s.namespace ?? NS }
          : { kind: s.kind, name: s.name, apiGroup: 'rbac.authorization.k8s.io' },
      ),
    );
  }
  assert.deepEqual(
    rulesOf('Role', 'narrowlink-gateway'),
    [
      ...expand('', ['secrets'], ['get', 'list', 'watch'], ['narrowlink-gateway-config', tlsSecret]),
      ...expand('', ['configmaps'], ['get', 'create', 'patch', 'delete']),
    ].sort(),
  );
  assert.deepEqual(rulesOf('ClusterRole', 'narrowlink-gateway'), expand('authentication.k8s.io', ['tokenreviews'], ['create']));
  // Every other binding binds a rendered role to a rendered ServiceAccount.
  for (const binding of objects.filter((o) => (o.kind === 'RoleBinding' || o.kind === 'ClusterRoleBinding') && o !== discoveryBinding && o !== loginBinding)) {
    const b = binding as Obj & { roleRef: { kind: string; name: string }; subjects: Array<{ kind: string; name: string; namespace: string }> };
    find(objects, b.roleRef.kind, b.roleRef.name);
    for (const s of b.subjects) {
      assert.equal(s.kind, 'ServiceAccount');
      assert.equal(s.namespace, NS);
      find(objects, 'ServiceAccount', s.name);
    }
  }
}

// ------------------------------------------------------------------------------------------------ offline tests

function toolsOrSkip(t: TestContext): boolean {
  const reason = toolsUnavailableReason();
  if (reason) {
    t.skip(`k8s tier: SKIPPED (${reason})`);
    return false;
  }
  return true;
}

after(() => rmSync(scratch, { recursive: true, force: true }));

describe('Helm chart charts/narrowlink: lint and template', () => {
  for (const entry of MATRIX) {
    it(`helm lint --strict passes: ${entry.name}`, async (t) => {
      if (!toolsOrSkip(t)) return;
      // helm lint has no --api-versions: where the entry expects cert-manager, its check is skipped instead.
      const values = entry.apiVersions?.includes(CERT_MANAGER_API) ? merge(entry.values, { certManager: { skipCheck: true } }) : entry.values;
      const out = await helm(['lint', '--strict', chartDir, '--namespace', NS, '--values', valuesFile(values)]);
      assert.match(out, /1 chart\(s\) linted, 0 chart\(s\) failed/);
    });
  }

  for (const entry of MATRIX) {
    for (const kubeVersion of KUBE_VERSIONS) {
      it(`helm template renders valid objects: ${entry.name} (Kubernetes ${kubeVersion ?? 'helm default'})`, async (t) => {
        if (!toolsOrSkip(t)) return;
        const objects = await render(entry.values, kubeVersion, entry.apiVersions);
        checkRender(entry, objects, kubeVersion);
      });
    }
  }

  it('gateway.tokens reaches the operator as --gateway-token-rules JSON the operator accepts; unset, no flag', async (t) => {
    if (!toolsOrSkip(t)) return;
    const rules = { maxLifetimeSeconds: { client: 86400 }, deny: { jti: ['0f3c'], sub: ['mallory', 'shop/legacy'] } };
    const op = deployment(await render({ gateway: { tokens: rules } }), 'narrowlink-operator').spec.template.spec.containers[0];
    const text = argValue(op?.args ?? [], '--gateway-token-rules');
    assert.ok(text, 'the flag is rendered');
    assert.deepEqual(parseGatewayTokenRules(text), rules);
    const plain = deployment(await render({}), 'narrowlink-operator').spec.template.spec.containers[0];
    assert.equal((plain?.args ?? []).includes('--gateway-token-rules'), false);
    // The schema refuses what the gateway would (a typo must fail `helm install`, not the operator at start).
    await assert.rejects(render({ gateway: { tokens: { deny: { ip: ['10.0.0.1'] } } } }));
  });

  it('custom images, pull secrets and resources reach the operator, gateway and sidecar flags', async (t) => {
    if (!toolsOrSkip(t)) return;
    const entry = MATRIX.find((e) => e.name === 'custom images and resources');
    assert.ok(entry);
    const objects = await render(entry.values);
    const op = deployment(objects, 'narrowlink-operator').spec.template.spec.containers[0];
    const gw = deployment(objects, 'narrowlink-gateway').spec.template.spec.containers[0];
    assert.ok(op && gw);
    assert.equal(op.image, 'registry.example.com/nl/operator:1.2.3');
    assert.equal(op.imagePullPolicy, 'Always');
    assert.equal(gw.image, 'registry.example.com/nl/all@sha256:0123456789abcdef');
    assert.deepEqual(op.resources, customResources);
    assert.deepEqual(gw.resources, customResources);
    const args = op.args ?? [];
    assert.equal(argValue(args, '--sidecar-image'), 'registry.example.com/nl/sidecar:9.9.9');
    assert.equal(argValue(args, '--sidecar-image-pull-policy'), 'Never');
    assert.equal(argValue(args, '--sidecar-cpu-request'), '250m');
    assert.equal(argValue(args, '--sidecar-memory-request'), '300Mi');
    assert.equal(argValue(args, '--sidecar-cpu-limit'), '1');
    assert.equal(argValue(args, '--sidecar-memory-limit'), '700Mi');
    for (const name of ['narrowlink-operator', 'narrowlink-gateway']) {
      const pod = deployment(objects, name).spec.template.spec as { imagePullSecrets?: unknown };
      assert.deepEqual(pod.imagePullSecrets, [{ name: 'regcred' }]);
    }
    // Defaults: the chart appVersion tag of the default repository.
    const defaults = await render({});
    const defaultOperator = deployment(defaults, 'narrowlink-operator').spec.template.spec.containers[0];
    assert.equal(defaultOperator?.image, 'ghcr.io/narrowlink/narrowlink-k8s:0.1.0');
    const defaultArgs = defaultOperator?.args ?? [];
    assert.equal(argValue(defaultArgs, '--sidecar-image'), 'ghcr.io/narrowlink/narrowlink-k8s:0.1.0');
    // An absent limit is passed as "" (the operator then leaves it off the injected container).
    assert.equal(argValue(defaultArgs, '--sidecar-cpu-limit'), '');
    assert.equal(argValue(defaultArgs, '--sidecar-memory-limit'), '128Mi');
  });

  it('issuer, cross-namespace and gateway URL values reach the operator flags; a public issuer certifies only public names', async (t) => {
    if (!toolsOrSkip(t)) return;
    const entry = MATRIX.find((e) => e.name.startsWith('public issuer'));
    assert.ok(entry);
    const objects = await render(entry.values, undefined, entry.apiVersions);
    const args = deployment(objects, 'narrowlink-operator').spec.template.spec.containers[0]?.args ?? [];
    assert.equal(argValue(args, '--default-issuer'), 'letsencrypt-prod/ClusterIssuer');
    assert.ok(args.includes('--allow-cross-namespace-policies'));
    assert.equal(argValue(args, '--sidecar-gateway-url'), 'wss://gw.example.com');
    assert.equal(argValue(args, '--sidecar-ca-configmap'), 'narrowlink-ca');
    const cert = find(objects, 'Certificate', 'narrowlink-gateway') as Obj & { spec: { dnsNames: string[]; issuerRef: unknown } };
    assert.deepEqual(cert.spec.dnsNames, ['gw.example.com']);
    assert.deepEqual(cert.spec.issuerRef, { name: 'letsencrypt-prod', kind: 'ClusterIssuer', group: 'cert-manager.io' });

    const defaults = await render({}, undefined, [CERT_MANAGER_API]);
    const defaultArgs = deployment(defaults, 'narrowlink-operator').spec.template.spec.containers[0]?.args ?? [];
    assert.equal(defaultArgs.includes('--default-issuer'), false, 'no default issuer unless configured');
    assert.equal(defaultArgs.includes('--allow-cross-namespace-policies'), false);
    assert.equal(argValue(defaultArgs, '--sidecar-ca-configmap'), 'narrowlink-ca');
    assert.equal(argValue(defaultArgs, '--sidecar-gateway-url'), `wss://narrowlink-gateway.${NS}.svc:443`);
    const defaultCert = find(defaults, 'Certificate', 'narrowlink-gateway') as Obj & { spec: { dnsNames: string[] } };
    assert.deepEqual(defaultCert.spec.dnsNames, [`narrowlink-gateway.${NS}.svc`, `narrowlink-gateway.${NS}.svc.cluster.local`]);
  });

  it('every flag the chart passes is one the operator and gateway accept', async (t) => {
    if (!toolsOrSkip(t)) return;
    const helpFlags = async (script: string): Promise<Set<string>> => {
      const { stdout } = await run(process.execPath, [join(repoRoot, script), '--help'], { timeout: 30_000 });
      return new Set(stdout.match(/--[a-z][a-z0-9-]*/g) ?? []);
    };
    const accepted = { operator: await helpFlags('operator/src/main.ts'), gateway: await helpFlags('gateway/src/main.ts') };
    const unknown: string[] = [];
    const checked = { operator: new Set<string>(), gateway: new Set<string>() };
    for (const entry of MATRIX) {
      const objects = await render(entry.values, undefined, entry.apiVersions);
      for (const component of ['operator', 'gateway'] as const) {
        const container = deployment(objects, `narrowlink-${component}`).spec.template.spec.containers[0];
        assert.ok(container);
        const prefix = `NARROWLINK_${component.toUpperCase()}_`;
        const fromEnv = (container.env ?? [])
          .filter((e) => e.name.startsWith(prefix))
          .map((e) => `--${e.name.slice(prefix.length).toLowerCase().replaceAll('_', '-')}`);
        for (const flag of [...(container.args ?? []).filter((a) => a.startsWith('--')), ...fromEnv]) {
          checked[component].add(flag);
          if (!accepted[component].has(flag)) unknown.push(`${component} ${flag} (${entry.name})`);
        }
      }
    }
    assert.deepEqual([...new Set(unknown)], [], 'flags the chart passes that the binary does not accept (not in its --help)');
    // Guards against a vacuous pass: the webhook and sidecar flags and the NAT probe port are rendered and checked.
    for (const flag of [
      '--webhook-listen',
      '--sidecar-image',
      '--sidecar-gateway-url',
      '--login-token-ttl-seconds',
      '--discovery-configmap',
      '--gateway-tls-secret',
      '--gateway-tls-extra-sans',
      '--distribute-ca-from',
    ]) {
      assert.ok(checked.operator.has(flag), `operator ${flag} not rendered`);
    }
    assert.ok(checked.gateway.has('--nat-probe-port'), 'gateway --nat-probe-port not rendered');
    assert.ok(checked.gateway.has('--admin-listen'), 'gateway --admin-listen not rendered');
  });

  it('refuses invalid values with a message naming the problem', async (t) => {
    if (!toolsOrSkip(t)) return;
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ webhook: { failurePolicy: 'Sometimes' } }, /webhook\.failurePolicy/],
      [{ operatr: { replicas: 2 } }, /Additional property operatr is not allowed/],
      [{ operator: { replicas: 0 } }, /operator\.replicas/],
      [{ gateway: { udp: { probePort: 443 } } }, /gateway\.udp\.probePort/],
      [{ gateway: { admin: { port: 80 } } }, /gateway\.admin\.port/],
      [{ gateway: { admin: { port: 8443 } } }, /gateway\.admin\.port/],
      [{ gateway: { udp: { advertiseAddress: 'lb.example.com' } } }, /gateway\.udp\.advertiseAddress/],
      [{ gateway: { service: { type: 'ExternalName' } } }, /gateway\.service\.type/],
      [{ image: { pullPolicy: 'Sometimes' } }, /image\.pullPolicy/],
      [{ login: { tokenTtlSeconds: 86401 } }, /login\.tokenTtlSeconds/],
      [{ login: { tokenTtlSeconds: 30 } }, /login\.tokenTtlSeconds/],
      [{ login: { rateLimitPerMinute: -1 } }, /login\.rateLimitPerMinute/],
      [{ login: { subjects: [{ kind: 'Robot', name: 'r' }] } }, /login\.subjects\.0\.kind/],
      [{ login: { subjects: [{ kind: 'User' }] } }, /login\.subjects\.0/],
      [{ login: { gatewayUrls: ['https://gw.example.com'] } }, /login\.gatewayUrls\.0/],
      [{ login: { caBundle: 'not a pem' } }, /login\.caBundle/],
      [{ gateway: { tls: { issuerRef: { name: 'le', kind: 'ClusterIssuer', group: 'cert-manager.io' } } } }, /needs gateway\.tls\.dnsNames/],
      [
        { certManager: { enabled: false }, gateway: { tls: { issuerRef: { name: 'le', kind: 'ClusterIssuer', group: 'cert-manager.io' }, dnsNames: ['gw.example.com'] } } },
        /needs certManager\.enabled=true/,
      ],
      [
        { gateway: { tls: { existingSecret: 'x', issuerRef: { name: 'le', kind: 'ClusterIssuer', group: 'cert-manager.io' }, dnsNames: ['gw.example.com'] } } },
        /either gateway\.tls\.issuerRef or gateway\.tls\.existingSecret/,
      ],
      // cert-manager detection (helm template: no cluster, so no cert-manager.io/v1 Certificate): one line naming
      // the value that needs it.
      [{ certManager: { enabled: true } }, /certManager\.enabled=true needs cert-manager, but this cluster does not serve cert-manager\.io\/v1 Certificate: install cert-manager first/],
      [
        { gateway: { tls: { issuerRef: { name: 'le', kind: 'ClusterIssuer', group: 'cert-manager.io' }, dnsNames: ['gw.example.com'] } } },
        /gateway\.tls\.issuerRef \(le\) needs cert-manager/,
      ],
      [{ issuer: { defaultIssuer: { name: 'letsencrypt-prod', kind: 'ClusterIssuer' } } }, /issuer\.defaultIssuer \(letsencrypt-prod\) needs cert-manager/],
      [{ certManager: { enabled: 'yes' } }, /certManager\.enabled/],
      [{ sidecar: { caConfigMap: '' } }, /sidecar\.distributeCa needs sidecar\.caConfigMap/],
      [{ gateway: { tls: { extraSans: ['not a name!'] } } }, /gateway\.tls\.extraSans/],
    ];
    for (const [values, message] of cases) {
      await assert.rejects(
        helm(['template', RELEASE, chartDir, '--namespace', NS, '--values', valuesFile(values)]),
        message,
        JSON.stringify(values),
      );
    }
  });
});

// ------------------------------------------------------------------------------------------------ real apiserver

/** Minimal cert-manager CRDs (the API surface only; no controller): enough for the chart's Issuers and Certificates. */
function certManagerCrd(plural: string, kind: string): Obj {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${plural}.cert-manager.io` },
    spec: {
      group: 'cert-manager.io',
      scope: 'Namespaced',
      names: { plural, singular: kind.toLowerCase(), kind, listKind: `${kind}List` },
      versions: [
        {
          name: 'v1',
          served: true,
          storage: true,
          subresources: { status: {} },
          schema: {
            openAPIV3Schema: {
              type: 'object',
              properties: {
                spec: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true },
                status: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true },
              },
            },
          },
        },
      ],
    },
  };
}

interface AccessCheck {
  user: string;
  verb: string;
  group?: string;
  resource: string;
  subresource?: string;
  namespace?: string;
  name?: string;
  allowed: boolean;
}

describe('Helm chart charts/narrowlink: install into a real kube-apiserver 1.20', () => {
  const k8s = useApiServer();
  // The default values: this apiserver serves no cert-manager API yet, so certManager auto takes the operator's CA.
  const installValues = {};
  let signingKeyData: Record<string, string> | undefined;

  before(() => {
    // Unpack helm/kubectl before the first timed test (a no-op when they cannot run here).
    if (!toolsUnavailableReason()) helmPath();
  });

  function apiOrSkip(t: TestContext): ApiServer | undefined {
    if (!toolsOrSkip(t)) return undefined;
    return k8s.require(t);
  }

  async function manifestObjects(api: ApiServer): Promise<Obj[]> {
    return parseObjects(await helm(['get', 'manifest', RELEASE, '--namespace', NS], api.kubeconfigPath));
  }

  async function getJson<T>(api: ApiServer, args: string[]): Promise<T> {
    return JSON.parse(await kubectl(api, [...args, '-o', 'json'])) as T;
  }

  async function readSigningKey(api: ApiServer): Promise<Record<string, string>> {
    const secret = await getJson<{ data: Record<string, string> }>(api, ['get', 'secret', 'narrowlink-signing-key', '-n', NS]);
    return secret.data;
  }

  it('helm install with the default values (no cert-manager in the cluster) creates every rendered object, and the 1.20 API keeps every rendered field', async (t) => {
    const api = apiOrSkip(t);
    if (!api) return;
    await kubectl(api, ['create', 'namespace', NS]);
    const out = await helm(
      ['install', RELEASE, chartDir, '--namespace', NS, '--values', valuesFile(installValues), '--timeout', '60s'],
      api.kubeconfigPath,
    );
    assert.match(out, /STATUS: deployed/);
    assert.match(out, /narrowlink-webhook-tls/, 'NOTES explain the operator-managed webhook CA');
    assert.match(out, /issues the gateway certificate into narrowlink-gateway-tls/, 'auto without cert-manager: the operator issues the gateway certificate');
    assert.match(out, /narrowlink login -n narrowlink-system/, 'NOTES say how to log in');
    assert.match(out, /gateway\.udp\.advertiseAddress is empty/, 'NOTES warn about the direct path behind a LoadBalancer');

    // CRDs from crds/ are installed and served.
    for (const crd of ['narrowlinkagents.narrowlink.io', 'accesspolicies.narrowlink.io']) {
      const stored = await getJson<{ status: { conditions: Array<{ type: string; status: string }> } }>(api, ['get', 'crd', crd]);
      assert.ok(stored.status.conditions.some((c) => c.type === 'Established' && c.status === 'True'), `${crd} established`);
    }

    const rendered = await manifestObjects(api);
    const manifestFile = join(scratch, 'installed.yaml');
    writeFileSync(manifestFile, JSON.stringify({ apiVersion: 'v1', kind: 'List', items: rendered }));
    const stored = (await getJson<{ items: Obj[] }>(api, ['get', '-f', manifestFile])).items;
    assert.deepEqual(
      stored.map((o) => `${o.kind}/${o.metadata.name}`).sort(),
      rendered.map((o) => `${o.kind}/${o.metadata.name}`).sort(),
    );
    for (const obj of rendered) {
      const live = stored.find((s) => s.kind === obj.kind && s.metadata.name === obj.metadata.name);
      assert.deepEqual(droppedPaths(obj, live), [], `${obj.kind} ${obj.metadata.name}: fields dropped by the API server`);
    }
    assert.ok(rendered.some((o) => o.apiVersion === 'policy/v1beta1' && o.kind === 'PodDisruptionBudget'), 'a 1.20 cluster gets a v1beta1 PDB');
    assert.ok(rendered.some((o) => o.kind === 'Service' && o.metadata.name === 'narrowlink-gateway-udp'), 'UDP on its own LoadBalancer before 1.26');

    const operator = await getJson<{ spec: { replicas: number } }>(api, ['get', 'deployment', 'narrowlink-operator', '-n', NS]);
    assert.equal(operator.spec.replicas, 2);
    signingKeyData = await readSigningKey(api);
    checkSigningKey(signingKeyData);
  });

  it('the ServiceAccounts get exactly the access they need (SubjectAccessReview)', async (t) => {
    const api = apiOrSkip(t);
    if (!api) return;
    const authz = api.kubeConfig().makeApiClient(AuthorizationV1Api);
    const op = OPERATOR_SA;
    const gw = GATEWAY_SA;
    const checks: AccessCheck[] = [
      // operator: CRDs, status, finalizers
      { user: op, verb: 'watch', group: 'narrowlink.io', resource: 'narrowlinkagents', allowed: true },
      { user: op, verb: 'create', group: 'narrowlink.io', resource: 'narrowlinkagents', namespace: 'shop', allowed: true },
      { user: op, verb: 'delete', group: 'narrowlink.io', resource: 'narrowlinkagents', namespace: 'shop', allowed: false },
      { user: op, verb: 'update', group: 'narrowlink.io', resource: 'narrowlinkagents', namespace: 'shop', allowed: false },
      { user: op, verb: 'create', group: 'narrowlink.io', resource: 'accesspolicies', namespace: 'shop', allowed: false },
      { user: op, verb: 'patch', group: 'narrowlink.io', resource: 'accesspolicies', subresource: 'status', namespace: 'shop', allowed: true },
      { user: op, verb: 'update', group: 'narrowlink.io', resource: 'narrowlinkagents', subresource: 'finalizers', namespace: 'shop', allowed: true },
      // operator: cert-manager, secrets, pods, events
      { user: op, verb: 'delete', group: 'cert-manager.io', resource: 'certificates', namespace: 'shop', allowed: true },
      { user: op, verb: 'create', group: 'cert-manager.io', resource: 'issuers', namespace: 'shop', allowed: false },
      { user: op, verb: 'delete', resource: 'secrets', namespace: 'shop', allowed: true },
      { user: op, verb: 'update', resource: 'secrets', namespace: 'shop', allowed: false },
      { user: op, verb: 'list', resource: 'pods', allowed: true },
      { user: op, verb: 'delete', resource: 'pods', namespace: 'shop', allowed: false },
      { user: op, verb: 'create', resource: 'events', namespace: 'shop', allowed: true },
      { user: op, verb: 'get', resource: 'configmaps', namespace: NS, allowed: false },
      // operator: the gateway CA copy, by its name, in any namespace (ADR 0015); no other ConfigMap outside its own
      { user: op, verb: 'patch', resource: 'configmaps', namespace: 'shop', name: 'narrowlink-ca', allowed: true },
      { user: op, verb: 'create', resource: 'configmaps', namespace: 'shop', allowed: true },
      { user: op, verb: 'patch', resource: 'configmaps', namespace: 'shop', name: 'app-settings', allowed: false },
      { user: op, verb: 'delete', resource: 'configmaps', namespace: 'shop', name: 'narrowlink-ca', allowed: false },
      { user: op, verb: 'list', resource: 'configmaps', namespace: 'shop', allowed: false },
      { user: op, verb: 'get', group: 'admissionregistration.k8s.io', resource: 'mutatingwebhookconfigurations', name: 'narrowlink-sidecar-injector', allowed: true },
      { user: op, verb: 'create', group: 'apps', resource: 'deployments', namespace: 'shop', allowed: false },
      { user: op, verb: 'create', group: 'authentication.k8s.io', resource: 'tokenreviews', allowed: false },
      // operator: its webhook only (certManager.enabled=false)
      { user: op, verb: 'patch', group: 'admissionregistration.k8s.io', resource: 'mutatingwebhookconfigurations', name: 'narrowlink-sidecar-injector', allowed: true },
      { user: op, verb: 'patch', group: 'admissionregistration.k8s.io', resource: 'mutatingwebhookconfigurations', name: 'someone-else', allowed: false },
      { user: op, verb: 'create', group: 'admissionregistration.k8s.io', resource: 'mutatingwebhookconfigurations', allowed: false },
      // operator: its Lease only, in its namespace only
      { user: op, verb: 'update', group: 'coordination.k8s.io', resource: 'leases', namespace: NS, name: 'narrowlink-operator', allowed: true },
      { user: op, verb: 'update', group: 'coordination.k8s.io', resource: 'leases', namespace: NS, name: 'other', allowed: false },
      { user: op, verb: 'create', group: 'coordination.k8s.io', resource: 'leases', namespace: NS, allowed: true },
      { user: op, verb: 'create', group: 'coordination.k8s.io', resource: 'leases', namespace: 'kube-system', allowed: false },
      // gateway: two Secrets by name, TokenReviews, nothing else
      { user: gw, verb: 'get', resource: 'secrets', namespace: NS, name: 'narrowlink-gateway-config', allowed: true },
      { user: gw, verb: 'watch', resource: 'secrets', namespace: NS, name: 'narrowlink-gateway-tls', allowed: true },
      { user: gw, verb: 'get', resource: 'secrets', namespace: NS, name: 'narrowlink-signing-key', allowed: false },
      { user: gw, verb: 'list', resource: 'secrets', namespace: NS, allowed: false },
      { user: gw, verb: 'get', resource: 'secrets', namespace: 'shop', name: 'narrowlink-gateway-config', allowed: false },
      { user: gw, verb: 'create', group: 'authentication.k8s.io', resource: 'tokenreviews', allowed: true },
      { user: gw, verb: 'list', group: 'narrowlink.io', resource: 'narrowlinkagents', allowed: false },
      { user: gw, verb: 'get', group: 'coordination.k8s.io', resource: 'leases', namespace: NS, name: 'narrowlink-operator', allowed: false },
      { user: gw, verb: 'patch', group: 'coordination.k8s.io', resource: 'leases', namespace: NS, name: 'narrowlink-operator', allowed: false },
      // gateway: its own status ConfigMap in the release namespace only
      { user: gw, verb: 'create', resource: 'configmaps', namespace: NS, allowed: true },
      { user: gw, verb: 'create', resource: 'configmaps', namespace: 'shop', allowed: false },
      { user: op, verb: 'watch', resource: 'configmaps', namespace: NS, allowed: true },
      // operator: login requests of the release namespace only (informer, collection, the token in status) and
      // the discovery ConfigMap's ca.crt; it never creates requests
      { user: op, verb: 'watch', group: 'narrowlink.io', resource: 'clientloginrequests', namespace: NS, allowed: true },
      { user: op, verb: 'delete', group: 'narrowlink.io', resource: 'clientloginrequests', namespace: NS, allowed: true },
      { user: op, verb: 'patch', group: 'narrowlink.io', resource: 'clientloginrequests', subresource: 'status', namespace: NS, allowed: true },
      { user: op, verb: 'create', group: 'narrowlink.io', resource: 'clientloginrequests', namespace: NS, allowed: false },
      { user: op, verb: 'update', group: 'narrowlink.io', resource: 'clientloginrequests', namespace: NS, allowed: false },
      { user: op, verb: 'list', group: 'narrowlink.io', resource: 'clientloginrequests', namespace: 'shop', allowed: false },
      { user: op, verb: 'patch', resource: 'configmaps', namespace: NS, name: 'narrowlink-discovery', allowed: true },
      { user: op, verb: 'patch', resource: 'configmaps', namespace: NS, name: 'other', allowed: false },
      // gateway: nothing of login
      { user: gw, verb: 'list', group: 'narrowlink.io', resource: 'clientloginrequests', namespace: NS, allowed: false },
    ];
    const wrong: string[] = [];
    for (const c of checks) {
      const namespace = c.user.split(':')[2] ?? '';
      const review = await authz.createSubjectAccessReview({
        body: {
          apiVersion: 'authorization.k8s.io/v1',
          kind: 'SubjectAccessReview',
          spec: {
            user: c.user,
            groups: ['system:serviceaccounts', `system:serviceaccounts:${namespace}`, 'system:authenticated'],
            resourceAttributes: {
              verb: c.verb,
              group: c.group ?? '',
              resource: c.resource,
              ...(c.subresource ? { subresource: c.subresource } : {}),
              ...(c.namespace ? { namespace: c.namespace } : {}),
              ...(c.name ? { name: c.name } : {}),
            },
          },
        },
      });
      if ((review.status?.allowed ?? false) !== c.allowed) wrong.push(`${JSON.stringify(c)} → ${review.status?.allowed}`);
    }
    // Any authenticated user (no binding): the discovery ConfigMap and nothing else; no login without a binding.
    const user = { user: 'mallory', groups: ['system:authenticated'] };
    for (const [attributes, allowed] of [
      [{ verb: 'get', resource: 'configmaps', namespace: NS, name: 'narrowlink-discovery' }, true],
      [{ verb: 'list', resource: 'configmaps', namespace: NS }, false],
      [{ verb: 'get', resource: 'configmaps', namespace: NS, name: 'narrowlink-gateway-status' }, false],
      [{ verb: 'create', group: 'narrowlink.io', resource: 'clientloginrequests', namespace: NS }, false],
    ] as const) {
      const review = await authz.createSubjectAccessReview({
        body: { apiVersion: 'authorization.k8s.io/v1', kind: 'SubjectAccessReview', spec: { ...user, resourceAttributes: { group: '', ...attributes } } },
      });
      if ((review.status?.allowed ?? false) !== allowed) wrong.push(`mallory ${JSON.stringify(attributes)} → ${review.status?.allowed}`);
    }
    assert.deepEqual(wrong, []);

    // The gateway's Informer lists its config Secret with a metadata.name field selector: resourceNames allow it.
    const asGateway = ['--as', GATEWAY_SA, '-n', NS];
    await kubectl(api, ['get', 'secrets', '--field-selector', 'metadata.name=narrowlink-gateway-config', ...asGateway]);
    await assert.rejects(kubectl(api, ['get', 'secrets', ...asGateway]), /forbidden/i);
  });

  it('helm upgrade keeps the signing key and a caBundle patched in by the operator, and applies the new values', async (t) => {
    const api = apiOrSkip(t);
    if (!api) return;
    assert.ok(signingKeyData, 'install test ran first');
    // What the operator does without cert-manager: patch its CA into the webhook.
    const caBundle = Buffer.from(api.caPem).toString('base64');
    await kubectl(api, [
      'patch',
      'mutatingwebhookconfiguration',
      'narrowlink-sidecar-injector',
      '--type',
      'json',
      '-p',
      JSON.stringify([{ op: 'add', path: '/webhooks/0/clientConfig/caBundle', value: caBundle }]),
    ]);
    const out = await helm(
      ['upgrade', RELEASE, chartDir, '--namespace', NS, '--values', valuesFile(merge(installValues, { webhook: { strict: true } })), '--timeout', '60s'],
      api.kubeconfigPath,
    );
    assert.match(out, /STATUS: deployed/);
    assert.deepEqual(await readSigningKey(api), signingKeyData, 'the signing key is unchanged');
    const hook = await getJson<WebhookShape>(api, ['get', 'mutatingwebhookconfiguration', 'narrowlink-sidecar-injector']);
    assert.equal(hook.webhooks[0]?.failurePolicy, 'Fail');
    assert.equal(hook.webhooks[0]?.clientConfig.caBundle, caBundle, 'helm upgrade left the patched caBundle alone');
    const args = (await getJson<DeploymentShape>(api, ['get', 'deployment', 'narrowlink-operator', '-n', NS])).spec.template.spec.containers[0]?.args;
    assert.equal(argValue(args ?? [], '--webhook-strict'), 'true');
  });

  it('helm upgrade to certManager.enabled=true (cert-manager CRDs present) adds the PKI, the CA injection annotation and drops the webhook RBAC', async (t) => {
    const api = apiOrSkip(t);
    if (!api) return;
    // Before cert-manager is installed, asking for it fails the upgrade with the one-line explanation.
    await assert.rejects(
      helm(['upgrade', RELEASE, chartDir, '--namespace', NS, '--reset-values', '--values', valuesFile({ certManager: { enabled: true } }), '--timeout', '60s'], api.kubeconfigPath),
      /certManager\.enabled=true needs cert-manager, but this cluster does not serve cert-manager\.io\/v1 Certificate/,
    );
    const crdFile = join(scratch, 'cert-manager-crds.json');
    writeFileSync(crdFile, JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [certManagerCrd('certificates', 'Certificate'), certManagerCrd('issuers', 'Issuer')] }));
    await kubectl(api, ['apply', '-f', crdFile]);
    await kubectl(api, ['wait', '--for=condition=Established', '--timeout=30s', 'crd/certificates.cert-manager.io', 'crd/issuers.cert-manager.io']);
    // --reset-values: back to the chart defaults (helm would otherwise reuse the last release's values).
    await helm(
      ['upgrade', RELEASE, chartDir, '--namespace', NS, '--reset-values', '--values', valuesFile({ certManager: { enabled: true } }), '--timeout', '60s'],
      api.kubeconfigPath,
    );

    const certs = await getJson<{ items: Obj[] }>(api, ['get', 'certificates.cert-manager.io', '-n', NS]);
    assert.deepEqual(certs.items.map((c) => c.metadata.name).sort(), ['narrowlink-ca', 'narrowlink-gateway', 'narrowlink-webhook']);
    for (const c of certs.items) assert.doesNotThrow(() => new Certificate(c as never).validate(), c.metadata.name);
    const issuers = await getJson<{ items: Obj[] }>(api, ['get', 'issuers.cert-manager.io', '-n', NS]);
    assert.deepEqual(issuers.items.map((c) => c.metadata.name).sort(), ['narrowlink-ca', 'narrowlink-selfsigned']);
    const hook = await getJson<WebhookShape & Obj>(api, ['get', 'mutatingwebhookconfiguration', 'narrowlink-sidecar-injector']);
    assert.equal(hook.metadata.annotations?.['cert-manager.io/inject-ca-from'], `${NS}/narrowlink-webhook`);
    assert.equal(hook.webhooks[0]?.failurePolicy, 'Ignore');
    const role = await getJson<{ rules: PolicyRule[] }>(api, ['get', 'clusterrole', 'narrowlink-operator']);
    assert.deepEqual(
      grants(role.rules).filter((g) => g.startsWith('admissionregistration.k8s.io/')),
      ['admissionregistration.k8s.io/mutatingwebhookconfigurations:get@narrowlink-sidecar-injector'],
      'with cert-manager the operator only reads its webhook configuration (owner of the CA copies)',
    );
    // The operator no longer issues the gateway certificate: cert-manager does.
    const args = (await getJson<DeploymentShape>(api, ['get', 'deployment', 'narrowlink-operator', '-n', NS])).spec.template.spec.containers[0]?.args ?? [];
    assert.equal(argValue(args, '--gateway-tls-secret'), undefined);
    assert.equal(argValue(args, '--distribute-ca-from'), 'narrowlink-gateway-tls');
    assert.deepEqual(await readSigningKey(api), signingKeyData, 'the signing key is unchanged');
  });

  it('the deploy/examples manifests are accepted by the API server (server-side dry run against the CRDs)', async (t) => {
    const api = apiOrSkip(t);
    if (!api) return;
    await kubectl(api, ['create', 'namespace', 'shop']);
    const out = await kubectl(api, ['apply', '--dry-run=server', '-f', examplesDir]);
    for (const name of ['narrowlinkagent.narrowlink.io/build-cache', 'accesspolicy.narrowlink.io/developers', 'deployment.apps/orders-api']) {
      assert.match(out, new RegExp(`${name.replaceAll('.', '\\.')} created \\(server dry run\\)`));
    }
  });

  it('helm uninstall keeps the signing key; a reinstall adopts and reuses it', async (t) => {
    const api = apiOrSkip(t);
    if (!api) return;
    const out = await helm(['uninstall', RELEASE, '--namespace', NS, '--timeout', '60s'], api.kubeconfigPath);
    assert.match(out, /narrowlink-signing-key/, 'helm reports the kept resource');
    await assert.rejects(kubectl(api, ['get', 'deployment', 'narrowlink-operator', '-n', NS]), /NotFound|not found/);
    await assert.rejects(kubectl(api, ['get', 'mutatingwebhookconfiguration', 'narrowlink-sidecar-injector']), /NotFound|not found/);
    assert.deepEqual(await readSigningKey(api), signingKeyData, 'kept on uninstall');

    await helm(['install', RELEASE, chartDir, '--namespace', NS, '--values', valuesFile({}), '--timeout', '60s'], api.kubeconfigPath);
    assert.deepEqual(await readSigningKey(api), signingKeyData, 'reused on reinstall');
    // The same default values, now that the cluster serves cert-manager.io/v1 Certificate: auto chose cert-manager.
    const certs = await getJson<{ items: Obj[] }>(api, ['get', 'certificates.cert-manager.io', '-n', NS]);
    assert.ok(certs.items.some((c) => c.metadata.name === 'narrowlink-gateway'), 'auto with cert-manager served: the chart renders the gateway Certificate');
    const args = (await getJson<DeploymentShape>(api, ['get', 'deployment', 'narrowlink-operator', '-n', NS])).spec.template.spec.containers[0]?.args ?? [];
    assert.equal(argValue(args, '--gateway-tls-secret'), undefined, 'and the operator does not issue one');
    await kubectl(api, ['get', 'deployment', 'narrowlink-operator', '-n', NS]);
  });
});
