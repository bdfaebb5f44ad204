// Each part registers its subcommand here: one import and one entry per subcommand. Registrars only declare
// options; the implementation is imported lazily inside the action, so `kvfleet --help` stays fast.
import type { Command } from 'commander';
import { registerBench } from './bench.ts';
import { registerClient } from './client.ts';
import { registerGenerate } from './generate.ts';
import { registerOperator } from './operator.ts';
import { registerRouter } from './router.ts';
import { registerSynthModel } from './synth-model.ts';
import { registerUp } from './up.ts';
import { registerWorker } from './worker.ts';

export type Registrar = (program: Command) => void;

export const registrars: Registrar[] = [
  registerBench,
  registerClient,
  registerGenerate,
  registerOperator,
  registerRouter,
  registerSynthModel,
  registerUp,
  registerWorker,
];
