/**
 * gather (injected pods of one workload from the pod cache; the workload owner, resolving a
 * ReplicaSet to its Deployment) → desired (pure) → apply (server-side apply of the agent's spec).
 * An agent of the same name that a person created is left alone, with a Warning Event.
 */
import { type KubeObject, Resources, type ResourceType } from '@narrowlink/kube';
import { FIELD_MANAGER, LABEL_AGENT, LABEL_MANAGED_BY, MANAGED_BY } from '../../labels.ts';
import { controllerOf } from '../../webhook/agent-name.ts';
import type { ReconcileContext, ReconcileResult } from '../context.ts';
import { desiredInjectedAgent, type InjectedPod, type WorkloadOwner } from './desired.ts';

const replicaSets: ResourceType = { group: 'apps', version: 'v1', plural: 'replicasets', kind: 'ReplicaSet', namespaced: true };

async function workloadOwner(ctx: ReconcileContext, pod: KubeObject): Promise<WorkloadOwner | undefined> {
  const refs = (pod.metadata.ownerReferences ?? []) as Array<{ apiVersion: string; kind: string; name: string; uid: string; controller?: boolean }>;
  const controller = controllerOf(pod.metadata as never) ? refs.find((r) => r.controller === true) : undefined;
  if (!controller) return undefined;
  if (controller.kind !== 'ReplicaSet') return { apiVersion: controller.apiVersion, kind: controller.kind, name: controller.name, uid: controller.uid };
  // A ReplicaSet is replaced on every rollout; the Deployment above it is the workload.
  const rs = await ctx.client.get(replicaSets, pod.metadata.namespace, controller.name);
  const deployment = ((rs?.metadata.ownerReferences ?? []) as typeof refs).find((r) => r.controller === true && r.kind === 'Deployment');
  const top = deployment ?? controller;
  return { apiVersion: top.apiVersion, kind: top.kind, name: top.name, uid: top.uid };
}

export async function reconcileInjectedAgent(ctx: ReconcileContext, key: string, pods: KubeObject[]): Promise<ReconcileResult> {
  const [namespace, name] = key.split('/') as [string, string];
  const mine = pods.filter((p) => p.metadata.namespace === namespace && p.metadata.labels?.[LABEL_AGENT] === name);
  if (mine.length === 0) return {};
  const owner = await workloadOwner(ctx, mine[0] as KubeObject);
  const desired = desiredInjectedAgent(namespace, name, mine as unknown as InjectedPod[], owner);
  const existing = ctx.caches.agents.get(key);
  for (const problem of desired.problems) {
    void ctx.events.record(mine[0] as KubeObject, 'Warning', 'InvalidInjectionAnnotations', problem);
  }
  if (!desired.agent) return {};
  if (existing && existing.metadata.labels?.[LABEL_MANAGED_BY] !== MANAGED_BY) {
    void ctx.events.record(existing, 'Warning', 'AgentNotManaged', `pods of ${name} carry injected sidecars, but this NarrowlinkAgent was made by hand: add their ServiceAccounts (${desired.agent.spec.serviceAccounts.join(', ')}) to spec.serviceAccounts yourself`);
    return {};
  }
  // Skip the write when nothing we own differs (the server adds defaults, so compare our fields only).
  const current = existing?.spec as { expose?: Array<{ name: string; port: number }>; serviceAccounts?: string[] } | undefined;
  const ours = (spec: { expose?: Array<{ name: string; port: number }>; serviceAccounts?: string[] } | undefined): string =>
    JSON.stringify([(spec?.expose ?? []).map((e) => `${e.name}=${e.port}`), spec?.serviceAccounts ?? []]);
  if (current && ours(current) === ours(desired.agent.spec)) return {};
  await ctx.client.apply(Resources.narrowlinkAgent, desired.agent as unknown as KubeObject, { fieldManager: FIELD_MANAGER, force: true });
  ctx.log.info({ agent: key, serviceAccounts: desired.agent.spec.serviceAccounts }, 'agent of injected workload applied');
  return {};
}
