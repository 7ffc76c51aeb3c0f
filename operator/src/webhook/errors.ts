/**
 * Public error codes of the sidecar-injection webhook (CONVENTIONS.md §7). Callers and users match on `code`;
 * each is listed with meaning and fix in docs/errors.md (section `operator`).
 */
import { NarrowlinkError } from '@narrowlink/protocol';

export const WebhookErrorCode = {
  /** The HTTP body is not a JSON AdmissionReview v1 with a Pod request (answered 400). */
  BAD_REQUEST: 'NL_ERR_WEBHOOK_BAD_REQUEST',
  /** No route at that path/method (answered 404). */
  NOT_FOUND: 'NL_ERR_WEBHOOK_NOT_FOUND',
  /** The pod's narrowlink.io/* annotations are invalid: admitted unchanged with a warning, or denied (strict). */
  INVALID_ANNOTATIONS: 'NL_ERR_WEBHOOK_INVALID_ANNOTATIONS',
  /** The pod cannot take the sidecar (name clash with an existing volume, ...): same handling as invalid annotations. */
  CONFLICT: 'NL_ERR_WEBHOOK_CONFLICT',
  /** An unexpected failure while building the patch: admitted unchanged with a warning (denied when strict). */
  INTERNAL: 'NL_ERR_WEBHOOK_INTERNAL',
  /** Bad webhook or sidecar settings (operator flags) at startup. */
  CONFIG: 'NL_ERR_WEBHOOK_CONFIG',
  /** The serving certificate or key cannot be read or do not form a valid pair. */
  TLS: 'NL_ERR_WEBHOOK_TLS',
  /** A ClientLoginRequest CREATE sets spec.username, spec.uid or spec.groups itself (denied, 403). */
  LOGIN_IDENTITY_SUPPLIED: 'NL_ERR_WEBHOOK_LOGIN_IDENTITY_SUPPLIED',
  /** A ClientLoginRequest UPDATE changes spec (denied, 403): requests are immutable, create a new one. */
  LOGIN_SPEC_IMMUTABLE: 'NL_ERR_WEBHOOK_LOGIN_SPEC_IMMUTABLE',
  /** A ClientLoginRequest CREATE without a usable spec or without an authenticated user name (denied, 400). */
  LOGIN_INVALID: 'NL_ERR_WEBHOOK_LOGIN_INVALID',
} as const;
export type WebhookErrorCode = (typeof WebhookErrorCode)[keyof typeof WebhookErrorCode];

/** An error of the webhook; `statusCode` is the HTTP status when it answers a request. */
export class WebhookError extends NarrowlinkError {
  readonly statusCode: number;
  constructor(code: WebhookErrorCode, message: string, options?: { cause?: unknown; statusCode?: number }) {
    super(code, message, options);
    this.statusCode = options?.statusCode ?? 500;
  }

  /** The JSON body sent to an HTTP client; 5xx details are masked. */
  toJSON(): { code: string; message: string } {
    if (this.statusCode >= 500) return { code: this.code, message: 'internal webhook error' };
    return { code: this.code, message: this.message };
  }
}
