/**
 * The gateway's half of the direct (peer-to-peer) path: a broker, never a relay. A client asks with
 * `direct_request`; the broker checks policy first (path `Direct`), picks an agent instance that speaks
 * protocol ≥ 1.2 and has been probed, plans the punch from both NAT classifications (`planPunch`) and hands
 * each side its half of the plan. The agent gets the targets it may serve on that path (`direct_policy`)
 * before anything else, and a new one whenever the client's policy changes. Paths end on a `direct_state`
 * failed/closed from either side, on either session closing, or on a policy change that leaves nothing
 * allowed; the other side then hears `direct_close`.
 *
 * The broker never sees traffic or a private key: it forwards certificate fingerprints and a per-attempt punch
 * key (which it never logs).
 */
import { randomBytes as cryptoRandomBytes } from 'node:crypto';
import {
  type AgentConfig,
  agentKey,
  type CompiledPolicy,
  type ControlMessage,
  DIRECT_PATH_MINOR,
  type DirectAllow,
  type DirectPolicy,
  type DirectRefusalReason,
  type DirectRequest,
  type DirectState,
  type NatType,
  type PunchSidePlan,
  type PunchStrategy,
  peerSupportsMinor,
  planPunch,
  punchPlanMessage,
  type RandomBytes,
} from '@narrowlink/protocol';
import type { Logger } from 'pino';
import type { GatewayMetrics } from './metrics.ts';
import type { PeerNat } from './nat-registry.ts';

/** Unresolved attempts (planned, no `direct_state` up/failed yet) one client session may have at once. */
export const MAX_DIRECT_ATTEMPTS_PER_CLIENT = 8;
/** Paths (attempts and paths up) one client session may hold at once: bounds the broker's memory per session. */
export const MAX_DIRECT_PATHS_PER_CLIENT = 64;
/**
 * How long past a plan's punch deadline an attempt may stay unresolved: covers the QUIC handshake (peer-link's
 * dial timeout is well below this) and the `direct_state` report. Past it the attempt counts as failed, so a
 * peer that never reports neither blocks new attempts nor keeps a record alive.
 */
export const DIRECT_RESOLVE_GRACE_MS = 20_000;
/** The direct_policy allow list holds at most this many targets (the message's limit). */
const MAX_ALLOW = 256;

/**
 * A session as the broker sees it: the few things it reads and the one thing it does (send a control message).
 * The gateway's `PeerSession` implements it; tests use plain objects. Sessions are compared by identity.
 */
export interface BrokerPeer {
  readonly id: string;
  readonly kind: 'agent' | 'client';
  /** Only `open` sessions are planned for and sent to. */
  readonly state: 'handshaking' | 'open' | 'closing' | 'closed';
  /** The authenticated subject (the client's name in the agent's plan). */
  readonly sub: string;
  readonly log: Pick<Logger, 'info' | 'debug' | 'warn'>;
  /** Relayed streams open on the session (instance choice breaks ties on it). */
  readonly streamCount: number;
  sendControl(message: ControlMessage): void;
}

/** A client session as the broker sees it; `policy` is replaced on every recompile (the broker reads the latest). */
export interface BrokerClient {
  readonly session: BrokerPeer;
  readonly policy: CompiledPolicy;
}

/** An attached agent instance; `agent` follows configuration reloads. */
export interface BrokerInstance {
  readonly session: BrokerPeer;
  readonly instanceId: string;
  readonly agent: AgentConfig;
  /** Protocol version from the instance's hello. */
  readonly version: string;
}

/** What the broker needs from the gateway (the agent registry answers `resolveAgent`, `instancesOf`, `findAgent`). */
export interface DirectBrokerHost {
  /** Whether the gateway runs NAT probe ports (without them nobody is classified). */
  readonly probing: boolean;
  /** Resolves `name` or `namespace/name` among the agents this policy lets the client see (as for OPEN). */
  resolveAgent(policy: CompiledPolicy, ref: string): AgentConfig | undefined;
  /** The attached instances of an agent. */
  instancesOf(key: string): Iterable<BrokerInstance>;
  /** The agent of the current configuration, if it is still there. */
  findAgent(key: string): AgentConfig | undefined;
  natOf(sessionId: string): PeerNat | undefined;
  /** The number of paths up per agent changed (it feeds agent status). */
  onPathsChanged(): void;
}

