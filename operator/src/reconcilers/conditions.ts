/**
 * Standard metav1.Condition bookkeeping, pure. `lastTransitionTime` moves only when `status` changes, so a
 * reconcile that recomputes the same status does not churn the object (and `kubectl wait` and alerting on
 * transition times stay meaningful).
 */
import { CONDITION_REASON_PATTERN, type Condition } from '../crds/common.ts';

/** What a reconciler decides about one condition type. */
export interface ConditionUpdate {
  type: string;
  status: Condition['status'];
  /** CamelCase, e.g. `InvalidSpec`. */
  reason: string;
  message: string;
  /** The `.metadata.generation` the decision was made from. */
  observedGeneration: number;
}

/** Longest message the CRD schema accepts. */
export const CONDITION_MESSAGE_MAX = 32768;

const REASON = new RegExp(CONDITION_REASON_PATTERN);

/**
 * Returns `conditions` with `update` applied: an existing condition of the same type is replaced in place
 * (keeping its `lastTransitionTime` when the status is unchanged), a new type is appended. The input is not
 * modified. Throws RangeError on a reason the apiserver would reject, so the bug shows here and not as a 422.
 *
 * @param nowIso RFC 3339 time used as `lastTransitionTime` when the status changes.
 */
export function setCondition(
  conditions: readonly Condition[] | undefined,
  update: ConditionUpdate,
  nowIso: string,
): Condition[] {
  if (!REASON.test(update.reason)) throw new RangeError(`condition reason "${update.reason}" is not CamelCase`);
  const message =
    update.message.length > CONDITION_MESSAGE_MAX ? `${update.message.slice(0, CONDITION_MESSAGE_MAX - 3)}...` : update.message;
  const list = conditions ?? [];
  const index = list.findIndex((c) => c.type === update.type);
  const previous = index === -1 ? undefined : list[index];
  const next: Condition = {
    type: update.type,
    status: update.status,
    observedGeneration: update.observedGeneration,
    lastTransitionTime:
      previous !== undefined && previous.status === update.status ? previous.lastTransitionTime : nowIso,
    reason: update.reason,
    message,
  };
  if (index === -1) return [...list, next];
  return list.map((c, i) => (i === index ? next : c));
}

/** The condition of `type`, if present. */
export function findCondition(conditions: readonly Condition[] | undefined, type: string): Condition | undefined {
  return conditions?.find((c) => c.type === type);
}

/** True when the condition of `type` is `True` and computed from `generation` (not stale). */
export function isConditionTrue(
  conditions: readonly Condition[] | undefined,
  type: string,
  generation?: number,
): boolean {
  const c = findCondition(conditions, type);
  if (c === undefined || c.status !== 'True') return false;
  return generation === undefined || c.observedGeneration === generation;
}
