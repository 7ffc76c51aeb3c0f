/**
 * The operator's control loop: informers keep caches of agents, policies and the objects the
 * operator owns; every change enqueues the affected keys; one worker reconciles a key at a time
 * (failures retry with per-key backoff, requeues come back on their own timer).
 *
 * Keys: `gateway-config` (the one compiled Secret), `agent/NS/NAME`, `policy/NS/NAME`,
 * `injected/NS/NAME` (the agent of a workload whose pods carry an injected sidecar), and `login/NS/NAME` (a
 * ClientLoginRequest in the operator's namespace; requests elsewhere are never signed), and `discovery` (the CA
 * bundle in the discovery ConfigMap).
 */
import { Informer, type KubeClient, type KubeObject, objectKey, Resources, WorkQueue } from '@narrowlink/kube';
import { GATEWAY_STATUS_SELECTOR } from '@narrowlink/protocol';
import type { Logger } from 'pino';
import { AGENT_KIND } from './crds/narrowlink-agent.ts';
import { POLICY_KIND } from './crds/access-policy.ts';
import { EventRecorder } from './events.ts';
import { deriveLoginStampKey } from './login-stamp.ts';
import { LABEL_AGENT, LABEL_MANAGED_BY, LABEL_OWNER_KIND, LABEL_OWNER_NAME, LABEL_OWNER_NAMESPACE, MANAGED_BY } from './labels.ts';
import type { OperatorMetrics } from './metrics.ts';
import { loginRequestResource } from './crds/client-login-request.ts';
import { agentsOf } from './reconcilers/agent/presence.ts';
import { DEFAULT_LOGIN_SETTINGS } from './reconcilers/client-login/desired.ts';
import { LoginRateLimiter } from './reconcilers/client-login/rate-limit.ts';
import { type LoginReconcileDeps, reconcileLoginRequest } from './reconcilers/client-login/reconcile.ts';
import { reconcileAgent } from './reconcilers/agent/reconcile.ts';
import type { OperatorSettings, ReconcileContext, ReconcileResult } from './reconcilers/context.ts';
import { reconcileDiscovery } from './reconcilers/discovery/reconcile.ts';
import { reconcileGatewayConfig } from './reconcilers/gateway-config/reconcile.ts';
import { reconcileInjectedAgent } from './reconcilers/injected-agent/reconcile.ts';
import { reconcilePolicy } from './reconcilers/policy/reconcile.ts';
import type { SigningKey } from './signing-key.ts';

/** Work-queue key of the one compiled gateway config Secret (not to be confused with the Secret's data key). */
export const GATEWAY_CONFIG_QUEUE_KEY = 'gateway-config';

/** Work-queue key of the discovery ConfigMap's CA copy. */
export const DISCOVERY_QUEUE_KEY = 'discovery';

export interface OperatorOptions {
  client: KubeClient;
  log: Logger;
  settings: OperatorSettings;
  signingKey: SigningKey;
  metrics?: OperatorMetrics;
  now?: () => number;
  /** Informer resync period, ms (default 5 min). */
  resyncMs?: number;
  /** Watch server timeout, s (default 240). */
  watchTimeoutSeconds?: number;
  /** First retry delay of a failing key, ms (default 200). */
  retryBaseMs?: number;
}

export class Operator {
  readonly queue: WorkQueue;
  readonly context: ReconcileContext;
  readonly #options: OperatorOptions;
  readonly #timers = new Set<NodeJS.Timeout>();
  /** Agents each gateway status ConfigMap named last time, so an agent that left is updated too. */
  readonly #statusAgents = new Map<string, string[]>();
  readonly #login: LoginReconcileDeps;
  #running = false;
  #idleWaiters: Array<() => void> = [];
  #busy = false;

