#!/usr/bin/env node
/**
 * narrowlink-gateway: loads its configuration, listens, relays, drains on SIGTERM/SIGINT.
 * Every option is a flag or an environment variable (NARROWLINK_GATEWAY_<FLAG>).
 */
import { readFileSync } from 'node:fs';
import type { Server as HttpsServer } from 'node:https';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { podNamespace } from '@narrowlink/kube';
import {
  DEFAULT_GATEWAY_CONFIG_SECRET_NAME,
  DEFAULT_PROOF_MAX_AGE_SECONDS,
  DEFAULT_SEND_HIGH_WATER_BYTES,
  DEFAULT_INITIAL_STREAM_WINDOW,
  DEFAULT_STREAM_WINDOW,
  ErrorCode,
  type GatewayConfig,
  LOG_FORMATS,
  type LogFormat,
  prettyDestination,
  processLoggerOptions,
  wantsPretty,
} from '@narrowlink/protocol';
import { type Logger, pino } from 'pino';
import { buildAdminApp, buildApp } from './app.ts';
import { loadFromDefaultOrFile } from './kube.ts';
import { type ConfigSource, FileConfigSource } from './config-source.ts';
import { KubeSecretConfigSource } from './kube-config-source.ts';
import { StatusReporter } from './status-reporter.ts';
import { TlsReloader } from './tls-reloader.ts';
import { KubeTokenReviewer } from './token-review.ts';
import { DEFAULT_PROCESS_BUFFER_BYTES, DEFAULT_SESSION_BUFFER_BYTES } from './buffer-budget.ts';
import { GatewayErrorCode } from './errors.ts';
import { Gateway } from './gateway.ts';
import { createMetrics, type GatewayMetrics } from './metrics.ts';
import { DEFAULT_STREAM_IDLE_TIMEOUT_MS, DEFAULT_STREAM_SHARES } from './stream-shares.ts';
import { NatProbeServer } from './nat-probe.ts';
import { runTokenCommand } from './token-command.ts';
import { DEFAULT_IDENTITY_RATE_LIMITS, DEFAULT_RATE_LIMITS, type IdentityRateLimits, parseRateLimit, type RateLimit, type RateLimits } from './rate-limit.ts';
import { DEFAULT_OPEN_ADMISSION } from './open-admission.ts';

