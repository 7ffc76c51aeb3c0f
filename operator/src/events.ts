/**
 * Kubernetes Events for problems a user must fix (bad spec, domain conflict, missing cert-manager).
 * Repeats of the same event on the same object within `dedupeMs` are dropped, so a resync every few
 * minutes does not flood `kubectl describe`.
 */
import type { KubeClient, KubeObject } from '@narrowlink/kube';
import { Resources } from '@narrowlink/kube';

/** An Event a pure `desired` function decided on; the reconciler's apply step records it on the object. */
export interface DesiredEvent {
  type: 'Normal' | 'Warning';
  /** CamelCase. */
  reason: string;
  message: string;
}

export interface EventRecorderOptions {
  /** Component named as the event source. */
  component: string;
  dedupeMs?: number;
  now?: () => number;
  log: { warn(obj: object, msg: string): void };
}

export class EventRecorder {
  readonly #client: KubeClient;
  readonly #options: EventRecorderOptions;
  readonly #recent = new Map<string, number>();

  constructor(client: KubeClient, options: EventRecorderOptions) {
    this.#client = client;
    this.#options = options;
  }

  /** Records an event; failures are logged, never thrown (an event is not worth a retry). */
  async record(object: KubeObject, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void> {
    const now = (this.#options.now ?? Date.now)();
    const key = `${object.kind}/${object.metadata.namespace}/${object.metadata.name}/${reason}/${message}`;
    const last = this.#recent.get(key);
    if (last !== undefined && now - last < (this.#options.dedupeMs ?? 10 * 60_000)) return;
    this.#recent.set(key, now);
    if (this.#recent.size > 10_000) this.#recent.delete(this.#recent.keys().next().value as string);
    const namespace = object.metadata.namespace ?? 'default';
    const time = new Date(now).toISOString();
    try {
      await this.#client.create(Resources.event, {
        apiVersion: 'v1',
        kind: 'Event',
        metadata: { generateName: `${object.metadata.name}.`, namespace },
        involvedObject: {
          apiVersion: object.apiVersion,
          kind: object.kind,
          name: object.metadata.name,
          namespace,
          uid: object.metadata.uid,
          resourceVersion: object.metadata.resourceVersion,
        },
        type,
        reason,
        message: message.slice(0, 1024),
        source: { component: this.#options.component },
        firstTimestamp: time,
        lastTimestamp: time,
        count: 1,
      });
    } catch (error) {
      this.#options.log.warn({ err: (error as Error).message, reason }, 'could not record event');
    }
  }
}
