/**
 * The NarrowlinkAgent name of a pod: all replicas of one workload share one agent (with several connected
 * instances), so the name comes from the workload, not the pod. Pure; the operator's pod reconciler and the
 * webhook derive the same name from the same pod.
 */
import { boundedName } from '../names.ts';

/** The label the ReplicaSet controller puts on its pods; the ReplicaSet is named `<deployment>-<hash>`. */
export const POD_TEMPLATE_HASH_LABEL = 'pod-template-hash';

/** Longest DNS-1123 label (and label value). */
const NAME_MAX = 63;

/** Owner kinds whose name is the workload's: their pods are interchangeable replicas of it. */
const WORKLOAD_KINDS = new Set(['StatefulSet', 'DaemonSet', 'Job', 'ReplicationController']);

/** The metadata fields the derivation reads. */
export interface PodNameSource {
  name?: string;
  generateName?: string;
  labels?: Record<string, string>;
  ownerReferences?: Array<{ kind?: string; name?: string; controller?: boolean }>;
}

/** The pod's controlling owner (`controller: true`), if any. */
export function controllerOf(meta: PodNameSource): { kind: string; name: string } | undefined {
  const owner = (meta.ownerReferences ?? []).find((o) => o.controller === true);
  if (!owner || typeof owner.kind !== 'string' || typeof owner.name !== 'string' || owner.name === '') return undefined;
  return { kind: owner.kind, name: owner.name };
}

/**
 * Turns any object name into a DNS-1123 label: lowercase, characters outside `[a-z0-9-]` (dots of
 * subdomain names) become `-`, no `-` at either end, at most 63 characters (a longer name keeps a prefix
 * and gains a hash of the whole, so two long names never collide). `fallback` when nothing is left.
 */
export function toDnsLabel(raw: string, fallback = 'agent'): string {
  const cleaned = raw
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/^-+|-+$/g, '');
  if (cleaned === '') return fallback;
  return boundedName(cleaned, NAME_MAX, raw);
}

/**
 * The workload name behind a pod, before DNS-label normalisation:
 * - owned by a ReplicaSet named `NAME-HASH` whose pods carry `pod-template-hash: HASH` → `NAME` (the Deployment);
 * - owned by a StatefulSet, DaemonSet, Job or ReplicationController (or a ReplicaSet without that label) → its name;
 * - otherwise (no controller, or another controller kind, e.g. a mirror pod's Node) → the pod's name, or its
 *   `generateName` without the trailing `-` when the name is not generated yet (admission of a generateName pod).
 */
export function workloadName(meta: PodNameSource): string {
  const owner = controllerOf(meta);
  if (owner?.kind === 'ReplicaSet') {
    const hash = meta.labels?.[POD_TEMPLATE_HASH_LABEL];
    if (hash && owner.name.endsWith(`-${hash}`) && owner.name.length > hash.length + 1) {
      return owner.name.slice(0, -(hash.length + 1));
    }
    return owner.name;
  }
  if (owner && WORKLOAD_KINDS.has(owner.kind)) return owner.name;
  if (meta.name) return meta.name;
  if (meta.generateName) return meta.generateName.replace(/[-.]+$/, '');
  return '';
}

/** The agent name of a pod without an `narrowlink.io/agent-name` override: {@link workloadName} as a DNS label. */
export function agentNameForPod(meta: PodNameSource): string {
  return toDnsLabel(workloadName(meta), 'pod');
}
