/** Errors of the dialing side of a session (agent and client). Listed in docs/errors.md. */
import { NarrowlinkError } from '@narrowlink/protocol';

export const LinkErrorCode = {
  /** The gateway refused the upgrade (HTTP status and the gateway's code are attached). */
  REFUSED: 'NL_ERR_LINK_REFUSED',
  /** Could not reach the gateway at all (DNS, TCP, TLS). */
  UNREACHABLE: 'NL_ERR_LINK_UNREACHABLE',
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
  /** Whether retrying with the same credentials can help. */
  readonly retryable: boolean;
  constructor(
    code: LinkErrorCode,
    message: string,
    options: { status?: number; gatewayCode?: string; retryable: boolean; cause?: unknown },
  ) {
    super(code, message, { cause: options.cause });
    this.status = options.status;
    this.gatewayCode = options.gatewayCode;
    this.retryable = options.retryable;
  }
}
