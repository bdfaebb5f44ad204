// Condition types and reasons (constants, as STYLE.md 11 asks) and the one way conditions are updated.
import type { Condition, ConditionStatus } from './v1alpha1.ts';

/** KVBudget: the spec is valid for the engine and is what fleets using it get. */
export const KVBudgetConditions = { Accepted: 'Accepted' } as const;
export const KVBudgetReasons = {
  /** the engine accepts the budget; it is written to the ledger of every fleet that uses it */
  Valid: 'Valid',
  /** the engine refuses the budget (the message says why); fleets keep the last accepted version */
  InvalidSpec: 'InvalidSpec',
} as const;

/** Fleet (the Fleet reconciler, issue 17, sets these). */
export const FleetConditions = {
  Available: 'Available', Progressing: 'Progressing', Degraded: 'Degraded', BudgetResolved: 'BudgetResolved',
} as const;

export interface ConditionInput {
  type: string;
  status: ConditionStatus;
  reason: string;
  message: string;
  observedGeneration?: number;
}

/**
 * The conditions with `next` set. lastTransitionTime changes only when the status changes, so setting the same
 * condition again yields a deeply equal list (a reconcile that finds nothing new writes nothing).
 */
export function setCondition(list: readonly Condition[] | undefined, next: ConditionInput, now: Date = new Date()): Condition[] {
  const out = [...(list ?? [])];
  const i = out.findIndex((c) => c.type === next.type);
  const prev = i >= 0 ? out[i] : undefined;
  const c: Condition = {
    type: next.type, status: next.status, reason: next.reason, message: next.message,
    lastTransitionTime: prev && prev.status === next.status ? prev.lastTransitionTime : now.toISOString().replace(/\.\d{3}Z$/, 'Z'),
    ...(next.observedGeneration !== undefined ? { observedGeneration: next.observedGeneration } : {}),
  };
  if (i >= 0) out[i] = c; else out.push(c);
  return out;
}

export function findCondition(list: readonly Condition[] | undefined, type: string): Condition | undefined {
  return list?.find((c) => c.type === type);
}
