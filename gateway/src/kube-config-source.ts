/**
 * Configuration from a Kubernetes Secret (the document the operator compiles from the CRDs),
 * watched and hot-reloaded through the same path as the file source. Gateways need no CRD access:
 * RBAC gives them `get/list/watch` on this one Secret.
 */
import { createHash } from 'node:crypto';
import { Informer, type InformerLogger, type KubeClient, type KubeObject, Resources } from '@narrowlink/kube';
import { ConfigError, ErrorCode, GATEWAY_CONFIG_SECRET_KEY, type GatewayConfig, parseGatewayConfig } from '@narrowlink/protocol';
import type { ConfigSource } from './config-source.ts';

export interface KubeSecretSourceOptions {
  namespace: string;
  name: string;
  /** Data key holding the YAML document. Default `GATEWAY_CONFIG_SECRET_KEY` (`config.yaml`). */
  key?: string;
  log: InformerLogger & { error(obj: object, msg: string): void };
  /** Watch timeout, s (a silent watch is replaced at least this often). Default 240. */
  watchTimeoutSeconds?: number;
  resyncMs?: number;
}

export class KubeSecretConfigSource implements ConfigSource {
  readonly #client: KubeClient;
  readonly #options: KubeSecretSourceOptions;
  #informer: Informer | undefined;
  #lastDigest = '';

  constructor(client: KubeClient, options: KubeSecretSourceOptions) {
    this.#client = client;
    this.#options = options;
  }

  #decode(secret: KubeObject): { config: GatewayConfig; digest: string } {
    const key = this.#options.key ?? GATEWAY_CONFIG_SECRET_KEY;
    const data = (secret.data as Record<string, string> | undefined)?.[key];
    if (data === undefined) {
      throw new ConfigError(ErrorCode.CONFIG_PARSE, `Secret ${this.#options.namespace}/${this.#options.name} has no data key "${key}"`);
    }
    const text = Buffer.from(data, 'base64').toString('utf8');
    return { config: parseGatewayConfig(text), digest: createHash('sha256').update(text).digest('hex') };
  }

  /**
   * Resolves with the first valid configuration. Until the Secret exists and is valid the gateway
   * stays not-ready (the operator may not have written it yet); problems are reported through
   * `onError` meanwhile.
   */
  start(onChange: (config: GatewayConfig) => void, onError: (error: Error) => void): Promise<GatewayConfig> {
    return new Promise((resolve) => {
      let first = true;
      const consider = (secret: KubeObject): void => {
        let next: { config: GatewayConfig; digest: string };
        try {
          next = this.#decode(secret);
        } catch (error) {
          onError(error as Error);
          return;
        }
        if (next.digest === this.#lastDigest) return;
        this.#lastDigest = next.digest;
        if (first) {
          first = false;
          resolve(next.config);
        } else onChange(next.config);
      };
      this.#informer = new Informer(this.#client, Resources.secret, {
        namespace: this.#options.namespace,
        fieldSelector: `metadata.name=${this.#options.name}`,
        log: this.#options.log,
        ...(this.#options.watchTimeoutSeconds ? { watchTimeoutSeconds: this.#options.watchTimeoutSeconds } : {}),
        ...(this.#options.resyncMs ? { resyncMs: this.#options.resyncMs } : {}),
        onEvent: (event, secret) => {
          if (event === 'deleted') {
            onError(new ConfigError(ErrorCode.CONFIG_PARSE, `config Secret ${this.#options.namespace}/${this.#options.name} was deleted; keeping the last configuration`));
            return;
          }
          consider(secret);
        },
      }).start();
      void this.#informer.waitForSync().then(() => {
        if (first && this.#informer?.list().length === 0) {
          onError(new ConfigError(ErrorCode.CONFIG_PARSE, `waiting for config Secret ${this.#options.namespace}/${this.#options.name}`));
        }
      });
    });
  }

  stop(): void {
    this.#informer?.stop();
  }
}
