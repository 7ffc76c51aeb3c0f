/**
 * The compiled gateway config, pure: every NarrowlinkAgent and AccessPolicy in the cluster → the exact
 * `GatewayConfig` document the gateway loads (protocol's `parseGatewayConfig`), plus the objects that could not
 * be included and why.
 *
 * Decisions:
 * - One bad object never breaks the gateway: each agent and policy is validated on its own with the gateway's
 *   own schema, and an invalid one is left out and reported (its reconciler sets `Ready=False` with the
 *   reason). Only the operator's own inputs (signing keys) can make the whole render fail.
 * - Objects being deleted (`deletionTimestamp`) are left out without a problem: access ends when deletion
 *   starts, not when the last finalizer is gone.
 * - Expired policies are kept. The gateway ignores them from the exact instant of `expiresAt` (it schedules
 *   the recompile itself), so the rendered Secret does not change with time and the operator needs no timer
 *   to stay correct; `expiredPolicies` and `nextExpiryMs` only drive policy status.
 * - Output is sorted (agents and policies by namespace/name, labels and signing keys lexically), so the
 *   Secret changes only when content changes.
 */
import {
  type AgentConfig,
  GATEWAY_CONFIG_SECRET_KEY,
  type GatewayConfig,
  type GatewayTokenRules,
  gatewayConfigSchema,
  type PolicyConfig,
  validateGatewayConfig,
} from '@narrowlink/protocol';
import { stringify } from 'yaml';
import type { AccessPolicy, AccessPolicyRule, PolicySubject } from '../../crds/access-policy.ts';
import {
  AGENT_KIND,
  DEFAULT_AGENT_MODE,
  DEFAULT_EXPOSE_HOST,
  type NarrowlinkAgent,
} from '../../crds/narrowlink-agent.ts';
import { POLICY_KIND } from '../../crds/access-policy.ts';
import { Component, managedLabels } from '../../labels.ts';
import { shortHash } from '../../names.ts';
import { isDeleting, type Secret } from '../../objects.ts';
import { domainOwners } from '../domains.ts';

/** Why an object was left out of the gateway config. CamelCase: used as condition reason and Event reason. */
export const ProblemReason = {
  /** metadata.name/namespace unusable by the gateway (agent names must be DNS-1123 labels, max 63). */
  InvalidName: 'InvalidName',
  /** The spec breaks a rule the CRD schema cannot express (duplicate port, selector values, ...). */
  InvalidSpec: 'InvalidSpec',
  /** spec.publish[].port is not the port of any spec.expose entry. */
  PublishPortNotExposed: 'PublishPortNotExposed',
  /** A published domain is already claimed by an older agent. */
  DomainConflict: 'DomainConflict',
} as const;
export type ProblemReason = (typeof ProblemReason)[keyof typeof ProblemReason];

/** An object left out of the config. */
export interface Problem {
  kind: typeof AGENT_KIND | typeof POLICY_KIND;
  namespace: string;
  name: string;
  reason: ProblemReason;
  /** Every issue found, `field.path: what is wrong`, joined with '; '. */
  message: string;
}

/** Inputs of {@link desiredGatewayConfig}. */
export interface GatewayConfigInput {
  agents: readonly NarrowlinkAgent[];
  policies: readonly AccessPolicy[];
  /** Ed25519 SPKI PEMs the gateway accepts tokens from; at least one. */
  signingPublicKeys: readonly string[];
  /** Chart value: may a policy reach agents in other namespaces. */
  allowCrossNamespacePolicies: boolean;
  /** Chart value `gateway.tokens`: token lifetime limits and the denylist; absent: the gateway's defaults. */
  tokenRules?: GatewayTokenRules;
  /** Now, ms since epoch: only classifies policies as expired. */
  nowMs: number;
}

/** Output of {@link desiredGatewayConfig}. */
export interface DesiredGatewayConfig {
  /** The validated document, defaults applied. */
  config: GatewayConfig;
  /** Objects left out, sorted by kind, namespace, name. */
  problems: Problem[];
  /** Policies in the config whose `expiresAt` has passed (the gateway ignores them), sorted. */
  expiredPolicies: Array<{ namespace: string; name: string }>;
  /** Earliest future `expiresAt` among included policies (ms), to requeue policy status; undefined if none. */
  nextExpiryMs?: number;
}

