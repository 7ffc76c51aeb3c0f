/**
 * The sidecar-injection webhook over HTTPS (fastify). {@link buildWebhookApp} never listens (tests use
 * `app.inject()`); {@link startWebhookServer} listens with TLS and swaps in a new certificate when the files
 * change (cert-manager rotates the Secret, the kubelet updates the mounted files), without dropping requests.
 */
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Server as HttpsServer } from 'node:https';
import { dirname } from 'node:path';
import { createSecureContext } from 'node:tls';
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { WebhookError, WebhookErrorCode } from './errors.ts';
import { type LoginReviewOutcome, reviewLoginRequest } from './login-request.ts';
import type { SidecarSettings } from './patch.ts';
import { admissionReview, parseAdmissionReview, type ReviewOptions, type ReviewOutcome, reviewPod } from './review.ts';

/** Path the MutatingWebhookConfiguration calls. */
export const MUTATE_PODS_PATH = '/mutate-pods';
/** Path of the ClientLoginRequest webhook (stamps the creator's identity, keeps the spec immutable). */
export const MUTATE_LOGIN_REQUESTS_PATH = '/mutate-clientloginrequests';

/** Largest request body accepted: the API server sends whole pods (etcd's object limit is 1.5 MiB, JSON grows). */
const DEFAULT_BODY_LIMIT_BYTES = 8 * 1024 * 1024;

/** TLS settings of the webhook listener; the API server speaks TLS 1.2 and 1.3. */
const TLS_OPTIONS = { minVersion: 'TLSv1.2' } as const;

/** What {@link WebhookAppOptions.onReview} receives for every answered review. */
export interface ReviewEvent {
  outcome: ReviewOutcome;
  dryRun: boolean;
  /** Namespace and pod name (or generateName) for logs and tests; never use them as metric labels (unbounded). */
  namespace: string | undefined;
  pod: string | undefined;
  /** Handling time, seconds. */
  durationSeconds: number;
}

/** Options of {@link buildWebhookApp}. */
export interface WebhookAppOptions {
  log: Logger;
  settings: SidecarSettings;
  /** The operator's namespace: never injected. */
  ownNamespace: string;
  /** Deny invalid pods and fail closed on internal errors (chart value `webhook.strict`). Default false. */
  strict?: boolean;
  /** TLS key and certificate (PEM). Without them the app speaks plain HTTP (tests with inject()). */
  https?: { key: string | Buffer; cert: string | Buffer };
  /** Called once per answered review, e.g. to count outcomes in a metric. Must not throw (errors are ignored). */
  onReview?: (event: ReviewEvent) => void;
  /** Largest body, bytes. Default 8 MiB. */
  bodyLimitBytes?: number;
  /** The patch builder; tests inject a failing one. */
  patcher?: ReviewOptions['patcher'];
  /** HMAC key of the login stamp (`deriveLoginStampKey(signing key)`); without it login requests are refused. */
  loginStampKey?: Buffer;
  /** Called once per answered ClientLoginRequest review (metrics). Must not throw (errors are ignored). */
  onLoginReview?: (outcome: LoginReviewOutcome) => void;
}

