// Patch semantics of the stand-in API server: JSON merge patch (RFC 7386), JSON patch (RFC 6902), a
// strategic merge patch that knows the merge keys operators touch, and a single-manager server-side apply.
// All functions are pure: they return a new value and never mutate their inputs.

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type JsonObject = { [k: string]: Json };

/** A patch that cannot be applied; the server answers 422 (JSON patch) or 400 (malformed patch). */
export class PatchError extends Error {
  readonly code: 400 | 422;
  constructor(code: 400 | 422, message: string) {
    super(message);
    this.code = code;
  }
}

export function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function clone<T>(v: T): T {
  return v === undefined ? v : structuredClone(v);
}

export function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  }
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a).filter((k) => a[k] !== undefined);
    const kb = Object.keys(b).filter((k) => b[k] !== undefined);
    return ka.length === kb.length && ka.every((k) => deepEqual(a[k], b[k]));
  }
  return false;
}

// ---------------------------------------------------------------------------------------------------------------
// JSON merge patch

export function mergePatch(target: Json | undefined, patch: Json): Json {
  if (!isObject(patch)) return clone(patch);
  const out: JsonObject = isObject(target) ? clone(target) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// JSON patch

interface JsonPatchOp { op: string; path: string; from?: string; value?: Json }

function pointer(path: string): string[] {
  if (path === '') return [];
  if (!path.startsWith('/')) throw new PatchError(422, `json patch: path "${path}" must start with "/"`);
  return path.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function parentOf(doc: Json, tokens: string[], path: string): Json {
  let cur: Json = doc;
  for (const t of tokens.slice(0, -1)) {
    if (Array.isArray(cur)) cur = cur[arrayIndex(cur, t, path, false)];
    else if (isObject(cur) && t in cur) cur = cur[t];
    else throw new PatchError(422, `json patch: path "${path}" does not exist`);
  }
  return cur;
}

function arrayIndex(arr: Json[], t: string, path: string, forAdd: boolean): number {
  if (forAdd && t === '-') return arr.length;
  if (!/^(0|[1-9][0-9]*)$/.test(t)) throw new PatchError(422, `json patch: "${t}" in "${path}" is not an array index`);
  const i = Number(t);
  if (i > arr.length || (!forAdd && i === arr.length)) {
    throw new PatchError(422, `json patch: index ${i} in "${path}" is out of range`);
  }
  return i;
}

function getAt(doc: Json, path: string): Json {
  let cur: Json = doc;
  for (const t of pointer(path)) {
    if (Array.isArray(cur)) cur = cur[arrayIndex(cur, t, path, false)];
    else if (isObject(cur) && t in cur) cur = cur[t];
    else throw new PatchError(422, `json patch: path "${path}" does not exist`);
  }
  return cur;
}

function removeAt(doc: Json, path: string): Json {
  const tokens = pointer(path);
  if (tokens.length === 0) throw new PatchError(422, 'json patch: cannot remove the whole document');
  const parent = parentOf(doc, tokens, path);
  const last = tokens[tokens.length - 1];
  if (Array.isArray(parent)) return parent.splice(arrayIndex(parent, last, path, false), 1)[0];
  if (isObject(parent) && last in parent) {
    const v = parent[last];
    delete parent[last];
    return v;
  }
  throw new PatchError(422, `json patch: path "${path}" does not exist`);
}

function addAt(doc: Json, path: string, value: Json, replace: boolean): Json {
  const tokens = pointer(path);
  if (tokens.length === 0) return clone(value);
  const parent = parentOf(doc, tokens, path);
  const last = tokens[tokens.length - 1];
  if (Array.isArray(parent)) {
    const i = arrayIndex(parent, last, path, !replace);
    parent.splice(i, replace ? 1 : 0, clone(value));
  } else if (isObject(parent)) {
    if (replace && !(last in parent)) throw new PatchError(422, `json patch: path "${path}" does not exist`);
    parent[last] = clone(value);
  } else {
    throw new PatchError(422, `json patch: parent of "${path}" is not an object or array`);
  }
  return doc;
}

export function jsonPatch(target: Json, ops: Json): Json {
  if (!Array.isArray(ops)) throw new PatchError(400, 'json patch: body must be a JSON array of operations');
  let doc = clone(target);
  for (const raw of ops) {
    if (!isObject(raw) || typeof raw.op !== 'string' || typeof raw.path !== 'string') {
      throw new PatchError(400, `json patch: malformed operation ${JSON.stringify(raw)}`);
    }
    const op = raw as unknown as JsonPatchOp;
    switch (op.op) {
      case 'add': doc = addAt(doc, op.path, op.value ?? null, false); break;
      case 'replace': doc = addAt(doc, op.path, op.value ?? null, true); break;
      case 'remove': removeAt(doc, op.path); break;
      case 'move': {
        if (op.from === undefined) throw new PatchError(400, 'json patch: move needs "from"');
        const v = removeAt(doc, op.from);
        doc = addAt(doc, op.path, v, false);
        break;
      }
      case 'copy': {
        if (op.from === undefined) throw new PatchError(400, 'json patch: copy needs "from"');
        doc = addAt(doc, op.path, getAt(doc, op.from), false);
        break;
      }
      case 'test':
        if (!deepEqual(getAt(doc, op.path), op.value ?? null)) {
          throw new PatchError(422, `json patch: test operation for path "${op.path}" failed`);
        }
        break;
      default: throw new PatchError(400, `json patch: unknown operation "${op.op}"`);
    }
  }
  return doc;
}

// ---------------------------------------------------------------------------------------------------------------
// Strategic merge patch

/** Merge keys of the built-in list fields operators patch (from the Kubernetes API's patchMergeKey tags). */
const MERGE_KEYS: Record<string, string[]> = {
  containers: ['name'], initContainers: ['name'], ephemeralContainers: ['name'], volumes: ['name'], env: ['name'],
  imagePullSecrets: ['name'], volumeMounts: ['mountPath'], conditions: ['type'], ownerReferences: ['uid'],
  ports: ['containerPort', 'port'], hostAliases: ['ip'], topologySpreadConstraints: ['topologyKey'],
};
/** Lists of scalars whose patchStrategy is merge (set union), rather than replace. */
const PRIMITIVE_MERGE = new Set(['finalizers']);

/** The key that identifies items of list `field`, or undefined when the list is atomic (replaced whole). */
export function mergeKeyOf(field: string, ...lists: Json[][]): string | undefined {
  const items = lists.flat();
  if (items.length === 0 || !items.every(isObject)) return undefined;
  for (const k of MERGE_KEYS[field] ?? []) {
    if (items.every((it) => isObject(it) && (it[k] !== undefined || it.$patch !== undefined))) return k;
  }
  // Not a known field: lists of objects that all carry `name` merge by name (what most Kubernetes lists do).
  if (items.every((it) => isObject(it) && (typeof it.name === 'string' || it.$patch !== undefined))) return 'name';
  return undefined;
}

export function strategicMergePatch(target: Json | undefined, patch: Json): Json {
  if (!isObject(patch)) return clone(patch);
  if (patch.$patch === 'replace') {
    const { $patch: _drop, ...rest } = patch;
    return clone(rest);
  }
  let out: JsonObject = isObject(target) ? clone(target) : {};
  if (Array.isArray(patch.$retainKeys)) {
    const keep = new Set(patch.$retainKeys.map(String));
    out = Object.fromEntries(Object.entries(out).filter(([k]) => keep.has(k)));
  }
  for (const [k, v] of Object.entries(patch)) {
    if (k === '$patch' || k === '$retainKeys' || k.startsWith('$setElementOrder/')) continue;
    if (k.startsWith('$deleteFromPrimitiveList/')) {
      const field = k.slice('$deleteFromPrimitiveList/'.length);
      const drop = new Set((Array.isArray(v) ? v : []).map((x) => JSON.stringify(x)));
      const cur = out[field];
      if (Array.isArray(cur)) out[field] = cur.filter((x) => !drop.has(JSON.stringify(x)));
      continue;
    }
    if (v === null) delete out[k];
    else if (isObject(v) && v.$patch === 'delete') delete out[k];
    else if (Array.isArray(v)) out[k] = mergeList(k, out[k], v);
    else if (isObject(v)) out[k] = strategicMergePatch(out[k], v);
    else out[k] = v;
  }
  return out;
}

function mergeList(field: string, current: Json | undefined, patch: Json[]): Json[] {
  const cur = Array.isArray(current) ? current : [];
  if (patch.some((it) => isObject(it) && it.$patch === 'replace')) {
    return clone(patch.filter((it) => !(isObject(it) && it.$patch === 'replace')));
  }
  if (PRIMITIVE_MERGE.has(field) && patch.every((x) => !isObject(x))) {
    const seen = new Set(cur.map((x) => JSON.stringify(x)));
    return [...clone(cur), ...patch.filter((x) => !seen.has(JSON.stringify(x)))];
  }
  const key = mergeKeyOf(field, cur, patch);
  if (key === undefined) return clone(patch);
  const out = clone(cur) as JsonObject[];
  for (const item of patch as JsonObject[]) {
    const idx = out.findIndex((o) => deepEqual(o[key], item[key]));
    if (item.$patch === 'delete') {
      if (idx >= 0) out.splice(idx, 1);
    } else if (idx >= 0) {
      out[idx] = strategicMergePatch(out[idx], item) as JsonObject;
    } else {
      out.push(strategicMergePatch(undefined, item) as JsonObject);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Server-side apply, one field manager

/**
 * Merges an applied configuration into the live object the way server-side apply does for a single manager:
 * fields in `applied` win; fields the manager applied last time (`previous`) but left out now are removed;
 * everything else in `live` (written by other clients, defaults, status) is kept. Keyed lists merge item by
 * item; other lists are atomic and replaced whole.
 */
export function applyMerge(live: Json | undefined, applied: Json, previous: Json | undefined): Json {
  if (isObject(applied)) {
    const out: JsonObject = isObject(live) ? clone(live) : {};
    const prev = isObject(previous) ? previous : {};
    for (const [k, v] of Object.entries(applied)) {
      if (v === null) { delete out[k]; continue; }
      out[k] = Array.isArray(v)
        ? applyList(k, out[k], v, prev[k])
        : applyMerge(out[k], v, prev[k]);
    }
    for (const k of Object.keys(prev)) if (!(k in applied)) delete out[k];
    return out;
  }
  return clone(applied);
}

function applyList(field: string, live: Json | undefined, applied: Json[], previous: Json | undefined): Json[] {
  const cur = Array.isArray(live) ? live : [];
  const prev = Array.isArray(previous) ? previous : [];
  if (PRIMITIVE_MERGE.has(field) && applied.every((x) => !isObject(x))) {
    const appliedSet = new Set(applied.map((x) => JSON.stringify(x)));
    const dropped = new Set(prev.map((x) => JSON.stringify(x)).filter((x) => !appliedSet.has(x)));
    const kept = cur.filter((x) => !dropped.has(JSON.stringify(x)));
    const seen = new Set(kept.map((x) => JSON.stringify(x)));
    return [...clone(kept), ...applied.filter((x) => !seen.has(JSON.stringify(x)))];
  }
  const key = mergeKeyOf(field, cur, applied);
  if (key === undefined) return clone(applied);
  const appliedKeys = applied.map((it) => JSON.stringify((it as JsonObject)[key]));
  const droppedKeys = new Set((prev as JsonObject[]).map((it) => JSON.stringify(it[key]))
    .filter((k) => !appliedKeys.includes(k)));
  const out = (clone(cur) as JsonObject[]).filter((it) => !droppedKeys.has(JSON.stringify(it[key])));
  for (const item of applied as JsonObject[]) {
    const idx = out.findIndex((o) => deepEqual(o[key], item[key]));
    const before = (prev as JsonObject[]).find((o) => deepEqual(o[key], item[key]));
    if (idx >= 0) out[idx] = applyMerge(out[idx], item, before) as JsonObject;
    else out.push(applyMerge(undefined, item, undefined) as JsonObject);
  }
  return out;
}
