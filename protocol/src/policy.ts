/**
 * Policy evaluation, pure. The gateway compiles the policy once per client session (identity + config +
 * now) and evaluates it for every stream the client opens, so compile does the filtering (expiry, subjects)
 * and precomputes port ranges, name sets and host matchers; evaluate is a few loops over small arrays.
 *
 * Semantics:
 * - A policy applies to an identity when any subject matches: User by `sub`, Group by membership,
 *   ServiceAccount by `sub === system:serviceaccount:<namespace>:<name>`.
 * - A policy reaches only agents in its own namespace, unless `allowCrossNamespacePolicies`.
 * - A rule matches a stream when every present condition holds (agents, ports, hosts, paths); an absent
 *   condition matches everything.
 * - Any matching Deny wins over every Allow; nothing matching means deny.
 * - The target port must be exposed by the agent with that host, whatever the policies say.
 */
import { isIP } from 'node:net';
import {
  type AgentConfig,
  type ExposedPort,
  type GatewayConfig,
  type LabelSelector,
  type PolicyRule,
  portSpecRange,
  type Subject,
} from './gateway-config.ts';

/** Who is asking: the verified token's subject and groups. */
export interface Identity {
  sub: string;
  groups: string[];
}

/** What a stream wants to reach. `host`/`port` are as the agent dials them. */
export interface StreamTarget {
  agent: AgentConfig;
  host: string;
  port: number;
  path: 'Direct' | 'Relay';
}

/**
 * Outcome of {@link CompiledPolicy.evaluate}. `policy` is `<namespace>/<name>`, `rule` the 0-based index of
 * the rule within that policy.
 */
export type Decision =
  | { allowed: true; policy: string; rule: number }
  | {
      allowed: false;
      reason: 'NoMatchingRule' | 'DeniedByRule' | 'PortNotExposed';
      policy?: string;
      rule?: number;
    };

/** An agent as `narrowlink ls` shows it: only the ports this identity may reach. */
export interface VisibleAgent {
  agent: AgentConfig;
  ports: ExposedPort[];
}

type HostMatcher = (host: string) => boolean;

interface CompiledRule {
  readonly index: number;
  readonly deny: boolean;
  /** undefined: every agent in scope. */
  readonly agents: ((agent: AgentConfig) => boolean) | undefined;
  /** undefined: every port. Inclusive ranges. */
  readonly ports: ReadonlyArray<{ lo: number; hi: number }> | undefined;
  readonly hosts: readonly HostMatcher[] | undefined;
  readonly paths: ReadonlySet<string> | undefined;
}

interface CompiledPolicyEntry {
  /** `<namespace>/<name>` */
  readonly id: string;
  readonly namespace: string;
  readonly rules: readonly CompiledRule[];
}

const SA_PREFIX = 'system:serviceaccount:';

/** Bound of {@link CompiledPolicy}'s decision cache per agent (an agent exposes at most 256 ports, two paths each). */
const MAX_CACHED_TARGETS_PER_AGENT = 1024;

/** True when `subject` names this identity. */
export function subjectMatches(subject: Subject, identity: Identity): boolean {
  switch (subject.kind) {
    case 'User':
      return identity.sub === subject.name;
    case 'Group':
      return identity.groups.includes(subject.name);
    case 'ServiceAccount':
      return identity.sub === `${SA_PREFIX}${subject.namespace}:${subject.name}`;
  }
}

/**
 * Kubernetes label selector semantics: all terms ANDed; `NotIn` and `DoesNotExist` match when the label is
 * absent; an empty selector matches everything.
 */
export function labelSelectorMatches(selector: LabelSelector, labels: Readonly<Record<string, string>>): boolean {
  for (const [key, value] of Object.entries(selector.matchLabels ?? {})) {
    if (!Object.hasOwn(labels, key) || labels[key] !== value) return false;
  }
  for (const req of selector.matchExpressions ?? []) {
    const present = Object.hasOwn(labels, req.key);
    const value = present ? labels[req.key] : undefined;
    const values = req.values ?? [];
    switch (req.operator) {
      case 'In':
        if (value === undefined || !values.includes(value)) return false;
        break;
      case 'NotIn':
        if (value !== undefined && values.includes(value)) return false;
        break;
      case 'Exists':
        if (!present) return false;
        break;
      case 'DoesNotExist':
        if (present) return false;
        break;
    }
  }
  return true;
}

