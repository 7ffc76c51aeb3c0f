/**
 * The JSON Patch that injects the agent sidecar into a pod (pure). Everything the pod needs is in the patch:
 * the `narrowlink-agent` container, a projected ServiceAccount token volume (audience `narrowlink`, rotated by
 * the kubelet: no long-lived secret), the `narrowlink.io/injected` annotation and the `narrowlink.io/agent`
 * label. A pod that already carries the sidecar gets an empty patch, so `reinvocationPolicy: IfNeeded` and
 * repeated calls never add a second one.
 */
import { LABEL_AGENT } from '../labels.ts';
import {
  ANNOTATION_AGENT_NAME,
  ANNOTATION_INJECTED,
  type InjectionSpec,
  isImageReference,
  parseInjectionAnnotations,
  quantityValue,
} from './annotations.ts';
import { agentNameForPod, controllerOf, type PodNameSource, workloadName } from './agent-name.ts';
import { WebhookErrorCode } from './errors.ts';
import { type JsonPatchOp, pointer } from './json-patch.ts';

/** Name of the injected container. */
export const SIDECAR_CONTAINER = 'narrowlink-agent';
/** Name of the projected volume holding the ServiceAccount token (and the gateway CA when configured). */
export const TOKEN_VOLUME = 'narrowlink-token';
/** Where the token volume is mounted in the sidecar. */
export const TOKEN_MOUNT_PATH = '/var/run/secrets/narrowlink';
/** The token file the sidecar reads on every connect (`NARROWLINK_AGENT_TOKEN_FILE`). */
export const TOKEN_FILE = `${TOKEN_MOUNT_PATH}/token`;
/** The gateway CA file inside the token volume, when `caConfigMap` is set. */
export const CA_FILE_IN_VOLUME = `${TOKEN_MOUNT_PATH}/ca.crt`;
/** Default token audience: what the gateway's TokenReview asks for. */
export const DEFAULT_TOKEN_AUDIENCE = 'narrowlink';
/** Default token lifetime, seconds; Kubernetes' minimum. The kubelet refreshes it at 80% of that. */
export const DEFAULT_TOKEN_EXPIRATION_SECONDS = 600;
/**
 * The sidecar's entry point inside the Narrowlink image: the compiled agent bundle (`npm run build:server`; the
 * image ships bundles only, no TypeScript sources), relative to the image's working directory /app, with the
 * agent's Node options from scripts/build-server.ts NODE_OPTIONS (docs/adr/0014; test/k8s/chart.test.ts checks
 * they match).
 */
export const SIDECAR_COMMAND: readonly string[] = ['node', '--max-semi-space-size=1', 'dist/server/agent.mjs'];
/**
 * The sidecar's environment besides its settings: scripts/build-server.ts RUNTIME_ENV.agent (runtime-deps.json
 * `env`; docs/adr/0014): two malloc arenas instead of one per thread keep the idle agent at 63.7 MiB instead of 65
 * (test/k8s/chart.test.ts checks they match).
 */
export const SIDECAR_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' };
/** The ServiceAccount Kubernetes assigns to a pod that names none. */
export const DEFAULT_SERVICE_ACCOUNT = 'default';
/** Non-root user of the sidecar (the "nonroot" uid of distroless images). */
export const SIDECAR_UID = 65532;

/** Requests and limits (Kubernetes quantities); an absent field is not set on the container. */
export interface SidecarResources {
  requests?: { cpu?: string; memory?: string };
  limits?: { cpu?: string; memory?: string };
}

/** Chart-level settings of the injected sidecar (operator flags, see config.ts). */
export interface SidecarSettings {
  /** Sidecar image; a pod may override it with `narrowlink.io/sidecar-image`. */
  image: string;
  imagePullPolicy?: 'Always' | 'IfNotPresent' | 'Never';
  /** Default resources; a pod may override each with `narrowlink.io/sidecar-{cpu,memory}-{request,limit}`. */
  resources: SidecarResources;
  /** Gateway URL the sidecar dials (`NARROWLINK_GATEWAY`), `wss://...` in a cluster. */
  gatewayUrl: string;
  /**
   * Name of a ConfigMap in the pod's namespace whose key `ca.crt` is the gateway's CA: projected (optional) next
   * to the token and passed as `NARROWLINK_CA_FILE`; the operator copies it into each namespace with injected
   * pods (ca-bundle-distributor.ts). Exclusive with `caFile`.
   */
  caConfigMap?: string;
  /** Path of a CA bundle already inside the sidecar image, passed as `NARROWLINK_CA_FILE`. */
  caFile?: string;
  /** Audience of the projected token (default `narrowlink`). */
  tokenAudience: string;
  /** Lifetime of the projected token, seconds (>= 600, Kubernetes' minimum; default 600). */
  tokenExpirationSeconds: number;
}

