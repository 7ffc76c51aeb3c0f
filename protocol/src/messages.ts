/**
 * Control messages and stream-open payloads: JSON on the wire, validated with zod (`zod/mini`, the same checks and
 * messages as zod's classic API at a fraction of the memory: zod-english.ts).
 * The protocol version is `MAJOR.MINOR`; peers with a different MAJOR refuse each other at the handshake.
 */
import * as z from 'zod/mini';
import { ErrorCode, ProtocolError, StreamErrorCode } from './errors.ts';
import { MAX_PROOF_LENGTH } from './proof.ts';
import { useEnglishMessages } from './zod-english.ts';

useEnglishMessages();

export const PROTOCOL_VERSION = '1.3';
export const PROTOCOL_MAJOR = 1;
/** First minor version that understands the NAT probing messages (`nat_probe_info`, `nat_report`, `nat_status`). */
export const NAT_PROBING_MINOR = 1;
/** First minor version that understands the direct-path messages (`direct_request` … `direct_close`). */
export const DIRECT_PATH_MINOR = 2;
/**
 * First minor version that understands the stream codes of the gateway's limits (`SHARE_EXCEEDED`, `IDLE_TIMEOUT`, …).
 * Older peers would turn an unknown RESET code into a PROTOCOL_ERROR on that stream: send them the nearest older code.
 */
export const LIMITS_MINOR = 3;

const portNumber = z.number().check(z.int(), z.gte(1), z.lte(65535));
const shortText = z.string().check(z.maxLength(1024));
const hostText = z.string().check(z.minLength(1), z.maxLength(253));
/** Integer bounds, as classic zod's `.int().min(min).max(max)`. */
const intBetween = (min: number, max: number) => z.number().check(z.int(), z.gte(min), z.lte(max));
const nonNegativeInt = () => z.number().check(z.int(), z.gte(0));
const textBetween = (min: number, max: number) => z.string().check(z.minLength(min), z.maxLength(max));

export const pathModeSchema = z.enum(['auto', 'direct', 'relay']);
export type PathMode = z.infer<typeof pathModeSchema>;

export const exposedPortAnnouncementSchema = z.strictObject({ name: textBetween(1, 63), port: portNumber, host: z.optional(hostText) });

/** First message from a peer after the WebSocket opens. */
export const helloSchema = z.strictObject({
  type: z.literal('hello'),
  version: z.string().check(z.regex(/^\d{1,4}\.\d{1,4}$/)),
  role: z.enum(['agent', 'client']),
  software: z.optional(shortText),
  /** Bytes the sender lets each new stream send to it before the first WINDOW update. */
  streamWindow: intBetween(16_384, 64 * 1024 * 1024),
  agent: z.optional(
    z.strictObject({
      instanceId: textBetween(1, 128),
      expose: z.array(exposedPortAnnouncementSchema).check(z.maxLength(256)),
    }),
  ),
});
export type Hello = z.infer<typeof helloSchema>;

export const helloOkSchema = z.strictObject({
  type: z.literal('hello_ok'),
  version: z.string(),
  sessionId: z.string().check(z.maxLength(128)),
  identity: z.strictObject({
    sub: shortText,
    groups: z.array(shortText).check(z.maxLength(256)),
    typ: z.enum(['agent', 'client']),
    expiresAt: z.number(),
  }),
  streamWindow: intBetween(16_384, 64 * 1024 * 1024),
  heartbeatIntervalMs: z.number().check(z.int(), z.gt(0)),
});
export type HelloOk = z.infer<typeof helloOkSchema>;

export const sessionErrorSchema = z.strictObject({ type: z.literal('error'), code: shortText, message: shortText });
export type SessionErrorMessage = z.infer<typeof sessionErrorSchema>;

export const listAgentsSchema = z.strictObject({ type: z.literal('list_agents'), requestId: nonNegativeInt() });

export const agentSummarySchema = z.strictObject({
  name: z.string(),
  namespace: z.string(),
  mode: pathModeSchema,
  instances: nonNegativeInt(),
  ports: z.array(z.strictObject({ name: z.string(), port: portNumber, host: z.string() })),
});
export type AgentSummary = z.infer<typeof agentSummarySchema>;

