// Prometheus /metrics on --metrics-port: the vLLM names routers and autoscalers read, and kvfleet_worker_* (pages,
// pressure, kept vs full tokens, compression ratio, TTFT / inter-token / step histograms, tokens generated), with
// values that follow the requests served.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../harness/ports.ts';
import { generate, greedy, inProcessWorker, tinyModel } from './helpers.ts';

let model: ReturnType<typeof tinyModel>;
beforeAll(() => { model = tinyModel(); });
afterAll(() => model?.cleanup());

async function scrape(port: number): Promise<{ text: string; value(name: string, labels?: string): number }> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
  const text = await res.text();
  return {
    text,
    value(name, labels = '') {
      const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      const m = new RegExp(`^${esc(name)}${labels ? esc(`{${labels}}`) : ''} (\\S+)$`, 'm').exec(text);
      if (!m) throw new Error(`metric ${name}${labels ? `{${labels}}` : ''} not found in:\n${text}`);
      return Number(m[1]);
    },
  };
}

describe('/metrics', () => {
  it('serves the vLLM and kvfleet_worker names, with values that follow the requests', async () => {
    const port = await freePort();
    const t = await inProcessWorker(model.dir, { metricsPort: port, numPages: 1000 });
    try {
      expect(t.w.metricsPort).toBe(port);
      const idle = await scrape(port);
      for (const name of ['vllm:num_requests_running', 'vllm:num_requests_waiting', 'vllm:kv_cache_usage_perc',
        'vllm:num_preemptions_total', 'kvfleet_worker_kv_pages', 'kvfleet_worker_kv_pressure',
        'kvfleet_worker_kv_kept_tokens_total', 'kvfleet_worker_kv_full_tokens_total', 'kvfleet_worker_kv_compression_ratio',
        'kvfleet_worker_time_to_first_token_seconds', 'kvfleet_worker_inter_token_latency_seconds',
        'kvfleet_worker_step_duration_seconds', 'kvfleet_worker_generation_tokens_total']) {
        expect(idle.text, name).toContain(`# TYPE ${name} `);
      }
      expect(idle.value('kvfleet_worker_kv_pages', 'state="total"')).toBe(1000);
      expect(idle.value('kvfleet_worker_kv_pages', 'state="free"')).toBe(1000);
      expect(idle.value('vllm:kv_cache_usage_perc')).toBe(0);
      expect(idle.value('kvfleet_worker_kv_compression_ratio')).toBe(1);

      // two requests: one compressed to 40 tokens per head, one full
      const n = 200, m = 6;
      const ids = Array.from({ length: n }, (_, i) => 2 + ((i * 13) % 400));
      const a = await generate(t.gen, { token_ids: { ids }, sampling: greedy(m), budget: { spec: { method: 'ADA_SNAPKV', tokens_per_head: 40 } } });
      const b = await generate(t.gen, { token_ids: { ids }, sampling: greedy(m), budget: { spec: { method: 'FULL' } } });
      expect(a.error).toBeUndefined();
      expect(b.error).toBeUndefined();
      const s = await scrape(port);
      const kept = Number(a.last!.kv_stats!.kept_tokens) + Number(b.last!.kv_stats!.kept_tokens);
      const full = Number(a.last!.kv_stats!.full_tokens) + Number(b.last!.kv_stats!.full_tokens);
      expect(kept).toBeLessThan(full);
      expect(s.value('kvfleet_worker_kv_kept_tokens_total')).toBe(kept);
      expect(s.value('kvfleet_worker_kv_full_tokens_total')).toBe(full);
      expect(s.value('kvfleet_worker_kv_compression_ratio')).toBeCloseTo(full / kept, 9);
      expect(s.value('kvfleet_worker_generation_tokens_total')).toBe(2 * m);
      expect(s.value('kvfleet_worker_time_to_first_token_seconds_count')).toBe(2);
      expect(s.value('kvfleet_worker_inter_token_latency_seconds_count')).toBe(2 * (m - 1));
      expect(s.value('kvfleet_worker_step_duration_seconds_count')).toBeGreaterThanOrEqual(m);
      expect(s.value('kvfleet_worker_requests_total', 'code="OK"')).toBe(2);
      expect(s.value('vllm:num_requests_running')).toBe(0);
      expect(s.value('vllm:num_preemptions_total')).toBe(0);

      // while a request runs: running 1, pages held, usage and pressure above 0
      const long = generate(t.gen, { token_ids: { ids }, sampling: greedy(3000) }, { cancelAfterTokens: 200 });
      let during = await scrape(port);
      // the pool gauges follow the scheduler's snapshot, taken between steps: held pages show after the first step
      const busy = (x: typeof during) => x.value('vllm:num_requests_running') === 1 && x.value('kvfleet_worker_kv_pages', 'state="held"') > 0;
      for (let i = 0; i < 200 && !busy(during); i++) during = await scrape(port);
      expect(during.value('vllm:num_requests_running')).toBe(1);
      expect(during.value('kvfleet_worker_kv_pages', 'state="held"')).toBeGreaterThan(0);
      expect(during.value('vllm:kv_cache_usage_perc')).toBeGreaterThan(0);
      expect(during.value('vllm:kv_cache_usage_perc')).toBeLessThanOrEqual(1);
      expect(during.value('kvfleet_worker_kv_pressure')).toBeGreaterThan(0);
      expect(during.value('kvfleet_worker_kv_pages', 'state="free"')).toBeLessThan(1000);
      await long;
      expect((await fetch(`http://127.0.0.1:${port}/nothing`)).status).toBe(404);
    } finally {
      await t.stop();
    }
    // the metrics port is closed with the worker
    await expect(fetch(`http://127.0.0.1:${port}/metrics`)).rejects.toThrow();
  });

  it('a busy --metrics-port fails the start naming the option', async () => {
    const port = await freePort();
    const first = await inProcessWorker(model.dir, { metricsPort: port, numPages: 64 });
    try {
      await expect(inProcessWorker(model.dir, { metricsPort: port, numPages: 64 }))
        .rejects.toThrow(/--metrics-port \(KVFLEET_METRICS_PORT\): cannot listen on 127\.0\.0\.1:\d+ .*0 turns metrics off/);
    } finally {
      await first.stop();
    }
  });
});
