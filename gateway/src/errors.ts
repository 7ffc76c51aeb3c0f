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
} as const;
export type GatewayErrorCode = (typeof GatewayErrorCode)[keyof typeof GatewayErrorCode];

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
