// Child processes of `kvfleet up`: spawned, watched, and stopped by PID. Invariant: every child is in `children`
// from the moment it is spawned until it has exited, so a shutdown (Ctrl-C, SIGTERM, an error, or this process
// exiting) reaches each of them; nothing is found or killed by name.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, createWriteStream, type WriteStream } from 'node:fs';
import net from 'node:net';
import path from 'node:path';

/** A port free on 127.0.0.1 right now (the OS picks it). Whoever binds it later handles the rare race. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      if (a === null || typeof a === 'string') { srv.close(); reject(new Error('the OS gave no port')); return; }
      srv.close(() => resolve(a.port));
    });
  });
}

/** Whether host:port can be bound now (false: in use or not allowed); says why when not. */
export function canListen(host: string, port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    srv.listen(port, host, () => srv.close(() => resolve(undefined)));
  });
}

/** Resolves once 127.0.0.1:port accepts connections; false after timeoutMs, or as soon as `gaveUp()` is true
 *  (so no polling outlives the process it waits for). */
export async function waitForPort(port: number, timeoutMs: number, gaveUp: () => boolean = () => false): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (gaveUp()) return false;
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The first executable `name` in the PATH list (no shell involved), else undefined. */
export function findOnPath(name: string, pathList = process.env.PATH ?? ''): string | undefined {
  for (const dir of pathList.split(path.delimiter)) {
    if (dir === '') continue;
    const p = path.join(dir, name);
    try { accessSync(p, constants.X_OK); return p; } catch { /* not here */ }
  }
  return undefined;
}

export interface Child {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string;
  /** the last lines of its stdout and stderr (for error messages) */
  tail(lines?: number): string;
  /** Resolves with the first stdout/stderr line matching re; rejects if the child exits first or after timeoutMs. */
  waitForLine(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly running: boolean;
}

const TAIL_BYTES = 16 * 1024;

/** Spawns and stops the stack's processes; each child's output goes to its own log file. */
export class Supervisor {
  private readonly children = new Map<number, { c: Child; proc: ChildProcess }>();
  private readonly logDir: string;
  private closed = false;

  constructor(logDir: string) { this.logDir = logDir; }

  /** No more spawns from now on (the stack is stopping): spawn() throws. */
  close(): void { this.closed = true; }

  /** Children still running, in spawn order. */
  get live(): Child[] { return [...this.children.values()].map((x) => x.c); }

