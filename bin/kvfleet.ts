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

process.exitCode = await main(process.argv);
