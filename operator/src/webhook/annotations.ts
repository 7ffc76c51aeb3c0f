/**
 * The pod annotations that drive sidecar injection, parsed and validated without any I/O. Everything a user
 * can get wrong is reported as a list of problems (one short sentence each, suitable for an admission
 * warning), never thrown: the webhook must admit such a pod unchanged (or deny it in strict mode), not crash.
 */
import { DNS1123_LABEL_PATTERN, PORT_NAME_PATTERN } from '../crds/common.ts';

/** Opt-in: exactly `"true"` requests injection; any other value (or none) does not. */
export const ANNOTATION_INJECT = 'narrowlink.io/inject';
/** Ports the sidecar exposes: `NAME=PORT[,NAME=PORT...]`, dialled on 127.0.0.1 inside the pod. */
export const ANNOTATION_EXPOSE = 'narrowlink.io/expose';
/** Set by the webhook on every pod it injected; its presence makes re-invocation a no-op. */
export const ANNOTATION_INJECTED = 'narrowlink.io/injected';
/** Overrides the agent name derived from the pod's controller (see agent-name.ts). */
export const ANNOTATION_AGENT_NAME = 'narrowlink.io/agent-name';
/** Overrides the sidecar image of the chart. */
export const ANNOTATION_SIDECAR_IMAGE = 'narrowlink.io/sidecar-image';
/** Resource overrides of the sidecar container (Kubernetes quantities). */
export const ANNOTATION_CPU_REQUEST = 'narrowlink.io/sidecar-cpu-request';
export const ANNOTATION_MEMORY_REQUEST = 'narrowlink.io/sidecar-memory-request';
export const ANNOTATION_CPU_LIMIT = 'narrowlink.io/sidecar-cpu-limit';
export const ANNOTATION_MEMORY_LIMIT = 'narrowlink.io/sidecar-memory-limit';

/** One exposed port: a port name (IANA service name rules, as the NarrowlinkAgent CRD) and a TCP port. */
export interface ExposedPort {
  name: string;
  port: number;
}

/** Resource overrides from annotations; absent fields fall back to the chart's defaults. */
export interface ResourceOverrides {
  cpuRequest?: string;
  memoryRequest?: string;
  cpuLimit?: string;
  memoryLimit?: string;
}

/** What a valid set of annotations asks for. */
export interface InjectionSpec {
  /** At least one port, in annotation order, names and ports unique. */
  expose: ExposedPort[];
  /** `expose` in the sidecar's `NARROWLINK_EXPOSE` form: `http=8080,metrics=9090`. */
  exposeValue: string;
  /** From `narrowlink.io/agent-name`; absent: derived from the pod's controller. */
  agentName?: string;
  /** From `narrowlink.io/sidecar-image`. */
  image?: string;
  resources: ResourceOverrides;
}

/** Result of {@link parseInjectionAnnotations}. */
export type AnnotationResult =
  | { requested: false; ok: true }
  | { requested: true; ok: true; spec: InjectionSpec }
  | { requested: true; ok: false; problems: string[] };

const DNS1123_LABEL = new RegExp(DNS1123_LABEL_PATTERN);
const PORT_NAME = new RegExp(PORT_NAME_PATTERN);
/** Longest port name Kubernetes (and the NarrowlinkAgent CRD) accepts. */
const PORT_NAME_MAX = 15;

/**
 * Kubernetes quantity without a sign (resources are never negative): a decimal number, then a binary SI
 * suffix (Ki..Ei), a decimal SI suffix (n u m k M G T P E) or a decimal exponent (e3, E-2), as in
 * k8s.io/apimachinery/pkg/api/resource.
 */
