/**
 * Every Prometheus metric the gateway exports, in one place. Labels are bounded sets
 * (kind, direction, reason, code): never ids, addresses or user names.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

export interface GatewayMetrics {
  registry: Registry;
  sessions: Gauge<'kind'>;
  streamsOpen: Gauge;
  relayQueuedBytes: Gauge;
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
  directPaths: Counter<'result'>;
  directPathsUp: Gauge;
  directReadySeconds: Histogram;
  rateLimited: Counter<'kind'>;
  rateLimitCloses: Counter;
}

export function createMetrics(options: { defaultMetrics?: boolean } = {}): GatewayMetrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'narrowlink_gateway_' });
  const registers = [registry];
  return {
    registry,
    sessions: new Gauge({ name: 'narrowlink_gateway_sessions', help: 'Open peer sessions by kind (agent, client).', labelNames: ['kind'], registers }),
    streamsOpen: new Gauge({ name: 'narrowlink_gateway_streams_open', help: 'Relayed streams currently open.', registers }),
    relayQueuedBytes: new Gauge({
      name: 'narrowlink_gateway_relay_queued_bytes',
      help: 'Payload bytes held in relay queues, waiting for credit from the slower side (bounded by the stream windows).',
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
      help: 'Relayed OPENs refused with SHARE_EXCEEDED, by the share that was full (kind: session, identity).',
      labelNames: ['kind'],
      registers,
    }),
    streamSharesFull: new Gauge({
      name: 'narrowlink_gateway_stream_shares_full',
      help: "Client sessions (kind session) and identities (kind identity) holding their whole share of one agent's streams right now.",
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
      help: 'Planned direct paths by outcome: up (a peer reported it up), failed (reported failed, or gone before it came up).',
      labelNames: ['result'],
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
}
