// What `kvfleet up` shows while it runs: one row per worker (pages, pressure, compression) from the ledger snapshot
// and each worker's Prometheus counters, drawn as a live table on a terminal, as plain lines otherwise, or as one
// JSON document per refresh (--json-status).
import { fleetPressure, workerPressure, type LedgerSnapshot } from '../../ledger/index.ts';

/** Counters of one worker since it started (its /metrics). */
export interface WorkerCounters {
  /** K/V entries held at the end of finished requests, and what a full cache would have held */
  kept: number;
  full: number;
  /** tokens streamed, requests answered OK */
  generated: number;
  ok: number;
}

export interface WorkerRow {
  worker_id: string;
  addr: string;
  total_pages: number;
  /** uncommitted pages (the ledger's free_pages) */
  free_pages: number;
  reserved_pages: number;
  running: number;
  waiting: number;
  draining: boolean;
  pressure: number;
  /** full / kept tokens over finished requests; null before the first one */
  compression: number | null;
  requests: number | null;
  tokens: number | null;
}

export interface StatusDoc {
  time: string;
  fleet: string;
  fleet_pressure: number;
  workers: WorkerRow[];
}

/** Prometheus text → `name{labels}` → value (comments and malformed lines skipped). */
export function parsePromText(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    const v = Number(line.slice(i + 1));
    if (i > 0 && Number.isFinite(v)) m.set(line.slice(0, i), v);
  }
  return m;
}

export function countersFrom(text: string): WorkerCounters {
  const m = parsePromText(text);
  return {
    kept: m.get('kvfleet_worker_kv_kept_tokens_total') ?? 0,
    full: m.get('kvfleet_worker_kv_full_tokens_total') ?? 0,
    generated: m.get('kvfleet_worker_generation_tokens_total') ?? 0,
    ok: m.get('kvfleet_worker_requests_total{code="OK"}') ?? 0,
  };
}

export function statusDoc(fleet: string, snap: LedgerSnapshot, counters: Map<string, WorkerCounters>): StatusDoc {
  const workers = snap.workers.map((w): WorkerRow => {
    const c = counters.get(w.worker_id);
    return {
      worker_id: w.worker_id, addr: w.addr, total_pages: w.total_pages, free_pages: w.free_pages,
      reserved_pages: w.reserved_pages, running: w.running, waiting: w.waiting, draining: w.draining,
      pressure: workerPressure(w),
      compression: c && c.kept > 0 ? c.full / c.kept : null,
      requests: c ? c.ok : null,
      tokens: c ? c.generated : null,
    };
  });
  return { time: new Date().toISOString(), fleet, fleet_pressure: fleetPressure(snap.workers).pressure, workers };
}

const COLUMNS: Array<[string, (r: WorkerRow) => string]> = [
  ['worker', (r) => r.worker_id + (r.draining ? ' (draining)' : '')],
  ['address', (r) => r.addr],
  ['pages', (r) => String(r.total_pages)],
  ['free', (r) => String(r.free_pages)],
  ['reserved', (r) => String(r.reserved_pages)],
  ['running', (r) => String(r.running)],
  ['waiting', (r) => String(r.waiting)],
  ['pressure', (r) => r.pressure.toFixed(3)],
  ['kv compression', (r) => (r.compression === null ? '-' : `${r.compression.toFixed(2)}x`)],
  ['requests', (r) => (r.requests === null ? '-' : String(r.requests))],
  ['tokens', (r) => (r.tokens === null ? '-' : String(r.tokens))],
];

/** The table as lines: a header, one row per worker, and the fleet's pressure. */
export function renderTable(d: StatusDoc, expected: number): string[] {
  const cells = [COLUMNS.map(([h]) => h), ...d.workers.map((r) => COLUMNS.map(([, f]) => f(r)))];
  const widths = COLUMNS.map((_, i) => Math.max(...cells.map((row) => row[i].length)));
  const lines = cells.map((row) => row.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  '));
  const missing = expected - d.workers.length;
  lines.push(`fleet ${d.fleet}: ${d.workers.length} live worker${d.workers.length === 1 ? '' : 's'}`
    + `${missing > 0 ? ` (${missing} missing from the ledger)` : ''}, pressure ${d.fleet_pressure.toFixed(3)}`
    + ' (pages held, committed to growth or reserved, over total; + queue)');
  return lines;
}

/** One line per refresh for logs and pipes. */
export function plainLine(d: StatusDoc): string {
  return `status: fleet pressure ${d.fleet_pressure.toFixed(3)}; ` + d.workers.map((r) => `${r.worker_id} pages ${r.free_pages}/${r.total_pages} free, `
    + `reserved ${r.reserved_pages}, running ${r.running}, waiting ${r.waiting}, pressure ${r.pressure.toFixed(3)}, `
    + `compression ${r.compression === null ? '-' : `${r.compression.toFixed(2)}x`}, requests ${r.requests ?? '-'}`).join('; ');
}

/** Control characters (but newlines) shown as '?', so streamed model text cannot move the cursor. */
export function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/g, '?');
}

/** Hard-wraps text to `cols` characters per line (each returned line takes one terminal row). */
export function wrap(text: string, cols: number): string[] {
  const out: string[] = [];
  for (const para of text.split('\n')) {
    const chars = [...para];
    if (chars.length === 0) out.push('');
    for (let i = 0; i < chars.length; i += cols) out.push(chars.slice(i, i + cols).join(''));
  }
  return out;
}

/**
 * A terminal with a live region at the bottom: print() adds permanent text above it, setRegion() redraws it in
 * place. Invariant: `shown` is the number of rows the region occupies on screen (each of its lines is cut to the
 * terminal width, so one line is one row).
 */
export class LiveScreen {
  private readonly out: NodeJS.WriteStream;
  private region: string[] = [];
  private shown = 0;

  constructor(out: NodeJS.WriteStream) { this.out = out; }

  get columns(): number { return Math.max(20, (this.out.columns || 100) - 1); }

  private erase(): string { return this.shown > 0 ? `\x1b[${this.shown}F\x1b[J` : ''; }

  private draw(): string {
    const cols = this.columns;
    const lines = this.region.map((l) => [...l].slice(0, cols).join(''));
    this.shown = lines.length;
    return lines.map((l) => l + '\n').join('');
  }

  /** Permanent text (ends with a newline, or one is added). */
  print(text: string): void {
    const t = text.endsWith('\n') ? text : text + '\n';
    const e = this.erase();
    this.shown = 0;
    this.out.write(e + t + this.draw());
  }

  setRegion(lines: string[]): void {
    if (lines.length === this.region.length && lines.every((l, i) => l === this.region[i])) return;  // no flicker
    const e = this.erase();
    this.region = lines;
    this.out.write(e + this.draw());
  }

  /** Leaves the region's last drawing on screen as permanent text. */
  release(): void { this.region = []; this.shown = 0; }
}
