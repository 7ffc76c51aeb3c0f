/**
 * The client's direct paths, one per agent asked for: `request(agent)` asks the gateway for a path (it checks
 * policy and plans the punch); `transport(agent)` is the connection once up; `openStream` carries one stream over
 * it; `waitUp` waits for one (mode `direct`). A failed attempt is retried no sooner than `retryAfterMs` (a path
 * that was up and died, at once). See docs/lifecycle/direct-path.md.
 */
import {
  DIRECT_PATH_MINOR,
  type DirectOpenReply,
  directOpenReplyReader,
  encodeDirectOpen,
  type PunchPlanMessage,
  peerSupportsMinor,
  StreamResetError,
} from '@narrowlink/protocol';
import type { QuicheEndpoint } from '../quic/endpoint.ts';
import { DirectError, DirectErrorCode } from '../quic/errors.ts';
import type { DirectStream, DirectTransport } from '../quic/transport.ts';
import { type DirectMessage, DirectPathManager, type DirectPathManagerOptions, bindDirectPaths } from './path-manager.ts';
import { type DirectPathStatus, PathAttempt } from './path-attempt.ts';
import { HeaderReadError, readHeader } from './read-header.ts';

export interface ClientDirectPathsOptions extends DirectPathManagerOptions {
  /** Wait this long before asking again for a path that could not be set up. Default 60 000. */
  retryAfterMs?: number;
  /** Give up on a direct_request the gateway does not answer. Default 5 000. */
  requestTimeoutMs?: number;
}

interface Waiter {
  resolve: (transport: DirectTransport) => void;
  reject: (error: DirectError) => void;
  timer: NodeJS.Timeout;
}

/** A path to one agent, with the request that asked for it and whoever waits for it. */
class ClientPath extends PathAttempt {
  requestId: number | undefined;
  waiters: Waiter[] = [];

  /** NL_ERR_DIRECT_UNAVAILABLE with this path's failure as the reason. */
  unavailable(): DirectError {
    return new DirectError(DirectErrorCode.UNAVAILABLE, `no direct path to ${this.peer}: ${this.reason}: ${this.message}`, { reason: this.reason ?? 'Unknown' });
  }
}

/**
 * The client side of the direct path. Events: `path` (DirectPathStatus) whenever a path comes up or fails;
 * `error` is never emitted.
 */
export class ClientDirectPaths extends DirectPathManager<ClientPath> {
  declare readonly options: ClientDirectPathsOptions;
  readonly #byPathId = new Map<string, ClientPath>();
  readonly #byRequest = new Map<number, ClientPath>();
  #requestSeq = 0;

  /** Binds the UDP socket (QUIC + probes + punches) and returns the client's paths on it. */
  static create(options: ClientDirectPathsOptions): Promise<ClientDirectPaths> {
    return bindDirectPaths(options, (endpoint) => new ClientDirectPaths(endpoint, options));
  }

  private constructor(endpoint: QuicheEndpoint, options: ClientDirectPathsOptions) {
    super(endpoint, options, options.retryAfterMs ?? 60_000);
  }

  /** The verified connection to `agent`, when a path is up. */
  transport(agent: string): DirectTransport | undefined {
    const path = this.paths.get(agent);
    return path?.state === 'up' && path.transport && !path.transport.closed ? path.transport : undefined;
  }

  /**
   * Asks the gateway for a path to `agent` unless one is up or under way, or a failed one is still in its retry
   * wait (then returns that failure). Never throws; the outcome arrives as a `path` event.
   */
  request(agent: string): DirectPathStatus {
    const existing = this.paths.get(agent);
    const now = performance.now();
    if (existing && (existing.state !== 'failed' || now < existing.retryAt)) return existing.status();
    const path = new ClientPath(this.owner, agent, undefined);
    this.paths.set(agent, path);
    const link = this.link;
    const helloOk = link?.stats.helloOk;
    if (this.closed || !link || link.state !== 'open' || !helloOk) {
      path.fail('NoSession', 'no gateway session to ask for a direct path', 1000);
      return path.status();
    }
    if (!peerSupportsMinor(helloOk.version, DIRECT_PATH_MINOR)) {
      path.fail('GatewayTooOld', `the gateway speaks protocol ${helloOk.version}; direct paths need 1.${DIRECT_PATH_MINOR}`);
      return path.status();
    }
    path.requestId = ++this.#requestSeq;
    this.#byRequest.set(path.requestId, path);
    path.waitTimer = setTimeout(() => path.fail('Timeout', 'the gateway did not answer the direct_request in time'), this.options.requestTimeoutMs ?? 5000);
    const send = (): void => {
      if (path.state === 'requesting' && link.state === 'open') link.sendControl({ type: 'direct_request', requestId: path.requestId as number, agent });
    };
    // The gateway plans from our NAT classification: right after connecting it is still being probed (≤ 2 s),
    // so the request waits for it rather than being refused as NotProbed.
    if (link.stats.nat || !link.options.udpSocket) send();
    else {
      const onNat = (): void => {
        clearTimeout(fallback);
        send();
      };
      const fallback = setTimeout(() => {
        link.off('nat', onNat);
        send();
      }, 2500);
      link.once('nat', onNat);
    }
    return path.status();
  }