/** The webhook as a fastify app: `POST /mutate-pods` (AdmissionReview v1) and `GET /healthz`. Never listens. */
export function buildWebhookApp(options: WebhookAppOptions): FastifyInstance {
  const log = options.log.child({ component: 'webhook' });
  const app = Fastify({
    loggerInstance: log.child({}, { level: 'warn' }),
    disableRequestLogging: true,
    bodyLimit: options.bodyLimitBytes ?? DEFAULT_BODY_LIMIT_BYTES,
    ...(options.https ? { https: { key: options.https.key, cert: options.https.cert, ...TLS_OPTIONS } } : {}),
  }) as unknown as FastifyInstance;

  const reviewOptions: ReviewOptions = {
    settings: options.settings,
    ownNamespace: options.ownNamespace,
    strict: options.strict ?? false,
    ...(options.patcher ? { patcher: options.patcher } : {}),
  };

  app.get('/healthz', async () => ({ status: 'ok' }));

  app.post(MUTATE_PODS_PATH, async (request) => {
    const started = process.hrtime.bigint();
    const admission = parseAdmissionReview(request.body);
    const result = reviewPod(admission, reviewOptions);
    const dryRun = admission.dryRun === true;
    const fields = {
      uid: admission.uid,
      namespace: admission.namespace,
      // A generateName pod has no name yet at admission: log what it will be generated from.
      pod: admission.name ?? podGenerateName(admission.object),
      operation: admission.operation,
      dryRun,
      outcome: result.outcome,
      ...(result.agentName ? { agent: result.agentName } : {}),
    };
    if (result.outcome === 'error') log.error({ ...fields, err: result.error }, 'sidecar injection failed');
    else if (result.outcome === 'invalid' || result.outcome === 'denied') log.warn({ ...fields, warnings: result.response.warnings }, 'pod annotations invalid');
    else if (result.outcome === 'injected') log.info(fields, 'sidecar injected');
    else log.debug(fields, 'pod not mutated');
    try {
      options.onReview?.({
        outcome: result.outcome,
        dryRun,
        namespace: fields.namespace,
        pod: fields.pod,
        durationSeconds: Number(process.hrtime.bigint() - started) / 1e9,
      });
    } catch {
      // Metrics must never change an admission decision.
    }
    return admissionReview(result.response);
  });

  app.post(MUTATE_LOGIN_REQUESTS_PATH, async (request) => {
    const admission = parseAdmissionReview(request.body);
    const result = reviewLoginRequest(admission, options.loginStampKey, options.ownNamespace);
    const fields = {
      uid: admission.uid,
      namespace: admission.namespace,
      operation: admission.operation,
      dryRun: admission.dryRun === true,
      outcome: result.outcome,
      // Who asked: the audit trail of a login (user names are not secrets; the request holds no credential).
      user: admission.userInfo?.username,
    };
    if (result.outcome === 'stamped') log.info(fields, 'login request stamped');
    else if (result.response.allowed) log.debug(fields, 'login request admitted unchanged');
    else log.warn({ ...fields, message: result.response.status?.message }, 'login request refused');
    try {
      options.onLoginReview?.(result.outcome);
    } catch {
      // Metrics must never change an admission decision.
    }
    return admissionReview(result.response);
  });

  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({ code: WebhookErrorCode.NOT_FOUND, message: `no route ${request.method} ${request.url.split('?')[0]}` });
  });

  app.setErrorHandler((error: FastifyError | WebhookError, _request, reply) => {
    if (error instanceof WebhookError) return reply.code(error.statusCode).send(error.toJSON());
    const status = typeof error.statusCode === 'number' ? error.statusCode : 500;
    // Fastify's own 4xx: unparseable JSON, wrong content type, body too large.
    if (status >= 400 && status < 500) return reply.code(status).send({ code: WebhookErrorCode.BAD_REQUEST, message: error.message });
    log.error({ err: error }, 'webhook request failed');
    return reply.code(500).send(new WebhookError(WebhookErrorCode.INTERNAL, 'internal').toJSON());
  });

  return app;
}

function podGenerateName(object: unknown): string | undefined {
  if (typeof object !== 'object' || object === null) return undefined;
  const metadata = (object as { metadata?: { generateName?: unknown } }).metadata;
  return typeof metadata?.generateName === 'string' ? metadata.generateName : undefined;
}

/** Options of {@link startWebhookServer}. */
export interface StartWebhookOptions extends Omit<WebhookAppOptions, 'https'> {
  /** Listen address. Default `0.0.0.0`. */
  host?: string;
  /** Listen port; 0 picks a free one. */
  port: number;
  /** PEM certificate (chain) file, e.g. the mounted `tls.crt` of the webhook Secret. */
  certFile: string;
  /** PEM private key file (`tls.key`). */
  keyFile: string;
  /** Re-read interval of the files, ms, besides watching their directories. Default 10000. */
  certPollMs?: number;
}

