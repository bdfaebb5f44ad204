// How operator code talks to the Kubernetes API with @kubernetes/client-node 2.x: the kubeconfig it loads, the
// resources it names, patch content types, and errors read as metav1.Status.
import {
  ApiException, KubeConfig, PatchStrategy, setHeaderOptions, type ConfigurationOptions, type ObservableMiddleware,
} from '@kubernetes/client-node';

/** A resource the operator lists, watches or writes. `group` '' is the core group. */
export interface ResourceRef {
  readonly group: string;
  readonly version: string;
  readonly kind: string;
  readonly plural: string;
}

export const apiVersionOf = (r: ResourceRef): string => (r.group === '' ? r.version : `${r.group}/${r.version}`);

/** The collection path of a resource, in one namespace or (namespace undefined) in all. */
export function collectionPath(r: ResourceRef, namespace?: string): string {
  const base = r.group === '' ? `/api/${r.version}` : `/apis/${r.group}/${r.version}`;
  return namespace === undefined ? `${base}/${r.plural}` : `${base}/namespaces/${encodeURIComponent(namespace)}/${r.plural}`;
}

/** `namespace/name`: the key of a namespaced object in work queues and caches. */
export const objectKey = (namespace: string, name: string): string => `${namespace}/${name}`;

export function splitKey(key: string): { namespace: string; name: string } {
  const i = key.indexOf('/');
  if (i <= 0 || i === key.length - 1) throw new Error(`bug: object key '${key}' is not namespace/name`);
  return { namespace: key.slice(0, i), name: key.slice(i + 1) };
}

/** Loads the client configuration from the source the config stage chose (operator/config.ts). */
export function loadKubeConfig(source: { kind: 'file'; path: string } | { kind: 'env' } | { kind: 'in-cluster' }): KubeConfig {
  const kc = new KubeConfig();
  if (source.kind === 'file') {
    try {
      kc.loadFromFile(source.path);
    } catch (err) {
      throw new Error(`kubeconfig ${source.path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
  }
  else if (source.kind === 'in-cluster') kc.loadFromCluster();
  else kc.loadFromDefault(); // $KUBECONFIG, possibly a list of files that client-node merges
  if (kc.getCurrentCluster() === null) {
    throw new Error(`the kubeconfig (${source.kind === 'file' ? source.path : source.kind}) names no current cluster`);
  }
  return kc;
}

/**
 * Request options that make a generated `patch*` call send `strategy` as its Content-Type. client-node 2.x
 * otherwise sends application/json-patch+json, and a merge-patch body would be refused as a malformed JSON patch.
 */
export function patchOptions(strategy: PatchStrategy): ConfigurationOptions<ObservableMiddleware> {
  return setHeaderOptions('Content-Type', strategy);
}
export const MERGE_PATCH = patchOptions(PatchStrategy.MergePatch);

export interface ApiStatus {
  kind: string;
  code: number;
  reason: string;
  message: string;
  details?: { name?: string; causes?: { reason: string; message: string; field: string }[] };
}

/** The metav1.Status a failed call carried (client-node throws ApiException with the body as a string), or undefined. */
export function apiStatus(err: unknown): ApiStatus | undefined {
  if (!(err instanceof ApiException)) return undefined;
  const body: unknown = err.body;
  try {
    const s = (typeof body === 'string' ? JSON.parse(body) : body) as ApiStatus;
    return s && s.kind === 'Status' ? s : undefined;
  } catch {
    return undefined;
  }
}

/** The HTTP status of a failed API call, or undefined when the call never got an answer. */
export function httpCode(err: unknown): number | undefined {
  return err instanceof ApiException ? err.code : undefined;
}

export const isNotFound = (err: unknown): boolean => httpCode(err) === 404;

/** One line for logs and conditions: the API server's message when there is one. */
export function errorText(err: unknown): string {
  const s = apiStatus(err);
  if (s) return `${s.code} ${s.reason}: ${s.message}`;
  return err instanceof Error ? err.message : String(err);
}
