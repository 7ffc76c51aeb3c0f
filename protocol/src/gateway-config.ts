/**
 * The gateway configuration document (`narrowlink.io/v1alpha1`, kind `GatewayConfig`).
 *
 * The Kubernetes operator renders exactly this document from the CRDs; the gateway loads it from a YAML or
 * JSON file. Every object is strict: an unknown field is an error, because a typo such as `prots:` silently
 * widening or narrowing access is worse than a failed rollout. No transforms besides defaults, so the input
 * and output shapes are the same and the operator can type its output with {@link GatewayConfig}.
 */
import { createPublicKey } from 'node:crypto';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ConfigError, ErrorCode } from './errors.ts';

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Kubernetes DNS-1123 label: lowercase alphanumerics and '-', starts and ends alphanumeric, max 63. */
const dnsLabel = z
  .string()
  .max(63, 'must be at most 63 characters')
  .regex(DNS1123_LABEL, 'must be a DNS-1123 label (lowercase letters, digits and "-", alphanumeric at both ends)');

/** Kubernetes DNS-1123 subdomain (ServiceAccount names): labels joined by '.', max 253. */
const dnsSubdomainName = z
  .string()
  .max(253, 'must be at most 253 characters')
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/, 'must be a DNS-1123 subdomain');

/**
 * IANA service name as Kubernetes validates port names: 1..15 chars of lowercase alphanumerics and '-',
 * at least one letter, no '-' at either end, no '--'.
 */
const portName = z
  .string()
  .min(1)
  .max(15, 'must be at most 15 characters')
  .regex(DNS1123_LABEL, 'must be lowercase letters, digits and "-", alphanumeric at both ends')
  .refine((s) => /[a-z]/.test(s), 'must contain at least one letter')
  .refine((s) => !s.includes('--'), 'must not contain "--"');

const portNumber = z.int().min(1).max(65535);

const PEM_PUBLIC_KEY = /^-----BEGIN PUBLIC KEY-----\r?\n[A-Za-z0-9+/=\r\n]+-----END PUBLIC KEY-----\s*$/;

/** A PEM "PUBLIC KEY" (SPKI) block holding an Ed25519 key: checked here so a bad key fails at load, not per connection. */
const signingPublicKey = z.string().superRefine((text, ctx) => {
    const pem = text.trim();
    if (!PEM_PUBLIC_KEY.test(pem)) {
      ctx.addIssue({ code: 'custom', message: 'must be a PEM "PUBLIC KEY" block' });
      return;
    }
    try {
      if (createPublicKey({ key: pem, format: 'pem' }).asymmetricKeyType !== 'ed25519') {
        ctx.addIssue({ code: 'custom', message: 'must be an Ed25519 public key' });
      }
    } catch {
      ctx.addIssue({ code: 'custom', message: 'is not a parseable public key' });
    }
  });

const labels = z.record(z.string().min(1), z.string());

/** A port the agent can dial, as `host:port` from the agent's point of view. */
const exposedPortSchema = z
  .object({
    name: portName,
    port: portNumber,
    /** Host the agent dials; default '127.0.0.1' (the pod itself). */
    host: z.string().min(1).max(253).regex(/^\S+$/, 'must not contain whitespace').default('127.0.0.1'),
  })
  .strict();

const agentSchema = z
  .object({
    name: dnsLabel,
    namespace: dnsLabel.default('default'),
    labels: labels.default({}),
    /** Which data paths the agent offers: both (auto), only direct, only relay. */
    mode: z.enum(['auto', 'direct', 'relay']).default('auto'),
    expose: z.array(exposedPortSchema),
    /**
     * ServiceAccounts (in the agent's namespace) whose projected tokens, audience `narrowlink`, may
     * attach as this agent: how injected sidecars authenticate without any long-lived secret. The
     * gateway checks such tokens with a TokenReview. Empty: only Narrowlink agent tokens.
     */
    serviceAccounts: z.array(dnsSubdomainName).max(64).default([]),
  })
  .strict()
  .superRefine((agent, ctx) => {
    const names = new Set<string>();
    const ports = new Set<number>();
    agent.expose.forEach((e, i) => {
      if (names.has(e.name)) {
        ctx.addIssue({ code: 'custom', path: ['expose', i, 'name'], message: `duplicate port name "${e.name}"` });
      }
      if (ports.has(e.port)) {
        ctx.addIssue({ code: 'custom', path: ['expose', i, 'port'], message: `duplicate port ${e.port}` });
      }
      names.add(e.name);
      ports.add(e.port);
    });
  });

const subjectSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('User'), name: z.string().min(1) }).strict(),
  z.object({ kind: z.literal('Group'), name: z.string().min(1) }).strict(),
  z.object({ kind: z.literal('ServiceAccount'), name: z.string().min(1), namespace: dnsLabel }).strict(),
]);

const labelSelectorRequirement = z
  .object({
    key: z.string().min(1),
    operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']),
    values: z.array(z.string()).optional(),
  })
  .strict()
  .superRefine((req, ctx) => {
    // Same rule as Kubernetes: In/NotIn need values, Exists/DoesNotExist must have none.
    const hasValues = req.values !== undefined && req.values.length > 0;
    if ((req.operator === 'In' || req.operator === 'NotIn') && !hasValues) {
      ctx.addIssue({ code: 'custom', path: ['values'], message: `must be non-empty for operator ${req.operator}` });
    }
    if ((req.operator === 'Exists' || req.operator === 'DoesNotExist') && hasValues) {
      ctx.addIssue({ code: 'custom', path: ['values'], message: `must be empty for operator ${req.operator}` });
    }
  });

/** Kubernetes-style label selector; all terms are ANDed and an empty selector matches every agent. */
const labelSelectorSchema = z
  .object({
    matchLabels: labels.optional(),
    matchExpressions: z.array(labelSelectorRequirement).optional(),
  })
  .strict();

const PORT_RANGE = /^(\d{1,5})-(\d{1,5})$/;

/**
 * A port number, or an inclusive range 'lo-hi' with 1 <= lo <= hi <= 65535. One schema (not a union) so
 * errors say what is wrong with the value instead of zod's generic "Invalid input".
 */
const portSpec = z.union([z.number(), z.string()]).superRefine((v, ctx) => {
  if (typeof v === 'number') {
    if (!Number.isInteger(v) || v < 1 || v > 65535) {
      ctx.addIssue({ code: 'custom', message: `invalid port ${v} (need an integer 1..65535)` });
    }
    return;
  }
  const m = PORT_RANGE.exec(v);
  if (m === null) {
    ctx.addIssue({ code: 'custom', message: `invalid port "${v}" (need a number or a range "lo-hi")` });
    return;
  }
  const lo = Number(m[1]);
  const hi = Number(m[2]);
  if (lo < 1 || hi > 65535 || lo > hi) {
    ctx.addIssue({ code: 'custom', message: `invalid port range "${v}" (need 1 <= lo <= hi <= 65535)` });
  }
});

/** Exact host (case-insensitive), '*.suffix' (any subdomain of suffix, not suffix itself) or '*' (any). */
const hostPattern = z
  .string()
  .min(1)
  .max(253)
  .refine((h) => h === '*' || !h.slice(h.startsWith('*.') ? 2 : 0).includes('*'), {
    message: 'wildcard is only allowed as "*" or a leading "*."',
  })
  .refine((h) => h !== '*.' && /^\S+$/.test(h), { message: 'must be a host name, IP or glob' });

const ruleSchema = z
  .object({
    action: z.enum(['Allow', 'Deny']),
    /** Absent: every agent the policy can reach. */
    agents: z
      .object({
        /** Agent names in scope; '*' means all. */
        names: z.array(z.union([dnsLabel, z.literal('*')])).optional(),
        selector: labelSelectorSchema.optional(),
      })
      .strict()
      .refine((a) => a.names !== undefined || a.selector !== undefined, {
        message: 'must set names or selector (omit agents to match every agent)',
      })
      .optional(),
    /** Absent: every exposed port. */
    ports: z.array(portSpec).min(1).optional(),
    /** Absent: every host. */
    hosts: z.array(hostPattern).min(1).optional(),
    /** Absent: both paths. */
    paths: z.array(z.enum(['Direct', 'Relay'])).min(1).optional(),
  })
  .strict();

