// An in-process Kubernetes API server for tests: real HTTP on a free loopback port, speaking the JSON wire
// protocol @kubernetes/client-node uses (discovery, CRUD, the four patch types, status/scale subresources,
// watches with bookmarks and 410 Gone, CRD admission with OpenAPI schema + CEL, owner-reference garbage
// collection, finalizers) and recording every (verb, resource) a client called so RBAC can be derived.
//
// Invariants:
// - `rv` is the one global resourceVersion counter; every stored change takes the next value, and the event
//   log holds changes in rv order. A watch from resourceVersion X is served iff X >= `historyStart` (every
//   change after `historyStart` is still in the log); older gets an ERROR event with a 410 Status.
// - Objects are stored as plain JSON at their group's storage; a CRD's other served versions see the same
//   objects with apiVersion rewritten (conversion strategy None).
// - A write that changes nothing (a no-op update or patch) does not bump resourceVersion and emits no event,
//   as on a real server; reconcilers rely on this to settle.

import http from 'node:http';
import type net from 'node:net';
import { randomUUID } from 'node:crypto';
import YAML from 'yaml';
import {
  applyMerge, clone, deepEqual, isObject, jsonPatch, mergePatch, PatchError, strategicMergePatch,
  type Json, type JsonObject,
} from './patch.ts';
import { labelSelectorString, parseFieldSelector, parseLabelSelector, SelectorError, type Matcher } from './selectors.ts';
import { compileRules, pruneAndDefault, validateCel, validateSchema, type Cause } from './schema.ts';
import {
  ALL_VERBS, apiVersionOf, BUILTINS, customResource, qualified, type CrdSpec, type ResourceInfo,
} from './resources.ts';

export interface ApiServerOptions {
  /** Bearer token every request must carry; null accepts anonymous requests. Default 'kvfleet-test-token'. */
  token?: string | null;
  /** How many change events watches can resume from before 410 Gone. Default 1000. */
  eventWindow?: number;
  /** Interval of BOOKMARK events on watches that asked for them (allowWatchBookmarks). Default 10 s. */
  bookmarkIntervalMs?: number;
  /** Port to listen on (127.0.0.1); 0 or absent lets the OS choose a free one. */
  port?: number;
}

/** One request a client made, named the way RBAC names it. */
export interface CallRecord {
  verb: string;         // get list watch create update patch delete deletecollection
  group: string;        // '' for core
  resource: string;     // plural, e.g. 'deployments'
  subresource: string;  // '' | 'status' | 'scale' | 'finalizers' (implied by blockOwnerDeletion)
  namespace: string;    // '' for cluster-scoped or all-namespace requests
  name: string;         // '' for collection requests
  code: number;         // HTTP status answered
  /** not a request: a permission the request implied (see recordOwnerFinalizers) */
  implied?: true;
}

export interface PolicyRule { apiGroups: string[]; resources: string[]; verbs: string[] }

type WatchType = 'ADDED' | 'MODIFIED' | 'DELETED';
interface ChangeEvent { rv: number; rkey: string; type: WatchType; obj: JsonObject; prev?: JsonObject }

interface Watcher {
  info: ResourceInfo;
  namespace?: string;
  labels: Matcher<Record<string, string> | undefined>;
  fields: Matcher<Record<string, string>>;
  bookmarks: boolean;
  res: http.ServerResponse;
  timers: NodeJS.Timeout[];
}

/** An API error, answered as a metav1.Status. */
export class ApiError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly details: JsonObject | undefined;
  constructor(code: number, reason: string, message: string, details?: JsonObject) {
    super(message);
    this.code = code;
    this.reason = reason;
    this.details = details;
  }
  status(): JsonObject {
    const s: JsonObject = { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: this.message,
      reason: this.reason, code: this.code };
    if (this.details) s.details = this.details;
    return s;
  }
}

const now = () => new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
const meta = (o: JsonObject) => (isObject(o.metadata) ? o.metadata : (o.metadata = {})) as JsonObject;
const str = (v: Json | undefined) => (typeof v === 'string' ? v : '');
const objKey = (ns: string, name: string) => `${ns}/${name}`;
const rkeyOf = (r: { group: string; plural: string }) => `${r.group}/${r.plural}`;
const CRD_KEY = 'apiextensions.k8s.io/customresourcedefinitions';
const NS_KEY = '/namespaces';
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

function ownerRefs(obj: JsonObject | undefined): JsonObject[] {
  const refs = obj && isObject(obj.metadata) ? (obj.metadata as JsonObject).ownerReferences : undefined;
  return Array.isArray(refs) ? refs.filter(isObject) : [];
}

function notFound(info: ResourceInfo, name: string): ApiError {
  return new ApiError(404, 'NotFound', `${qualified(info)} "${name}" not found`, { name, group: info.group, kind: info.plural });
}
function badRequest(message: string): ApiError { return new ApiError(400, 'BadRequest', message); }
function invalid(info: ResourceInfo, name: string, causes: Cause[]): ApiError {
  const list = causes.map((c) => `${c.field}: ${c.message}`);
  const what = info.group === '' ? info.kind : `${info.kind}.${info.group}`;
  return new ApiError(422, 'Invalid', `${what} "${name}" is invalid: ${list.length === 1 ? list[0] : `[${list.join(', ')}]`}`,
    { name, group: info.group, kind: info.kind, causes: causes as unknown as Json });
}
function conflict(info: ResourceInfo, name: string, why: string): ApiError {
  return new ApiError(409, 'Conflict', `Operation cannot be fulfilled on ${qualified(info)} "${name}": ${why}`,
    { name, group: info.group, kind: info.plural });
}

function getPath(o: Json | undefined, path: string): Json | undefined {
  let cur: Json | undefined = o;
  for (const p of path.replace(/^\./, '').split('.')) cur = isObject(cur) ? cur[p] : undefined;
  return cur;
}
function setPath(o: JsonObject, path: string, v: Json): void {
  const parts = path.replace(/^\./, '').split('.');
  let cur = o;
  for (const p of parts.slice(0, -1)) cur = (isObject(cur[p]) ? cur[p] : (cur[p] = {})) as JsonObject;
  cur[parts[parts.length - 1]] = v;
}

export class KubeApiServer {
  private server: http.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private readonly opts: Required<Omit<ApiServerOptions, 'token' | 'port'>> & { token: string | null };
  private portNo = 0;
  private rv = 0;
  private historyStart = 0;
  private events: ChangeEvent[] = [];
  private readonly store = new Map<string, Map<string, JsonObject>>();
  /** Last configuration each field manager applied, per object: what server-side apply may remove next time. */
  private readonly applied = new Map<string, Map<string, Json>>();
  private readonly watchers = new Set<Watcher>();
  private callLog: CallRecord[] = [];
  private gcPending = false;
  private nextIp = 10;

  private constructor(opts: ApiServerOptions) {
    this.opts = {
      token: opts.token === undefined ? 'kvfleet-test-token' : opts.token,
      eventWindow: opts.eventWindow ?? 1000,
      bookmarkIntervalMs: opts.bookmarkIntervalMs ?? 10_000,
    };
    for (const ns of ['default', 'kube-system', 'kube-public', 'kube-node-lease']) this.seedNamespace(ns);
  }

  /** Starts a server on 127.0.0.1 (a free port unless `port` is given). */
  static async start(opts: ApiServerOptions = {}): Promise<KubeApiServer> {
    const s = new KubeApiServer(opts);
    await s.listen(opts.port ?? 0);
    return s;
  }

  get port(): number { return this.portNo; }
  get url(): string { return `http://127.0.0.1:${this.portNo}`; }
  get token(): string | null { return this.opts.token; }
  /** The newest resourceVersion handed out. */
  get resourceVersion(): string { return String(this.rv); }

