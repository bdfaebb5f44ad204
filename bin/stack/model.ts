// The model of `kvfleet up` when none is given: a synthetic one (seeded random weights in Hugging Face files), written
// once to the cache folder and reused. Invariant: a folder under models/ is complete or absent: the model is written
// into a temporary sibling by a `kvfleet synth-model` child process and renamed into place only when it finished.
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { presetConfig, PRESETS } from '../../worker/model/config.ts';
import { DTYPES } from '../../worker/model/dtype.ts';
import { modelTensors } from '../../worker/model/synth.ts';
import type { Supervisor } from './procs.ts';

/** Presets `up` offers, with the weight dtype synth-model writes for them by default. */
export const UP_PRESETS = { small: 'f16', tiny: 'f32' } as const;
export type UpPreset = keyof typeof UP_PRESETS;

const MODEL_FILES = ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'];

/** $XDG_CACHE_HOME/kvfleet, else ~/.cache/kvfleet. */
export function cacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME;
  return path.join(xdg !== undefined && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.cache'), 'kvfleet');
}

export function syntheticModelDir(preset: UpPreset, env: NodeJS.ProcessEnv = process.env): string {
  return path.join(cacheRoot(env), 'models', `${preset}-${UP_PRESETS[preset]}`);
}

function complete(dir: string): boolean {
  return MODEL_FILES.every((f) => existsSync(path.join(dir, f)));
}

/** Checks a --model folder: the files a worker and the router read. Returns the absolute path. */
export function checkModelDir(dir: string): string {
  const abs = path.resolve(dir);
  let isDir = false;
  try { isDir = statSync(abs).isDirectory(); } catch { /* reported below */ }
  if (!isDir) throw new Error(`--model ${dir}: no such folder`);
  const names = readdirSync(abs);
  const missing = ['config.json', 'tokenizer.json'].filter((f) => !names.includes(f));
  if (!names.some((f) => f.endsWith('.safetensors'))) missing.push('*.safetensors');
  if (missing.length > 0) throw new Error(`--model ${dir}: not a model folder (missing ${missing.join(', ')})`);
  return abs;
}

function mib(b: number): string { return `${(b / 2 ** 20).toFixed(0)} MiB`; }

/** Bytes of tensor data the preset's model.safetensors will hold (its header aside). */
export function expectedTensorBytes(preset: UpPreset): number {
  const dt = DTYPES[UP_PRESETS[preset]];
  return modelTensors(presetConfig(PRESETS[preset], dt.torch)).reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1) * dt.bytes, 0);
}

/** Bytes written under dir so far (the safetensors file is written under a temporary name, then renamed). */
function bytesUnder(dir: string): number {
  let n = 0;
  try { for (const f of readdirSync(dir)) n += statSync(path.join(dir, f)).size; } catch { /* not created yet */ }
  return n;
}

/**
 * The cached synthetic model of this preset, written on first use. `progress` gets a line about once a second
 * while writing (bytes written so far, of the expected total), then a final one.
 */
export async function ensureSyntheticModel(sup: Supervisor, preset: UpPreset, o: {
  env?: NodeJS.ProcessEnv; nodeArgs: string[]; progress(line: string, final: boolean): void;
}): Promise<{ dir: string; written: boolean }> {
  const dir = syntheticModelDir(preset, o.env);
  if (complete(dir)) return { dir, written: false };
  mkdirSync(path.dirname(dir), { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  const [cmd, ...pre] = o.nodeArgs;
  const t0 = Date.now();
  const child = sup.spawn(`synth-model-${preset}`, cmd, [...pre, 'synth-model', '--out', tmp, '--preset', preset]);
  const total = expectedTensorBytes(preset);
  const timer = setInterval(() => {
    const size = bytesUnder(tmp);
    o.progress(`writing the synthetic ${preset} model to ${dir}: ${mib(size)} of ${mib(total)} `
      + `(${Math.min(100, (100 * size) / total).toFixed(0)}%), ${((Date.now() - t0) / 1000).toFixed(0)} s`, false);
  }, 500);
  const { code, signal } = await child.exited;
  clearInterval(timer);
  if (code !== 0) {
    rmSync(tmp, { recursive: true, force: true });
    throw new Error(`writing the synthetic ${preset} model failed (${signal ?? `exit ${code}`}):\n${child.tail()}`);
  }
  try {
    renameSync(tmp, dir);
  } catch (err) {
    // another `kvfleet up` finished the same model first: use its copy
    rmSync(tmp, { recursive: true, force: true });
    if (!complete(dir)) throw err;
  }
  rmSync(child.logFile, { force: true });
  const size = statSync(path.join(dir, 'model.safetensors')).size;
  o.progress(`wrote the synthetic ${preset} model (${mib(size)}) to ${dir} in ${((Date.now() - t0) / 1000).toFixed(1)} s`, true);
  return { dir, written: true };
}
