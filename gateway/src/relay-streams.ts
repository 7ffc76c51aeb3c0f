/**
 * The relayed streams of client sessions, from an OPEN the gateway allowed until both legs closed: the agent leg
 * and its open timer, the agent's stream shares (one client may not lock the others out of an agent), the splice,
 * the re-check when a client's policy changes (pending opens included, so a revocation landing before the agent's
 * OPEN_OK still ends them) and the idle limit. Whether an OPEN may go through at all is `relay-open.ts`'s pure
 * decision, and which instance serves it the agent registry's; the gateway wires the three together.
 */
import { type AgentConfig, agentKey, type CompiledPolicy, type ExposedPort, type MuxStream, StreamErrorCode } from '@narrowlink/protocol';
import type { AgentAttachment } from './agent-registry.ts';
import type { GatewayMetrics } from './metrics.ts';
import { type AdmissionSlot, type AdmissionTicket, OpenAdmission, type OpenAdmissionLimits } from './open-admission.ts';
import type { PeerSession } from './peer-session.ts';
import { resetLegs, splice } from './relay.ts';
import {
  checkIdle,
  DEFAULT_STREAM_IDLE_TIMEOUT_MS,
  type IdleState,
  idleScanIntervalMs,
  isShareRefusal,
  limitCode,
  type ShareLease,
  type ShareRefusal,
  type StreamShareLimits,
  StreamShares,
} from './stream-shares.ts';

/** One relayed stream of a client, from the OPEN sent to the agent until both legs closed. */
export interface RelayedStream extends IdleState {
  readonly agent: AgentConfig;
  readonly host: string;
  readonly port: number;
  /** The agent leg, once the OPEN left the admission queue (open-admission.ts). */
  agentStream: MuxStream | undefined;
  /** Protocol version of the agent instance (which stream codes it knows). */
  readonly agentVersion: string;
  /** `queued` for an admission slot, `opening` until the agent's OPEN_OK, then `open` (spliced). */
  phase: 'queued' | 'opening' | 'open';
  /** The stream's place in the agent's shares, released once when it ends. */
  readonly lease: ShareLease;
}

/** A client session as the relay sees it (the gateway's client role). */
export interface RelayClient {
  readonly session: PeerSession;
  /** Protocol version from the client's hello (which stream codes it knows). */
  readonly version: string;
  /** The client's compiled policy; replaced on every recompile. */
  readonly policy: CompiledPolicy;
  /** Relayed streams, opening or open, with the target they were allowed for. */
  readonly streams: Map<MuxStream, RelayedStream>;
}

/** Dependencies and limits of {@link RelayStreams}. */
export interface RelayStreamsOptions {
  metrics: GatewayMetrics;
  /** Wall clock, ms since epoch (idle limit). */
  now: () => number;
  /** How long an agent has to accept an OPEN before the client gets TIMEOUT. */
  openTimeoutMs: number;
  /** Shares of each agent's relayed streams per client session and per identity (defaults in stream-shares.ts). */
  shares?: Partial<StreamShareLimits>;
  /** Outstanding OPENs per agent instance and per identity (defaults in open-admission.ts). */
  openAdmission?: Partial<OpenAdmissionLimits>;
  /** A relayed stream without a byte either way for this long is reset IDLE_TIMEOUT; 0 turns it off. Default 4 h. */
  idleTimeoutMs?: number;
  /** How many streams the agent `namespace/name` takes in all right now (its instances' stream limits together). */
  agentCapacity?: (key: string) => number;
  /** The agent of the configuration in force, by `namespace/name` (re-checks use the current configuration). */
  findAgent: (key: string) => AgentConfig | undefined;
}

/** The RESET message of an OPEN a stream share refused. */
function shareRefusalMessage(refusal: ShareRefusal, sub: string, agentName: string, reserveFloor: number): string {
  switch (refusal.refused) {
    case 'session':
      return `this session already holds its share of ${refusal.limit} streams to agent "${agentName}"; close some first`;
    case 'identity':
      return `identity "${sub}" already holds its share of ${refusal.limit} streams to agent "${agentName}"; close some first`;
    case 'reserve':
      return `agent "${agentName}" is past ${refusal.limit} streams; its last streams are kept for identities holding fewer than ${reserveFloor} (identity "${sub}" holds more); close some first`;
  }
}

/** See the file header. */
export class RelayStreams {
  readonly idleTimeoutMs: number;
  readonly #metrics: GatewayMetrics;
  readonly #now: () => number;
  readonly #openTimeoutMs: number;
  readonly #findAgent: (key: string) => AgentConfig | undefined;
  readonly #agentCapacity: (key: string) => number;
  /** Per-agent shares of relayed streams (per client session, per identity). */
  readonly #shares: StreamShares;
  /** Each agent instance's OPEN admission (fair queueing of dials), created on its first OPEN. */
  readonly #admissions = new WeakMap<AgentAttachment<PeerSession>, OpenAdmission>();
  readonly #admissionLimits: Partial<OpenAdmissionLimits>;
  /** Wall-clock time of the last idle scan. */
  #lastIdleScanAt: number;
  /** Relayed streams spliced right now (both legs open). */
  #open = 0;

