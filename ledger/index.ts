// The KV-capacity ledger: one interface (types.ts), over Redis (redis.ts) or in memory (memory.ts), plus the
// footprint and pressure functions every part shares.
export * from './types.ts';
export * from './keys.ts';
export * from './footprint.ts';
export * from './pressure.ts';
export * from './budget-names.ts';
export { RedisLedger, type RedisLedgerOptions } from './redis.ts';
export { MemoryLedger, MemoryLedgerBackend, VirtualClock, type MemoryLedgerBackendOptions } from './memory.ts';
