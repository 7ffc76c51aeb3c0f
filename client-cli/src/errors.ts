/**
 * Public error codes of the `narrowlink` CLI and the process exit codes they map to.
 * Listed in docs/errors.md.
 */
import { NarrowlinkError } from '@narrowlink/protocol';

export const ExitCode = {
  OK: 0,
  /** A stream failed (denied, no agent, dial failed, timeout). */
  FAILURE: 1,
  /** Bad flags or arguments. */
  USAGE: 2,
  /** The gateway refused our credentials. */
  AUTH: 3,
  /** The gateway (or, for `login`, the Kubernetes API server) could not be reached. */
  UNREACHABLE: 4,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export const CliErrorCode = {
  USAGE: 'NL_ERR_CLI_USAGE',
  CONFIG: 'NL_ERR_CLI_CONFIG',
  LISTEN: 'NL_ERR_CLI_LISTEN',
  AMBIGUOUS_PORT: 'NL_ERR_CLI_AMBIGUOUS_PORT',
  /** No credentials anywhere: no token from flags, environment or config file, and no `narrowlink login` for the context. */
  NOT_LOGGED_IN: 'NL_ERR_CLI_NOT_LOGGED_IN',
  /** The context's cached token expired and could not be renewed with the kubeconfig credential. */
  LOGIN_EXPIRED: 'NL_ERR_CLI_LOGIN_EXPIRED',
  /** No kubeconfig, no such context, or a kubeconfig that cannot be read. */
  KUBECONFIG: 'NL_ERR_CLI_KUBECONFIG',
  /** The Kubernetes API server could not be reached (DNS, refused, TLS, timeout). */
  KUBE_UNREACHABLE: 'NL_ERR_CLI_KUBE_UNREACHABLE',
  /** The API server did not accept the kubeconfig credential (401). */
  KUBE_UNAUTHORIZED: 'NL_ERR_CLI_KUBE_UNAUTHORIZED',
  /** Any other API server error during login. */
  KUBE_API: 'NL_ERR_CLI_KUBE_API',
  /** RBAC does not let this user create ClientLoginRequests (403). */
  LOGIN_FORBIDDEN: 'NL_ERR_CLI_LOGIN_FORBIDDEN',
  /** No Narrowlink in that namespace: the discovery ConfigMap (or the ClientLoginRequest kind) is missing. */
  NOT_INSTALLED: 'NL_ERR_CLI_NOT_INSTALLED',
  /** The discovery ConfigMap exists but its data cannot be used. */
  DISCOVERY_INVALID: 'NL_ERR_CLI_DISCOVERY_INVALID',
  /** The webhook refused the request, or the operator answered Ready=False (Denied, RateLimited, Invalid). */
  LOGIN_REFUSED: 'NL_ERR_CLI_LOGIN_REFUSED',
  /** The operator wrote no token within the login timeout. */
  LOGIN_TIMEOUT: 'NL_ERR_CLI_LOGIN_TIMEOUT',
  /** A credentials cache file that cannot be used: unreadable, not ours, or readable by others. */
  CACHE: 'NL_ERR_CLI_CACHE',
} as const;
export type CliErrorCode = (typeof CliErrorCode)[keyof typeof CliErrorCode];

export class CliError extends NarrowlinkError {
  readonly exitCode: ExitCode;
  constructor(code: CliErrorCode, message: string, exitCode: ExitCode = ExitCode.USAGE, options?: { cause?: unknown }) {
    super(code, message, options);
    this.exitCode = exitCode;
  }
}
