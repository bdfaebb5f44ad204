// Server-side apply with read-before-write: an object is applied (PATCH application/apply-patch+yaml, our field
// manager, force) only when what is stored differs from what we would apply, so a reconcile of an unchanged world
// makes no write at all (the call record shows only reads).
//
// "Differs" is decided in two ways, both needed:
// - the stored object must contain everything we apply (`contains`: the server adds defaults, never removes what we
//   set), which catches drift (someone edited or deleted a field we own);
// - the stored object's kvfleet.io/applied-hash annotation must equal the hash of what we would apply, which
//   catches fields we stopped applying (a subset test cannot see those; server-side apply removes them).
import { createHash } from 'node:crypto';
import { KubernetesObjectApi, PatchStrategy, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import { FIELD_MANAGER, type ChildObject } from './controllers/fleet-objects.ts';
import { isNotFound } from './runtime/kube.ts';

export const APPLIED_HASH_ANNOTATION = 'kvfleet.io/applied-hash';

/** True when `live` holds every field of `want` with the same value (objects: recursively; arrays: same length,
 *  element by element; anything else: equal). */
export function contains(live: unknown, want: unknown): boolean {
  if (Array.isArray(want)) {
    return Array.isArray(live) && live.length === want.length && want.every((w, i) => contains(live[i], w));
  }
  if (want !== null && typeof want === 'object') {
    if (live === null || typeof live !== 'object' || Array.isArray(live)) return false;
    return Object.entries(want).every(([k, v]) => v === undefined || contains((live as Record<string, unknown>)[k], v));
  }
  return live === want;
}

function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    return `{${Object.keys(v).sort().filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${stableJson((v as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The object as applied: `obj` with the hash of its own content in the applied-hash annotation. */
export function withAppliedHash(obj: ChildObject): ChildObject {
  const h = createHash('sha256').update(stableJson(obj)).digest('hex').slice(0, 20);
  return { ...obj, metadata: { ...obj.metadata, annotations: { ...obj.metadata.annotations, [APPLIED_HASH_ANNOTATION]: h } } };
}

/** A child's name is taken by an object this owner does not control. */
export class ChildConflictError extends Error {
  override name = 'ChildConflictError';
}

export type ApplyResult = { changed: boolean; object: KubernetesObject };

export class Applier {
  private readonly api: KubernetesObjectApi;

  constructor(kc: KubeConfig) { this.api = KubernetesObjectApi.makeApiClient(kc); }

  /** The stored object, or undefined when there is none. */
  async read(apiVersion: string, kind: string, namespace: string, name: string): Promise<KubernetesObject | undefined> {
    try {
      return await this.api.read({ apiVersion, kind, metadata: { name, namespace } });
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /**
   * Applies `obj` unless the stored version already matches it; returns the stored (or new) object. An object that
   * names a controller (ownerReferences with controller: true) is never applied over a stored object of the same
   * name that another controller, or nobody, controls: that is someone else's object (the namespace's `default`
   * ServiceAccount, a user's ConfigMap), and server-side apply with force would take it over. ChildConflictError.
   */
  async apply(obj: ChildObject): Promise<ApplyResult> {
    const want = withAppliedHash(obj);
    const live = await this.read(obj.apiVersion, obj.kind, obj.metadata.namespace, obj.metadata.name);
    const owner = obj.metadata.ownerReferences?.find((r) => r.controller);
    if (live && owner && !live.metadata?.ownerReferences?.some((r) => r.controller && r.uid === owner.uid)) {
      const other = live.metadata?.ownerReferences?.find((r) => r.controller);
      throw new ChildConflictError(`${obj.kind} ${obj.metadata.namespace}/${obj.metadata.name} already exists and is controlled by `
        + `${other ? `${other.kind} ${other.name}` : 'nothing'}, not by ${owner.kind} ${owner.name}: the operator leaves it alone; `
        + `delete or rename it, or give the ${owner.kind} another name`);
    }
    if (live && contains(live, want)) return { changed: false, object: live };
    const object = await this.api.patch(want as KubernetesObject, undefined, undefined, FIELD_MANAGER, true, PatchStrategy.ServerSideApply);
    return { changed: true, object };
  }

  async delete(apiVersion: string, kind: string, namespace: string, name: string): Promise<void> {
    try {
      await this.api.delete({ apiVersion, kind, metadata: { name, namespace } });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
}