const policySchema = z
  .object({
    name: z.string().min(1).max(253),
    namespace: dnsLabel.default('default'),
    /** After this instant the policy is ignored. ISO-8601 with 'Z' or an offset. */
    expiresAt: z.iso.datetime({ offset: true }).optional(),
    subjects: z.array(subjectSchema).min(1),
    rules: z.array(ruleSchema).min(1),
  })
  .strict();

/** Longest token lifetime (`exp - iat`) the gateway accepts when `tokens.maxLifetimeSeconds` does not say, seconds. */
export const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS = {
  /**
   * 30 days: client tokens are bearer secrets on laptops and CI systems and, without `narrowlink login` yet, are
   * minted by hand; a month bounds what a leaked one is worth without sending users to re-mint every day.
   */
  client: 30 * 24 * 60 * 60,
  /**
   * 90 days: the operator mints agent tokens for exactly 90 days (and renews them at 80 %). Injected sidecars use
   * ServiceAccount tokens instead, which the kubelet rotates hourly and which this limit does not apply to.
   */
  agent: 90 * 24 * 60 * 60,
} as const;

/** Most entries in each of `tokens.deny.jti` and `tokens.deny.sub`. */
export const MAX_TOKEN_DENY_ENTRIES = 10_000;

/**
 * Token rules beyond the signature, all optional (absent: the defaults, nothing denied). In a cluster the operator
 * renders them from its `--gateway-token-rules` (the chart's `gateway.tokens`); standalone, write them into the
 * document.
 */
