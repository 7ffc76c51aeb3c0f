/**
 * The gateway CA for injected sidecars, with no per-namespace step (ADR 0015): the operator copies `ca.crt` of
 * the gateway's TLS Secret into a ConfigMap (`narrowlink-ca`, key `ca.crt`) in every namespace that runs a pod
 * with an injected sidecar (pods labelled `narrowlink.io/agent`), and keeps the copies equal to the source. The
 * webhook projects that ConfigMap `optional: true`, so a namespace the copy has not reached yet never blocks an
 * application pod. An empty `ca.crt` (the Secret has none: a publicly trusted certificate) means "system CAs".
 *
 * The copies carry an owner reference to the chart's MutatingWebhookConfiguration (cluster-scoped, deleted by
 * `helm uninstall`), so the garbage collector removes them with the release.
 */
import { Informer, type KubeClient, KubeError, type KubeObject, Resources } from '@narrowlink/kube';
import { Component, FIELD_MANAGER, LABEL_AGENT, managedLabels } from './labels.ts';
import { mutatingWebhookConfigurations } from './webhook-ca.ts';

/** Data key of the CA in the source Secret and in the copies. */
export const CA_BUNDLE_KEY = 'ca.crt';
/** How often the source Secret is compared again, ms. */
export const CA_BUNDLE_RECHECK_MS = 30_000;
/** How often every copy is written again even when nothing changed (repairs a deleted or edited copy), ms. */
export const CA_BUNDLE_REAPPLY_MS = 10 * 60 * 1000;

/** Settings of {@link CaBundleDistributor}. */
export interface CaBundleSettings {
  /** Namespace of the source Secret (the operator's). */
  namespace: string;
  /** The gateway TLS Secret whose `ca.crt` is copied. */
  sourceSecret: string;
  /** Name of the ConfigMap written into each namespace. */
  configMap: string;
  /** MutatingWebhookConfiguration the copies are owned by (garbage-collected with it); absent: no owner. */
  ownerWebhookConfiguration?: string;
}

/** The logger surface used (pino fits). */
interface Log {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

/**
 * The ConfigMap written into `namespace` (pure): `ca.crt` = `caPem`, the operator's labels, and the owner
 * reference when `owner` is known.
 */
export function caBundleConfigMap(settings: CaBundleSettings, namespace: string, caPem: string, owner: KubeObject | undefined): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: {
      name: settings.configMap,
      namespace,
      labels: managedLabels(Component.CaBundle),
      ...(owner?.metadata.uid
        ? {
            ownerReferences: [
              { apiVersion: 'admissionregistration.k8s.io/v1', kind: 'MutatingWebhookConfiguration', name: owner.metadata.name, uid: owner.metadata.uid },
            ],
          }
        : {}),
    },
    data: { [CA_BUNDLE_KEY]: caPem },
  };
}

/**
 * Watches injected pods (all namespaces, by label) and the source Secret (re-read every
 * {@link CA_BUNDLE_RECHECK_MS}); writes the ConfigMap into each namespace that has such a pod whenever the
 * namespace is new or the CA changed. Failed writes retry after `retryMs`.
 */
export class CaBundleDistributor {
  readonly #client: KubeClient;
  readonly #settings: CaBundleSettings;
  readonly #log: Log;
  readonly #recheckMs: number;
  readonly #reapplyMs: number;
  #lastReapplyMs = Date.now();
  readonly #retryMs: number;
  readonly #pods: Informer;
  /** What each namespace's copy holds (as last written or confirmed). */
  readonly #written = new Map<string, string>();
  readonly #dirty = new Set<string>();
  /** The source CA; undefined until the Secret exists. */
  #caPem: string | undefined;
  #owner: KubeObject | undefined;
  #timer: NodeJS.Timeout | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #stopped = false;
  #flushing: Promise<void> | undefined;
  #idleWaiters: Array<() => void> = [];

