/**
 * Tells the control plane which agents this gateway replica has attached: a ConfigMap per replica
 * (`narrowlink-gateway-<identity>`) renewed like a lease (annotations `renew-time` and
 * `lease-duration-seconds`) and listing `{ "namespace/name": { instances, nat?, directPaths? } }`; the
 * names and the document are the contract in `@narrowlink/protocol` (`gateway-status.ts`). The operator sums the
 * live ones into each agent's status (connected instances, Connected condition); a replica that dies
 * stops renewing and stops counting. A ConfigMap rather than a Lease keeps the gateway's RBAC away
 * from the operator's leader-election Lease. Gateways need no CRD access at all.
 */
import { type KubeClient, KubeError, Resources } from '@narrowlink/kube';
import { encodeGatewayStatus, GATEWAY_STATUS_LABELS, GatewayStatusAnnotation, type GatewayStatusReport } from '@narrowlink/protocol';

export interface StatusReporterOptions {
  namespace: string;
  /** This replica (pod name). */
  identity: string;
  /** What is attached right now. */
  snapshot(): GatewayStatusReport;
  /** Renew period, ms (default 10 s); the Lease lasts three periods. */
  periodMs?: number;
  /**
   * The gateway's own Pod (downward API `metadata.uid`): the ConfigMap is owned by it, so the garbage
   * collector removes the report of a replica that died without SIGTERM.
   */
  ownerPod?: { name: string; uid: string };
  log: { warn(obj: object, msg: string): void; debug(obj: object, msg: string): void };
}

export class StatusReporter {
  readonly #client: KubeClient;
  readonly #options: StatusReporterOptions;
  #timer: NodeJS.Timeout | undefined;
  #debounce: NodeJS.Timeout | undefined;
  #lastSent = '';
  #lastSentAt = 0;
  #stopped = false;
  /** The write in progress (writes run one at a time), so stop() deletes only after it landed. */
  #writing: Promise<void> = Promise.resolve();

  constructor(client: KubeClient, options: StatusReporterOptions) {
    this.#client = client;
    this.#options = options;
  }

  get leaseName(): string {
    return `narrowlink-gateway-${this.#options.identity}`.slice(0, 253).replace(/[^a-z0-9.-]/g, '-');
  }

  start(): this {
    const period = this.#options.periodMs ?? 10_000;
    this.#timer = setInterval(() => void this.report(true), period);
    this.#timer.unref();
    void this.report(true);
    return this;
  }

  /** Something attached or left: report soon, batching bursts (a fleet reconnecting) into one write. */
  changed(): void {
    if (this.#stopped || this.#debounce) return;
    this.#debounce = setTimeout(() => {
      this.#debounce = undefined;
      void this.report(false);
    }, 500);
    this.#debounce.unref();
  }

  /** Writes the ConfigMap; `renew` forces a write even when the agent list did not change. */
  report(renew: boolean): Promise<void> {
    this.#writing = this.#writing.then(() => this.#write(renew));
    return this.#writing;
  }

  async #write(renew: boolean): Promise<void> {
    if (this.#stopped) return;
    const agents = encodeGatewayStatus(this.#options.snapshot());
    const period = this.#options.periodMs ?? 10_000;
    if (!renew && agents === this.#lastSent && Date.now() - this.#lastSentAt < period) return;
    try {
      await this.#client.apply(
        Resources.configMap,
        {
          apiVersion: 'v1',
          kind: 'ConfigMap',
          metadata: {
            name: this.leaseName,
            namespace: this.#options.namespace,
            labels: { ...GATEWAY_STATUS_LABELS },
            ...(this.#options.ownerPod ? { ownerReferences: [{ apiVersion: 'v1', kind: 'Pod', name: this.#options.ownerPod.name, uid: this.#options.ownerPod.uid }] } : {}),
            annotations: {
              [GatewayStatusAnnotation.AGENTS]: agents,
              [GatewayStatusAnnotation.RENEW_TIME]: new Date().toISOString(),
              [GatewayStatusAnnotation.LEASE_DURATION]: String(Math.ceil((3 * period) / 1000)),
            },
          },
        },
        { fieldManager: 'narrowlink-gateway', force: true },
      );
      this.#lastSent = agents;
      this.#lastSentAt = Date.now();
    } catch (error) {
      this.#options.log.warn({ err: (error as Error).message }, 'could not report attached agents');
    }
  }

  /** Stops reporting and removes the ConfigMap, so the agents' status drops this replica at once. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    clearTimeout(this.#debounce);
    // A write still in flight would otherwise land after the delete and bring the ConfigMap back.
    await this.#writing;
    try {
      await this.#client.delete(Resources.configMap, this.#options.namespace, this.leaseName);
    } catch (error) {
      if (!(error instanceof KubeError)) throw error;
      this.#options.log.debug({ err: error.message }, 'could not delete the status ConfigMap; it expires on its own');
    }
  }
}
