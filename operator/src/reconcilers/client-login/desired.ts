/**
 * What to do with one ClientLoginRequest (pure: the request, the settings and now in, a plan out). The
 * reconciler does the I/O: asks the rate limiter, signs, writes status, deletes.
 *
 * Order of decisions:
 * 1. Collect (delete) a request older than `requestTtlMs`, or one decided more than `retainAfterDoneMs` ago:
 *    the CLI deletes its own request once it read the token; this catches crashed CLIs and abandoned refusals.
 * 2. A request that already carries a decision (`Ready` with any reason) is left alone until then: a request
 *    is signed at most once.
 * 3. A request without the webhook's stamp (`spec.username` non-empty, `spec.groups` a list of strings, `spec.uid`
 *    absent or a string, and the annotation `narrowlink.io/login-stamp` the HMAC of exactly these fields, the key
 *    and the namespace) is `Denied`: the webhook was bypassed or not installed, and an identity the API server did
 *    not vouch for is never signed.
 * 4. A public key that is not a canonical 32-byte Ed25519 `x`, or a `ttlSeconds` that is not a positive integer,
 *    is `Invalid` (the CRD schema refuses both already; this guards an edited or older schema).
 * 5. Otherwise: sign for `min(ttlSeconds ?? cap, cap)` seconds, bound to the key's thumbprint (subject to the
 *    per-user rate limit, which the reconciler checks because it is state, not input).
 */
import { isEd25519X, jwkThumbprint } from '@narrowlink/protocol';
import { type ClientLoginRequest, LoginConditionType, LoginReason } from '../../crds/client-login-request.ts';
import type { Condition } from '../../crds/common.ts';
import { LOGIN_STAMP_ANNOTATION, verifyLoginStamp } from '../../login-stamp.ts';
import { setCondition } from '../conditions.ts';

/** Default cap (and default lifetime) of an issued token: 8 h. */
export const DEFAULT_LOGIN_TOKEN_TTL_SECONDS = 8 * 60 * 60;
/** The cap can be configured up to this and no further: 24 h. */
export const MAX_LOGIN_TOKEN_TTL_SECONDS = 24 * 60 * 60;
/** A request is collected this long after creation, whatever its state (10 min). */
export const DEFAULT_LOGIN_REQUEST_TTL_MS = 10 * 60_000;
/** A decided request (issued or refused) is collected this long after the decision (5 min). */
export const DEFAULT_LOGIN_RETAIN_AFTER_DONE_MS = 5 * 60_000;
/** Default per-user limit: this many tokens per minute. */
export const DEFAULT_LOGIN_RATE_LIMIT_PER_MINUTE = 10;

/** The login settings of the operator. */
export interface LoginSettings {
  /** Cap and default of the token lifetime, seconds (chart `login.tokenTtlSeconds`), 60..86400. */
  tokenTtlSeconds: number;
  /** Collect requests this long after creation, ms. */
  requestTtlMs: number;
  /** Collect decided requests this long after the decision, ms. */
  retainAfterDoneMs: number;
  /** Tokens one user name may obtain per minute (burst the same); 0 turns the limit off. */
  rateLimitPerMinute: number;
}

/** The defaults of {@link LoginSettings}. */
export const DEFAULT_LOGIN_SETTINGS: LoginSettings = {
  tokenTtlSeconds: DEFAULT_LOGIN_TOKEN_TTL_SECONDS,
  requestTtlMs: DEFAULT_LOGIN_REQUEST_TTL_MS,
  retainAfterDoneMs: DEFAULT_LOGIN_RETAIN_AFTER_DONE_MS,
  rateLimitPerMinute: DEFAULT_LOGIN_RATE_LIMIT_PER_MINUTE,
};

/** What to sign. */
export interface LoginGrant {
  sub: string;
  groups: string[];
  /** RFC 7638 thumbprint of the request's key: the token's `cnf.jkt`. */
  jkt: string;
  ttlSeconds: number;
}

/** The plan for one request. */
export type LoginPlan =
  | { action: 'collect'; why: 'expired' | 'done' }
  | { action: 'wait'; requeueAfterMs: number }
  | { action: 'refuse'; reason: typeof LoginReason.Denied | typeof LoginReason.Invalid; message: string }
  | { action: 'sign'; grant: LoginGrant };

function parseTime(iso: string | undefined): number | undefined {
  if (iso === undefined) return undefined;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? undefined : ms;
}