/** Dependencies of a {@link DirectPathBroker}. */
export interface DirectBrokerOptions {
  host: DirectBrokerHost;
  metrics: GatewayMetrics;
  /** Wall clock, ms since epoch (plans, policy expiry, stale attempts). */
  now: () => number;
  /** Random source for path ids and plans; default crypto.randomBytes. */
  random?: RandomBytes;
}

/** A brokered path: planned and punching, or reported up by a side. */
export type BrokeredPathState = 'punching' | 'up';

interface BrokeredPath {
  readonly pathId: string;
  readonly client: BrokerClient;
  readonly instance: BrokerInstance;
  readonly agentKey: string;
  state: BrokeredPathState;
  readonly createdAt: number;
  /** Wall clock after which a path still punching counts as failed. */
  readonly resolveBy: number;
  /** The allow list and expiry last sent to the agent (a new direct_policy goes out only when they change). */
  allow: DirectAllow[];
  expiresAt: number | undefined;
  /** The client's time-to-ready was observed (once per path). */
  readyObserved: boolean;
  /** Both sides' NAT types when planned: labels of `direct_paths_total` (success by NAT type). */
  readonly nat: { readonly client_nat: NatType; readonly agent_nat: NatType };
}

/** Public view of a path (tests, diagnostics). */
export interface BrokeredPathInfo {
  pathId: string;
  clientSession: string;
  agentSession: string;
  agent: string;
  state: BrokeredPathState;
  createdAt: number;
}

class Refusal {
  readonly reason: DirectRefusalReason;
  readonly message: string;
  constructor(reason: DirectRefusalReason, message: string) {
    this.reason = reason;
    this.message = message;
  }
}

/** The direct-path broker of one gateway: plans, per-path policies, closes (see the file header). */
export class DirectPathBroker {
  readonly #host: DirectBrokerHost;
  readonly #metrics: GatewayMetrics;
  readonly #now: () => number;
  readonly #random: RandomBytes;
  readonly #paths = new Map<string, BrokeredPath>();
  /** Paths by member session (client or agent instance), for session close and per-client limits. */
  readonly #bySession = new Map<BrokerPeer, Set<BrokeredPath>>();

  constructor(options: DirectBrokerOptions) {
    this.#host = options.host;
    this.#metrics = options.metrics;
    this.#now = options.now;
    this.#random = options.random ?? ((n) => cryptoRandomBytes(n));
  }

  get size(): number {
    return this.#paths.size;
  }

