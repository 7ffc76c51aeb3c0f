/**
 * Every Prometheus metric the gateway exports, in one place. Labels are bounded sets
 * (kind, direction, reason, code): never ids, addresses or user names.
 *
 * Besides its own `narrowlink_gateway_*` metrics the registry carries `narrowlink_build_info` and the standard
 * `process_*` / `nodejs_*` metrics under the names prom-client (and every Node exporter) gives them, so stock
 * dashboards and alerts for Node processes work unchanged. Every labelled series the gateway can produce is
 * created at zero up front (the lists below): `rate()` and `increase()` then see the first event as an increase
 * instead of a series appearing out of nothing, and a dashboard shows 0 rather than "no data".
 */
import {
  BUILD_INFO_LABEL_NAMES,
  buildInfoLabels,
  directRefusalReasons,
  ErrorCode,
  EVENT_LOOP_TIME_METRICS,
  eventLoopSeconds,
  type NatType,
  OMITTED_DEFAULT_METRICS,
  StreamErrorCode,
} from '@narrowlink/protocol';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { BudgetScope } from './buffer-budget.ts';
import { GatewayAuthReason, GatewayErrorCode } from './errors.ts';
import { RateLimitKind } from './rate-limit.ts';
import type { ShareKind } from './stream-shares.ts';

/**
 * `allOf<T>()(list)`: `list` unchanged, but a type error when it misses a member of the union `T`, so the label
 * values initialised at zero cannot fall behind a type that gains a member.
 */
function allOf<T extends string>() {
  return <const L extends readonly T[]>(list: L & ([Exclude<T, L[number]>] extends [never] ? unknown : { missing: Exclude<T, L[number]> })): L => list;
}

/** The values of a code object whose keys start with `prefix` (`TOKEN_` → every NL_ERR_TOKEN_* code). */
function codesNamed(codes: Readonly<Record<string, string>>, prefix: string): string[] {
  return Object.entries(codes)
    .filter(([key]) => key.startsWith(prefix))
    .map(([, code]) => code);
}

/** `sessions{kind}`: the two session kinds. */
export const SESSION_KINDS = ['agent', 'client'] as const;
/** `relay_bytes_total{direction}`. */
export const RELAY_DIRECTIONS = ['client_to_agent', 'agent_to_client'] as const;
/** `streams_total{result}`: `ok`, or the stream code the open was reset with. */
export const STREAM_RESULTS: readonly string[] = ['ok', ...Object.values(StreamErrorCode)];
/**
 * `auth_failures_total{reason}`: the gateway's refusal codes an upgrade or `reauth` can end with, and the finer
 * token and TokenReview reasons (GatewayError.reason).
 */
export const AUTH_FAILURE_REASONS: readonly string[] = [
  ...new Set([
    GatewayErrorCode.SHUTTING_DOWN,
    GatewayErrorCode.NOT_READY,
    GatewayErrorCode.INTERNAL,
    ...codesNamed(GatewayErrorCode, 'AUTH_'),
    ...Object.values(GatewayAuthReason),
    ...codesNamed(ErrorCode, 'TOKEN_'),
  ]),
];
/** `config_reloads_total{result}`. */
export const CONFIG_RELOAD_RESULTS = ['ok', 'invalid'] as const;
/** `protocol_errors_total{reason}`: the frame and protocol codes a session can be closed for. */
export const PROTOCOL_ERROR_REASONS: readonly string[] = [...codesNamed(ErrorCode, 'FRAME_'), ...codesNamed(ErrorCode, 'PROTOCOL_')];
/** `buffer_limit_closes_total{scope}`. */
export const BUFFER_SCOPES = allOf<BudgetScope>()(['session', 'process']);
/** `stream_share_refusals_total{kind}` and `stream_shares_full{kind}`. */
export const SHARE_KINDS = allOf<ShareKind>()(['session', 'identity', 'reserve']);
/** `rate_limited_total{kind}`: the request kinds of rate-limit.ts, and `connect` (new sessions of one identity). */
export const RATE_LIMIT_KINDS: readonly string[] = [...Object.values(RateLimitKind), 'connect'];
/** `nat_probes_total{result}`: answered, limited, send_error, or the NatError code a datagram was dropped for. */
export const NAT_PROBE_RESULTS: readonly string[] = ['answered', 'limited', 'send_error', ...codesNamed(ErrorCode, 'NAT_')];
/** `nat_classifications_total{type}`. */
export const NAT_TYPES = allOf<NatType>()(['no-nat', 'endpoint-independent', 'endpoint-dependent-predictable', 'endpoint-dependent-random', 'unknown']);
/** `direct_requests_total{result}`: `planned`, or the `direct_refused` reason. */
export const DIRECT_REQUEST_RESULTS: readonly string[] = ['planned', ...directRefusalReasons];
/** `direct_paths_total{result}` (with `client_nat` and `agent_nat` from {@link NAT_TYPES}). */
export const DIRECT_PATH_RESULTS = ['up', 'failed'] as const;