export const agentListSchema = z.strictObject({ type: z.literal('agents'), requestId: nonNegativeInt(), agents: z.array(agentSummarySchema) });

/** The gateway is draining: open no new streams, reconnect (elsewhere) after `drainMs`. */
export const goAwaySchema = z.strictObject({ type: z.literal('goaway'), reason: shortText, drainMs: nonNegativeInt() });

/**
 * A fresh credential for the running session (projected tokens rotate every few minutes): the
 * gateway re-authenticates it for the same identity and extends the session, instead of closing it
 * at the old token's expiry and resetting its streams.
 */
export const reauthSchema = z.strictObject({
  type: z.literal('reauth'),
  token: textBetween(1, 16_384),
  /** Proof of possession (proof.ts, `htm` REAUTH) for this token when it is key-bound (`cnf.jkt`). */
  proof: z.optional(textBetween(1, MAX_PROOF_LENGTH)),
});
export const reauthOkSchema = z.strictObject({ type: z.literal('reauth_ok'), expiresAt: z.number() });

const ipAddressText = z.union([z.ipv4(), z.ipv6()]);
const fingerprintText = z.string().check(z.regex(/^[0-9a-f]{64}$/));
const base64Text = (bytes: number) => z.string().check(z.length(4 * Math.ceil(bytes / 3)), z.regex(/^[A-Za-z0-9+/]+={0,2}$/));
const pathIdText = z.string().check(z.regex(/^[A-Za-z0-9_-]{1,64}$/));
const requestId = z.number().check(z.int(), z.gte(0), z.lte(2 ** 32));
const millis = intBetween(0, 60_000);
const udpEndpointSchema = z.strictObject({ address: ipAddressText, port: portNumber });
const filteringTestSchema = z.strictObject({ sent: intBetween(0, 1000), received: intBetween(0, 1000) });

/**
 * Gateway → peer, right after `hello_ok` when the gateway runs its UDP probe ports (protocol ≥ 1.1 peers only):
 * the per-session probe key (base64, HMAC-SHA256) and the probe endpoints by index (bit 0: second port, bit 1:
 * second address). The peer probes from its QUIC socket (protocol/src/nat/README.md), then sends `nat_report`.
 */
export const natProbeInfoSchema = z.strictObject({
  type: z.literal('nat_probe_info'),
  key: z.string().check(z.minLength(22), z.maxLength(172), z.regex(/^[A-Za-z0-9+/]+={0,2}$/)),
  endpoints: z
    .array(z.strictObject({ index: intBetween(0, 3), address: ipAddressText, port: portNumber }))
    .check(z.minLength(1), z.maxLength(4)),
});
export type NatProbeInfo = z.infer<typeof natProbeInfoSchema>;

/** Peer → gateway after probing: the socket's local endpoints and the outcome of the filtering tests. */
export const natReportSchema = z.strictObject({
  type: z.literal('nat_report'),
  localEndpoints: z.array(udpEndpointSchema).check(z.maxLength(32)),
  filtering: z.optional(z.strictObject({ changePort: z.optional(filteringTestSchema), changeAddress: z.optional(filteringTestSchema) })),
  /** sha256 hex of the certificate this peer generated for its QUIC endpoint; the gateway forwards it, nothing more. */
  certFingerprint: z.optional(fingerprintText),
});
export type NatReport = z.infer<typeof natReportSchema>;

/**
 * Peer → gateway (protocol ≥ 1.2): our mapping may have changed (a direct path died: NAT rebinding, a flushed
 * conntrack table); probe afresh. The gateway answers with a new `nat_probe_info` (new key, no old observations).
 */
export const natReprobeSchema = z.strictObject({ type: z.literal('nat_reprobe') });
export type NatReprobe = z.infer<typeof natReprobeSchema>;

