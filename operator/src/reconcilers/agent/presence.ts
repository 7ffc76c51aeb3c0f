/**
 * Which agents are attached, from the status ConfigMaps gateway replicas renew like leases. The names, the
 * selector and the document's shape are the contract in `@narrowlink/protocol` (gateway-status), which the
 * gateway writes from. Pure: one counts while `renew-time + lease-duration-seconds` is in the future.
 */
import {
  type AgentPresenceReport,
  DEFAULT_GATEWAY_STATUS_LEASE_SECONDS,
  GatewayStatusAnnotation,
  parseGatewayStatus,
} from '@narrowlink/protocol';

/** The part of a gateway replica's status ConfigMap the operator reads. */
export interface GatewayStatusConfigMap {
  metadata: { name?: string; annotations?: Record<string, string> };
}

export interface AgentPresence {
  /** Attached instances over every live gateway replica. */
  instances: number;
  /** NAT type reported by any replica, when one did. */
  nat?: string;
  /** Direct paths up to this agent, summed over replicas (absent when none reported any). */
  directPaths?: number;
  /** When the earliest contributing report expires (ms): presence must be re-evaluated then. */
  expiresAtMs?: number;
}

/** Agents named in a status ConfigMap's report (a malformed report counts as none). */
export function agentsOf(configMap: GatewayStatusConfigMap): Record<string, Partial<AgentPresenceReport>> {
  return parseGatewayStatus(configMap.metadata.annotations?.[GatewayStatusAnnotation.AGENTS]);
}

/** The presence of `agentKey` (`namespace/name`) summed over the reports still live at `nowMs`. */
export function presenceOf(agentKey: string, configMaps: readonly GatewayStatusConfigMap[], nowMs: number): AgentPresence {
  const out: AgentPresence = { instances: 0 };
  for (const configMap of configMaps) {
    const annotations = configMap.metadata.annotations;
    const renewed = Date.parse(annotations?.[GatewayStatusAnnotation.RENEW_TIME] ?? '');
    const duration = Number(annotations?.[GatewayStatusAnnotation.LEASE_DURATION] ?? DEFAULT_GATEWAY_STATUS_LEASE_SECONDS);
    const leaseSeconds = Number.isFinite(duration) && duration > 0 ? duration : DEFAULT_GATEWAY_STATUS_LEASE_SECONDS;
    const expiresAtMs = renewed + leaseSeconds * 1000;
    if (!Number.isFinite(renewed) || expiresAtMs <= nowMs) continue;
    // parseGatewayStatus kept only fields of the right type; what is left to check is their value.
    const entry = agentsOf(configMap)[agentKey];
    if (entry?.instances === undefined || entry.instances <= 0) continue;
    out.instances += Math.floor(entry.instances);
    if (entry.nat) out.nat = entry.nat;
    if (entry.directPaths !== undefined && Number.isFinite(entry.directPaths) && entry.directPaths > 0) {
      out.directPaths = (out.directPaths ?? 0) + Math.floor(entry.directPaths);
    }
    out.expiresAtMs = Math.min(out.expiresAtMs ?? Number.POSITIVE_INFINITY, expiresAtMs);
  }
  return out;
}