  constructor(options: OperatorOptions) {
    this.#options = options;
    this.queue = new WorkQueue({ baseDelayMs: options.retryBaseMs ?? 200, maxDelayMs: 60_000 });
    const loginSettings = options.settings.login ?? DEFAULT_LOGIN_SETTINGS;
    this.#login = {
      settings: loginSettings,
      stampKey: deriveLoginStampKey(options.signingKey.privateKeyPem),
      rateLimiter: new LoginRateLimiter(loginSettings.rateLimitPerMinute),
      decided: new Map(),
      onOutcome: (outcome) => options.metrics?.loginRequests.inc({ outcome }),
    };
    const informer = (type: (typeof Resources)[keyof typeof Resources], onEvent: (object: KubeObject) => void, labelSelector?: string): Informer =>
      new Informer(options.client, type, {
        log: options.log.child({ component: 'informer', resource: type.plural }),
        ...(labelSelector ? { labelSelector } : {}),
        ...(options.resyncMs ? { resyncMs: options.resyncMs } : {}),
        ...(options.watchTimeoutSeconds ? { watchTimeoutSeconds: options.watchTimeoutSeconds } : {}),
        onEvent: (_event, object) => onEvent(object),
      });
    const managed = `${LABEL_MANAGED_BY}=${MANAGED_BY}`;
    const toOwner = (object: KubeObject): void => {
      const labels = object.metadata.labels ?? {};
      if (labels[LABEL_OWNER_KIND] === AGENT_KIND) this.queue.add(`agent/${labels[LABEL_OWNER_NAMESPACE]}/${labels[LABEL_OWNER_NAME]}`);
      else if (object.metadata.name === options.settings.gatewayConfigSecret && object.metadata.namespace === options.settings.namespace) {
        this.queue.add(GATEWAY_CONFIG_QUEUE_KEY); // repair manual edits of the compiled Secret
      }
    };
    const caches = {
      agents: informer(Resources.narrowlinkAgent, (o) => {
        this.queue.add(`agent/${objectKey(o)}`);
        this.queue.add(GATEWAY_CONFIG_QUEUE_KEY);
      }),
      policies: informer(Resources.accessPolicy, (o) => {
        this.queue.add(`policy/${objectKey(o)}`);
        this.queue.add(GATEWAY_CONFIG_QUEUE_KEY);
      }),
      certificates: informer(Resources.certificate, toOwner, managed),
      secrets: informer(Resources.secret, toOwner, managed),
      // Gateway replicas' status ConfigMaps: which agents are attached where (agent status).
      gatewayStatus: new Informer(options.client, Resources.configMap, {
        log: options.log.child({ component: 'informer', resource: 'configmaps' }),
        namespace: options.settings.namespace,
        labelSelector: GATEWAY_STATUS_SELECTOR,
        ...(options.resyncMs ? { resyncMs: options.resyncMs } : {}),
        ...(options.watchTimeoutSeconds ? { watchTimeoutSeconds: options.watchTimeoutSeconds } : {}),
        onEvent: (event, configMap) => {
          // Every agent this replica names (now or before) may have changed presence.
          for (const key of new Set([...Object.keys(agentsOf(configMap)), ...(this.#statusAgents.get(objectKey(configMap)) ?? [])])) {
            this.queue.add(`agent/${key}`);
          }
          if (event === 'deleted') this.#statusAgents.delete(objectKey(configMap));
          else this.#statusAgents.set(objectKey(configMap), Object.keys(agentsOf(configMap)));
        },
      }),
      // Login requests, only in the operator's own namespace (the one the discovery ConfigMap names).
      loginRequests: new Informer(options.client, loginRequestResource, {
        log: options.log.child({ component: 'informer', resource: loginRequestResource.plural }),
        namespace: options.settings.namespace,
        ...(options.resyncMs ? { resyncMs: options.resyncMs } : {}),
        ...(options.watchTimeoutSeconds ? { watchTimeoutSeconds: options.watchTimeoutSeconds } : {}),
        onEvent: (event, request) => {
          if (event === 'deleted') this.#login.decided.delete(request.metadata.uid ?? '');
          else this.queue.add(`login/${objectKey(request)}`);
        },
      }),
      // Pods with an injected sidecar (the webhook labels them with their agent's name).
      pods: informer(
        Resources.pod,
        (o) => {
          const agent = o.metadata.labels?.[LABEL_AGENT];
          if (agent) this.queue.add(`injected/${o.metadata.namespace}/${agent}`);
        },
        LABEL_AGENT,
      ),
    };
    this.context = {
      client: options.client,
      log: options.log,
      events: new EventRecorder(options.client, { component: 'narrowlink-operator', log: options.log, ...(options.now ? { now: options.now } : {}) }),
      now: options.now ?? Date.now,
      settings: options.settings,
      signingKey: options.signingKey,
      caches,
      problems: new Map(),
    };
  }

  /** Starts the informers and, once agents, policies and owned Secrets are cached, the worker. */
  async start(): Promise<void> {
    const { caches } = this.context;
    for (const informer of Object.values(caches)) informer.start();
    // Certificates are not awaited: without cert-manager their list fails until it is installed. Neither are
    // login requests: an older CRD set without ClientLoginRequest must not keep the control loop from starting.
    await Promise.all([caches.agents, caches.policies, caches.secrets, caches.pods, caches.gatewayStatus].map((i) => i.waitForSync()));
    this.#running = true;
    this.queue.add(GATEWAY_CONFIG_QUEUE_KEY);
    if (this.#options.settings.discovery) this.queue.add(DISCOVERY_QUEUE_KEY);
    void this.#work();
  }

  async stop(): Promise<void> {
    this.#running = false;
    this.queue.shutDown();
    for (const timer of this.#timers) clearTimeout(timer);
    for (const informer of Object.values(this.context.caches)) informer.stop();
  }

  /** Resolves when the queue is empty and no reconcile runs (tests and benchmarks). */
  idle(): Promise<void> {
    if (!this.#busy && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  async #work(): Promise<void> {
    while (this.#running) {
      if (this.queue.length === 0 && !this.#busy) for (const resolve of this.#idleWaiters.splice(0)) resolve();
      const key = await this.queue.get();
      if (key === undefined) return;
      this.#busy = true;
      const started = performance.now();
      try {
        const result = await this.#reconcile(key);
        this.queue.forget(key);
        this.#options.metrics?.reconciles.inc({ kind: key.split('/')[0] as string, result: 'ok' });
        if (result.requeueAfterMs !== undefined) this.#requeue(key, result.requeueAfterMs);
      } catch (error) {
        const delay = this.queue.addRateLimited(key);
        this.#options.metrics?.reconciles.inc({ kind: key.split('/')[0] as string, result: 'error' });
        this.#options.log.warn({ key, err: (error as Error).message, retryInMs: delay }, 'reconcile failed; will retry');
      } finally {
        this.#options.metrics?.reconcileSeconds.observe({ kind: key.split('/')[0] as string }, (performance.now() - started) / 1000);
        this.#busy = false;
        this.queue.done(key);
      }
    }
  }

  #requeue(key: string, afterMs: number): void {
    // setTimeout caps at 2^31-1 ms; a resync will come back long before then anyway.
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      this.queue.add(key);
    }, Math.min(afterMs, 2 ** 31 - 1));
    timer.unref();
    this.#timers.add(timer);
  }

  async #reconcile(key: string): Promise<ReconcileResult> {
    if (key === GATEWAY_CONFIG_QUEUE_KEY) {
      const outcome = await reconcileGatewayConfig(this.context);
      // Objects whose compile problem appeared or went away need their status rewritten.
      for (const changed of outcome.changed) {
        const [kind, namespace, name] = changed.split('/');
        this.queue.add(`${kind === POLICY_KIND ? 'policy' : 'agent'}/${namespace}/${name}`);
      }
      return outcome;
    }
    if (key === DISCOVERY_QUEUE_KEY) {
      const { discovery } = this.#options.settings;
      return discovery ? await reconcileDiscovery(this.context, discovery) : {};
    }
    const slash = key.indexOf('/');
    const kind = key.slice(0, slash);
    const objectRef = key.slice(slash + 1);
    if (kind === 'agent') return await reconcileAgent(this.context, objectRef);
    if (kind === 'policy') return await reconcilePolicy(this.context, objectRef);
    if (kind === 'injected') return await reconcileInjectedAgent(this.context, objectRef, this.context.caches.pods.list());
    if (kind === 'login') return await reconcileLoginRequest(this.context, this.#login, objectRef);
    return {};
  }
}
