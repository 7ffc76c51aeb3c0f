/** Errors of the operator's Kubernetes client. Listed in docs/errors.md. */
import { NarrowlinkError } from '@narrowlink/protocol';

export const KubeErrorCode = {
  /** The API server answered with an error status (see `status` and `reason`). */
  API: 'NL_ERR_KUBE_API',
  /** The API server could not be reached or the connection broke. */
  TRANSPORT: 'NL_ERR_KUBE_TRANSPORT',
  /** A watch stream ended with an ERROR event (410 Gone: the resourceVersion is too old; re-list). */
  WATCH: 'NL_ERR_KUBE_WATCH',
} as const;
export type KubeErrorCode = (typeof KubeErrorCode)[keyof typeof KubeErrorCode];

export class KubeError extends NarrowlinkError {
  /** HTTP status, when the server answered. */
  readonly status: number | undefined;
  /** The Status object's `reason` (NotFound, Conflict, Invalid, Expired, Gone, …). */
  readonly reason: string | undefined;
  /** Field paths named by an Invalid (422) answer. */
  readonly fields: string[];
  constructor(code: KubeErrorCode, message: string, options: { status?: number; reason?: string; fields?: string[]; cause?: unknown } = {}) {
    super(code, message, { cause: options.cause });
    this.status = options.status;
    this.reason = options.reason;
    this.fields = options.fields ?? [];
  }

  get notFound(): boolean {
    return this.status === 404;
  }
  get conflict(): boolean {
    return this.status === 409;
  }
  get gone(): boolean {
    return this.status === 410;
  }
}
