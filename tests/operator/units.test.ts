// The operator's pure parts: the KVBudget → ledger BudgetSpec mapping with the engine's re-validation, conditions,
// and the work queue's de-duplication, per-key exclusion and backoff.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setCondition } from '../../operator/api/conditions.ts';
import { OperatorConfigError, parseOperatorConfig } from '../../operator/config.ts';
import { loadKubeConfig } from '../../operator/runtime/kube.ts';
import type { KVBudgetSpec } from '../../operator/api/v1alpha1.ts';
import { InvalidBudgetError, resolveKVBudget, toLedgerBudget } from '../../operator/budget.ts';
import { WorkQueue } from '../../operator/runtime/queue.ts';
import { validateBudget } from '../../worker/compress-native.ts';
import { AddonMissingError } from '../../worker/engine.ts';

const spec = (s: Partial<KVBudgetSpec>): KVBudgetSpec => ({ method: 'AdaSnapKV', ...s } as KVBudgetSpec);

describe('KVBudget to ledger BudgetSpec', () => {
  it('maps every enum to its proto name and fills schema defaults', () => {
    expect(toLedgerBudget(spec({ method: 'AdaPyramidKV', tokensPerHead: 100, pooling: 'Avg', gqaReduce: 'Max' }))).toEqual({
      method: 'ADA_PYRAMIDKV', tokens_per_head: 100, window: 32, pool_kernel: 7, pooling: 'AVG', gqa_reduce: 'MAXIMUM',
      floor_alpha: 0.2, pyramid_beta: 20, decode_max_tokens_per_head: 0 });
    for (const [m, p] of [['Full', 'FULL'], ['SnapKV', 'SNAPKV'], ['PyramidKV', 'PYRAMIDKV'], ['AdaSnapKV', 'ADA_SNAPKV']] as const) {
      expect(toLedgerBudget(spec({ method: m, keepRatio: 0.5 })).method).toBe(p);
    }
  });

  it('re-validates with the engine and names the spec field in the error', () => {
    expect(resolveKVBudget(spec({ tokensPerHead: 64, window: 16 }), validateBudget).tokens_per_head).toBe(64);
    const bad = () => resolveKVBudget(spec({ tokensPerHead: 64, decodeMaxTokensPerHead: 10 }), validateBudget);
    expect(bad).toThrow(InvalidBudgetError);
    expect(bad).toThrow(/^spec\.decodeMaxTokensPerHead must be 0 \(no cap\) or >= window \+ 1 = 33, got 10$/);
    // the engine alone would read "neither" as its built-in 1024; the ledger's rule (routers) refuses it
    expect(() => resolveKVBudget(spec({}), validateBudget)).toThrow(
      /^spec\.tokensPerHead\/spec\.keepRatio: exactly one of tokensPerHead and keepRatio must be set for method ADA_SNAPKV$/);
  });

  it('lets errors that are not about the budget through (no addon is a failure to retry, not a verdict)', () => {
    const missing = () => { throw new AddonMissingError('the engine addon is not built'); };
    expect(() => resolveKVBudget(spec({ tokensPerHead: 64 }), missing)).toThrow(AddonMissingError);
  });
});

describe('setCondition', () => {
  it('keeps lastTransitionTime while the status stays, and moves it when the status flips', () => {
    const t1 = new Date('2030-01-01T00:00:00Z');
    const a = setCondition([], { type: 'Accepted', status: 'True', reason: 'Valid', message: 'ok', observedGeneration: 1 }, t1);
    const b = setCondition(a, { type: 'Accepted', status: 'True', reason: 'Valid', message: 'ok', observedGeneration: 1 }, new Date());
    expect(b).toEqual(a);
    const c = setCondition(b, { type: 'Accepted', status: 'False', reason: 'InvalidSpec', message: 'no', observedGeneration: 2 }, new Date('2030-01-02T00:00:00Z'));
    expect(c).toEqual([{ type: 'Accepted', status: 'False', reason: 'InvalidSpec', message: 'no', observedGeneration: 2, lastTransitionTime: '2030-01-02T00:00:00Z' }]);
  });
});

