// FleetMember's heartbeat fields on an in-memory ledger (no engine, no Redis): what a router reads from them.
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { MemoryLedgerBackend } from '../../ledger/index.ts';
import { FleetMember, type FleetMemberOptions } from '../../worker/fleet.ts';

function member(more: Partial<FleetMemberOptions>): Promise<FleetMember> {
  const ledger = new MemoryLedgerBackend().ledger('ns', 'f');
  return FleetMember.start({
    ledger, namespace: 'ns', fleet: 'f', workerId: 'w1', addr: '127.0.0.1:1', heartbeatMs: 60_000, budgetRefreshMs: 60_000,
    log: pino({ level: 'silent' }),
    capacity: () => ({ totalPages: 100, freePages: 90, reservedPages: 0, heldPages: 10, pageSize: 16, numLayers: 2,
      numKvHeads: 2, running: 1, waiting: 0, prefillTokens: 0 }),
    draining: () => false, queued: () => [], onDrainOrder: () => {}, onUndrainOrder: () => {},
    ...more,
  });
}

describe('fleet member heartbeat fields', () => {
  it('publishes max_model_len when it is given, 0 (not published) when not', async () => {
    const m = await member({ maxModelLen: 8192 });
    expect((await m.ledger.snapshot()).workers[0]).toMatchObject({ worker_id: 'w1', total_pages: 100, max_model_len: 8192 });
    await m.close();
    const n = await member({});
    expect((await n.ledger.snapshot()).workers[0]).toMatchObject({ worker_id: 'w1', max_model_len: 0 });
    await n.close();
  });
});
