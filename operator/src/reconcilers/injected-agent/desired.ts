/**
 * The NarrowlinkAgent of a workload whose pods carry an injected sidecar: one agent per workload (all
 * replicas are instances of it), exposing what the pod annotations ask for, and listing the pods'
 * ServiceAccounts so the gateway lets their projected tokens attach as this agent. Pure.
 */
import { AGENT_KIND } from '../../crds/narrowlink-agent.ts';
import { LABEL_MANAGED_BY, MANAGED_BY } from '../../labels.ts';
import { parseInjectionAnnotations } from '../../webhook/annotations.ts';

export const LABEL_INJECTED_AGENT = 'narrowlink.io/injected';

export interface InjectedPod {
  metadata: {
    name?: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    creationTimestamp?: string;
    deletionTimestamp?: string;
  };
  spec?: { serviceAccountName?: string };
}

export interface WorkloadOwner {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
}

export interface DesiredInjectedAgent {
  /** The server-side apply body, or undefined when no live pod asks for the agent. */
  agent?: {
    apiVersion: 'narrowlink.io/v1alpha1';
    kind: typeof AGENT_KIND;
    metadata: { name: string; namespace: string; labels: Record<string, string>; ownerReferences?: object[] };
    spec: { expose: Array<{ name: string; port: number }>; serviceAccounts: string[] };
  };
  /** Pods whose annotations are invalid (the webhook admitted them without a sidecar, or they changed since). */
  problems: string[];
}

export function desiredInjectedAgent(namespace: string, name: string, pods: readonly InjectedPod[], owner?: WorkloadOwner): DesiredInjectedAgent {
  const live = pods.filter((p) => !p.metadata.deletionTimestamp);
  const problems: string[] = [];
  // The newest pod's template wins: during a rolling update the new annotations are the intended ones.
  const byAge = [...live].sort((a, b) => (b.metadata.creationTimestamp ?? '').localeCompare(a.metadata.creationTimestamp ?? ''));
  let expose: Array<{ name: string; port: number }> | undefined;
  for (const pod of byAge) {
    const parsed = parseInjectionAnnotations(pod.metadata.annotations);
    if (parsed.requested && parsed.ok) {
      expose ??= parsed.spec.expose.map((e) => ({ name: e.name, port: e.port }));
    } else if (parsed.requested && !parsed.ok) {
      problems.push(`pod ${pod.metadata.name}: ${parsed.problems.join('; ')}`);
    }
  }
  if (!expose) return { problems };
  const serviceAccounts = [...new Set(live.map((p) => p.spec?.serviceAccountName || 'default'))].sort();
  return {
    agent: {
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: AGENT_KIND,
      metadata: {
        name,
        namespace,
        labels: { [LABEL_MANAGED_BY]: MANAGED_BY, [LABEL_INJECTED_AGENT]: 'true' },
        // Owned by the workload (not as controller): deleting the Deployment deletes the agent.
        ...(owner ? { ownerReferences: [{ ...owner, controller: false, blockOwnerDeletion: false }] } : {}),
      },
      spec: { expose, serviceAccounts },
    },
    problems,
  };
}