  constructor(options: { client: KubeClient; settings: CaBundleSettings; log: Log; recheckMs?: number; reapplyMs?: number; retryMs?: number; resyncMs?: number }) {
    this.#client = options.client;
    this.#settings = options.settings;
    this.#log = options.log;
    this.#recheckMs = options.recheckMs ?? CA_BUNDLE_RECHECK_MS;
    this.#reapplyMs = options.reapplyMs ?? CA_BUNDLE_REAPPLY_MS;
    this.#retryMs = options.retryMs ?? 5_000;
    this.#pods = new Informer(options.client, Resources.pod, {
      log: options.log,
      labelSelector: LABEL_AGENT,
      ...(options.resyncMs ? { resyncMs: options.resyncMs } : {}),
      onEvent: (event, pod) => {
        const namespace = pod.metadata.namespace;
        if (event !== 'deleted' && namespace && this.#written.get(namespace) !== this.#caPem) this.#markDirty(namespace);
      },
    });
  }

  /** The namespaces a copy was written to or confirmed in. */
  get namespaces(): string[] {
    return [...this.#written.keys()].sort();
  }

  /**
   * Starts watching; resolves once the pod cache is synced and the first pass was tried (failed writes retry in
   * the background, so a refused write never holds up the caller).
   */
  async start(): Promise<void> {
    this.#pods.start();
    await this.#pods.waitForSync();
    try {
      await this.#refreshSource();
    } catch (error) {
      this.#log.warn({ component: 'ca-bundle', err: (error as Error).message }, 'could not read the gateway CA; will retry');
    }
    this.#scheduleRecheck();
    await this.#flushing;
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#retryTimer);
    this.#pods.stop();
  }

  /** Resolves when no namespace waits for a write (tests). */
  idle(): Promise<void> {
    if (this.#dirty.size === 0 && this.#flushing === undefined) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Re-reads the source Secret now; a changed CA marks every namespace with injected pods. */
  async refresh(): Promise<void> {
    await this.#refreshSource();
    await this.idle();
  }

  #scheduleRecheck(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#refreshSource()
        .catch((error: unknown) => this.#log.warn({ component: 'ca-bundle', err: (error as Error).message }, 'could not read the gateway CA; will retry'))
        .finally(() => this.#scheduleRecheck());
    }, this.#recheckMs);
    this.#timer.unref();
  }

  async #refreshSource(): Promise<void> {
    const secret = await this.#client.get(Resources.secret, this.#settings.namespace, this.#settings.sourceSecret);
    if (!secret) {
      // Not issued yet (the operator or cert-manager is about to): copies wait; projections are optional.
      this.#log.debug({ component: 'ca-bundle', secret: this.#settings.sourceSecret }, 'gateway TLS Secret not there yet');
      return;
    }
    const b64 = (secret.data as Record<string, string> | undefined)?.[CA_BUNDLE_KEY];
    const caPem = b64 === undefined ? '' : Buffer.from(b64, 'base64').toString('utf8');
    if (caPem === this.#caPem) {
      // Unchanged: still write every copy now and then (an apply of equal content changes nothing), so a copy
      // someone deleted or edited comes back without watching every ConfigMap of the cluster.
      if (Date.now() - this.#lastReapplyMs >= this.#reapplyMs) {
        this.#lastReapplyMs = Date.now();
        for (const namespace of this.#written.keys()) this.#markDirty(namespace);
      }
      return;
    }
    this.#caPem = caPem;
    for (const pod of this.#pods.list()) if (pod.metadata.namespace) this.#markDirty(pod.metadata.namespace);
    for (const namespace of this.#written.keys()) this.#markDirty(namespace);
  }

  #markDirty(namespace: string): void {
    if (this.#caPem === undefined || this.#stopped) return;
    this.#dirty.add(namespace);
    this.#flushing ??= this.#flush().finally(() => {
      this.#flushing = undefined;
      if (this.#dirty.size > 0 && !this.#stopped) {
        // Failed writes: try again later rather than spin.
        this.#retryTimer = setTimeout(() => {
          for (const namespace of [...this.#dirty]) this.#markDirty(namespace);
        }, this.#retryMs);
        this.#retryTimer.unref();
        return;
      }
      for (const resolve of this.#idleWaiters.splice(0)) resolve();
    });
  }

  async #flush(): Promise<void> {
    await this.#resolveOwner();
    const failed: string[] = [];
    while (this.#dirty.size > 0 && !this.#stopped) {
      const namespace = this.#dirty.values().next().value as string;
      this.#dirty.delete(namespace);
      const caPem = this.#caPem as string;
      try {
        await this.#client.apply(Resources.configMap, caBundleConfigMap(this.#settings, namespace, caPem, this.#owner), { fieldManager: FIELD_MANAGER, force: true });
        this.#written.set(namespace, caPem);
        this.#log.info({ component: 'ca-bundle', namespace, configMap: this.#settings.configMap, caBytes: caPem.length }, 'gateway CA copied');
      } catch (error) {
        // A deleted namespace (404) or one being deleted (403 "being terminated"): nothing to copy into any more.
        if (error instanceof KubeError && (error.notFound || /being terminated/.test(error.message))) {
          this.#written.delete(namespace);
          continue;
        }
        failed.push(namespace);
        this.#log.warn({ component: 'ca-bundle', namespace, err: (error as Error).message }, 'could not copy the gateway CA; will retry');
      }
    }
    for (const namespace of failed) this.#dirty.add(namespace);
  }

  async #resolveOwner(): Promise<void> {
    const name = this.#settings.ownerWebhookConfiguration;
    if (name === undefined || this.#owner !== undefined) return;
    try {
      this.#owner = await this.#client.get(mutatingWebhookConfigurations, undefined, name);
    } catch (error) {
      // Without the owner the copies are written anyway; only their clean-up on uninstall is lost.
      this.#log.warn({ component: 'ca-bundle', webhook: name, err: (error as Error).message }, 'cannot read the webhook configuration; CA copies get no owner');
    }
  }
}