/** Gateway → peer: how the gateway classified the peer's NAT (see `classifyNat`). */
export const natStatusSchema = z.strictObject({
  type: z.literal('nat_status'),
  natType: z.enum(['no-nat', 'endpoint-independent', 'endpoint-dependent-predictable', 'endpoint-dependent-random', 'unknown']),
  filtering: z.enum(['endpoint-independent', 'address-dependent', 'address-and-port-dependent', 'unknown']),
  /** Probe destinations that answered. */
  destinations: intBetween(0, 4),
  portPreserving: z.optional(z.boolean()),
  delta: z.optional(intBetween(-65535, 65535)),
  publicEndpoint: z.optional(udpEndpointSchema),
  /** Why the type is `unknown`: NoResponses, TooFewDestinations, UnstableMapping. */
  reason: z.optional(z.string().check(z.maxLength(64))),
});
export type NatStatus = z.infer<typeof natStatusSchema>;

/**
 * Client → gateway: set up a direct path to an agent (sent when a stream to it opens in `auto` or `direct` mode
 * and no path is up or being set up). The gateway checks policy first, then answers `punch_plan` or
 * `direct_refused` with the same `requestId`.
 */
export const directRequestSchema = z.strictObject({ type: z.literal('direct_request'), requestId, agent: textBetween(1, 253) });
export type DirectRequest = z.infer<typeof directRequestSchema>;

/** Why a direct path cannot be set up: a punch-plan reason (`BothSymmetric`, `UdpBlocked`, …) or a gateway one. */
export const directRefusalReasons = [
  'BothSymmetric',
  'UdpBlocked',
  'UnknownNatType',
  'PortRestrictedVsRandom',
  'NoCommonAddressFamily',
  /** The gateway runs no NAT probe ports. */
  'ProbingDisabled',
  /** A side has not finished NAT probing yet (or cannot: no UDP socket); try again shortly. */
  'NotProbed',
  /** The agent's mode (NarrowlinkAgent spec.mode) is `relay`. */
  'AgentRelayOnly',
  /** The agent's sidecar is too old for direct paths. */
  'AgentTooOld',
  'NoAgent',
  'Denied',
  /** This client already has the maximum of direct-path attempts in flight. */
  'TooManyAttempts',
  /** This client sends `direct_request` faster than the gateway's rate limit (protocol 1.3; older: TooManyAttempts). */
  'RateLimited',
] as const;
export type DirectRefusalReason = (typeof directRefusalReasons)[number];

export const directRefusedSchema = z.strictObject({ type: z.literal('direct_refused'), requestId, reason: z.enum(directRefusalReasons), message: shortText });
export type DirectRefused = z.infer<typeof directRefusedSchema>;

/**
 * Gateway → each peer of a direct path: how to punch (one side's half of `planPunch`'s plan) and whom to expect.
 * The QUIC handshake that follows pins `peerFingerprint`; the gateway never sees a private key.
 */
export const punchPlanSchema = z.strictObject({
  type: z.literal('punch_plan'),
  pathId: pathIdText,
  /** The client's `direct_request` this answers (client side only). */
  requestId: z.optional(requestId),
  /** Who is at the other end: the agent (`namespace/name`) for a client, the client's identity for an agent. */
  peer: shortText,
  role: z.enum(['client', 'agent']),
  quicRole: z.enum(['client', 'server']),
  strategy: z.enum(['public', 'predicted', 'lockstep', 'reach-stable', 'lan']),
  attemptId: base64Text(8),
  punchKey: base64Text(32),
  candidates: z
    .array(z.strictObject({ address: ipAddressText, port: portNumber, kind: z.enum(['lan', 'public', 'predicted', 'filter-opener']) }))
    .check(z.maxLength(16)),
  initialDelayMs: millis,
  intervalMs: intBetween(1, 10_000),
  budgetMs: intBetween(1, 60_000),
  /** Delay from sending to the common start; a peer starts `leadMs` after it receives the plan. */
  leadMs: millis,
  peerFingerprint: fingerprintText,
});
export type PunchPlanMessage = z.infer<typeof punchPlanSchema>;

/** One target the agent may serve on a direct path: the compiled policy for that client, on that agent. */
export const directAllowSchema = z.strictObject({ name: textBetween(1, 63), host: hostText, port: portNumber });
export type DirectAllow = z.infer<typeof directAllowSchema>;

/**
 * Gateway → agent: the targets this direct path's client may reach (policy evaluated for path `Direct` over the
 * agent's exposed ports). Sent before `punch_plan` and again whenever the configuration changes; the agent
 * re-checks every direct stream against the latest one and resets streams it no longer allows.
 */