export const gatewayTokenRulesSchema = z
  .object({
    /** Longest `exp - iat` accepted per token type, seconds; default {@link DEFAULT_MAX_TOKEN_LIFETIME_SECONDS}. */
    maxLifetimeSeconds: z
      .object({
        client: z.int().min(60).max(10 * 365 * 24 * 60 * 60).optional(),
        agent: z.int().min(60).max(10 * 365 * 24 * 60 * 60).optional(),
      })
      .strict()
      .optional(),
    /**
     * Revoked tokens (`jti`) and subjects (`sub`, as the gateway reports it: a user name, or an agent's
     * `namespace/name`). Refused at authentication and `reauth`; a reload that adds an entry closes the live
     * sessions it matches (close 4401, NL_ERR_TOKEN_REVOKED).
     */
    deny: z
      .object({
        jti: z.array(z.string().min(1).max(256)).max(MAX_TOKEN_DENY_ENTRIES).optional(),
        sub: z.array(z.string().min(1).max(1024)).max(MAX_TOKEN_DENY_ENTRIES).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

/** Zod schema of the gateway configuration document. */
export const gatewayConfigSchema = z
  .object({
    apiVersion: z.literal('narrowlink.io/v1alpha1'),
    kind: z.literal('GatewayConfig'),
    /** Token audience the gateway accepts; default 'narrowlink'. */
    audience: z.string().min(1).default('narrowlink'),
    /** Accepted token signing keys (SPKI PEM, Ed25519); more than one during key rotation. */
    signingPublicKeys: z.array(signingPublicKey).min(1),
    /** When false (default) a policy only reaches agents in its own namespace. */
    allowCrossNamespacePolicies: z.boolean().default(false),
    agents: z.array(agentSchema).default([]),
    policies: z.array(policySchema).default([]),
    /** Token lifetime limits and the denylist (see `gatewayTokenRulesSchema`); absent: defaults, nothing denied. */
    tokens: gatewayTokenRulesSchema.optional(),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    const agents = new Set<string>();
    cfg.agents.forEach((a, i) => {
      const key = agentKey(a.namespace, a.name);
      if (agents.has(key)) ctx.addIssue({ code: 'custom', path: ['agents', i, 'name'], message: `duplicate agent ${key}` });
      agents.add(key);
    });
    const policies = new Set<string>();
    cfg.policies.forEach((p, i) => {
      const key = agentKey(p.namespace, p.name);
      if (policies.has(key)) {
        ctx.addIssue({ code: 'custom', path: ['policies', i, 'name'], message: `duplicate policy ${key}` });
      }
      policies.add(key);
    });
  });

/** A validated gateway configuration with defaults applied. */
export type GatewayConfig = z.infer<typeof gatewayConfigSchema>;
export type AgentConfig = GatewayConfig['agents'][number];
export type ExposedPort = AgentConfig['expose'][number];
export type PolicyConfig = GatewayConfig['policies'][number];
export type PolicyRule = PolicyConfig['rules'][number];
export type Subject = PolicyConfig['subjects'][number];
export type LabelSelector = z.infer<typeof labelSelectorSchema>;
/** The `tokens` section of a gateway configuration. */
export type GatewayTokenRules = z.infer<typeof gatewayTokenRulesSchema>;

/** `${namespace}/${name}`: the key for agents (and policies) across the gateway. */
export function agentKey(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}

/**
 * Validates an already-parsed document. Throws ConfigError(CONFIG_INVALID) whose message lists every issue
 * as `path.to.field: message`, one per line.
 */
export function validateGatewayConfig(value: unknown): GatewayConfig {
  const result = gatewayConfigSchema.safeParse(value);
  if (result.success) return result.data;
  const lines = result.error.issues.flatMap(formatIssue);
  throw new ConfigError(ErrorCode.CONFIG_INVALID, `invalid gateway config:\n${lines.join('\n')}`, {
    cause: result.error,
  });
}

/**
 * Parses the JSON text of a `tokens` section (the operator's `--gateway-token-rules`). CONFIG_PARSE on bad JSON,
 * CONFIG_INVALID on a section the gateway would refuse.
 */
export function parseGatewayTokenRules(text: string): GatewayTokenRules {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(ErrorCode.CONFIG_PARSE, `token rules are not JSON: ${(error as Error).message}`, { cause: error });
  }
  const result = gatewayTokenRulesSchema.safeParse(value);
  if (result.success) return result.data;
  throw new ConfigError(ErrorCode.CONFIG_INVALID, `invalid token rules:\n${result.error.issues.flatMap(formatIssue).join('\n')}`, { cause: result.error });
}

/** Parses YAML or JSON text (JSON is YAML) and validates it. CONFIG_PARSE on syntax errors. */
export function parseGatewayConfig(text: string): GatewayConfig {
  let value: unknown;
  try {
    // YAML 1.2 core schema (default): `no`/`on` stay strings; duplicate keys are errors.
    value = parseYaml(text, { prettyErrors: true, uniqueKeys: true });
  } catch (err) {
    const detail = err instanceof Error ? err.message : String(err);
    throw new ConfigError(ErrorCode.CONFIG_PARSE, `gateway config is not valid YAML/JSON: ${detail}`, { cause: err });
  }
  return validateGatewayConfig(value);
}

function formatPath(path: readonly PropertyKey[]): string {
  return path.length === 0 ? '(root)' : path.map(String).join('.');
}

function formatIssue(issue: z.core.$ZodIssue): string[] {
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((k) => `${formatPath([...issue.path, k])}: unknown field`);
  }
  return [`${formatPath(issue.path)}: ${issue.message}`];
}

/**
 * Inclusive range of a validated rule port entry: `8080` → {lo: 8080, hi: 8080}, `'8000-8100'` → {lo: 8000,
 * hi: 8100}. Only meaningful on values that passed {@link gatewayConfigSchema}.
 */
export function portSpecRange(spec: number | string): { lo: number; hi: number } {
  if (typeof spec === 'number') return { lo: spec, hi: spec };
  const m = PORT_RANGE.exec(spec);
  if (m === null) throw new RangeError(`invalid port spec "${spec}"`);
  return { lo: Number(m[1]), hi: Number(m[2]) };
}

/** Data key of the Secret the operator writes and the gateway reads: the YAML {@link GatewayConfig}. */
export const GATEWAY_CONFIG_SECRET_KEY = 'config.yaml';

/** Default name of that Secret (the operator's `--gateway-config-secret`, the gateway's `--config-secret`). */
export const DEFAULT_GATEWAY_CONFIG_SECRET_NAME = 'narrowlink-gateway-config';
