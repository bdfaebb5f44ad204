// How to talk to the stand-in API server (or a real one) with @kubernetes/client-node 2.x. The patterns here
// are the ones operator code should copy: patch content types through setHeaderOptions, errors read as
// metav1.Status from ApiException.body, informers restarted with backoff after errors.

import {
  ApiException, KubeConfig, PatchStrategy, setHeaderOptions, type ConfigurationOptions, type Informer,
  type KubernetesObject, type ObservableMiddleware,
} from '@kubernetes/client-node';

/** A KubeConfig for the server: plain http on loopback, the server's bearer token, a default namespace. */
export function kubeConfigFor(server: { url: string; token: string | null }, namespace = 'default'): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'kvfleet-test', server: server.url, skipTLSVerify: true }],
    users: [{ name: 'kvfleet-test', ...(server.token !== null ? { token: server.token } : {}) }],
    contexts: [{ name: 'kvfleet-test', cluster: 'kvfleet-test', user: 'kvfleet-test', namespace }],
    currentContext: 'kvfleet-test',
  });
  return kc;
}

/**
 * Request options that make a client-node 2.x `patch*` call send `strategy` as its Content-Type. Without them
 * the generated APIs send `application/json-patch+json` (the first type in their list), so a merge patch body
 * would be rejected as a malformed JSON patch. KubernetesObjectApi.patch takes the strategy as an argument
 * instead (default strategic merge).
 *
 *   await apps.patchNamespacedDeployment({ name, namespace, body: { spec: { replicas: 3 } } },
 *     patchOptions(PatchStrategy.MergePatch));
 *   await custom.patchNamespacedCustomObject({ group, version, namespace, plural, name, body, fieldManager: 'kvfleet',
 *     force: true }, patchOptions(PatchStrategy.ServerSideApply));
 */
export function patchOptions(strategy: PatchStrategy): ConfigurationOptions<ObservableMiddleware> {
  return setHeaderOptions('Content-Type', strategy);
}

export interface Status {
  kind: string;
  code: number;
  reason: string;
  message: string;
  details?: { name?: string; group?: string; kind?: string; causes?: { reason: string; message: string; field: string }[] };
}

/**
 * The metav1.Status a failed client-node call carried, or undefined for other errors. client-node 2.x throws
 * ApiException with the HTTP code in `.code` and the response body as a string in `.body`.
 */
export function apiStatus(err: unknown): Status | undefined {
  if (!(err instanceof ApiException)) return undefined;
  const body: unknown = err.body;
  try {
    const s = (typeof body === 'string' ? JSON.parse(body) : body) as Status;
    return s && s.kind === 'Status' ? s : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Runs an informer and starts it again after every error. A client-node informer relists by itself after a
 * 410 Gone and rewatches after a clean end of its watch, but after any other error (connection refused or
 * reset, a 5xx) it calls its `error` handlers and stops. Delays double from `minDelayMs` up to `maxDelayMs`
 * and reset once a start succeeds. Returns a function that stops it for good.
 */
export function runInformer<T extends KubernetesObject>(informer: Informer<T>,
  opts: { minDelayMs?: number; maxDelayMs?: number; onError?: (err: unknown) => void } = {}): () => Promise<void> {
  const min = opts.minDelayMs ?? 100;
  const max = opts.maxDelayMs ?? 5000;
  let delay = min;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const start = () => {
    if (stopped) return;
    informer.start().then(() => { delay = min; }, () => { /* reported through the error handler */ });
  };
  informer.on('error', (err: unknown) => {
    opts.onError?.(err);
    if (stopped) return;
    clearTimeout(timer);
    timer = setTimeout(start, delay);
    delay = Math.min(delay * 2, max);
  });
  start();
  return async () => {
    stopped = true;
    clearTimeout(timer);
    await informer.stop();
  };
}

/** Polls `fn` until it returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function eventually<T>(fn: () => T | undefined | false | Promise<T | undefined | false>, what: string,
  timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
