#!/usr/bin/env node
/**
 * narrowlink-operator: reconciles NarrowlinkAgents and AccessPolicies into the gateway config Secret,
 * cert-manager Certificates and agent token Secrets. Replicas campaign for a Lease; only the leader
 * runs the control loop, and a leader that loses the Lease exits so it can never write as a follower.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
// The config module alone: the package index would load every generated API client (see gateway/src/kube.ts).
import { KubeConfig } from '@kubernetes/client-node/dist/config.js';
import { LeaderElector, podNamespace, RestKubeClient } from '@narrowlink/kube';
import { DEFAULT_GATEWAY_CONFIG_SECRET_NAME, type GatewayTokenRules, parseGatewayTokenRules } from '@narrowlink/protocol';
import Fastify from 'fastify';
import { pino } from 'pino';
import { Operator } from './controller.ts';
import { OperatorError, OperatorErrorCode } from './errors.ts';
import { deriveLoginStampKey } from './login-stamp.ts';
import { createOperatorMetrics } from './metrics.ts';
import { DEFAULT_LOGIN_SETTINGS, type LoginSettings, MAX_LOGIN_TOKEN_TTL_SECONDS } from './reconcilers/client-login/desired.ts';
import { ensureSigningKey } from './signing-key.ts';
import { WEBHOOK_CLI_OPTIONS, WEBHOOK_HELP, resolveWebhookConfig } from './webhook/config.ts';
import { startWebhookServer, type WebhookServer } from './webhook/server.ts';
import { ensureWebhookCertificate } from './webhook-ca.ts';
import { GatewayTlsManager } from './gateway-tls.ts';
import { CaBundleDistributor } from './ca-bundle-distributor.ts';

/** How often each replica re-checks the webhook certificate Secret without cert-manager, ms. */
const WEBHOOK_CERT_RECHECK_MS = 10 * 60 * 1000;

const WEBHOOK_CA_HELP = `
Webhook TLS without cert-manager:
  --webhook-ca-secret NAME       make (once) a CA and serving certificate in this Secret and put the CA
                                 into the webhook configuration's caBundle (chart: certManager.enabled=false)
  --webhook-configuration NAME   MutatingWebhookConfiguration to patch (default narrowlink-sidecar-injector)
  --webhook-service NAME         Service the certificate is for (default narrowlink-operator)

Gateway TLS and CA distribution without cert-manager (ADR 0015):
  --gateway-tls-secret NAME      issue the gateway's serving certificate from the operator's CA into this
                                 Secret and renew it (chart: no cert-manager and no gateway.tls.existingSecret)
  --ca-secret NAME               the operator's kept CA Secret, made when absent; it signs the gateway and
                                 (with --webhook-ca-secret) the webhook certificates (default narrowlink-ca)
  --gateway-service NAME         the gateway Service whose names the certificate carries (default narrowlink-gateway)
  --gateway-tls-extra-sans LIST  further SANs, comma-separated DNS names or IP addresses
  --distribute-ca-from NAME      copy ca.crt of this Secret (the gateway's TLS Secret) into the ConfigMap
                                 --sidecar-ca-configmap of every namespace with injected pods
`;

