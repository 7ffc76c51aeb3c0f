/**
 * What the client's and the agent's direct-path managers share: the QUIC endpoint whose UDP socket also carries
 * the NAT probes and the punch packets, the link to the gateway session that plans the paths, punch routing by
 * attempt id, `direct_close`, the end of every path with its gateway session, status and close. Each role adds
 * its own messages and path records (client-paths.ts, agent-paths.ts). See docs/adr/0008-peer-link-roles.md.
 */
import { EventEmitter } from 'node:events';
import { type DirectClose, type DirectPolicy, type DirectRefused, type PunchPlanMessage, rawDatagramKind } from '@narrowlink/protocol';
import type { GatewayLink } from '../gateway-link.ts';
import { type LinkLogger, silentLogger } from '../link/logger.ts';
import { QuicheEndpoint, type QuicheEndpointOptions } from '../quic/endpoint.ts';
import type { PeerIdentity } from '../quic/identity.ts';
import type { DirectTransport } from '../quic/transport.ts';
import type { DirectPathStatus, PathAttempt, PathOwner } from './path-attempt.ts';

/** Options both roles take. */
export interface DirectPathManagerOptions {
  identity: PeerIdentity;
  /** Address and port to bind the UDP socket to; default 0.0.0.0, any port. */
  host?: string;
  port?: number;
  log?: LinkLogger;
  /** QUIC handshake after a successful punch. Default 3 000. */
  handshakeTimeoutMs?: number;
  /** A stream's open header (agent) or the agent's answer to it (client) must arrive within this. Default 10 000. */
  headerTimeoutMs?: number;
  /** Endpoint tuning (keep-alive, idle timeout, windows). */
  endpoint?: Omit<QuicheEndpointOptions, 'identity' | 'host' | 'port' | 'onRawDatagram'>;
}

/** The gateway's direct-path messages as the link emits them (`direct`). */
export type DirectMessage = PunchPlanMessage | DirectRefused | DirectPolicy | DirectClose;

/**
 * Binds the UDP socket (QUIC + probes + punches) and makes the manager on it with `make`; punch datagrams that
 * arrive meanwhile are dropped, as before any plan.
 */
export async function bindDirectPaths<T extends DirectPathManager<PathAttempt>>(
  options: DirectPathManagerOptions,
  make: (endpoint: QuicheEndpoint) => T,
): Promise<T> {
  let self: T | undefined;
  const endpoint = await QuicheEndpoint.bind({
    ...options.endpoint,
    identity: options.identity,
    ...(options.host ? { host: options.host } : {}),
    ...(options.port ? { port: options.port } : {}),
    onRawDatagram: (data, from) => self?.onRawDatagram(data, from),
  });
  self = make(endpoint);
  return self;
}

/**
 * Events: `path` (DirectPathStatus) whenever a path comes up or fails; `error` is never emitted.
 */
export abstract class DirectPathManager<P extends PathAttempt> extends EventEmitter {
  readonly endpoint: QuicheEndpoint;
  readonly options: DirectPathManagerOptions;
  /** Every path, keyed as the role finds them (client: by agent asked for; agent: by path id). */
  protected readonly paths = new Map<string, P>();
  protected readonly log: LinkLogger;
  protected link: GatewayLink | undefined;
  protected closed = false;
  /** Paths being punched, by attempt id (hex). */
  readonly #attempts = new Map<string, PathAttempt>();
  /** What each path sees of this manager. */
  protected readonly owner: PathOwner;

  protected constructor(endpoint: QuicheEndpoint, options: DirectPathManagerOptions, retryAfterMs: number) {
    super();
    this.endpoint = endpoint;
    this.options = options;
    this.log = options.log ?? silentLogger;
    const self = this;
    this.owner = {
      endpoint,
      log: this.log,
      get link() {
        return self.link;
      },
      get closed() {
        return self.closed;
      },
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 3000,
      retryAfterMs,
      attempts: this.#attempts,
      pathUp: (path, transport) => this.pathUp(path as P, transport),
      pathFailed: (path) => this.pathFailed(path as P),
    };
  }

  /** The socket to give the gateway link (`udpSocket`) so NAT probes leave from the QUIC port. */
  get socket(): QuicheEndpoint['socket'] {
    return this.endpoint.socket;
  }

  /** sha256 of this peer's certificate (the link's `certFingerprint`). */
  get fingerprint(): string {
    return this.options.identity.fingerprint;
  }

  /** Listens to the link's direct-path messages. Call once, before the link starts. */
  attach(link: GatewayLink): this {
    this.link = link;
    link.on('direct', (message: DirectMessage) => this.#onMessage(message));
    // A path belongs to the gateway session that planned it: the gateway keeps its policy current only through
    // that session. When the session ends (gateway restart, network change), so do its paths; the client uses
    // the relay once reconnected and asks again.
    link.on('state', (state: string) => {
      if (state === 'open') return;
      for (const path of [...this.paths.values()]) {
        if (path.state !== 'failed') path.fail('SessionLost', 'the gateway session that set up this path ended', 1000, false);
      }
    });
    return this;
  }

  /** The state of every path (client: per agent asked for; agent: per client path). */
  status(): DirectPathStatus[] {
    return [...this.paths.values()].map((p) => p.status());
  }

  /** Punch datagrams from the shared socket (probe replies are the NAT prober's). */
  onRawDatagram(data: Buffer, from: { address: string; port: number }): void {
    if (rawDatagramKind(data) !== 'punch' || data.length < 12) return;
    this.#attempts.get(data.toString('hex', 4, 12))?.receivePunch(data, from);
  }

  /** Closes every path and the socket. */
  async close(): Promise<void> {
    if (this.closed) return;
    for (const path of [...this.paths.values()]) path.fail('Closed', 'closing', 0);
    this.closed = true;
    await this.endpoint.close();
  }

  #onMessage(message: DirectMessage): void {
    if (this.closed) return;
    if (message.type !== 'direct_close') {
      this.onMessage(message);
      return;
    }
    const path = this.pathById(message.pathId);
    if (!path) return;
    this.log.info({ event: 'direct-closed', peer: path.peer, reason: message.reason }, 'gateway closed the direct path');
    path.fail('ClosedByGateway', message.reason, 5000, false);
  }

  /** The role's messages: the client's `direct_refused` and plans, the agent's `direct_policy` and plans. */
  protected abstract onMessage(message: Exclude<DirectMessage, DirectClose>): void;
  /** The path the gateway knows by `pathId` (planned, not yet failed). */
  protected abstract pathById(pathId: string): P | undefined;
  /** `path` is up on `transport` (see PathOwner.pathUp); emits `path`. */
  protected abstract pathUp(path: P, transport: DirectTransport): void;
  /** `path` failed (see PathOwner.pathFailed); emits `path`. */
  protected abstract pathFailed(path: P): void;
}
