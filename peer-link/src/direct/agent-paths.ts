/**
 * The agent's direct paths, one per client path the gateway planned: keeps the compiled policy the gateway sent per
 * path (`direct_policy`), runs the punch the plan asks for, accepts the QUIC connection and checks every stream
 * against that policy before `serve` sees it; a narrower policy resets the streams it no longer allows. Why the
 * gateway decides whether a path exists and the agent decides each stream: docs/adr/0005-direct-path-authority.md.
 */
import { networkInterfaces } from 'node:os';
import {
  type DirectAllow,
  type DirectOpenReply,
  type DirectPolicy,
  directOpenReader,
  encodeDirectOpenReply,
  filterLanCandidates,
  hasLoopback,
  type LocalSubnet,
  type PunchPlanMessage,
  StreamErrorCode,
  subnetsFromInterfaces,
} from '@narrowlink/protocol';
import type { QuicheEndpoint } from '../quic/endpoint.ts';
import type { DirectStream, DirectTransport } from '../quic/transport.ts';
import { type DirectMessage, DirectPathManager, type DirectPathManagerOptions, bindDirectPaths } from './path-manager.ts';
import { PathAttempt } from './path-attempt.ts';
import { readHeader } from './read-header.ts';

export interface AgentDirectPathsOptions extends DirectPathManagerOptions {
  /** How long a `direct_policy` waits for its `punch_plan` before the record is dropped. Default 30 000. */
  planWaitMs?: number;
  /**
   * This host's interface subnets, read at each plan: a `lan` punch candidate (an address the client reported
   * about itself) is punched only when it is private or link-local and inside one of them (protocol lan-filter.ts).
   * Default: `os.networkInterfaces()`.
   */
  localSubnets?: () => readonly LocalSubnet[];
  /**
   * Serve a direct stream the gateway's policy allows for this client. Call `reply({ok: true})` once the
   * target is connected (payload may flow then), or `reply({code, message})` to refuse; the stream is the caller's.
   */
  serve?: (request: { target: DirectAllow; client: string; pathId: string }, stream: DirectStream, reply: (reply: DirectOpenReply) => void) => void;
}

/** The application error code a stream is reset with when the policy no longer allows it. */
export const DIRECT_STREAM_REVOKED = 0x10;

/** A failed path may not be asked for again before this; agents forget failed paths, so only its status shows it. */
const AGENT_RETRY_AFTER_MS = 60_000;

/** A path from one client, with what the gateway allows it here and the streams being served. */
class AgentPath extends PathAttempt {
  /** What the gateway allows this client here. */
  allow: DirectAllow[] = [];
  /** Streams being served, with the target they were allowed for. */
  readonly streams = new Map<DirectStream, DirectAllow>();

  override get streamCount(): number {
    return this.streams.size;
  }
}

/**
 * The agent side of the direct path. Events: `path` (DirectPathStatus) whenever a path comes up or fails;
 * `error` is never emitted.
 */
export class AgentDirectPaths extends DirectPathManager<AgentPath> {
  declare readonly options: AgentDirectPathsOptions;
  #serve: AgentDirectPathsOptions['serve'];
  #lanCandidatesDropped = 0;

  /** Binds the UDP socket (QUIC + probes + punches) and returns the agent's paths on it. */
  static create(options: AgentDirectPathsOptions): Promise<AgentDirectPaths> {
    return bindDirectPaths(options, (endpoint) => new AgentDirectPaths(endpoint, options));
  }

  private constructor(endpoint: QuicheEndpoint, options: AgentDirectPathsOptions) {
    super(endpoint, options, AGENT_RETRY_AFTER_MS);
    this.#serve = options.serve;
  }

  /** LAN punch candidates dropped since start because they are not on this host's links (see `localSubnets`). */
  get lanCandidatesDropped(): number {
    return this.#lanCandidatesDropped;
  }

  /** Sets who serves allowed direct streams (see the `serve` option). */
  setServe(serve: NonNullable<AgentDirectPathsOptions['serve']>): void {
    this.#serve = serve;
  }

  protected onMessage(message: Exclude<DirectMessage, { type: 'direct_close' }>): void {
    switch (message.type) {
      case 'direct_policy':
        this.#onPolicy(message);
        return;
      case 'punch_plan':
        this.#onPlan(message);
        return;
    }
  }