  /**
   * Resolves with the connection to `agent` once up (asking for one if needed); rejects with
   * NL_ERR_DIRECT_UNAVAILABLE (with the reason) when it cannot be set up or `timeoutMs` passes. Bounded: the
   * gateway's plan has a deadline and so does the handshake.
   */
  waitUp(agent: string, timeoutMs: number): Promise<DirectTransport> {
    const up = this.transport(agent);
    if (up) return Promise.resolve(up);
    const status = this.request(agent);
    const path = this.paths.get(agent) as ClientPath;
    if (status.state === 'failed') return Promise.reject(path.unavailable());
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          path.waiters = path.waiters.filter((w) => w !== waiter);
          reject(new DirectError(DirectErrorCode.UNAVAILABLE, `no direct path to ${agent} within ${timeoutMs} ms (${path.state})`, { reason: 'Timeout' }));
        }, timeoutMs),
      };
      path.waiters.push(waiter);
    });
  }

  /**
   * Opens a stream to `port` (number or exposed name) on the agent over the direct path and waits for the agent's
   * answer. Rejects with StreamResetError (the agent refused: DENIED, DIAL_FAILED, …) or DirectError (the path
   * failed before the agent answered: such a stream sent nothing and can be retried on the relay).
   */
  async openStream(agent: string, target: { port: number | string; host?: string }): Promise<DirectStream> {
    const transport = this.transport(agent);
    if (!transport) throw new DirectError(DirectErrorCode.UNAVAILABLE, `no direct path to ${agent} is up`, { reason: 'NotUp' });
    const stream = await transport.openStream();
    stream.write(encodeDirectOpen({ port: target.port, ...(target.host ? { host: target.host } : {}) }));
    let reply: DirectOpenReply;
    try {
      reply = await readHeader(stream, directOpenReplyReader(), this.options.headerTimeoutMs ?? 10_000);
    } catch (error) {
      stream.destroy();
      const cause = error instanceof HeaderReadError && error.cause instanceof DirectError ? error.cause : error;
      if (cause instanceof DirectError) throw cause;
      throw new DirectError(DirectErrorCode.CLOSED, `agent did not answer the direct stream: ${(error as Error).message}`, { cause: error });
    }
    if ('code' in reply) {
      stream.destroy();
      throw new StreamResetError(reply.code, reply.message);
    }
    return stream;
  }

  protected onMessage(message: Exclude<DirectMessage, { type: 'direct_close' }>): void {
    switch (message.type) {
      case 'direct_refused': {
        const path = this.#byRequest.get(message.requestId);
        if (path?.state !== 'requesting') return;
        path.fail(message.reason, message.message);
        return;
      }
      case 'punch_plan':
        this.#onPlan(message);
        return;
    }
  }

  /** The plan answers our request (by request id); from here the path is known by its path id. */
  #onPlan(plan: PunchPlanMessage): void {
    const path = plan.requestId === undefined ? undefined : this.#byRequest.get(plan.requestId);
    if (path?.state !== 'requesting') return;
    clearTimeout(path.waitTimer);
    path.pathId = plan.pathId;
    this.#byPathId.set(plan.pathId, path);
    path.begin(plan);
  }

  protected pathById(pathId: string): ClientPath | undefined {
    return this.#byPathId.get(pathId);
  }

  protected pathUp(path: ClientPath, transport: DirectTransport): void {
    for (const w of path.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.resolve(transport);
    }
    this.emit('path', path.status());
  }

  protected pathFailed(path: ClientPath): void {
    if (path.requestId !== undefined) this.#byRequest.delete(path.requestId);
    if (path.pathId) this.#byPathId.delete(path.pathId);
    for (const w of path.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(path.unavailable());
    }
    this.emit('path', path.status());
  }
}
