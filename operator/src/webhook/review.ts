/**
 * AdmissionReview v1 in, AdmissionReview v1 out: the webhook's decision without any HTTP (pure). The server
 * only parses the body, calls {@link reviewPod} and sends the result.
 *
 * Rules: echo `uid`; never touch the operator's own namespace, anything but a Pod CREATE, or a pod that does not
 * opt in; invalid annotations admit the pod unchanged with warnings (or deny it when strict); an internal
 * error admits it unchanged with a warning (denies when strict). Dry-run requests get exactly the same answer:
 * the webhook has no side effects (`sideEffects: None`).
 */
import { z } from 'zod';
import { WebhookError, WebhookErrorCode } from './errors.ts';
import { type PatchResult, type SidecarSettings, sidecarPatch } from './patch.ts';

export const ADMISSION_API_VERSION = 'admission.k8s.io/v1';

const groupVersionKind = z.object({ group: z.string(), version: z.string(), kind: z.string() });
const groupVersionResource = z.object({ group: z.string(), version: z.string(), resource: z.string() });

const admissionRequestSchema = z.object({
  uid: z.string().min(1),
  kind: groupVersionKind,
  resource: groupVersionResource.optional(),
  subResource: z.string().optional(),
  operation: z.string(),
  /** Absent for `generateName` pods on CREATE: the name is generated after admission. */
  name: z.string().optional(),
  namespace: z.string().optional(),
  object: z.unknown().optional(),
  /** The stored object on UPDATE and DELETE. */
  oldObject: z.unknown().optional(),
  /** Who sent the request, as the API server authenticated them (the login webhook stamps it). */
  userInfo: z
    .object({ username: z.string().optional(), uid: z.string().optional(), groups: z.array(z.string()).optional() })
    .optional(),
  dryRun: z.boolean().optional(),
});

const admissionReviewSchema = z.object({
  apiVersion: z.literal(ADMISSION_API_VERSION),
  kind: z.literal('AdmissionReview'),
  request: admissionRequestSchema,
});

/** The fields of an AdmissionReview v1 request the webhook reads. */
export type AdmissionRequest = z.infer<typeof admissionRequestSchema>;

/** The `response` of an AdmissionReview v1. */
export interface AdmissionResponse {
  uid: string;
  allowed: boolean;
  patchType?: 'JSONPatch';
  /** base64 of the RFC 6902 JSON array. */
  patch?: string;
  warnings?: string[];
  status?: { code: number; message: string; reason?: string };
}

/** The full AdmissionReview sent back. */
export interface AdmissionReviewResponse {
  apiVersion: typeof ADMISSION_API_VERSION;
  kind: 'AdmissionReview';
  response: AdmissionResponse;
}

/** How a review ended, for logs and metrics (a bounded set: safe as a label value). */
export type ReviewOutcome =
  | 'injected'
  | 'not-requested'
  | 'already-injected'
  | 'invalid'
  | 'denied'
  | 'skipped-own-namespace'
  | 'skipped-not-pod-create'
  | 'error';

/** Options of {@link reviewPod}. */
export interface ReviewOptions {
  settings: SidecarSettings;
  /** The operator's namespace: its pods are never injected, whatever the webhook's selectors say. */
  ownNamespace: string;
  /** Deny pods with invalid annotations (and on internal errors) instead of admitting them unchanged. */
  strict: boolean;
  /** The patch builder (tests inject a failing one). Default {@link sidecarPatch}. */
  patcher?: (pod: unknown, settings: SidecarSettings) => PatchResult;
}

/** Result of {@link reviewPod}: the response plus what happened, for the caller's log line and metrics. */
export interface ReviewResult {
  response: AdmissionResponse;
  outcome: ReviewOutcome;
  /** The agent name, when injected. */
  agentName?: string;
  /** The unexpected error behind outcome `error` (log it; it is never sent to the API server). */
  error?: unknown;
}

/**
 * Validates an HTTP body as an AdmissionReview v1 and returns its request.
 * Throws {@link WebhookError} `NL_ERR_WEBHOOK_BAD_REQUEST` (HTTP 400) naming the first bad field.
 */
export function parseAdmissionReview(body: unknown): AdmissionRequest {
  const parsed = admissionReviewSchema.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? issue.path.join('.') : 'body';
    throw new WebhookError(
      WebhookErrorCode.BAD_REQUEST,
      `not an ${ADMISSION_API_VERSION} AdmissionReview: ${where}: ${issue?.message ?? 'invalid'}`,
      { statusCode: 400 },
    );
  }
  return parsed.data.request;
}

/** Wraps a response into the AdmissionReview envelope. */
export function admissionReview(response: AdmissionResponse): AdmissionReviewResponse {
  return { apiVersion: ADMISSION_API_VERSION, kind: 'AdmissionReview', response };
}

/** Keeps each warning one line and short enough for a `Warning:` header (the API server truncates long ones). */
function cleanWarning(w: string): string {
  const line = w.replace(/[\r\n\t]+/g, ' ');
  return line.length > 240 ? `${line.slice(0, 237)}...` : line;
}

function allow(uid: string, warnings: string[] = []): AdmissionResponse {
  return warnings.length > 0 ? { uid, allowed: true, warnings: warnings.map(cleanWarning) } : { uid, allowed: true };
}

/** Decides one AdmissionReview request. Never throws. */
export function reviewPod(request: AdmissionRequest, options: ReviewOptions): ReviewResult {
  const { uid } = request;
  const isPodCreate =
    request.operation === 'CREATE' &&
    request.kind.group === '' &&
    request.kind.kind === 'Pod' &&
    (request.subResource === undefined || request.subResource === '');
  if (!isPodCreate) return { response: allow(uid), outcome: 'skipped-not-pod-create' };
  // request.namespace, not object.metadata.namespace: the object may not carry it yet at admission time.
  if (request.namespace === options.ownNamespace) return { response: allow(uid), outcome: 'skipped-own-namespace' };

  let result: PatchResult;
  try {
    result = (options.patcher ?? sidecarPatch)(request.object, options.settings);
  } catch (error) {
    const message = `${WebhookErrorCode.INTERNAL}: the sidecar could not be injected (internal error, see the operator log)`;
    if (options.strict) {
      return { response: { uid, allowed: false, status: { code: 500, message, reason: 'InternalError' } }, outcome: 'error', error };
    }
    return { response: allow(uid, [message, 'narrowlink: the pod was admitted without the narrowlink-agent sidecar']), outcome: 'error', error };
  }

  switch (result.outcome) {
    case 'not-requested':
    case 'already-injected':
      return { response: allow(uid), outcome: result.outcome };
    case 'invalid': {
      if (!options.strict) return { response: allow(uid, result.warnings), outcome: 'invalid' };
      const code = result.problemCode ?? WebhookErrorCode.INVALID_ANNOTATIONS;
      const message = `${code}: ${result.problems.join('; ')}`;
      return { response: { uid, allowed: false, status: { code: 400, message, reason: 'BadRequest' } }, outcome: 'denied' };
    }
    case 'injected': {
      const response: AdmissionResponse = {
        ...allow(uid, result.warnings),
        patchType: 'JSONPatch',
        patch: Buffer.from(JSON.stringify(result.patch)).toString('base64'),
      };
      return { response, outcome: 'injected', ...(result.agentName ? { agentName: result.agentName } : {}) };
    }
  }
}
