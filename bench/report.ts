// The JSON every `kvfleet bench NAME --json` prints (CONTRACTS.md, "Command line").
import os from 'node:os';

export interface Target { name: string; value: number; unit: string; op: '<' | '>'; threshold: number }
export interface BenchReport { bench: string; machine: MachineInfo; results: unknown[]; targets: Target[] }
export interface MachineInfo { cpus: number; cpuModel: string; memoryBytes: number; platform: string; node: string }

export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return { cpus: cpus.length, cpuModel: cpus[0]?.model ?? 'unknown', memoryBytes: os.totalmem(),
    platform: `${os.platform()}-${os.arch()}`, node: process.version };
}

export function target(name: string, value: number, unit: string, op: '<' | '>', threshold: number): Target {
  return { name, value, unit, op, threshold };
}

/** `--name N` of bench `bench`: a positive integer (a bare `--name` is not one), or `def` when absent. */
export function intArg(bench: string, opts: { args: Record<string, string | boolean> }, name: string, def: number): number {
  const v = opts.args[name];
  if (v === undefined) return def;
  const n = Number(v);
  if (v === true || !Number.isSafeInteger(n) || n < 1) throw new Error(`bench ${bench}: --${name} must be a positive integer, got ${String(v)}`);
  return n;
}

export function met(t: Target): boolean { return t.op === '<' ? t.value < t.threshold : t.value > t.threshold; }

/** Percentile (0..100) of a list of numbers by nearest rank. */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i];
}

/** Progress for long steps: a rewriting line on a terminal, plain lines otherwise; always on stderr. */
export function progress(label: string): (done: number, total: number) => void {
  const tty = process.stderr.isTTY;
  let lastPct = -1;
  return (done, total) => {
    const pct = total > 0 ? Math.floor((100 * done) / total) : 100;
    if (tty) {
      process.stderr.write(`\r${label} ${pct}% (${done}/${total})${done >= total ? '\n' : ''}`);
    } else if (pct >= lastPct + 25 || done >= total) {
      process.stderr.write(`${label} ${pct}% (${done}/${total})\n`);
      lastPct = pct;
    }
  };
}
