// `kvfleet up`: the whole stack on one machine, for a first look. A model (a cached synthetic one unless --model),
// a ledger, K workers and a router; a live table of each worker's pages, pressure and KV compression; one demo
// request streamed through the router; Ctrl-C (or SIGTERM, SIGHUP) stops everything and exits 0.
//
// Two shapes, same fleet (local/default) and same router port:
// - redis-server on PATH: it runs as a child (loopback, a free port, no persistence), and so do the workers
//   (`kvfleet worker ... --redis --fleet local/default`) and the router (`kvfleet router ...`), each in its own
//   process group with its output in <log dir>/<name>.log;
// - otherwise (or --no-redis): ONE process runs the router and the workers over the in-memory ledger (one
//   MemoryLedgerBackend, one MemoryLedger client per part).
//
// Shutdown order: the router first (nothing new is placed), then the workers (they drain and leave the ledger), then
// the ledger. Invariant: every resource is registered for cleanup the moment it exists, so a signal or an error at
// any step of the start stops exactly what was started; a child still alive when this process exits is SIGKILLed.
import { mkdirSync, mkdtempSync, realpathSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { MemoryLedgerBackend, RedisLedger, type Ledger } from '../../ledger/index.ts';
import type { BudgetSpec } from '../../proto/index.ts';
import { ClientStatusError, compressionRatio, streamGenerate, summaryLine, type GenerateResult } from './client.ts';
import { checkModelDir, ensureSyntheticModel, type UpPreset } from './model.ts';
import { canListen, findOnPath, freePort, startRedisChild, Supervisor, type Child } from './procs.ts';
import {
  countersFrom, LiveScreen, plainLine, printable, renderTable, statusDoc, wrap, type StatusDoc, type WorkerCounters,
} from './status.ts';

export interface UpFlags {
  port: number;
  model?: string;
  workers: number;
  preset: UpPreset;
  demo: boolean;
  jsonStatus?: boolean;
  /** false with --no-redis: the in-memory ledger even when redis-server is on PATH */
  redis: boolean;
  /** page pool bytes per worker (default: sized from the machine, see poolOptions) */
  kvMemory?: number;
  logDir?: string;
}

export const FLEET = 'local/default';
const [NAMESPACE, FLEET_NAME] = FLEET.split('/');

/** Budgets the local fleet allows by name (what KVBudget objects are in a cluster). Without a name a request gets
 *  the built-in default budget (ADA_SNAPKV, 1024 tokens per KV head). */
export const UP_BUDGETS: Record<string, BudgetSpec> = {
  compact: { method: 'ADA_SNAPKV', tokens_per_head: 64 },
  full: { method: 'FULL' },
};

/** The demo: a prompt long enough (about 270 tokens with the synthetic tokenizer) that the `compact` budget
 *  compresses it, so the table shows a compression ratio above 1. */
export const DEMO = {
  prompt: 'The KV cache of each attention head holds the keys and values of every token the model has seen. '
    + 'Ada-KV keeps a different number of tokens in each head: heads that attend to a few positions keep few, heads '
    + 'that spread their attention keep more. The pages a request holds after compression are far fewer than its '
    + 'context length, so a worker can serve more requests at once, and the router places each request on the '
    + 'worker with the most compressed room left.',
  maxNewTokens: 48,
  budget: 'compact',
} as const;

const WORKER_DRAIN_MS = 5000;
const READY_TIMEOUT_MS = 180_000;

class Stopped extends Error {}

/**
 * What was started, stopped in reverse order. Invariant: once drain() has begun nothing new stays running: own()
 * throws Stopped (the start step ends there), and a resource registered after the drain finished is stopped at once.
 */
class Owned {
  private readonly items: Array<{ what: string; run: () => Promise<unknown> }> = [];
  private state: 'open' | 'draining' | 'drained' = 'open';
  /** what drain() stopped, in order */
  readonly stopped: string[] = [];

  /** Registers a started resource and how to stop it. */
  own(what: string, run: () => Promise<unknown>): void {
    if (this.state === 'drained') { run().catch(() => undefined); throw new Stopped(); }
    this.items.push({ what, run });
    if (this.state === 'draining') throw new Stopped();  // the drain loop pops it
  }

  /** Throws Stopped once a stop began: called before each step that would start something. */
  check(): void { if (this.state !== 'open') throw new Stopped(); }

  async drain(onError: (what: string, err: unknown) => void): Promise<void> {
    this.state = 'draining';
    for (let c = this.items.pop(); c !== undefined; c = this.items.pop()) {
      try { await c.run(); } catch (err) { onError(c.what, err); }
      this.stopped.push(c.what);
    }
    this.state = 'drained';
  }
}

/** How to run `kvfleet <args>` as a child: this Node and bin/kvfleet.ts (no shell, no PATH lookup). */
function kvfleetArgv(): string[] {
  return [process.execPath, fileURLToPath(new URL('../kvfleet.ts', import.meta.url))];
}

/** How the user should spell the command: `kvfleet` when PATH finds this one, else a path to bin/kvfleet. */
function commandName(): string {
  const bin = fileURLToPath(new URL('../kvfleet', import.meta.url));
  const found = findOnPath('kvfleet');
  try { if (found !== undefined && realpathSync(found) === realpathSync(bin)) return 'kvfleet'; } catch { /* fall through */ }
  const rel = path.relative(process.cwd(), bin);
  return rel.startsWith('..') || path.isAbsolute(rel) ? bin : `./${rel}`;
}

/** Children get no KVFLEET_* or downward-API variables: `up` sets every option itself, so none can conflict. */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('KVFLEET_') && k !== 'POD_NAME' && k !== 'POD_IP') env[k] = v;
  return env;
}

