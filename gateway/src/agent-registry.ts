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
   * a bare name that is ambiguous resolves to nothing.
   */
  resolveVisible(policy: CompiledPolicy, ref: string): AgentConfig | undefined {
    const visible = policy.visibleAgents().map((v) => v.agent);
    if (ref.includes('/')) return visible.find((a) => agentKey(a.namespace, a.name) === ref);
    const byName = visible.filter((a) => a.name === ref);
    return byName.length === 1 ? byName[0] : undefined;
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

/** The agent `key` (`namespace/name`) of a configuration, if it is there. */
export function findAgent(config: GatewayConfig | undefined, key: string): AgentConfig | undefined {
  return config?.agents.find((a) => agentKey(a.namespace, a.name) === key);
}

/** Agent token subjects are `namespace/name`, or a bare name in the `default` namespace. */
export function normalizeAgentRef(sub: string): string {
  return sub.includes('/') ? sub : agentKey('default', sub);
}
