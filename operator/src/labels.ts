/**
 * The labels, field manager and finalizer the operator stamps on Kubernetes objects, defined once. Gather
 * finds owned objects by these labels (cert-manager's Secrets carry no owner reference, so labels are the
 * only way back to the agent that caused them); apply writes under {@link FIELD_MANAGER}.
 */
import { boundedName } from './names.ts';

/** Standard label: which tool manages the object. */
export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
/** Value of {@link LABEL_MANAGED_BY} on everything the operator creates. */
export const MANAGED_BY = 'narrowlink-operator';
/** Standard label: the application the object is part of. */
export const LABEL_PART_OF = 'app.kubernetes.io/part-of';
/** Value of {@link LABEL_PART_OF}. */
export const PART_OF = 'narrowlink';
/** Standard label: the role of the object. */
export const LABEL_COMPONENT = 'app.kubernetes.io/component';
/** Kind of the Narrowlink object that caused this one. */
export const LABEL_OWNER_KIND = 'narrowlink.io/owner-kind';
/** Namespace of the owner. */
export const LABEL_OWNER_NAMESPACE = 'narrowlink.io/owner-namespace';
/** Name of the owner (hash-shortened past 63 characters, the label value limit). */
export const LABEL_OWNER_NAME = 'narrowlink.io/owner-name';
/**
 * Pod label naming the NarrowlinkAgent an injected sidecar attaches as: the webhook sets it, the operator
 * finds injected pods by it.
 */
export const LABEL_AGENT = 'narrowlink.io/agent';

/** Values of {@link LABEL_COMPONENT}. */
export const Component = {
  GatewayConfig: 'gateway-config',
  AgentToken: 'agent-token',
  Certificate: 'certificate',
  SigningKey: 'signing-key',
  WebhookCertificate: 'webhook-certificate',
  /** The operator's own CA (no cert-manager): signs the gateway certificate. */
  OperatorCa: 'ca',
  /** The gateway's serving certificate issued by the operator. */
  GatewayTls: 'gateway-tls',
  /** The gateway CA copied into namespaces with injected sidecars. */
  CaBundle: 'ca-bundle',
} as const;
export type Component = (typeof Component)[keyof typeof Component];

/** The one server-side apply field manager of the operator. */
export const FIELD_MANAGER = 'narrowlink-operator';
/**
 * The field manager of status writes. Kubernetes before 1.22 records status and spec ownership in one
 * list without telling subresources apart, so one manager applying both would fight itself.
 */
export const STATUS_FIELD_MANAGER = 'narrowlink-operator-status';
/** Finalizer on NarrowlinkAgents: removed once Certificates and their Secrets are gone. */
export const FINALIZER = 'narrowlink.io/cleanup';

/** Identity of an owner for labelling. */
export interface OwnerIdentity {
  kind: string;
  namespace: string;
  name: string;
}

/** Longest label value Kubernetes accepts. */
const LABEL_VALUE_MAX = 63;

/** Labels of an operator-managed object that has no single owner (the gateway config Secret). */
export function managedLabels(component: Component): Record<string, string> {
  return { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_PART_OF]: PART_OF, [LABEL_COMPONENT]: component };
}

/** Labels of an object created on behalf of `owner`. */
export function ownerLabels(owner: OwnerIdentity, component: Component): Record<string, string> {
  return {
    ...managedLabels(component),
    [LABEL_OWNER_KIND]: owner.kind,
    [LABEL_OWNER_NAMESPACE]: owner.namespace,
    [LABEL_OWNER_NAME]: boundedName(owner.name, LABEL_VALUE_MAX),
  };
}

/** Label selector string (`k=v,k=v`) that lists the objects of `component` created for `owner`. */
export function ownerSelector(owner: OwnerIdentity, component: Component): string {
  return Object.entries(ownerLabels(owner, component))
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
}

/** True when `labels` carry every owner label of `owner` and `component`: only such objects may be deleted. */
export function hasOwnerLabels(
  labels: Record<string, string> | undefined,
  owner: OwnerIdentity,
  component: Component,
): boolean {
  if (labels === undefined) return false;
  return Object.entries(ownerLabels(owner, component)).every(([k, v]) => labels[k] === v);
}
