// Least-privilege RBAC check: the chart's rules (charts/kvfleet/files/rbac.json, rendered into a ClusterRole and a
// Role in the release namespace) against a record of the calls the operator made (tests/kube/apiserver.ts calls()).
// A call the rules don't grant is `missing` (the operator would get 403 in a cluster); a granted verb no call used is
// `unused` (more privilege than needed). Both must be empty.
import type { CallRecord, PolicyRule } from '../kube/apiserver.ts';
import type { K8sObject } from './helm.ts';

export interface RbacComparison {
  /** 'verb group/resource[/sub] [in ns]' of calls no rule grants */
  missing: string[];
  /** 'verb group/resource[/sub]' granted by a rule but never called */
  unused: string[];
  /** rules the operator must never have: wildcards, escalate/bind/impersonate */
  forbidden: string[];
}

export interface ChartRbac { clusterRules: PolicyRule[]; namespaceRules: PolicyRule[]; namespace: string }

const res = (c: { resource: string; subresource: string }) => (c.subresource ? `${c.resource}/${c.subresource}` : c.resource);
const key = (verb: string, group: string, resource: string) => `${verb} ${group || 'core'}/${resource}`;

function grants(rules: PolicyRule[]): Set<string> {
  const out = new Set<string>();
  for (const r of rules) for (const g of r.apiGroups) for (const rs of r.resources) for (const v of r.verbs) out.add(key(v, g, rs));
  return out;
}

/** Compares a call record with the chart's rules; namespace rules grant only calls in `rbac.namespace`. */
export function compareRbac(calls: CallRecord[], rbac: ChartRbac): RbacComparison {
  const cluster = grants(rbac.clusterRules);
  const local = grants(rbac.namespaceRules);
  const missing = new Set<string>();
  const used = new Set<string>();
  for (const c of calls) {
    const k = key(c.verb, c.group, res(c));
    used.add(k);
    if (cluster.has(k)) continue;
    if (local.has(k) && c.namespace === rbac.namespace) continue;
    missing.add(c.namespace ? `${k} in ${c.namespace}` : k);
  }
  const unused = [...new Set([...cluster, ...local])].filter((k) => !used.has(k));
  const forbidden: string[] = [];
  for (const r of [...rbac.clusterRules, ...rbac.namespaceRules]) {
    for (const f of ['apiGroups', 'resources', 'verbs'] as const) if (r[f].includes('*')) forbidden.push(`wildcard in ${f}: ${JSON.stringify(r)}`);
    for (const v of ['escalate', 'bind', 'impersonate']) if (r.verbs.includes(v)) forbidden.push(`verb ${v}: ${JSON.stringify(r)}`);
  }
  return { missing: [...missing].sort(), unused: unused.sort(), forbidden };
}

/** The operator's rules as rendered by the chart: its ClusterRole and its Role (and that Role's namespace). */
export function chartRbac(objs: K8sObject[]): ChartRbac {
  const one = (kind: string) => {
    const found = objs.filter((o) => o.kind === kind && o.metadata.labels?.['app.kubernetes.io/component'] === 'operator');
    if (found.length !== 1) throw new Error(`expected one operator ${kind} in the rendered chart, found ${found.length}`);
    return found[0];
  };
  const role = one('Role');
  return {
    clusterRules: one('ClusterRole').rules as PolicyRule[],
    namespaceRules: role.rules as PolicyRule[],
    namespace: role.metadata.namespace ?? '',
  };
}