  /** A path's policy: the first one makes the record (the plan follows); a later one may revoke open streams. */
  #onPolicy(message: DirectPolicy): void {
    let path = this.paths.get(message.pathId);
    if (!path) {
      const created = new AgentPath(this.owner, `path:${message.pathId}`, message.pathId);
      this.paths.set(message.pathId, created);
      // The plan follows at once; a policy for a path that ended meanwhile (the update crossed our failure
      // report) gets none and must not linger.
      created.waitTimer = setTimeout(() => {
        if (created.state === 'requesting') this.#forget(created);
      }, this.options.planWaitMs ?? 30_000);
      created.waitTimer.unref();
      path = created;
    }
    path.allow = message.allow;
    for (const [stream, target] of path.streams) {
      if (!findAllowed(path.allow, { port: target.port, host: target.host })) {
        this.log.info({ event: 'direct-revoked', client: path.peer, host: target.host, port: target.port }, 'policy no longer allows a direct stream');
        stream.reset(DIRECT_STREAM_REVOKED);
      }
    }
  }

  #onPlan(plan: PunchPlanMessage): void {
    const path = this.paths.get(plan.pathId);
    // The policy comes first; a plan without one is not ours to run.
    if (!path || path.planned) return;
    clearTimeout(path.waitTimer);
    path.peer = plan.peer;
    path.begin(this.#onLinkOnly(plan));
  }

  /**
   * The plan without the `lan` candidates this host must not send to: the client reports its LAN addresses itself,
   * and the agent is the side a client could otherwise aim at any host and port (a UDP scanner or reflector).
   * Loopback is kept only when this agent is on loopback itself (its socket, or the local endpoints it reported).
   */
  #onLinkOnly(plan: PunchPlanMessage): PunchPlanMessage {
    if (!plan.candidates.some((c) => c.kind === 'lan')) return plan;
    const subnets = this.options.localSubnets ? this.options.localSubnets() : subnetsFromInterfaces(networkInterfaces());
    const own = [...(this.link?.stats.nat?.localEndpoints ?? [])];
    try {
      own.push(this.endpoint.socket.address());
    } catch {
      // not bound (closing): the reported endpoints decide
    }
    const { kept, dropped } = filterLanCandidates(plan.candidates, subnets, { allowLoopback: hasLoopback(own) });
    if (dropped.length === 0) return plan;
    this.#lanCandidatesDropped += dropped.length;
    this.log.warn(
      {
        event: 'direct-candidates-dropped',
        peer: plan.peer,
        dropped: dropped.length,
        candidates: dropped.slice(0, 4).map((d) => `${d.candidate.address}:${d.candidate.port} ${d.reason}`),
      },
      'dropping LAN punch candidates that are not on this host\'s links',
    );
    return { ...plan, candidates: kept };
  }

  protected pathById(pathId: string): AgentPath | undefined {
    return this.paths.get(pathId);
  }

  protected pathUp(path: AgentPath, transport: DirectTransport): void {
    transport.onStream((stream) => void this.#serveStream(path, stream));
    this.emit('path', path.status());
  }

  /** An agent keeps no memory of failed paths: the next plan brings a new path id. */
  protected pathFailed(path: AgentPath): void {
    this.#forget(path);
    this.emit('path', path.status());
  }

  /** Drops a record (agents key their paths by path id). */
  #forget(path: AgentPath): void {
    if (!path.pathId) return;
    if (this.paths.get(path.pathId) === path) this.paths.delete(path.pathId);
  }

  /** Every stream is checked against the policy the gateway sent for this client before `serve` sees it. */
  async #serveStream(path: AgentPath, stream: DirectStream): Promise<void> {
    stream.on('error', () => {});
    let open: { port: number | string; host?: string | undefined };
    try {
      open = await readHeader(stream, directOpenReader(), this.options.headerTimeoutMs ?? 10_000);
    } catch (error) {
      this.log.warn({ event: 'direct-bad-open', client: path.peer, err: (error as Error).message }, 'refusing a direct stream without a valid open header');
      if (!stream.destroyed) stream.reset(0x01);
      return;
    }
    const target = findAllowed(path.allow, open);
    const refuse = (code: StreamErrorCode, message: string): void => {
      stream.end(encodeDirectOpenReply({ code, message }));
    };
    if (!target || path.state !== 'up') {
      this.log.warn({ event: 'direct-denied', client: path.peer, port: open.port, host: open.host }, 'policy denies a direct stream');
      refuse(StreamErrorCode.DENIED, `policy denies port ${open.port}${open.host ? ` on ${open.host}` : ''} on the direct path`);
      return;
    }
    const serve = this.#serve;
    if (!serve) return refuse(StreamErrorCode.DENIED, 'this peer serves no streams');
    path.streams.set(stream, target);
    stream.once('close', () => path.streams.delete(stream));
    let replied = false;
    serve({ target, client: path.peer, pathId: path.pathId as string }, stream, (reply) => {
      if (replied || stream.destroyed) return;
      replied = true;
      if ('code' in reply) stream.end(encodeDirectOpenReply(reply));
      else stream.write(encodeDirectOpenReply(reply));
    });
  }
}

/** The allowed target a stream asks for: by exposed name, or by port (and host when given). */
export function findAllowed(allow: readonly DirectAllow[], open: { port: number | string; host?: string | undefined }): DirectAllow | undefined {
  if (typeof open.port === 'string') return allow.find((a) => a.name === open.port && (open.host === undefined || a.host === open.host));
  return allow.find((a) => a.port === open.port && (open.host === undefined || a.host === open.host));
}
