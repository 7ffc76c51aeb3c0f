/**
 * Public error codes of the gateway. Each maps to an HTTP status for the upgrade response;
 * the JSON body is `{ code, message }`. Listed with meaning and fix in docs/errors.md.
 */
import { NarrowlinkError } from '@narrowlink/protocol';

export const GatewayErrorCode = {
  AUTH_MISSING_TOKEN: 'NL_ERR_AUTH_MISSING_TOKEN',
  AUTH_INVALID_TOKEN: 'NL_ERR_AUTH_INVALID_TOKEN',
  AUTH_WRONG_ENDPOINT: 'NL_ERR_AUTH_WRONG_ENDPOINT',
  AUTH_UNKNOWN_AGENT: 'NL_ERR_AUTH_UNKNOWN_AGENT',
  AUTH_SERVICE_ACCOUNT_NOT_ALLOWED: 'NL_ERR_AUTH_SERVICE_ACCOUNT_NOT_ALLOWED',
  NOT_FOUND: 'NL_ERR_GATEWAY_NOT_FOUND',
  SHUTTING_DOWN: 'NL_ERR_GATEWAY_SHUTTING_DOWN',
  NOT_READY: 'NL_ERR_GATEWAY_NOT_READY',
  HANDSHAKE_TIMEOUT: 'NL_ERR_GATEWAY_HANDSHAKE_TIMEOUT',
  INSECURE_LISTEN: 'NL_ERR_GATEWAY_INSECURE_LISTEN',
  NAT_PROBE_UNAVAILABLE: 'NL_ERR_GATEWAY_NAT_PROBE_UNAVAILABLE',
  INTERNAL: 'NL_ERR_GATEWAY_INTERNAL',
  /** A session's request (`list_agents`, `reauth`) over its rate limit, or a session closed (4429) for going on. */
  RATE_LIMITED: 'NL_ERR_GATEWAY_RATE_LIMITED',
  /**
   * A session held more unsent bytes than its buffer budget (or held the most while the gateway was over its
   * process budget): it was not reading what the gateway sent. Its streams were reset; closed with 4413.
   */
  BUFFER_LIMIT: 'NL_ERR_GATEWAY_BUFFER_LIMIT',
  /** The peer stopped reading (nothing it was sent left the gateway) or answering PINGs; closed with 4408. */
  PEER_STALLED: 'NL_ERR_GATEWAY_PEER_STALLED',
  /** Bad command line at startup (exit 2); never sent to a peer. */
  USAGE: 'NL_ERR_GATEWAY_USAGE',
} as const;
export type GatewayErrorCode = (typeof GatewayErrorCode)[keyof typeof GatewayErrorCode];

/**
 * Finer reasons of an authentication failure, carried in {@link GatewayError.reason} (the `reason` field of the
 * upgrade answer, the `reason` label of `narrowlink_gateway_auth_failures_total`, the close reason after a
 * failed `reauth`). Token reasons from the protocol (`NL_ERR_TOKEN_*` of `ErrorCode`) are used as they are.
 */
export const GatewayAuthReason = {
  /** No TokenReviewer (the gateway runs without Kubernetes), or the TokenReview call failed. */
  TOKEN_REVIEW_UNAVAILABLE: 'NL_ERR_TOKEN_REVIEW_UNAVAILABLE',
  /** The TokenReview did not authenticate the ServiceAccount token. */
  TOKEN_REVIEW_REJECTED: 'NL_ERR_TOKEN_REVIEW_REJECTED',
  /** The TokenReview authenticated a user, not a ServiceAccount. */
  TOKEN_NOT_SERVICE_ACCOUNT: 'NL_ERR_TOKEN_NOT_SERVICE_ACCOUNT',
  /** A `reauth` presented a token for another subject. */
  AUTH_IDENTITY_CHANGED: 'NL_ERR_AUTH_IDENTITY_CHANGED',
} as const;
export type GatewayAuthReason = (typeof GatewayAuthReason)[keyof typeof GatewayAuthReason];

export class GatewayError extends NarrowlinkError {
  readonly statusCode: number;
  /** A finer reason for metrics and logs (for tokens: the protocol's NL_ERR_TOKEN_* code). */
  readonly reason: string;
  constructor(code: GatewayErrorCode, statusCode: number, message: string, options?: { cause?: unknown; reason?: string }) {
    super(code, message, options);
    this.statusCode = statusCode;
    this.reason = options?.reason ?? code;
  }

  /** The body sent to the peer; 5xx details are masked. */
  toJSON(): { code: string; message: string; reason?: string } {
    if (this.statusCode >= 500 && this.code === GatewayErrorCode.INTERNAL) return { code: this.code, message: 'internal gateway error' };
    return this.reason === this.code ? { code: this.code, message: this.message } : { code: this.code, message: this.message, reason: this.reason };
  }
}
