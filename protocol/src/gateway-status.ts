/**
 * The gateway-status contract between gateway replicas and the operator.
 *
 * Each gateway replica renews one ConfigMap (`narrowlink-gateway-<identity>`, labelled with
 * {@link GATEWAY_STATUS_LABELS}) like a lease: annotation {@link GatewayStatusAnnotation.RENEW_TIME} says when,
 * {@link GatewayStatusAnnotation.LEASE_DURATION} for how long (seconds), and
 * {@link GatewayStatusAnnotation.AGENTS} lists `{ "namespace/name": AgentPresenceReport }`. The operator sums
 * the live ones into each agent's status. Both sides import this module, so the names and the document's
 * shape are written once.
 */

/** `app.kubernetes.io/component` of a status ConfigMap. */
export const GATEWAY_STATUS_COMPONENT = 'gateway-status';

/** Labels every gateway-status ConfigMap carries. */
export const GATEWAY_STATUS_LABELS = {
  'app.kubernetes.io/managed-by': 'narrowlink-gateway',
  'app.kubernetes.io/part-of': 'narrowlink',
  'app.kubernetes.io/component': GATEWAY_STATUS_COMPONENT,
} as const;

/** Label selector that finds every replica's status ConfigMap. */
export const GATEWAY_STATUS_SELECTOR = `app.kubernetes.io/component=${GATEWAY_STATUS_COMPONENT}`;

export const GatewayStatusAnnotation = {
  /** JSON: `{ "namespace/name": AgentPresenceReport }`. */
  AGENTS: 'narrowlink.io/agents',
  /** RFC 3339 time of the last renewal. */
  RENEW_TIME: 'narrowlink.io/renew-time',
  /** Whole seconds the report stays valid after its renewal. */
  LEASE_DURATION: 'narrowlink.io/lease-duration-seconds',
} as const;

/** Lease duration assumed when the annotation is missing or not a positive number, seconds. */
export const DEFAULT_GATEWAY_STATUS_LEASE_SECONDS = 30;

/** What one replica reports about one agent. */
export interface AgentPresenceReport {
  /** Instances of the agent attached to this replica. */
  instances: number;
  /** NAT behaviour this replica's probes measured (direct path); absent until measured. */
  nat?: string;
  /** Direct paths this replica brokered to the agent that are up; absent when none. */
  directPaths?: number;
}

/** One replica's report, keyed `namespace/name`. */
export type GatewayStatusReport = Record<string, AgentPresenceReport>;

/** The value of the {@link GatewayStatusAnnotation.AGENTS} annotation. */
export function encodeGatewayStatus(report: GatewayStatusReport): string {
  return JSON.stringify(report);
}

/**
 * Reads the {@link GatewayStatusAnnotation.AGENTS} annotation. Lenient, because a replica of another version
 * may have written it: a malformed document counts as no agents, and each field is kept only when it has
 * its type (an entry without a usable `instances` keeps `instances` undefined so callers can skip it).
 */
export function parseGatewayStatus(text: string | undefined): Record<string, Partial<AgentPresenceReport>> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text ?? '{}');
  } catch {
    return {};
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return {};
  const out: Record<string, Partial<AgentPresenceReport>> = {};
  for (const [key, value] of Object.entries(parsed as Record<string, unknown>)) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      out[key] = {};
      continue;
    }
    const entry = value as Record<string, unknown>;
    const report: Partial<AgentPresenceReport> = {};
    if (typeof entry.instances === 'number') report.instances = entry.instances;
    if (typeof entry.nat === 'string') report.nat = entry.nat;
    if (typeof entry.directPaths === 'number') report.directPaths = entry.directPaths;
    out[key] = report;
  }
  return out;
}