const agentSchema = gatewayConfigSchema.shape.agents.unwrap().element;
const policySchema = gatewayConfigSchema.shape.policies.unwrap().element;

/** An issue found on one object: where (document path) and what. */
interface Issue {
  path: readonly PropertyKey[];
  message: string;
}

/** Maps a gateway-document path of an agent or policy back to the CR field a user edits. */
function fieldPath(path: readonly PropertyKey[]): string {
  const [head, ...rest] = path;
  if (head === undefined) return 'spec';
  const root = head === 'name' || head === 'namespace' || head === 'labels' ? 'metadata' : 'spec';
  let out = `${root}.${String(head)}`;
  for (const p of rest) out += typeof p === 'number' ? `[${p}]` : `.${String(p)}`;
  return out;
}

function formatIssues(issues: readonly Issue[]): string {
  return issues.map((i) => `${fieldPath(i.path)}: ${i.message}`).join('; ');
}

function zodIssues(issues: ReadonlyArray<{ path: PropertyKey[]; message: string; code: string; keys?: string[] }>): Issue[] {
  return issues.flatMap((i) =>
    i.code === 'unrecognized_keys' && i.keys !== undefined
      ? i.keys.map((k) => ({ path: [...i.path, k], message: 'unknown field' }))
      : [{ path: i.path, message: i.message }],
  );
}

function compareKeys(a: { namespace: string; name: string }, b: { namespace: string; name: string }): number {
  if (a.namespace !== b.namespace) return a.namespace < b.namespace ? -1 : 1;
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

function sortedRecord(record: Readonly<Record<string, string>> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of Object.keys(record ?? {}).sort()) out[key] = record?.[key] ?? '';
  return out;
}

function agentConfig(
  agent: NarrowlinkAgent,
  owners: ReturnType<typeof domainOwners>,
): { config: AgentConfig } | { reason: ProblemReason; issues: Issue[] } {
  const candidate = {
    name: agent.metadata.name ?? '',
    namespace: agent.metadata.namespace ?? '',
    labels: sortedRecord(agent.metadata.labels),
    mode: agent.spec.mode ?? DEFAULT_AGENT_MODE,
    expose: (agent.spec.expose ?? []).map((e) => ({ name: e.name, port: e.port, host: e.host ?? DEFAULT_EXPOSE_HOST })),
    serviceAccounts: [...new Set(agent.spec.serviceAccounts ?? [])].sort(),
  };
  const parsed = agentSchema.safeParse(candidate);
  if (!parsed.success) {
    const issues = zodIssues(parsed.error.issues);
    const nameBad = issues.some((i) => i.path[0] === 'name' || i.path[0] === 'namespace');
    return { reason: nameBad ? ProblemReason.InvalidName : ProblemReason.InvalidSpec, issues };
  }

  // publish is not part of the gateway document yet, but an agent whose publish entries cannot work is
  // reported the same way: the CRD cannot express these cross-field rules on Kubernetes 1.20 (no CEL).
  const exposedPorts = new Set(candidate.expose.map((e) => e.port));
  const seen = new Set<string>();
  const invalid: Issue[] = [];
  const notExposed: Issue[] = [];
  const conflicts: Issue[] = [];
  (agent.spec.publish ?? []).forEach((p, i) => {
    if (seen.has(p.domain)) invalid.push({ path: ['publish', i, 'domain'], message: `duplicate domain "${p.domain}"` });
    seen.add(p.domain);
    if (!exposedPorts.has(p.port)) {
      notExposed.push({ path: ['publish', i, 'port'], message: `port ${p.port} is not in spec.expose` });
    }
    const owner = owners.get(p.domain);
    if (owner !== undefined && (owner.namespace !== candidate.namespace || owner.name !== candidate.name)) {
      conflicts.push({
        path: ['publish', i, 'domain'],
        message: `domain "${p.domain}" is already published by NarrowlinkAgent ${owner.namespace}/${owner.name}`,
      });
    }
  });
  if (invalid.length > 0) return { reason: ProblemReason.InvalidSpec, issues: [...invalid, ...notExposed, ...conflicts] };
  if (notExposed.length > 0) return { reason: ProblemReason.PublishPortNotExposed, issues: [...notExposed, ...conflicts] };
  if (conflicts.length > 0) return { reason: ProblemReason.DomainConflict, issues: conflicts };
  return { config: parsed.data };
}

