/**
 * The agent: one gateway session, serving each OPEN by dialing an allowed local target.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { connect, type Socket } from 'node:net';
import { type AgentOpen, type DirectOpenReply, type MuxStream, type OpenPayload, StreamErrorCode } from '@narrowlink/protocol';
import { type AgentDirectPaths, bridgeDirect, bridgeSocket, type DirectStream, GatewayLink, type LinkLogger } from '@narrowlink/peer-link';
import type { AllowList } from './expose.ts';

export interface AgentOptions {
  gatewayUrl: string;
  token: string | (() => string | Promise<string>);
  allowList: AllowList;
  caPem?: string;
  /** `namespace/name` when authenticating with a ServiceAccount token (injected sidecar). */
  agentRef?: string;
  instanceId?: string;
  /** Max time to connect to a local target, ms. Default 5 s. */
  dialTimeoutMs?: number;
  log: LinkLogger & { error(obj: object, msg: string): void };
  backoff?: { baseMs?: number; maxMs?: number };
  /**
   * The direct path (AgentDirectPaths.create): its UDP socket answers the gateway's NAT probes and
   * carries punches and QUIC. Absent: relay only.
   */
  direct?: AgentDirectPaths;
}

export class Agent {
  readonly link: GatewayLink;
  readonly options: AgentOptions;
  readonly #sockets = new Set<Socket>();
  streamsServed = 0;
  /** Of those, streams that came over a direct path. */
  directStreamsServed = 0;

  constructor(options: AgentOptions) {
    this.options = options;
    const instanceId = options.instanceId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
    this.link = new GatewayLink({
      url: options.gatewayUrl,
      role: 'agent',
      token: options.token,
      ...(options.caPem ? { caPem: options.caPem } : {}),
      ...(options.agentRef ? { agentRef: options.agentRef } : {}),
      log: options.log,
      // An agent is infrastructure: it keeps trying even through credential problems (a token may be rotated in).
      retryAuthFailures: true,
      ...(options.backoff ? { backoff: options.backoff } : {}),
      software: 'narrowlink-agent',
      agent: {
        instanceId,
        expose: options.allowList.entries.map((e) => ({ name: e.name, port: e.port, host: e.host })),
      },
      onOpenStream: (stream, payload) => this.#serve(stream, payload),
      ...(options.direct ? { udpSocket: options.direct.socket, certFingerprint: options.direct.fingerprint } : {}),
    });
    if (options.direct) {
      options.direct.attach(this.link);
      options.direct.setServe(({ target, client }, stream, reply) => this.#serveDirect(target, client, stream, reply));
    }
  }

  start(): this {
    this.link.start();
    return this;
  }

  #serve(stream: MuxStream, payload: OpenPayload): void {
    if (!('client' in payload)) {
      stream.reset(StreamErrorCode.PROTOCOL_ERROR, 'agent OPEN needs host, port and client');
      return;
    }
    const request = payload as AgentOpen;
    const log = this.options.log;
    if (!this.options.allowList.allows(request.host, request.port)) {
      log.warn({ host: request.host, port: request.port, client: request.client }, 'refusing a target outside the local allow-list');
      stream.reset(StreamErrorCode.DENIED, `${request.host}:${request.port} is not exposed by this agent`);
      return;
    }
    // The stream may be cancelled while we dial.
    let cancelled = false;
    stream.handlers = { onReset: () => (cancelled = true) };
    this.#dial(request.host, request.port).then(
      (socket) => {
        if (cancelled || stream.state !== 'opening') {
          socket.destroy();
          return;
        }
        this.streamsServed++;
        stream.accept({ path: 'relay' });
        bridgeSocket(socket, stream);
      },
      (error: Error) => {
        if (stream.state === 'opening') stream.reset(StreamErrorCode.DIAL_FAILED, error.message);
      },
    );
  }

  /** A direct-path stream the gateway's policy allows for this client: the local allow-list has the last word. */
  #serveDirect(target: { host: string; port: number }, client: string, stream: DirectStream, reply: (reply: DirectOpenReply) => void): void {
    if (!this.options.allowList.allows(target.host, target.port)) {
      this.options.log.warn({ host: target.host, port: target.port, client }, 'refusing a direct target outside the local allow-list');
      reply({ code: StreamErrorCode.DENIED, message: `${target.host}:${target.port} is not exposed by this agent` });
      return;
    }
    this.#dial(target.host, target.port).then(
      (socket) => {
        if (stream.destroyed) {
          socket.destroy();
          return;
        }
        this.streamsServed++;
        this.directStreamsServed++;
        reply({ ok: true });
        bridgeDirect(socket, stream);
      },
      (error: Error) => reply({ code: StreamErrorCode.DIAL_FAILED, message: error.message }),
    );
  }

  /** Connects to a local target within the dial timeout; rejects with the reason as its message. */
  #dial(host: string, port: number): Promise<Socket> {
    const timeoutMs = this.options.dialTimeoutMs ?? 5000;
    const socket = connect({ host, port, allowHalfOpen: true, noDelay: true });
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connect to ${host}:${port} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (error: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new Error(`connect to ${host}:${port} failed: ${error.code ?? error.message}`));
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve(socket);
      });
    });
  }

  async stop(): Promise<void> {
    await this.link.close();
    await this.options.direct?.close();
    for (const socket of this.#sockets) socket.destroy();
  }
}