/**
 * The page pool of each worker, when --kv-memory is not given. With CUDA the K workers share one GPU: each takes
 * 0.8/K of its memory (the worker subtracts its weights). On CPU: a quarter of free memory split K ways, between
 * 16 MiB and 1 GiB per worker: room for hundreds of demo requests without crowding a laptop.
 */
async function poolFlags(f: UpFlags): Promise<{ kvMemory: string } | { kvMemoryFraction: string }> {
  if (f.kvMemory !== undefined) return { kvMemory: String(f.kvMemory) };
  let cuda = false;
  try { cuda = (await import('../../worker/engine.ts')).deviceInfo().cudaUsable; } catch { /* no addon info: CPU */ }
  if (cuda) return { kvMemoryFraction: (0.8 / f.workers).toFixed(4) };
  const bytes = Math.floor(0.25 * os.freemem() / f.workers);
  return { kvMemory: String(Math.min(2 ** 30, Math.max(16 * 2 ** 20, bytes))) };
}

function httpGet(url: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
  });
}

/** The running stack as the rest of `up` sees it, whichever shape it has. */
interface Stack {
  /** up's own client of the ledger (snapshots for the table) */
  ledger: Ledger;
  routerAddr: string;
  ledgerLine: string;
  pidsLine: string;
  counters(): Promise<Map<string, WorkerCounters>>;
  /** resolves with a child that exited while the stack was running (never, in one process) */
  failed: Promise<Child>;
}

/** Output: a live terminal table, plain lines (not a terminal), or JSON status documents on stdout. */
class Ui {
  private readonly screen: LiveScreen | undefined;
  private readonly json: boolean;
  private table: string[] = [];
  private demo: { header: string; text: string } | undefined;
  private lastPlain = '';
  private lastPlainAt = 0;
  private lastProgressAt = 0;

  constructor(json: boolean) {
    this.json = json;
    this.screen = !json && process.stdout.isTTY ? new LiveScreen(process.stdout) : undefined;
  }

  /** Permanent text for people (stderr with --json-status, so stdout holds only JSON). */
  info(text: string): void {
    if (this.screen) this.screen.print(text);
    else (this.json ? process.stderr : process.stdout).write(text.endsWith('\n') ? text : text + '\n');
  }

  /** A long step's progress: redrawn in place on a terminal, a line every 5 s otherwise; `final` stays. */
  progress(line: string, final: boolean): void {
    if (final) { this.screen?.setRegion([]); this.info(line); return; }
    if (this.screen) { this.screen.setRegion([line]); return; }
    if (Date.now() - this.lastProgressAt < 5000) return;
    this.lastProgressAt = Date.now();
    this.info(line);
  }

