import type { Command } from 'commander';

export function registerRouter(program: Command): void {
  program.command('router')
    .description('serve Generation in front of a fleet: place each request on the worker with the most compressed KV room')
    .option('--host <host>', 'address to bind (env KVFLEET_ROUTER_HOST)')
    .option('--port <n>', 'gRPC port (0 = a free one; env KVFLEET_ROUTER_PORT)')
    .option('--redis <url>', 'the ledger: redis://host:port (env KVFLEET_REDIS_URL)')
    .option('--redis-password-file <file>', 'Redis password, read from a file (env KVFLEET_REDIS_PASSWORD_FILE)')
    .option('--fleet <ns/name>', 'the fleet whose workers to route to (env KVFLEET_FLEET)')
    .option('--policy <policy>', 'least-prefill | most-free | best-fit | p2c (default least-prefill)')
    .option('--tokenizer <dir>', 'model directory holding tokenizer.json (needed for text prompts; env KVFLEET_TOKENIZER)')
    .option('--max-queue-ms <n>', 'wait this long for a worker with room before RESOURCE_EXHAUSTED (default 2000)')
    .option('--max-attempts <n>', 'workers tried per request, migrations included (default 4)')
    .option('--worker-keepalive-ms <n>', 'ping each worker connection after this long without one (default 10000)')
    .option('--worker-keepalive-timeout-ms <n>', 'a worker connection whose ping goes unanswered this long fails; its streams move (default 5000)')
    .option('--worker-gone-ms <n>', 'move the streams of a worker missing from the ledger for this long (default 2000)')
    .option('--metrics-port <n>', 'Prometheus /metrics port, 0 = off (default 9401)')
    .option('--auth-token-file <file>', 'clients must send authorization: Bearer <token in this file> (env KVFLEET_AUTH_TOKEN_FILE)')
    .option('--tls-cert <file>', 'serve TLS with this certificate (with --tls-key)')
    .option('--tls-key <file>', 'the TLS private key')
    .option('--tls-client-ca <file>', 'require client certificates signed by this CA (mutual TLS)')
    .option('--worker-token-file <file>', 'bearer token sent to workers (their --auth-token-file)')
    .option('--worker-tls-ca <file>', 'dial workers over TLS, trusting this CA')
    .option('--worker-tls-cert <file>', 'client certificate for workers that require mutual TLS (with --worker-tls-key)')
    .option('--worker-tls-key <file>', 'the client certificate key')
    .action(async (opts: Record<string, string | undefined>) => {
      const { parseRouterConfig, routerEnv } = await import('../../router/config.ts');
      const { Router } = await import('../../router/router.ts');
      const raw: Record<string, unknown> = { ...routerEnv(process.env) };
      for (const [k, v] of Object.entries(opts)) if (v !== undefined) raw[k] = v;
      for (const k of Object.keys(raw)) if (raw[k] === undefined) delete raw[k];
      const cfg = parseRouterConfig(raw);
      const router = await Router.start(cfg);
      process.stdout.write(`router ${router.id} listening on ${cfg.host}:${router.port}\n`);
      await new Promise<void>((resolve) => {
        const stop = () => { void router.close().then(resolve); };
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
    });
}
