// Spawns `kvfleet` child processes for tests and stops them by PID.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const KVFLEET_BIN = path.join(REPO_ROOT, 'bin/kvfleet');

export interface KvfleetProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Everything written to stdout and stderr so far. */
  output(): string;
  /** Resolves when the output matches `re`, rejects if the process exits first or after timeoutMs. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  exited(): Promise<number | string>;
  /** SIGTERM, then SIGKILL after graceMs; resolves on exit. */
  stop(graceMs?: number): Promise<number | string>;
}

export function spawnKvfleet(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): KvfleetProcess {
  const child = spawn(KVFLEET_BIN, args, {
    cwd: opts.cwd ?? REPO_ROOT, env: { ...process.env, KVFLEET_PARENT_PID: String(process.pid), ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (child.pid === undefined) throw new Error(`failed to spawn ${KVFLEET_BIN}`);
  let out = '';
  const listeners = new Set<() => void>();
  const onData = (d: Buffer) => { out += d.toString(); for (const l of listeners) l(); };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exitP = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => { resolve(code ?? signal ?? -1); for (const l of listeners) l(); });
  });
  const done = () => child.exitCode !== null || child.signalCode !== null;
  return {
    child, pid: child.pid,
    output: () => out,
    exited: () => exitP,
    waitFor(re, timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = out.match(re);
          if (m) { cleanup(); resolve(m); } else if (done()) { cleanup(); reject(new Error(`process exited before ${re}: ${out}`)); }
        };
        const timer = setTimeout(() => { cleanup(); reject(new Error(`timed out waiting for ${re}: ${out}`)); }, timeoutMs);
        const cleanup = () => { clearTimeout(timer); listeners.delete(check); };
        listeners.add(check);
        check();
      });
    },
    async stop(graceMs = 5000) {
      if (done()) return exitP;
      child.kill('SIGTERM');
      const t = setTimeout(() => { if (!done()) child.kill('SIGKILL'); }, graceMs);
      const r = await exitP;
      clearTimeout(t);
      return r;
    },
  };
}