  private redraw(): void {
    if (!this.screen) return;
    const cols = this.screen.columns;
    const lines: string[] = [];
    if (this.demo) lines.push(...wrap(this.demo.header, cols), ...wrap(printable(this.demo.text), cols).slice(-12), '');
    this.screen.setRegion([...lines, ...this.table]);
  }

  status(d: StatusDoc, expected: number): void {
    if (this.json) { process.stdout.write(JSON.stringify(d) + '\n'); return; }
    if (this.screen) { this.table = renderTable(d, expected); this.redraw(); return; }
    // plain: a line when something changed or every 10 s, never inside the demo's streamed text
    const line = plainLine(d);
    if (this.demo || (line === this.lastPlain && Date.now() - this.lastPlainAt < 10_000)) return;
    this.lastPlain = line;
    this.lastPlainAt = Date.now();
    process.stdout.write(line + '\n');
  }

  demoStart(header: string): void {
    this.demo = { header, text: '' };
    if (this.screen) this.redraw();
    else this.info(header);
  }

  demoChunk(text: string): void {
    if (!this.demo) return;
    this.demo.text += text;
    if (this.screen) this.redraw();
    else (this.json ? process.stderr : process.stdout).write(printable(text));
  }

  demoEnd(summary: string): void {
    const d = this.demo;
    this.demo = undefined;
    if (!d) return;
    if (this.screen) this.screen.print([d.header, ...wrap(printable(d.text), this.screen.columns), summary].join('\n'));
    else this.info(`\n${summary}`);
    this.redraw();
  }

  /** The table's last drawing stays on screen; later text goes below it. */
  close(): void { this.screen?.release(); }
}

