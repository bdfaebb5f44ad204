// Worker options: one parse, flags over KVFLEET_* env, defaults, and messages that name flag and env variable.
import { describe, expect, it } from 'vitest';
import { parseWorkerConfig, WorkerConfigError } from '../../worker/config.ts';

describe('worker options', () => {
  it('fills defaults, reads env, and lets flags win', () => {
    const c = parseWorkerConfig({ model: '/m', port: '7000' }, { KVFLEET_MAX_RUNNING: '8', KVFLEET_PORT: '9', POD_NAME: 'p-1' });
    expect(c).toMatchObject({ model: '/m', port: 7000, host: '127.0.0.1', pageSize: 16, kvDtype: 'f16', maxRunning: 8,
      admission: 'reserve', maxQueue: 1024, metricsPort: 9400, podName: 'p-1' });
    expect(c.kvMemory).toBeUndefined();
  });

  it('reads byte counts with unit suffixes', () => {
    expect(parseWorkerConfig({ model: '/m', port: 1, kvMemory: '512Mi' }).kvMemory).toBe(512 * 2 ** 20);
    expect(parseWorkerConfig({ model: '/m', port: 1, kvMemory: '2G' }).kvMemory).toBe(2e9);
    expect(parseWorkerConfig({ model: '/m', port: 1 }, { KVFLEET_KV_MEMORY: '1048576' }).kvMemory).toBe(1048576);
  });

  it('names every bad option by flag and environment variable', () => {
    let msg = '';
    try {
      parseWorkerConfig({ model: '/m', port: '70000', kvMemory: 'lots', kvMemoryFraction: '1.5', admission: 'maybe' });
    } catch (err) { expect(err).toBeInstanceOf(WorkerConfigError); msg = (err as Error).message; }
    expect(msg).toMatch(/--port \(KVFLEET_PORT\)/);
    expect(msg).toMatch(/--kv-memory \(KVFLEET_KV_MEMORY\): must be a byte count/);
    expect(msg).toMatch(/--kv-memory-fraction \(KVFLEET_KV_MEMORY_FRACTION\)/);
    expect(msg).toMatch(/--admission \(KVFLEET_ADMISSION\)/);
    expect(msg).toMatch(/at most one of/);
  });
});
