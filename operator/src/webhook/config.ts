/**
 * The webhook's command-line surface, for operator/src/main.ts: spread {@link WEBHOOK_CLI_OPTIONS} into
 * `parseArgs`, append {@link WEBHOOK_HELP} to the help text and call {@link resolveWebhookConfig} with the
 * flag-or-env lookup main already has. The webhook is off unless `--webhook-listen` is given, so running the
 * operator outside a cluster (tests, development) needs no certificate.
 */
import { WebhookError, WebhookErrorCode } from './errors.ts';
import { DEFAULT_TOKEN_AUDIENCE, DEFAULT_TOKEN_EXPIRATION_SECONDS, type SidecarSettings, sidecarSettingsProblems } from './patch.ts';

/** `parseArgs` options of the webhook (all strings: each also comes from env NARROWLINK_OPERATOR_<NAME>). */
export const WEBHOOK_CLI_OPTIONS = {
  'webhook-listen': { type: 'string' },
  'webhook-cert-file': { type: 'string' },
  'webhook-key-file': { type: 'string' },
  'webhook-strict': { type: 'string' },
  'sidecar-image': { type: 'string' },
  'sidecar-image-pull-policy': { type: 'string' },
  'sidecar-gateway-url': { type: 'string' },
  'sidecar-ca-configmap': { type: 'string' },
  'sidecar-ca-file': { type: 'string' },
  'sidecar-cpu-request': { type: 'string' },
  'sidecar-memory-request': { type: 'string' },
  'sidecar-cpu-limit': { type: 'string' },
  'sidecar-memory-limit': { type: 'string' },
  'sidecar-token-expiration-seconds': { type: 'string' },
} as const;

/** Names of {@link WEBHOOK_CLI_OPTIONS}. */
export type WebhookFlag = keyof typeof WEBHOOK_CLI_OPTIONS;

/** Help lines for the operator's `--help`. */
export const WEBHOOK_HELP = `
Sidecar-injection webhook (off unless --webhook-listen is given):
  --webhook-listen HOST:PORT     serve POST /mutate-pods over HTTPS, e.g. 0.0.0.0:9443
  --webhook-cert-file FILE       serving certificate PEM, reloaded when it changes (default /etc/narrowlink/webhook/tls.crt)
  --webhook-key-file FILE        serving key PEM (default /etc/narrowlink/webhook/tls.key)
  --webhook-strict BOOL          deny pods with invalid narrowlink.io/* annotations (default false: admit unchanged, warn)
  --sidecar-image IMAGE          image of the injected narrowlink-agent container (required with --webhook-listen)
  --sidecar-image-pull-policy P  Always|IfNotPresent|Never (default: Kubernetes' default)
  --sidecar-gateway-url URL      gateway the sidecars dial (default wss://narrowlink-gateway.NAMESPACE.svc:443)
  --sidecar-ca-configmap NAME    ConfigMap (key ca.crt, in each pod's namespace) with the gateway CA
  --sidecar-ca-file FILE         CA bundle path inside the sidecar image (exclusive with --sidecar-ca-configmap)
  --sidecar-cpu-request Q        default 10m     ("" to omit; pods override with narrowlink.io/sidecar-cpu-request)
  --sidecar-memory-request Q     default 32Mi
  --sidecar-cpu-limit Q          default none
  --sidecar-memory-limit Q       default 128Mi
  --sidecar-token-expiration-seconds N  projected token lifetime, >= 600 (default 600)
`;

/** Everything main needs to start the webhook. */
export interface WebhookConfig {
  host: string;
  port: number;
  certFile: string;
  keyFile: string;
  strict: boolean;
  settings: SidecarSettings;
}

const PULL_POLICIES = ['Always', 'IfNotPresent', 'Never'] as const;

function fail(message: string): never {
  throw new WebhookError(WebhookErrorCode.CONFIG, message);
}

/**
 * Reads the webhook flags through `get` (flag value, else env, else undefined) and validates them.
 * Returns undefined when `--webhook-listen` is absent or `off` (webhook disabled).
 * Throws {@link WebhookError} `NL_ERR_WEBHOOK_CONFIG` naming the bad flag.
 *
 * @param namespace - the operator's namespace, for the default gateway URL.
 */
export function resolveWebhookConfig(get: (flag: WebhookFlag) => string | undefined, namespace: string): WebhookConfig | undefined {
  const listen = get('webhook-listen');
  if (listen === undefined || listen === '' || listen === 'off') return undefined;
  const split = listen.lastIndexOf(':');
  const host = listen.slice(0, split).replace(/^\[|\]$/g, '');
  const port = Number(listen.slice(split + 1));
  if (split <= 0 || host === '' || !Number.isInteger(port) || port < 0 || port > 65535) fail(`--webhook-listen ${JSON.stringify(listen)}: want HOST:PORT`);

  const strictText = get('webhook-strict') ?? 'false';
  if (strictText !== 'true' && strictText !== 'false') fail(`--webhook-strict ${JSON.stringify(strictText)}: want true or false`);

  const image = get('sidecar-image');
  if (!image) fail('--sidecar-image is required with --webhook-listen');
  const pullPolicy = get('sidecar-image-pull-policy');
  if (pullPolicy !== undefined && pullPolicy !== '' && !(PULL_POLICIES as readonly string[]).includes(pullPolicy)) {
    fail(`--sidecar-image-pull-policy ${JSON.stringify(pullPolicy)}: want ${PULL_POLICIES.join(', ')}`);
  }
  const expiration = Number(get('sidecar-token-expiration-seconds') ?? DEFAULT_TOKEN_EXPIRATION_SECONDS);
  // An empty value omits that request or limit.
  const quantity = (flag: WebhookFlag, fallback: string | undefined): string | undefined => {
    const v = get(flag) ?? fallback;
    return v === '' ? undefined : v;
  };
  const cpuRequest = quantity('sidecar-cpu-request', '10m');
  const memoryRequest = quantity('sidecar-memory-request', '32Mi');
  const cpuLimit = quantity('sidecar-cpu-limit', undefined);
  const memoryLimit = quantity('sidecar-memory-limit', '128Mi');
  const caConfigMap = get('sidecar-ca-configmap') || undefined;
  const caFile = get('sidecar-ca-file') || undefined;

  const settings: SidecarSettings = {
    image,
    ...(pullPolicy ? { imagePullPolicy: pullPolicy as SidecarSettings['imagePullPolicy'] } : {}),
    gatewayUrl: get('sidecar-gateway-url') || `wss://narrowlink-gateway.${namespace}.svc:443`,
    resources: {
      ...(cpuRequest || memoryRequest ? { requests: { ...(cpuRequest ? { cpu: cpuRequest } : {}), ...(memoryRequest ? { memory: memoryRequest } : {}) } } : {}),
      ...(cpuLimit || memoryLimit ? { limits: { ...(cpuLimit ? { cpu: cpuLimit } : {}), ...(memoryLimit ? { memory: memoryLimit } : {}) } } : {}),
    },
    ...(caConfigMap ? { caConfigMap } : {}),
    ...(caFile ? { caFile } : {}),
    tokenAudience: DEFAULT_TOKEN_AUDIENCE,
    tokenExpirationSeconds: expiration,
  };
  const problems = sidecarSettingsProblems(settings);
  if (problems.length > 0) fail(`sidecar settings: ${problems.join('; ')}`);
  return {
    host,
    port,
    certFile: get('webhook-cert-file') || '/etc/narrowlink/webhook/tls.crt',
    keyFile: get('webhook-key-file') || '/etc/narrowlink/webhook/tls.key',
    strict: strictText === 'true',
    settings,
  };
}
