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
  /** The gateway could not be reached. */
  UNREACHABLE: 4,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export const CliErrorCode = {
  USAGE: 'NL_ERR_CLI_USAGE',
  CONFIG: 'NL_ERR_CLI_CONFIG',
  LISTEN: 'NL_ERR_CLI_LISTEN',
  AMBIGUOUS_PORT: 'NL_ERR_CLI_AMBIGUOUS_PORT',
} as const;
export type CliErrorCode = (typeof CliErrorCode)[keyof typeof CliErrorCode];

export class CliError extends NarrowlinkError {
  readonly exitCode: ExitCode;
  constructor(code: CliErrorCode, message: string, exitCode: ExitCode = ExitCode.USAGE, options?: { cause?: unknown }) {
    super(code, message, options);
    this.exitCode = exitCode;
  }
}
