/**
 * The admission side of `narrowlink login` (pure, no HTTP): the API server authenticates whoever creates a
 * ClientLoginRequest, and this review records who that was in `spec.username`, `spec.uid` and `spec.groups`,
 * straight from the AdmissionReview's `userInfo`. The operator signs tokens for exactly those fields, so they
 * must never come from the client:
 *
 * - CREATE that already sets any of the three (even empty) → denied 403 `NL_ERR_WEBHOOK_LOGIN_IDENTITY_SUPPLIED`.
 * - CREATE otherwise → allowed with a JSON patch adding the three fields (no uid when the authenticator gave
 *   none, groups `[]` when it gave none).
 * - UPDATE that changes `spec` in any way → denied 403 `NL_ERR_WEBHOOK_LOGIN_SPEC_IMMUTABLE` (metadata changes,
 *   e.g. labels or a deletion's finalizer bookkeeping, pass; status goes through the status subresource, which
 *   the webhook rules do not match).
 *
 * The stamp also goes into the annotation `narrowlink.io/login-stamp`: an HMAC the operator verifies before
 * signing (operator/src/login-stamp.ts), so a request that bypassed this webhook is never signed.
 *
 * One mutating webhook does both, registered with `failurePolicy: Fail` and `reinvocationPolicy: Never`: when it
 * cannot be reached, nothing is created (an unstamped request is never signed; the reconciler checks too).
 * Dry-run requests get the same answer (no side effects).
 */
import { isDeepStrictEqual } from 'node:util';
import { LOGIN_STAMP_ANNOTATION, loginStamp } from '../login-stamp.ts';
import { WebhookErrorCode } from './errors.ts';
import { type JsonPatchOp, pointer } from './json-patch.ts';
import type { AdmissionRequest, AdmissionResponse } from './review.ts';

/** API group of the reviewed kind. */
const GROUP = 'narrowlink.io';
/** The reviewed kind (kept literal here: the webhook does not import the CRD module's schema builder). */
const KIND = 'ClientLoginRequest';

/** The spec fields only the webhook may write. */
export const STAMPED_FIELDS = ['username', 'uid', 'groups'] as const;

/** How a login review ended (a bounded set: safe as a metric label). */
export type LoginReviewOutcome = 'stamped' | 'unchanged' | 'identity-supplied' | 'spec-changed' | 'invalid' | 'skipped';

/** Result of {@link reviewLoginRequest}. */
export interface LoginReviewResult {
  response: AdmissionResponse;
  outcome: LoginReviewOutcome;
  /** The stamped user name (CREATE only), for the log line. */
  username?: string;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function deny(uid: string, status: 400 | 403, code: WebhookErrorCode, message: string): AdmissionResponse {
  return { uid, allowed: false, status: { code: status, message: `${code}: ${message}`, reason: status === 403 ? 'Forbidden' : 'BadRequest' } };
}

/**
 * Decides one AdmissionReview request for a ClientLoginRequest. Never throws.
 *
 * @param stampKey - HMAC key of the stamp annotation (`deriveLoginStampKey` of operator/src/login-stamp.ts); without it a CREATE is refused
 *   (500): a request the operator could not verify would only end Denied.
 * @param loginNamespace - the operator's namespace, the only one whose requests it signs: a CREATE elsewhere is
 *   refused (400) with that namespace in the message, instead of waiting forever. Undefined: any namespace.
 */
export function reviewLoginRequest(request: AdmissionRequest, stampKey: Buffer | undefined, loginNamespace?: string): LoginReviewResult {
  const { uid } = request;
  const isLoginRequest =
    request.kind.group === GROUP && request.kind.kind === KIND && (request.subResource === undefined || request.subResource === '');
  if (!isLoginRequest) return { response: { uid, allowed: true }, outcome: 'skipped' };

  if (request.operation === 'UPDATE') {
    const spec = isObject(request.object) ? request.object.spec : undefined;
    const oldSpec = isObject(request.oldObject) ? request.oldObject.spec : undefined;
    if (isDeepStrictEqual(spec, oldSpec)) return { response: { uid, allowed: true }, outcome: 'unchanged' };
    return {
      response: deny(uid, 403, WebhookErrorCode.LOGIN_SPEC_IMMUTABLE, 'the spec of a ClientLoginRequest cannot be changed; create a new request instead'),
      outcome: 'spec-changed',
    };
  }
  if (request.operation !== 'CREATE') return { response: { uid, allowed: true }, outcome: 'skipped' };

  if (loginNamespace !== undefined && request.namespace !== loginNamespace) {
    return {
      response: deny(uid, 400, WebhookErrorCode.LOGIN_INVALID, `ClientLoginRequests are answered only in namespace "${loginNamespace}" (narrowlink login -n ${loginNamespace})`),
      outcome: 'invalid',
    };
  }
  const spec = isObject(request.object) ? request.object.spec : undefined;
  if (!isObject(spec)) {
    return { response: deny(uid, 400, WebhookErrorCode.LOGIN_INVALID, 'spec is required (spec.publicKey)'), outcome: 'invalid' };
  }
  const supplied = STAMPED_FIELDS.filter((field) => field in spec);
  if (supplied.length > 0) {
    const fields = supplied.map((f) => `spec.${f}`).join(', ');
    return {
      response: deny(
        uid,
        403,
        WebhookErrorCode.LOGIN_IDENTITY_SUPPLIED,
        `${fields} ${supplied.length === 1 ? 'is' : 'are'} set by the admission webhook from the identity the API server authenticated; remove ${supplied.length === 1 ? 'it' : 'them'} from the request`,
      ),
      outcome: 'identity-supplied',
    };
  }
  const username = request.userInfo?.username;
  if (username === undefined || username === '') {
    return { response: deny(uid, 400, WebhookErrorCode.LOGIN_INVALID, 'the API server sent no authenticated user name'), outcome: 'invalid' };
  }
  if (stampKey === undefined) {
    return {
      response: { uid, allowed: false, status: { code: 500, message: `${WebhookErrorCode.INTERNAL}: the webhook has no login stamp key (see the operator log)`, reason: 'InternalError' } },
      outcome: 'invalid',
    };
  }
  const userUid = request.userInfo?.uid || undefined;
  const groups = request.userInfo?.groups ?? [];
  const stamp = loginStamp(stampKey, {
    namespace: request.namespace ?? '',
    publicKey: spec.publicKey,
    ttlSeconds: spec.ttlSeconds,
    username,
    uid: userUid,
    groups,
  });
  const metadata = isObject(request.object) && isObject(request.object.metadata) ? request.object.metadata : {};
  const patch: JsonPatchOp[] = [
    { op: 'add', path: pointer('spec', 'username'), value: username },
    // No uid from the authenticator (client certificates, most static tokens): leave the field out. An `add` of ""
    // arrives as null at the 1.20 API server's JSON patch, which the schema then refuses.
    ...(userUid ? [{ op: 'add' as const, path: pointer('spec', 'uid'), value: userUid }] : []),
    { op: 'add', path: pointer('spec', 'groups'), value: groups },
    // `add` replaces a stamp the client wrote itself.
    isObject(metadata.annotations)
      ? { op: 'add', path: pointer('metadata', 'annotations', LOGIN_STAMP_ANNOTATION), value: stamp }
      : { op: 'add', path: pointer('metadata', 'annotations'), value: { [LOGIN_STAMP_ANNOTATION]: stamp } },
  ];
  return {
    response: { uid, allowed: true, patchType: 'JSONPatch', patch: Buffer.from(JSON.stringify(patch)).toString('base64') },
    outcome: 'stamped',
    username,
  };
}
