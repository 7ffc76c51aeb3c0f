#!/usr/bin/env node
/**
 * narrowlink-operator: reconciles NarrowlinkAgents and AccessPolicies into the gateway config Secret,
 * cert-manager Certificates and agent token Secrets. Replicas campaign for a Lease; only the leader
 * runs the control loop, and a leader that loses the Lease exits so it can never write as a follower.
 */
import { hostname } from 'node:os';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { LeaderElector, RestKubeClient } from '@narrowlink/kube';
import Fastify from 'fastify';
import { pino } from 'pino';
import { Operator } from './controller.ts';
import { createOperatorMetrics } from './metrics.ts';
import { ensureSigningKey } from './signing-key.ts';

const HELP = `narrowlink-operator: the Narrowlink control plane for Kubernetes

Options (each also as env NARROWLINK_OPERATOR_<NAME>):
  --namespace NS                 namespace of the operator, gateway config Secret and Lease (default: this pod's)
  --gateway-config-secret NAME   compiled gateway config Secret (default narrowlink-gateway-config)
  --signing-key-secret NAME      Ed25519 signing key Secret, created when absent (default narrowlink-signing-key)
  --default-issuer NAME[/KIND]   cert-manager issuer for published domains without spec.issuerRef (KIND default ClusterIssuer)
  --allow-cross-namespace-policies  let a policy reach agents in other namespaces
  --leader-election BOOL         campaign for the Lease before acting (default true)
  --lease-name NAME              leader election Lease (default narrowlink-operator)
  --identity ID                  this replica's name in the Lease (default: hostname)
  --listen HOST:PORT             health and metrics (default 0.0.0.0:8080): /healthz /readyz /metrics
  --kubeconfig FILE              credentials (default: in-cluster, or $KUBECONFIG)
  --log-level LEVEL              (default info)
  -h, --help
`;

function podNamespace(): string | undefined {
  try {
    return readFileSync('/var/run/secrets/kubernetes.io/serviceaccount/namespace', 'utf8').trim();
  } catch {
    return process.env.POD_NAMESPACE;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      namespace: { type: 'string' },
      'gateway-config-secret': { type: 'string' },
      'signing-key-secret': { type: 'string' },
      'default-issuer': { type: 'string' },
      'allow-cross-namespace-policies': { type: 'boolean' },
      'leader-election': { type: 'string' },
      'lease-name': { type: 'string' },
      identity: { type: 'string' },
      listen: { type: 'string' },
      kubeconfig: { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const env = (name: string): string | undefined => process.env[`NARROWLINK_OPERATOR_${name.toUpperCase().replaceAll('-', '_')}`];
  const opt = (name: keyof typeof values): string | undefined => (typeof values[name] === 'string' ? (values[name] as string) : env(name));
  const log = pino({ level: opt('log-level') ?? 'info', base: { component: 'operator' }, redact: ['token', '*.token', 'data', '*.data'] });
  const events = log.child({}, { level: 'info' });
  const namespace = opt('namespace') ?? podNamespace();
  if (!namespace) throw new Error('NL_ERR_OPERATOR_USAGE: --namespace is required outside a pod');
  const issuer = opt('default-issuer');
  const [issuerName, issuerKind] = issuer ? issuer.split('/') : [];
  const kc = new KubeConfig();
  const kubeconfig = opt('kubeconfig');
  if (kubeconfig) kc.loadFromFile(kubeconfig);
  else kc.loadFromDefault();
  const client = await RestKubeClient.fromKubeConfig(kc);
  const metrics = createOperatorMetrics();
  const identity = opt('identity') ?? hostname();

  let operator: Operator | undefined;
  let ready = false;
  let stopping = false;
  const app = Fastify({ loggerInstance: log.child({ component: 'http' }, { level: 'warn' }) });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => (ready ? { status: 'ready', leader: operator !== undefined } : reply.code(503).send({ status: 'starting' })));
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  const listen = opt('listen') ?? '0.0.0.0:8080';
  const split = listen.lastIndexOf(':');
  await app.listen({ host: listen.slice(0, split), port: Number(listen.slice(split + 1)) });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : 0;

  const startLeading = async (): Promise<void> => {
    metrics.leader.set(1);
    const signingKey = await ensureSigningKey(client, namespace, opt('signing-key-secret') ?? 'narrowlink-signing-key');
    operator = new Operator({
      client,
      log,
      metrics,
      signingKey,
      settings: {
        namespace,
        gatewayConfigSecret: opt('gateway-config-secret') ?? 'narrowlink-gateway-config',
        allowCrossNamespacePolicies: values['allow-cross-namespace-policies'] === true || env('allow-cross-namespace-policies') === 'true',
        ...(issuerName ? { defaultIssuerRef: { name: issuerName, kind: issuerKind ?? 'ClusterIssuer', group: 'cert-manager.io' } } : {}),
      },
    });
    await operator.start();
    events.info({ event: 'leading', identity }, 'leader: control loop running');
  };

  const useElection = (opt('leader-election') ?? 'true') !== 'false';
  let elector: LeaderElector | undefined;
  if (useElection) {
    elector = new LeaderElector(client, {
      namespace,
      name: opt('lease-name') ?? 'narrowlink-operator',
      identity,
      log,
      onStartedLeading: () => {
        startLeading().catch((error: unknown) => {
          log.fatal({ err: error }, 'could not start the control loop');
          process.exit(1);
        });
      },
      onStoppedLeading: () => {
        metrics.leader.set(0);
        if (stopping) return;
        // Never keep acting without the Lease: exit and let the Deployment restart us as a candidate.
        log.warn({ identity }, 'lost the leader Lease; exiting');
        process.exit(1);
      },
    }).start();
  } else await startLeading();
  ready = true;
  events.info({ event: 'ready', identity, port, leaderElection: useElection }, 'operator started');

  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'operator stopping');
    await operator?.stop();
    await elector?.stop(); // releases the Lease so a standby takes over at once
    await app.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

main().catch((error: unknown) => {
  process.stderr.write(`narrowlink-operator: ${(error as Error).message}\n`);
  process.exit(2);
});
