/**
 * `narrowlink socks`: a local SOCKS5 proxy whose destinations are agents.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { ClientDirectPaths, GatewayLink } from '@narrowlink/peer-link';
import { CliError, CliErrorCode, ExitCode } from '../errors.ts';
import type { Reporter } from '../reporter.ts';
import { openTarget, PortResolver } from '../session.ts';
import type { Settings } from '../settings.ts';
import {
  agentFromSocksHost,
  readSocksRequest,
  replyFailure,
  replySuccess,
  type SocksAuth,
  SocksProtocolError,
  SocksReply,
  socksReplyFor,
} from '../socks5.ts';

/** Time a client has to finish the SOCKS handshake, ms. */
const HANDSHAKE_TIMEOUT_MS = 10_000;

export async function startSocks(
  link: GatewayLink,
  direct: ClientDirectPaths | undefined,
  settings: Settings,
  listen: { host: string; port: number },
  auth: SocksAuth | undefined,
  reporter: Reporter,
  options: { openTimeoutMs: number },
): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const resolver = new PortResolver(link);
  const sockets = new Set<Socket>();
  const server = createServer({ pauseOnConnect: true, allowHalfOpen: true, noDelay: true }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    void handle(socket);
  });

  async function handle(socket: Socket): Promise<void> {
    const timer = setTimeout(() => socket.destroy(), HANDSHAKE_TIMEOUT_MS);
    let request: Awaited<ReturnType<typeof readSocksRequest>>;
    try {
      request = await readSocksRequest(socket, auth);
    } catch (error) {
      clearTimeout(timer);
      reporter.event('socks-refused', { message: (error as Error).message }, `socks: ${(error as Error).message}`);
      if (error instanceof SocksProtocolError && error.reply === SocksReply.NOT_ALLOWED) socket.end();
      else socket.destroy();
      return;
    }
    clearTimeout(timer);
    const agent = agentFromSocksHost(request.host);
    if (!agent) {
      reporter.event('stream-failed', { target: request.host, code: 'NO_AGENT' }, `socks: "${request.host}" does not name an agent`);
      await replyFailure(socket, SocksReply.HOST_UNREACHABLE);
      return;
    }
    const target = `${agent}:${request.port}`;
    try {
      const opened = await openTarget(link, direct, resolver, { agent, port: request.port }, settings.mode, options.openTimeoutMs);
      if (socket.destroyed) {
        opened.cancel('socks client went away');
        return;
      }
      replySuccess(socket);
      reporter.event('stream-open', { target, path: opened.path }, `socks ${socket.remoteAddress}:${socket.remotePort} -> ${target} via ${opened.path}`);
      if (request.early.length > 0) socket.unshift(request.early);
      void opened.bridge(socket);
      socket.resume();
    } catch (error) {
      const e = error as Error & { streamCode?: string; code?: string };
      reporter.event('stream-failed', { target, code: e.streamCode ?? e.code, message: e.message }, `socks ${target}: ${e.streamCode ?? e.code}: ${e.message}`);
      await replyFailure(socket, socksReplyFor(e.streamCode));
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(new CliError(CliErrorCode.LISTEN, `cannot listen on ${listen.host}:${listen.port}: ${error.code ?? error.message}`, ExitCode.USAGE, { cause: error })),
    );
    server.listen(listen.port, listen.host, () => resolve());
  });
  const address = server.address();
  return {
    server,
    port: typeof address === 'object' && address ? address.port : listen.port,
    async close() {
      server.close();
      for (const socket of sockets) socket.destroy();
    },
  };
}
