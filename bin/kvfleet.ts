// The kvfleet command line: one entry, one subcommand per part. Each part registers its own subcommand here.
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { registrars } from './commands/index.ts';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

export function buildCli(): Command {
  const program = new Command('kvfleet')
    .description('Kubernetes-native LLM serving with a paged, per-head Ada-KV compressed KV cache')
    .version(pkg.version, '-V, --version')
    .showHelpAfterError()
    .allowExcessArguments(false)
    .exitOverride();
  for (const register of registrars) register(program);
  return program;
}

async function main(argv: string[]): Promise<number> {
  const program = buildCli();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`kvfleet: ${message}\n`);
    return 1;
  }
}

// A kvfleet process started by `kvfleet up`, a benchmark or the test harness stops when that parent dies without
// stopping it (SIGKILL, a crash), instead of living on with its ports, pages and ledger entry: the spawner sets
// KVFLEET_PARENT_PID to its own pid, and a change of our parent (re-parenting to init or a subreaper) sends us the
// SIGTERM a normal stop would have sent, so the usual shutdown runs. The variable is not passed further down.
const parentPid = Number(process.env.KVFLEET_PARENT_PID);
delete process.env.KVFLEET_PARENT_PID;
if (Number.isSafeInteger(parentPid) && parentPid > 1) {
  const watch = setInterval(() => {
    if (process.ppid === parentPid) return;
    clearInterval(watch);
    process.stderr.write(`kvfleet: parent process ${parentPid} is gone; stopping\n`);
    process.kill(process.pid, 'SIGTERM');
  }, 500);
  watch.unref();
}

process.exitCode = await main(process.argv);
