import { InvalidArgumentError, Option, type Command } from 'commander';

// Kept here (not imported from worker/model) so `kvfleet --help` loads no model code.
const PRESETS = ['tiny', 'small', 'hetero'] as const;
const DTYPES = ['f32', 'f16', 'bf16'] as const;

function parseIntAtLeast(min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`must be an integer >= ${min}.`);
    return n;
  };
}

export function registerSynthModel(program: Command): void {
  program.command('synth-model')
    .description('write a Llama-family model with seeded random weights as Hugging Face files '
      + '(config.json, model.safetensors, tokenizer.json, tokenizer_config.json)')
    .requiredOption('--out <dir>', 'output directory (created if missing)')
    .addOption(new Option('--preset <name>', 'model size (hetero: structured attention heads for the quality benchmark)').choices(PRESETS).makeOptionMandatory())
    .option('--seed <n>', 'weight seed (non-negative integer)', parseIntAtLeast(0), 0)
    .addOption(new Option('--dtype <dtype>', 'weight dtype on disk (default: f32 for tiny and hetero, f16 for small)').choices(DTYPES))
    .option('--shards <k>', 'write k shard files plus model.safetensors.index.json (k >= 2; 1 = one file)',
      parseIntAtLeast(1), 1)
    .action(async (opts: { out: string; preset: (typeof PRESETS)[number]; seed: number; dtype?: 'f32' | 'f16' | 'bf16'; shards: number }) => {
      const { writeSynthModel } = await import('../../worker/model/synth.ts');
      const r = writeSynthModel({ out: opts.out, preset: opts.preset, seed: opts.seed, dtype: opts.dtype, shards: opts.shards });
      const c = r.config;
      process.stdout.write(`wrote ${opts.preset} model to ${r.dir} in ${r.seconds.toFixed(2)} s: `
        + `${r.parameters} parameters, ${r.dtype}, ${r.tensorBytes} tensor bytes, `
        + `L=${c.num_hidden_layers} D=${c.hidden_size} H=${c.num_attention_heads} Hk=${c.num_key_value_heads} `
        + `d=${c.head_dim} F=${c.intermediate_size} V=${c.vocab_size} seed=${opts.seed}\n`
        + `files: ${r.files.join(', ')}\n`);
      if (opts.preset === 'hetero') {
        const { HETERO_HEADS, HETERO_SUBSETS } = await import('../../worker/model/hetero.ts');
        process.stdout.write(`rope_theta=${c.rope_theta} context=${c.max_position_embeddings}; heads [layer][kv head] = kind:subset@boost: `
          + HETERO_HEADS.map((row) => row.map((h) => `${h.kind}:${HETERO_SUBSETS[h.subset].name}@${h.boost}`).join(' ')).join(' | ') + '\n');
      }
    });
}