/** The gateway's metrics (one registry per gateway instance; names and labels in the README's Metrics section). */
export interface GatewayMetrics {
  registry: Registry;
  /** `narrowlink_build_info{version, commit, node_version, component="gateway"} 1`. */
  buildInfo: Gauge<(typeof BUILD_INFO_LABEL_NAMES)[number]>;
  sessions: Gauge<'kind'>;
  streamsOpen: Gauge;
  relayQueuedBytes: Gauge;
  /** Relayed OPENs waiting for an admission slot at their agent instance (open-admission.ts). */
  relayOpensQueued: Gauge;
  bufferedBytes: Gauge;
  bufferLimitCloses: Counter<'scope'>;
  stalledSessions: Counter;
  protocolErrors: Counter<'reason'>;
  streamsTotal: Counter<'result'>;
  relayBytes: Counter<'direction'>;
  streamOpenSeconds: Histogram;
  authFailures: Counter<'reason'>;
  configReloads: Counter<'result'>;
  policyResets: Counter;
  sessionsRevoked: Counter;
  streamShareRefusals: Counter<'kind'>;
  streamSharesFull: Gauge<'kind'>;
  streamIdleResets: Counter;
  natProbes: Counter<'result'>;
  natClassifications: Counter<'type'>;
  directRequests: Counter<'result'>;
  directPaths: Counter<'result' | 'client_nat' | 'agent_nat'>;
  directPathsUp: Gauge;
  directReadySeconds: Histogram;
  rateLimited: Counter<'kind'>;
  rateLimitCloses: Counter;
}

/**
 * A fresh registry with every gateway metric, its labelled series at zero. `defaultMetrics: false` leaves out the
 * `process_*` / `nodejs_*` collectors (tests that compare registries). `env` is read for the build commit
 * (see buildInfoLabels).
 */
