// A kvfleet process whose spawner dies without stopping it (SIGKILL) stops by itself (KVFLEET_PARENT_PID,
// bin/kvfleet.ts), instead of living on with its port and ledger entry.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, inject, it } from 'vitest';
import { KVFLEET_BIN } from '../harness/proc.ts';

function alive(pid: number): boolean {
  try {
    // a zombie (exited, not yet reaped by its new parent) counts as gone
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch { return false; }
}

describe('parent-death watch', () => {
  it('a router stops when the process that started it is killed', async () => {
    const redis = inject('redisUrl');
    // the go-between starts the router the way `kvfleet up` does (KVFLEET_PARENT_PID = its own pid), says the
    // router's pid, then waits to be killed
    const script = `
      const { spawn } = require('node:child_process');
      const c = spawn(${JSON.stringify(KVFLEET_BIN)}, ['router', '--port', '0', '--metrics-port', '0', '--redis', ${JSON.stringify(redis)},
        '--fleet', 'test-${process.pid}/parent-death'], { stdio: 'inherit', env: { ...process.env, KVFLEET_PARENT_PID: String(process.pid) } });
      console.log('child ' + c.pid);
      setInterval(() => {}, 1000);`;
    const mid = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    mid.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    mid.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    const until = async (f: () => boolean, ms: number, what: string) => {
      const end = Date.now() + ms;
      while (!f()) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${out}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await until(() => /child \d+/.test(out) && /listening on/.test(out), 30_000, 'the router to listen');
    const pid = Number(/child (\d+)/.exec(out)![1]);
    expect(alive(pid)).toBe(true);
    mid.kill('SIGKILL');
    await until(() => !alive(pid), 10_000, `router ${pid} to stop`);
    expect(out).toMatch(/parent process \d+ is gone; stopping/);
  }, 60_000);
});
