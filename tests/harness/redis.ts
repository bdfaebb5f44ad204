// Starts a real redis-server on a free loopback port, without persistence, and stops it by PID.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { freePort, waitForPort } from './ports.ts';

export interface RedisServer {
  readonly port: number;
  readonly url: string;
  readonly pid: number;
  /** Stops the server (SIGTERM, then SIGKILL after 3 s) and waits for the process to exit. */
  stop(): Promise<void>;
}

const INSTALL_HINT = 'redis-server was not found on PATH. Install it (Debian/Ubuntu: `sudo apt-get install -y redis-server`; ' +
  'the README setup command and .ci/run do this) and run the tests again.';

export function redisServerPath(): string {
  const r = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' });
  const p = r.stdout.trim();
  if (r.status !== 0 || p === '') throw new Error(INSTALL_HINT);
  return p;
}

function waitExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** Starts redis-server; `port` reuses a given port (a restart in a test), else a free one is picked. */
export async function startRedis(opts: { port?: number } = {}): Promise<RedisServer> {
  const bin = redisServerPath();
  for (let attempt = 0; ; attempt++) {
    const port = opts.port ?? await freePort();
    const child = spawn(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--daemonize', 'no', '--protected-mode', 'yes', '--loglevel', 'warning'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d: Buffer) => { output += d.toString(); });
    child.stderr!.on('data', (d: Buffer) => { output += d.toString(); });
    const exited = new Promise<'exited'>((resolve) => child.once('exit', () => resolve('exited')));
    const ready = waitForPort(port, 10_000).then(() => 'ready' as const);
    const outcome = await Promise.race([ready, exited]);
    if (outcome === 'ready' && child.pid !== undefined) {
      const pid = child.pid;
      return {
        port, pid, url: `redis://127.0.0.1:${port}`,
        async stop() {
          if (child.exitCode !== null || child.signalCode !== null) return;
          process.kill(pid, 'SIGTERM');
          const timer = setTimeout(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ } }, 3000);
          await waitExit(child);
          clearTimeout(timer);
        },
      };
    }
    if (attempt >= 4 || opts.port !== undefined) throw new Error(`redis-server failed to start on port ${port}: ${output.trim()}`);
  }
}

/** True while a process with this PID exists. */
export function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}
