/**
 * `narrowlink forward`: local TCP listeners, each stream relayed to an agent's port.
 * Listeners stay open while the gateway is away; a connection made then waits (bounded) for it.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { ClientDirectPaths, GatewayLink } from '@narrowlink/peer-link';
import { CliError, CliErrorCode, ExitCode } from '../errors.ts';
import { formatBytes, type Reporter, TrafficSummary } from '../reporter.ts';
import { openTarget, PortResolver } from '../session.ts';
import type { Settings } from '../settings.ts';
import type { ForwardSpec } from '../targets.ts';

export interface ForwardHandle {
  servers: Server[];
  addresses: Array<{ local: string; port: number; agent: string; target: string }>;
  close(): Promise<void>;
}

export async function startForwards(
  link: GatewayLink,
  direct: ClientDirectPaths | undefined,
  settings: Settings,
  specs: ForwardSpec[],
  reporter: Reporter,
  options: { openTimeoutMs: number; summaryIntervalMs?: number },
): Promise<ForwardHandle> {
  const resolver = new PortResolver(link);
  // Normal mode: a summary line when something changed; -v: a line per connection when it ends.
  const summary = new TrafficSummary(reporter, options.summaryIntervalMs);
  const sockets = new Set<Socket>();
  const servers: Server[] = [];
  const addresses: ForwardHandle['addresses'] = [];
  for (const spec of specs) {
    const targetText = `${spec.target.agent}${spec.target.port === undefined ? '' : `:${spec.target.port}`}`;
    const server = createServer({ pauseOnConnect: true, allowHalfOpen: true, noDelay: true }, (socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
      const started = performance.now();
      openTarget(link, direct, resolver, spec.target, settings.mode, options.openTimeoutMs).then(
        (opened) => {
          if (socket.destroyed) {
            opened.cancel('local connection closed while opening');
            return;
          }
          const from = `${socket.remoteAddress}:${socket.remotePort}`;
          reporter.detail(
            'stream-open',
            { target: targetText, path: opened.path, ms: Math.round((performance.now() - started) * 100) / 100 },
            `${from} -> ${targetText} via ${opened.path}`,
          );
          summary.opened();
          opened.bridge(socket).then((reset) => {
            if (reset) reporter.event('stream-reset', { target: targetText, code: reset.code, message: reset.message }, `${targetText}: stream reset: ${reset.code}: ${reset.message}`);
            // The local socket's counters are the connection's bytes: read from the application (up), written to it (down).
            const record = { path: opened.path, bytesUp: socket.bytesRead, bytesDown: socket.bytesWritten, failed: reset !== undefined };
            const durationMs = Math.round(performance.now() - started);
            summary.closed(record);
            reporter.detail(
              'stream-closed',
              { target: targetText, path: opened.path, bytesUp: record.bytesUp, bytesDown: record.bytesDown, durationMs, ...(reset ? { code: reset.code } : {}) },
              `${from} -> ${targetText} via ${opened.path}: ${formatBytes(record.bytesUp)} up, ${formatBytes(record.bytesDown)} down, ${durationMs >= 1000 ? `${Math.round(durationMs / 100) / 10} s` : `${durationMs} ms`}${reset ? `, ${reset.code}` : ''}`,
            );
          });
          socket.resume();
        },
        (error: Error & { code?: string; streamCode?: string }) => {
          reporter.event('stream-failed', { target: targetText, code: error.streamCode ?? error.code, message: error.message }, `${targetText}: ${error.streamCode ?? error.code}: ${error.message}`);
          // An abrupt reset tells the local application the connection failed, unlike a clean close.
          if (!socket.destroyed) socket.resetAndDestroy();
        },
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) =>
        reject(new CliError(CliErrorCode.LISTEN, `cannot listen on ${spec.localHost}:${spec.localPort}: ${error.code ?? error.message}`, ExitCode.USAGE, { cause: error })),
      );
      server.listen(spec.localPort, spec.localHost, () => resolve());
    });
    const address = server.address();
    const port = typeof address === 'object' && address ? address.port : spec.localPort;
    servers.push(server);
    addresses.push({ local: spec.localHost, port, agent: spec.target.agent, target: targetText });
  }
  // A target that is not in `ls` (a typo, an agent not attached yet) would fail only at the first connection: say so
  // once the session is up, and keep listening (the agent may attach later).
  link.once('open', () => {
    link.listAgents(options.openTimeoutMs).then(
      (agents) => {
        for (const spec of specs) {
          const { agent } = spec.target;
          const matches = agents.filter((a) => (agent.includes('/') ? `${a.namespace}/${a.name}` === agent : a.name === agent));
          if (matches.length > 0 && matches.some((a) => a.instances > 0)) continue;
          const why = matches.length === 0 ? `no agent "${agent}" that you may reach` : `agent "${agent}" has no connected instance`;
          reporter.event('target-unavailable', { agent, listed: matches.length > 0 }, `warning: ${why} (yet); connections to it fail until it attaches; see narrowlink ls`);
        }
      },
      () => undefined,
    );
  });
  return {
    servers,
    addresses,
    async close() {
      summary.stop();
      for (const server of servers) server.close();
      for (const socket of sockets) socket.destroy();
    },
  };
}
