// Every benchmark `kvfleet bench NAME` can run. Each module exports `run(opts): Promise<BenchReport>`.
import type { BenchReport } from './report.ts';

export interface BenchOptions { json: boolean; args: Record<string, string | boolean> }
export type BenchModule = { run(opts: BenchOptions): Promise<BenchReport> };

export const benches: Record<string, () => Promise<BenchModule>> = {
  detok: () => import('./detok.ts'),
  engine: () => import('./engine.ts'),
  'engine-vs-llama': () => import('./vs-llama.ts'),
  ledger: () => import('./ledger.ts'),
  worker: () => import('./worker.ts'),
  quality: () => import('./quality.ts'),
  router: () => import('./router.ts'),
  'routing-sim': () => import('./routing-sim.ts'),
};