const HELP = `narrowlink-gateway: relays Narrowlink sessions between clients and agents

Usage: narrowlink-gateway --config FILE [options]
       narrowlink-gateway token create --key FILE (--user U [--group G ...] | --agent NS/NAME) --ttl 8h
                          (mints a token; see narrowlink-gateway token --help)

Options (each also as env NARROWLINK_GATEWAY_<NAME>, e.g. NARROWLINK_GATEWAY_LISTEN):
  --config FILE        gateway configuration (YAML or JSON), hot-reloaded on change
  --config-source SRC  file (default; needs --config) or kubernetes (a Secret, hot-reloaded)
  --config-secret NAME with kubernetes: the Secret written by the operator (default ${DEFAULT_GATEWAY_CONFIG_SECRET_NAME})
  --config-namespace NS  with kubernetes: its namespace (default: this pod's namespace)
  --kubeconfig FILE    with kubernetes: credentials (default: in-cluster, or $KUBECONFIG)
  --token-review BOOL  accept injected sidecars' ServiceAccount tokens via TokenReview
                       (default true with --config-source kubernetes, else false)
  --report-status BOOL with kubernetes: publish attached agents in a Lease per replica, which the
                       operator turns into agent status (default true with --config-source kubernetes)
  --identity NAME      this replica's name in that Lease (default: $POD_NAME or the hostname)
  --status-period-ms N how often that Lease is renewed, ms; it lasts three periods (default 10000)
  --listen HOST:PORT   address to listen on (default 0.0.0.0:8443; port 0 picks one)
  --admin-listen HOST:PORT  plain-HTTP address of /healthz, /readyz and /metrics, which the
                       --listen address does not serve (default 127.0.0.1:9090; when that default
                       port is taken the gateway runs without it; port 0 picks one)
  --tls-cert FILE      TLS certificate chain (PEM); required unless HOST is loopback
  --tls-key FILE       TLS private key (PEM)
  --drain-ms N         on SIGTERM, wait up to N ms for open streams (default 10000)
  --stream-window N    per-stream flow-control window in bytes (default 4194304)
  --initial-stream-window N  the window a stream starts with; it doubles while the stream's
                       reader keeps up, up to --stream-window (default 262144)
  --agent-streams-per-session N  relayed streams (opening or open) one client session may hold
                       to one agent; beyond it OPENs get SHARE_EXCEEDED (default 256)
  --agent-streams-per-identity N  the same for one identity (token sub) over all its sessions
                       (default 1024; an agent takes 4096 streams in all)
  --agent-streams-reserve N  the last N streams of each agent (at most a quarter of it) are kept for
                       identities holding fewer than --agent-streams-reserve-floor streams to it; others
                       get SHARE_EXCEEDED there (default 1024; 0 turns the reserve off)
  --agent-streams-reserve-floor N  see above (default 64)
  --open-admission-per-agent N  OPENs one agent instance may be dialling at once; more wait in a
                       queue served lightest identity first (default 64)
  --open-admission-per-identity N  OPENs one identity may have an agent instance dial at once
                       (default 16)
  --stream-idle-timeout-ms N  reset a relayed stream that carried no bytes either way for N ms
                       with IDLE_TIMEOUT (default 14400000, 4 h; 0 turns it off)
  --session-buffer-bytes N  bytes one session may make the gateway hold (unsent, plus a client's
                       relayed streams' queues) while it does not read: over it and stalled for 1 s, or
                       over 4x it, its streams are reset and it is closed with 4413
                       NL_ERR_GATEWAY_BUFFER_LIMIT (default 67108864, 64 MiB)
  --process-buffer-bytes N  the same for all sessions together; over it the largest stalled
                       session is closed, over 2x it the largest (default 67108864, 64 MiB)
  --send-high-water-bytes N  unsent bytes of a session above which its streams wait and its
                       socket is not read (default 1048576)
  --rate-limit-open R:B  per client session: OPENs per second R, bursts of B (default 1000:2000);
                       over it the OPEN is reset RATE_LIMITED. Each --rate-limit-* takes R:B, or 0 (off)
  --rate-limit-list-agents R:B  per session: list_agents requests (default 5:20)
  --rate-limit-direct-request R:B  per session: direct_request messages (default 10:50)
  --rate-limit-reauth R:B  per session: reauth messages (default 0.2:10)
  --rate-limit-ping R:B  per session: PINGs answered; over it a PING gets no PONG (default 10:100)
  --rate-limit-abuse R:B  refusals a session may collect (B, refilled at R per second) before it
                       is closed with 4429 NL_ERR_GATEWAY_RATE_LIMITED (default 100:1000)
  --identity-rate-limit-open R:B  the same per identity over all its sessions, so that
                       reconnecting starts nothing afresh (default 2000:4000)
  --identity-rate-limit-list-agents R:B  per identity (default 10:40)
  --identity-rate-limit-direct-request R:B  per identity (default 20:100)
  --identity-rate-limit-reauth R:B  per identity (default 0.5:20)
  --identity-rate-limit-ping R:B  per identity (default 20:200)
  --identity-rate-limit-abuse R:B  refusals of all an identity's sessions together (default 100:1000)
  --identity-rate-limit-connect R:B  new sessions of one identity; over it a session is closed 4429
                       before its hello (default 10:200)
  --nat-probe-address IP  address of the UDP NAT probe ports (direct path); must be a specific
                       address (default: the --listen host when it is one; else probing is off)
  --nat-probe-port N   first of the two UDP probe ports N, N+1 (default 3478; 0 disables probing)
  --nat-probe-second-address IP  a second public address for the same probe ports (finer NAT
                       filtering tests)
  --nat-probe-advertise IP[,IP2]  the address(es) peers are told to probe, when they reach the probe
                       ports through a load balancer (its public IPs; default: the bound addresses)
  --public-url URL     the gateway's URL as clients dial it (wss://gw.example.com), when a proxy in front
                       terminates TLS or rewrites Host: key-bound tokens' proofs must name it
                       (default: the URL each request reached this listener with)
  --proof-max-age-seconds N  how far a key-bound token's proof may be issued from this gateway's
                       clock, either way (default 60)
  --log-level LEVEL    trace|debug|info|warn|error (default info)
  --log-format FMT     auto|json|pretty: pretty = human lines (local time, level names), auto = pretty on a
                       terminal, JSON lines otherwise (default auto)
  -h, --help           show this help
`;

