import type { Command } from 'commander';

export function registerBench(program: Command): void {
  program.command('bench')
    .description('run a benchmark; prints a summary, or one JSON document with --json')
    .argument('<name>', 'which benchmark (see bench/index.ts)')
    .option('--json', 'print one JSON document: {bench, machine, results, targets}')
    .allowUnknownOption(true)
    .allowExcessArguments(true)
    .action(async (name: string, opts: { json?: boolean }, cmd: Command) => {
      const { benches } = await import('../../bench/index.ts');
      const { met } = await import('../../bench/report.ts');
      const load = benches[name];
      if (!load) throw new Error(`unknown benchmark '${name}'; known: ${Object.keys(benches).sort().join(', ') || '(none yet)'}`);
      const args: Record<string, string | boolean> = {};
      const rest = cmd.args.slice(1);
      for (let i = 0; i < rest.length; i++) {
        const a = rest[i];
        if (!a.startsWith('--')) throw new Error(`unexpected argument '${a}'`);
        const [k, v] = a.slice(2).split('=', 2);
        if (v !== undefined) args[k] = v;
        else if (i + 1 < rest.length && !rest[i + 1].startsWith('--')) args[k] = rest[++i];
        else args[k] = true;
      }
      const report = await (await load()).run({ json: !!opts.json, args });
      if (opts.json) {
        process.stdout.write(JSON.stringify(report) + '\n');
      } else {
        process.stdout.write(`${report.bench}\n`);
        for (const r of report.results) process.stdout.write(`  ${JSON.stringify(r)}\n`);
        for (const t of report.targets) {
          process.stdout.write(`  target ${t.name}: ${t.value} ${t.unit} ${t.op} ${t.threshold} ${met(t) ? 'MET' : 'NOT MET'}\n`);
        }
      }
    });
}