/** The `Ready` condition of a request, if it has one. */
export function loginReady(request: ClientLoginRequest): Condition | undefined {
  return request.status?.conditions?.find((c) => c.type === LoginConditionType.Ready);
}

/**
 * Decides what to do with `request` at `nowMs`. Pure.
 *
 * @param stampKey - HMAC key of the webhook's stamp (derived from the signing key, operator/src/login-stamp.ts).
 */
export function planLogin(request: ClientLoginRequest, settings: LoginSettings, nowMs: number, stampKey: Buffer): LoginPlan {
  const createdMs = parseTime(request.metadata.creationTimestamp) ?? nowMs;
  const collectAtMs = createdMs + settings.requestTtlMs;
  if (nowMs >= collectAtMs) return { action: 'collect', why: 'expired' };
  const ready = loginReady(request);
  if (ready !== undefined) {
    const decidedMs = parseTime(ready.lastTransitionTime) ?? createdMs;
    const doneAtMs = Math.min(collectAtMs, decidedMs + settings.retainAfterDoneMs);
    if (nowMs >= doneAtMs) return { action: 'collect', why: 'done' };
    return { action: 'wait', requeueAfterMs: doneAtMs - nowMs };
  }

  const spec = (request.spec ?? {}) as Partial<ClientLoginRequest['spec']>;
  const stamped =
    typeof spec.username === 'string' &&
    spec.username !== '' &&
    (spec.uid === undefined || typeof spec.uid === 'string') &&
    Array.isArray(spec.groups) &&
    spec.groups.every((g) => typeof g === 'string') &&
    verifyLoginStamp(
      stampKey,
      { namespace: request.metadata.namespace ?? '', publicKey: spec.publicKey, ttlSeconds: spec.ttlSeconds, username: spec.username, uid: spec.uid, groups: spec.groups },
      request.metadata.annotations?.[LOGIN_STAMP_ANNOTATION],
    );
  if (!stamped) {
    return {
      action: 'refuse',
      reason: LoginReason.Denied,
      message:
        'the request carries no identity stamped by the narrowlink admission webhook (spec.username, spec.uid, spec.groups); nothing was signed. Check that the MutatingWebhookConfiguration narrowlink-sidecar-injector has the login-requests.narrowlink.io webhook.',
    };
  }
  if (!isEd25519X(spec.publicKey)) {
    return {
      action: 'refuse',
      reason: LoginReason.Invalid,
      message: 'spec.publicKey is not a 32-byte Ed25519 public key in base64url without padding (the JWK "x")',
    };
  }
  if (spec.ttlSeconds !== undefined && (!Number.isInteger(spec.ttlSeconds) || spec.ttlSeconds <= 0)) {
    return { action: 'refuse', reason: LoginReason.Invalid, message: 'spec.ttlSeconds must be a positive integer' };
  }
  const ttlSeconds = Math.min(spec.ttlSeconds ?? settings.tokenTtlSeconds, settings.tokenTtlSeconds);
  return {
    action: 'sign',
    grant: { sub: spec.username as string, groups: [...(spec.groups as string[])], jkt: jwkThumbprint(spec.publicKey), ttlSeconds },
  };
}

/** RFC 3339 without fractional seconds. */
export function rfc3339(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}

/** The status of an issued request. */
export function issuedStatus(request: ClientLoginRequest, token: string, expiresAtMs: number, nowMs: number): ClientLoginRequest['status'] {
  const generation = request.metadata.generation ?? 1;
  return {
    token,
    expiresAt: rfc3339(expiresAtMs),
    conditions: setCondition(
      request.status?.conditions,
      {
        type: LoginConditionType.Ready,
        status: 'True',
        reason: LoginReason.Issued,
        message: `token issued for ${request.spec.username ?? ''}; it expires at ${rfc3339(expiresAtMs)}`,
        observedGeneration: generation,
      },
      rfc3339(nowMs),
    ),
    observedGeneration: generation,
  };
}

/** The status of a refused request (no token). */
export function refusedStatus(request: ClientLoginRequest, reason: Exclude<LoginReason, 'Issued'>, message: string, nowMs: number): ClientLoginRequest['status'] {
  const generation = request.metadata.generation ?? 1;
  return {
    conditions: setCondition(
      request.status?.conditions,
      { type: LoginConditionType.Ready, status: 'False', reason, message, observedGeneration: generation },
      rfc3339(nowMs),
    ),
    observedGeneration: generation,
  };
}
