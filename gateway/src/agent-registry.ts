/**
 * The attached agent instances of one gateway, by agent (`namespace/name`): who is attached, which instance a
 * new stream goes to (least loaded), which agents a client's policy lets it see, and the per-agent summary the
 * status reporter publishes. It answers the `resolveAgent` / `instancesOf` / `findAgent` half of the direct-path
 * broker's host. Sessions are generic so tests can attach plain objects.
 */
import { type AgentConfig, type AgentSummary, agentKey, type CompiledPolicy, type GatewayConfig, type GatewayStatusReport } from '@narrowlink/protocol';
import type { BrokerPeer } from './direct-broker.ts';

/** What the registry reads from a session. */
export type RegistryPeer = Pick<BrokerPeer, 'id' | 'state' | 'streamCount'>;

/** One attached agent instance: the agent-side role of a session. */
export interface AgentAttachment<S extends RegistryPeer = RegistryPeer> {
  readonly kind: 'agent';
  readonly session: S;
  readonly instanceId: string;
  /** `namespace/name` of the agent. */
  readonly key: string;
  /** The agent's configuration; replaced on reloads. */
  agent: AgentConfig;
  /** Protocol version from the instance's hello (direct paths need 1.2). */
  readonly version: string;
}

/** Dependencies of an {@link AgentRegistry}. */
export interface AgentRegistryOptions {
  /** The configuration in force (undefined before the first one). */
  config: () => GatewayConfig | undefined;
}

/** The attached agent instances by agent key (`namespace/name`); see the file header. */
export class AgentRegistry<S extends RegistryPeer = RegistryPeer> {
  readonly #config: () => GatewayConfig | undefined;
  /** agentKey → attached instances */
  readonly #agents = new Map<string, Set<AgentAttachment<S>>>();

  constructor(options: AgentRegistryOptions) {
    this.#config = options.config;
  }

