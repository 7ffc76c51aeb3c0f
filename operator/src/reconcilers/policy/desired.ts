/**
 * An AccessPolicy's status, pure: Ready when it is valid and in force, False (with a Warning Event) when the
 * gateway-config compile left it out, False with reason Expired once `spec.expiresAt` has passed.
 */
import type { Condition } from '../../crds/common.ts';
import type { DesiredEvent } from '../../events.ts';
import { type AccessPolicy, type AccessPolicyStatus, PolicyConditionType } from '../../crds/access-policy.ts';
import { setCondition } from '../conditions.ts';
import type { Problem } from '../gateway-config/desired.ts';

/** Reasons of the policy's Ready condition besides the compile problems ({@link Problem}'s reasons). */
export const PolicyConditionReason = {
  /** `spec.expiresAt` has passed; the gateway no longer applies the policy. */
  Expired: 'Expired',
  /** Valid, in the gateway configuration, not expired. */
  InForce: 'InForce',
} as const;
export type PolicyConditionReason = (typeof PolicyConditionReason)[keyof typeof PolicyConditionReason];

/** What {@link desiredPolicyStatus} decides from. */
export interface PolicyStatusInput {
  policy: AccessPolicy;
  /** The problem the last gateway-config compile found with this policy, if any. */
  problem?: Pick<Problem, 'reason' | 'message'> | undefined;
  nowMs: number;
}

/** The policy's status, the Events to record, and when to look again. */
export interface DesiredPolicyStatus {
  conditions: Condition[];
  status: AccessPolicyStatus;
  events: DesiredEvent[];
  /** Reconcile again after this many ms: just after the policy expires (absent once expired or without expiry). */
  requeueAfterMs?: number;
}

export function desiredPolicyStatus({ policy, problem, nowMs }: PolicyStatusInput): DesiredPolicyStatus {
  const generation = policy.metadata.generation ?? 0;
  const expiresAtMs = policy.spec.expiresAt ? Date.parse(policy.spec.expiresAt) : undefined;
  const expired = expiresAtMs !== undefined && expiresAtMs <= nowMs;
  const events: DesiredEvent[] = problem ? [{ type: 'Warning', reason: problem.reason, message: problem.message }] : [];
  const conditions = setCondition(
    policy.status?.conditions,
    problem
      ? { type: PolicyConditionType.Ready, status: 'False', reason: problem.reason, message: problem.message, observedGeneration: generation }
      : expired
        ? { type: PolicyConditionType.Ready, status: 'False', reason: PolicyConditionReason.Expired, message: `expired at ${policy.spec.expiresAt}`, observedGeneration: generation }
        : { type: PolicyConditionType.Ready, status: 'True', reason: PolicyConditionReason.InForce, message: 'the policy is in the gateway configuration', observedGeneration: generation },
    new Date(nowMs).toISOString(),
  );
  const status = { ...policy.status, conditions, observedGeneration: generation };
  // The policy's Ready turns False at expiry without any watch event: come back just after.
  const requeue = expiresAtMs !== undefined && !expired ? { requeueAfterMs: expiresAtMs - nowMs + 100 } : {};
  return { conditions, status, events, ...requeue };
}