const HELP = `narrowlink-operator: the Narrowlink control plane for Kubernetes

Options (each also as env NARROWLINK_OPERATOR_<NAME>):
  --namespace NS                 namespace of the operator, gateway config Secret and Lease (default: this pod's)
  --gateway-config-secret NAME   compiled gateway config Secret (default ${DEFAULT_GATEWAY_CONFIG_SECRET_NAME})
  --signing-key-secret NAME      Ed25519 signing key Secret, created when absent (default narrowlink-signing-key)
  --default-issuer NAME[/KIND]   cert-manager issuer for published domains without spec.issuerRef (KIND default ClusterIssuer)
  --allow-cross-namespace-policies  let a policy reach agents in other namespaces
  --gateway-token-rules JSON     the gateway config's tokens section: {"maxLifetimeSeconds":{"client":N,"agent":N},
                                 "deny":{"jti":[...],"sub":[...]}} (a change closes the sessions it denies)
  --login-token-ttl-seconds N    cap and default lifetime of tokens issued to ClientLoginRequests, 60-86400 (default 28800)
  --login-rate-limit-per-minute N  tokens one user may obtain per minute (burst the same; 0: no limit; default 10)
  --discovery-configmap NAME     keep ca.crt of this ConfigMap (narrowlink login's discovery) equal to ...
  --discovery-ca-secret NAME     ... ca.crt of this Secret (the gateway's TLS Secret); both or neither
  --leader-election BOOL         campaign for the Lease before acting (default true)
  --lease-name NAME              leader election Lease (default narrowlink-operator)
  --lease-duration-seconds N     how long a Lease holds without renewal before a standby takes over (default 15)
  --retry-period-ms N            how often the leader renews and candidates retry, ms (default 2000)
  --identity ID                  this replica's name in the Lease (default: hostname)
  --listen HOST:PORT             health and metrics (default 0.0.0.0:8080): /healthz /readyz /metrics
  --kubeconfig FILE              credentials (default: in-cluster, or $KUBECONFIG)
  --log-level LEVEL              (default info)
  -h, --help
`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      namespace: { type: 'string' },
      'gateway-config-secret': { type: 'string' },
      'signing-key-secret': { type: 'string' },
      'default-issuer': { type: 'string' },
      'allow-cross-namespace-policies': { type: 'boolean' },
      'gateway-token-rules': { type: 'string' },
      'login-token-ttl-seconds': { type: 'string' },
      'login-rate-limit-per-minute': { type: 'string' },
      'discovery-configmap': { type: 'string' },
      'discovery-ca-secret': { type: 'string' },
      'leader-election': { type: 'string' },
      'lease-name': { type: 'string' },
      'lease-duration-seconds': { type: 'string' },
      'retry-period-ms': { type: 'string' },
      identity: { type: 'string' },
      listen: { type: 'string' },
      kubeconfig: { type: 'string' },
      'log-level': { type: 'string' },
      'webhook-ca-secret': { type: 'string' },
      'webhook-configuration': { type: 'string' },
      'webhook-service': { type: 'string' },
      'gateway-tls-secret': { type: 'string' },
      'ca-secret': { type: 'string' },
      'gateway-service': { type: 'string' },
      'gateway-tls-extra-sans': { type: 'string' },
      'distribute-ca-from': { type: 'string' },
      ...WEBHOOK_CLI_OPTIONS,
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP + WEBHOOK_HELP + WEBHOOK_CA_HELP);
    return;
  }
  const env = (name: string): string | undefined => process.env[`NARROWLINK_OPERATOR_${name.toUpperCase().replaceAll('-', '_')}`];
  const opt = (name: keyof typeof values): string | undefined => (typeof values[name] === 'string' ? (values[name] as string) : env(name));
  const log = pino({ level: opt('log-level') ?? 'info', base: { service: 'operator' }, redact: ['token', '*.token', 'data', '*.data'] });
  const events = log.child({}, { level: 'info' });
  const namespace = opt('namespace') ?? podNamespace();
  if (!namespace) throw new OperatorError(OperatorErrorCode.USAGE, '--namespace is required outside a pod');
  const issuer = opt('default-issuer');
  const [issuerName, issuerKind] = issuer ? issuer.split('/') : [];
  const integerFlag = (name: 'login-token-ttl-seconds' | 'login-rate-limit-per-minute', min: number, max: number, fallback: number): number => {
    const text = opt(name);
    if (text === undefined || text === '') return fallback;
    const value = Number(text);
    if (!/^\d+$/.test(text) || value < min || value > max) throw new OperatorError(OperatorErrorCode.USAGE, `--${name} wants an integer ${min}-${max}, got "${text}"`);
    return value;
  };
  const login: LoginSettings = {
    ...DEFAULT_LOGIN_SETTINGS,
    tokenTtlSeconds: integerFlag('login-token-ttl-seconds', 60, MAX_LOGIN_TOKEN_TTL_SECONDS, DEFAULT_LOGIN_SETTINGS.tokenTtlSeconds),
    rateLimitPerMinute: integerFlag('login-rate-limit-per-minute', 0, 1_000_000, DEFAULT_LOGIN_SETTINGS.rateLimitPerMinute),
  };
  const gatewayTokenRulesText = opt('gateway-token-rules');
  let gatewayTokenRules: GatewayTokenRules | undefined;
  try {
    gatewayTokenRules = gatewayTokenRulesText ? parseGatewayTokenRules(gatewayTokenRulesText) : undefined;
  } catch (error) {
    throw new OperatorError(OperatorErrorCode.USAGE, `--gateway-token-rules: ${(error as Error).message}`, { cause: error });
  }
  const discoveryConfigMap = opt('discovery-configmap') || undefined;
  const discoveryCaSecret = opt('discovery-ca-secret') || undefined;
  if ((discoveryConfigMap === undefined) !== (discoveryCaSecret === undefined)) {
    throw new OperatorError(OperatorErrorCode.USAGE, '--discovery-configmap and --discovery-ca-secret go together');
  }
  const gatewayTlsSecret = opt('gateway-tls-secret') || undefined;
  const extraSans = (opt('gateway-tls-extra-sans') ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  for (const san of extraSans) {
    if (!/^[A-Za-z0-9*]([A-Za-z0-9.:*-]*[A-Za-z0-9])?$/.test(san)) {
      throw new OperatorError(OperatorErrorCode.USAGE, `--gateway-tls-extra-sans: ${JSON.stringify(san)} is not a DNS name or IP address`);
    }
  }
  const distributeCaFrom = opt('distribute-ca-from') || undefined;
  const caConfigMap = opt('sidecar-ca-configmap') || undefined;
  if (distributeCaFrom && !caConfigMap) {
    throw new OperatorError(OperatorErrorCode.USAGE, '--distribute-ca-from needs --sidecar-ca-configmap (the ConfigMap to write)');
  }
  const kc = new KubeConfig();
  const kubeconfig = opt('kubeconfig');
  if (kubeconfig) kc.loadFromFile(kubeconfig);
  else kc.loadFromDefault();
  const client = await RestKubeClient.fromKubeConfig(kc);
  const metrics = createOperatorMetrics();
  const identity = opt('identity') ?? hostname();

  let operator: Operator | undefined;
  let gatewayTls: GatewayTlsManager | undefined;
  let caBundles: CaBundleDistributor | undefined;
  let ready = false;
  let stopping = false;
  const app = Fastify({ loggerInstance: log.child({ component: 'http' }, { level: 'warn' }) });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => (ready ? { status: 'ready', leader: operator !== undefined } : reply.code(503).send({ status: 'starting' })));
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  // The webhook serves on every replica (the Service balances admission calls), leader or not.
  const webhookConfig = resolveWebhookConfig((flag) => opt(flag), namespace);
  let webhook: WebhookServer | undefined;
  let webhookCertTimer: NodeJS.Timeout | undefined;
  if (webhookConfig) {
    let { certFile, keyFile } = webhookConfig;
    const caSecret = opt('webhook-ca-secret');
    if (caSecret) {
      // No cert-manager: our own CA, kept in a Secret, trusted through caBundle.
      const caOptions = {
        namespace,
        secretName: caSecret,
        serviceName: opt('webhook-service') ?? 'narrowlink-operator',
        webhookConfiguration: opt('webhook-configuration') ?? 'narrowlink-sidecar-injector',
        // Issued from the operator's kept CA, so renewals do not change caBundle (ADR 0015).
        caSecretName: opt('ca-secret') ?? 'narrowlink-ca',
      };
      const serving = await ensureWebhookCertificate(client, { ...caOptions, nowMs: Date.now() });
      const dir = mkdtempSync(join(tmpdir(), 'narrowlink-webhook-'));
      const servingCertFile = join(dir, 'tls.crt');
      const servingKeyFile = join(dir, 'tls.key');
      certFile = servingCertFile;
      keyFile = servingKeyFile;
      writeFileSync(servingKeyFile, serving.keyPem, { mode: 0o600 });
      writeFileSync(servingCertFile, serving.certPem);
      // Every replica re-reads the Secret on a timer: it renews the certificate when due (30 days left) and picks
      // up what another replica wrote, so a long-running Pod never serves an expired certificate or one whose CA
      // is no longer in caBundle. The server reloads changed files by itself.
      let servedCertPem = serving.certPem;
      webhookCertTimer = setInterval(() => {
        ensureWebhookCertificate(client, { ...caOptions, nowMs: Date.now() })
          .then((current) => {
            if (current.certPem === servedCertPem) return;
            writeFileSync(servingKeyFile, current.keyPem, { mode: 0o600 });
            writeFileSync(servingCertFile, current.certPem);
            servedCertPem = current.certPem;
            events.info({ event: 'webhook-certificate-renewed', notAfter: new Date(current.notAfterMs).toISOString() }, 'webhook serving certificate renewed');
          })
          .catch((error: unknown) => log.warn({ err: (error as Error).message }, 'could not check the webhook certificate; will retry'));
      }, WEBHOOK_CERT_RECHECK_MS);
      webhookCertTimer.unref();
    }
    // The login webhook stamps requests with an HMAC keyed from the signing key, which the leader verifies.
    const signingKey = await ensureSigningKey(client, namespace, opt('signing-key-secret') ?? 'narrowlink-signing-key');
    webhook = await startWebhookServer({
      loginStampKey: deriveLoginStampKey(signingKey.privateKeyPem),
      log,
      settings: webhookConfig.settings,
      ownNamespace: namespace,
      strict: webhookConfig.strict,
      host: webhookConfig.host,
      port: webhookConfig.port,
      certFile,
      keyFile,
      onLoginReview: (outcome) => metrics.loginReviews.inc({ outcome }),
    });
    events.info({ event: 'webhook-listening', url: webhook.url }, 'sidecar-injection webhook listening');
  }

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
        gatewayConfigSecret: opt('gateway-config-secret') ?? DEFAULT_GATEWAY_CONFIG_SECRET_NAME,
        allowCrossNamespacePolicies: values['allow-cross-namespace-policies'] === true || env('allow-cross-namespace-policies') === 'true',
        ...(gatewayTokenRules ? { gatewayTokenRules } : {}),
        login,
        ...(discoveryConfigMap && discoveryCaSecret ? { discovery: { configMap: discoveryConfigMap, caSecret: discoveryCaSecret } } : {}),
        ...(issuerName ? { defaultIssuerRef: { name: issuerName, kind: issuerKind ?? 'ClusterIssuer', group: 'cert-manager.io' } } : {}),
      },
    });
    if (gatewayTlsSecret) {
      // Without cert-manager: the gateway Pod waits (ContainerCreating) for this Secret, so it comes first, before
      // the control loop waits for its caches.
      gatewayTls = new GatewayTlsManager({
        client,
        log: events,
        settings: {
          namespace,
          caSecretName: opt('ca-secret') ?? 'narrowlink-ca',
          tlsSecretName: gatewayTlsSecret,
          serviceName: opt('gateway-service') ?? 'narrowlink-gateway',
          extraSans,
        },
      });
      await gatewayTls.start();
    }
    await operator.start();
    if (distributeCaFrom && caConfigMap) {
      caBundles = new CaBundleDistributor({
        client,
        log,
        settings: { namespace, sourceSecret: distributeCaFrom, configMap: caConfigMap, ownerWebhookConfiguration: opt('webhook-configuration') ?? 'narrowlink-sidecar-injector' },
      });
      await caBundles.start();
    }
    events.info({ event: 'leading', identity }, 'leader: control loop running');
  };

  const useElection = (opt('leader-election') ?? 'true') !== 'false';
  const positive = (name: 'lease-duration-seconds' | 'retry-period-ms'): number | undefined => {
    const text = opt(name);
    if (text === undefined) return undefined;
    const value = Number(text);
    if (!Number.isInteger(value) || value <= 0) throw new OperatorError(OperatorErrorCode.USAGE, `--${name} wants a positive integer, got "${text}"`);
    return value;
  };
  const leaseDurationSeconds = positive('lease-duration-seconds');
  const retryPeriodMs = positive('retry-period-ms');
  let elector: LeaderElector | undefined;
  if (useElection) {
    elector = new LeaderElector(client, {
      namespace,
      name: opt('lease-name') ?? 'narrowlink-operator',
      identity,
      // The leader must give up before its Lease can expire (client-go keeps renewDeadline < leaseDuration).
      ...(leaseDurationSeconds !== undefined
        ? { leaseDurationSeconds, renewDeadlineMs: Math.min(10_000, Math.floor((leaseDurationSeconds * 1000 * 2) / 3)) }
        : {}),
      ...(retryPeriodMs !== undefined ? { retryPeriodMs } : {}),
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
    clearInterval(webhookCertTimer);
    gatewayTls?.stop();
    caBundles?.stop();
    await operator?.stop();
    await webhook?.close();
    await elector?.stop(); // releases the Lease so a standby takes over at once
    await app.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

main().catch((error: unknown) => {
  // Only our own errors carry a Narrowlink code worth printing (Node's parseArgs errors have a `code` too).
  const code = error instanceof OperatorError ? `${error.code}: ` : '';
  process.stderr.write(`narrowlink-operator: ${code}${(error as Error).message}\n`);
  process.exit(2);
});