/** Lower-cases and drops one trailing dot, so `DB.Example.com.` and `db.example.com` compare equal. */
function normalizeHost(host: string): string {
  const lower = host.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

function compileHost(pattern: string): HostMatcher {
  if (pattern === '*') return () => true;
  if (pattern.startsWith('*.')) {
    // '*.example.com' matches any depth of subdomain, never 'example.com' itself, and never an IP literal
    // ('*.1' must not match 10.0.0.1).
    const suffix = `.${normalizeHost(pattern.slice(2))}`;
    return (host) => host.endsWith(suffix) && host.length > suffix.length && isIP(host) === 0;
  }
  const exact = normalizeHost(pattern);
  return (host) => host === exact;
}

function compileRule(rule: PolicyRule, index: number): CompiledRule {
  let agents: CompiledRule['agents'];
  if (rule.agents !== undefined) {
    const names = new Set(rule.agents.names ?? []);
    const selector = rule.agents.selector;
    agents = names.has('*')
      ? () => true
      : (agent) => names.has(agent.name) || (selector !== undefined && labelSelectorMatches(selector, agent.labels));
  }
  return {
    index,
    deny: rule.action === 'Deny',
    agents,
    ports: rule.ports?.map(portSpecRange),
    hosts: rule.hosts?.map(compileHost),
    paths: rule.paths === undefined ? undefined : new Set(rule.paths),
  };
}

function ruleMatches(rule: CompiledRule, target: StreamTarget, host: string): boolean {
  if (rule.agents !== undefined && !rule.agents(target.agent)) return false;
  if (rule.ports !== undefined && !rule.ports.some((r) => target.port >= r.lo && target.port <= r.hi)) return false;
  if (rule.hosts !== undefined && !rule.hosts.some((m) => m(host))) return false;
  if (rule.paths !== undefined && !rule.paths.has(target.path)) return false;
  return true;
}

/**
 * A configuration's policies reduced to those that apply to one identity at one instant. Immutable; build it
 * with {@link compilePolicy} and rebuild when the config changes or at {@link CompiledPolicy.nextExpiryMs}.
 */
export class CompiledPolicy {
  /**
   * Earliest `expiresAt` (ms since epoch) among the kept policies, or undefined when none expires. At that
   * instant the gateway must recompile (and re-check open streams).
   */
  readonly nextExpiryMs: number | undefined;
  /** `<namespace>/<name>` of every policy that applies to the identity, in config order (for audit logs). */
  readonly policyIds: readonly string[];
  readonly #agents: readonly AgentConfig[];
  readonly #policies: readonly CompiledPolicyEntry[];
  readonly #crossNamespace: boolean;
  /**
   * {@link canSee} answers per agent object. Bounded by the agents of one configuration (a reload recompiles,
   * dropping this cache with the policy); weak so an agent object of an older configuration is not kept.
   */
  readonly #canSee = new WeakMap<AgentConfig, boolean>();
  /**
   * {@link evaluate} answers per agent object and `path port host`: a client opening the same target again (every
   * connection of a forward) costs a map lookup, not a walk over every rule of every policy it is in. At most
   * {@link MAX_CACHED_TARGETS_PER_AGENT} targets per agent are kept.
   */
  readonly #decisions = new WeakMap<AgentConfig, Map<string, Decision>>();

  /** Prefer {@link compilePolicy}. */
  constructor(config: GatewayConfig, identity: Identity, nowMs: number) {
    const kept: CompiledPolicyEntry[] = [];
    let nextExpiryMs: number | undefined;
    for (const policy of config.policies) {
      const expiresMs = policy.expiresAt === undefined ? undefined : Date.parse(policy.expiresAt);
      // Expired at the instant itself; NaN cannot occur on a validated config but must never mean "forever".
      if (expiresMs !== undefined && !(expiresMs > nowMs)) continue;
      if (!policy.subjects.some((s) => subjectMatches(s, identity))) continue;
      kept.push({
        id: `${policy.namespace}/${policy.name}`,
        namespace: policy.namespace,
        rules: policy.rules.map(compileRule),
      });
      if (expiresMs !== undefined && (nextExpiryMs === undefined || expiresMs < nextExpiryMs)) nextExpiryMs = expiresMs;
    }
    this.nextExpiryMs = nextExpiryMs;
    this.policyIds = kept.map((p) => p.id);
    this.#policies = kept;
    this.#agents = config.agents;
    this.#crossNamespace = config.allowCrossNamespacePolicies;
  }

  /** Decides one stream. Deny wins; otherwise the first matching Allow (in config order) is reported. */
  evaluate(target: StreamTarget): Decision {
    const host = normalizeHost(target.host);
    const key = `${target.path} ${target.port} ${host}`;
    let decisions = this.#decisions.get(target.agent);
    const known = decisions?.get(key);
    if (known !== undefined) return known;
    const decision = Object.freeze(this.#decide(target, host));
    if (!decisions) {
      decisions = new Map();
      this.#decisions.set(target.agent, decisions);
    }
    if (decisions.size < MAX_CACHED_TARGETS_PER_AGENT) decisions.set(key, decision);
    return decision;
  }

  #decide(target: StreamTarget, host: string): Decision {
    const exposed = target.agent.expose.some((e) => e.port === target.port && normalizeHost(e.host) === host);
    if (!exposed) return { allowed: false, reason: 'PortNotExposed' };

    let firstAllow: { policy: string; rule: number } | undefined;
    for (const policy of this.#policies) {
      if (!this.#crossNamespace && policy.namespace !== target.agent.namespace) continue;
      for (const rule of policy.rules) {
        if (!ruleMatches(rule, target, host)) continue;
        if (rule.deny) return { allowed: false, reason: 'DeniedByRule', policy: policy.id, rule: rule.index };
        firstAllow ??= { policy: policy.id, rule: rule.index };
      }
    }
    if (firstAllow !== undefined) return { allowed: true, ...firstAllow };
    return { allowed: false, reason: 'NoMatchingRule' };
  }

  /**
   * Agents of the config with at least one exposed port this identity may reach on some path (Relay or
   * Direct), each with only those ports. Config order. For `narrowlink ls`. Costs every port of every agent
   * against every kept rule: to decide one agent use {@link canSee}.
   */
  visibleAgents(): VisibleAgent[] {
    const out: VisibleAgent[] = [];
    if (this.#policies.length === 0) return out;
    for (const agent of this.#agents) {
      const ports = agent.expose.filter((e) => this.#portVisible(agent, e));
      if (ports.length > 0) out.push({ agent, ports });
    }
    return out;
  }

  /**
   * Whether {@link visibleAgents} would list `agent`: at least one of its exposed ports is reachable on some
   * path. Evaluates only this agent's ports (stopping at the first reachable one) and remembers the answer for
   * this compiled policy, so a client's OPENs cost the same whatever the size of the configuration.
   */
  canSee(agent: AgentConfig): boolean {
    const known = this.#canSee.get(agent);
    if (known !== undefined) return known;
    const visible = this.#policies.length > 0 && agent.expose.some((e) => this.#portVisible(agent, e));
    this.#canSee.set(agent, visible);
    return visible;
  }

  /**
   * Bypasses the decision cache: `visibleAgents()` (every `narrowlink ls`) walks every port of every agent, and
   * caching all of that would cost each client session memory in proportion to the whole configuration.
   */
  #portVisible(agent: AgentConfig, e: ExposedPort): boolean {
    const host = normalizeHost(e.host);
    return (
      this.#decide({ agent, host: e.host, port: e.port, path: 'Relay' }, host).allowed ||
      this.#decide({ agent, host: e.host, port: e.port, path: 'Direct' }, host).allowed
    );
  }
}

/** Keeps the policies of `config` that apply to `identity` and have not expired at `nowMs`. */
export function compilePolicy(config: GatewayConfig, identity: Identity, nowMs: number): CompiledPolicy {
  return new CompiledPolicy(config, identity, nowMs);
}
