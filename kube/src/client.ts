/**
 * A narrow Kubernetes REST client: exactly the verbs the operator and the gateway's config source
 * use, with full control of content types (server-side apply, merge patch), subresources and
 * watch streams. Credentials come from a client-node KubeConfig (in-cluster or a kubeconfig file).
 * Everything the operator does to the API goes through the `KubeClient` interface, so tests can
 * drive reconcilers against a real API server or a fake.
 */
import { type IncomingMessage, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest, type RequestOptions } from 'node:https';
import { createInterface } from 'node:readline';
import type { KubeConfig } from '@kubernetes/client-node';
import { KubeError, KubeErrorCode } from './errors.ts';

/** Where a kind lives in the API. */
export interface ResourceType {
  group: string;
  version: string;
  /** Lowercase plural, as in the URL. */
  plural: string;
  kind: string;
  namespaced: boolean;
}

export interface ObjectMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  deletionTimestamp?: string;
  creationTimestamp?: string;
  ownerReferences?: Array<object>;
  [key: string]: unknown;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [key: string]: unknown;
}

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK';

export interface ListOptions {
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
}

export interface WatchOptions extends ListOptions {
  resourceVersion: string;
  /** Server-side timeout; the stream ends cleanly after it (a silent dead connection cannot last longer). */
  timeoutSeconds: number;
  signal?: AbortSignal;
}

export interface KubeClient {
  list(type: ResourceType, options?: ListOptions): Promise<{ items: KubeObject[]; resourceVersion: string }>;
  /** Streams events until the server ends the watch (resolves) or fails (rejects; 410 → re-list). */
  watch(type: ResourceType, options: WatchOptions, onEvent: (type: WatchEventType, object: KubeObject) => void): Promise<void>;
  get(type: ResourceType, namespace: string | undefined, name: string): Promise<KubeObject | undefined>;
  /** Server-side apply under `fieldManager` (create or update), optionally on a subresource. */
  apply(type: ResourceType, object: KubeObject, options: { fieldManager: string; force?: boolean; subresource?: 'status'; dryRun?: boolean }): Promise<KubeObject>;
  /** JSON merge patch (e.g. removing a finalizer with a resourceVersion precondition). */
  mergePatch(type: ResourceType, namespace: string | undefined, name: string, patch: unknown, options?: { subresource?: 'status'; fieldManager?: string }): Promise<KubeObject>;
  create(type: ResourceType, object: KubeObject, options?: { fieldManager?: string }): Promise<KubeObject>;
  /** Deletes; a missing object is not an error (returns false). */
  delete(type: ResourceType, namespace: string | undefined, name: string, options?: { uid?: string; resourceVersion?: string }): Promise<boolean>;
}

function pathFor(type: ResourceType, namespace: string | undefined, name?: string, subresource?: string): string {
  const base = type.group === '' ? `/api/${type.version}` : `/apis/${type.group}/${type.version}`;
  const ns = type.namespaced && namespace ? `/namespaces/${encodeURIComponent(namespace)}` : '';
  return `${base}${ns}/${type.plural}${name ? `/${encodeURIComponent(name)}` : ''}${subresource ? `/${subresource}` : ''}`;
}

function query(params: Record<string, string | number | boolean | undefined>): string {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined) as Array<[string, string | number | boolean]>;
  return entries.length === 0 ? '' : `?${entries.map(([k, v]) => `${k}=${encodeURIComponent(String(v))}`).join('&')}`;
}

interface StatusBody {
  kind?: string;
  message?: string;
  reason?: string;
  code?: number;
  details?: { causes?: Array<{ field?: string; message?: string }> };
}

function apiError(status: number, body: string, what: string): KubeError {
  let parsed: StatusBody = {};
  try {
    parsed = JSON.parse(body) as StatusBody;
  } catch {
    // not a Status object
  }
  const fields = (parsed.details?.causes ?? []).map((c) => c.field).filter((f): f is string => typeof f === 'string');
  return new KubeError(KubeErrorCode.API, `${what}: HTTP ${status}${parsed.reason ? ` ${parsed.reason}` : ''}: ${parsed.message ?? body.slice(0, 300)}`, {
    status,
    ...(parsed.reason ? { reason: parsed.reason } : {}),
    fields,
  });
}

/** KubeClient over node:https with the credentials of a KubeConfig. */
export class RestKubeClient implements KubeClient {
  readonly #server: URL;
  readonly #options: RequestOptions;
  /** Per-request timeout for non-watch calls, ms. */
  readonly requestTimeoutMs: number;
  /** Requests sent so far by verb (GET, PATCH, POST, DELETE, WATCH): what a benchmark reports. */
  readonly requests: Record<string, number> = {};

