/**
 * Which agents are attached, from the status ConfigMaps gateway replicas renew like leases (see
 * gateway/src/status-reporter.ts). Pure: one counts while `renew-time + lease-duration-seconds` is
 * in the future.
 */
export const AGENTS_ANNOTATION = 'narrowlink.io/agents';
export const RENEW_TIME_ANNOTATION = 'narrowlink.io/renew-time';
export const LEASE_DURATION_ANNOTATION = 'narrowlink.io/lease-duration-seconds';
export const GATEWAY_STATUS_SELECTOR = 'app.kubernetes.io/component=gateway-status';

export interface StatusLease {
  metadata: { name?: string; annotations?: Record<string, string> };
}

export interface AgentPresence {
  /** Attached instances over every live gateway replica. */
  instances: number;
  /** NAT type reported by any replica, when one did. */
  nat?: string;
  /** Direct paths up to this agent, summed over replicas (absent when none reported any). */
  directPaths?: number;
  /** When the earliest contributing Lease expires (ms): presence must be re-evaluated then. */
  expiresAtMs?: number;
}

/** Agents named in a Lease's annotation (malformed annotations count as none). */
export function agentsOf(lease: StatusLease): Record<string, { instances?: number; nat?: string; directPaths?: number }> {
  try {
    const parsed = JSON.parse(lease.metadata.annotations?.[AGENTS_ANNOTATION] ?? '{}') as unknown;
    return parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as Record<string, { instances?: number; nat?: string; directPaths?: number }>) : {};
  } catch {
    return {};
  }
}

export function presenceOf(agentKey: string, leases: readonly StatusLease[], nowMs: number): AgentPresence {
  const out: AgentPresence = { instances: 0 };
  for (const lease of leases) {
    const renewed = Date.parse(lease.metadata.annotations?.[RENEW_TIME_ANNOTATION] ?? '');
    const duration = Number(lease.metadata.annotations?.[LEASE_DURATION_ANNOTATION] ?? 30);
    const expiresAtMs = renewed + (Number.isFinite(duration) && duration > 0 ? duration : 30) * 1000;
    if (!Number.isFinite(renewed) || expiresAtMs <= nowMs) continue;
    const entry = agentsOf(lease)[agentKey];
    if (!entry || typeof entry.instances !== 'number' || entry.instances <= 0) continue;
    out.instances += Math.floor(entry.instances);
    if (typeof entry.nat === 'string' && entry.nat.length > 0) out.nat = entry.nat;
    if (typeof entry.directPaths === 'number' && Number.isFinite(entry.directPaths) && entry.directPaths > 0) {
      out.directPaths = (out.directPaths ?? 0) + Math.floor(entry.directPaths);
    }
    out.expiresAtMs = Math.min(out.expiresAtMs ?? Number.POSITIVE_INFINITY, expiresAtMs);
  }
  return out;
}