function option(values: Record<string, string | boolean | undefined>, name: string, fallback?: string): string | undefined {
  const fromFlag = values[name];
  if (typeof fromFlag === 'string') return fromFlag;
  const env = process.env[`NARROWLINK_GATEWAY_${name.toUpperCase().replaceAll('-', '_')}`];
  return env && env.length > 0 ? env : fallback;
}

function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1';
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      config: { type: 'string' },
      'config-source': { type: 'string' },
      'config-secret': { type: 'string' },
      'config-namespace': { type: 'string' },
      kubeconfig: { type: 'string' },
      'token-review': { type: 'string' },
      'report-status': { type: 'string' },
      identity: { type: 'string' },
      'status-period-ms': { type: 'string' },
      listen: { type: 'string' },
      'admin-listen': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'drain-ms': { type: 'string' },
      'stream-window': { type: 'string' },
      'initial-stream-window': { type: 'string' },
      'agent-streams-per-session': { type: 'string' },
      'agent-streams-per-identity': { type: 'string' },
      'stream-idle-timeout-ms': { type: 'string' },
      'session-buffer-bytes': { type: 'string' },
      'process-buffer-bytes': { type: 'string' },
      'send-high-water-bytes': { type: 'string' },
      'rate-limit-open': { type: 'string' },
      'rate-limit-list-agents': { type: 'string' },
      'rate-limit-direct-request': { type: 'string' },
      'rate-limit-reauth': { type: 'string' },
      'rate-limit-ping': { type: 'string' },
      'rate-limit-abuse': { type: 'string' },
      'identity-rate-limit-open': { type: 'string' },
      'identity-rate-limit-list-agents': { type: 'string' },
      'identity-rate-limit-direct-request': { type: 'string' },
      'identity-rate-limit-reauth': { type: 'string' },
      'identity-rate-limit-ping': { type: 'string' },
      'identity-rate-limit-abuse': { type: 'string' },
      'identity-rate-limit-connect': { type: 'string' },
      'agent-streams-reserve': { type: 'string' },
      'agent-streams-reserve-floor': { type: 'string' },
      'open-admission-per-agent': { type: 'string' },
      'open-admission-per-identity': { type: 'string' },
      'nat-probe-address': { type: 'string' },
      'nat-probe-port': { type: 'string' },
      'nat-probe-second-address': { type: 'string' },
      'nat-probe-advertise': { type: 'string' },
      'public-url': { type: 'string' },
      'proof-max-age-seconds': { type: 'string' },
      'log-level': { type: 'string' },
      'log-format': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const logFormat = option(values, 'log-format', 'auto') as LogFormat;
  if (!LOG_FORMATS.includes(logFormat)) {
    process.stderr.write(`narrowlink-gateway: ${GatewayErrorCode.USAGE}: --log-format must be auto, json or pretty, got "${logFormat}"\n`);
    process.exit(2);
  }
  // Root lines carry `service: gateway`, children `component` (session, tls, http, …): no key twice in a line.
  const log = pino(
    processLoggerOptions({
      service: 'gateway',
      level: option(values, 'log-level', 'info') as string,
      redactPaths: ['token', '*.token', 'authorization', '*.authorization', 'headers.authorization', '*.headers.authorization'],
    }),
    wantsPretty(logFormat, process.stdout) ? prettyDestination(process.stdout) : undefined,
  );
  const fail = (code: string, message: string): never => {
    log.fatal({ code }, message);
    process.stderr.write(`narrowlink-gateway: ${code}: ${message}\n`);
    process.exit(2);
  };
  const sourceKind = option(values, 'config-source', 'file') as string;
  if (sourceKind !== 'file' && sourceKind !== 'kubernetes') fail(GatewayErrorCode.USAGE, `--config-source must be file or kubernetes, got "${sourceKind}"`);
  const configPath = option(values, 'config');
  if (sourceKind === 'file' && !configPath) fail(GatewayErrorCode.USAGE, 'missing --config FILE (see --help)');
  const listen = option(values, 'listen', '0.0.0.0:8443') as string;
  const split = listen.lastIndexOf(':');
  const host = listen.slice(0, split).replace(/^\[|\]$/g, '');
  const port = Number(listen.slice(split + 1));
  if (split < 0 || !Number.isInteger(port) || port < 0 || port > 65535) fail(GatewayErrorCode.USAGE, `--listen wants HOST:PORT, got "${listen}"`);
  const adminListen = option(values, 'admin-listen');
  const admin = parseHostPort(adminListen ?? DEFAULT_ADMIN_LISTEN);
  if (!admin) fail(GatewayErrorCode.USAGE, `--admin-listen wants HOST:PORT, got "${adminListen}"`);
  const certFile = option(values, 'tls-cert');
  const keyFile = option(values, 'tls-key');
  if (Boolean(certFile) !== Boolean(keyFile)) fail(GatewayErrorCode.USAGE, '--tls-cert and --tls-key go together');
  if (!certFile && !isLoopbackHost(host)) {
    fail(GatewayErrorCode.INSECURE_LISTEN, `refusing plain ws:// on ${host}: give --tls-cert/--tls-key, or listen on loopback`);
  }
  const drainMs = Number(option(values, 'drain-ms', '10000'));
  const streamWindow = Number(option(values, 'stream-window', String(DEFAULT_STREAM_WINDOW)));
  const integerOption = (name: string, fallback: number, min: number): number => {
    const text = option(values, name, String(fallback)) as string;
    const value = Number(text);
    if (!Number.isInteger(value) || value < min) fail(GatewayErrorCode.USAGE, `--${name} wants an integer >= ${min}, got "${text}"`);
    return value;
  };
  const streamShares = {
    perSession: integerOption('agent-streams-per-session', DEFAULT_STREAM_SHARES.perSession, 1),
    perIdentity: integerOption('agent-streams-per-identity', DEFAULT_STREAM_SHARES.perIdentity, 1),
    reserve: integerOption('agent-streams-reserve', DEFAULT_STREAM_SHARES.reserve, 0),
    reserveFloor: integerOption('agent-streams-reserve-floor', DEFAULT_STREAM_SHARES.reserveFloor, 1),
  };
  const openAdmission = {
    perAgent: integerOption('open-admission-per-agent', DEFAULT_OPEN_ADMISSION.perAgent, 1),
    perIdentity: integerOption('open-admission-per-identity', DEFAULT_OPEN_ADMISSION.perIdentity, 1),
  };
  const streamIdleTimeoutMs = integerOption('stream-idle-timeout-ms', DEFAULT_STREAM_IDLE_TIMEOUT_MS, 0);
  const sessionBufferBytes = integerOption('session-buffer-bytes', DEFAULT_SESSION_BUFFER_BYTES, 1024 * 1024);
  const processBufferBytes = integerOption('process-buffer-bytes', DEFAULT_PROCESS_BUFFER_BYTES, 1024 * 1024);
  // The hello schema's smallest window is 16 KiB; the Gateway caps it at --stream-window.
  const initialStreamWindow = integerOption('initial-stream-window', DEFAULT_INITIAL_STREAM_WINDOW, 16 * 1024);
  const sendHighWaterBytes = integerOption('send-high-water-bytes', DEFAULT_SEND_HIGH_WATER_BYTES, 16 * 1024);
  const proofMaxAgeSeconds = integerOption('proof-max-age-seconds', DEFAULT_PROOF_MAX_AGE_SECONDS, 1);
  const publicUrl = option(values, 'public-url');
  if (publicUrl !== undefined && !/^wss?:\/\/[^/?#@\s]+\/?$/.test(publicUrl)) fail(GatewayErrorCode.USAGE, `--public-url wants ws(s)://HOST[:PORT], got "${publicUrl}"`);
  const rateLimit = (name: string, fallback: RateLimit): RateLimit => {
    const text = option(values, name);
    if (text === undefined) return fallback;
    return parseRateLimit(text) ?? fail(GatewayErrorCode.USAGE, `--${name} wants PER_SECOND:BURST (e.g. 10:50) or 0 (off), got "${text}"`);
  };
  const rateLimits: RateLimits = {
    open: rateLimit('rate-limit-open', DEFAULT_RATE_LIMITS.open),
    listAgents: rateLimit('rate-limit-list-agents', DEFAULT_RATE_LIMITS.listAgents),
    directRequest: rateLimit('rate-limit-direct-request', DEFAULT_RATE_LIMITS.directRequest),
    reauth: rateLimit('rate-limit-reauth', DEFAULT_RATE_LIMITS.reauth),
    ping: rateLimit('rate-limit-ping', DEFAULT_RATE_LIMITS.ping),
    abuse: rateLimit('rate-limit-abuse', DEFAULT_RATE_LIMITS.abuse),
  };
  const identityRateLimits: IdentityRateLimits = {
    open: rateLimit('identity-rate-limit-open', DEFAULT_IDENTITY_RATE_LIMITS.open),
    listAgents: rateLimit('identity-rate-limit-list-agents', DEFAULT_IDENTITY_RATE_LIMITS.listAgents),
    directRequest: rateLimit('identity-rate-limit-direct-request', DEFAULT_IDENTITY_RATE_LIMITS.directRequest),
    reauth: rateLimit('identity-rate-limit-reauth', DEFAULT_IDENTITY_RATE_LIMITS.reauth),
    ping: rateLimit('identity-rate-limit-ping', DEFAULT_IDENTITY_RATE_LIMITS.ping),
    abuse: rateLimit('identity-rate-limit-abuse', DEFAULT_IDENTITY_RATE_LIMITS.abuse),
    connect: rateLimit('identity-rate-limit-connect', DEFAULT_IDENTITY_RATE_LIMITS.connect),
  };

  const metrics = createMetrics();
  const natProbe = await startNatProbe(values, host, metrics, log, fail);
  const useTokenReview = (option(values, 'token-review', sourceKind === 'kubernetes' ? 'true' : 'false') as string) === 'true';
  const tokenReviewer = useTokenReview ? new KubeTokenReviewer(await loadFromDefaultOrFile(option(values, 'kubeconfig'))) : undefined;
  // Created once the gateway listens and is configured (below), with --report-status.
  let reporter: StatusReporter | undefined;
  const gateway = new Gateway({
    log,
    metrics,
    streamWindow,
    initialStreamWindow,
    rateLimits,
    streamShares,
    openAdmission,
    identityRateLimits,
    streamIdleTimeoutMs,
    sessionBufferBytes,
    processBufferBytes,
    sendHighWaterBytes,
    proofMaxAgeSeconds,
    ...(tokenReviewer ? { tokenReviewer } : {}),
    ...(natProbe ? { natProbe } : {}),
    onAgentsChanged: () => reporter?.changed(),
  });
  const source: ConfigSource =
    sourceKind === 'file' ? new FileConfigSource(configPath as string) : await kubernetesSource(values, log, fail);
  const describeSource = sourceKind === 'file' ? String(configPath) : 'the config Secret';
  const onReload = (config: GatewayConfig): void => {
    gateway.applyConfig(config);
    metrics.configReloads.inc({ result: 'ok' });
    log.child({}, { level: 'info' }).info({ event: 'config-reloaded', agents: config.agents.length, policies: config.policies.length }, 'configuration reloaded');
  };
  const onRejected = (error: Error): void => {
    metrics.configReloads.inc({ result: 'invalid' });
    log.error({ err: error, code: (error as { code?: string }).code }, 'configuration rejected; keeping the previous one');
  };
  let firstConfig: GatewayConfig | Promise<GatewayConfig>;
  try {
    // The file source answers at once (and a bad file stops the gateway here); the Kubernetes source
    // resolves once its Secret holds a valid document, and the gateway listens (not ready) meanwhile.
    firstConfig = source.start(onReload, onRejected);
  } catch (error) {
    return fail((error as { code?: string }).code ?? ErrorCode.CONFIG_PARSE, `cannot load ${describeSource}: ${(error as Error).message}`);
  }

  const tls = certFile && keyFile ? { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') } : undefined;
  const app = buildApp({ gateway, log, ...(tls ? { tls } : {}), ...(publicUrl ? { publicUrl } : {}) });
  await app.listen({ host, port });
  // cert-manager rotates the certificate: new handshakes pick it up, sessions stay.
  const tlsReloader = tls && certFile && keyFile ? new TlsReloader(app.server as unknown as HttpsServer, certFile, keyFile, log.child({ component: 'tls' }, { level: 'info' }), tls).start() : undefined;
  const address = app.server.address();
  const boundPort = typeof address === 'object' && address ? address.port : port;
  const scheme = tls ? 'wss' : 'ws';
  const urlHost = host.includes(':') ? `[${host}]` : host;
  // Lifecycle events are printed whatever the log level: supervisors and tests wait for them.
  const events = log.child({}, { level: 'info' });
  const url = `${scheme}://${urlHost}:${boundPort}`;
  const adminApp = await listenAdmin(gateway, log, admin as HostPort, adminListen !== undefined, fail);
  const adminAddress = adminApp?.server.address();
  const adminFields =
    adminApp && typeof adminAddress === 'object' && adminAddress
      ? { adminUrl: `http://${admin?.host.includes(':') ? `[${admin.host}]` : admin?.host}:${adminAddress.port}`, adminPort: adminAddress.port }
      : {};
  events.info({ event: 'listening', url, port: boundPort, pid: process.pid, ...adminFields }, 'gateway listening');
  gateway.applyConfig(await firstConfig);
  metrics.configReloads.inc({ result: 'ok' });
  const natProbePorts = natProbe?.endpoints.map((e) => ({ address: e.address, port: e.port }));
  events.info({ event: 'ready', url, port: boundPort, pid: process.pid, ...adminFields, ...(natProbePorts ? { natProbePorts } : {}) }, 'gateway configured and ready');
  const reportStatus = (option(values, 'report-status', sourceKind === 'kubernetes' ? 'true' : 'false') as string) === 'true';
  if (reportStatus) {
    const namespace = option(values, 'config-namespace') ?? podNamespace();
    if (!namespace) return fail(GatewayErrorCode.USAGE, '--report-status needs --config-namespace outside a pod');
    const periodMs = Number(option(values, 'status-period-ms', '10000'));
    if (!Number.isInteger(periodMs) || periodMs < 100) return fail(GatewayErrorCode.USAGE, '--status-period-ms wants an integer >= 100');
    reporter = new StatusReporter(await loadFromDefaultOrFile(option(values, 'kubeconfig')), {
      namespace,
      identity: option(values, 'identity') ?? process.env.POD_NAME ?? hostname(),
      snapshot: () => gateway.attachedAgents(),
      ...(process.env.POD_NAME && process.env.POD_UID ? { ownerPod: { name: process.env.POD_NAME, uid: process.env.POD_UID } } : {}),
      periodMs,
      log: log.child({ component: 'status' }),
    });
    reporter.start();
  }

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    source.stop();
    tlsReloader?.stop();
    await gateway.shutdown(drainMs);
    await reporter?.stop();
    await app.close();
    await adminApp?.close();
    await natProbe?.close();
    log.info({ event: 'stopped' }, 'gateway stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

const DEFAULT_ADMIN_LISTEN = '127.0.0.1:9090';

interface HostPort {
  host: string;
  port: number;
}

function parseHostPort(text: string): HostPort | undefined {
  const split = text.lastIndexOf(':');
  const port = Number(text.slice(split + 1));
  const host = text.slice(0, split).replace(/^\[|\]$/g, '');
  if (split <= 0 || host === '' || text.slice(split + 1) === '' || !Number.isInteger(port) || port < 0 || port > 65535) return undefined;
  return { host, port };
}

/**
 * The admin listener (health, readiness, metrics). When only the default asked for it and its port is taken
 * (another gateway, or a Prometheus, on 9090), the gateway runs without it; an explicit address makes that fatal.
 */
async function listenAdmin(
  gateway: Gateway,
  log: Logger,
  address: HostPort,
  explicit: boolean,
  fail: (code: string, message: string) => never,
): Promise<ReturnType<typeof buildAdminApp> | undefined> {
  const adminApp = buildAdminApp({ gateway, log });
  try {
    await adminApp.listen(address);
    return adminApp;
  } catch (error) {
    await adminApp.close();
    const message = `cannot listen on ${address.host}:${address.port} for /healthz, /readyz and /metrics: ${(error as Error).message}`;
    if (explicit) return fail(GatewayErrorCode.USAGE, `--admin-listen: ${message}`);
    log.warn({ err: (error as Error).message }, `${message}; running without them (set --admin-listen)`);
    return undefined;
  }
}

/**
 * The UDP probe ports, unless disabled (port 0) or there is no specific address to bind. When the defaults
 * alone asked for them and they cannot be bound (another gateway on the host holds 3478), the gateway runs
 * without probing (relay only); flags that name them explicitly make that fatal.
 */
async function startNatProbe(
  values: Record<string, string | boolean | undefined>,
  listenHost: string,
  metrics: GatewayMetrics,
  log: Logger,
  fail: (code: string, message: string) => never,
): Promise<NatProbeServer | undefined> {
  const portText = option(values, 'nat-probe-port', '3478') as string;
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65_534) return fail(GatewayErrorCode.USAGE, `--nat-probe-port wants 0..65534, got "${portText}"`);
  if (port === 0) return undefined;
  const explicitAddress = option(values, 'nat-probe-address');
  const secondAddress = option(values, 'nat-probe-second-address');
  const specific = (a: string): boolean => isIP(a) !== 0 && a !== '0.0.0.0' && a !== '::';
  const address = explicitAddress ?? (specific(listenHost) ? listenHost : undefined);
  if (explicitAddress !== undefined && !specific(explicitAddress)) return fail(GatewayErrorCode.USAGE, `--nat-probe-address wants a specific IP address, got "${explicitAddress}"`);
  if (secondAddress !== undefined && !specific(secondAddress)) {
    return fail(GatewayErrorCode.USAGE, `--nat-probe-second-address wants a specific IP address, got "${secondAddress}"`);
  }
  const advertise = option(values, 'nat-probe-advertise')?.split(',').map((a) => a.trim()).filter((a) => a.length > 0) ?? [];
  if (advertise.some((a) => !specific(a)) || advertise.length > 2) return fail(GatewayErrorCode.USAGE, `--nat-probe-advertise wants one or two specific IP addresses, got "${advertise.join(',')}"`);
  if (advertise.length === 2 && secondAddress === undefined) return fail(GatewayErrorCode.USAGE, '--nat-probe-advertise names a second address, but there is no --nat-probe-second-address');
  if (address === undefined) {
    log.info({ listen: listenHost }, 'NAT probing off: give --nat-probe-address (the listen address is not a specific IP)');
    return undefined;
  }
  try {
    return await NatProbeServer.start({
      address,
      port,
      ...(secondAddress ? { secondAddress } : {}),
      ...(advertise[0] ? { advertiseAddress: advertise[0] } : {}),
      ...(advertise[1] ? { advertiseSecondAddress: advertise[1] } : {}),
      onResult: (result) => metrics.natProbes.inc({ result }),
    });
  } catch (error) {
    const message = `cannot bind the NAT probe ports ${address}:${port}-${port + 1}${secondAddress ? ` and ${secondAddress}` : ''}: ${(error as Error).message}`;
    const explicit = explicitAddress !== undefined || secondAddress !== undefined || option(values, 'nat-probe-port') !== undefined;
    if (explicit) return fail(GatewayErrorCode.NAT_PROBE_UNAVAILABLE, message);
    log.warn({ code: GatewayErrorCode.NAT_PROBE_UNAVAILABLE, err: (error as Error).message }, 'NAT probing off: probe ports unavailable; relay only');
    return undefined;
  }
}

/** The Kubernetes config source from flags: Secret name and namespace, credentials. */
async function kubernetesSource(
  values: Record<string, string | boolean | undefined>,
  log: Logger,
  fail: (code: string, message: string) => never,
): Promise<ConfigSource> {
  const namespace = option(values, 'config-namespace') ?? podNamespace();
  if (!namespace) return fail(GatewayErrorCode.USAGE, '--config-namespace is required outside a pod');
  const client = await loadFromDefaultOrFile(option(values, 'kubeconfig'));
  return new KubeSecretConfigSource(client, {
    namespace,
    name: option(values, 'config-secret', DEFAULT_GATEWAY_CONFIG_SECRET_NAME) as string,
    log: log.child({ component: 'config-source' }),
  });
}

const crashed = (error: unknown): void => {
  process.stderr.write(`narrowlink-gateway: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
};
// `token …` mints a token and exits (exitCode, not exit(): stdout may still be flushing into a pipe).
if (process.argv[2] === 'token') {
  runTokenCommand(process.argv.slice(3)).then((code) => {
    process.exitCode = code;
  }, crashed);
} else {
  main().catch(crashed);
}