/** What {@link sidecarPatch} decided. */
export type PatchOutcome = 'injected' | 'not-requested' | 'already-injected' | 'invalid';

/** Result of {@link sidecarPatch}. */
export interface PatchResult {
  outcome: PatchOutcome;
  /** RFC 6902 operations; empty unless `outcome` is `injected`. */
  patch: JsonPatchOp[];
  /**
   * Messages for the user (admission warnings): for `invalid`, one `NL_ERR_WEBHOOK_*: ...` line per problem
   * plus a note that the pod was admitted without the sidecar; for `injected`, notices such as the Job caveat.
   */
  warnings: string[];
  /** For `invalid`: the problems (without code), what strict mode denies the pod with. Else empty. */
  problems: string[];
  /** Code of the problems (`NL_ERR_WEBHOOK_INVALID_ANNOTATIONS` or `NL_ERR_WEBHOOK_CONFLICT`), for `invalid`. */
  problemCode?: WebhookErrorCode;
  /** The agent the sidecar attaches as, for `injected`. */
  agentName?: string;
}

/** The pod fields the patch reads; everything else is left as it is. Input is untrusted JSON: all optional. */
export interface PodLike {
  metadata?: PodNameSource & { annotations?: Record<string, string> };
  spec?: {
    serviceAccountName?: string;
    containers?: Array<{ name?: string }>;
    initContainers?: Array<{ name?: string }>;
    volumes?: Array<{ name?: string }>;
  };
}

/** Why `settings` cannot produce valid pods, one problem per entry (empty: fine). */
export function sidecarSettingsProblems(settings: SidecarSettings): string[] {
  const problems: string[] = [];
  if (!isImageReference(settings.image)) problems.push(`sidecar image ${JSON.stringify(settings.image)} is not an image reference`);
  if (!/^wss?:\/\/[^\s/]+/.test(settings.gatewayUrl)) problems.push(`gateway URL ${JSON.stringify(settings.gatewayUrl)} is not ws:// or wss://`);
  if (settings.caConfigMap !== undefined && settings.caFile !== undefined) problems.push('set caConfigMap or caFile, not both');
  if (!Number.isInteger(settings.tokenExpirationSeconds) || settings.tokenExpirationSeconds < 600) {
    problems.push(`token expiration ${settings.tokenExpirationSeconds}s must be an integer >= 600 (Kubernetes' minimum)`);
  }
  if (!settings.tokenAudience) problems.push('token audience is empty');
  for (const [what, section] of [['requests', settings.resources.requests], ['limits', settings.resources.limits]] as const) {
    for (const [resource, value] of Object.entries(section ?? {})) {
      if (value !== undefined && quantityValue(value) === undefined) problems.push(`${what}.${resource} ${JSON.stringify(value)} is not a quantity`);
    }
  }
  problems.push(...resourceProblems(settings.resources, 'default sidecar resources'));
  return problems;
}

/** Requests above limits make the API server reject the whole pod: refuse to emit such a container. */
function resourceProblems(resources: SidecarResources, what: string): string[] {
  const problems: string[] = [];
  for (const resource of ['cpu', 'memory'] as const) {
    const request = resources.requests?.[resource];
    const limit = resources.limits?.[resource];
    if (request === undefined || limit === undefined) continue;
    const r = quantityValue(request);
    const l = quantityValue(limit);
    if (r !== undefined && l !== undefined && r > l) {
      problems.push(`${what}: ${resource} request ${request} is above the ${resource} limit ${limit}`);
    }
  }
  return problems;
}

