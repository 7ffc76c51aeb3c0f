/**
 * Whether a client's OPEN may go through the relay, as a pure function of the client's policy, the agent its
 * reference resolved to and the request: the agent and exposed port to dial, or the stream error code and message to
 * reset the stream with. The gateway adds what depends on live state (shutdown, an attached instance) and
 * does the wiring (agent leg, timer, splice).
 */
import { type AgentConfig, type ClientOpen, type CompiledPolicy, type ExposedPort, StreamErrorCode } from '@narrowlink/protocol';

/** A relayed OPEN refused: the RESET the client's stream gets. */
export interface RelayRefusal {
  readonly code: StreamErrorCode;
  readonly message: string;
}

/** The decision: the agent and its exposed port to open, or a refusal. */
export type RelayOpenDecision = { readonly agent: AgentConfig; readonly exposed: ExposedPort } | RelayRefusal;

/**
 * Decides a client OPEN over the relay. `agent` is what the client's reference resolved to among the agents its
 * policy lets it see (undefined: none, reported as absent so names do not leak). In order:
 * NO_AGENT (not resolved), DENIED (no such exposed port), DIRECT_UNAVAILABLE (the client asked for mode direct),
 * RELAY_NOT_OFFERED (the agent is direct-only, or policy allows the target over the direct path only), DENIED
 * (policy denies it).
 */
export function decideRelayOpen(policy: CompiledPolicy, agent: AgentConfig | undefined, request: ClientOpen): RelayOpenDecision {
  if (!agent) return { code: StreamErrorCode.NO_AGENT, message: `no agent "${request.agent}" that you may reach` };
  const exposed =
    typeof request.port === 'number'
      ? agent.expose.find((p) => p.port === request.port && (request.host === undefined || p.host === request.host))
      : agent.expose.find((p) => p.name === request.port);
  if (!exposed) return { code: StreamErrorCode.DENIED, message: `agent "${agent.name}" exposes no port ${request.port}${request.host ? ` on ${request.host}` : ''}` };
  if (request.mode === 'direct') {
    // The relay never carries a direct-mode stream: it travels on the direct path the client sets up itself.
    return {
      code: StreamErrorCode.DIRECT_UNAVAILABLE,
      message:
        'direct-mode streams travel on the direct path (ask for one with direct_request); the relay does not carry them. Use mode auto or relay to go through the gateway',
    };
  }
  if (agent.mode === 'direct') {
    return { code: StreamErrorCode.RELAY_NOT_OFFERED, message: `agent "${agent.name}" offers direct paths only (mode direct); use mode auto or direct` };
  }
  const decision = policy.evaluate({ agent, host: exposed.host, port: exposed.port, path: 'Relay' });
  if (!decision.allowed) {
    // Allowed over Direct but not over Relay: say so, so that an auto-mode client waits for its direct path.
    if (policy.evaluate({ agent, host: exposed.host, port: exposed.port, path: 'Direct' }).allowed) {
      return { code: StreamErrorCode.RELAY_NOT_OFFERED, message: `policy allows ${agent.name}:${exposed.port} over the direct path only` };
    }
    return { code: StreamErrorCode.DENIED, message: `policy denies ${agent.name}:${exposed.port} (${decision.reason})` };
  }
  return { agent, exposed };
}