  /** The agent of the current configuration, if it is there. */
  findAgent(key: string): AgentConfig | undefined {
    return findAgent(this.#config(), key);
  }

  /**
   * Attaches an instance of agent `key` (from the session's identity). Returns undefined, attaching nothing,
   * when the agent is not in the configuration.
   */
  attach(session: S, key: string, instanceId: string, version: string): AgentAttachment<S> | undefined {
    const agent = this.findAgent(key);
    if (!agent) return undefined;
    const attachment: AgentAttachment<S> = { kind: 'agent', session, instanceId, key, agent, version };
    const instances = this.#agents.get(key) ?? new Set<AgentAttachment<S>>();
    this.#agents.set(key, instances);
    instances.add(attachment);
    return attachment;
  }

  /** The instance's session ended. */
  detach(attachment: AgentAttachment<S>): void {
    const instances = this.#agents.get(attachment.key);
    if (!instances) return;
    instances.delete(attachment);
    if (instances.size === 0) this.#agents.delete(attachment.key);
  }

  /**
   * After a configuration reload: every instance picks up its agent's new settings. Returns the instances
   * whose agent left the configuration (they are left attached: the caller closes their sessions).
   */
  reconfigure(): AgentAttachment<S>[] {
    const removed: AgentAttachment<S>[] = [];
    for (const [key, instances] of this.#agents) {
      const updated = this.findAgent(key);
      for (const instance of instances) {
        if (!updated) removed.push(instance);
        else instance.agent = updated;
      }
    }
    return removed;
  }

  /** The attached instances of an agent. */
  instancesOf(key: string): Iterable<AgentAttachment<S>> {
    return this.#agents.get(key) ?? [];
  }

  /** The open instance with the fewest streams (the first one on a tie), for a relayed stream. */
  leastLoaded(key: string): AgentAttachment<S> | undefined {
    let best: AgentAttachment<S> | undefined;
    for (const instance of this.#agents.get(key) ?? []) {
      if (instance.session.state !== 'open') continue;
      if (!best || instance.session.streamCount < best.session.streamCount) best = instance;
    }
    return best;
  }

  /**
   * Resolves an agent reference (`name` or `namespace/name`) among the agents the policy lets the client see;
   * a bare name that is ambiguous among those resolves to nothing, and an agent the client may not see is
   * absent (names do not leak). Looks the name up in the configuration's index and evaluates only the agents
   * of that name ({@link CompiledPolicy.canSee}, cached per compiled policy): the cost of an OPEN does not grow
   * with the number of agents or policies.
   */
  resolveVisible(policy: CompiledPolicy, ref: string): AgentConfig | undefined {
    const index = agentIndex(this.#config());
    if (!index) return undefined;
    if (ref.includes('/')) {
      const agent = index.byKey.get(ref);
      return agent && policy.canSee(agent) ? agent : undefined;
    }
    let found: AgentConfig | undefined;
    for (const agent of index.byName.get(ref) ?? []) {
      if (!policy.canSee(agent)) continue;
      if (found) return undefined;
      found = agent;
    }
    return found;
  }

  /** The `agents` answer to a client's `list_agents`: what its policy lets it see, with attached instances. */
  summaries(policy: CompiledPolicy): AgentSummary[] {
    return policy.visibleAgents().map(({ agent, ports }) => ({
      name: agent.name,
      namespace: agent.namespace,
      mode: agent.mode,
      instances: this.#agents.get(agentKey(agent.namespace, agent.name))?.size ?? 0,
      ports: ports.map((p) => ({ name: p.name, port: p.port, host: p.host })),
    }));
  }

  /**
   * Attached instances per agent for the control plane's agent status, with the NAT type of the instance
   * classified last (absent until one was) and the direct paths up (absent when none).
   */
  snapshot(natTypeOf: (sessionIds: Iterable<string>) => string | undefined, directPathsUp: ReadonlyMap<string, number>): GatewayStatusReport {
    const out: GatewayStatusReport = {};
    for (const [key, instances] of this.#agents) {
      const nat = natTypeOf(sessionIds(instances));
      const paths = directPathsUp.get(key);
      out[key] = { instances: instances.size, ...(nat !== undefined ? { nat } : {}), ...(paths ? { directPaths: paths } : {}) };
    }
    return out;
  }
}

function* sessionIds(instances: Iterable<AgentAttachment<RegistryPeer>>): Generator<string> {
  for (const instance of instances) yield instance.session.id;
}

/** A configuration's agents by key and by bare name, built once per configuration object. */
interface AgentIndex {
  /** `namespace/name` → the first agent with that key (config order, as a linear search would find it). */
  readonly byKey: ReadonlyMap<string, AgentConfig>;
  /** bare name → every agent with that name, in config order. */
  readonly byName: ReadonlyMap<string, readonly AgentConfig[]>;
}

/** Configurations are immutable once installed, so the index is keyed by the object (a reload is a new one). */
const indexes = new WeakMap<GatewayConfig, AgentIndex>();

function agentIndex(config: GatewayConfig | undefined): AgentIndex | undefined {
  if (!config) return undefined;
  let index = indexes.get(config);
  if (index) return index;
  const byKey = new Map<string, AgentConfig>();
  const byName = new Map<string, AgentConfig[]>();
  for (const agent of config.agents) {
    const key = agentKey(agent.namespace, agent.name);
    if (!byKey.has(key)) byKey.set(key, agent);
    const named = byName.get(agent.name);
    if (named) named.push(agent);
    else byName.set(agent.name, [agent]);
  }
  index = { byKey, byName };
  indexes.set(config, index);
  return index;
}

/** The agent `key` (`namespace/name`) of a configuration, if it is there (an index lookup). */
export function findAgent(config: GatewayConfig | undefined, key: string): AgentConfig | undefined {
  return agentIndex(config)?.byKey.get(key);
}

/** Agent token subjects are `namespace/name`, or a bare name in the `default` namespace. */
export function normalizeAgentRef(sub: string): string {
  return sub.includes('/') ? sub : agentKey('default', sub);
}
