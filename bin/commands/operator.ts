import { Option, type Command } from 'commander';

// Options only; the operator is imported inside the action so `kvfleet --help` loads no Kubernetes client.
export function registerOperator(program: Command): void {
  program.command('operator')
    .description('run the kvfleet operator: reconciles Fleet and KVBudget resources (kvfleet.io/v1alpha1)')
    .option('--kubeconfig <path>', 'kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster)')
    .option('--namespace <ns>', 'watch one namespace (default: all)')
    .option('--metrics-port <n>', 'Prometheus /metrics port (0 = off)', '9402')
    .option('--health-port <n>', '/healthz and /readyz port (default: beside /metrics)')
    .option('--bind-address <addr>', 'address the HTTP endpoints listen on', '0.0.0.0')
    .option('--leader-elect', 'elect one active replica through a coordination.k8s.io Lease ($KVFLEET_LEASE_NAME in $POD_NAMESPACE; identity $POD_NAME)', false)
    .option('--concurrency <n>', 'reconciles in parallel per controller', '2')
    .option('--resync-seconds <n>', 'reconcile every object again this often (0 = never)', '300')
    .option('--allowed-host-paths <dirs>', 'hostPath:// model sources must lie under one of these node directories (comma-separated; default: any)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'))
    .action(async (opts: { kubeconfig?: string; namespace?: string; metricsPort: string; healthPort?: string; bindAddress: string;
      leaderElect: boolean; concurrency: string; resyncSeconds: string; logLevel: string; allowedHostPaths?: string }) => {
      const { parseOperatorConfig } = await import('../../operator/config.ts');
      const { runOperator } = await import('../../operator/main.ts');
      await runOperator(parseOperatorConfig({
        kubeconfig: opts.kubeconfig, namespace: opts.namespace, metricsPort: opts.metricsPort, healthPort: opts.healthPort,
        bindAddress: opts.bindAddress, leaderElect: opts.leaderElect, concurrency: opts.concurrency, resyncSeconds: opts.resyncSeconds,
        logLevel: opts.logLevel as 'info', allowedHostPaths: opts.allowedHostPaths,
      }));
    });
}
