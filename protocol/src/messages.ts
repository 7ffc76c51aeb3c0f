/**
 * Control messages and stream-open payloads: JSON on the wire, validated with zod.
 * The protocol version is `MAJOR.MINOR`; peers with a different MAJOR refuse each other at the handshake.
 */
import { z } from 'zod';
import { ErrorCode, ProtocolError, StreamErrorCode } from './errors.ts';

export const PROTOCOL_VERSION = '1.0';
export const PROTOCOL_MAJOR = 1;

const portNumber = z.number().int().min(1).max(65535);
const shortText = z.string().max(1024);
const hostText = z.string().min(1).max(253);

export const pathModeSchema = z.enum(['auto', 'direct', 'relay']);
export type PathMode = z.infer<typeof pathModeSchema>;

export const exposedPortAnnouncementSchema = z
  .object({ name: z.string().min(1).max(63), port: portNumber, host: hostText.optional() })
  .strict();

/** First message from a peer after the WebSocket opens. */
export const helloSchema = z
  .object({
    type: z.literal('hello'),
    version: z.string().regex(/^\d{1,4}\.\d{1,4}$/),
    role: z.enum(['agent', 'client']),
    software: shortText.optional(),
    /** Bytes the sender lets each new stream send to it before the first WINDOW update. */
    streamWindow: z.number().int().min(16_384).max(64 * 1024 * 1024),
    agent: z
      .object({
        instanceId: z.string().min(1).max(128),
        expose: z.array(exposedPortAnnouncementSchema).max(256),
      })
      .strict()
      .optional(),
  })
  .strict();
export type Hello = z.infer<typeof helloSchema>;

export const helloOkSchema = z
  .object({
    type: z.literal('hello_ok'),
    version: z.string(),
    sessionId: z.string().max(128),
    identity: z
      .object({ sub: shortText, groups: z.array(shortText).max(256), typ: z.enum(['agent', 'client']), expiresAt: z.number() })
      .strict(),
    streamWindow: z.number().int().min(16_384).max(64 * 1024 * 1024),
    heartbeatIntervalMs: z.number().int().positive(),
  })
  .strict();
export type HelloOk = z.infer<typeof helloOkSchema>;

export const sessionErrorSchema = z.object({ type: z.literal('error'), code: shortText, message: shortText }).strict();
export type SessionErrorMessage = z.infer<typeof sessionErrorSchema>;

export const listAgentsSchema = z.object({ type: z.literal('list_agents'), requestId: z.number().int().nonnegative() }).strict();

export const agentSummarySchema = z
  .object({
    name: z.string(),
    namespace: z.string(),
    mode: pathModeSchema,
    instances: z.number().int().nonnegative(),
    ports: z.array(z.object({ name: z.string(), port: portNumber, host: z.string() }).strict()),
  })
  .strict();
export type AgentSummary = z.infer<typeof agentSummarySchema>;

export const agentListSchema = z
  .object({ type: z.literal('agents'), requestId: z.number().int().nonnegative(), agents: z.array(agentSummarySchema) })
  .strict();

/** The gateway is draining: open no new streams, reconnect (elsewhere) after `drainMs`. */
export const goAwaySchema = z.object({ type: z.literal('goaway'), reason: shortText, drainMs: z.number().int().nonnegative() }).strict();

/**
 * A fresh credential for the running session (projected tokens rotate every few minutes): the
 * gateway re-authenticates it for the same identity and extends the session, instead of closing it
 * at the old token's expiry and resetting its streams.
 */
export const reauthSchema = z.object({ type: z.literal('reauth'), token: z.string().min(1).max(16_384) }).strict();
export const reauthOkSchema = z.object({ type: z.literal('reauth_ok'), expiresAt: z.number() }).strict();

export const controlMessageSchema = z.discriminatedUnion('type', [
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
export const clientOpenSchema = z
  .object({
    agent: z.string().min(1).max(253),
    port: z.union([portNumber, z.string().min(1).max(63)]),
    host: hostText.optional(),
    mode: pathModeSchema.optional(),
  })
  .strict();
export type ClientOpen = z.infer<typeof clientOpenSchema>;

/** OPEN payload from the gateway to an agent: the resolved local target and who asked. */
export const agentOpenSchema = z
  .object({ host: hostText, port: portNumber, client: shortText })
  .strict();
export type AgentOpen = z.infer<typeof agentOpenSchema>;

export const openPayloadSchema = z.union([clientOpenSchema, agentOpenSchema]);
export type OpenPayload = z.infer<typeof openPayloadSchema>;

export const openOkSchema = z.object({ path: z.enum(['relay', 'direct']).optional() }).strict();
export type OpenOk = z.infer<typeof openOkSchema>;

export const resetSchema = z
  .object({ code: z.enum(Object.values(StreamErrorCode) as [StreamErrorCode, ...StreamErrorCode[]]), message: shortText })
  .strict();
export type ResetPayload = z.infer<typeof resetSchema>;

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
