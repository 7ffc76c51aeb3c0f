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
  type StreamShareLimits,
  StreamShares,
} from './stream-shares.ts';

/** One relayed stream of a client, from the OPEN sent to the agent until both legs closed. */
export interface RelayedStream extends IdleState {
  readonly agent: AgentConfig;
  readonly host: string;
  readonly port: number;
  readonly agentStream: MuxStream;
  /** Protocol version of the agent instance (which stream codes it knows). */
  readonly agentVersion: string;
  /** `opening` until the agent's OPEN_OK, then `open` (spliced). */
  phase: 'opening' | 'open';
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
  /** A relayed stream without a byte either way for this long is reset IDLE_TIMEOUT; 0 turns it off. Default 4 h. */
  idleTimeoutMs?: number;
  /** The agent of the configuration in force, by `namespace/name` (re-checks use the current configuration). */
  findAgent: (key: string) => AgentConfig | undefined;
}

/** See the file header. */
export class RelayStreams {
  readonly idleTimeoutMs: number;
  readonly #metrics: GatewayMetrics;
  readonly #now: () => number;
  readonly #openTimeoutMs: number;
  readonly #findAgent: (key: string) => AgentConfig | undefined;
  /** Per-agent shares of relayed streams (per client session, per identity). */
  readonly #shares: StreamShares;
  /** Wall-clock time of the last idle scan. */
  #lastIdleScanAt: number;
  /** Relayed streams spliced right now (both legs open). */
  #open = 0;

  constructor(options: RelayStreamsOptions) {
    this.#metrics = options.metrics;
    this.#now = options.now;
    this.#openTimeoutMs = options.openTimeoutMs;
    this.#findAgent = options.findAgent;
    this.idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_STREAM_IDLE_TIMEOUT_MS;
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
   * place in the agent's shares (or refuses it SHARE_EXCEEDED), opens the agent leg, and splices the two once the
   * agent accepts. `fail` resets the client stream and counts the open's result.
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
    const lease = this.#shares.acquire(agentKey(agent.namespace, agent.name), client.session.id, client.session.identity.sub);
    if (isShareRefusal(lease)) {
      this.#metrics.streamShareRefusals.inc({ kind: lease.refused });
      const holder = lease.refused === 'session' ? 'this session' : `identity "${client.session.identity.sub}"`;
      return fail(
        limitCode(client.version, StreamErrorCode.SHARE_EXCEEDED, StreamErrorCode.TOO_MANY_STREAMS),
        `${holder} already holds its share of ${lease.limit} streams to agent "${agent.name}"; close some first`,
      );
    }

    const agentStream = instance.session.mux.open({ host: exposed.host, port: exposed.port, client: client.session.identity.sub });
    const relayed: RelayedStream = {
      agent,
      host: exposed.host,
      port: exposed.port,
      agentStream,
      agentVersion: instance.version,
      phase: 'opening',
      lease,
      lastBytes: 0,
      lastActiveAt: 0,
    };
    // Pending opens are in the client's books too, so a policy change before the agent's OPEN_OK revokes them.
    client.streams.set(stream, relayed);
    const timer = setTimeout(() => {
      // Detach first: the agent leg's onReset would otherwise fail the client stream (and count it) a second time.
      agentStream.handlers = {};
      agentStream.reset(StreamErrorCode.TIMEOUT, 'gateway gave up waiting for the agent');
      fail(StreamErrorCode.TIMEOUT, `agent did not answer within ${this.#openTimeoutMs} ms`);
    }, this.#openTimeoutMs);
    /** Out of the books, whichever way the relayed stream ended; safe to call more than once. */
    const ended = (): void => {
      clearTimeout(timer);
      client.streams.delete(stream);
      lease.release();
    };
    // While the agent dials, the client stream ending (the client cancelled, or this gateway refused it: timeout,
    // revocation) must end the agent leg; a no-op when the agent leg ended first.
    stream.handlers = {
      onReset: (reset, local) => {
        ended();
        if (local) agentStream.reset(StreamErrorCode.PEER_GONE, `gateway: ${reset.message}`);
        else agentStream.reset(StreamErrorCode.CANCELLED, 'client cancelled the open');
      },
    };
    agentStream.handlers = {
      onReset: (reset) => {
        ended();
        if (stream.state !== 'closed') fail(reset.code, reset.message);
      },
      onOpenOk: () => {
        clearTimeout(timer);
        if (stream.state === 'closed') {
          ended();
          return agentStream.reset(StreamErrorCode.CANCELLED, 'client went away');
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
            ended();
          },
        });
      },
    };
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
      if (target.phase === 'opening') this.#metrics.streamsTotal.inc({ result: StreamErrorCode.DENIED });
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
        if (relayed.phase !== 'open') continue;
        const agentStream = relayed.agentStream;
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