describe('WorkQueue', () => {
  it('holds a waiting key once, never runs one key twice at once, and reruns a key added during its run', async () => {
    const q = new WorkQueue();
    const runs: string[] = [];
    let inFlight = 0;
    let maxSameKey = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    const done = q.run(async (key) => {
      inFlight++;
      maxSameKey = Math.max(maxSameKey, inFlight);
      runs.push(key);
      if (runs.length === 1) await gate;
      inFlight--;
    }, 4, () => {});
    q.add('ns/a');
    await new Promise((r) => setTimeout(r, 10));
    q.add('ns/a'); // in flight: marked dirty
    q.add('ns/a'); // still one rerun
    release();
    await new Promise((r) => setTimeout(r, 20));
    q.add('ns/b'); q.add('ns/b');
    await new Promise((r) => setTimeout(r, 20));
    q.shutdown();
    await done;
    expect(runs).toEqual(['ns/a', 'ns/a', 'ns/b']);
    expect(maxSameKey).toBe(1);
  });

  it('retries a failing key with doubling delays and resets them after a success', async () => {
    const q = new WorkQueue({ minRetryMs: 20, maxRetryMs: 1000 });
    const at: number[] = [];
    const t0 = Date.now();
    const done = q.run(async () => {
      at.push(Date.now() - t0);
      if (at.length < 4) throw new Error('transient');
    }, 1, () => {});
    q.add('ns/x');
    await new Promise((r) => setTimeout(r, 800));
    q.shutdown();
    await done;
    expect(at).toHaveLength(4);
    const gaps = at.slice(1).map((t, i) => t - at[i]);
    expect(gaps[0]).toBeGreaterThanOrEqual(19);
    expect(gaps[1]).toBeGreaterThanOrEqual(39);
    expect(gaps[2]).toBeGreaterThanOrEqual(79);
    expect(q.addRateLimited('ns/x')).toBe(20); // the success reset the key's failures
  });
});

describe('operator options', () => {
  it('fills defaults and picks the kubeconfig source: flag, $KUBECONFIG, ~/.kube/config, then in-cluster', () => {
    const home = mkdtempSync(path.join(os.tmpdir(), 'kvfleet-home-'));
    try {
      expect(() => parseOperatorConfig({}, { HOME: home })).toThrow(/no Kubernetes cluster configured/);
      expect(parseOperatorConfig({}, { HOME: home, KUBERNETES_SERVICE_HOST: '10.0.0.1' })).toMatchObject({
        kube: { kind: 'in-cluster' }, metricsPort: 9402, leaderElect: false, logLevel: 'info', concurrency: 2, resyncSeconds: 300 });
      mkdirSync(path.join(home, '.kube'));
      writeFileSync(path.join(home, '.kube', 'config'), '{}');
      expect(parseOperatorConfig({}, { HOME: home, KUBERNETES_SERVICE_HOST: '10.0.0.1' }).kube)
        .toEqual({ kind: 'file', path: path.join(home, '.kube', 'config') });
      expect(parseOperatorConfig({}, { HOME: home, KUBECONFIG: '/x/a:/x/b' }).kube).toEqual({ kind: 'env' });
      expect(() => parseOperatorConfig({ kubeconfig: path.join(home, 'nope') }, {})).toThrow(/--kubeconfig .*nope: no such file/);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it('--allowed-host-paths: absolute directories, comma-separated, trailing slashes dropped; no relative path or ..', () => {
    const env = { KUBERNETES_SERVICE_HOST: '10.0.0.1' };
    expect(parseOperatorConfig({}, env).allowedHostPaths).toBeUndefined();
    expect(parseOperatorConfig({ allowedHostPaths: '/srv/models/, /data' }, env).allowedHostPaths).toEqual(['/srv/models', '/data']);
    expect(() => parseOperatorConfig({ allowedHostPaths: 'models' }, env)).toThrow("--allowed-host-paths: 'models' is not an absolute directory");
    expect(() => parseOperatorConfig({ allowedHostPaths: '/srv/../etc' }, env)).toThrow(/--allowed-host-paths: '\/srv\/..\/etc'/);
  });

  it('a kubeconfig that is not valid YAML is named in the error', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'kvfleet-kc-'));
    try {
      const file = path.join(dir, 'kubeconfig');
      writeFileSync(file, 'apiVersion: v1\nclusters:\n- cluster:\n  server: x\n bad');
      expect(() => loadKubeConfig({ kind: 'file', path: file })).toThrow(new RegExp(`^kubeconfig ${file}: `));
    } finally { rmSync(dir, { recursive: true, force: true }); }
  });

  it('names the flag in errors', () => {
    const env = { KUBERNETES_SERVICE_HOST: '10.0.0.1' };
    expect(() => parseOperatorConfig({ metricsPort: 'abc' }, env)).toThrow(OperatorConfigError);
    expect(() => parseOperatorConfig({ metricsPort: 70000 }, env)).toThrow('--metrics-port must be 0..65535');
    expect(() => parseOperatorConfig({ namespace: 'Bad_NS' }, env)).toThrow('--namespace must be a Kubernetes namespace name');
    expect(() => parseOperatorConfig({ concurrency: 0 }, env)).toThrow('--concurrency must be >= 1');
  });
});
