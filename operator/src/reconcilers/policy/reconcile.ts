/** An AccessPolicy's status: Ready when it is valid and in force, False (with an Event) otherwise. */
import { isDeepStrictEqual } from 'node:util';
import { type KubeObject, Resources } from '@narrowlink/kube';
import { type AccessPolicy, POLICY_KIND, PolicyConditionType } from '../../crds/access-policy.ts';
import { STATUS_FIELD_MANAGER } from '../../labels.ts';
import { setCondition } from '../conditions.ts';
import { problemKey, type ReconcileContext, type ReconcileResult } from '../context.ts';

export async function reconcilePolicy(ctx: ReconcileContext, key: string): Promise<ReconcileResult> {
  const cached = ctx.caches.policies.get(key);
  if (!cached) return {};
  const policy = cached as unknown as AccessPolicy;
  const namespace = policy.metadata.namespace ?? '';
  const name = policy.metadata.name ?? '';
  const generation = policy.metadata.generation ?? 0;
  const nowMs = ctx.now();
  const problem = ctx.problems.get(problemKey(POLICY_KIND, namespace, name));
  const expiresAtMs = policy.spec.expiresAt ? Date.parse(policy.spec.expiresAt) : undefined;
  const expired = expiresAtMs !== undefined && expiresAtMs <= nowMs;
  if (problem) void ctx.events.record(cached, 'Warning', problem.reason, problem.message);
  const conditions = setCondition(
    policy.status?.conditions,
    problem
      ? { type: PolicyConditionType.Ready, status: 'False', reason: problem.reason, message: problem.message, observedGeneration: generation }
      : expired
        ? { type: PolicyConditionType.Ready, status: 'False', reason: 'Expired', message: `expired at ${policy.spec.expiresAt}`, observedGeneration: generation }
        : { type: PolicyConditionType.Ready, status: 'True', reason: 'InForce', message: 'the policy is in the gateway configuration', observedGeneration: generation },
    new Date(nowMs).toISOString(),
  );
  const status = { ...policy.status, conditions, observedGeneration: generation };
  // Key order differs from what the apiserver returns (it sorts keys): compare structurally, not as text.
  if (!isDeepStrictEqual(status, policy.status ?? {})) {
    await ctx.client.apply(
      Resources.accessPolicy,
      { apiVersion: 'narrowlink.io/v1alpha1', kind: POLICY_KIND, metadata: { name, namespace }, status } as KubeObject,
      { fieldManager: STATUS_FIELD_MANAGER, force: true, subresource: 'status' },
    );
  }
  return expiresAtMs !== undefined && !expired ? { requeueAfterMs: expiresAtMs - nowMs + 100 } : {};
}
