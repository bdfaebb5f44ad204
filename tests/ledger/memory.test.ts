// The in-memory ledger against the conformance suite, on a virtual clock (no real waiting).
import { describe, expect, it } from 'vitest';
import { fleetKeys } from '../../ledger/keys.ts';
import { MemoryLedgerBackend, VirtualClock } from '../../ledger/memory.ts';
import type { Ledger } from '../../ledger/types.ts';
import { ledgerConformance } from './conformance.ts';

ledgerConformance('memory', async () => {
  const clock = new VirtualClock();
  const backend = new MemoryLedgerBackend({ clock: clock.now });
  const opened: Ledger[] = [];
  return {
    async open(namespace, fleet) { const l = backend.ledger(namespace, fleet); opened.push(l); return l; },
    async advance(ms) { clock.advance(ms); },
    async publishRaw(namespace, fleet, raw) { backend.publish(fleetKeys(namespace, fleet).events, raw); },
    async cleanup() { await Promise.all(opened.map((l) => l.close())); },
  };
});

describe('memory ledger on a virtual clock', () => {
  it('expires workers and reservations by the injected clock only', async () => {
    const clock = new VirtualClock(5_000);
    const ledger = new MemoryLedgerBackend({ clock: clock.now }).ledger('ns', 'f');
    const f = { addr: 'a', total_pages: 10, free_pages: 10, page_size: 16, num_layers: 1, num_kv_heads: 1, running: 0,
      waiting: 0, draining: false };
    expect((await ledger.heartbeat('w', f, { ttlMs: 1000 })).now_ms).toBe(5_000);
    await ledger.pick(4, 'r', { ttlMs: 100 });
    clock.advance(99);
    expect((await ledger.snapshot()).workers[0].reserved_pages).toBe(4);
    clock.advance(1);   // expiry == now: expired (the Redis scripts use the same inclusive bound)
    expect((await ledger.snapshot()).workers[0].reserved_pages).toBe(0);
    clock.advance(900);  // now − heartbeat == ttl: still live
    expect((await ledger.snapshot()).workers).toHaveLength(1);
    clock.advance(1);
    expect((await ledger.snapshot()).workers).toHaveLength(0);
    expect(await ledger.pick(1, 'r2')).toBeNull();
  });

  it('p2c draws from the injected random source', async () => {
    const draws = [0.99, 0.0];
    const backend = new MemoryLedgerBackend({ clock: new VirtualClock().now, random: () => draws.shift() ?? 0 });
    const ledger = backend.ledger('ns', 'f');
    const f = (free: number) => ({ addr: 'a', total_pages: 100, free_pages: free, page_size: 16, num_layers: 1,
      num_kv_heads: 1, running: 0, waiting: 0, draining: false });
    await ledger.heartbeat('x', f(30)); await ledger.heartbeat('y', f(20)); await ledger.heartbeat('z', f(10));
    // ascending (score, id): z y x; first draw 0.99 → rank 2 (x), second 0.0 → rank 0 (z); the larger is x
    expect((await ledger.pick(5, 'r', { policy: 'p2c' }))?.worker_id).toBe('x');
  });
});
