// How a request's BudgetSelector picks a budget of its fleet (CONTRACTS.md: GenerateRequest.budget, "unknown budget
// name, or a name the fleet does not allow → NOT_FOUND"). One set of rules that the worker (worker/request.ts,
// worker/budgets.ts) and the router (router/router.ts) both apply, so a request gets the same answer from either:
// - no selector (or one with neither field): the fleet's default budget;
// - an inline spec: that spec (validated by the caller);
// - a name: an empty one is invalid (INVALID_ARGUMENT, field budget.name); a name the fleet stores is that budget;
//   'default' when the fleet stores no budget of that name means the fleet's default budget (always allowed);
//   any other name is unknown (NOT_FOUND).
import type { BudgetSelector, BudgetSpec } from '../proto/index.ts';

/** The name by which a request may always ask for its fleet's default budget. */
export const DEFAULT_BUDGET_NAME = 'default';

/** A selector that breaks the rules (an empty name): INVALID_ARGUMENT naming `field`. */
export class BudgetSelectorError extends Error {
  readonly field: string;
  readonly reason: string;
  constructor(field: string, reason: string) {
    super(`${field}: ${reason}`);
    this.name = 'BudgetSelectorError';
    this.field = field;
    this.reason = reason;
  }
}

export type BudgetChoice = { kind: 'default' } | { kind: 'spec'; spec: BudgetSpec } | { kind: 'name'; name: string };

/** What a request's selector asks for. A selector decoded from the wire says which oneof member is set (`selector`;
 *  proto3 sends a set member even when it is empty, so `{name: ''}` arrives as a name); one built in-process may
 *  carry only the field. Throws BudgetSelectorError for an empty name. */
export function budgetChoice(sel: BudgetSelector | undefined | null): BudgetChoice {
  if (sel === undefined || sel === null || (sel.selector === undefined && sel.name === undefined && sel.spec === undefined)) {
    return { kind: 'default' };
  }
  if (sel.selector === 'name' || (sel.selector === undefined && sel.name !== undefined)) {
    if (!sel.name) throw new BudgetSelectorError('budget.name', 'is empty');
    return { kind: 'name', name: sel.name };
  }
  return { kind: 'spec', spec: sel.spec ?? {} };
}

export type NamedBudget<T> = { kind: 'stored'; entry: T } | { kind: 'default' } | { kind: 'unknown' };

/** A (non-empty) budget name against the budgets a fleet stores (`stored` looks one up): the stored budget of that
 *  name; else, for DEFAULT_BUDGET_NAME, the fleet's default budget; else unknown (NOT_FOUND). */
export function lookupBudgetName<T>(name: string, stored: (name: string) => T | undefined | null): NamedBudget<T> {
  const entry = stored(name);
  if (entry !== undefined && entry !== null) return { kind: 'stored', entry };
  if (name === DEFAULT_BUDGET_NAME) return { kind: 'default' };
  return { kind: 'unknown' };
}
