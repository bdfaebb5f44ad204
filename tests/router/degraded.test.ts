// Degraded-mode placement (the ledger unreachable): the choice from the last snapshot, with this router's own
// reservations since then counted against each worker's share.
import { describe, expect, it } from 'vitest';
import type { WorkerSnapshot } from '../../ledger/index.ts';
import { chooseDegraded, type DegradedReservation } from '../../router/router.ts';

const worker = (id: string, effectiveFree: number, prefill: number, extra: Partial<WorkerSnapshot> = {}): WorkerSnapshot => ({
  worker_id: id, addr: `${id}:1`, total_pages: 1000, free_pages: effectiveFree, page_size: 16, num_layers: 2, num_kv_heads: 2,
  running: 0, waiting: 0, draining: false, prefill_tokens: prefill, heartbeat_ms: 0, reserved_pages: 0, reservations: 0,
  effective_free: effectiveFree, ...extra,
});
const none = new Map<string, Map<string, DegradedReservation>>();

describe('chooseDegraded', () => {
  const ws = [worker('a', 800, 4000), worker('b', 300, 0), worker('c', 500, 100)];

  it('least-prefill takes the worker with the least pending prefill that has room; most-free the most room', () => {
    expect(chooseDegraded(ws, 100, 'least-prefill', 1, none, new Set())?.w.worker_id).toBe('b');
    expect(chooseDegraded(ws, 100, 'most-free', 1, none, new Set())?.w.worker_id).toBe('a');
    // b's share with 2 live routers is 150 pages: too small for 200, so c (the next least prefill)
    expect(chooseDegraded(ws, 200, 'least-prefill', 2, none, new Set())?.w.worker_id).toBe('c');
  });

  it('counts the prompt tokens and pages this router sent since the snapshot', () => {
    const local = new Map([['b', new Map([['r1', { pages: 50, promptTokens: 2000 }]])]]);
    // b now has 2000 tokens of prefill from us (more than c's 100) and 250 pages of room
    expect(chooseDegraded(ws, 100, 'least-prefill', 1, local, new Set())).toMatchObject({ w: { worker_id: 'c' }, room: 500 });
    expect(chooseDegraded(ws, 100, 'most-free', 1, local, new Set())).toMatchObject({ w: { worker_id: 'a' }, room: 800 });
    const full = new Map([['a', new Map([['r2', { pages: 800, promptTokens: 1 }]])]]);
    expect(chooseDegraded([ws[0]], 1, 'most-free', 1, full, new Set())).toBeUndefined();
  });

  it('skips draining and excluded workers, and breaks ties by room, then by id', () => {
    expect(chooseDegraded([worker('a', 900, 0, { draining: true }), worker('b', 100, 0)], 50, 'least-prefill', 1, none, new Set())?.w.worker_id).toBe('b');
    expect(chooseDegraded(ws, 100, 'least-prefill', 1, none, new Set(['b']))?.w.worker_id).toBe('c');
    expect(chooseDegraded([worker('y', 400, 0), worker('x', 400, 0), worker('z', 600, 0)], 10, 'least-prefill', 1, none, new Set())?.w.worker_id).toBe('z');
    expect(chooseDegraded([worker('y', 400, 0), worker('x', 400, 0)], 10, 'least-prefill', 1, none, new Set())?.w.worker_id).toBe('x');
    expect(chooseDegraded(ws, 10_000, 'least-prefill', 1, none, new Set())).toBeUndefined();
  });
});
