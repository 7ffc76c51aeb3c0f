/** Errors of the dialing side of a session (agent and client). Listed in docs/errors.md. */
import { NarrowlinkError } from '@narrowlink/protocol';

export const LinkErrorCode = {
  /** The gateway refused the upgrade (HTTP status and the gateway's code are attached). */
  REFUSED: 'NL_ERR_LINK_REFUSED',
  /** Could not reach the gateway for a reason that may pass (timeout, reset, network unreachable). */
  UNREACHABLE: 'NL_ERR_LINK_UNREACHABLE',
  /** Nothing listens at the gateway's host and port (ECONNREFUSED): definitive. */
  CONNECTION_REFUSED: 'NL_ERR_LINK_CONNECTION_REFUSED',
  /** The gateway's host name does not resolve (NXDOMAIN): definitive. */
  DNS: 'NL_ERR_LINK_DNS',
  /** TLS verification failed (untrusted CA, name mismatch, expired) or the server did not speak TLS: definitive. */
  TLS: 'NL_ERR_LINK_TLS',
  /** Something answered the upgrade with HTTP but is not a Narrowlink gateway (404, a proxy's page): definitive. */
  NOT_GATEWAY: 'NL_ERR_LINK_NOT_GATEWAY',
  /** The gateway URL is refused before dialing: not ws:// or wss://, or cleartext ws:// to a host that is not loopback. */
  INSECURE_URL: 'NL_ERR_LINK_INSECURE_URL',
  /** The gateway closed the session during the handshake with an error message. */
  HANDSHAKE: 'NL_ERR_LINK_HANDSHAKE',
  /** No session came up in the time allowed. */
  TIMEOUT: 'NL_ERR_LINK_TIMEOUT',
  /** The link was closed locally. */
  CLOSED: 'NL_ERR_LINK_CLOSED',
  /** The gateway refused a request (`list_agents`) over its per-session rate limit; retry after a pause. */
  RATE_LIMITED: 'NL_ERR_LINK_RATE_LIMITED',
} as const;
export type LinkErrorCode = (typeof LinkErrorCode)[keyof typeof LinkErrorCode];

export class LinkError extends NarrowlinkError {
  /** HTTP status of a refused upgrade. */
  readonly status: number | undefined;
  /** The gateway's own error code (e.g. NL_ERR_AUTH_INVALID_TOKEN), when it sent one. */
  readonly gatewayCode: string | undefined;
  /** Whether the link keeps retrying after this error (false: it ends with `fatal`). */
  readonly retryable: boolean;
  /**
   * A definitive answer (refused, no such host, TLS verification, not a gateway): retrying right away gives the same
   * answer. One-shot links (`failFast`) stop at it; long-running ones retry it (the gateway may be restarting).
   */
  readonly definitive: boolean;
  /** For NL_ERR_LINK_TLS: which verification failed. */
  tlsFailure: 'untrusted-ca' | 'name-mismatch' | 'expired' | 'not-tls' | undefined;
  constructor(
    code: LinkErrorCode,
    message: string,
    options: { status?: number; gatewayCode?: string; retryable: boolean; definitive?: boolean; cause?: unknown },
  ) {
    super(code, message, { cause: options.cause });
    this.status = options.status;
    this.gatewayCode = options.gatewayCode;
    this.retryable = options.retryable;
    this.definitive = options.definitive ?? false;
    this.tlsFailure = undefined;
  }
}
