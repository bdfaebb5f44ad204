// The fleet's budgets as this worker knows them: a cache of the ledger's `budgets` HASH (every name a request may
// pick) and `budget` STRING (the fleet default's name), replaced whole by each read (worker/fleet.ts reads on every
// budget event and periodically). Requests resolve against the cache synchronously, so a request never waits on
// Redis and an outage leaves the last known budgets in force.
//
// Rules (CONTRACTS.md; the name rules are ledger/budget-names.ts, which the router applies too):
// - a named budget must be in the budgets hash, else NOT_FOUND; 'default' not in the hash means the fleet's default
//   budget (the default is always allowed);
// - no name and no inline spec: the fleet default (its name → its spec), else the built-in default budget;
// - a stored spec that does not validate fails the requests that name it (INVALID_ARGUMENT naming the budget and
//   field); a bad or missing default falls back to the built-in default, and says so once in the log.
import type { Logger } from 'pino';
import { BUILTIN_DEFAULT_BUDGET, lookupBudgetName, parseBudget, type ResolvedBudgetSpec } from '../ledger/index.ts';
import { checkSpec, RequestError, type BudgetSource } from './request.ts';

/** Named budgets cannot be resolved yet: the ledger has not been read since start (retryable, UNAVAILABLE). */
export class BudgetsUnavailableError extends Error {
  constructor(message: string) { super(message); this.name = 'BudgetsUnavailableError'; }
}

type Entry = { spec: ResolvedBudgetSpec } | { error: RequestError };

export class FleetBudgets implements BudgetSource {
  private readonly fleet: string;
  private readonly log: Logger;
  private entries = new Map<string, Entry>();
  private defaultName: string | null = null;
  private loadedOnce = false;
  private warned = '';

  constructor(fleet: string, log: Logger) {
    this.fleet = fleet;
    this.log = log;
  }

  get loaded(): boolean { return this.loadedOnce; }
  get names(): string[] { return [...this.entries.keys()].sort(); }
  get defaultBudgetName(): string | null { return this.defaultName; }

  /** Replaces the cache with one read of the ledger: budget name → stored JSON, and the default's name. */
  replace(raw: Record<string, string>, defaultName: string | null): void {
    const entries = new Map<string, Entry>();
    for (const [name, json] of Object.entries(raw)) {
      try {
        entries.set(name, { spec: checkSpec(parseBudget(name, json), `fleet budget '${name}'`) });
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err);
        const e = err instanceof RequestError ? err : new RequestError('INVALID_ARGUMENT', `fleet budget '${name}'`, msg);
        entries.set(name, { error: e });
      }
    }
    const changed = !this.loadedOnce || defaultName !== this.defaultName || !sameEntries(entries, this.entries);
    this.entries = entries;
    this.defaultName = defaultName;
    this.loadedOnce = true;
    if (changed) {
      this.log.info({ fleet: this.fleet, budgets: this.names, default_budget: defaultName }, 'fleet budgets loaded');
      for (const [name, e] of entries) if ('error' in e) this.log.warn({ budget: name, err: e.error.message }, 'fleet budget is invalid');
    }
    this.defaultBudget();  // logs a default that cannot be used, once per change
  }

  defaultBudget(): ResolvedBudgetSpec {
    const name = this.defaultName;
    if (name === null) return { ...BUILTIN_DEFAULT_BUDGET };
    const e = this.entries.get(name);
    if (e && 'spec' in e) return { ...e.spec };
    const why = e ? e.error.message : `no budget named '${name}' in the fleet's budgets`;
    if (this.warned !== `${name}\n${why}`) {
      this.warned = `${name}\n${why}`;
      this.log.warn({ default_budget: name, err: why }, 'the fleet default budget is unusable; using the built-in default');
    }
    return { ...BUILTIN_DEFAULT_BUDGET };
  }

  named(name: string): ResolvedBudgetSpec {
    const r = lookupBudgetName(name, (n) => this.entries.get(n));
    if (r.kind === 'stored') {
      if ('error' in r.entry) throw r.entry.error;
      return { ...r.entry.spec };
    }
    if (r.kind === 'default') return this.defaultBudget();
    if (!this.loadedOnce) {
      throw new BudgetsUnavailableError(`budget.name: budget '${name}' cannot be resolved yet: the fleet's budgets have `
        + 'not been read from the ledger since this worker started (retry)');
    }
    throw new RequestError('NOT_FOUND', 'budget.name', `budget '${name}' is not allowed in fleet ${this.fleet}`
      + ` (allowed: ${this.names.join(', ') || 'none'})`);
  }
}

const show = (e: Entry) => ('spec' in e ? JSON.stringify(e.spec) : `error: ${e.error.message}`);

function sameEntries(a: Map<string, Entry>, b: Map<string, Entry>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w || show(v) !== show(w)) return false;
  }
  return true;
}
