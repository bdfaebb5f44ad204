// KV pressure (ARCHITECTURE.md, "Capacity, pressure"): what the operator's autoscaler targets.
import type { WorkerSnapshot } from './types.ts';

type PressureInput = Pick<WorkerSnapshot, 'total_pages' | 'free_pages' | 'reserved_pages'>;

/** kv_pressure(worker) = (total_pages − free_pages + reserved_pages) / total_pages. A worker with no pages at all
 *  is fully pressed (1). Not clamped: above 1 means reservations exceed what is free. */
export function workerPressure(w: PressureInput): number {
  if (w.total_pages <= 0) return 1;
  return (w.total_pages - w.free_pages + w.reserved_pages) / w.total_pages;
}

export interface FleetPressure {
  /** mean workerPressure over ready, non-draining workers (0 when there are none) */
  kv: number;
  /** min(1, Σ waiting / max(1, Σ running)) over the same workers */
  queue: number;
  /** kv + queue */
  pressure: number;
  /** how many workers counted */
  workers: number;
}

/** Fleet pressure over a snapshot's workers: the snapshot holds only live (ready) workers; draining ones are
 *  left out here. */
export function fleetPressure(workers: readonly Pick<WorkerSnapshot, 'total_pages' | 'free_pages' | 'reserved_pages' | 'draining' | 'running' | 'waiting'>[]): FleetPressure {
  const ready = workers.filter((w) => !w.draining);
  let sum = 0; let waiting = 0; let running = 0;
  for (const w of ready) { sum += workerPressure(w); waiting += w.waiting; running += w.running; }
  const kv = ready.length > 0 ? sum / ready.length : 0;
  const queue = Math.min(1, waiting / Math.max(1, running));
  return { kv, queue, pressure: kv + queue, workers: ready.length };
}

/** Degraded mode (CONTRACTS.md): while Redis is unreachable a router reserves from a worker at most
 *  floor(effective_free / live_routers), live routers as last seen (at least 1: itself). */
export function degradedShare(effectiveFree: number, liveRouters: number): number {
  return Math.max(0, Math.floor(effectiveFree / Math.max(1, liveRouters)));
}
