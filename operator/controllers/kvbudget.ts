// The KVBudget reconciler: re-validates a budget with the engine's rules, writes the resolved BudgetSpec into the
// ledger of every Fleet that uses it (the `budgets` hash plus a `budget` event on the fleet's events channel, so
// running workers and routers pick it up without a restart), keeps each fleet's default-budget key in step with
// Fleet.spec.budgetRef, and reports condition Accepted and status.fleets through the status subresource.
//
// Invariants:
// - Idempotent: every write is preceded by a read that shows it is needed, so a reconcile of an unchanged world
//   writes nothing, neither to the API server nor to any ledger (no redundant events reach workers).
// - A budget the engine refuses is never written; fleets keep the last accepted version (workers go on serving).
// - status.fleets lists the fleets whose ledger this reconciler keeps the budget in: every Fleet of the namespace
//   that names it (budgetRef or allowedBudgets), plus any former user whose ledger could not yet be cleaned. A
//   fleet that stops naming the budget has it removed from its ledger, found through this list.
// - Only the fleet whose budgetRef names this budget gets its default-budget key set to it, and only once its
//   ledger holds the budget; a default key naming this budget on a fleet whose budgetRef says otherwise is cleared.
import { isDeepStrictEqual } from 'node:util';
import type { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { Ledger } from '../../ledger/index.ts';
import type { BudgetSpec } from '../../proto/index.ts';
import { findCondition, KVBudgetConditions, KVBudgetReasons, setCondition } from '../api/conditions.ts';
import { GROUP, KVBUDGET, VERSION, type Fleet, type KVBudget, type KVBudgetStatus } from '../api/v1alpha1.ts';
import { InvalidBudgetError, resolveKVBudget, type EngineValidate } from '../budget.ts';
import { fleetRedis, type LedgerPool } from '../ledgers.ts';
import { errorText, isNotFound, MERGE_PATCH, objectKey, splitKey } from '../runtime/kube.ts';
import { EventRecorder } from '../runtime/events.ts';
import type { OperatorMetrics } from '../runtime/metrics.ts';

export const KVBUDGET_CONTROLLER = 'kvbudget';

/** The KVBudget names a Fleet uses: its budgetRef's and its allowedBudgets. */
export function budgetNamesOf(fleet: Fleet): string[] {
  const names = new Set(fleet.spec.allowedBudgets ?? []);
  if (fleet.spec.budgetRef?.name) names.add(fleet.spec.budgetRef.name);
  return [...names].sort();
}

export function usesBudget(fleet: Fleet, budget: string): boolean {
  return fleet.spec.budgetRef?.name === budget || (fleet.spec.allowedBudgets ?? []).includes(budget);
}

/**
 * The KVBudgets (same namespace) to reconcile when a Fleet changes: those it names now and those that list it in
 * status.fleets (it may have stopped naming them, or be gone).
 */
export function budgetsAffectedByFleet(fleet: Fleet, budgets: readonly KVBudget[]): string[] {
  const out = new Set(budgetNamesOf(fleet));
  for (const b of budgets) if (b.status?.fleets?.includes(fleet.metadata.name)) out.add(b.metadata.name);
  return [...out];
}

/** JSON equality, ignoring key order and absent-vs-undefined. */
const sameJson = (a: unknown, b: unknown): boolean => isDeepStrictEqual(JSON.parse(JSON.stringify(a ?? null)), JSON.parse(JSON.stringify(b ?? null)));

export interface KVBudgetReconcilerDeps {
  custom: Pick<CustomObjectsApi, 'getNamespacedCustomObject' | 'patchNamespacedCustomObjectStatus'>;
  core: Pick<CoreV1Api, 'readNamespacedSecret'>;
  /** Fleets of a namespace as the informer cache holds them; one by name. */
  fleets: { list(namespace: string): readonly Fleet[]; get(name: string, namespace: string): Fleet | undefined };
  ledgers: LedgerPool;
  validate: EngineValidate;
  /** Kubernetes Events when Accepted changes: Warning for a refused spec, Normal for an accepted one */
  events?: EventRecorder;
  log: Logger;
  metrics: OperatorMetrics;
}

export class KVBudgetReconciler {
  readonly name = KVBUDGET_CONTROLLER;
  private readonly d: KVBudgetReconcilerDeps;

  constructor(deps: KVBudgetReconcilerDeps) { this.d = deps; }

  async reconcile(key: string): Promise<void> {
    const { namespace, name } = splitKey(key);
    const log = this.d.log.child({ kvbudget: key });
    let budget: KVBudget;
    try {
      budget = await this.d.custom.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: KVBUDGET.plural, name }) as KVBudget;
    } catch (err) {
      if (isNotFound(err)) { await this.removed(namespace, name, log); return; }
      throw err;
    }

    let resolved: BudgetSpec | undefined;
    let invalid: string | undefined;
    try {
      resolved = resolveKVBudget(budget.spec, this.d.validate);
    } catch (err) {
      if (!(err instanceof InvalidBudgetError)) throw err;
      invalid = err.message;
    }

    const users = this.d.fleets.list(namespace).filter((f) => usesBudget(f, name));
    const failures: string[] = [];
    const listed = new Set(users.map((f) => f.metadata.name));
    // fleets in parallel: one fleet's unreachable Redis must not hold up the others
    const synced = await Promise.allSettled(users.map((f) => this.syncFleet(f, name, resolved, log)));
    synced.forEach((r, i) => { if (r.status === 'rejected') failures.push(`fleet ${users[i].metadata.name}: ${errorText(r.reason)}`); });
    for (const former of budget.status?.fleets ?? []) {
      if (listed.has(former)) continue;
      const fleet = this.d.fleets.get(former, namespace);
      if (!fleet) continue; // the fleet is gone, and its ledger with it
      try {
        await this.removeFromFleet(fleet, name, log);
      } catch (err) {
        listed.add(former); // still holds the budget: keep it listed so a later reconcile cleans it
        failures.push(`fleet ${former}: ${errorText(err)}`);
      }
    }

    const generation = budget.metadata.generation;
    const status: KVBudgetStatus = {
      ...(generation !== undefined ? { observedGeneration: generation } : {}),
      conditions: setCondition(budget.status?.conditions, invalid === undefined
        ? { type: KVBudgetConditions.Accepted, status: 'True', reason: KVBudgetReasons.Valid, message: describe(budget), observedGeneration: generation }
        : { type: KVBudgetConditions.Accepted, status: 'False', reason: KVBudgetReasons.InvalidSpec, message: invalid, observedGeneration: generation }),
      fleets: [...listed].sort(),
    };
    if (!sameJson(budget.status, status)) {
      try {
        await this.d.custom.patchNamespacedCustomObjectStatus({ group: GROUP, version: VERSION, namespace, plural: KVBUDGET.plural, name,
          body: { status } }, MERGE_PATCH);
        log.info({ accepted: invalid === undefined, reason: invalid, fleets: status.fleets, generation }, 'KVBudget status updated');
        const before = findCondition(budget.status?.conditions, KVBudgetConditions.Accepted);
        const after = findCondition(status.conditions, KVBudgetConditions.Accepted)!;
        if (!before || before.status !== after.status || before.message !== after.message) {
          this.d.events?.record(EventRecorder.ref(KVBUDGET.kind, budget.metadata),
            after.status === 'True' ? 'Normal' : 'Warning', after.reason, 'Validate', after.message);
        }
      } catch (err) {
        if (!isNotFound(err)) throw err; // deleted meanwhile: its delete event brings the cleanup
      }
    }
    if (failures.length > 0) throw new Error(`KVBudget ${key}: ledger updates failed: ${failures.join('; ')}`);
  }

  private async ledgerOf(fleet: Fleet): Promise<Ledger> {
    return this.d.ledgers.get(fleet.metadata.namespace, fleet.metadata.name, await fleetRedis(fleet, this.d.core));
  }

  /** Brings one fleet's ledger in line: the budget (when valid) and its default-budget key. */
  private async syncFleet(fleet: Fleet, name: string, resolved: BudgetSpec | undefined, log: Logger): Promise<void> {
    const ledger = await this.ledgerOf(fleet);
    let held = await ledger.getBudget(name);
    if (resolved !== undefined && !sameJson(held, resolved)) {
      await ledger.setBudget(name, resolved);
      this.d.metrics.ledgerWrites.inc({ op: 'set_budget' });
      log.info({ fleet: fleet.metadata.name, budget: resolved }, 'budget written to the fleet ledger');
      held = resolved;
    }
    const isDefault = fleet.spec.budgetRef?.name === name;
    const current = await ledger.getDefaultBudget();
    if (isDefault && held !== null && current !== name) {
      await ledger.setDefaultBudget(name);
      this.d.metrics.ledgerWrites.inc({ op: 'set_default_budget' });
      log.info({ fleet: fleet.metadata.name, previous: current }, 'fleet default budget set');
    } else if (!isDefault && current === name) {
      await this.clearDefault(ledger, fleet, log);
    }
  }

  /** Takes the budget out of a fleet's ledger (it no longer uses it, or the KVBudget is gone). */
  private async removeFromFleet(fleet: Fleet, name: string, log: Logger): Promise<void> {
    const ledger = await this.ledgerOf(fleet);
    if (await ledger.getBudget(name) !== null) {
      await ledger.deleteBudget(name);
      this.d.metrics.ledgerWrites.inc({ op: 'delete_budget' });
      log.info({ fleet: fleet.metadata.name }, 'budget removed from the fleet ledger');
    }
    if (await ledger.getDefaultBudget() === name) await this.clearDefault(ledger, fleet, log);
  }

  private async clearDefault(ledger: Ledger, fleet: Fleet, log: Logger): Promise<void> {
    await ledger.setDefaultBudget(null);
    this.d.metrics.ledgerWrites.inc({ op: 'set_default_budget' });
    log.info({ fleet: fleet.metadata.name }, 'fleet default budget cleared (the built-in default applies until its budgetRef resolves)');
  }

  /** The KVBudget is gone: remove it from every fleet that still names it. */
  private async removed(namespace: string, name: string, log: Logger): Promise<void> {
    const failures: string[] = [];
    for (const fleet of this.d.fleets.list(namespace).filter((f) => usesBudget(f, name))) {
      try {
        await this.removeFromFleet(fleet, name, log);
      } catch (err) {
        failures.push(`fleet ${fleet.metadata.name}: ${errorText(err)}`);
      }
    }
    if (failures.length > 0) throw new Error(`KVBudget ${objectKey(namespace, name)} (deleted): ledger cleanup failed: ${failures.join('; ')}`);
  }
}

function describe(b: KVBudget): string {
  const s = b.spec;
  const size = s.method === 'Full' ? 'keeps every token'
    : s.tokensPerHead !== undefined ? `${s.tokensPerHead} tokens per KV head` : `keep ratio ${s.keepRatio}`;
  return `valid ${s.method} budget: ${size}`;
}