  constructor(options: RelayStreamsOptions) {
    this.#metrics = options.metrics;
    this.#now = options.now;
    this.#openTimeoutMs = options.openTimeoutMs;
    this.#findAgent = options.findAgent;
    this.#agentCapacity = options.agentCapacity ?? (() => Number.POSITIVE_INFINITY);
    this.idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_STREAM_IDLE_TIMEOUT_MS;
    this.#admissionLimits = options.openAdmission ?? {};
    this.#lastIdleScanAt = this.#now();
    this.#shares = new StreamShares({
      ...(options.shares ? { limits: options.shares } : {}),
      onFullChanged: (kind, delta) => this.#metrics.streamSharesFull.inc({ kind }, delta),
    });
  }

  /** Relayed streams spliced right now. */
  get openCount(): number {
    return this.#open;
  }

  /**
   * Relays `stream`, an OPEN of `client` the gateway allowed to `target` of `agent`, through `instance`: takes its
   * place in the agent's shares (or refuses it SHARE_EXCEEDED), waits for an admission slot at that instance
   * (open-admission.ts), opens the agent leg, and splices the two once the agent accepts. `fail` resets the client stream and counts the open's result.
   */
  open(
    client: RelayClient,
    stream: MuxStream,
    allowed: { agent: AgentConfig; exposed: ExposedPort },
    instance: AgentAttachment<PeerSession>,
    startedAt: number,
    fail: (code: StreamErrorCode, message: string) => void,
  ): void {
    const { agent, exposed } = allowed;
    // The agent's streams are shared by every client: one session, or one identity over all its sessions, may hold
    // only its share of them, opening or open, so that nobody can lock the others out of the agent.
    const key = agentKey(agent.namespace, agent.name);
    const lease = this.#shares.acquire(key, client.session.id, client.session.identity.sub, this.#agentCapacity(key));
    if (isShareRefusal(lease)) {
      this.#metrics.streamShareRefusals.inc({ kind: lease.refused });
      return fail(limitCode(client.version, StreamErrorCode.SHARE_EXCEEDED, StreamErrorCode.TOO_MANY_STREAMS), shareRefusalMessage(lease, client.session.identity.sub, agent.name, this.#shares.limits.reserveFloor));
    }

    const relayed: RelayedStream = {
      agent,
      host: exposed.host,
      port: exposed.port,
      agentStream: undefined,
      agentVersion: instance.version,
      phase: 'queued',
      lease,
      lastBytes: 0,
      lastActiveAt: 0,
    };
    // Queued and pending opens are in the client's books too, so a policy change before the agent's OPEN_OK revokes them.
    client.streams.set(stream, relayed);
    /** The client's side is out of the books, whichever way it ended; safe to call more than once. */
    const clientEnded = (): void => {
      client.streams.delete(stream);
      lease.release();
    };
    let slot: AdmissionSlot | undefined;
    /** The agent answered (or was given up on): its admission slot and the open timer go. Idempotent. */
    const agentAnswered = (): void => {
      clearTimeout(timer);
      slot?.release();
      slot = undefined;
    };
    const timer = setTimeout(() => {
      const agentStream = relayed.agentStream;
      if (agentStream) {
        // Detach first: the agent leg's onReset would otherwise fail the client stream (and count it) a second time.
        agentStream.handlers = {};
        agentStream.reset(StreamErrorCode.TIMEOUT, 'gateway gave up waiting for the agent');
      } else {
        ticket?.cancel();
      }
      agentAnswered();
      clientEnded();
      if (stream.state !== 'closed') fail(StreamErrorCode.TIMEOUT, `agent did not answer within ${this.#openTimeoutMs} ms`);
    }, this.#openTimeoutMs);
    // The client stream ending before the agent's answer: taken out of the queue if it waits there. If the agent is
    // already dialling, a client cancel leaves the slot held until the agent answers (see open-admission.ts), while
    // the gateway's own refusal (revocation, shutdown) ends the agent leg at once.
    stream.handlers = {
      onReset: (reset, local) => {
        clientEnded();
        const agentStream = relayed.agentStream;
        if (!agentStream) {
          ticket?.cancel();
          clearTimeout(timer);
        } else if (local) {
          agentStream.reset(StreamErrorCode.PEER_GONE, `gateway: ${reset.message}`);
          agentAnswered();
        }
      },
    };
    // Assigned after request() returns: the start callback may run (and fail the stream) inside it.
    let ticket: AdmissionTicket | undefined;
    ticket = this.#admission(instance).request(client.session.identity.sub, (granted) => {
      slot = granted;
      if (instance.session.state !== 'open') {
        agentAnswered();
        clientEnded();
        return fail(StreamErrorCode.PEER_GONE, `agent "${agent.name}" instance went away before it could take the stream`);
      }
      this.#dial(client, stream, relayed, instance, startedAt, fail, { agentAnswered, clientEnded });
    });
  }

  /** Sends the agent leg's OPEN (the admission slot is held) and splices the two legs once the agent accepts. */
  #dial(
    client: RelayClient,
    stream: MuxStream,
    relayed: RelayedStream,
    instance: AgentAttachment<PeerSession>,
    startedAt: number,
    fail: (code: StreamErrorCode, message: string) => void,
    done: { agentAnswered: () => void; clientEnded: () => void },
  ): void {
    const agentStream = instance.session.mux.open({ host: relayed.host, port: relayed.port, client: client.session.identity.sub });
    relayed.agentStream = agentStream;
    relayed.phase = 'opening';
    agentStream.handlers = {
      onReset: (reset) => {
        done.agentAnswered();
        done.clientEnded();
        if (stream.state !== 'closed') fail(reset.code, reset.message);
      },
      onOpenOk: () => {
        done.agentAnswered();
        if (stream.state === 'closed') {
          done.clientEnded();
          return agentStream.reset(StreamErrorCode.CANCELLED, 'client cancelled the open');
        }
        this.#metrics.streamOpenSeconds.observe((performance.now() - startedAt) / 1000);
        this.#metrics.streamsTotal.inc({ result: 'ok' });
        this.#metrics.streamsOpen.inc();
        this.#open++;
        relayed.phase = 'open';
        relayed.lastActiveAt = this.#now();
        stream.accept({ path: 'relay' });
        splice(stream, agentStream, {
          onBytes: (direction, bytes) => this.#metrics.relayBytes.inc({ direction }, bytes),
          // Both directions are charged to the client: the tenant who opened the stream owns what it holds, whether
          // it does not read (agent to client) or pushes to a target that does not (client to agent).
          onQueued: (delta) => {
            this.#metrics.relayQueuedBytes.inc(delta);
            client.session.bufferAccount.add(delta);
          },
          onClosed: () => {
            this.#metrics.streamsOpen.dec();
            this.#open--;
            done.clientEnded();
          },
        });
      },
    };
  }

  /** The admission state of an agent instance, created on its first OPEN (and gone with the instance). */
  #admission(instance: AgentAttachment<PeerSession>): OpenAdmission {
    let admission = this.#admissions.get(instance);
    if (!admission) {
      admission = new OpenAdmission(this.#admissionLimits, (delta) => this.#metrics.relayOpensQueued.inc(delta));
      this.#admissions.set(instance, admission);
    }
    return admission;
  }

  /** After `client.policy` changed: resets every relayed stream, opening or open, that it no longer allows. */
  recheck(client: RelayClient): void {
    for (const [stream, target] of client.streams) {
      const agent = this.#findAgent(agentKey(target.agent.namespace, target.agent.name));
      const decision = agent ? client.policy.evaluate({ agent, host: target.host, port: target.port, path: 'Relay' }) : undefined;
      if (decision?.allowed) continue;
      this.#metrics.policyResets.inc();
      // An OPEN still waiting for the agent is revoked too: it was allowed by the policy this one replaces. Its
      // client stream ends DENIED (counted as that open's result) and its handler resets the agent leg.
      if (target.phase !== 'open') this.#metrics.streamsTotal.inc({ result: StreamErrorCode.DENIED });
      client.session.log.info({ agent: target.agent.name, port: target.port, phase: target.phase }, 'access revoked; resetting stream');
      stream.reset(StreamErrorCode.DENIED, 'access revoked by a policy change');
    }
  }

  /**
   * Resets every relayed stream that carried no byte either way for the idle timeout, both legs with
   * IDLE_TIMEOUT (older peers: TIMEOUT to the client, CANCELLED to the agent). Called from the gateway's sweep; scans
   * at most every {@link idleScanIntervalMs}: the relay's per-frame path keeps no timestamps.
   */
  resetIdle(clients: Iterable<RelayClient>, wall: number): void {
    if (this.idleTimeoutMs <= 0 || wall - this.#lastIdleScanAt < idleScanIntervalMs(this.idleTimeoutMs)) return;
    this.#lastIdleScanAt = wall;
    for (const client of clients) {
      for (const [stream, relayed] of client.streams) {
        const agentStream = relayed.agentStream;
        if (relayed.phase !== 'open' || !agentStream) continue;
        const bytes = stream.bytesIn + stream.bytesOut + agentStream.bytesIn + agentStream.bytesOut;
        if (!checkIdle(relayed, bytes, wall, this.idleTimeoutMs)) continue;
        this.#metrics.streamIdleResets.inc();
        client.session.log.info({ agent: relayed.agent.name, port: relayed.port, idleMs: wall - relayed.lastActiveAt }, 'relayed stream idle; resetting it');
        const message = `no bytes either way for ${this.idleTimeoutMs} ms`;
        resetLegs(
          stream,
          agentStream,
          limitCode(client.version, StreamErrorCode.IDLE_TIMEOUT, StreamErrorCode.TIMEOUT),
          limitCode(relayed.agentVersion, StreamErrorCode.IDLE_TIMEOUT, StreamErrorCode.CANCELLED),
          message,
        );
      }
    }
  }
}