export function createMetrics(options: { defaultMetrics?: boolean; env?: NodeJS.ProcessEnv } = {}): GatewayMetrics {
  const registry = new Registry();
  // No prefix: process_* and nodejs_* are the names every Node dashboard and alert expects.
  if (options.defaultMetrics ?? true) {
    collectDefaultMetrics({ register: registry });
    for (const name of OMITTED_DEFAULT_METRICS) registry.removeSingleMetric(name);
    registerEventLoopTime([registry]);
  }
  const registers = [registry];
  const metrics: GatewayMetrics = {
    registry,
    buildInfo: new Gauge({
      name: 'narrowlink_build_info',
      help: 'Always 1; the labels say which version, commit and Node.js this component runs.',
      labelNames: BUILD_INFO_LABEL_NAMES,
      registers,
    }),
    sessions: new Gauge({ name: 'narrowlink_gateway_sessions', help: 'Open peer sessions by kind (agent, client).', labelNames: ['kind'], registers }),
    streamsOpen: new Gauge({ name: 'narrowlink_gateway_streams_open', help: 'Relayed streams currently open.', registers }),
    relayQueuedBytes: new Gauge({
      name: 'narrowlink_gateway_relay_queued_bytes',
      help: 'Payload bytes held in relay queues, waiting for credit from the slower side (bounded by the stream windows).',
      registers,
    }),
    relayOpensQueued: new Gauge({
      name: 'narrowlink_gateway_relay_opens_queued',
      help: 'Relayed OPENs waiting for a slot at their agent instance (outstanding dials are capped per agent and per identity).',
      registers,
    }),
    bufferedBytes: new Gauge({
      name: 'narrowlink_gateway_buffered_bytes',
      help: 'Bytes the gateway holds on peers\' behalf: unsent WebSocket bytes plus relay queues (what the buffer budgets count).',
      registers,
    }),
    bufferLimitCloses: new Counter({
      name: 'narrowlink_gateway_buffer_limit_closes_total',
      help: 'Sessions closed (4413) for holding more unread bytes than the budget, by scope (session, process).',
      labelNames: ['scope'],
      registers,
    }),
    stalledSessions: new Counter({
      name: 'narrowlink_gateway_stalled_sessions_total',
      help: 'Sessions closed (4408) because the peer stopped reading what it was sent or answering PINGs.',
      registers,
    }),
    protocolErrors: new Counter({
      name: 'narrowlink_gateway_protocol_errors_total',
      help: 'Sessions closed for breaking the protocol (4400: bad frames, control messages over their size or depth caps, …) or for using all their stream ids (4409), by error code.',
      labelNames: ['reason'],
      registers,
    }),
    streamsTotal: new Counter({
      name: 'narrowlink_gateway_streams_total',
      help: 'Stream open attempts by result (ok or a stream error code).',
      labelNames: ['result'],
      registers,
    }),
    relayBytes: new Counter({
      name: 'narrowlink_gateway_relay_bytes_total',
      help: 'Payload bytes relayed, by direction (client_to_agent, agent_to_client).',
      labelNames: ['direction'],
      registers,
    }),
    streamOpenSeconds: new Histogram({
      name: 'narrowlink_gateway_stream_open_seconds',
      help: 'Time from a client OPEN to the agent accepting it.',
      buckets: [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 10],
      registers,
    }),
    authFailures: new Counter({
      name: 'narrowlink_gateway_auth_failures_total',
      help: 'Rejected session attempts by reason code.',
      labelNames: ['reason'],
      registers,
    }),
    configReloads: new Counter({
      name: 'narrowlink_gateway_config_reloads_total',
      help: 'Configuration loads by result (ok, invalid).',
      labelNames: ['result'],
      registers,
    }),
    policyResets: new Counter({
      name: 'narrowlink_gateway_policy_resets_total',
      help: 'Open streams reset because a configuration change revoked access.',
      registers,
    }),
    sessionsRevoked: new Counter({
      name: 'narrowlink_gateway_sessions_revoked_total',
      help: 'Live sessions closed (4401, token revoked) because a reloaded configuration denies their token or subject (tokens.deny).',
      registers,
    }),
    streamShareRefusals: new Counter({
      name: 'narrowlink_gateway_stream_share_refusals_total',
      help: "Relayed OPENs refused with SHARE_EXCEEDED, by the share that was full (kind: session, identity, or reserve: the agent's last quarter, kept for light holders).",
      labelNames: ['kind'],
      registers,
    }),
    streamSharesFull: new Gauge({
      name: 'narrowlink_gateway_stream_shares_full',
      help: "Client sessions (kind session) and identities (kind identity) holding their whole share of one agent's streams right now; agents into their reserve (kind reserve).",
      labelNames: ['kind'],
      registers,
    }),
    streamIdleResets: new Counter({
      name: 'narrowlink_gateway_stream_idle_resets_total',
      help: 'Relayed streams reset with IDLE_TIMEOUT after carrying no bytes either way for the idle timeout.',
      registers,
    }),
    natProbes: new Counter({
      name: 'narrowlink_gateway_nat_probes_total',
      help: 'Datagrams on the UDP probe ports by result (answered, limited, send_error, or the NatError code they were dropped for).',
      labelNames: ['result'],
      registers,
    }),
    natClassifications: new Counter({
      name: 'narrowlink_gateway_nat_classifications_total',
      help: 'Peer NAT classifications by NAT type (no-nat, endpoint-independent, endpoint-dependent-predictable, endpoint-dependent-random, unknown).',
      labelNames: ['type'],
      registers,
    }),
    directRequests: new Counter({
      name: 'narrowlink_gateway_direct_requests_total',
      help: 'Client direct_request messages by result (planned, or the direct_refused reason such as Denied, NotProbed, BothSymmetric).',
      labelNames: ['result'],
      registers,
    }),
    directPaths: new Counter({
      name: 'narrowlink_gateway_direct_paths_total',
      help: 'Planned direct paths by outcome (up: a peer reported it up; failed: reported failed, or gone before it came up) and the NAT types of the client and the agent when it was planned.',
      labelNames: ['result', 'client_nat', 'agent_nat'],
      registers,
    }),
    directPathsUp: new Gauge({ name: 'narrowlink_gateway_direct_paths_up', help: 'Direct (peer-to-peer) paths currently up.', registers }),
    directReadySeconds: new Histogram({
      name: 'narrowlink_gateway_direct_ready_seconds',
      help: 'Time from the punch plan reaching the client to its direct QUIC connection being verified, as the client reports it.',
      buckets: [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30],
      registers,
    }),
    rateLimited: new Counter({
      name: 'narrowlink_gateway_rate_limited_total',
      help: "Requests refused by a session's rate limit, by kind (open, list_agents, direct_request, reauth).",
      labelNames: ['kind'],
      registers,
    }),
    rateLimitCloses: new Counter({
      name: 'narrowlink_gateway_rate_limit_closes_total',
      help: 'Sessions closed (code 4429) for going on past their rate limits.',
      registers,
    }),
  };
  metrics.buildInfo.set(buildInfoLabels('gateway', options.env), 1);
  initialiseSeries(metrics);
  return metrics;
}

