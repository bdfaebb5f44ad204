import { describe, expect, inject, it } from 'vitest';
import { Redis } from 'ioredis';
import { pidAlive, startRedis } from './harness/redis.ts';
import { freePort } from './harness/ports.ts';
import { spawnKvfleet } from './harness/proc.ts';

describe('redis harness', () => {
  it('the global redis-server answers on a loopback port', async () => {
    const url = inject('redisUrl');
    expect(url).toMatch(/^redis:\/\/127\.0\.0\.1:\d+$/);
    const r = new Redis(url);
    try {
      expect(await r.ping()).toBe('PONG');
    } finally { r.disconnect(); }
  });

  it('starts a server without persistence, uses it, stops it and leaves no process', async () => {
    const redis = await startRedis();
    const r = new Redis(redis.url, { maxRetriesPerRequest: 0, retryStrategy: () => null });
    try {
      await r.set('k', 'v');
      expect(await r.get('k')).toBe('v');
      const save = await r.config('GET', 'save') as string[];
      expect(save[1]).toBe('');
      const aof = await r.config('GET', 'appendonly') as string[];
      expect(aof[1]).toBe('no');
    } finally { r.disconnect(); }
    expect(pidAlive(redis.pid)).toBe(true);
    await redis.stop();
    expect(pidAlive(redis.pid)).toBe(false);
  });

  it('two servers get different free ports', async () => {
    const [a, b] = [await freePort(), await freePort()];
    expect(a).toBeGreaterThan(0);
    expect(b).toBeGreaterThan(0);
  });
});

describe('kvfleet child processes', () => {
  it('runs the CLI on Node 24 and reports its version', async () => {
    const p = spawnKvfleet(['--version']);
    expect(await p.exited()).toBe(0);
    expect(p.output().trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });
  it('an unknown subcommand exits non-zero with a message', async () => {
    const p = spawnKvfleet(['no-such-command']);
    expect(await p.exited()).not.toBe(0);
    expect(p.output()).toMatch(/unknown command|too many arguments/);
  });
});