const QUANTITY = /^(\d+(?:\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$/;
const BINARY_SI: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL_SI: Record<string, number> = { n: 1e-9, u: 1e-6, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

/** True when `value` is a non-negative Kubernetes quantity (`100m`, `64Mi`, `1.5`, `1e3`). */
export function isQuantity(value: string): boolean {
  return QUANTITY.test(value);
}

/**
 * The numeric value of a quantity (`"100m"` → 0.1, `"64Mi"` → 67108864), or undefined when it is not one.
 * A float: exact enough to compare a request with a limit, which is all it is used for.
 */
export function quantityValue(value: string): number | undefined {
  const m = QUANTITY.exec(value);
  if (!m) return undefined;
  const base = Number(m[1]);
  const suffix = m[2] ?? '';
  if (suffix === '') return base;
  const binary = BINARY_SI[suffix];
  if (binary !== undefined) return base * binary;
  const decimal = DECIMAL_SI[suffix];
  if (decimal !== undefined) return base * decimal;
  return base * 10 ** Number(suffix.slice(1));
}

/**
 * An OCI/Docker image reference: optional registry host[:port], slash-separated lowercase path components,
 * optional `:tag`, optional `@algorithm:hex` digest (distribution/reference grammar, without IPv6 hosts).
 */
const IMAGE_REFERENCE =
  /^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::\d+)?\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::\w[\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?$/;

/** True when `value` is a syntactically valid image reference (`ghcr.io/org/img:tag`, `img@sha256:...`). */
export function isImageReference(value: string): boolean {
  return value.length <= 512 && IMAGE_REFERENCE.test(value);
}

/** Quote a user value for a message, cut so one warning stays short. */
function quote(value: string): string {
  return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
}

/** Why `name` is not a valid port name, or undefined when it is. */
function portNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'a port name is empty';
  if (name.length > PORT_NAME_MAX) return `port name ${quote(name)} is longer than ${PORT_NAME_MAX} characters`;
  if (!PORT_NAME.test(name)) {
    return `port name ${quote(name)} must be lowercase letters, digits and single "-", with at least one letter`;
  }
  return undefined;
}

/**
 * Parses `NAME=PORT[,NAME=PORT...]` (whitespace around entries ignored, empty entries skipped).
 * Returns the ports, or the problems found (all of them, not just the first).
 */
export function parseExposeAnnotation(value: string): { ok: true; expose: ExposedPort[] } | { ok: false; problems: string[] } {
  const problems: string[] = [];
  const expose: ExposedPort[] = [];
  const names = new Set<string>();
  const ports = new Set<number>();
  const entries = value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  for (const entry of entries) {
    const eq = entry.indexOf('=');
    if (eq < 0) {
      problems.push(`${ANNOTATION_EXPOSE}: entry ${quote(entry)} is not NAME=PORT`);
      continue;
    }
    const name = entry.slice(0, eq).trim();
    const portText = entry.slice(eq + 1).trim();
    const nameProblem = portNameProblem(name);
    if (nameProblem) problems.push(`${ANNOTATION_EXPOSE}: ${nameProblem}`);
    // Only a port: the sidecar shares the pod's network namespace and dials 127.0.0.1.
    const port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
    const portOk = port >= 1 && port <= 65535;
    if (!portOk) problems.push(`${ANNOTATION_EXPOSE}: port ${quote(portText)} of ${quote(name)} must be a number 1-65535`);
    if (nameProblem || !portOk) continue;
    if (names.has(name)) problems.push(`${ANNOTATION_EXPOSE}: port name ${quote(name)} is given twice`);
    else if (ports.has(port)) problems.push(`${ANNOTATION_EXPOSE}: port ${port} is given twice`);
    else expose.push({ name, port });
    names.add(name);
    ports.add(port);
  }
  if (entries.length === 0) problems.push(`${ANNOTATION_EXPOSE}: must list at least one NAME=PORT, e.g. "http=8080"`);
  return problems.length > 0 ? { ok: false, problems } : { ok: true, expose };
}

const RESOURCE_ANNOTATIONS: ReadonlyArray<readonly [string, keyof ResourceOverrides]> = [
  [ANNOTATION_CPU_REQUEST, 'cpuRequest'],
  [ANNOTATION_MEMORY_REQUEST, 'memoryRequest'],
  [ANNOTATION_CPU_LIMIT, 'cpuLimit'],
  [ANNOTATION_MEMORY_LIMIT, 'memoryLimit'],
];

/**
 * Reads a pod's annotations: whether injection is requested and, if so, what exactly. Annotation values are
 * trimmed. Request-versus-limit consistency needs the chart's defaults and is checked in patch.ts.
 */
export function parseInjectionAnnotations(annotations: Readonly<Record<string, unknown>> | undefined): AnnotationResult {
  const get = (key: string): string | undefined => {
    const v = annotations?.[key];
    return typeof v === 'string' ? v.trim() : undefined;
  };
  if (get(ANNOTATION_INJECT) !== 'true') return { requested: false, ok: true };

  const problems: string[] = [];
  let expose: ExposedPort[] = [];
  const exposeText = get(ANNOTATION_EXPOSE);
  if (exposeText === undefined) {
    problems.push(`${ANNOTATION_EXPOSE} is missing: list the ports to expose, e.g. "http=8080"`);
  } else {
    const parsed = parseExposeAnnotation(exposeText);
    if (parsed.ok) expose = parsed.expose;
    else problems.push(...parsed.problems);
  }

  const spec: InjectionSpec = { expose, exposeValue: '', resources: {} };
  const agentName = get(ANNOTATION_AGENT_NAME);
  if (agentName !== undefined) {
    if (agentName.length > 63 || !DNS1123_LABEL.test(agentName)) {
      problems.push(`${ANNOTATION_AGENT_NAME}: ${quote(agentName)} must be a DNS-1123 label (a-z, 0-9, "-", at most 63)`);
    } else spec.agentName = agentName;
  }
  const image = get(ANNOTATION_SIDECAR_IMAGE);
  if (image !== undefined) {
    if (!isImageReference(image)) problems.push(`${ANNOTATION_SIDECAR_IMAGE}: ${quote(image)} is not an image reference`);
    else spec.image = image;
  }
  for (const [key, field] of RESOURCE_ANNOTATIONS) {
    const value = get(key);
    if (value === undefined) continue;
    if (!isQuantity(value)) problems.push(`${key}: ${quote(value)} is not a Kubernetes quantity (e.g. 100m, 64Mi)`);
    else spec.resources[field] = value;
  }

  if (problems.length > 0) return { requested: true, ok: false, problems };
  spec.exposeValue = expose.map((e) => `${e.name}=${e.port}`).join(',');
  return { requested: true, ok: true, spec };
}
