/**
 * gather (the policy and its compile problem from the caches) → desired (pure, {@link desiredPolicyStatus})
 * → apply (Events, then the status when it changed).
 */
import { Resources } from '@narrowlink/kube';
import { type AccessPolicy, POLICY_KIND } from '../../crds/access-policy.ts';
import { problemKey, type ReconcileContext, type ReconcileResult } from '../context.ts';
import { applyStatusIfChanged } from '../status.ts';
import { desiredPolicyStatus } from './desired.ts';

export async function reconcilePolicy(ctx: ReconcileContext, key: string): Promise<ReconcileResult> {
  // gather
  const cached = ctx.caches.policies.get(key);
  if (!cached) return {};
  const policy = cached as unknown as AccessPolicy;
  const namespace = policy.metadata.namespace ?? '';
  const name = policy.metadata.name ?? '';
  const problem = ctx.problems.get(problemKey(POLICY_KIND, namespace, name));
  // desired
  const desired = desiredPolicyStatus({ policy, problem, nowMs: ctx.now() });
  // apply
  for (const event of desired.events) void ctx.events.record(cached, event.type, event.reason, event.message);
  await applyStatusIfChanged(ctx.client, Resources.accessPolicy, { namespace, name }, policy.status, desired.status);
  return desired.requeueAfterMs !== undefined ? { requeueAfterMs: desired.requeueAfterMs } : {};
}
