// One suite for every Ledger implementation (CONTRACTS.md, "The KV-capacity ledger"): redis.test.ts runs it against a
// real redis-server, memory.test.ts against the in-memory twin on a virtual clock.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { fleetPressure, workerPressure } from '../../ledger/pressure.ts';
import { LedgerError, type Ledger, type LedgerEvent, type PickPolicy, type WorkerFields } from '../../ledger/types.ts';

export interface LedgerHarness {
  /** A new client of a fleet (for Redis: its own connection). Closed by the harness in cleanup. */
  open(namespace: string, fleet: string): Promise<Ledger>;
  /** Lets ms of ledger time pass (Redis: real time; memory: the virtual clock). */
  advance(ms: number): Promise<void>;
  /** Publishes a raw (possibly malformed) message on a fleet's events channel. */
  publishRaw(namespace: string, fleet: string, raw: string): Promise<void>;
  cleanup(): Promise<void>;
}

const LONG = 60_000;   // a worker TTL that outlives any test
let seq = 0;
function freshNamespace(): string {
  return `t${process.pid}-${Date.now().toString(36)}-${seq++}`;
}

function fields(free: number, over: Partial<WorkerFields> = {}): WorkerFields {
  return { addr: '127.0.0.1:1', total_pages: 1000, free_pages: free, page_size: 16, num_layers: 2, num_kv_heads: 2,
    running: 0, waiting: 0, draining: false, ...over };
}