/** Creates every known labelled series at zero (see the file comment). */
function initialiseSeries(m: GatewayMetrics): void {
  for (const kind of SESSION_KINDS) m.sessions.set({ kind }, 0);
  for (const result of STREAM_RESULTS) m.streamsTotal.inc({ result }, 0);
  for (const direction of RELAY_DIRECTIONS) m.relayBytes.inc({ direction }, 0);
  for (const reason of AUTH_FAILURE_REASONS) m.authFailures.inc({ reason }, 0);
  for (const result of CONFIG_RELOAD_RESULTS) m.configReloads.inc({ result }, 0);
  for (const reason of PROTOCOL_ERROR_REASONS) m.protocolErrors.inc({ reason }, 0);
  for (const scope of BUFFER_SCOPES) m.bufferLimitCloses.inc({ scope }, 0);
  for (const kind of SHARE_KINDS) {
    m.streamShareRefusals.inc({ kind }, 0);
    m.streamSharesFull.set({ kind }, 0);
  }
  for (const kind of RATE_LIMIT_KINDS) m.rateLimited.inc({ kind }, 0);
  for (const result of NAT_PROBE_RESULTS) m.natProbes.inc({ result }, 0);
  for (const type of NAT_TYPES) m.natClassifications.inc({ type }, 0);
  for (const result of DIRECT_REQUEST_RESULTS) m.directRequests.inc({ result }, 0);
  for (const result of DIRECT_PATH_RESULTS) {
    // Every pair of NAT types (25): planning refuses some pairs (BothSymmetric), but a refused pair at zero is
    // what a "success by NAT type" panel should show for it.
    for (const client_nat of NAT_TYPES) for (const agent_nat of NAT_TYPES) m.directPaths.inc({ result, client_nat, agent_nat }, 0);
  }
}

/** The two event loop time counters (see EVENT_LOOP_TIME_METRICS), brought up to date on every scrape. */
function registerEventLoopTime(registers: Registry[]): void {
  for (const which of ['active', 'idle'] as const) {
    let counted = 0;
    new Counter({
      ...EVENT_LOOP_TIME_METRICS[which],
      registers,
      collect() {
        const total = eventLoopSeconds()[which];
        // Cumulative and monotonic: add what accrued since the last scrape.
        if (total > counted) this.inc(total - counted);
        counted = Math.max(counted, total);
      },
    });
  }
}
