/**
 * The client's one gateway session and the operations every command needs on it.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { type ClientOpen, isAuthRefusalCode, isTokenCode, type MuxStream, StreamErrorCode, StreamResetError } from '@narrowlink/protocol';
import { MuxDuplex } from '@narrowlink/protocol/stream';
import {
  bridgeDirect,
  bridgeSocket,
  DirectError,
  DirectErrorCode,
  type DirectPathStatus,
  ClientDirectPaths,
  type DirectStream,
  GatewayLink,
  generateIdentity,
  LinkError,
  LinkErrorCode,
  type LinkLogger,
  type LinkRetry,
  quicUnavailableReason,
} from '@narrowlink/peer-link';
import { CliError, CliErrorCode, ExitCode } from './errors.ts';
import type { Reporter } from './reporter.ts';
import type { Settings } from './settings.ts';
import type { Target } from './targets.ts';

/**
 * The direct path (QUIC endpoint; NAT probes and punches share its UDP socket, bound to 0.0.0.0:0), or
 * `undefined` in relay mode (nothing to punch) or when UDP is unavailable here.
 */
export async function openDirectPaths(settings: Settings): Promise<ClientDirectPaths | undefined> {
  if (settings.mode === 'relay') return undefined;
  // Where the native QUIC binding cannot load (no prebuilt binary for this platform, the single executable), the
  // CLI works on the relay: say so once, with why, instead of failing later or silently.
  const unavailable = quicUnavailableReason();
  if (unavailable !== undefined) {
    process.stderr.write(`narrowlink: running relay-only: ${unavailable}\n`);
    return undefined;
  }
  try {
    const paths = await ClientDirectPaths.create({ identity: await generateIdentity({ commonName: 'narrowlink-client' }) });
    paths.socket.unref();
    return paths;
  } catch {
    return undefined;
  }
}

export function createLink(
  settings: Settings,
  reporter: Reporter | undefined,
  options: {
    reconnect: boolean;
    direct?: ClientDirectPaths | undefined;
    keepListening?: boolean;
    /** One-shot commands: a definitive answer (refused, no such host, TLS, not a gateway) fails at once. */
    failFast?: boolean;
    /** `-v`: the link's own log lines (dial attempts, retries, session events) on stderr. */
    log?: LinkLogger | undefined;
  },
): GatewayLink {
  let everOpen = false;
  const link = new GatewayLink({
    url: settings.gateway,
    role: 'client',
    token: settings.token,
    ...(settings.caPem ? { caPem: settings.caPem } : {}),
    // A login token is bound to this key: the link sends a proof of possession with every upgrade and re-auth.
    ...(settings.proofKey ? { proofKey: settings.proofKey } : {}),
    reconnect: options.reconnect,
    failFast: options.failFast ?? false,
    ...(options.log ? { log: options.log } : {}),
    // A refusal is final, except for a long-running command on a login whose session worked before: its token
    // expired while the kubeconfig credential could not renew it, and the renewer keeps trying on every dial, so
    // the command keeps listening and recovers once the user refreshes their cluster credential. Read by the link
    // at each failure.
    get retryAuthFailures() {
      return options.keepListening === true && settings.login !== undefined && everOpen;
    },
    software: 'narrowlink-cli',
    ...(options.direct ? { udpSocket: options.direct.socket, certFingerprint: options.direct.fingerprint } : {}),
  });
  link.once('open', () => {
    everOpen = true;
  });
  options.direct?.attach(link);
  if (reporter) {
    // Every retry is scheduled with its delay and cause; the user hears of it once per change of cause (a gateway
    // that stays down is one line, not one per attempt; -v shows each attempt), and again after a session worked.
    let reportedCause: string | undefined;
    link.on('retry', (retry: LinkRetry) => {
      const cause = retry.error?.code ?? 'SESSION_LOST';
      if (cause === reportedCause && !reporter.verbose) return;
      reportedCause = cause;
      const seconds = retry.delayMs >= 1000 ? `${Math.round(retry.delayMs / 100) / 10} s` : `${Math.round(retry.delayMs)} ms`;
      reporter.event(
        'reconnecting',
        { error: retry.error?.code, message: retry.error?.message, attempt: retry.attempt, delayMs: Math.round(retry.delayMs) },
        `reconnecting in ${seconds}: ${retry.error ? `${retry.error.code}: ${retry.error.message}` : 'the gateway session was lost'}`,
      );
    });
    link.on('open', () => {
      reportedCause = undefined;
      reporter.event('connected', { gateway: settings.gateway }, `connected to ${settings.gateway}`);
    });
    options.direct?.on('path', (path: DirectPathStatus) => {
      if (path.state === 'up') {
        reporter.event(
          'direct-up',
          { agent: path.peer, remote: path.remote, via: path.via, strategy: path.strategy, ms: path.readyInMs },
          `direct path to ${path.peer} up via ${path.via} (${path.remote?.address}:${path.remote?.port}) in ${path.readyInMs} ms; new streams use it`,
        );
      } else {
        reporter.event(
          'direct-failed',
          { agent: path.peer, reason: path.reason, message: path.message, retryInMs: path.retryInMs },
          `no direct path to ${path.peer}: ${path.reason}: ${path.message}; streams use the relay${path.retryInMs ? `, retrying in ${Math.round(path.retryInMs / 1000)} s` : ''}`,
        );
      }
    });
  }
  return link;
}