  private async listen(port: number): Promise<void> {
    const server = http.createServer((req, res) => { void this.handle(req, res); });
    server.on('connection', (s) => { this.sockets.add(s); s.on('close', () => this.sockets.delete(s)); });
    for (let attempt = 0; ; attempt++) {
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(port, '127.0.0.1', () => { server.off('error', reject); resolve(); });
        });
        break;
      } catch (e) {
        // note: a port given back by stop() may linger a moment in the kernel; only then is retrying right
        if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE' || port === 0 || attempt >= 50) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const addr = server.address();
    if (addr === null || typeof addr === 'string') throw new Error('kube apiserver: no TCP address after listen');
    this.portNo = addr.port;
    this.server = server;
  }

  /** Stops listening and drops every connection (watches end as they would when an API server dies). */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    for (const w of this.watchers) this.closeWatch(w);
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  /** Listens again on the port it had, after stop(); the state is as stop() left it. */
  async resume(): Promise<void> {
    if (this.server) return;
    await this.listen(this.portNo);
  }

  /**
   * Stops and starts again on the same port. keepState=false starts from an empty cluster (default namespaces
   * only); resourceVersions keep counting up, and every earlier one is too old to watch from (410), so
   * informers relist and see the objects vanish.
   */
  async restart(opts: { keepState?: boolean } = {}): Promise<void> {
    const port = this.portNo;
    await this.stop();
    if (opts.keepState === false) {
      this.store.clear();
      this.applied.clear();
      this.events = [];
      // every resourceVersion handed out so far becomes too old; the seeding below moves rv past historyStart
      this.historyStart = this.rv + 1;
      for (const ns of ['default', 'kube-system', 'kube-public', 'kube-node-lease']) this.seedNamespace(ns);
    }
    await this.listen(port);
  }

  /** Drops the watch history: any watch resuming from a resourceVersion before now gets 410 Gone. */
  compact(): void {
    this.events = [];
    this.historyStart = this.rv;
  }

  /** Sends a BOOKMARK now on every watch that allows them. */
  bookmark(): void {
    for (const w of this.watchers) if (w.bookmarks) this.sendBookmark(w);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Call record

  calls(): CallRecord[] { return this.callLog.map((c) => ({ ...c })); }
  clearCalls(): void { this.callLog = []; }

  /** The calls folded into RBAC rules: one rule per (group, resource[/subresource]) with the verbs used. */
  rbacRules(): PolicyRule[] {
    const by = new Map<string, { group: string; resource: string; verbs: Set<string> }>();
    for (const c of this.callLog) {
      const resource = c.subresource ? `${c.resource}/${c.subresource}` : c.resource;
      const k = `${c.group}|${resource}`;
      const e = by.get(k) ?? { group: c.group, resource, verbs: new Set<string>() };
      e.verbs.add(c.verb);
      by.set(k, e);
    }
    return [...by.values()].sort((a, b) => `${a.group}|${a.resource}`.localeCompare(`${b.group}|${b.resource}`))
      .map((e) => ({ apiGroups: [e.group], resources: [e.resource], verbs: [...e.verbs].sort() }));
  }

  // -------------------------------------------------------------------------------------------------------------
  // Direct access for tests (what controllers and kubelets would do)

  /** A stored object, or undefined. `group` '' is core; `plural` as in the URL. */
  object(group: string, plural: string, namespace: string, name: string): JsonObject | undefined {
    return clone(this.store.get(`${group}/${plural}`)?.get(objKey(namespace, name)));
  }

  /** Every stored object of a resource (optionally one namespace). */
  objects(group: string, plural: string, namespace?: string): JsonObject[] {
    return [...(this.store.get(`${group}/${plural}`)?.values() ?? [])]
      .filter((o) => namespace === undefined || meta(o).namespace === namespace).map((o) => clone(o));
  }

  /**
   * Creates or replaces an object directly (admission runs; no call is recorded), as a component inside the
   * cluster would; works while the server is stopped. Returns the stored object.
   */
  put(obj: JsonObject): JsonObject {
    const [group, version] = str(obj.apiVersion).includes('/') ? str(obj.apiVersion).split('/') : ['', str(obj.apiVersion)];
    const info = [...(this.served().get(group)?.get(version) ?? [])].find((r) => r.kind === obj.kind);
    if (!info) throw new Error(`kube apiserver: put of unknown kind ${String(obj.apiVersion)} ${String(obj.kind)}`);
    const body = clone(obj);
    const m = meta(body);
    const ns = info.namespaced ? str(m.namespace) || 'default' : '';
    this.checkNamespace(info, body, ns);
    const old = this.bucket(info).get(objKey(ns, str(m.name)));
    if (!old) return this.commit(info, this.prepareCreate(info, body, new URLSearchParams()).obj, 'ADDED');
    return this.write(info, old, this.prepareUpdate(info, old, body, '', new URLSearchParams()).obj);
  }

  /** Replaces an object's status as a controller would through /status (bumps resourceVersion, emits MODIFIED). */
  setStatus(group: string, plural: string, namespace: string, name: string, status: JsonObject): JsonObject {
    const info = this.builtinOrCustom(group, plural);
    const old = this.store.get(rkeyOf(info))?.get(objKey(namespace, name));
    if (!old) throw notFound(info, name);
    const next = clone(old);
    next.status = clone(status);
    return this.write(info, old, next);
  }

  /**
   * What the Deployment controller and kubelets would report once all replicas run: replicas, ready, available and
   * updated replicas equal spec.replicas, observedGeneration = generation, condition Available. `override` wins.
   */
  setDeploymentStatus(namespace: string, name: string, override: JsonObject = {}): JsonObject {
    const d = this.store.get('apps/deployments')?.get(objKey(namespace, name));
    if (!d) throw notFound(BUILTINS.find((b) => b.plural === 'deployments')!, name);
    const spec = isObject(d.spec) ? d.spec : {};
    const n = typeof spec.replicas === 'number' ? spec.replicas : 1;
    const ready = typeof override.readyReplicas === 'number' ? override.readyReplicas : n;
    const status: JsonObject = {
      observedGeneration: meta(d).generation ?? 1, replicas: n, readyReplicas: ready, availableReplicas: ready,
      updatedReplicas: n,
      conditions: [{ type: 'Available', status: ready >= n ? 'True' : 'False',
        reason: ready >= n ? 'MinimumReplicasAvailable' : 'MinimumReplicasUnavailable', lastUpdateTime: now(), lastTransitionTime: now() }],
      ...override,
    };
    return this.setStatus('apps', 'deployments', namespace, name, status);
  }

  private builtinOrCustom(group: string, plural: string): ResourceInfo {
    const b = BUILTINS.find((r) => r.group === group && r.plural === plural);
    if (b) return b;
    for (const crd of this.crds()) {
      const spec = crd.spec as unknown as CrdSpec;
      if (spec.group === group && spec.names.plural === plural) {
        const v = spec.versions.find((x) => x.storage) ?? spec.versions[0];
        return customResource(str(meta(crd).name), spec, v);
      }
    }
    throw new Error(`kube apiserver: no resource ${plural}.${group}`);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Resource table

  private crds(): JsonObject[] { return [...(this.store.get(CRD_KEY)?.values() ?? [])]; }

  private resolve(group: string, version: string, plural: string): ResourceInfo | undefined {
    const b = BUILTINS.find((r) => r.group === group && r.version === version && r.plural === plural);
    if (b) return b;
    for (const crd of this.crds()) {
      const spec = crd.spec as unknown as CrdSpec;
      if (spec.group !== group || spec.names.plural !== plural) continue;
      const v = spec.versions.find((x) => x.name === version && x.served);
      if (v) return customResource(str(meta(crd).name), spec, v);
    }
    return undefined;
  }

  /** Every served (group → versions, preferred first) and the resources of each group/version. */
  private served(): Map<string, Map<string, ResourceInfo[]>> {
    const groups = new Map<string, Map<string, ResourceInfo[]>>();
    const add = (r: ResourceInfo) => {
      const g = groups.get(r.group) ?? new Map<string, ResourceInfo[]>();
      groups.set(r.group, g);
      g.set(r.version, [...(g.get(r.version) ?? []), r]);
    };
    BUILTINS.forEach(add);
    for (const crd of this.crds()) {
      const spec = crd.spec as unknown as CrdSpec;
      const versions = [...spec.versions].sort((a, b) => Number(b.storage) - Number(a.storage));
      for (const v of versions) if (v.served) add(customResource(str(meta(crd).name), spec, v));
    }
    return groups;
  }

  private resourceList(group: string, version: string): JsonObject | undefined {
    const rs = this.served().get(group)?.get(version);
    if (!rs) return undefined;
    const resources: JsonObject[] = [];
    for (const r of rs) {
      const base = { singularName: r.singular, namespaced: r.namespaced, kind: r.kind };
      resources.push({ name: r.plural, ...base, verbs: ALL_VERBS, ...(r.shortNames ? { shortNames: r.shortNames } : {}),
        storageVersionHash: '' });
      if (r.status) resources.push({ name: `${r.plural}/status`, singularName: '', namespaced: r.namespaced, kind: r.kind, verbs: ['get', 'patch', 'update'] });
      if (r.scale) {
        resources.push({ name: `${r.plural}/scale`, singularName: '', namespaced: r.namespaced, group: 'autoscaling', version: 'v1',
          kind: 'Scale', verbs: ['get', 'patch', 'update'] });
      }
    }
    return { kind: 'APIResourceList', apiVersion: 'v1', groupVersion: group === '' ? version : `${group}/${version}`, resources };
  }

  private apiGroup(name: string, versions: Map<string, ResourceInfo[]>): JsonObject {
    const vs = [...versions.keys()].map((v) => ({ groupVersion: `${name}/${v}`, version: v }));
    return { name, versions: vs, preferredVersion: vs[0] };
  }

  // -------------------------------------------------------------------------------------------------------------
  // HTTP

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      if (this.opts.token !== null && req.headers.authorization !== `Bearer ${this.opts.token}`) {
        throw new ApiError(401, 'Unauthorized', 'Unauthorized');
      }
      const raw = await new Promise<string>((resolve, reject) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
        req.on('error', reject);
      });
      await this.route(req, res, url, raw);
    } catch (e) {
      if (res.headersSent) { res.end(); return; }
      const err = e instanceof ApiError ? e
        : e instanceof SelectorError ? badRequest(e.message)
        : e instanceof PatchError ? new ApiError(e.code, e.code === 400 ? 'BadRequest' : 'Invalid', e.message)
        : new ApiError(500, 'InternalError', `kube apiserver bug: ${(e as Error).stack ?? String(e)}`);
      this.sendJson(res, err.code, err.status());
    }
  }

  private sendJson(res: http.ServerResponse, code: number, body: Json, warnings: string[] = []): void {
    const text = JSON.stringify(body);
    const headers: http.OutgoingHttpHeaders = { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) };
    if (warnings.length) headers.Warning = warnings.map((w) => `299 - ${JSON.stringify(w)}`);
    res.writeHead(code, headers);
    res.end(text);
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse, url: URL, raw: string): Promise<void> {
    const segs = url.pathname.split('/').filter((s) => s !== '').map(decodeURIComponent);
    const method = req.method ?? 'GET';
    const nonResource = (body: Json) => {
      if (method !== 'GET') throw new ApiError(405, 'MethodNotAllowed', `${method} is not allowed on ${url.pathname}`);
      this.sendJson(res, 200, body);
    };
    const notServed = () => new ApiError(404, 'NotFound', 'the server could not find the requested resource', {});
    if (segs.length === 1 && ['healthz', 'readyz', 'livez'].includes(segs[0])) {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('ok');
      return;
    }
    if (segs.length === 1 && segs[0] === 'version') {
      return nonResource({ major: '1', minor: '31', gitVersion: 'v1.31.0-kvfleet', gitCommit: '', gitTreeState: 'clean',
        buildDate: '2024-08-13T00:00:00Z', goVersion: 'go1.22', compiler: 'gc', platform: 'linux/amd64' });
    }
    let group: string;
    let version: string;
    let rest: string[];
    if (segs[0] === 'api') {
      if (segs.length === 1) {
        return nonResource({ kind: 'APIVersions', versions: ['v1'],
          serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: `127.0.0.1:${this.portNo}` }] });
      }
      [group, version, rest] = ['', segs[1], segs.slice(2)];
    } else if (segs[0] === 'apis') {
      const served = this.served();
      if (segs.length === 1) {
        return nonResource({ kind: 'APIGroupList', apiVersion: 'v1',
          groups: [...served.entries()].filter(([g]) => g !== '').map(([g, vs]) => this.apiGroup(g, vs)) });
      }
      if (segs.length === 2) {
        const vs = served.get(segs[1]);
        if (!vs || segs[1] === '') throw notServed();
        return nonResource({ kind: 'APIGroup', apiVersion: 'v1', ...this.apiGroup(segs[1], vs) });
      }
      [group, version, rest] = [segs[1], segs[2], segs.slice(3)];
    } else {
      throw notServed();
    }
    if (rest.length === 0) {
      const list = this.resourceList(group, version);
      if (!list) throw notServed();
      return nonResource(list);
    }
    let namespace: string | undefined;
    if (rest[0] === 'namespaces' && rest.length >= 3 && !(rest.length === 3 && ['status', 'finalize'].includes(rest[2]))) {
      namespace = rest[1];
      rest = rest.slice(2);
    }
    if (rest.length > 3) throw notServed();
    const [plural, name, sub] = [rest[0], rest[1] as string | undefined, rest[2] ?? ''];
    const q = url.searchParams;
    const watch = q.get('watch') === 'true' || q.get('watch') === '1';
    const verb = method === 'GET' ? (watch ? 'watch' : name ? 'get' : 'list')
      : method === 'POST' ? 'create' : method === 'PUT' ? 'update' : method === 'PATCH' ? 'patch'
      : method === 'DELETE' ? (name ? 'delete' : 'deletecollection') : method.toLowerCase();
    // Recorded before the resource is resolved: a call to a resource not served (yet) still needs RBAC.
    const record: CallRecord = { verb, group, resource: plural, subresource: sub, namespace: namespace ?? '', name: name ?? '', code: 0 };
    this.callLog.push(record);
    res.on('finish', () => { record.code = res.statusCode; });
    const info = this.resolve(group, version, plural);
    if (!info || (!info.namespaced && namespace !== undefined)) throw notServed();
    if (sub !== '' && !((sub === 'status' && info.status) || (sub === 'scale' && info.scale))) throw notServed();
    const ns = info.namespaced ? namespace : undefined;
    if (info.namespaced && namespace === undefined && !(method === 'GET' && !name)) {
      // only list and watch span all namespaces
      throw notServed();
    }
    if (name === undefined && sub !== '') throw notServed();
    const ctype = (req.headers['content-type'] ?? 'application/json').split(';')[0].trim();
    const body = () => this.parseBody(raw, ctype);
    // owner references as they were, for the finalizers permission a write that sets blockOwnerDeletion implies
    const refsBefore = name !== undefined && sub === '' ? ownerRefs(this.bucket(info).get(objKey(ns ?? '', name))) : [];
    switch (verb) {
      case 'get': return this.sendJson(res, 200, this.doGet(info, ns ?? '', name!, sub));
      case 'list': return this.sendJson(res, 200, this.doList(info, ns, q));
      case 'watch': return this.doWatch(info, ns, q, res);
      case 'create': {
        if (name !== undefined) throw new ApiError(405, 'MethodNotAllowed', `POST is not allowed on a named ${info.plural}`);
        const { obj, warnings } = this.doCreate(info, ns ?? '', body(), q);
        this.recordOwnerFinalizers(refsBefore, obj, ns);
        return this.sendJson(res, 201, obj, warnings);
      }
      case 'update': {
        if (name === undefined) throw new ApiError(405, 'MethodNotAllowed', `PUT is not allowed on the ${info.plural} collection`);
        const { code, obj, warnings } = this.doUpdate(info, ns ?? '', name, sub, body(), q);
        if (sub === '') this.recordOwnerFinalizers(refsBefore, obj, ns);
        return this.sendJson(res, code, obj, warnings);
      }
      case 'patch': {
        if (name === undefined) throw new ApiError(405, 'MethodNotAllowed', `PATCH is not allowed on the ${info.plural} collection`);
        const { code, obj, warnings } = this.doPatch(info, ns ?? '', name, sub, raw, ctype, q);
        if (sub === '') this.recordOwnerFinalizers(refsBefore, obj, ns);
        return this.sendJson(res, code, obj, warnings);
      }
      case 'delete': {
        const { code, obj } = this.doDelete(info, ns ?? '', name!, raw === '' ? {} : body(), q);
        return this.sendJson(res, code, obj);
      }
      case 'deletecollection': return this.sendJson(res, 200, this.doDeleteCollection(info, ns, raw === '' ? {} : body(), q));
      default: throw new ApiError(405, 'MethodNotAllowed', `${method} is not allowed`);
    }
  }

  /**
   * OwnerReferencesPermissionEnforcement (an admission plugin on in OpenShift and many hardened clusters): a write
   * that sets blockOwnerDeletion on a reference needs `update` on the owner's finalizers subresource. This server
   * allows the write but records that implied call, so an RBAC check against the call record needs the grant.
   */
  private recordOwnerFinalizers(before: JsonObject[], obj: JsonObject, ns: string | undefined): void {
    for (const r of ownerRefs(obj)) {
      if (r.blockOwnerDeletion !== true || before.some((b) => b.uid === r.uid && b.blockOwnerDeletion === true)) continue;
      const av = str(r.apiVersion);
      const [group, version] = av.includes('/') ? av.split('/') : ['', av];
      const plural = this.pluralOfKind(group, version, str(r.kind));
      this.callLog.push({ verb: 'update', group, resource: plural, subresource: 'finalizers', namespace: ns ?? '', name: str(r.name), code: 200,
        implied: true });
    }
  }

  private pluralOfKind(group: string, version: string, kind: string): string {
    const b = BUILTINS.find((x) => x.group === group && x.kind === kind);
    if (b) return b.plural;
    for (const crd of this.crds()) {
      const spec = crd.spec as unknown as CrdSpec;
      if (spec.group === group && spec.names.kind === kind && spec.versions.some((v) => v.name === version)) return spec.names.plural;
    }
    return `${kind.toLowerCase()}s`;
  }

  private parseBody(raw: string, ctype: string): JsonObject {
    let v: unknown;
    try {
      v = ctype.endsWith('yaml') ? YAML.parse(raw) : JSON.parse(raw);
    } catch (e) {
      throw badRequest(`the request body is not valid ${ctype.endsWith('yaml') ? 'YAML' : 'JSON'}: ${(e as Error).message}`);
    }
    if (!isObject(v)) throw badRequest('the request body must be an object');
    return v;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Reads

  private bucket(info: ResourceInfo): Map<string, JsonObject> {
    const k = rkeyOf(info);
    let b = this.store.get(k);
    if (!b) { b = new Map(); this.store.set(k, b); }
    return b;
  }

  /** The object as served at `info`'s version. */
  private present(info: ResourceInfo, o: JsonObject): JsonObject {
    return { ...clone(o), apiVersion: apiVersionOf(info), kind: info.kind };
  }

  private doGet(info: ResourceInfo, ns: string, name: string, sub: string): JsonObject {
    const o = this.bucket(info).get(objKey(ns, name));
    if (!o) throw notFound(info, name);
    return sub === 'scale' ? this.scaleOf(info, o) : this.present(info, o);
  }

  private fieldsOf(info: ResourceInfo, o: JsonObject): Record<string, string> {
    const f: Record<string, string> = { 'metadata.name': str(meta(o).name), 'metadata.namespace': str(meta(o).namespace) };
    for (const l of info.fieldLabels) {
      const v = l === 'source' ? getPath(o, 'source.component') : getPath(o, l);
      f[l] = v === undefined || v === null ? '' : String(v);
    }
    return f;
  }

  private selectors(info: ResourceInfo, q: URLSearchParams) {
    const labels = parseLabelSelector(q.get('labelSelector') ?? '');
    const fields = parseFieldSelector(q.get('fieldSelector') ?? '', ['metadata.name', 'metadata.namespace', ...info.fieldLabels]);
    return { labels, fields };
  }

  private matching(info: ResourceInfo, ns: string | undefined, q: URLSearchParams): JsonObject[] {
    const { labels, fields } = this.selectors(info, q);
    return [...this.bucket(info).entries()].sort(([a], [b]) => a.localeCompare(b)).map(([, o]) => o)
      .filter((o) => (ns === undefined || meta(o).namespace === ns)
        && labels(meta(o).labels as Record<string, string> | undefined) && fields(this.fieldsOf(info, o)));
  }

  private doList(info: ResourceInfo, ns: string | undefined, q: URLSearchParams): JsonObject {
    let items = this.matching(info, ns, q);
    const listMeta: JsonObject = { resourceVersion: String(this.rv) };
    const cont = q.get('continue');
    if (cont) {
      let after: string;
      try { after = JSON.parse(Buffer.from(cont, 'base64url').toString('utf8')).after as string; } catch {
        throw badRequest('continue key is not valid');
      }
      items = items.filter((o) => objKey(str(meta(o).namespace), str(meta(o).name)) > after);
    }
    const limit = Number(q.get('limit') ?? '0');
    if (limit > 0 && items.length > limit) {
      const last = items[limit - 1];
      listMeta.continue = Buffer.from(JSON.stringify({ after: objKey(str(meta(last).namespace), str(meta(last).name)) })).toString('base64url');
      listMeta.remainingItemCount = items.length - limit;
      items = items.slice(0, limit);
    }
    // Built-in lists carry items without apiVersion/kind; custom resource lists include them (as a real server does).
    const shown = items.map((o) => {
      const p = this.present(info, o);
      if (!info.crdName) { delete p.apiVersion; delete p.kind; }
      return p;
    });
    return { kind: `${info.kind}List`, apiVersion: apiVersionOf(info), metadata: listMeta, items: shown };
  }

  // -------------------------------------------------------------------------------------------------------------
  // Watch

  private doWatch(info: ResourceInfo, ns: string | undefined, q: URLSearchParams, res: http.ServerResponse): void {
    const { labels, fields } = this.selectors(info, q);
    const from = q.get('resourceVersion') ?? '';
    if (from !== '' && !/^\d+$/.test(from)) throw badRequest(`invalid resourceVersion "${from}"`);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked', 'Cache-Control': 'no-cache, private' });
    res.flushHeaders();
    const w: Watcher = { info, namespace: ns, labels, fields, bookmarks: q.get('allowWatchBookmarks') === 'true', res, timers: [] };
    if (from !== '' && from !== '0') {
      const n = Number(from);
      if (n < this.historyStart) {
        const gone = new ApiError(410, 'Expired', `too old resource version: ${n} (${this.historyStart})`);
        res.end(`${JSON.stringify({ type: 'ERROR', object: gone.status() })}\n`);
        return;
      }
      for (const ev of this.events) if (ev.rv > n && ev.rkey === rkeyOf(info)) this.deliver(w, ev);
    } else {
      // No resourceVersion (or "0"): the current state as synthetic ADDED events, then changes.
      for (const o of this.matching(info, ns, q)) this.send(w, 'ADDED', o);
      if (q.get('sendInitialEvents') === 'true') {
        this.send(w, 'BOOKMARK', { metadata: { resourceVersion: String(this.rv), annotations: { 'k8s.io/initial-events-end': 'true' } } });
      }
    }
    this.watchers.add(w);
    const timeout = Number(q.get('timeoutSeconds') ?? '0');
    if (timeout > 0) w.timers.push(setTimeout(() => this.closeWatch(w), timeout * 1000));
    if (w.bookmarks) w.timers.push(setInterval(() => this.sendBookmark(w), this.opts.bookmarkIntervalMs));
    res.on('close', () => this.closeWatch(w));
  }

  private closeWatch(w: Watcher): void {
    if (!this.watchers.delete(w)) return;
    w.timers.forEach((t) => clearTimeout(t));
    w.res.end();
  }

  private send(w: Watcher, type: string, o: JsonObject): void {
    const object = type === 'BOOKMARK' ? { kind: w.info.kind, apiVersion: apiVersionOf(w.info), ...o } : this.present(w.info, o);
    w.res.write(`${JSON.stringify({ type, object })}\n`);
  }

  private sendBookmark(w: Watcher): void {
    this.send(w, 'BOOKMARK', { metadata: { resourceVersion: String(this.rv) } });
  }

  private watchMatches(w: Watcher, o: JsonObject): boolean {
    const m = meta(o);
    return (w.namespace === undefined || m.namespace === w.namespace)
      && w.labels(m.labels as Record<string, string> | undefined) && w.fields(this.fieldsOf(w.info, o));
  }

  /** One change as this watcher sees it: an object entering the selection is ADDED, one leaving it DELETED. */
  private deliver(w: Watcher, ev: ChangeEvent): void {
    const now = this.watchMatches(w, ev.obj);
    const before = ev.prev !== undefined && this.watchMatches(w, ev.prev);
    if (ev.type === 'MODIFIED') {
      if (now) this.send(w, before ? 'MODIFIED' : 'ADDED', ev.obj);
      else if (before) this.send(w, 'DELETED', ev.obj);
    } else if (now) {
      this.send(w, ev.type, ev.obj);
    }
  }

  // -------------------------------------------------------------------------------------------------------------
  // Storage

  /** Stores `obj` under the next resourceVersion and tells the watchers. */
  private commit(info: ResourceInfo, obj: JsonObject, type: WatchType, prev?: JsonObject): JsonObject {
    this.rv++;
    meta(obj).resourceVersion = String(this.rv);
    const m = meta(obj);
    const key = objKey(str(m.namespace), str(m.name));
    if (type === 'DELETED') this.bucket(info).delete(key);
    else this.bucket(info).set(key, obj);
    const ev: ChangeEvent = { rv: this.rv, rkey: rkeyOf(info), type, obj: clone(obj), prev: prev && clone(prev) };
    this.events.push(ev);
    while (this.events.length > this.opts.eventWindow) this.historyStart = this.events.shift()!.rv;
    for (const w of this.watchers) if (rkeyOf(w.info) === ev.rkey) this.deliver(w, ev);
    this.scheduleGc();
    return clone(obj);
  }

  /** Replaces `old` with `next` unless nothing changed; finishes a deletion whose last finalizer went. */
  private write(info: ResourceInfo, old: JsonObject, next: JsonObject): JsonObject {
    const strip = (o: JsonObject) => ({ ...o, metadata: { ...meta(o), resourceVersion: undefined } });
    if (deepEqual(strip(next), strip(old))) return clone(old);
    const m = meta(next);
    // a terminating namespace goes when it is empty (collectGarbage), not when its last finalizer does
    const isNamespace = info.group === '' && info.plural === 'namespaces';
    if (m.deletionTimestamp && !isNamespace && (!Array.isArray(m.finalizers) || m.finalizers.length === 0)) return this.remove(info, next);
    return this.commit(info, next, 'MODIFIED', old);
  }

  private remove(info: ResourceInfo, obj: JsonObject): JsonObject {
    const m = meta(obj);
    this.applied.delete(`${rkeyOf(info)}|${objKey(str(m.namespace), str(m.name))}`);
    const gone = this.commit(info, clone(obj), 'DELETED');
    if (info.plural === 'customresourcedefinitions' && info.group === 'apiextensions.k8s.io') {
      // The CRD's instances go with it (the real server's customresourcecleanup finalizer).
      const spec = obj.spec as unknown as CrdSpec;
      const cr = customResource(str(m.name), spec, spec.versions.find((v) => v.storage) ?? spec.versions[0]);
      for (const o of [...this.bucket(cr).values()]) this.commit(cr, clone(o), 'DELETED');
    }
    return gone;
  }

  private seedNamespace(name: string): void {
    const info = BUILTINS[0];
    const obj = this.prepareCreate(info, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } }, new URLSearchParams()).obj;
    this.commit(info, obj, 'ADDED');
  }

  // -------------------------------------------------------------------------------------------------------------
  // Writes

  /** Fills apiVersion/kind from the endpoint when absent; refuses a body meant for another resource. */
  private checkKind(info: ResourceInfo, o: JsonObject, kind = info.kind, apiVersion = apiVersionOf(info)): void {
    if (o.kind === undefined || o.kind === '') o.kind = kind;
    if (o.apiVersion === undefined || o.apiVersion === '') o.apiVersion = apiVersion;
    if (o.kind !== kind) throw badRequest(`the kind in the data (${String(o.kind)}) does not match the expected kind (${kind})`);
    if (o.apiVersion !== apiVersion) {
      throw badRequest(`the API version in the data (${String(o.apiVersion)}) does not match the expected API version (${apiVersion})`);
    }
  }

  private checkNamespace(info: ResourceInfo, o: JsonObject, ns: string): void {
    const m = meta(o);
    if (!info.namespaced) { delete m.namespace; return; }
    if (m.namespace === undefined || m.namespace === '') m.namespace = ns;
    if (m.namespace !== ns) {
      throw badRequest('the namespace of the provided object does not match the namespace sent on the request');
    }
  }

  private doCreate(info: ResourceInfo, ns: string, body: JsonObject, q: URLSearchParams): { obj: JsonObject; warnings: string[] } {
    this.checkKind(info, body);
    this.checkNamespace(info, body, ns);
    const m = meta(body);
    if ((m.name === undefined || m.name === '') && typeof m.generateName === 'string' && m.generateName !== '') {
      const alphabet = 'bcdfghjklmnpqrstvwxz2456789';
      do {
        m.name = m.generateName + Array.from({ length: 5 }, () => alphabet[Math.floor(Math.random() * alphabet.length)]).join('');
      } while (this.bucket(info).has(objKey(ns, m.name)));
    }
    const name = str(m.name);
    if (info.namespaced) {
      const nsObj = this.store.get(NS_KEY)?.get(objKey('', ns));
      if (!nsObj) throw notFound(BUILTINS[0], ns);
      if (meta(nsObj).deletionTimestamp) {
        throw new ApiError(403, 'Forbidden', `${qualified(info)} "${name}" is forbidden: unable to create new content in namespace ${ns} because it is being terminated`,
          { name, group: info.group, kind: info.plural });
      }
    }
    if (name !== '' && this.bucket(info).has(objKey(ns, name))) {
      throw new ApiError(409, 'AlreadyExists', `${qualified(info)} "${name}" already exists`, { name, group: info.group, kind: info.plural });
    }
    const { obj, warnings } = this.prepareCreate(info, body, q);
    if (q.get('dryRun') === 'All') return { obj: this.present(info, obj), warnings };
    return { obj: this.present(info, this.commit(info, obj, 'ADDED')), warnings };
  }

  private prepareCreate(info: ResourceInfo, body: JsonObject, q: URLSearchParams): { obj: JsonObject; warnings: string[] } {
    const obj = clone(body);
    const m = meta(obj);
    m.uid = randomUUID();
    m.creationTimestamp = now();
    for (const f of ['resourceVersion', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'managedFields', 'selfLink']) delete m[f];
    if (info.generation) m.generation = 1; else delete m.generation;
    if (info.status) delete obj.status;
    this.defaultBuiltin(info, obj, undefined);
    return this.admit(info, obj, undefined, '', q);
  }

  /**
   * Builds the stored object of an update from the old one and the client's: identity and system metadata stay;
   * a /status write changes only status; a main write on a resource with a status subresource keeps the old
   * status; generation bumps when anything but metadata (and status) changed.
   */
  private prepareUpdate(info: ResourceInfo, old: JsonObject, incoming: JsonObject, sub: string, q: URLSearchParams): { obj: JsonObject; warnings: string[] } {
    let next = clone(incoming);
    const m = meta(next);
    const om = meta(old);
    for (const f of ['uid', 'creationTimestamp', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'generation', 'namespace', 'name', 'resourceVersion']) {
      if (om[f] === undefined) delete m[f]; else m[f] = clone(om[f]);
    }
    delete m.managedFields;
    delete m.selfLink;
    if (sub === 'status') {
      const status = next.status;
      next = clone(old);
      if (status === undefined) delete next.status; else next.status = status;
    } else {
      if (info.status) {
        if (old.status === undefined) delete next.status; else next.status = clone(old.status);
      }
      if (om.deletionTimestamp) {
        const had = new Set(Array.isArray(om.finalizers) ? om.finalizers.map(String) : []);
        const added = (Array.isArray(m.finalizers) ? m.finalizers.map(String) : []).filter((f) => !had.has(f));
        if (added.length) {
          throw invalid(info, str(m.name), [{ reason: 'FieldValueForbidden', field: 'metadata.finalizers',
            message: `Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers ${JSON.stringify(added)}` }]);
        }
      }
      this.defaultBuiltin(info, next, old);
      const specOf = (o: JsonObject) => {
        const { metadata: _m, status: _s, ...rest } = o;
        return info.status ? rest : { ...rest, status: _s };
      };
      if (info.generation && !deepEqual(specOf(next), specOf(old))) m.generation = Number(om.generation ?? 0) + 1;
    }
    return this.admit(info, next, old, sub, q);
  }

  private doUpdate(info: ResourceInfo, ns: string, name: string, sub: string, body: JsonObject, q: URLSearchParams)
    : { code: number; obj: JsonObject; warnings: string[] } {
    if (sub === 'scale') {
      this.checkKind(info, body, 'Scale', 'autoscaling/v1');
      return { code: 200, obj: this.updateScale(info, ns, name, body, q), warnings: [] };
    }
    this.checkKind(info, body);
    this.checkNamespace(info, body, ns);
    const m = meta(body);
    if (m.name === undefined || m.name === '') m.name = name;
    if (m.name !== name) throw badRequest(`the name of the object (${String(m.name)}) does not match the name on the URL (${name})`);
    const old = this.bucket(info).get(objKey(ns, name));
    if (!old) {
      if (info.createOnUpdate && sub === '') {
        const { obj, warnings } = this.doCreate(info, ns, body, q);
        return { code: 201, obj, warnings };
      }
      throw notFound(info, name);
    }
    this.checkPrecondition(info, old, m.resourceVersion, true);
    const { obj, warnings } = this.prepareUpdate(info, old, body, sub, q);
    if (q.get('dryRun') === 'All') return { code: 200, obj: this.present(info, obj), warnings };
    return { code: 200, obj: this.present(info, this.write(info, old, obj)), warnings };
  }

  /** metadata.resourceVersion in a write is a precondition: it must be the stored one. */
  private checkPrecondition(info: ResourceInfo, old: JsonObject, rv: Json | undefined, isUpdate: boolean): void {
    const name = str(meta(old).name);
    if (rv === undefined || rv === null || rv === '') {
      if (isUpdate && !info.unconditionalUpdate) {
        throw invalid(info, name, [{ reason: 'FieldValueInvalid', field: 'metadata.resourceVersion',
          message: 'Invalid value: 0x0: must be specified for an update' }]);
      }
      return;
    }
    if (String(rv) !== meta(old).resourceVersion) {
      throw conflict(info, name, 'the object has been modified; please apply your changes to the latest version and try again');
    }
  }

  private doPatch(info: ResourceInfo, ns: string, name: string, sub: string, raw: string, ctype: string, q: URLSearchParams)
    : { code: number; obj: JsonObject; warnings: string[] } {
    const types = ['application/merge-patch+json', 'application/json-patch+json', 'application/strategic-merge-patch+json', 'application/apply-patch+yaml'];
    if (!types.includes(ctype)) {
      throw new ApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: ${types.join(', ')}`);
    }
    if (ctype === 'application/strategic-merge-patch+json' && info.crdName) {
      throw new ApiError(415, 'UnsupportedMediaType', 'strategic merge patch is not supported for custom resources; use merge-patch or apply');
    }
    const isApply = ctype === 'application/apply-patch+yaml';
    const manager = q.get('fieldManager') ?? '';
    if (isApply && manager === '') throw badRequest('fieldManager is required for apply requests');
    if (!isApply && q.get('force') !== null) throw badRequest('force is only allowed for apply requests');
    let patch: Json;
    try {
      patch = isApply ? YAML.parse(raw) as Json : JSON.parse(raw) as Json;
    } catch (e) {
      throw badRequest(`the patch is not valid ${isApply ? 'YAML' : 'JSON'}: ${(e as Error).message}`);
    }
    const key = objKey(ns, name);
    const old = this.bucket(info).get(key);
    const appliedKey = `${rkeyOf(info)}|${key}`;
    if (isApply) {
      if (!isObject(patch)) throw badRequest('an apply patch must be an object');
      if (sub !== 'scale') this.checkKind(info, patch);
      const m = meta(patch);
      if (m.name !== undefined && m.name !== name) {
        throw badRequest(`the name of the object (${String(m.name)}) does not match the name on the URL (${name})`);
      }
    }
    if (!old) {
      if (!isApply || sub !== '') throw notFound(info, name);
      const body = clone(patch) as JsonObject;
      meta(body).name = name;
      const { obj, warnings } = this.doCreate(info, ns, body, q);
      this.rememberApplied(appliedKey, manager, patch);
      return { code: 201, obj, warnings };
    }
    const target: JsonObject = sub === 'scale' ? this.scaleOf(info, old) : this.present(info, old);
    const previous = this.applied.get(appliedKey)?.get(`${manager}|${sub}`);
    const patched = ctype === 'application/merge-patch+json' ? mergePatch(target, patch)
      : ctype === 'application/json-patch+json' ? jsonPatch(target, patch)
      : ctype === 'application/strategic-merge-patch+json' ? strategicMergePatch(target, patch)
      : applyMerge(target, patch, previous);
    if (!isObject(patched)) throw new ApiError(422, 'Invalid', 'the patch turned the object into something that is not an object');
    // A resourceVersion in the patch is a precondition; one the patch left alone is the current one.
    const rv = meta(patched).resourceVersion;
    if (sub === 'scale') {
      return { code: 200, obj: this.updateScale(info, ns, name, patched, q), warnings: [] };
    }
    this.checkKind(info, patched);
    this.checkPrecondition(info, old, rv, false);
    const { obj, warnings } = this.prepareUpdate(info, old, patched, sub, q);
    if (q.get('dryRun') === 'All') return { code: 200, obj: this.present(info, obj), warnings };
    const result = this.write(info, old, obj);
    if (isApply) this.rememberApplied(appliedKey, manager, patch, sub);
    return { code: 200, obj: this.present(info, result), warnings };
  }

  private rememberApplied(key: string, manager: string, patch: Json, sub = ''): void {
    const byManager = this.applied.get(key) ?? new Map<string, Json>();
    const cfg = clone(patch) as JsonObject;
    if (isObject(cfg.metadata)) delete cfg.metadata.resourceVersion;
    byManager.set(`${manager}|${sub}`, cfg);
    this.applied.set(key, byManager);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Scale subresource

  private scaleOf(info: ResourceInfo, o: JsonObject): JsonObject {
    const sc = info.scale!;
    const m = meta(o);
    const sel = sc.labelSelectorPath ? getPath(o, sc.labelSelectorPath) : undefined;
    const selector = typeof sel === 'string' ? sel : isObject(sel) ? labelSelectorString(sel as never) : undefined;
    const spec = getPath(o, sc.specReplicasPath);
    const status = getPath(o, sc.statusReplicasPath);
    return {
      kind: 'Scale', apiVersion: 'autoscaling/v1',
      metadata: { name: m.name, ...(m.namespace ? { namespace: m.namespace } : {}), uid: m.uid, resourceVersion: m.resourceVersion,
        creationTimestamp: m.creationTimestamp },
      spec: { replicas: typeof spec === 'number' ? spec : 0 },
      status: { replicas: typeof status === 'number' ? status : 0, ...(selector !== undefined ? { selector } : {}) },
    };
  }

  private updateScale(info: ResourceInfo, ns: string, name: string, scale: JsonObject, q: URLSearchParams): JsonObject {
    const old = this.bucket(info).get(objKey(ns, name));
    if (!old) throw notFound(info, name);
    this.checkPrecondition(info, old, meta(scale).resourceVersion, false);
    const replicas = isObject(scale.spec) ? scale.spec.replicas : undefined;
    if (typeof replicas !== 'number' || !Number.isInteger(replicas) || replicas < 0) {
      throw new ApiError(422, 'Invalid', `Scale.autoscaling "${name}" is invalid: spec.replicas: Invalid value: ${JSON.stringify(replicas)}: must be a non-negative integer`,
        { name, group: 'autoscaling', kind: 'Scale', causes: [{ reason: 'FieldValueInvalid', field: 'spec.replicas', message: 'must be a non-negative integer' }] });
    }
    const next = clone(old);
    setPath(next, info.scale!.specReplicasPath, replicas);
    const { obj } = this.prepareUpdate(info, old, next, '', q);
    if (q.get('dryRun') === 'All') return this.scaleOf(info, obj);
    return this.scaleOf(info, this.write(info, old, obj));
  }

  // -------------------------------------------------------------------------------------------------------------
  // Delete, garbage collection, finalizers

  private doDelete(info: ResourceInfo, ns: string, name: string, opts: JsonObject, q: URLSearchParams): { code: number; obj: JsonObject } {
    const old = this.bucket(info).get(objKey(ns, name));
    if (!old) throw notFound(info, name);
    const pre = isObject(opts.preconditions) ? opts.preconditions : {};
    if (pre.uid !== undefined && pre.uid !== meta(old).uid) {
      throw conflict(info, name, `Precondition failed: UID in precondition: ${String(pre.uid)}, UID in object meta: ${String(meta(old).uid)}`);
    }
    if (pre.resourceVersion !== undefined && pre.resourceVersion !== meta(old).resourceVersion) {
      throw conflict(info, name, `Precondition failed: ResourceVersion in precondition: ${String(pre.resourceVersion)}, ResourceVersion in object meta: ${String(meta(old).resourceVersion)}`);
    }
    const policy = q.get('propagationPolicy') ?? (typeof opts.propagationPolicy === 'string' ? opts.propagationPolicy
      : opts.orphanDependents === true || q.get('orphanDependents') === 'true' ? 'Orphan' : 'Background');
    if (!['Orphan', 'Background', 'Foreground'].includes(policy)) throw badRequest(`unknown propagationPolicy "${policy}"`);
    if (q.get('dryRun') === 'All') return { code: 200, obj: this.present(info, old) };
    const result = this.deleteObject(info, old, policy);
    const m = meta(result);
    if (this.bucket(info).has(objKey(ns, name))) return { code: 200, obj: this.present(info, result) };
    if (info.returnDeleted) return { code: 200, obj: this.present(info, result) };
    return { code: 200, obj: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success',
      details: { name, group: info.group, kind: info.plural, uid: m.uid } } };
  }

  /** Deletes now, or marks deleting (deletionTimestamp) while finalizers remain; returns the object's last state. */
  private deleteObject(info: ResourceInfo, old: JsonObject, policy: string): JsonObject {
    const next = clone(old);
    const m = meta(next);
    const finalizers = Array.isArray(m.finalizers) ? m.finalizers.map(String) : [];
    const extra = policy === 'Foreground' ? 'foregroundDeletion' : policy === 'Orphan' ? 'orphan' : undefined;
    if (extra && !finalizers.includes(extra) && this.hasDependents(str(m.uid))) finalizers.push(extra);
    const isNamespace = info.plural === 'namespaces' && info.group === '';
    if (finalizers.length === 0 && !isNamespace) return this.remove(info, next);
    if (m.deletionTimestamp === undefined) {
      m.deletionTimestamp = now();
      m.deletionGracePeriodSeconds = 0;
    }
    if (finalizers.length) m.finalizers = finalizers;
    if (isNamespace) next.status = { phase: 'Terminating' };
    return this.write(info, old, next);
  }

  private doDeleteCollection(info: ResourceInfo, ns: string | undefined, opts: JsonObject, q: URLSearchParams): JsonObject {
    const policy = typeof opts.propagationPolicy === 'string' ? opts.propagationPolicy : q.get('propagationPolicy') ?? 'Background';
    const items = this.matching(info, ns, q);
    if (q.get('dryRun') !== 'All') for (const o of items) this.deleteObject(info, o, policy);
    return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { group: info.group, kind: info.plural } };
  }

  private allObjects(): { info: ResourceInfo; obj: JsonObject }[] {
    const out: { info: ResourceInfo; obj: JsonObject }[] = [];
    for (const [rkey, bucket] of this.store) {
      const [group, plural] = rkey.split('/');
      let info: ResourceInfo;
      try { info = this.builtinOrCustom(group, plural); } catch { continue; }
      for (const obj of bucket.values()) out.push({ info, obj });
    }
    return out;
  }

  private hasDependents(uid: string): boolean {
    return this.allObjects().some(({ obj }) => (meta(obj).ownerReferences as JsonObject[] | undefined)?.some((r) => r.uid === uid));
  }

  private scheduleGc(): void {
    if (this.gcPending) return;
    this.gcPending = true;
    setImmediate(() => { this.gcPending = false; this.collectGarbage(); });
  }

  /**
   * One pass of the garbage collector and namespace controller, repeated until nothing changes:
   * - a dependent whose owners (by uid, same namespace or cluster-scoped) are all gone is deleted (background);
   *   references to gone owners are dropped from dependents that keep a live owner;
   * - an owner being deleted with `orphan` has its references removed from dependents, then the finalizer;
   * - an owner being deleted with `foregroundDeletion` gets its dependents deleted, and the finalizer removed once
   *   none with blockOwnerDeletion remain;
   * - a terminating namespace gets its contents deleted and goes once it is empty.
   */
  private collectGarbage(): void {
    for (let pass = 0; pass < 100; pass++) {
      const before = this.rv;
      const all = this.allObjects();
      const byUid = new Map(all.map((e) => [str(meta(e.obj).uid), e]));
      for (const { info, obj } of all) {
        const m = meta(obj);
        const live = () => this.bucket(info).get(objKey(str(m.namespace), str(m.name)));
        const refs = (m.ownerReferences as JsonObject[] | undefined) ?? [];
        if (refs.length && live()) {
          const ownerOk = (r: JsonObject) => {
            const owner = byUid.get(str(r.uid));
            const stored = owner && this.bucket(owner.info).get(objKey(str(meta(owner.obj).namespace), str(meta(owner.obj).name)));
            if (!owner || !stored || meta(stored).uid !== r.uid) return false;
            const ons = str(meta(owner.obj).namespace);
            return ons === '' || ons === str(m.namespace);
          };
          const alive = refs.filter(ownerOk);
          const cur = live()!;
          if (alive.length === 0 && !meta(cur).deletionTimestamp) this.deleteObject(info, cur, 'Background');
          else if (alive.length > 0 && alive.length < refs.length) {
            const next = clone(cur);
            meta(next).ownerReferences = alive;
            this.write(info, cur, next);
          }
        }
        const cur = live();
        if (!cur || !meta(cur).deletionTimestamp) continue;
        const fins = (meta(cur).finalizers as string[] | undefined) ?? [];
        const uid = str(m.uid);
        const dependents = () => this.allObjects().filter(({ obj: d }) =>
          (meta(d).ownerReferences as JsonObject[] | undefined)?.some((r) => r.uid === uid));
        if (fins.includes('orphan')) {
          for (const d of dependents()) {
            const next = clone(d.obj);
            const left = (meta(next).ownerReferences as JsonObject[]).filter((r) => r.uid !== uid);
            if (left.length) meta(next).ownerReferences = left; else delete meta(next).ownerReferences;
            this.write(d.info, d.obj, next);
          }
          this.dropFinalizer(info, 'orphan', cur);
        } else if (fins.includes('foregroundDeletion')) {
          for (const d of dependents()) if (!meta(d.obj).deletionTimestamp) this.deleteObject(d.info, d.obj, 'Foreground');
          const blocking = dependents().filter(({ obj: d }) =>
            (meta(d).ownerReferences as JsonObject[]).some((r) => r.uid === uid && r.blockOwnerDeletion === true));
          if (blocking.length === 0) this.dropFinalizer(info, 'foregroundDeletion', cur);
        } else if (info.plural === 'namespaces' && info.group === '') {
          const ns = str(m.name);
          const contents = this.allObjects().filter(({ info: i, obj: o }) => i.namespaced && meta(o).namespace === ns);
          for (const c of contents) if (!meta(c.obj).deletionTimestamp) this.deleteObject(c.info, c.obj, 'Background');
          if (contents.every((c) => !this.bucket(c.info).has(objKey(ns, str(meta(c.obj).name))))) {
            if (fins.length === 0) this.remove(info, cur);
          }
        }
      }
      if (this.rv === before) return;
    }
    throw new Error('kube apiserver bug: garbage collection did not settle after 100 passes');
  }

  private dropFinalizer(info: ResourceInfo, f: string, cur: JsonObject): void {
    const next = clone(cur);
    const left = ((meta(next).finalizers as string[] | undefined) ?? []).filter((x) => x !== f);
    if (left.length) meta(next).finalizers = left; else delete meta(next).finalizers;
    this.write(info, cur, next);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Defaulting and admission

  /** Defaults the API server's built-in types get (those that make a read-back differ from what was sent). */
  private defaultBuiltin(info: ResourceInfo, o: JsonObject, old: JsonObject | undefined): void {
    const spec = (isObject(o.spec) ? o.spec : undefined);
    const key = `${info.group}/${info.plural}`;
    if (key === '/namespaces') {
      if (!old) o.status = { phase: 'Active' };
      o.spec = { finalizers: ['kubernetes'], ...(spec ?? {}) };
      meta(o).labels = { ...(meta(o).labels as JsonObject | undefined), 'kubernetes.io/metadata.name': str(meta(o).name) };
    } else if (key === '/secrets') {
      o.type ??= 'Opaque';
      if (isObject(o.stringData)) {
        const data = { ...(isObject(o.data) ? o.data : {}) };
        for (const [k, v] of Object.entries(o.stringData)) data[k] = Buffer.from(String(v)).toString('base64');
        o.data = data;
        delete o.stringData;
      }
    } else if (key === '/services' && spec) {
      spec.type ??= 'ClusterIP';
      spec.sessionAffinity ??= 'None';
      if (spec.type !== 'ExternalName') {
        const oldIp = old && isObject(old.spec) ? old.spec.clusterIP : undefined;
        if (spec.clusterIP === undefined || spec.clusterIP === '') spec.clusterIP = oldIp ?? `10.96.${Math.floor(this.nextIp / 250)}.${(this.nextIp++ % 250) + 1}`;
        spec.clusterIPs ??= [spec.clusterIP];
        spec.ipFamilies ??= ['IPv4'];
        spec.ipFamilyPolicy ??= 'SingleStack';
        spec.internalTrafficPolicy ??= 'Cluster';
      }
      if (Array.isArray(spec.ports)) {
        for (const p of spec.ports) if (isObject(p)) { p.protocol ??= 'TCP'; p.targetPort ??= p.port; }
      }
      if (!old) o.status = { loadBalancer: {} };
    } else if (key === 'apps/deployments' && spec) {
      spec.replicas ??= 1;
      spec.revisionHistoryLimit ??= 10;
      spec.progressDeadlineSeconds ??= 600;
      spec.strategy ??= { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: '25%', maxSurge: '25%' } };
      if (isObject(spec.template) && isObject(spec.template.spec)) defaultPodSpec(spec.template.spec);
    } else if (key === '/pods' && spec) {
      defaultPodSpec(spec);
      if (!old) o.status = { phase: 'Pending' };
    } else if (key === 'apiextensions.k8s.io/customresourcedefinitions' && spec) {
      const names = isObject(spec.names) ? spec.names : {};
      names.singular ??= str(names.kind).toLowerCase();
      names.listKind ??= `${str(names.kind)}List`;
      spec.conversion ??= { strategy: 'None' };
      const storage = Array.isArray(spec.versions) ? spec.versions.filter(isObject).filter((v) => v.storage === true).map((v) => v.name) : [];
      const stored = old && isObject(old.status) && Array.isArray(old.status.storedVersions) ? old.status.storedVersions : [];
      const t = now();
      o.status = {
        conditions: [
          { type: 'NamesAccepted', status: 'True', reason: 'NoConflicts', message: 'no conflicts found', lastTransitionTime: t },
          { type: 'Established', status: 'True', reason: 'InitialNamesAccepted', message: 'the initial names have been accepted', lastTransitionTime: t },
        ],
        acceptedNames: clone(names),
        storedVersions: [...new Set([...stored, ...storage])],
      };
    }
  }

  /**
   * Validates (and for custom resources prunes and defaults) the object about to be stored; throws 422 Invalid
   * with one cause per problem. Returns the object to store and warnings for pruned unknown fields (400 under
   * fieldValidation=Strict).
   */
  private admit(info: ResourceInfo, o: JsonObject, old: JsonObject | undefined, sub: string, q: URLSearchParams)
    : { obj: JsonObject; warnings: string[] } {
    let obj = o;
    const m = meta(o);
    const name = str(m.name);
    const causes: Cause[] = [];
    const warnings: string[] = [];
    if (name === '') causes.push({ reason: 'FieldValueRequired', field: 'metadata.name', message: 'Required value: name or generateName is required' });
    else {
      const label = info.plural === 'namespaces' || info.plural === 'services';
      if (!(label ? DNS_LABEL : DNS_SUBDOMAIN).test(name) || name.length > (label ? 63 : 253)) {
        causes.push({ reason: 'FieldValueInvalid', field: 'metadata.name', message: `Invalid value: ${JSON.stringify(name)}: a lowercase RFC 1123 `
          + `${label ? 'label' : 'subdomain'} must consist of lower case alphanumeric characters, '-'${label ? '' : " or '.'"}, and must start and end with an alphanumeric character` });
      }
    }
    for (const [k, v] of Object.entries(isObject(m.labels) ? m.labels : {})) {
      if (typeof v !== 'string' || v.length > 63 || !LABEL_VALUE.test(v)) {
        causes.push({ reason: 'FieldValueInvalid', field: `metadata.labels`, message: `Invalid value: ${JSON.stringify(v)}: label ${k} must be 63 characters or less, `
          + 'beginning and ending with an alphanumeric character with dashes, underscores, dots, or alphanumerics between' });
      }
    }
    if (info.group === 'apps' && info.plural === 'deployments' && sub === '') this.validateDeployment(o, old, causes);
    if (info.plural === 'customresourcedefinitions' && info.group === 'apiextensions.k8s.io') this.validateCrd(o, causes);
    if (info.plural === 'events' && info.group === 'events.k8s.io') this.validateEvent(o, causes);
    if (info.schema && causes.length === 0) {
      const unknown: string[] = [];
      const pruned = pruneAndDefault(o, info.schema, '', unknown, true) as JsonObject;
      if (unknown.length) {
        if (q.get('fieldValidation') === 'Strict') {
          throw badRequest(`strict decoding error: ${unknown.map((u) => `unknown field "${u}"`).join(', ')}`);
        }
        warnings.push(...unknown.map((u) => `unknown field "${u}"`));
      }
      // A main write on a resource with a status subresource does not validate status, a /status write only status.
      const skip = sub === 'status' ? (k: string) => k !== 'status' : info.status ? (k: string) => k === 'status' : undefined;
      validateSchema(pruned, info.schema, '', causes, skip);
      if (causes.length === 0) validateCel(pruned, old, info.schema, '', causes, skip);
      obj = pruned;
    }
    if (causes.length) throw invalid(info, name, causes);
    return { obj, warnings };
  }

  private validateDeployment(o: JsonObject, old: JsonObject | undefined, causes: Cause[]): void {
    const spec = isObject(o.spec) ? o.spec : {};
    const sel = isObject(spec.selector) ? spec.selector : undefined;
    const tpl = isObject(spec.template) && isObject(spec.template.metadata) ? spec.template.metadata.labels : undefined;
    if (!sel) { causes.push({ reason: 'FieldValueRequired', field: 'spec.selector', message: 'Required value' }); return; }
    const matches = parseLabelSelector(labelSelectorString(sel as never))(isObject(tpl) ? tpl as Record<string, string> : undefined);
    if (!matches) {
      causes.push({ reason: 'FieldValueInvalid', field: 'spec.template.metadata.labels',
        message: `Invalid value: ${JSON.stringify(tpl ?? {})}: \`selector\` does not match template \`labels\`` });
    }
    if (old && isObject(old.spec) && !deepEqual(old.spec.selector, sel)) {
      causes.push({ reason: 'FieldValueInvalid', field: 'spec.selector', message: `Invalid value: ${JSON.stringify(sel)}: field is immutable` });
    }
  }

  /** events.k8s.io/v1 Event as the API server checks it on create: eventTime is a MicroTime (RFC 3339 with exactly
   *  six fractional digits; anything else fails decoding with 400), type Normal or Warning, reason, action,
   *  reportingController and reportingInstance set (at most 128 characters), note at most 1 KiB, and regarding in
   *  the event's own namespace. */
  private validateEvent(o: JsonObject, causes: Cause[]): void {
    const t = o.eventTime;
    if (typeof t !== 'string' || !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$/.test(t)) {
      throw badRequest(`Event in version "v1" cannot be handled as a Event: parsing time ${JSON.stringify(t ?? null)} as "2006-01-02T15:04:05.000000Z07:00": cannot parse`);
    }
    if (o.type !== 'Normal' && o.type !== 'Warning') causes.push({ reason: 'FieldValueNotSupported', field: 'type', message: `Unsupported value: ${JSON.stringify(o.type ?? '')}: supported values: "Normal", "Warning"` });
    for (const f of ['reason', 'action', 'reportingController', 'reportingInstance']) {
      const v = o[f];
      if (typeof v !== 'string' || v === '') causes.push({ reason: 'FieldValueRequired', field: f, message: 'Required value' });
      else if (v.length > 128) causes.push({ reason: 'FieldValueTooLong', field: f, message: 'Too long: may not be more than 128 bytes' });
    }
    if (typeof o.note === 'string' && Buffer.byteLength(o.note) > 1024) causes.push({ reason: 'FieldValueTooLong', field: 'note', message: 'Too long: may not be more than 1024 bytes' });
    const regarding = isObject(o.regarding) ? o.regarding : undefined;
    if (!regarding || str(regarding.name) === '' || str(regarding.kind) === '') causes.push({ reason: 'FieldValueRequired', field: 'regarding', message: 'Required value: kind and name' });
    else if (str(regarding.namespace) !== str(meta(o).namespace)) {
      causes.push({ reason: 'FieldValueInvalid', field: 'regarding.namespace', message: `Invalid value: ${JSON.stringify(str(regarding.namespace))}: does not match event.namespace` });
    }
  }

  private validateCrd(o: JsonObject, causes: Cause[]): void {
    const spec = (isObject(o.spec) ? o.spec : {}) as unknown as Partial<CrdSpec>;
    const names = spec.names;
    if (!spec.group) causes.push({ reason: 'FieldValueRequired', field: 'spec.group', message: 'Required value' });
    if (!names?.plural || !names.kind) causes.push({ reason: 'FieldValueRequired', field: 'spec.names', message: 'Required value: plural and kind' });
    else if (str(meta(o).name) !== `${names.plural}.${spec.group}`) {
      causes.push({ reason: 'FieldValueInvalid', field: 'metadata.name', message: `Invalid value: ${JSON.stringify(meta(o).name)}: must be spec.names.plural+"."+spec.group` });
    }
    if (spec.scope !== 'Namespaced' && spec.scope !== 'Cluster') {
      causes.push({ reason: 'FieldValueNotSupported', field: 'spec.scope', message: `Unsupported value: ${JSON.stringify(spec.scope ?? '')}: supported values: "Cluster", "Namespaced"` });
    }
    const versions = Array.isArray(spec.versions) ? spec.versions : [];
    if (versions.filter((v) => v.storage).length !== 1) {
      causes.push({ reason: 'FieldValueInvalid', field: 'spec.versions', message: 'Invalid value: must have exactly one version marked as storage version' });
    }
    versions.forEach((v, i) => {
      const s = v.schema?.openAPIV3Schema;
      if (s) compileRules(s, `spec.versions[${i}].schema.openAPIV3Schema`, causes);
    });
  }
}

function defaultPodSpec(spec: JsonObject): void {
  spec.restartPolicy ??= 'Always';
  spec.terminationGracePeriodSeconds ??= 30;
  spec.dnsPolicy ??= 'ClusterFirst';
  spec.securityContext ??= {};
  spec.schedulerName ??= 'default-scheduler';
  for (const field of ['containers', 'initContainers']) {
    const cs = spec[field];
    if (!Array.isArray(cs)) continue;
    for (const c of cs) {
      if (!isObject(c)) continue;
      c.terminationMessagePath ??= '/dev/termination-log';
      c.terminationMessagePolicy ??= 'File';
      const image = str(c.image);
      c.imagePullPolicy ??= image.endsWith(':latest') || !/:[^/]+$/.test(image) ? 'Always' : 'IfNotPresent';
      c.resources ??= {};
      if (Array.isArray(c.ports)) for (const p of c.ports) if (isObject(p)) p.protocol ??= 'TCP';
    }
  }
}