/** A listening webhook server. */
export interface WebhookServer {
  app: FastifyInstance;
  /** The port actually bound. */
  port: number;
  /** `https://HOST:PORT`. */
  url: string;
  /**
   * Re-reads the files now; resolves true when a new, valid pair was loaded, false when nothing changed or the
   * pair is invalid (half-rotated: key and certificate do not match yet), in which case the old one stays.
   */
  reloadCertificate(): Promise<boolean>;
  /** Stops watching and closes the listener. */
  close(): Promise<void>;
}

interface KeyPair {
  key: string;
  cert: string;
}

async function readKeyPair(certFile: string, keyFile: string): Promise<KeyPair> {
  const [cert, key] = await Promise.all([readFile(certFile, 'utf8'), readFile(keyFile, 'utf8')]);
  // Throws on a key that does not match the certificate, or on unparsable PEM.
  createSecureContext({ key, cert, ...TLS_OPTIONS });
  return { key, cert };
}

/**
 * Starts the webhook with TLS from `certFile`/`keyFile` and reloads them when they change.
 * Throws {@link WebhookError} `NL_ERR_WEBHOOK_TLS` when the files cannot be read or do not form a valid pair.
 */
export async function startWebhookServer(options: StartWebhookOptions): Promise<WebhookServer> {
  const log = options.log.child({ component: 'webhook' });
  const { certFile, keyFile } = options;
  let current: KeyPair;
  try {
    current = await readKeyPair(certFile, keyFile);
  } catch (error) {
    throw new WebhookError(WebhookErrorCode.TLS, `cannot load the webhook certificate ${certFile} and key ${keyFile}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const app = buildWebhookApp({ ...options, https: current });
  const server = app.server as unknown as HttpsServer;

  let reloading: Promise<boolean> | undefined;
  const reloadOnce = async (): Promise<boolean> => {
    let next: KeyPair;
    try {
      next = await readKeyPair(certFile, keyFile);
    } catch (error) {
      // Mid-rotation (one file written, the other not yet) or briefly missing: keep serving the old pair.
      log.debug({ err: error }, 'webhook certificate not reloadable yet');
      return false;
    }
    if (next.cert === current.cert && next.key === current.key) return false;
    server.setSecureContext({ ...next, ...TLS_OPTIONS });
    current = next;
    log.info({ event: 'webhook-certificate-reloaded' }, 'webhook certificate reloaded');
    return true;
  };
  const reloadCertificate = (): Promise<boolean> => {
    // One reload at a time; a call during a reload waits for it and then reads again.
    const run = (reloading ?? Promise.resolve(false)).then(reloadOnce, reloadOnce);
    reloading = run;
    return run;
  };

  let debounce: NodeJS.Timeout | undefined;
  const schedule = () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => void reloadCertificate(), 100);
  };
  // Watch the directories, not the files: a mounted Secret is updated by swapping a symlink (`..data`), and
  // writers rename new files into place; both replace the inode a file watch would follow.
  const watchers: FSWatcher[] = [];
  for (const dir of new Set([dirname(certFile), dirname(keyFile)])) {
    try {
      const watcher = watch(dir, { persistent: false }, schedule);
      watcher.on('error', () => undefined);
      watchers.push(watcher);
    } catch (error) {
      log.warn({ err: error, dir }, 'cannot watch the webhook certificate directory; polling only');
    }
  }
  const poll = setInterval(() => void reloadCertificate(), options.certPollMs ?? 10_000);
  poll.unref();
  app.addHook('onClose', async () => {
    clearInterval(poll);
    clearTimeout(debounce);
    for (const w of watchers) w.close();
  });

  const host = options.host ?? '0.0.0.0';
  try {
    await app.listen({ host, port: options.port });
  } catch (error) {
    await app.close();
    throw error;
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  log.info({ event: 'webhook-listening', port }, 'webhook listening');
  return {
    app,
    port,
    url: `https://${host.includes(':') ? `[${host}]` : host}:${port}`,
    reloadCertificate,
    close: () => app.close(),
  };
}