/** A rule port as the gateway wants it: a number, or a "lo-hi" string. A numeric string "8080" becomes 8080. */
function normalizePort(port: number | string): number | string {
  return typeof port === 'string' && /^[0-9]+$/.test(port) ? Number(port) : port;
}

function ruleConfig(rule: AccessPolicyRule): Record<string, unknown> {
  const out: Record<string, unknown> = { action: rule.action };
  if (rule.agents !== undefined) {
    const agents: Record<string, unknown> = {};
    if (rule.agents.names !== undefined) agents.names = [...rule.agents.names];
    if (rule.agents.selector !== undefined) {
      const selector: Record<string, unknown> = {};
      const { matchLabels, matchExpressions } = rule.agents.selector;
      if (matchLabels !== undefined) selector.matchLabels = sortedRecord(matchLabels);
      if (matchExpressions !== undefined) {
        selector.matchExpressions = matchExpressions.map((e) =>
          e.values === undefined ? { key: e.key, operator: e.operator } : { key: e.key, operator: e.operator, values: [...e.values] },
        );
      }
      agents.selector = selector;
    }
    out.agents = agents;
  }
  if (rule.ports !== undefined) out.ports = rule.ports.map(normalizePort);
  if (rule.hosts !== undefined) out.hosts = [...rule.hosts];
  if (rule.paths !== undefined) out.paths = [...rule.paths];
  return out;
}

function subjectConfig(subject: PolicySubject, index: number, policyNamespace: string, issues: Issue[]): Record<string, unknown> {
  if (subject.kind === 'ServiceAccount') {
    return { kind: subject.kind, name: subject.name, namespace: subject.namespace ?? policyNamespace };
  }
  if (subject.namespace !== undefined) {
    issues.push({ path: ['subjects', index, 'namespace'], message: `only allowed for kind ServiceAccount, not ${subject.kind}` });
  }
  return { kind: subject.kind, name: subject.name };
}

function policyConfig(
  policy: AccessPolicy,
): { config: PolicyConfig; expiresMs?: number } | { reason: ProblemReason; issues: Issue[] } {
  const namespace = policy.metadata.namespace ?? '';
  const issues: Issue[] = [];
  const candidate: Record<string, unknown> = { name: policy.metadata.name ?? '', namespace };
  let expiresMs: number | undefined;
  if (policy.spec.expiresAt !== undefined) {
    expiresMs = Date.parse(policy.spec.expiresAt);
    if (Number.isNaN(expiresMs)) {
      issues.push({ path: ['expiresAt'], message: `"${policy.spec.expiresAt}" is not an RFC 3339 date-time` });
    } else {
      // One spelling per instant, so equivalent inputs render the same bytes.
      candidate.expiresAt = new Date(expiresMs).toISOString();
    }
  }
  candidate.subjects = policy.spec.subjects.map((s, i) => subjectConfig(s, i, namespace, issues));
  candidate.rules = policy.spec.rules.map(ruleConfig);
  const parsed = policySchema.safeParse(candidate);
  if (!parsed.success) issues.push(...zodIssues(parsed.error.issues));
  if (issues.length > 0 || !parsed.success) {
    const nameBad = issues.some((i) => i.path[0] === 'name' || i.path[0] === 'namespace');
    return { reason: nameBad ? ProblemReason.InvalidName : ProblemReason.InvalidSpec, issues };
  }
  return expiresMs === undefined ? { config: parsed.data } : { config: parsed.data, expiresMs };
}

/**
 * Renders the gateway config. Pure. Throws ConfigError(CONFIG_INVALID) from protocol only when the operator's
 * own inputs are wrong (no or malformed signing keys): that is a chart misconfiguration, not a user's CR.
 */
