// Bearer-token auth and TLS, end to end over real gRPC: a missing or wrong token is UNAUTHENTICATED on every kvfleet
// method while health stays open for kubelet probes; TLS with a certificate generated here by openssl (and mutual TLS
// with a client CA) serves a real stream, and a plaintext or certificate-less client is refused; secrets never reach
// the log, request ids do; unreadable secret files fail at start naming the option.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { generationClient, workerClient, type WorkerClient } from '../../proto/index.ts';
import { parseWorkerConfig, WorkerConfigError } from '../../worker/config.ts';
import { startWorker } from '../../worker/server.ts';
import { check, generate, greedy, healthClient, inProcessWorker, tinyModel } from './helpers.ts';
import { makeCerts } from '../harness/certs.ts';

let model: ReturnType<typeof tinyModel>;
let dir: string;
const TOKEN = 's3cret-token-7f1e0c';
beforeAll(() => {
  model = tinyModel();
  dir = mkdtempSync(path.join(os.tmpdir(), 'kvf-sec-'));
  writeFileSync(path.join(dir, 'token'), `${TOKEN}\n`);  // a trailing newline, as a Kubernetes Secret may carry
});
afterAll(() => { model?.cleanup(); if (dir) rmSync(dir, { recursive: true, force: true }); });

const withToken = (token: string): grpc.Interceptor => (options, next) => new grpc.InterceptingCall(next(options), {
  start(metadata, listener, nextStart) { metadata.set('authorization', `Bearer ${token}`); nextStart(metadata, listener); },
});

const getCapacity = (wc: WorkerClient) => new Promise<grpc.ServiceError | null>((resolve) => wc.GetCapacity({}, (e) => resolve(e)));
const drainCall = (wc: WorkerClient) => new Promise<grpc.ServiceError | null>((resolve) => wc.Drain({}, (e) => resolve(e)));
const undrainCall = (wc: WorkerClient) => new Promise<grpc.ServiceError | boolean>((resolve) => wc.Undrain({}, (e, r) => resolve(e ?? r!.admitting === true)));

describe('bearer-token auth', () => {
  it('missing or wrong token: UNAUTHENTICATED on Generate, GetCapacity and Drain; health stays open; the right token is served', async () => {
    const lines: string[] = [];
    const sink = new Writable({ write(chunk: Buffer, _enc, cb) { lines.push(chunk.toString()); cb(); } });
    const cfg = parseWorkerConfig({ model: model.dir, port: 0, numPages: 1024, metricsPort: 0, authTokenFile: path.join(dir, 'token'), logLevel: 'debug' });
    const w = await startWorker(cfg, { logger: pino({ level: 'debug' }, sink) });
    const bare = { gen: generationClient(w.address), wc: workerClient(w.address) };
    const wrong = { interceptors: [withToken('not-the-token')] };
    const bad = { gen: generationClient(w.address, grpc.credentials.createInsecure(), wrong), wc: workerClient(w.address, grpc.credentials.createInsecure(), wrong) };
    const right = { interceptors: [withToken(TOKEN)] };
    const good = { gen: generationClient(w.address, grpc.credentials.createInsecure(), right), wc: workerClient(w.address, grpc.credentials.createInsecure(), right) };
    const h = healthClient(w.address);
    try {
      for (const c of [bare, bad]) {
        const r = await generate(c.gen, { request_id: 'no-entry', text: 'hello', sampling: greedy(3) });
        expect(r.error?.code).toBe(grpc.status.UNAUTHENTICATED);
        expect(r.tokens).toEqual([]);
        expect((await getCapacity(c.wc))?.code).toBe(grpc.status.UNAUTHENTICATED);
        expect((await drainCall(c.wc))?.code).toBe(grpc.status.UNAUTHENTICATED);
      }
      expect(w.draining).toBe(false);  // the refused Drain did nothing
      expect(await check(h)).toBe('SERVING');  // kubelet's probe needs no token
      const ok = await generate(good.gen, { request_id: 'req-auth-ok', text: 'hello', sampling: greedy(3) });
      expect(ok.error).toBeUndefined();
      expect(ok.tokens).toHaveLength(3);
      expect(await getCapacity(good.wc)).toBeNull();
      const log = lines.join('');
      expect(log).toMatch(/UNAUTHENTICATED/);
      expect(log).toMatch(/"request_id":"req-auth-ok"/);
      expect(log).not.toContain(TOKEN);
      expect(log).not.toContain('not-the-token');
      // Undrain is as guarded as Drain
      expect(await drainCall(good.wc)).toBeNull();
      for (const c of [bare, bad]) expect(((await undrainCall(c.wc)) as grpc.ServiceError).code).toBe(grpc.status.UNAUTHENTICATED);
      expect(w.draining).toBe(true);
      expect(await undrainCall(good.wc)).toBe(true);
      expect(w.draining).toBe(false);
    } finally {
      for (const c of [bare, bad, good]) { c.gen.close(); c.wc.close(); }
      h.close();
      await w.shutdown({ graceMs: 0 });
    }
  });

  it('unreadable or empty secret files fail at start naming the option, never printing the content', async () => {
    const empty = path.join(dir, 'empty');
    writeFileSync(empty, '\n');
    const start = (opts: Record<string, string>) => startWorker(parseWorkerConfig({ model: model.dir, port: 0, numPages: 64, metricsPort: 0, logLevel: 'silent', ...opts }),
      { logger: pino({ level: 'silent' }) });
    await expect(start({ authTokenFile: path.join(dir, 'missing') })).rejects.toThrow(/--auth-token-file \(KVFLEET_AUTH_TOKEN_FILE\): cannot read .*missing \(ENOENT\)/);
    await expect(start({ authTokenFile: empty })).rejects.toThrow(/--auth-token-file \(KVFLEET_AUTH_TOKEN_FILE\): .* is empty/);
    await expect(start({ redis: 'redis://127.0.0.1:1', fleet: 'a/b', redisPasswordFile: path.join(dir, 'nope') }))
      .rejects.toThrow(/--redis-password-file \(KVFLEET_REDIS_PASSWORD_FILE\): cannot read/);
    await expect(start({ tlsCert: path.join(dir, 'token'), tlsKey: path.join(dir, 'token') })).rejects.toThrow(WorkerConfigError);
    await expect(start({ tlsCert: path.join(dir, 'token'), tlsKey: path.join(dir, 'token') })).rejects.not.toThrow(TOKEN);
  });
});

