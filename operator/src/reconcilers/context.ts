/**
 * What every reconciler gets: the API client, the informer caches (gather reads these, never the
 * API, so a reconcile costs no list), the event recorder, the clock, and the operator's settings.
 */
import type { Informer, KubeClient } from '@narrowlink/kube';
import type { GatewayTokenRules } from '@narrowlink/protocol';
import type { Logger } from 'pino';
import type { EventRecorder } from '../events.ts';
import type { IssuerRef } from '../objects.ts';
import type { SigningKey } from '../signing-key.ts';
import type { LoginSettings } from './client-login/desired.ts';
import type { Problem } from './gateway-config/desired.ts';

/** Where the discovery ConfigMap and the gateway TLS Secret are (both in the operator's namespace). */
export interface DiscoverySettings {
  configMap: string;
  caSecret: string;
}

export interface OperatorSettings {
  /** Namespace of the operator and the gateway (config Secret, Lease). */
  namespace: string;
  gatewayConfigSecret: string;
  allowCrossNamespacePolicies: boolean;
  /** The gateway config's `tokens` section (lifetime limits, denylist); absent: the gateway's defaults. */
  gatewayTokenRules?: GatewayTokenRules;
  defaultIssuerRef?: IssuerRef;
  /** `narrowlink login`: token lifetime cap, request collection, rate limit. Default `DEFAULT_LOGIN_SETTINGS`. */
  login?: LoginSettings;
  /** Keep the discovery ConfigMap's ca.crt equal to the gateway TLS Secret's (unset: the chart renders it). */
  discovery?: DiscoverySettings;
}

export interface ReconcileContext {
  client: KubeClient;
  log: Logger;
  events: EventRecorder;
  now(): number;
  settings: OperatorSettings;
  signingKey: SigningKey;
  caches: { agents: Informer; policies: Informer; certificates: Informer; secrets: Informer; pods: Informer; gatewayStatus: Informer; loginRequests: Informer };
  /** Problems found by the last gateway-config compile, keyed `Kind/namespace/name`. */
  problems: Map<string, Problem>;
}

export interface ReconcileResult {
  /** Reconcile this key again after this many ms (token rotation, policy expiry). */
  requeueAfterMs?: number;
}

export function problemKey(kind: string, namespace: string, name: string): string {
  return `${kind}/${namespace}/${name}`;
}