export function desiredGatewayConfig(input: GatewayConfigInput): DesiredGatewayConfig {
  const problems: Problem[] = [];
  const owners = domainOwners(input.agents);

  const agents: AgentConfig[] = [];
  for (const agent of input.agents) {
    if (isDeleting(agent)) continue;
    const result = agentConfig(agent, owners);
    if ('config' in result) agents.push(result.config);
    else problems.push(problemOf(AGENT_KIND, agent, result));
  }

  const policies: PolicyConfig[] = [];
  const expiredPolicies: Array<{ namespace: string; name: string }> = [];
  let nextExpiryMs: number | undefined;
  for (const policy of input.policies) {
    if (isDeleting(policy)) continue;
    const result = policyConfig(policy);
    if (!('config' in result)) {
      problems.push(problemOf(POLICY_KIND, policy, result));
      continue;
    }
    policies.push(result.config);
    if (result.expiresMs === undefined) continue;
    if (result.expiresMs <= input.nowMs) {
      expiredPolicies.push({ namespace: result.config.namespace, name: result.config.name });
    } else if (nextExpiryMs === undefined || result.expiresMs < nextExpiryMs) {
      nextExpiryMs = result.expiresMs;
    }
  }

  agents.sort(compareKeys);
  policies.sort(compareKeys);
  expiredPolicies.sort(compareKeys);
  problems.sort((a, b) => (a.kind !== b.kind ? (a.kind < b.kind ? -1 : 1) : compareKeys(a, b)));

  const config = validateGatewayConfig({
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'GatewayConfig',
    signingPublicKeys: [...new Set(input.signingPublicKeys)].sort(),
    allowCrossNamespacePolicies: input.allowCrossNamespacePolicies,
    agents,
    policies,
    ...(input.tokenRules ? { tokens: canonicalTokenRules(input.tokenRules) } : {}),
  });
  const out: DesiredGatewayConfig = { config, problems, expiredPolicies };
  if (nextExpiryMs !== undefined) out.nextExpiryMs = nextExpiryMs;
  return out;
}

/** The same rules always render the same bytes: denylists deduplicated and sorted. */
function canonicalTokenRules(rules: GatewayTokenRules): GatewayTokenRules {
  const out: GatewayTokenRules = {};
  if (rules.maxLifetimeSeconds) out.maxLifetimeSeconds = rules.maxLifetimeSeconds;
  if (rules.deny) {
    const deny: NonNullable<GatewayTokenRules['deny']> = {};
    if (rules.deny.jti) deny.jti = [...new Set(rules.deny.jti)].sort();
    if (rules.deny.sub) deny.sub = [...new Set(rules.deny.sub)].sort();
    out.deny = deny;
  }
  return out;
}

function problemOf(
  kind: Problem['kind'],
  obj: NarrowlinkAgent | AccessPolicy,
  result: { reason: ProblemReason; issues: Issue[] },
): Problem {
  return {
    kind,
    namespace: obj.metadata.namespace ?? '',
    name: obj.metadata.name ?? '',
    reason: result.reason,
    message: formatIssues(result.issues),
  };
}

/** Annotation with the SHA-256 of the config bytes: lets humans and rollouts see which config is live. */
export const CONFIG_HASH_ANNOTATION = 'narrowlink.io/config-sha256';

/** The YAML text of a config, byte-stable for equal configs. `parseGatewayConfig` reads it back unchanged. */
export function renderGatewayConfig(config: GatewayConfig): string {
  return stringify(config, { lineWidth: 0 });
}

/** The gateway config Secret (Opaque, key {@link GATEWAY_CONFIG_SECRET_KEY}), labelled as operator-managed. */
export function gatewayConfigSecret(config: GatewayConfig, where: { namespace: string; name: string }): Secret {
  const text = renderGatewayConfig(config);
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: where.name,
      namespace: where.namespace,
      labels: managedLabels(Component.GatewayConfig),
      annotations: { [CONFIG_HASH_ANNOTATION]: shortHash(text, 64) },
    },
    type: 'Opaque',
    data: { [GATEWAY_CONFIG_SECRET_KEY]: Buffer.from(text, 'utf8').toString('base64') },
  };
}
