// Transport security and caller authentication for the worker's gRPC server.
//
// - Secrets (the bearer token, the Redis password, the TLS key) are read from files named by options, never taken
//   from a flag value or the environment directly, and never logged: errors name the option and the file, not the
//   content.
// - Bearer auth: every call must carry `authorization: Bearer <token>` metadata, else UNAUTHENTICATED, EXCEPT
//   grpc.health.v1.Health. Health stays open on purpose: kubelet's gRPC probes cannot send metadata, and a health
//   answer (SERVING / NOT_SERVING) discloses nothing a port scan would not. Reflection is behind the token like the
//   kvfleet services (grpcurl takes `-H 'authorization: Bearer …'`).
// - TLS: --tls-cert/--tls-key serve TLS; --tls-client-ca additionally requires client certificates signed by that
//   CA (mutual TLS). The Prometheus port is plain HTTP and unauthenticated, as scrapers expect.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { OPTION_NAMES, WorkerConfigError, type OptionKey, type WorkerConfig } from './config.ts';

/** gRPC method paths that need no token (prefix match). */
export const OPEN_METHOD_PREFIXES = ['/grpc.health.v1.Health/'] as const;

function optionLabel(key: OptionKey): string {
  const [flag, env] = OPTION_NAMES[key];
  return `${flag} (${env})`;
}

/** Reads a file an option names; a missing or unreadable file is a WorkerConfigError naming the option. */
export function readOptionFile(key: OptionKey, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new WorkerConfigError(`${optionLabel(key)}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** A one-line secret from a file (a trailing newline, as `echo` or a Kubernetes Secret may add, is dropped). */
export function readSecretFile(key: OptionKey, file: string): string {
  const s = readOptionFile(key, file).toString('utf8').replace(/\r?\n$/, '');
  if (s.length === 0) throw new WorkerConfigError(`${optionLabel(key)}: ${file} is empty`);
  if (/[\r\n]/.test(s)) throw new WorkerConfigError(`${optionLabel(key)}: ${file} must hold one line`);
  return s;
}

/** Server credentials from the TLS options: insecure without --tls-cert, TLS with it, mTLS with --tls-client-ca. */
export function serverCredentials(cfg: WorkerConfig): grpc.ServerCredentials {
  if (cfg.tlsCert === undefined || cfg.tlsKey === undefined) return grpc.ServerCredentials.createInsecure();
  const cert = readOptionFile('tlsCert', cfg.tlsCert);
  const key = readOptionFile('tlsKey', cfg.tlsKey);
  const ca = cfg.tlsClientCa !== undefined ? readOptionFile('tlsClientCa', cfg.tlsClientCa) : null;
  try {
    return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], ca !== null);
  } catch (err) {
    // the message of a PEM parse failure names no secret material
    throw new WorkerConfigError(`${optionLabel('tlsCert')} / ${optionLabel('tlsKey')}: not a usable PEM certificate and key `
      + `(${(err as Error).message})`);
  }
}

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/**
 * A server interceptor that answers UNAUTHENTICATED, before any handler runs, to calls without
 * `authorization: Bearer <token>`. Compared in constant time over SHA-256 digests (equal lengths, so
 * timingSafeEqual leaks neither the token nor its length).
 */
export function bearerAuthInterceptor(token: string, onRefused?: (method: string, why: string) => void): grpc.ServerInterceptor {
  const want = digest(token);
  return (method, call) => {
    if (OPEN_METHOD_PREFIXES.some((p) => method.path.startsWith(p))) return new grpc.ServerInterceptingCall(call);
    const listener = new grpc.ServerListenerBuilder().withOnReceiveMetadata((md, next) => {
      const values = md.get('authorization');
      let why = '';
      if (values.length === 0) why = 'missing authorization metadata';
      else if (values.length > 1) why = 'more than one authorization value';
      else {
        const m = /^Bearer (.+)$/i.exec(String(values[0]));
        if (!m) why = 'authorization is not a Bearer token';
        else if (!timingSafeEqual(digest(m[1]), want)) why = 'wrong bearer token';
      }
      if (why === '') { next(md); return; }
      onRefused?.(method.path, why);
      call.sendStatus({ code: grpc.status.UNAUTHENTICATED, details: `${why} (send 'authorization: Bearer <token>')` });
    }).build();
    return new grpc.ServerInterceptingCall(call, new grpc.ResponderBuilder().withStart((next) => next(listener)).build());
  };
}
