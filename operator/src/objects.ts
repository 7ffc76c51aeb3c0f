/**
 * Wire shapes (plain JSON, as sent in a server-side apply body) of the Kubernetes objects the operator
 * writes or reads back. Only the fields Narrowlink uses: apply sends exactly the fields it owns.
 */
import type { ObjectMeta, OwnerReference } from './crds/common.ts';

/** core/v1 Secret. `data` values are base64. */
export interface Secret {
  apiVersion: 'v1';
  kind: 'Secret';
  metadata: ObjectMeta;
  type?: string;
  data?: Record<string, string>;
}

/** cert-manager issuer reference. */
export interface IssuerRef {
  name: string;
  kind: string;
  group: string;
}

/** cert-manager.io/v1 Certificate (the fields the operator sets, plus the status it reads). */
export interface Certificate {
  apiVersion: 'cert-manager.io/v1';
  kind: 'Certificate';
  metadata: ObjectMeta;
  spec: {
    secretName: string;
    dnsNames: string[];
    issuerRef: IssuerRef;
    privateKey?: { rotationPolicy?: 'Always' | 'Never' };
    secretTemplate?: { labels?: Record<string, string>; annotations?: Record<string, string> };
  };
  status?: { conditions?: Array<{ type: string; status: string; reason?: string; message?: string }> };
}

/** Anything with apiVersion, kind and metadata: a possible owner. */
export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
}

/**
 * The controller owner reference pointing at `owner`, so the garbage collector deletes dependents with it.
 * `blockOwnerDeletion` needs `update` on the owner's `finalizers` subresource in the operator's RBAC.
 * Throws TypeError when the owner has no name or uid (it was not read from the API).
 */
export function controllerReference(owner: KubeObject): OwnerReference {
  const { name, uid } = owner.metadata;
  if (name === undefined || uid === undefined) {
    throw new TypeError(`controllerReference: ${owner.kind} has no metadata.name/uid (not read from the API?)`);
  }
  return { apiVersion: owner.apiVersion, kind: owner.kind, name, uid, controller: true, blockOwnerDeletion: true };
}

/** True when the object is being deleted (`deletionTimestamp` set). */
export function isDeleting(obj: { metadata: ObjectMeta }): boolean {
  return obj.metadata.deletionTimestamp !== undefined && obj.metadata.deletionTimestamp !== null;
}

/** `namespace/name` of an object. */
export function objectKey(obj: { metadata: ObjectMeta }): string {
  return `${obj.metadata.namespace ?? ''}/${obj.metadata.name ?? ''}`;
}
