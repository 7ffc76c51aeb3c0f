/**
 * The client's one gateway session and the operations every command needs on it.
 */
import dgram from 'node:dgram';
import type { ClientOpen, MuxStream, OpenOk } from '@narrowlink/protocol';
import { GatewayLink, LinkError } from '@narrowlink/peer-link';
import { CliError, CliErrorCode, ExitCode } from './errors.ts';
import type { Reporter } from './reporter.ts';
import type { Settings } from './settings.ts';
import type { Target } from './targets.ts';

/**
 * The UDP socket of the direct path (QUIC endpoint + NAT probes share it), bound to 0.0.0.0:0; `undefined` in
 * relay mode (nothing to punch) or when UDP is unavailable here.
 */
export async function openUdpSocket(settings: Settings): Promise<dgram.Socket | undefined> {
  if (settings.mode === 'relay') return undefined;
  const socket = dgram.createSocket('udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind({ address: '0.0.0.0', port: 0 }, () => {
        socket.off('error', reject);
        resolve();
      });
    });
  } catch {
    socket.close();
    return undefined;
  }
  // Stray ICMP errors surface here; they must not end the process.
  socket.on('error', () => {});
  socket.unref();
  return socket;
}

export function createLink(
  settings: Settings,
  reporter: Reporter | undefined,
  options: { reconnect: boolean; udpSocket?: dgram.Socket | undefined },
): GatewayLink {
  const link = new GatewayLink({
    url: settings.gateway,
    role: 'client',
    token: settings.token,
    ...(settings.caPem ? { caPem: settings.caPem } : {}),
    reconnect: options.reconnect,
    retryAuthFailures: false,
    software: 'narrowlink-cli',
    ...(options.udpSocket ? { udpSocket: options.udpSocket } : {}),
  });
  if (reporter) {
    link.on('state', (state: string) => {
      // A session that was open and dropped is a reconnect too (`reconnects` only counts retries already made).
      if (state === 'connecting' && (link.stats.reconnects > 0 || link.stats.connectedAt !== undefined)) {
        reporter.event('reconnecting', { error: link.stats.lastError?.code }, `gateway unavailable (${link.stats.lastError?.message ?? 'connection lost'}); reconnecting`);
      }
    });
    link.on('open', () => reporter.event('connected', { gateway: settings.gateway }, `connected to ${settings.gateway}`));
  }
  return link;
}

/** Maps a link failure to the CLI's exit code. */
export function exitCodeFor(error: unknown): ExitCode {
  if (error instanceof CliError) return error.exitCode;
  if (error instanceof LinkError) {
    if (error.status === 401 || error.status === 403 || error.gatewayCode?.startsWith('NL_ERR_AUTH_') || error.gatewayCode?.startsWith('NL_ERR_TOKEN_')) return ExitCode.AUTH;
    return ExitCode.UNREACHABLE;
  }
  return ExitCode.FAILURE;
}

/**
 * Resolves a target whose port was left out: fine when the agent exposes exactly one port.
 * Cached per agent for the life of the process.
 */
export class PortResolver {
  readonly #link: GatewayLink;
  readonly #cache = new Map<string, number>();
  constructor(link: GatewayLink) {
    this.#link = link;
  }
  async resolve(target: Target, timeoutMs: number): Promise<number | string> {
    if (target.port !== undefined) return target.port;
    const cached = this.#cache.get(target.agent);
    if (cached !== undefined) return cached;
    const agents = await this.#link.listAgents(timeoutMs);
    const matches = agents.filter((a) => (target.agent.includes('/') ? `${a.namespace}/${a.name}` === target.agent : a.name === target.agent));
    const only = matches.length === 1 && matches[0]?.ports.length === 1 ? matches[0].ports[0] : undefined;
    if (!only) {
      const ports = matches.flatMap((a) => a.ports.map((p) => `${p.name}=${p.port}`)).join(', ');
      throw new CliError(
        CliErrorCode.AMBIGUOUS_PORT,
        matches.length === 0 ? `no agent "${target.agent}" that you may reach` : `agent "${target.agent}" exposes several ports (${ports}); name one as ${target.agent}:PORT`,
        ExitCode.FAILURE,
      );
    }
    this.#cache.set(target.agent, only.port);
    return only.port;
  }
}

export async function openTarget(
  link: GatewayLink,
  resolver: PortResolver,
  target: Target,
  mode: ClientOpen['mode'],
  timeoutMs: number,
): Promise<{ stream: MuxStream; ok: OpenOk }> {
  const port = await resolver.resolve(target, timeoutMs);
  return await link.openStream({ agent: target.agent, port, ...(mode ? { mode } : {}) }, timeoutMs);
}