export const directPolicySchema = z.strictObject({
  type: z.literal('direct_policy'),
  pathId: pathIdText,
  allow: z.array(directAllowSchema).check(z.maxLength(256)),
  /** Wall clock (ms) at which the earliest time-limited rule lapses; the gateway sends a new policy then. */
  expiresAt: z.optional(z.number()),
});
export type DirectPolicy = z.infer<typeof directPolicySchema>;

/** Peer → gateway: what became of a path (for status and metrics; the gateway routes nothing on it). */
export const directStateSchema = z.strictObject({
  type: z.literal('direct_state'),
  pathId: pathIdText,
  state: z.enum(['up', 'failed', 'closed']),
  /** Failure/close reason code (e.g. `Timeout`, `NL_ERR_DIRECT_PEER_MISMATCH`). */
  reason: z.optional(z.string().check(z.maxLength(64))),
  /** Candidate kind that won (up). */
  via: z.optional(z.string().check(z.maxLength(32))),
  /** From receiving the plan to the QUIC connection being verified (up), ms. */
  elapsedMs: z.optional(intBetween(0, 600_000)),
});
export type DirectState = z.infer<typeof directStateSchema>;

/** Gateway → peer: the other side's session ended, or the policy no longer allows anything: close the path. */
export const directCloseSchema = z.strictObject({ type: z.literal('direct_close'), pathId: pathIdText, reason: shortText });
export type DirectClose = z.infer<typeof directCloseSchema>;

export const controlMessageSchema = z.discriminatedUnion('type', [
  natReprobeSchema,
  directRequestSchema,
  directRefusedSchema,
  punchPlanSchema,
  directPolicySchema,
  directStateSchema,
  directCloseSchema,
  natProbeInfoSchema,
  natReportSchema,
  natStatusSchema,
  reauthSchema,
  reauthOkSchema,
  helloSchema,
  helloOkSchema,
  sessionErrorSchema,
  listAgentsSchema,
  agentListSchema,
  goAwaySchema,
]);
export type ControlMessage = z.infer<typeof controlMessageSchema>;

/** OPEN payload from a client: which agent, which port (number or exposed name), optional host. */
export const clientOpenSchema = z.strictObject({
  agent: textBetween(1, 253),
  port: z.union([portNumber, textBetween(1, 63)]),
  host: z.optional(hostText),
  mode: z.optional(pathModeSchema),
});
export type ClientOpen = z.infer<typeof clientOpenSchema>;

/** OPEN payload from the gateway to an agent: the resolved local target and who asked. */
export const agentOpenSchema = z.strictObject({ host: hostText, port: portNumber, client: shortText });
export type AgentOpen = z.infer<typeof agentOpenSchema>;

export const openPayloadSchema = z.union([clientOpenSchema, agentOpenSchema]);
export type OpenPayload = z.infer<typeof openPayloadSchema>;

export const openOkSchema = z.strictObject({ path: z.optional(z.enum(['relay', 'direct'])) });
export type OpenOk = z.infer<typeof openOkSchema>;

export const resetSchema = z.strictObject({
  code: z.enum(Object.values(StreamErrorCode) as [StreamErrorCode, ...StreamErrorCode[]]),
  message: shortText,
});
export type ResetPayload = z.infer<typeof resetSchema>;

/** Whether a peer that said `version` in its hello understands messages introduced in `minor` of our major. */
export function peerSupportsMinor(version: string, minor: number): boolean {
  const [major, peerMinor] = version.split('.').map(Number);
  return major === PROTOCOL_MAJOR && (peerMinor ?? 0) >= minor;
}

/** Throws a ProtocolError with NL_ERR_PROTOCOL_VERSION when the peer's major version differs from ours. */
export function checkVersion(version: string): void {
  const major = Number(version.split('.')[0]);
  if (major !== PROTOCOL_MAJOR) {
    throw new ProtocolError(
      ErrorCode.PROTOCOL_VERSION,
      `peer speaks protocol ${version}, this side speaks ${PROTOCOL_VERSION} (major versions must match; upgrade the older side)`,
    );
  }
}