export async function runUp(f: UpFlags): Promise<void> {
  const t0 = Date.now();
  const ui = new Ui(f.jsonStatus === true);
  const cmd = commandName();
  if (f.port !== 0) {
    const why = await canListen('127.0.0.1', f.port);
    if (why !== undefined) throw new Error(`--port ${f.port}: the router cannot listen on 127.0.0.1:${f.port} (${why}); pick another port, or --port 0 for a free one`);
  }
  const modelDir = f.model !== undefined ? checkModelDir(f.model) : undefined;
  const redisBin = f.redis ? findOnPath('redis-server') : undefined;
  const logDir = f.logDir !== undefined ? path.resolve(f.logDir) : mkdtempSync(path.join(os.tmpdir(), 'kvfleet-up-'));
  mkdirSync(logDir, { recursive: true });
  const sup = new Supervisor(logDir);
  const killAll = () => sup.killAllNow();
  process.on('exit', killAll);

  // signals: the first one stops the stack in order; a second one kills what is left at once
  let stopSignal: NodeJS.Signals | undefined;
  let wake!: () => void;
  const stopped = new Promise<void>((r) => { wake = r; });
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopSignal !== undefined) {
      process.stderr.write(`kvfleet up: ${sig} again: killing every child now\n`);
      sup.killAllNow();
      process.exit(130);
    }
    stopSignal = sig;
    wake();
  };
  const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of SIGNALS) process.on(s, onSignal);
  /** Awaits p, unless a stop signal comes first (then throws Stopped; p's late result is dropped). */
  const guard = <T>(p: Promise<T>): Promise<T> => {
    p.catch(() => undefined);
    return Promise.race([p, stopped.then((): never => { throw new Stopped(); })]);
  };
  const owned = new Owned();

  let error: unknown;
  try {
    // 1. the model
    let dir = modelDir;
    if (dir === undefined) {
      const m = await guard(ensureSyntheticModel(sup, f.preset, {
        nodeArgs: kvfleetArgv(),
        progress: (line, final) => ui.progress(line, final),
      }));
      dir = m.dir;
      if (!m.written) ui.info(`model: the synthetic ${f.preset} model cached in ${dir}`);
    } else {
      ui.info(`model: ${dir}`);
    }
    const pool = await poolFlags(f);
    // 2. the ledger, the workers and the router
    const stack = redisBin !== undefined
      ? await guard(startProcesses({ f, dir, pool, sup, redisBin, owned }))
      : await guard(startInProcess({ f, dir, pool, logDir, owned }));
    if (redisBin === undefined) {
      ui.info(`ledger: in memory (${f.redis ? 'redis-server is not on PATH' : '--no-redis'}); the router and the `
        + `${f.workers} workers run in this process`);
    }
    // 3. ready
    const port = stack.routerAddr.slice(stack.routerAddr.lastIndexOf(':') + 1);
    ui.info(`kvfleet up: ready in ${((Date.now() - t0) / 1000).toFixed(1)} s: router ${stack.routerAddr}, `
      + `${f.workers} worker${f.workers === 1 ? '' : 's'} (${Array.from({ length: f.workers }, (_, i) => `w${i}`).join(', ')}), `
      + `fleet ${FLEET}, ${stack.ledgerLine}`);
    ui.info(`pids: ${stack.pidsLine}`);
    ui.info(`logs: ${logDir}`);
    const howTo = [
      'send requests:',
      `  ${cmd} client generate --target 127.0.0.1:${port} --prompt "Paged attention" --max-new-tokens 32`,
      `  ${cmd} client generate --target 127.0.0.1:${port} --budget compact --prompt "..." --json`
        + `   # budgets: ${Object.keys(UP_BUDGETS).join(', ')}; default ADA_SNAPKV 1024 tokens/head`,
      'Ctrl-C stops everything.',
    ].join('\n');

    // 4. the demo, streamed while the table refreshes
    let demoDone: Promise<void> = Promise.resolve();
    if (f.demo) {
      ui.demoStart(`demo: ${DEMO.maxNewTokens} new tokens through the router, budget '${DEMO.budget}' `
        + `(ADA_SNAPKV, ${UP_BUDGETS[DEMO.budget].tokens_per_head} tokens per KV head), prompt "${DEMO.prompt.slice(0, 36)}..." `
        + '(random weights: the text is noise, the KV bookkeeping is real)');
      demoDone = streamGenerate(stack.routerAddr, {
        text: DEMO.prompt, sampling: { max_new_tokens: DEMO.maxNewTokens, ignore_eos: true }, budget: { name: DEMO.budget },
      }, { timeoutMs: 300_000, onChunk: (text) => ui.demoChunk(text) }).then((r: GenerateResult) => {
        const ratio = compressionRatio(r.kv_stats);
        ui.demoEnd(`${summaryLine(r)}${ratio !== undefined ? `\nthe request's KV cache held ${ratio.toFixed(2)}x fewer `
          + 'entries than a full cache would have' : ''}`);
      }, (err: unknown) => {
        // a demo cut short by Ctrl-C is no failure worth a message
        if (stopSignal === undefined) ui.demoEnd(`demo failed: ${err instanceof ClientStatusError ? err.message : String(err)}`);
      }).then(() => { if (stopSignal === undefined) ui.info(howTo); });
    } else {
      ui.info(howTo);
    }

    // 5. the table, about once a second, until a signal or a child that died
    let failedChild: Child | undefined;
    void stack.failed.then((c) => { failedChild = c; wake(); });
    while (stopSignal === undefined && failedChild === undefined) {
      try {
        const [snap, counters] = await Promise.all([stack.ledger.snapshot(), stack.counters()]);
        ui.status(statusDoc(FLEET, snap, counters), f.workers);
      } catch (err) {
        ui.info(`status: cannot read the ledger: ${(err as Error).message}`);
      }
      await Promise.race([new Promise((r) => setTimeout(r, 1000)), stopped]);
    }
    await Promise.race([demoDone, new Promise((r) => setTimeout(r, 100))]);
    if (failedChild !== undefined && stopSignal === undefined) {
      const { code, signal } = await failedChild.exited;
      throw new Error(`${failedChild.name} (pid ${failedChild.pid}) exited (${signal ?? `code ${code}`}); its last output (${failedChild.logFile}):\n${failedChild.tail()}`);
    }
  } catch (err) {
    if (!(err instanceof Stopped)) error = err;
  } finally {
    ui.close();
    const t1 = Date.now();
    if (stopSignal !== undefined) ui.info(`kvfleet up: ${stopSignal}: stopping`);
    // the stack in reverse start order; from here on nothing new starts: spawns throw, and a start step still
    // running ends at its next own()/check()
    sup.close();
    await owned.drain((what, err) => ui.info(`stopping ${what}: ${(err as Error).message}`));
    // whatever else is running (a model being written)
    const others = sup.live;
    await sup.stop([others], 3000);
    owned.stopped.push(...others.map((c) => `${c.name} (pid ${c.pid})`));
    for (const s of SIGNALS) process.off(s, onSignal);
    process.off('exit', killAll);
    // every child has exited and every client is closed; should some handle still hold the event loop (a library
    // retrying in the background), the command must end anyway
    setTimeout(() => {
      process.stderr.write('kvfleet up: something kept the process alive 3 s after the stack stopped; exiting\n');
      process.exit();
    }, 3000).unref();
    ui.info(`kvfleet up: stopped ${owned.stopped.length > 0 ? owned.stopped.join(', ') : 'nothing was running'} `
      + `in ${((Date.now() - t1) / 1000).toFixed(1)} s`);
  }
  if (error !== undefined) throw error;
}

interface StartContext {
  f: UpFlags;
  dir: string;
  pool: { kvMemory: string } | { kvMemoryFraction: string };
  owned: Owned;
}

/** redis-server, K `kvfleet worker` and one `kvfleet router`, as child processes. */
async function startProcesses(c: StartContext & { sup: Supervisor; redisBin: string }): Promise<Stack> {
  const { f, dir, sup, owned } = c;
  const redis = await startRedisChild(sup, c.redisBin);
  owned.own(`redis-server (pid ${redis.child.pid})`, () => sup.stop([[redis.child]], 3000));
  const ledger = new RedisLedger({ redis: redis.url, namespace: NAMESPACE, fleet: FLEET_NAME });
  // closed only once its connect attempt has settled: an ioredis client closed while still connecting can go on
  // reconnecting forever (and keep this process alive); redis-server is stopped after this, so the attempt settles
  const connected = ledger.ready(10_000);
  owned.own('the ledger client', async () => { await connected.catch(() => undefined); await ledger.close(); });
  await connected;
  for (const [name, spec] of Object.entries(UP_BUDGETS)) await ledger.setBudget(name, spec);
  owned.check();
  const node = kvfleetArgv();
  const env = childEnv();
  // the metrics ports are taken together, so the OS hands out distinct ones
  const ports = await Promise.all(Array.from({ length: f.workers + 1 }, () => freePort()));
  owned.check();
  const pool = 'kvMemory' in c.pool ? ['--kv-memory', c.pool.kvMemory] : ['--kv-memory-fraction', c.pool.kvMemoryFraction];
  const workers: Child[] = [];
  const metricsPort = new Map<string, number>();
  for (let i = 0; i < f.workers; i++) {
    const id = `w${i}`;
    metricsPort.set(id, ports[i]);
    workers.push(sup.spawn(id, node[0], [...node.slice(1), 'worker', '--model', dir, '--host', '127.0.0.1', '--port', '0',
      '--worker-id', id, '--redis', redis.url, '--fleet', FLEET, '--metrics-port', String(ports[i]), ...pool,
      '--drain-timeout-ms', String(WORKER_DRAIN_MS)], env));
  }
  owned.own(`workers (${workers.map((w) => `${w.name} pid ${w.pid}`).join(', ')})`, () => sup.stop([workers], WORKER_DRAIN_MS + 5000));
  const router = sup.spawn('router', node[0], [...node.slice(1), 'router', '--host', '127.0.0.1', '--port', String(f.port),
    '--redis', redis.url, '--fleet', FLEET, '--tokenizer', dir, '--metrics-port', String(ports[f.workers])], env);
  owned.own(`router (pid ${router.pid})`, () => sup.stop([[router]], 5000));

  const [routerLine] = await Promise.all([
    router.waitForLine(/^router \S+ listening on (\S+):(\d+)$/, 60_000),
    ...workers.map((w) => w.waitForLine(/^worker \S+ listening on \S+$/, READY_TIMEOUT_MS)),
  ]);
  // ready = every worker heartbeats in the ledger (what the router places by)
  const deadline = Date.now() + 30_000;
  for (;;) {
    const live = new Set((await ledger.snapshot()).workers.map((w) => w.worker_id));
    if (workers.every((w) => live.has(w.name))) break;
    const dead = [...workers, router].find((x) => !x.running);
    if (dead) throw new Error(`${dead.name} exited during start; its last output (${dead.logFile}):\n${dead.tail()}`);
    if (Date.now() > deadline) throw new Error(`workers missing from the ledger after 30 s: ${workers.filter((w) => !live.has(w.name)).map((w) => w.name).join(', ')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const all = [redis.child, router, ...workers];
  return {
    ledger,
    routerAddr: `127.0.0.1:${routerLine[2]}`,
    ledgerLine: `ledger ${redis.url} (redis-server ${c.redisBin})`,
    pidsLine: [`up=${process.pid}`, ...all.map((x) => `${x.name}=${x.pid}`)].join(' '),
    counters: async () => {
      const m = new Map<string, WorkerCounters>();
      await Promise.all([...metricsPort].map(async ([id, p]) => {
        try { m.set(id, countersFrom(await httpGet(`http://127.0.0.1:${p}/metrics`, 800))); } catch { /* shown as '-' */ }
      }));
      return m;
    },
    failed: Promise.race(all.map((x) => x.exited.then(() => x))),
  };
}

/** The router and K workers in this process, over one in-memory ledger. */
async function startInProcess(c: StartContext & { logDir: string }): Promise<Stack> {
  const { f, dir, owned } = c;
  const [{ parseWorkerConfig }, { startWorker }, { parseRouterConfig }, { Router }] = await Promise.all([
    import('../../worker/config.ts'), import('../../worker/server.ts'), import('../../router/config.ts'), import('../../router/router.ts'),
  ]);
  const logFile = path.join(c.logDir, 'stack.log');
  const log = pino({ level: 'info' }, pino.destination({ dest: logFile, sync: true }));
  const backend = new MemoryLedgerBackend();
  const ledger = backend.ledger(NAMESPACE, FLEET_NAME);
  owned.own('the in-memory ledger', () => ledger.close());
  for (const [name, spec] of Object.entries(UP_BUDGETS)) await ledger.setBudget(name, spec);
  owned.check();
  type W = Awaited<ReturnType<typeof startWorker>>;
  const pending: Array<Promise<W>> = [];
  for (let i = 0; i < f.workers; i++) {
    const cfg = parseWorkerConfig({
      model: dir, host: '127.0.0.1', port: 0, workerId: `w${i}`, metricsPort: 0, drainTimeoutMs: WORKER_DRAIN_MS, ...c.pool,
    }, {});
    pending.push(startWorker(cfg, { logger: log.child({ component: 'worker', worker: `w${i}` }), ledger: backend.ledger(NAMESPACE, FLEET_NAME) }));
  }
  // registered before they are up: a stop during the start waits for each and shuts it down
  owned.own(`workers (${Array.from({ length: f.workers }, (_, i) => `w${i}`).join(', ')}, in process)`, async () => {
    const ws = (await Promise.allSettled(pending)).flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    await Promise.all(ws.map((w) => w.shutdown({ graceMs: WORKER_DRAIN_MS })));
  });
  const workers = await Promise.all(pending);
  owned.check();
  const rcfg = parseRouterConfig({ host: '127.0.0.1', port: f.port, fleet: FLEET, tokenizer: dir, metricsPort: 0 });
  const routerP = Router.start(rcfg, log.child({ component: 'router' }), backend.ledger(NAMESPACE, FLEET_NAME));
  owned.own('router (in process)', async () => { await (await routerP.catch(() => undefined))?.close(); });
  const router = await routerP;
  return {
    ledger,
    routerAddr: `127.0.0.1:${router.port}`,
    ledgerLine: 'ledger in memory (this process)',
    pidsLine: `up=${process.pid} (router and workers in this process; logs in ${logFile})`,
    counters: async () => {
      const m = new Map<string, WorkerCounters>();
      for (const w of workers) m.set(w.workerId, countersFrom(await w.metrics.registry.metrics()));
      return m;
    },
    failed: new Promise<Child>(() => { /* nothing to fail apart from this process */ }),
  };
}