/** Resolves once `pred` holds, polling; fails the test after timeoutMs. */
async function until(pred: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A small deterministic PRNG (mulberry32), so the concurrent-picks test is reproducible in its demands. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function ledgerConformance(name: string, makeHarness: () => Promise<LedgerHarness>): void {
  describe(`ledger conformance: ${name}`, () => {
    let h: LedgerHarness;
    let ns: string;
    let ledger: Ledger;

    beforeEach(async () => {
      h = await makeHarness();
      ns = freshNamespace();
      ledger = await h.open(ns, 'fleet');
    });
    afterEach(async () => { await h.cleanup(); });

    it('publishes worker fields and effective free pages in the snapshot', async () => {
      const hb = await ledger.heartbeat('w1', fields(400, { addr: '10.0.0.1:7000', running: 3, waiting: 1 }), { ttlMs: LONG });
      expect(hb).toMatchObject({ effective_free: 400, reserved_pages: 0 });
      expect(await ledger.pick(30, 'r1')).toEqual({ worker_id: 'w1', addr: '10.0.0.1:7000', effective_free_after: 370 });
      const snap = await ledger.snapshot();
      expect(snap.workers).toHaveLength(1);
      expect(snap.workers[0]).toMatchObject({
        worker_id: 'w1', addr: '10.0.0.1:7000', total_pages: 1000, free_pages: 400, page_size: 16, num_layers: 2,
        num_kv_heads: 2, running: 3, waiting: 1, draining: false, reserved_pages: 30, reservations: 1, effective_free: 370,
        prefill_tokens: 0, max_model_len: 0,   // published none
      });
      expect(snap.workers[0].heartbeat_ms).toBe(hb.now_ms);
      expect(snap.now_ms).toBeGreaterThanOrEqual(hb.now_ms);
      // kv_pressure = (total − free + reserved) / total = (1000 − 400 + 30) / 1000
      expect(workerPressure(snap.workers[0])).toBeCloseTo(0.63, 10);
      // max_model_len (extension) is published by a heartbeat that carries it, and gone with one that does not
      await ledger.heartbeat('w1', fields(400, { addr: '10.0.0.1:7000', max_model_len: 8192 }), { ttlMs: LONG });
      expect((await ledger.snapshot()).workers[0].max_model_len).toBe(8192);
      await ledger.heartbeat('w1', fields(400, { addr: '10.0.0.1:7000' }), { ttlMs: LONG });
      expect((await ledger.snapshot()).workers[0].max_model_len).toBe(0);
    });

    it('most-free picks the largest effective free, best-fit the smallest that fits', async () => {
      await ledger.heartbeat('a', fields(100, { addr: 'a:1' }), { ttlMs: LONG });
      await ledger.heartbeat('b', fields(40, { addr: 'b:1' }), { ttlMs: LONG });
      await ledger.heartbeat('c', fields(15, { addr: 'c:1' }), { ttlMs: LONG });
      expect(await ledger.pick(20, 'm1', { policy: 'most-free' })).toEqual({ worker_id: 'a', addr: 'a:1', effective_free_after: 80 });
      expect(await ledger.pick(20, 'm2')).toEqual({ worker_id: 'a', addr: 'a:1', effective_free_after: 60 });  // default most-free
      expect(await ledger.pick(20, 'b1', { policy: 'best-fit' })).toEqual({ worker_id: 'b', addr: 'b:1', effective_free_after: 20 });
      expect(await ledger.pick(10, 'b2', { policy: 'best-fit' })).toEqual({ worker_id: 'c', addr: 'c:1', effective_free_after: 5 });
      expect(await ledger.pick(20, 'b3', { policy: 'best-fit' })).toEqual({ worker_id: 'b', addr: 'b:1', effective_free_after: 0 });
      for (const policy of ['most-free', 'best-fit', 'p2c', 'least-prefill'] as PickPolicy[]) {
        expect(await ledger.pick(61, `none-${policy}`, { policy })).toBeNull();
      }
    });

    it('least-prefill picks the fitting worker with the fewest prompt tokens to prefill, reservations counted at once', async () => {
      const lp = { policy: 'least-prefill' } as const;
      await ledger.heartbeat('a', fields(100, { addr: 'a:1', prefill_tokens: 500 }), { ttlMs: LONG });
      await ledger.heartbeat('b', fields(60, { addr: 'b:1' }), { ttlMs: LONG });
      await ledger.heartbeat('c', fields(50, { addr: 'c:1' }), { ttlMs: LONG });
      // b and c have nothing to prefill: the tie goes to the larger effective free (b), never to a (most free)
      expect(await ledger.pick(40, 'r1', { ...lp, promptTokens: 300 })).toEqual({ worker_id: 'b', addr: 'b:1', effective_free_after: 20 });
      // r1's 300 tokens count on b at once (a router's picks between two heartbeats spread out)
      expect(await ledger.pick(10, 'r2', { ...lp, promptTokens: 300 })).toEqual({ worker_id: 'c', addr: 'c:1', effective_free_after: 40 });
      // b and c at 300 tokens each: the larger effective free, c
      expect((await ledger.pick(10, 'r3', { ...lp, promptTokens: 100 }))?.worker_id).toBe('c');
      // a worker with fewer tokens but no room is passed over: b (300) cannot hold 25 pages, c (400) can
      expect((await ledger.pick(25, 'r4', { ...lp, promptTokens: 1 }))?.worker_id).toBe('c');
      // a release takes the tokens back with the pages: b is at 0 again
      expect(await ledger.release('b', 'r1')).toBe(40);
      expect((await ledger.pick(10, 'r5', lp))?.worker_id).toBe('b');   // no promptTokens: adds no load
      // the heartbeat replaces what the worker admitted by what it still has to prefill: b 1000, c 401, a 500
      await ledger.heartbeat('b', fields(50, { addr: 'b:1', prefill_tokens: 1000 }), { ttlMs: LONG, admitted: ['r5'] });
      expect((await ledger.pick(1, 'r6', lp))?.worker_id).toBe('c');
      await ledger.heartbeat('c', fields(50, { addr: 'c:1', prefill_tokens: 900 }), { ttlMs: LONG, admitted: ['r2', 'r3', 'r4', 'r6'] });
      expect((await ledger.pick(1, 'r7', lp))?.worker_id).toBe('a');
      const snap = await ledger.snapshot();
      expect(snap.workers.map((w) => [w.worker_id, w.prefill_tokens, w.effective_free])).toEqual([['a', 500, 99], ['b', 1000, 50], ['c', 900, 50]]);
      expect(await ledger.pick(101, 'none', lp)).toBeNull();
    });

    it('least-prefill: expired reservations and draining take a worker\'s tokens away', async () => {
      const lp = { policy: 'least-prefill' } as const;
      await ledger.heartbeat('w', fields(100, { addr: 'w:1' }), { ttlMs: LONG });
      await ledger.heartbeat('x', fields(100, { addr: 'x:1', prefill_tokens: 500 }), { ttlMs: LONG });
      expect((await ledger.pick(10, 'short', { ...lp, promptTokens: 1000, ttlMs: 200 }))?.worker_id).toBe('w');
      expect((await ledger.pick(10, 'r1', lp))?.worker_id).toBe('x');   // w 1000 > x 500
      await ledger.release('x', 'r1');
      await h.advance(300);
      expect((await ledger.pick(10, 'r2', lp))?.worker_id).toBe('w');   // 'short' expired: w 0
      await ledger.heartbeat('w', fields(100, { addr: 'w:1', draining: true }), { ttlMs: LONG });
      expect((await ledger.pick(10, 'r3', { ...lp, promptTokens: 5 }))?.worker_id).toBe('x');
      // back from draining: its load is recomputed (r2 has no tokens) and it is picked again
      await ledger.heartbeat('w', fields(100, { addr: 'w:1' }), { ttlMs: LONG });
      expect((await ledger.pick(10, 'r4', lp))?.worker_id).toBe('w');
    });

    it('least-prefill looks at the 16 least-loaded workers only; when none of them fits it picks as most-free', async () => {
      for (let i = 0; i < 16; i++) {
        await ledger.heartbeat(`l${String(i).padStart(2, '0')}`, fields(10, { prefill_tokens: i }), { ttlMs: LONG });
      }
      await ledger.heartbeat('mid', fields(500, { prefill_tokens: 10_000 }), { ttlMs: LONG });
      await ledger.heartbeat('big', fields(1000, { prefill_tokens: 20_000 }), { ttlMs: LONG });
      expect((await ledger.pick(50, 'r1', { policy: 'least-prefill', promptTokens: 1 }))?.worker_id).toBe('big');
      expect((await ledger.pick(5, 'r2', { policy: 'least-prefill', promptTokens: 7 }))?.worker_id).toBe('l00');
      expect((await ledger.pick(5, 'r3', { policy: 'least-prefill' }))?.worker_id).toBe('l01');
      expect(await ledger.pick(1001, 'r4', { policy: 'least-prefill' })).toBeNull();
    });

    it('p2c takes the larger of two random fitting workers, never the smallest of three', async () => {
      await ledger.heartbeat('big', fields(1000), { ttlMs: LONG });
      await ledger.heartbeat('mid', fields(500), { ttlMs: LONG });
      await ledger.heartbeat('small', fields(100), { ttlMs: LONG });
      await ledger.heartbeat('tiny', fields(5), { ttlMs: LONG });   // never fits a 10-page request
      const chosen = new Map<string, number>();
      for (let i = 0; i < 90; i++) {
        const r = await ledger.pick(10, `p${i}`, { policy: 'p2c' });
        expect(r).not.toBeNull();
        chosen.set(r!.worker_id, (chosen.get(r!.worker_id) ?? 0) + 1);
        expect(await ledger.release(r!.worker_id, `p${i}`)).toBe(10);
      }
      expect(chosen.get('small') ?? 0).toBe(0);
      expect(chosen.get('tiny') ?? 0).toBe(0);
      // P(mid never drawn with small) = (2/3)^90
      expect(chosen.get('mid') ?? 0).toBeGreaterThan(0);
      expect(chosen.get('big') ?? 0).toBeGreaterThan(chosen.get('mid') ?? 0);
      // with a single fitting worker p2c takes it
      expect((await ledger.pick(600, 'only', { policy: 'p2c' }))?.worker_id).toBe('big');
    });

    it('a pick never chooses an excluded worker: every policy takes the next best, and the excluded keep their scores', async () => {
      await ledger.heartbeat('a', fields(300, { addr: 'a:1' }), { ttlMs: LONG });
      await ledger.heartbeat('b', fields(200, { addr: 'b:1', prefill_tokens: 50 }), { ttlMs: LONG });
      await ledger.heartbeat('c', fields(100, { addr: 'c:1', prefill_tokens: 10 }), { ttlMs: LONG });
      const pick = async (policy: PickPolicy, rid: string, exclude: string[], need = 10) => {
        const r = await ledger.pick(need, rid, { policy, exclude });
        if (r) expect(await ledger.release(r.worker_id, rid)).toBe(need);
        return r?.worker_id ?? null;
      };
      // most-free: a is the top; excluded, b; a and b excluded, c
      expect(await pick('most-free', 'm1', ['a'])).toBe('b');
      expect(await pick('most-free', 'm2', ['a', 'b'])).toBe('c');
      // best-fit: c is the smallest that fits; excluded, b
      expect(await pick('best-fit', 'f1', ['c'])).toBe('b');
      // least-prefill: a has the least load (0); excluded, c (10); a and c excluded, b
      expect(await pick('least-prefill', 'l1', ['a'])).toBe('c');
      expect(await pick('least-prefill', 'l2', ['a', 'c'])).toBe('b');
      // p2c: with a excluded only b and c fit, and the larger, b, always wins
      for (let i = 0; i < 20; i++) expect(await pick('p2c', `p${i}`, ['a'])).toBe('b');
      // the only worker with room excluded: nothing, for every policy (an unknown id changes nothing)
      for (const policy of ['most-free', 'best-fit', 'p2c', 'least-prefill'] as PickPolicy[]) {
        expect(await pick(policy, `n-${policy}`, ['a', 'nobody'], 250)).toBeNull();
      }
      // the excluded workers kept their index and prefill scores: picks without exclusion see them as before
      expect(await ledger.pick(10, 'after', { policy: 'most-free' })).toEqual({ worker_id: 'a', addr: 'a:1', effective_free_after: 290 });
      expect((await ledger.pick(10, 'after-lp', { policy: 'least-prefill' }))?.worker_id).toBe('a');
      const snap = await ledger.snapshot();
      expect(snap.workers.map((w) => [w.worker_id, w.effective_free, w.reservations])).toEqual([['a', 280, 2], ['b', 200, 0], ['c', 100, 0]]);
    });

    it('8 clients picking concurrently never reserve more than a worker has free', async () => {
      const free: Record<string, number> = { w1: 97, w2: 61, w3: 40 };
      for (const [id, f] of Object.entries(free)) await ledger.heartbeat(id, fields(f, { addr: `${id}:1` }), { ttlMs: LONG });
      const clients = await Promise.all(Array.from({ length: 8 }, () => h.open(ns, 'fleet')));
      const granted: Record<string, number> = { w1: 0, w2: 0, w3: 0 };
      const policies: PickPolicy[] = ['most-free', 'best-fit', 'p2c', 'least-prefill'];
      await Promise.all(clients.map(async (c, ci) => {
        const rand = rng(ci + 1);
        // each client asks for 1..7 pages until even a 1-page request fails
        for (let i = 0; ; i++) {
          let need = 1 + Math.floor(rand() * 7);
          const policy = policies[(ci + i) % policies.length];
          const promptTokens = Math.floor(rand() * 100);
          let r = await c.pick(need, `c${ci}-${i}`, { policy, promptTokens });
          if (r === null && need > 1) { need = 1; r = await c.pick(1, `c${ci}-${i}`, { policy, promptTokens }); }
          if (r === null) return;
          granted[r.worker_id] += need;
          expect(r.effective_free_after).toBeGreaterThanOrEqual(0);
        }
      }));
      const snap = await ledger.snapshot();
      for (const w of snap.workers) {
        expect(w.reserved_pages).toBeLessThanOrEqual(w.free_pages);
        expect(w.reserved_pages).toBe(granted[w.worker_id]);
        // every client stopped only when a 1-page pick failed: every page was handed out exactly once
        expect(w.effective_free).toBe(0);
        expect(granted[w.worker_id]).toBe(free[w.worker_id]);
      }
    });

    it('release returns the pages once and is idempotent', async () => {
      await ledger.heartbeat('w', fields(50), { ttlMs: LONG });
      expect((await ledger.pick(20, 'r'))?.effective_free_after).toBe(30);
      expect(await ledger.release('w', 'r')).toBe(20);
      expect(await ledger.release('w', 'r')).toBe(0);
      expect(await ledger.release('nobody', 'r')).toBe(0);
      const snap = await ledger.snapshot();
      expect(snap.workers[0]).toMatchObject({ reserved_pages: 0, reservations: 0, effective_free: 50 });
      expect((await ledger.pick(50, 'r2'))?.effective_free_after).toBe(0);
    });

    it('the same request id picked twice on one worker is counted once', async () => {
      await ledger.heartbeat('w', fields(50), { ttlMs: LONG });
      expect((await ledger.pick(20, 'same'))?.effective_free_after).toBe(30);
      expect((await ledger.pick(10, 'same'))?.effective_free_after).toBe(40);
      expect((await ledger.snapshot()).workers[0]).toMatchObject({ reserved_pages: 10, reservations: 1 });
    });

    it('reservations expire and their pages come back', async () => {
      await ledger.heartbeat('w', fields(10), { ttlMs: LONG });
      expect(await ledger.pick(10, 'short', { ttlMs: 200 })).not.toBeNull();
      expect(await ledger.pick(1, 'blocked')).toBeNull();
      await h.advance(300);
      expect((await ledger.snapshot()).workers[0]).toMatchObject({ reserved_pages: 0, reservations: 0, effective_free: 10 });
      expect((await ledger.pick(10, 'again'))?.effective_free_after).toBe(0);
      expect(await ledger.release('w', 'short')).toBe(0);
    });

    it('drops a mass expiry in bounded batches, oldest first, never over-counting free pages', async () => {
      await ledger.heartbeat('w', fields(1000), { ttlMs: LONG });
      await Promise.all(Array.from({ length: 300 }, (_, i) => ledger.pick(1, `m${String(i).padStart(3, '0')}`, { ttlMs: 200 })));
      await h.advance(300);
      // each call drops at most EXPIRE_BATCH (256) expired reservations; the rest still count as reserved
      expect((await ledger.snapshot()).workers[0]).toMatchObject({ reserved_pages: 44, reservations: 44, effective_free: 956 });
      expect((await ledger.snapshot()).workers[0]).toMatchObject({ reserved_pages: 0, effective_free: 1000 });
    });

    it('heartbeats remove admitted and rejected reservations and refresh queued ones', async () => {
      await ledger.heartbeat('w', fields(100), { ttlMs: LONG });
      await ledger.pick(10, 'admitted', { ttlMs: 250 });
      await ledger.pick(20, 'rejected', { ttlMs: 250 });
      await ledger.pick(30, 'queued', { ttlMs: 250 });
      await ledger.pick(5, 'unseen', { ttlMs: 250 });     // in flight, not yet known to the worker
      // the worker admitted one request (its pages are now outside free_pages) and queued another
      const hb = await ledger.heartbeat('w', fields(90, { running: 1, waiting: 1 }), {
        ttlMs: LONG, admitted: ['admitted'], rejected: ['rejected'], queued: ['queued', 'never-reserved'], reservationTtlMs: 1500,
      });
      expect(hb).toMatchObject({ reserved_pages: 35, effective_free: 55 });
      await h.advance(400);
      // 'unseen' expired; 'queued' lives on; 'never-reserved' was not created by the refresh
      const w = (await ledger.snapshot()).workers[0];
      expect(w).toMatchObject({ reserved_pages: 30, reservations: 1, effective_free: 60 });
      expect(await ledger.release('w', 'admitted')).toBe(0);
      expect(await ledger.release('w', 'never-reserved')).toBe(0);
      expect(await ledger.release('w', 'queued')).toBe(30);
    });

    it('a stale worker is never picked, and is picked again once it heartbeats', async () => {
      await ledger.heartbeat('flaky', fields(500, { addr: 'flaky:1' }), { ttlMs: 200 });
      await ledger.heartbeat('steady', fields(100, { addr: 'steady:1' }), { ttlMs: LONG });
      expect((await ledger.pick(10, 'r0'))?.worker_id).toBe('flaky');
      await h.advance(300);
      expect((await ledger.pick(10, 'r1'))?.worker_id).toBe('steady');
      expect(await ledger.pick(200, 'r2')).toBeNull();
      expect((await ledger.snapshot()).workers.map((w) => w.worker_id)).toEqual(['steady']);
      for (const policy of ['best-fit', 'p2c', 'least-prefill'] as PickPolicy[]) {
        for (let i = 0; i < 10; i++) expect((await ledger.pick(1, `s-${policy}-${i}`, { policy }))?.worker_id).toBe('steady');
      }
      // back: its reservation r0 (30 s) outlived the worker hash and still counts: 500 − 10 − 10
      await ledger.heartbeat('flaky', fields(500, { addr: 'flaky:1' }), { ttlMs: LONG });
      const back = await ledger.pick(10, 'r3');
      expect(back).toEqual({ worker_id: 'flaky', addr: 'flaky:1', effective_free_after: 480 });
    });

    it('a draining worker is never picked but stays in the snapshot, flagged', async () => {
      await ledger.heartbeat('d', fields(500), { ttlMs: LONG });
      await ledger.heartbeat('o', fields(50), { ttlMs: LONG });
      await ledger.heartbeat('d', fields(500, { draining: true }), { ttlMs: LONG });
      for (const policy of ['most-free', 'best-fit', 'p2c', 'least-prefill'] as PickPolicy[]) {
        for (let i = 0; i < 5; i++) expect((await ledger.pick(1, `x-${policy}-${i}`, { policy }))?.worker_id).toBe('o');
        expect(await ledger.pick(100, `y-${policy}`, { policy })).toBeNull();
      }
      const snap = await ledger.snapshot();
      expect(snap.workers.find((w) => w.worker_id === 'd')).toMatchObject({ draining: true, effective_free: 500 });
      // the fleet's pressure leaves draining workers out: only 'o' counts, (1000 − 50 + 20) / 1000
      expect(fleetPressure(snap.workers)).toMatchObject({ workers: 1, queue: 0 });
      expect(fleetPressure(snap.workers).kv).toBeCloseTo(0.97, 10);
      await ledger.heartbeat('d', fields(500), { ttlMs: LONG });
      expect((await ledger.pick(100, 'z'))?.worker_id).toBe('d');
    });

    it('a removed worker is never picked', async () => {
      await ledger.heartbeat('gone', fields(500), { ttlMs: LONG });
      await ledger.removeWorker('gone');
      expect(await ledger.pick(1, 'r')).toBeNull();
      expect((await ledger.snapshot()).workers).toEqual([]);
    });

    it('a heartbeat that lowers free_pages below what is reserved leaves nothing to pick', async () => {
      await ledger.heartbeat('w', fields(100), { ttlMs: LONG });
      await ledger.pick(80, 'big');
      const hb = await ledger.heartbeat('w', fields(50), { ttlMs: LONG });
      expect(hb).toMatchObject({ effective_free: -30, reserved_pages: 80 });
      expect(await ledger.pick(1, 'r')).toBeNull();
      expect((await ledger.snapshot()).workers[0].effective_free).toBe(-30);
    });

    it('two fleets in two namespaces never see each other\'s workers or events', async () => {
      const other = await h.open(`${ns}-other`, 'fleet');
      const sibling = await h.open(ns, 'fleet2');
      await ledger.heartbeat('mine', fields(100), { ttlMs: LONG });
      await other.heartbeat('theirs', fields(900), { ttlMs: LONG });
      expect((await ledger.pick(50, 'r'))?.worker_id).toBe('mine');
      expect((await other.pick(50, 'r'))?.worker_id).toBe('theirs');
      expect(await sibling.pick(1, 'r')).toBeNull();
      expect(await ledger.pick(60, 'r2')).toBeNull();
      expect((await ledger.snapshot()).workers.map((w) => w.worker_id)).toEqual(['mine']);
      expect((await other.snapshot()).workers.map((w) => w.worker_id)).toEqual(['theirs']);
      expect(await other.release('mine', 'r')).toBe(0);
      const seen: LedgerEvent[] = [];
      const sub = await other.subscribe((e) => seen.push(e));
      await ledger.drain('mine');
      await ledger.setBudget('x', { method: 'FULL' });
      await other.drain('theirs');
      await ledger.undrain('mine');
      await other.undrain('theirs', 'scale-down dropped');
      await until(() => seen.length >= 2);
      await new Promise((r) => setTimeout(r, 50));
      expect(seen).toEqual([{ type: 'drain', worker_id: 'theirs' }, { type: 'undrain', worker_id: 'theirs', reason: 'scale-down dropped' }]);
      expect(await other.getBudget('x')).toBeNull();
      await sub.close();
    });

    it('counts live routers for the degraded-mode share', async () => {
      expect(await ledger.liveRouters()).toBe(0);
      expect(await ledger.registerRouter('r1', 200)).toBe(1);
      expect(await ledger.registerRouter('r2', 200)).toBe(2);
      expect(await ledger.registerRouter('r2', 200)).toBe(2);
      await h.advance(300);
      expect(await ledger.liveRouters(200)).toBe(0);
      expect(await ledger.registerRouter('r1')).toBe(1);
      await ledger.unregisterRouter('r1');
      expect(await ledger.liveRouters()).toBe(0);
    });

    it('stores budgets and the default name, and announces every change on the events channel', async () => {
      const seen: LedgerEvent[] = [];
      const errors: LedgerError[] = [];
      const sub = await ledger.subscribe((e) => seen.push(e), (e) => errors.push(e));
      expect(await ledger.getBudget('default')).toBeNull();
      expect(await ledger.getDefaultBudget()).toBeNull();
      await ledger.setBudget('default', { method: 'ADA_SNAPKV', tokens_per_head: 512, window: 32 });
      await ledger.setBudget('long', { method: 'SNAPKV', keep_ratio: 0.25 });
      await ledger.setDefaultBudget('default');
      await ledger.drain('w7', 'scale down');
      await h.publishRaw(ns, 'fleet', 'not json');
      await h.publishRaw(ns, 'fleet', JSON.stringify({ type: 'drain' }));
      expect(await ledger.deleteBudget('long')).toBe(true);
      expect(await ledger.deleteBudget('long')).toBe(false);
      await until(() => seen.length >= 6 && errors.length >= 2);
      expect(seen).toEqual([
        { type: 'budget', name: 'default', spec: { method: 'ADA_SNAPKV', tokens_per_head: 512, window: 32 } },
        { type: 'budget', name: 'long', spec: { method: 'SNAPKV', keep_ratio: 0.25 } },
        { type: 'default_budget', name: 'default' },
        { type: 'drain', worker_id: 'w7', reason: 'scale down' },
        { type: 'budget', name: 'long', spec: null },
        { type: 'budget', name: 'long', spec: null },
      ]);
      expect(errors.map((e) => e.code)).toEqual(['invalid_reply', 'invalid_reply']);
      expect(errors[1].message).toMatch(/worker_id/);
      expect(await ledger.getBudget('default')).toEqual({ method: 'ADA_SNAPKV', tokens_per_head: 512, window: 32 });
      expect(await ledger.listBudgets()).toEqual({ default: { method: 'ADA_SNAPKV', tokens_per_head: 512, window: 32 } });
      expect(await ledger.getDefaultBudget()).toBe('default');
      await ledger.setDefaultBudget(null);
      expect(await ledger.getDefaultBudget()).toBeNull();
      await until(() => seen.length >= 7);
      await sub.close();
      await ledger.drain('w8');
      await new Promise((r) => setTimeout(r, 50));
      expect(seen).toHaveLength(7);   // nothing after close
      expect(seen[6]).toEqual({ type: 'default_budget', name: null });
    });

    it('rejects bad arguments as bugs and refuses calls after close', async () => {
      await expect(ledger.pick(0, 'r')).rejects.toThrow(RangeError);
      await expect(ledger.pick(1.5, 'r')).rejects.toThrow(/needPages/);
      await expect(ledger.pick(1, '')).rejects.toThrow(TypeError);
      await expect(ledger.pick(1, 'r', { policy: 'random' as PickPolicy })).rejects.toThrow(/policy 'random'/);
      await expect(ledger.pick(1, 'r', { promptTokens: -1 })).rejects.toThrow(/promptTokens/);
      await expect(ledger.heartbeat('w', fields(1, { prefill_tokens: 0.5 }))).rejects.toThrow(/prefill_tokens/);
      await expect(ledger.heartbeat('a\nb', fields(1))).rejects.toThrow(/newline/);
      await expect(ledger.heartbeat('w', fields(-1))).rejects.toThrow(/free_pages/);
      await expect(ledger.setBudget('b', { method: 'NOPE' } as never)).rejects.toThrow();
      await ledger.close();
      const err = await ledger.pick(1, 'r').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LedgerError);
      expect((err as LedgerError).code).toBe('closed');
    });
  });
}
