/**
 * The apply step every reconciler ends with: write `.status` through the status subresource, but only when
 * the desired status differs from what the cache holds, so a reconcile that changes nothing costs no write
 * (and no watch event that would bring the object back).
 */
import { isDeepStrictEqual } from 'node:util';
import type { KubeClient, KubeObject, ResourceType } from '@narrowlink/kube';
import { STATUS_FIELD_MANAGER } from '../labels.ts';

/**
 * Server-side applies `status` to the object `namespace/name` of `type` under {@link STATUS_FIELD_MANAGER},
 * unless it equals `observed` (the cached status; absent counts as `{}`). Resolves true when it wrote.
 */
export async function applyStatusIfChanged(
  client: KubeClient,
  type: ResourceType,
  target: { namespace: string; name: string },
  observed: object | undefined,
  status: object,
): Promise<boolean> {
  // Key order differs from what the apiserver returns (it sorts keys): compare structurally, not as text.
  if (isDeepStrictEqual(status, observed ?? {})) return false;
  await client.apply(
    type,
    { apiVersion: `${type.group}/${type.version}`, kind: type.kind, metadata: { name: target.name, namespace: target.namespace }, status } as KubeObject,
    { fieldManager: STATUS_FIELD_MANAGER, force: true, subresource: 'status' },
  );
  return true;
}
