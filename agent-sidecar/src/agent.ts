/**
 * The agent: one gateway session, serving each OPEN by dialing an allowed local target.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { connect, type Socket } from 'node:net';
import { type AgentOpen, type MuxStream, type OpenPayload, StreamErrorCode } from '@narrowlink/protocol';
import { bridgeSocket, GatewayLink, type LinkLogger } from '@narrowlink/peer-link';
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
}

export class Agent {
  readonly link: GatewayLink;
  readonly options: AgentOptions;
  readonly #sockets = new Set<Socket>();
  streamsServed = 0;

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
    });
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
    const timeoutMs = this.options.dialTimeoutMs ?? 5000;
    const socket = connect({ host: request.host, port: request.port, allowHalfOpen: true, noDelay: true });
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    const timer = setTimeout(() => {
      socket.destroy();
      stream.reset(StreamErrorCode.DIAL_FAILED, `connect to ${request.host}:${request.port} timed out after ${timeoutMs} ms`);
    }, timeoutMs);
    // The stream may be cancelled while we dial.
    stream.handlers = { onReset: () => socket.destroy() };
    socket.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (stream.state === 'opening') {
        stream.reset(StreamErrorCode.DIAL_FAILED, `connect to ${request.host}:${request.port} failed: ${error.code ?? error.message}`);
      }
    });
    socket.once('connect', () => {
      clearTimeout(timer);
      if (stream.state !== 'opening') {
        socket.destroy();
        return;
      }
      this.streamsServed++;
      stream.accept({ path: 'relay' });
      bridgeSocket(socket, stream);
    });
  }

  async stop(): Promise<void> {
    await this.link.close();
    for (const socket of this.#sockets) socket.destroy();
  }
}
