/**
 * Public error codes of the operator binary (CONVENTIONS.md §7). Callers and users match on `code`; each is
 * listed with meaning and fix in docs/errors.md (section `operator`). The webhook's codes are in
 * `webhook/errors.ts`.
 */
import { NarrowlinkError } from '@narrowlink/protocol';

export const OperatorErrorCode = {
  /** A flag or its `NARROWLINK_OPERATOR_*` variable is missing or invalid at startup (exit 2). */
  USAGE: 'NL_ERR_OPERATOR_USAGE',
} as const;
export type OperatorErrorCode = (typeof OperatorErrorCode)[keyof typeof OperatorErrorCode];

/** An error of the operator binary itself; `main` prints it as `narrowlink-operator: <code>: <message>`. */
export class OperatorError extends NarrowlinkError {
  constructor(code: OperatorErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