/**
 * The next step for a credential refusal, appended to the gateway's message (which names the cause): the gateway
 * speaks to every kind of peer, so the CLI says what a developer does about it. Undefined for other errors, whose
 * messages carry their fix already.
 */
export function credentialHint(error: unknown, program = 'narrowlink'): string | undefined {
  if (!(error instanceof LinkError) || exitCodeFor(error) !== ExitCode.AUTH) return undefined;
  if (error.status === 403) return 'this gateway endpoint does not take that token: use a client token (not an agent token)';
  return `get a fresh token with ${program} login, or pass a valid client token with --token / --token-file`;
}

/** Maps a link failure to the CLI's exit code. */
export function exitCodeFor(error: unknown): ExitCode {
  if (error instanceof CliError) return error.exitCode;
  if (error instanceof LinkError) {
    // A URL refused before dialing is the user's configuration, not the network.
    if (error.code === LinkErrorCode.INSECURE_URL) return ExitCode.USAGE;
    if (error.status === 401 || error.status === 403 || isAuthRefusalCode(error.gatewayCode) || isTokenCode(error.gatewayCode)) return ExitCode.AUTH;
    // The gateway answered: it is reachable, it refused this request for now.
    if (error.code === LinkErrorCode.RATE_LIMITED) return ExitCode.FAILURE;
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

/** The longest `direct` mode waits for a path: the gateway's punch budget (3 s) plus the QUIC handshake (3 s). */
export const DIRECT_WAIT_MS = 8000;

/** A stream to an agent's port, on whichever path carried it. */
export interface OpenedStream {
  path: 'relay' | 'direct';
  /** The stream as a Duplex (reading, writing, half-close). */
  duplex(): Duplex;
  /** Joins a local socket to the stream both ways; resolves when done, with why it failed, if it did. */
  bridge(socket: Socket): Promise<{ code: string; message: string } | undefined>;
  /** Gives the stream up before bridging (the local side went away). */
  cancel(message: string): void;
}

function relayOpened(stream: MuxStream): OpenedStream {
  return {
    path: 'relay',
    duplex: () => new MuxDuplex(stream),
    bridge: async (socket) => {
      const reset = await bridgeSocket(socket, stream).done;
      return reset ? { code: reset.streamCode, message: reset.message } : undefined;
    },
    cancel: (message) => stream.reset(StreamErrorCode.CANCELLED, message),
  };
}

function directOpened(stream: DirectStream): OpenedStream {
  return {
    path: 'direct',
    duplex: () => stream,
    bridge: async (socket) => {
      const error = await bridgeDirect(socket, stream).done;
      return error ? { code: (error as { code?: string }).code ?? DirectErrorCode.STREAM_RESET, message: error.message } : undefined;
    },
    cancel: () => stream.destroy(),
  };
}

/**
 * Opens a stream to `target` as `mode` says:
 * - `relay`: through the gateway.
 * - `auto`: over the direct path when one is up (a stream the path fails before the agent answered is retried on
 *   the relay: it sent nothing yet); otherwise through the gateway at once, and a direct path is asked for in the
 *   background so later streams can use it. When the gateway does not relay this target (RELAY_NOT_OFFERED: the
 *   agent or the policy offers Direct only), it waits for the direct path as `direct` does.
 * - `direct`: over the direct path only, waiting for it (bounded by DIRECT_WAIT_MS); rejects with
 *   NL_ERR_DIRECT_UNAVAILABLE and the reason when there is none.
 */
export async function openTarget(
  link: GatewayLink,
  direct: ClientDirectPaths | undefined,
  resolver: PortResolver,
  target: Target,
  mode: ClientOpen['mode'],
  timeoutMs: number,
): Promise<OpenedStream> {
  const port = await resolver.resolve(target, timeoutMs);
  const whenUp = async (paths: ClientDirectPaths): Promise<OpenedStream> => {
    await paths.waitUp(target.agent, Math.min(timeoutMs, DIRECT_WAIT_MS));
    return directOpened(await paths.openStream(target.agent, { port }));
  };
  if (mode === 'direct') {
    if (!direct) throw new DirectError(DirectErrorCode.UNAVAILABLE, 'mode direct, but no UDP socket could be bound here', { reason: 'NoSocket' });
    await link.waitOpen(timeoutMs);
    return await whenUp(direct);
  }
  // auto (the default): the direct path when it is up, the relay otherwise; relay: never the direct path.
  const auto = mode === 'relay' ? undefined : direct;
  if (auto?.transport(target.agent)) {
    try {
      return directOpened(await auto.openStream(target.agent, { port }));
    } catch (error) {
      // The agent refused (policy, dial): the relay would say the same.
      if (error instanceof StreamResetError) throw error;
    }
  }
  let stream: MuxStream;
  try {
    ({ stream } = await link.openStream({ agent: target.agent, port, ...(mode ? { mode } : {}) }, timeoutMs));
  } catch (error) {
    // The agent or the policy offers this target over the direct path only: auto mode waits for it.
    if (!(auto && error instanceof StreamResetError && error.streamCode === StreamErrorCode.RELAY_NOT_OFFERED)) throw error;
    return await whenUp(auto);
  }
  auto?.request(target.agent);
  return relayOpened(stream);
}