/** Defaults overridden by the pod's annotations. */
function mergeResources(defaults: SidecarResources, spec: InjectionSpec): SidecarResources {
  const pick = (override: string | undefined, fallback: string | undefined) => override ?? fallback;
  const requests = {
    cpu: pick(spec.resources.cpuRequest, defaults.requests?.cpu),
    memory: pick(spec.resources.memoryRequest, defaults.requests?.memory),
  };
  const limits = {
    cpu: pick(spec.resources.cpuLimit, defaults.limits?.cpu),
    memory: pick(spec.resources.memoryLimit, defaults.limits?.memory),
  };
  const compact = (o: { cpu?: string | undefined; memory?: string | undefined }) => {
    const out: { cpu?: string; memory?: string } = {};
    if (o.cpu) out.cpu = o.cpu;
    if (o.memory) out.memory = o.memory;
    return Object.keys(out).length > 0 ? out : undefined;
  };
  const result: SidecarResources = {};
  const r = compact(requests);
  const l = compact(limits);
  if (r) result.requests = r;
  if (l) result.limits = l;
  return result;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function names(list: unknown): string[] {
  return Array.isArray(list) ? list.map((c) => (isRecord(c) && typeof c.name === 'string' ? c.name : '')) : [];
}

/** The sidecar container. */
function sidecarContainer(settings: SidecarSettings, spec: InjectionSpec, agentName: string, resources: SidecarResources): Record<string, unknown> {
  const caFile = settings.caConfigMap !== undefined ? CA_FILE_IN_VOLUME : settings.caFile;
  const env: Array<Record<string, unknown>> = [
    { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
    { name: 'NARROWLINK_AGENT_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
    { name: 'NARROWLINK_AGENT_NAME', value: agentName },
    { name: 'NARROWLINK_GATEWAY', value: settings.gatewayUrl },
    { name: 'NARROWLINK_AGENT_TOKEN_FILE', value: TOKEN_FILE },
    { name: 'NARROWLINK_EXPOSE', value: spec.exposeValue },
  ];
  if (caFile !== undefined) env.push({ name: 'NARROWLINK_CA_FILE', value: caFile });
  for (const [name, value] of Object.entries(SIDECAR_ENV)) env.push({ name, value });
  return {
    name: SIDECAR_CONTAINER,
    image: spec.image ?? settings.image,
    ...(settings.imagePullPolicy ? { imagePullPolicy: settings.imagePullPolicy } : {}),
    command: [...SIDECAR_COMMAND],
    // The pod name as instance id: `narrowlink ls` and agent status then name the replicas by their pods.
    args: ['--instance-id', '$(POD_NAME)'],
    env,
    resources,
    volumeMounts: [{ name: TOKEN_VOLUME, mountPath: TOKEN_MOUNT_PATH, readOnly: true }],
    securityContext: {
      runAsNonRoot: true,
      runAsUser: SIDECAR_UID,
      runAsGroup: SIDECAR_UID,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      privileged: false,
      // No NET_ADMIN or anything else: the sidecar only dials 127.0.0.1 and the gateway.
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    terminationMessagePolicy: 'FallbackToLogsOnError',
  };
}

/** The projected volume: a short-lived ServiceAccount token for the gateway (and the gateway CA, if configured). */
function tokenVolume(settings: SidecarSettings): Record<string, unknown> {
  const sources: Array<Record<string, unknown>> = [
    { serviceAccountToken: { audience: settings.tokenAudience, expirationSeconds: settings.tokenExpirationSeconds, path: 'token' } },
  ];
  if (settings.caConfigMap !== undefined) {
    // optional: a namespace the CA copy has not reached yet (ADR 0015) must never keep the application pod in
    // ContainerCreating; the kubelet adds the file once the ConfigMap exists and the agent waits for it.
    sources.push({ configMap: { name: settings.caConfigMap, items: [{ key: 'ca.crt', path: 'ca.crt' }], optional: true } });
  }
  return { name: TOKEN_VOLUME, projected: { sources } };
}

/** `add` of one key into a map that may be absent: the whole map when absent (a pointer into nothing fails). */
function addMapEntry(ops: JsonPatchOp[], mapPath: string[], existing: unknown, key: string, value: string): void {
  if (isRecord(existing)) ops.push({ op: 'add', path: pointer(...mapPath, key), value });
  else ops.push({ op: 'add', path: pointer(...mapPath), value: { [key]: value } });
}

/** `add` of one element to an array that may be absent: append with `/-`, or create the array. */
function addListItem(ops: JsonPatchOp[], listPath: string[], existing: unknown, value: unknown): void {
  if (Array.isArray(existing)) ops.push({ op: 'add', path: `${pointer(...listPath)}/-`, value });
  else ops.push({ op: 'add', path: pointer(...listPath), value: [value] });
}

function invalid(code: WebhookErrorCode, problems: string[]): PatchResult {
  return {
    outcome: 'invalid',
    patch: [],
    problems,
    problemCode: code,
    warnings: [...problems.map((p) => `${code}: ${p}`), 'narrowlink: the pod was admitted without the narrowlink-agent sidecar'],
  };
}

/**
 * Decides what to do with `pod` (the AdmissionReview's `request.object`) and builds the JSON Patch.
 * Never throws for any JSON input shape: problems come back as `outcome: 'invalid'`.
 */
export function sidecarPatch(pod: unknown, settings: SidecarSettings): PatchResult {
  const none = (outcome: PatchOutcome): PatchResult => ({ outcome, patch: [], warnings: [], problems: [] });
  const podObj = isRecord(pod) ? pod : {};
  const metadata = isRecord(podObj.metadata) ? podObj.metadata : {};
  const spec = isRecord(podObj.spec) ? podObj.spec : {};
  const annotations = isRecord(metadata.annotations) ? metadata.annotations : undefined;

  const parsed = parseInjectionAnnotations(annotations);
  if (!parsed.requested) return none('not-requested');
  const containers = names(spec.containers);
  // Idempotency: the annotation we set, or our container (e.g. annotation stripped by another webhook).
  if (annotations?.[ANNOTATION_INJECTED] === 'true' || containers.includes(SIDECAR_CONTAINER)) return none('already-injected');
  if (!parsed.ok) return invalid(WebhookErrorCode.INVALID_ANNOTATIONS, parsed.problems);

  const resources = mergeResources(settings.resources, parsed.spec);
  const resourceIssues = resourceProblems(resources, 'sidecar resources (annotations over chart defaults)');
  if (resourceIssues.length > 0) return invalid(WebhookErrorCode.INVALID_ANNOTATIONS, resourceIssues);

  const conflicts: string[] = [];
  if (names(spec.initContainers).includes(SIDECAR_CONTAINER)) conflicts.push(`an init container is already named ${SIDECAR_CONTAINER}`);
  if (names(spec.volumes).includes(TOKEN_VOLUME)) conflicts.push(`a volume is already named ${TOKEN_VOLUME}`);
  if (conflicts.length > 0) return invalid(WebhookErrorCode.CONFLICT, conflicts);

  const nameSource: PodNameSource = {
    ...(typeof metadata.name === 'string' ? { name: metadata.name } : {}),
    ...(typeof metadata.generateName === 'string' ? { generateName: metadata.generateName } : {}),
    ...(isRecord(metadata.labels) ? { labels: metadata.labels as Record<string, string> } : {}),
    ...(Array.isArray(metadata.ownerReferences) ? { ownerReferences: metadata.ownerReferences.filter(isRecord) } : {}),
  };
  const agentName = parsed.spec.agentName ?? agentNameForPod(nameSource);

  const ops: JsonPatchOp[] = [];
  // A real Pod always has both; an object without them must still get a patch the API server can apply.
  if (!isRecord(podObj.metadata)) ops.push({ op: 'add', path: '/metadata', value: {} });
  if (!isRecord(podObj.spec)) ops.push({ op: 'add', path: '/spec', value: {} });
  addMapEntry(ops, ['metadata', 'annotations'], annotations, ANNOTATION_INJECTED, 'true');
  addMapEntry(ops, ['metadata', 'labels'], metadata.labels, LABEL_AGENT, agentName);
  // Kubernetes refuses a serviceAccountToken projection without serviceAccountName. The ServiceAccount admission
  // plugin normally sets it before webhooks run; where it is off, name the account it would have chosen.
  if (typeof spec.serviceAccountName !== 'string' || spec.serviceAccountName === '') {
    ops.push({ op: 'add', path: '/spec/serviceAccountName', value: DEFAULT_SERVICE_ACCOUNT });
  }
  addListItem(ops, ['spec', 'volumes'], spec.volumes, tokenVolume(settings));
  addListItem(ops, ['spec', 'containers'], spec.containers, sidecarContainer(settings, parsed.spec, agentName, resources));

  const warnings: string[] = [];
  if (controllerOf(nameSource)?.kind === 'Job') {
    warnings.push('narrowlink: the narrowlink-agent sidecar keeps running, so this Job pod will not complete on its own');
  }
  if (parsed.spec.agentName === undefined && workloadName(nameSource).length > 63) {
    warnings.push(`narrowlink: agent name shortened to ${agentName}; set ${ANNOTATION_AGENT_NAME} to choose one`);
  }
  return { outcome: 'injected', patch: ops, warnings, problems: [], agentName };
}
