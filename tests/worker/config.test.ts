// Worker options: one parse, flags over KVFLEET_* env, defaults, and messages that name flag and env variable.
import { describe, expect, it } from 'vitest';
import { DEFAULTS } from '../../ledger/types.ts';
import { fleetName, MAX_HEARTBEAT_MS, parseWorkerConfig, WorkerConfigError } from '../../worker/config.ts';
import { advertisedAddress } from '../../worker/server.ts';

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

  it('fleet, security and drain options: env names, defaults, POD_IP, and pairs that must come together', () => {
    const c = parseWorkerConfig({ model: '/m', port: 1 }, {
      KVFLEET_REDIS_URL: 'redis://r:6379', KVFLEET_FLEET: 'llm/chat', KVFLEET_REDIS_PASSWORD_FILE: '/s/pw',
      KVFLEET_AUTH_TOKEN_FILE: '/s/token', KVFLEET_TLS_CERT: '/s/crt', KVFLEET_TLS_KEY: '/s/key', POD_IP: '10.0.0.7',
    });
    expect(c).toMatchObject({ redis: 'redis://r:6379', fleet: 'llm/chat', redisPasswordFile: '/s/pw', authTokenFile: '/s/token',
      tlsCert: '/s/crt', tlsKey: '/s/key', heartbeatMs: 500, budgetRefreshMs: 5000, drainTimeoutMs: 600_000, podIp: '10.0.0.7' });
    expect(fleetName(c)).toEqual({ namespace: 'llm', fleet: 'chat' });
    expect(parseWorkerConfig({ model: '/m', port: 1, drainTimeoutMs: '250' }).drainTimeoutMs).toBe(250);
    const problems = (cli: Record<string, string>) => {
      try { parseWorkerConfig({ model: '/m', port: 1, ...cli }); } catch (err) { return (err as Error).message; }
      return '';
    };
    expect(problems({ redis: 'redis://r' })).toMatch(/--fleet \(KVFLEET_FLEET\): is required with --redis/);
    expect(problems({ fleet: 'a/b' })).toMatch(/--redis \(KVFLEET_REDIS_URL\): is required with --fleet/);
    expect(problems({ redis: 'http://r', fleet: 'a/b/c' })).toMatch(/--redis \(KVFLEET_REDIS_URL\): must be a redis:\/\/ or rediss:\/\/ URL[\s\S]*--fleet \(KVFLEET_FLEET\): must be NAMESPACE\/NAME/);
    expect(problems({ redisPasswordFile: '/pw' })).toMatch(/--redis-password-file \(KVFLEET_REDIS_PASSWORD_FILE\): needs --redis/);
    expect(problems({ tlsCert: '/c' })).toMatch(/--tls-key \(KVFLEET_TLS_KEY\): is required with --tls-cert/);
    expect(problems({ tlsClientCa: '/ca' })).toMatch(/--tls-client-ca \(KVFLEET_TLS_CLIENT_CA\): needs --tls-cert and --tls-key/);
    expect(problems({ heartbeatMs: '0' })).toMatch(/--heartbeat-ms \(KVFLEET_HEARTBEAT_MS\)/);
  });

  it('--max-queue is at least 1 and --heartbeat-ms at most a third of the ledger worker TTL, both named in the error', () => {
    const problems = (cli: Record<string, string>, env: NodeJS.ProcessEnv = {}) => {
      try { parseWorkerConfig({ model: '/m', port: 1, ...cli }, env); } catch (err) { return (err as Error).message; }
      return '';
    };
    // 0 made the worker refuse every request (each one passes through the queue)
    expect(problems({ maxQueue: '0' })).toMatch(/--max-queue \(KVFLEET_MAX_QUEUE\): must be at least 1: .*0 would refuse them all/);
    expect(problems({}, { KVFLEET_MAX_QUEUE: '0' })).toMatch(/--max-queue \(KVFLEET_MAX_QUEUE\): must be at least 1/);
    expect(parseWorkerConfig({ model: '/m', port: 1, maxQueue: '1' }).maxQueue).toBe(1);
    // the ledger expires a worker hash 3000 ms after its last heartbeat (DEFAULTS.workerTtlMs)
    expect(DEFAULTS.workerTtlMs).toBe(3000);
    for (const ms of ['1001', '3000', '10000', '60000']) {
      expect(problems({ heartbeatMs: ms })).toMatch(/--heartbeat-ms \(KVFLEET_HEARTBEAT_MS\): must be at most 1000 ms, a third of the ledger's worker TTL \(3000 ms\)/);
    }
    expect(problems({}, { KVFLEET_HEARTBEAT_MS: '5000' })).toMatch(/--heartbeat-ms \(KVFLEET_HEARTBEAT_MS\): must be at most 1000 ms/);
    expect(parseWorkerConfig({ model: '/m', port: 1, heartbeatMs: '1000' }).heartbeatMs).toBe(1000);
    expect(parseWorkerConfig({ model: '/m', port: 1, heartbeatMs: '10' }).heartbeatMs).toBe(10);
    expect(MAX_HEARTBEAT_MS).toBe(1000);
  });

  it('the ledger address is POD_IP:port in a pod, else 127.0.0.1:port for a wildcard bind, else host:port', () => {
    const base = parseWorkerConfig({ model: '/m', port: 1 });
    expect(advertisedAddress({ ...base, podIp: '10.1.2.3' }, 50051)).toBe('10.1.2.3:50051');
    expect(advertisedAddress({ ...base, podIp: 'fd00::5' }, 50051)).toBe('[fd00::5]:50051');
    expect(advertisedAddress({ ...base, host: '0.0.0.0' }, 7)).toBe('127.0.0.1:7');
    expect(advertisedAddress({ ...base, host: '127.0.0.1' }, 7)).toBe('127.0.0.1:7');
  });
});