  /**
   * Starts `cmd args` in its own process group (detached), so a Ctrl-C on the terminal reaches only `kvfleet up`,
   * which then stops the children in order (router first, so nothing new is routed to a leaving worker).
   */
  spawn(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Child {
    if (this.closed) throw new Error(`${name}: not started, the stack is stopping`);
    const logFile = path.join(this.logDir, `${name}.log`);
    const log: WriteStream = createWriteStream(logFile, { flags: 'a' });
    // KVFLEET_PARENT_PID: a kvfleet child stops by itself if this process dies without stopping it (bin/kvfleet.ts)
    const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...env, KVFLEET_PARENT_PID: String(process.pid) } });
    if (proc.pid === undefined) {
      log.end();
      throw new Error(`${name}: could not start ${cmd}`);
    }
    const pid = proc.pid;
    let tail = '';
    let partial = '';
    const lines: string[] = [];
    const listeners = new Set<() => void>();
    const onData = (d: Buffer) => {
      log.write(d);
      const s = d.toString();
      tail = (tail + s).slice(-TAIL_BYTES);
      const parts = (partial + s).split('\n');
      partial = parts.pop() ?? '';
      lines.push(...parts);
      if (lines.length > 200) lines.splice(0, lines.length - 200);
      for (const l of listeners) l();
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    let running = true;
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      proc.once('exit', (code, signal) => {
        running = false;
        this.children.delete(pid);
        log.end();
        resolve({ code, signal });
        for (const l of listeners) l();
      });
    });
    const c: Child = {
      name, pid, logFile, exited,
      get running() { return running; },
      tail: (n = 15) => tail.trimEnd().split('\n').slice(-n).join('\n'),
      waitForLine: (re, timeoutMs) => new Promise((resolve, reject) => {
        let seen = 0;
        const check = () => {
          for (; seen < lines.length; seen++) {
            const m = lines[seen].match(re);
            if (m) { done(); resolve(m); return; }
          }
          if (!running) { done(); reject(new Error(`${name} exited before it was ready; its last output (${logFile}):\n${c.tail()}`)); }
        };
        const timer = setTimeout(() => { done(); reject(new Error(`${name} was not ready after ${timeoutMs} ms; its last output (${logFile}):\n${c.tail()}`)); }, timeoutMs);
        const done = () => { clearTimeout(timer); listeners.delete(check); };
        listeners.add(check);
        check();
      }),
    };
    this.children.set(pid, { c, proc });
    return c;
  }

  /**
   * Stops children group by group (each group at once, the groups in order): SIGTERM, then SIGKILL for those still
   * running after graceMs. Resolves once every one of them has exited.
   */
  async stop(groups: Child[][], graceMs: number): Promise<void> {
    for (const group of groups) {
      const live = group.filter((c) => c.running);
      for (const c of live) signal(c.pid, 'SIGTERM');
      await Promise.all(live.map(async (c) => {
        let timer: NodeJS.Timeout | undefined;
        const timedOut = await Promise.race([
          c.exited.then(() => false),
          new Promise<boolean>((r) => { timer = setTimeout(() => r(true), graceMs); }),
        ]);
        clearTimeout(timer);
        if (timedOut) { signal(c.pid, 'SIGKILL'); await c.exited; }
      }));
    }
  }

  /** Last resort when this process exits with children still running (an uncaught error): SIGKILL, synchronously. */
  killAllNow(): void {
    for (const { c } of this.children.values()) signal(c.pid, 'SIGKILL');
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try { process.kill(pid, sig); } catch { /* already gone */ }
}

/** The stack's redis-server: loopback only, no persistence (nothing is written to disk). */
/** Name (argv[0]) of the process that stops redis-server when `kvfleet up` dies without stopping it. */
export const REDIS_WATCHDOG = 'kvfleet-redis-watchdog';

/**
 * redis-server cannot watch its parent as kvfleet's own children do (KVFLEET_PARENT_PID): a small shell loop does it
 * for it. When this process is gone (SIGKILL, a crash: the loop is re-parented) it sends redis-server SIGTERM; when
 * redis-server is gone it ends. Linux only (/proc); elsewhere it ends at once and nothing watches.
 */
function watchRedis(redisPid: number): void {
  const script = 'while :; do read -r _ _ _ pp _ < /proc/$$/stat 2>/dev/null || exit 0; '
    + '[ "$pp" = "$UP" ] || { kill -TERM "$R" 2>/dev/null; exit 0; }; kill -0 "$R" 2>/dev/null || exit 0; sleep 0.5; done';
  const w = spawn('sh', ['-c', script, REDIS_WATCHDOG], { detached: true, stdio: 'ignore',
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', UP: String(process.pid), R: String(redisPid) } });
  w.on('error', () => { /* no sh: nothing watches */ });
  w.unref();
}

export async function startRedisChild(sup: Supervisor, bin: string): Promise<{ child: Child; url: string; port: number }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const child = sup.spawn('redis', bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--daemonize', 'no', '--protected-mode', 'yes', '--loglevel', 'warning']);
    const ready = await waitForPort(port, 10_000, () => !child.running);
    if (ready && child.running) {
      watchRedis(child.pid);
      return { child, url: `redis://127.0.0.1:${port}`, port };
    }
    await sup.stop([[child]], 2000);
    // another process may have taken the port between freePort and redis-server binding it: try another
    if (attempt >= 3) throw new Error(`redis-server (${bin}) did not start on 127.0.0.1:${port}; its output:\n${child.tail()}`);
  }
}