  paths(): BrokeredPathInfo[] {
    return [...this.#paths.values()].map((p) => ({
      pathId: p.pathId,
      clientSession: p.client.session.id,
      agentSession: p.instance.session.id,
      agent: p.agentKey,
      state: p.state,
      createdAt: p.createdAt,
    }));
  }

  /** Paths up per agent (`namespace/name`). */
  upByAgent(): Map<string, number> {
    const out = new Map<string, number>();
    for (const path of this.#paths.values()) if (path.state === 'up') out.set(path.agentKey, (out.get(path.agentKey) ?? 0) + 1);
    return out;
  }

  /**
   * Answers a client's `direct_request`: `direct_refused` (the session stays up) or the plans. On success the
   * agent instance gets `direct_policy` then `punch_plan`, and only then the client gets its `punch_plan`, so
   * the agent knows what to allow before the client can reach it.
   */
  request(client: BrokerClient, message: DirectRequest): void {
    const session = client.session;
    let planned: { path: BrokeredPath; strategy: PunchStrategy; sameLan: boolean; client: PunchSidePlan; agent: PunchSidePlan };
    try {
      planned = this.#plan(client, message);
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      this.#metrics.directRequests.inc({ result: error.reason });
      session.log.info({ agent: message.agent, reason: error.reason }, 'direct path refused');
      session.sendControl({ type: 'direct_refused', requestId: message.requestId, reason: error.reason, message: error.message });
      return;
    }
    const { path } = planned;
    this.#add(path);
    this.#metrics.directRequests.inc({ result: 'planned' });
    const agentSession = path.instance.session;
    agentSession.sendControl(policyMessage(path));
    agentSession.sendControl(punchPlanMessage(planned.agent, planned.strategy, path.pathId, session.sub));
    session.sendControl(punchPlanMessage(planned.client, planned.strategy, path.pathId, path.agentKey, message.requestId));
    // Never the punch key: it authenticates punch packets until the path is up.
    const fields = {
      pathId: path.pathId,
      agent: path.agentKey,
      instance: path.instance.instanceId,
      strategy: planned.strategy,
      sameLan: planned.sameLan,
      allow: path.allow.length,
    };
    session.log.info(fields, 'direct path planned');
    agentSession.log.info({ ...fields, client: session.sub }, 'direct path planned');
  }

  #plan(client: BrokerClient, message: DirectRequest) {
    const host = this.#host;
    if (!host.probing) throw new Refusal('ProbingDisabled', 'this gateway runs no NAT probe ports, so it cannot plan direct paths; streams use the relay');
    const agent = host.resolveAgent(client.policy, message.agent);
    if (!agent) throw new Refusal('NoAgent', `no agent "${message.agent}" that you may reach`);
    if (agent.mode === 'relay') throw new Refusal('AgentRelayOnly', `agent "${agent.name}" offers the relay only (mode relay)`);
    // Policy before anything else: a client learns nothing about instances or NATs of an agent it may not use directly.
    const allow = directAllowList(client.policy, agent);
    if (allow.length === 0) throw new Refusal('Denied', `policy allows no port of agent "${agent.name}" over a direct path`);
    const key = agentKey(agent.namespace, agent.name);
    const open = [...host.instancesOf(key)].filter((i) => i.session.state === 'open');
    if (open.length === 0) throw new Refusal('NoAgent', `agent "${agent.name}" has no connected instance`);
    const capable = open.filter((i) => peerSupportsMinor(i.version, DIRECT_PATH_MINOR));
    if (capable.length === 0) {
      throw new Refusal('AgentTooOld', `no instance of agent "${agent.name}" speaks protocol 1.${DIRECT_PATH_MINOR} (direct paths); upgrade its sidecar`);
    }
    const clientNat = host.natOf(client.session.id);
    if (!clientNat?.certFingerprint) {
      throw new Refusal('NotProbed', 'your NAT has not been probed yet (or you reported no certificate fingerprint); retry shortly');
    }
    // Among capable instances, only probed ones can be planned for; one still probing must not block the others.
    const ready = capable.flatMap((instance) => {
      const nat = host.natOf(instance.session.id);
      return nat?.certFingerprint ? [{ instance, nat: nat as PeerNat & { certFingerprint: string } }] : [];
    });
    if (ready.length === 0) throw new Refusal('NotProbed', `agent "${agent.name}" has not finished NAT probing yet; retry shortly`);
    const now = this.#now();
    this.#expireStale(now);
    const mine = this.#bySession.get(client.session) ?? new Set<BrokeredPath>();
    const unresolved = [...mine].filter((p) => p.state === 'punching').length;
    if (unresolved >= MAX_DIRECT_ATTEMPTS_PER_CLIENT || mine.size >= MAX_DIRECT_PATHS_PER_CLIENT) {
      throw new Refusal(
        'TooManyAttempts',
        unresolved >= MAX_DIRECT_ATTEMPTS_PER_CLIENT
          ? `${unresolved} direct-path attempts are still unresolved (at most ${MAX_DIRECT_ATTEMPTS_PER_CLIENT}); report direct_state for them first`
          : `this session holds ${mine.size} direct paths (at most ${MAX_DIRECT_PATHS_PER_CLIENT})`,
      );
    }
    const chosen = this.#leastLoaded(ready);
    let plan: ReturnType<typeof planPunch>;
    try {
      plan = planPunch({
        client: { nat: clientNat.classification, localEndpoints: clientNat.localEndpoints, certFingerprint: clientNat.certFingerprint },
        agent: { nat: chosen.nat.classification, localEndpoints: chosen.nat.localEndpoints, certFingerprint: chosen.nat.certFingerprint },
        nowMs: now,
        random: this.#random,
      });
    } catch (error) {
      // Only malformed input throws; what peers report was validated already, so this is not expected.
      client.session.log.warn({ err: (error as Error).message }, 'punch planning failed on peer NAT data');
      throw new Refusal('NotProbed', 'the NAT data of a peer cannot be used for planning; it is probed again on its next session');
    }
    if (!plan.viable) throw new Refusal(plan.reason, plan.message);
    const path: BrokeredPath = {
      pathId: Buffer.from(this.#random(16)).toString('base64url'),
      client,
      instance: chosen.instance,
      agentKey: key,
      state: 'punching',
      createdAt: now,
      resolveBy: plan.deadlineAtMs + DIRECT_RESOLVE_GRACE_MS,
      allow,
      expiresAt: client.policy.nextExpiryMs,
      readyObserved: false,
      nat: { client_nat: clientNat.classification.type, agent_nat: chosen.nat.classification.type },
    };
    return { path, strategy: plan.strategy, sameLan: plan.sameLan, client: plan.client, agent: plan.agent };
  }

  /** Least loaded: fewest direct paths served, then fewest relayed streams. */
  #leastLoaded<T extends { instance: BrokerInstance }>(candidates: T[]): T {
    const load = (c: T) => [this.#bySession.get(c.instance.session)?.size ?? 0, c.instance.session.streamCount] as const;
    let best = candidates[0] as T;
    for (const candidate of candidates.slice(1)) {
      const [paths, streams] = load(candidate);
      const [bestPaths, bestStreams] = load(best);
      if (paths < bestPaths || (paths === bestPaths && streams < bestStreams)) best = candidate;
    }
    return best;
  }

  /**
   * A `direct_state` from a peer. Only members of the path count; anything else is ignored (paths vanish
   * legitimately: a report may cross the other side's close).
   */
  state(session: BrokerPeer, message: DirectState): void {
    const path = this.#paths.get(message.pathId);
    if (!path || (path.client.session !== session && path.instance.session !== session)) {
      session.log.debug({ pathId: message.pathId, state: message.state }, 'direct_state for no path of this session; ignored');
      return;
    }
    const from = session === path.client.session ? 'client' : 'agent';
    if (message.state === 'up') {
      if (path.state === 'punching') {
        path.state = 'up';
        this.#metrics.directPaths.inc({ result: 'up', ...path.nat });
        this.#metrics.directPathsUp.inc();
        session.log.info({ pathId: path.pathId, agent: path.agentKey, via: message.via, elapsedMs: message.elapsedMs, from }, 'direct path up');
        this.#host.onPathsChanged();
      }
      if (from === 'client' && message.elapsedMs !== undefined && !path.readyObserved) {
        path.readyObserved = true;
        this.#metrics.directReadySeconds.observe(message.elapsedMs / 1000);
      }
      return;
    }
    session.log.info({ pathId: path.pathId, agent: path.agentKey, state: message.state, reason: message.reason, from }, 'direct path ended by a peer');
    const detail = message.reason ? ` (${message.reason})` : '';
    const other = from === 'client' ? path.instance.session : path.client.session;
    this.#remove(path, `the ${from} reported the path ${message.state}${detail}`, [other]);
  }

  /** A session ended: the other side of each of its paths hears `direct_close`. */
  sessionClosed(session: BrokerPeer): void {
    const mine = this.#bySession.get(session);
    if (!mine) return;
    for (const path of [...mine]) {
      const other = path.client.session === session ? path.instance.session : path.client.session;
      this.#remove(path, `the ${session.kind} session ended`, [other]);
    }
  }

  /**
   * The client's policy was recompiled (reload, expiry, reauth): each of its paths gets the new allow list, or
   * is closed on both sides when nothing is allowed any more, the agent left the configuration or went relay-only.
   */
  policyChanged(client: BrokerClient): void {
    const mine = this.#bySession.get(client.session);
    if (!mine) return;
    for (const path of [...mine]) {
      if (path.client !== client) continue;
      const agent = this.#host.findAgent(path.agentKey);
      let closeReason: string | undefined;
      let allow: DirectAllow[] = [];
      if (!agent) closeReason = 'agent removed from configuration';
      else if (agent.mode === 'relay') closeReason = 'the agent offers the relay only now (mode relay)';
      else {
        allow = directAllowList(client.policy, agent);
        if (allow.length === 0) closeReason = 'access revoked by a policy change';
      }
      if (closeReason) {
        client.session.log.info({ pathId: path.pathId, agent: path.agentKey, reason: closeReason }, 'direct path closed by the gateway');
        this.#remove(path, closeReason, [path.client.session, path.instance.session]);
        continue;
      }
      const expiresAt = client.policy.nextExpiryMs;
      if (sameAllow(allow, path.allow) && expiresAt === path.expiresAt) continue;
      path.allow = allow;
      path.expiresAt = expiresAt;
      client.session.log.info({ pathId: path.pathId, agent: path.agentKey, allow: allow.length }, 'direct path policy updated');
      send(path.instance.session, policyMessage(path));
    }
  }

  /** Attempts that stayed unresolved past their deadline count as failed and are closed on both sides. */
  sweep(): void {
    this.#expireStale(this.#now());
  }

  #expireStale(now: number): void {
    for (const path of this.#paths.values()) {
      if (path.state !== 'punching' || now < path.resolveBy) continue;
      path.client.session.log.info({ pathId: path.pathId, agent: path.agentKey }, 'direct path attempt unresolved past its deadline; dropped');
      this.#remove(path, 'the punch attempt was not reported up in time', [path.client.session, path.instance.session]);
    }
  }

  #add(path: BrokeredPath): void {
    this.#paths.set(path.pathId, path);
    for (const session of [path.client.session, path.instance.session]) {
      const set = this.#bySession.get(session) ?? new Set<BrokeredPath>();
      this.#bySession.set(session, set);
      set.add(path);
    }
  }

  /** Forgets a path, settles its metrics and tells `notify` (those still open) to close it. */
  #remove(path: BrokeredPath, reason: string, notify: BrokerPeer[]): void {
    if (!this.#paths.delete(path.pathId)) return;
    for (const session of [path.client.session, path.instance.session]) {
      const set = this.#bySession.get(session);
      set?.delete(path);
      if (set?.size === 0) this.#bySession.delete(session);
    }
    // Every planned path resolves exactly once: up, or failed when it ends before coming up.
    if (path.state === 'up') {
      this.#metrics.directPathsUp.dec();
      this.#host.onPathsChanged();
    } else {
      this.#metrics.directPaths.inc({ result: 'failed', ...path.nat });
    }
    for (const session of notify) send(session, { type: 'direct_close', pathId: path.pathId, reason });
  }
}

/** The targets a policy lets a client reach on an agent over a direct path: each exposed port allowed for `Direct`. */
export function directAllowList(policy: CompiledPolicy, agent: AgentConfig): DirectAllow[] {
  return agent.expose
    .filter((e) => policy.evaluate({ agent, host: e.host, port: e.port, path: 'Direct' }).allowed)
    .slice(0, MAX_ALLOW)
    .map((e) => ({ name: e.name, host: e.host, port: e.port }));
}

function policyMessage(path: BrokeredPath): DirectPolicy {
  return { type: 'direct_policy', pathId: path.pathId, allow: path.allow, ...(path.expiresAt !== undefined ? { expiresAt: path.expiresAt } : {}) };
}

function sameAllow(a: readonly DirectAllow[], b: readonly DirectAllow[]): boolean {
  return a.length === b.length && a.every((x, i) => x.name === b[i]?.name && x.host === b[i]?.host && x.port === b[i]?.port);
}

/** Sends to a session that is still open (a closing one would drop it anyway). */
function send(session: BrokerPeer, message: ControlMessage): void {
  if (session.state === 'open') session.sendControl(message);
}