describe('TLS', () => {
  let certs: ReturnType<typeof makeCerts>;
  beforeAll(() => { certs = makeCerts(); });
  afterAll(() => { if (certs) rmSync(certs.dir, { recursive: true, force: true }); });

  it('serves a stream over TLS with a test certificate (and the token); a plaintext client is refused', async () => {
    const ca = readFileSync(certs.ca);
    const t = await inProcessWorker(model.dir, { tlsCert: certs.cert, tlsKey: certs.key, authTokenFile: path.join(dir, 'token') },
      { creds: grpc.credentials.createSsl(ca), clientOptions: { interceptors: [withToken(TOKEN)] } });
    const plain = generationClient(t.addr);
    try {
      const r = await generate(t.gen, { text: 'over tls', sampling: greedy(5) });
      expect(r.error).toBeUndefined();
      expect(r.tokens).toHaveLength(5);
      expect(r.last?.finish_reason).toBe('LENGTH');
      const refused = await generate(plain, { text: 'in the clear', sampling: greedy(2) }, { deadlineMs: 3000 });
      expect(refused.error).toBeDefined();
      expect([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]).toContain(refused.error!.code);
      // health over TLS, without a token
      const h = healthClient(t.addr, grpc.credentials.createSsl(ca));
      expect(await check(h)).toBe('SERVING');
      h.close();
    } finally {
      plain.close();
      await t.stop();
    }
  });

  it('mutual TLS: a client without a certificate from the client CA is refused, one with it is served', async () => {
    const ca = readFileSync(certs.ca);
    const t = await inProcessWorker(model.dir, { tlsCert: certs.cert, tlsKey: certs.key, tlsClientCa: certs.ca },
      { creds: grpc.credentials.createSsl(ca, readFileSync(certs.clientKey), readFileSync(certs.clientCert)) });
    const anonymous = generationClient(t.addr, grpc.credentials.createSsl(ca));
    try {
      const r = await generate(t.gen, { text: 'mutual', sampling: greedy(4) });
      expect(r.error).toBeUndefined();
      expect(r.tokens).toHaveLength(4);
      const refused = await generate(anonymous, { text: 'who am I', sampling: greedy(2) }, { deadlineMs: 3000 });
      expect(refused.error).toBeDefined();
      expect(refused.tokens).toEqual([]);
    } finally {
      anonymous.close();
      await t.stop();
    }
  });
});