  private constructor(server: URL, options: RequestOptions, requestTimeoutMs: number) {
    this.#server = server;
    this.#options = options;
    this.requestTimeoutMs = requestTimeoutMs;
  }

  /** Builds a client from a loaded KubeConfig (its current context). */
  static async fromKubeConfig(kc: KubeConfig, options: { requestTimeoutMs?: number } = {}): Promise<RestKubeClient> {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new KubeError(KubeErrorCode.TRANSPORT, 'kubeconfig has no current cluster');
    const requestOptions: RequestOptions = {};
    await kc.applyToHTTPSOptions(requestOptions);
    // client-node hands out a plain https.Agent, which closes every connection after one request: each call
    // would pay a TLS handshake on both ends. Same TLS options, keep-alive on (proxy agents are left alone).
    if (requestOptions.agent instanceof HttpsAgent && requestOptions.agent.constructor === HttpsAgent) {
      requestOptions.agent = new HttpsAgent({ ...requestOptions.agent.options, keepAlive: true });
    }
    // One keep-alive agent per client: watches and requests reuse connections.
    return new RestKubeClient(new URL(cluster.server), requestOptions, options.requestTimeoutMs ?? 30_000);
  }

  #send(
    method: string,
    path: string,
    options: { body?: unknown; contentType?: string; timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<IncomingMessage> {
    const url = new URL(path, this.#server);
    const verb = method === 'GET' && path.includes('watch=true') ? 'WATCH' : method;
    this.requests[verb] = (this.requests[verb] ?? 0) + 1;
    const payload = options.body === undefined ? undefined : Buffer.from(JSON.stringify(options.body));
    const headers: Record<string, string> = { accept: 'application/json', ...((this.#options.headers as Record<string, string>) ?? {}) };
    if (payload) {
      headers['content-type'] = options.contentType ?? 'application/json';
      headers['content-length'] = String(payload.length);
    }
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = request(url, { ...this.#options, method, headers, ...(options.signal ? { signal: options.signal } : {}) }, resolve);
      if (options.timeoutMs) {
        req.setTimeout(options.timeoutMs, () => req.destroy(new Error(`no answer within ${options.timeoutMs} ms`)));
      }
      req.on('error', (error) => reject(new KubeError(KubeErrorCode.TRANSPORT, `${method} ${path}: ${error.message}`, { cause: error })));
      req.end(payload);
    });
  }

  async #json(method: string, path: string, options: { body?: unknown; contentType?: string } = {}): Promise<unknown> {
    const response = await this.#send(method, path, { ...options, timeoutMs: this.requestTimeoutMs });
    const chunks: Buffer[] = [];
    for await (const chunk of response) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const status = response.statusCode ?? 0;
    if (status >= 400) throw apiError(status, text, `${method} ${path}`);
    return text.length > 0 ? JSON.parse(text) : undefined;
  }

  async list(type: ResourceType, options: ListOptions = {}): Promise<{ items: KubeObject[]; resourceVersion: string }> {
    const path = pathFor(type, options.namespace) + query({ labelSelector: options.labelSelector, fieldSelector: options.fieldSelector });
    const body = (await this.#json('GET', path)) as { items?: KubeObject[]; metadata?: { resourceVersion?: string } };
    const items = (body.items ?? []).map((item) => ({ apiVersion: type.group ? `${type.group}/${type.version}` : type.version, kind: type.kind, ...item }));
    return { items, resourceVersion: body.metadata?.resourceVersion ?? '' };
  }

  async watch(type: ResourceType, options: WatchOptions, onEvent: (type: WatchEventType, object: KubeObject) => void): Promise<void> {
    const path =
      pathFor(type, options.namespace) +
      query({
        watch: true,
        resourceVersion: options.resourceVersion,
        timeoutSeconds: options.timeoutSeconds,
        allowWatchBookmarks: true,
        labelSelector: options.labelSelector,
        fieldSelector: options.fieldSelector,
      });
    const response = await this.#send('GET', path, options.signal ? { signal: options.signal } : {});
    const status = response.statusCode ?? 0;
    if (status >= 400) {
      const chunks: Buffer[] = [];
      for await (const chunk of response) chunks.push(chunk as Buffer);
      throw apiError(status, Buffer.concat(chunks).toString('utf8'), `watch ${path}`);
    }
    // A connection that goes silent must not hang the watch forever: the server's timeoutSeconds
    // ends healthy streams, this socket timeout ends dead ones.
    response.socket.setTimeout((options.timeoutSeconds + 30) * 1000, () => response.destroy(new Error('watch connection silent')));
    const lines = createInterface({ input: response, crlfDelay: Number.POSITIVE_INFINITY });
    try {
      for await (const line of lines) {
        if (line.trim().length === 0) continue;
        const event = JSON.parse(line) as { type: string; object: KubeObject & StatusBody };
        if (event.type === 'ERROR') {
          const s = event.object as StatusBody;
          throw new KubeError(KubeErrorCode.WATCH, `watch ${type.plural}: ${s.reason ?? 'error'}: ${s.message ?? ''}`, {
            ...(s.code ? { status: s.code } : {}),
            ...(s.reason ? { reason: s.reason } : {}),
          });
        }
        onEvent(event.type as WatchEventType, { apiVersion: type.group ? `${type.group}/${type.version}` : type.version, kind: type.kind, ...event.object });
      }
    } catch (error) {
      if (error instanceof KubeError) throw error;
      if (options.signal?.aborted) return;
      throw new KubeError(KubeErrorCode.TRANSPORT, `watch ${type.plural} broke: ${(error as Error).message}`, { cause: error });
    }
  }

  async get(type: ResourceType, namespace: string | undefined, name: string): Promise<KubeObject | undefined> {
    try {
      return (await this.#json('GET', pathFor(type, namespace, name))) as KubeObject;
    } catch (error) {
      if (error instanceof KubeError && error.notFound) return undefined;
      throw error;
    }
  }

  async apply(
    type: ResourceType,
    object: KubeObject,
    options: { fieldManager: string; force?: boolean; subresource?: 'status'; dryRun?: boolean },
  ): Promise<KubeObject> {
    const path =
      pathFor(type, object.metadata.namespace, object.metadata.name, options.subresource) +
      query({ fieldManager: options.fieldManager, force: options.force ? true : undefined, dryRun: options.dryRun ? 'All' : undefined });
    return (await this.#json('PATCH', path, { body: object, contentType: 'application/apply-patch+yaml' })) as KubeObject;
  }

  async mergePatch(
    type: ResourceType,
    namespace: string | undefined,
    name: string,
    patch: unknown,
    options: { subresource?: 'status'; fieldManager?: string } = {},
  ): Promise<KubeObject> {
    const path = pathFor(type, namespace, name, options.subresource) + query({ fieldManager: options.fieldManager });
    return (await this.#json('PATCH', path, { body: patch, contentType: 'application/merge-patch+json' })) as KubeObject;
  }

  async create(type: ResourceType, object: KubeObject, options: { fieldManager?: string } = {}): Promise<KubeObject> {
    const path = pathFor(type, object.metadata.namespace) + query({ fieldManager: options.fieldManager });
    return (await this.#json('POST', path, { body: object })) as KubeObject;
  }

  async delete(type: ResourceType, namespace: string | undefined, name: string, options: { uid?: string; resourceVersion?: string } = {}): Promise<boolean> {
    const preconditions = options.uid || options.resourceVersion ? { uid: options.uid, resourceVersion: options.resourceVersion } : undefined;
    try {
      await this.#json('DELETE', pathFor(type, namespace, name), {
        body: { kind: 'DeleteOptions', apiVersion: 'v1', propagationPolicy: 'Background', ...(preconditions ? { preconditions } : {}) },
      });
      return true;
    } catch (error) {
      if (error instanceof KubeError && error.notFound) return false;
      throw error;
    }
  }
}

/** The resource types the operator and gateway use. */
export const Resources = {
  narrowlinkAgent: { group: 'narrowlink.io', version: 'v1alpha1', plural: 'narrowlinkagents', kind: 'NarrowlinkAgent', namespaced: true },
  accessPolicy: { group: 'narrowlink.io', version: 'v1alpha1', plural: 'accesspolicies', kind: 'AccessPolicy', namespaced: true },
  certificate: { group: 'cert-manager.io', version: 'v1', plural: 'certificates', kind: 'Certificate', namespaced: true },
  secret: { group: '', version: 'v1', plural: 'secrets', kind: 'Secret', namespaced: true },
  configMap: { group: '', version: 'v1', plural: 'configmaps', kind: 'ConfigMap', namespaced: true },
  pod: { group: '', version: 'v1', plural: 'pods', kind: 'Pod', namespaced: true },
  event: { group: '', version: 'v1', plural: 'events', kind: 'Event', namespaced: true },
  lease: { group: 'coordination.k8s.io', version: 'v1', plural: 'leases', kind: 'Lease', namespaced: true },
  namespace: { group: '', version: 'v1', plural: 'namespaces', kind: 'Namespace', namespaced: false },
  customResourceDefinition: { group: 'apiextensions.k8s.io', version: 'v1', plural: 'customresourcedefinitions', kind: 'CustomResourceDefinition', namespaced: false },
} as const satisfies Record<string, ResourceType>;
