/**
 * Keeps a logged-in context's token fresh for a running command. It is the link's token provider: the link asks for
 * a token at every dial and, for an open session, at 80 % of the time left (peer-link's ReauthScheduler, which sends
 * `reauth` with a fresh proof when the token changed). Past {@link RENEW_AT_FRACTION} of the token's lifetime the
 * provider first runs the login exchange again with the kubeconfig credential. When that fails (the kubeconfig
 * credential expired, RBAC was revoked) it says so once per failure and hands out the old token: the session keeps
 * working until that token expires, and the next attempt comes after {@link RENEW_RETRY_MS}: a long-running command
 * whose session then drops keeps listening and retrying, and recovers once the cluster credential works again.
 */
import { CliError, CliErrorCode, ExitCode } from '../errors.ts';
import type { CachedLogin } from './cache.ts';

/** Fraction of a token's lifetime (issuedAt..expiresAt) after which a renewal is due; below the link's 80 %. */
export const RENEW_AT_FRACTION = 0.7;
/** Wait between failed renewal attempts, ms. */
export const RENEW_RETRY_MS = 30_000;
/** A token this close to its expiry counts as expired (clock skew with the gateway), ms. */
export const EXPIRY_MARGIN_MS = 30_000;

/** What the renewer reports (the CLI's Reporter fits). */
export interface RenewalReporter {
  event(event: string, fields: Record<string, unknown>, text: string): void;
}

export interface TokenRenewerOptions {
  entry: CachedLogin;
  /** Runs the exchange again; resolves with the rewritten entry. */
  renew: (entry: CachedLogin) => Promise<CachedLogin>;
  reporter?: RenewalReporter | undefined;
  /** Epoch ms (default Date.now). */
  now?: () => number;
}

/** One context's token for the life of a command. */
export class TokenRenewer {
  #entry: CachedLogin;
  readonly #renew: TokenRenewerOptions['renew'];
  readonly #reporter: RenewalReporter | undefined;
  readonly #now: () => number;
  #nextAttemptMs = 0;
  #inflight: Promise<void> | undefined;
  /** Renewals that succeeded / failed so far. */
  renewals = 0;
  failures = 0;

  constructor(options: TokenRenewerOptions) {
    this.#entry = options.entry;
    this.#renew = options.renew;
    this.#reporter = options.reporter;
    this.#now = options.now ?? Date.now;
  }

  get entry(): CachedLogin {
    return this.#entry;
  }

  get expiresAtMs(): number {
    return Date.parse(this.#entry.expiresAt);
  }

  /** When a renewal becomes due, epoch ms. */
  get renewAtMs(): number {
    const issued = Date.parse(this.#entry.issuedAt);
    return issued + (this.expiresAtMs - issued) * RENEW_AT_FRACTION;
  }

  expired(nowMs = this.#now()): boolean {
    return nowMs >= this.expiresAtMs - EXPIRY_MARGIN_MS;
  }

  /** The link's token provider: renews first when due (and not backing off after a failure). */
  async token(): Promise<string> {
    const now = this.#now();
    if (now >= this.renewAtMs && now >= this.#nextAttemptMs) {
      this.#inflight ??= this.#attempt().finally(() => {
        this.#inflight = undefined;
      });
      await this.#inflight;
    }
    return this.#entry.token;
  }

  /**
   * For the start of a command: a token that is not expired, renewing it if it is. Throws NL_ERR_CLI_LOGIN_EXPIRED
   * (exit 3) when it is expired and cannot be renewed.
   */
  async usableToken(): Promise<string> {
    const token = await this.token();
    if (!this.expired()) return token;
    throw new CliError(
      CliErrorCode.LOGIN_EXPIRED,
      `the narrowlink token of context "${this.#entry.context}" expired at ${this.#entry.expiresAt} and could not be renewed: run narrowlink login`,
      ExitCode.AUTH,
    );
  }

  async #attempt(): Promise<void> {
    try {
      this.#entry = await this.#renew(this.#entry);
      this.renewals++;
      this.#nextAttemptMs = 0;
      this.#reporter?.event(
        'token-renewed',
        { context: this.#entry.context, expiresAt: this.#entry.expiresAt },
        `renewed the narrowlink token of context "${this.#entry.context}"; it now expires at ${this.#entry.expiresAt}`,
      );
    } catch (error) {
      this.failures++;
      this.#nextAttemptMs = this.#now() + RENEW_RETRY_MS;
      const e = error as Error & { code?: string };
      const expired = this.expired();
      this.#reporter?.event(
        'token-renewal-failed',
        { context: this.#entry.context, code: e.code, message: e.message, expiresAt: this.#entry.expiresAt, retryInMs: RENEW_RETRY_MS },
        expired
          ? `cannot renew the narrowlink token of context "${this.#entry.context}" (${e.code ?? 'error'}: ${e.message}); it expired at ${this.#entry.expiresAt}; refresh your cluster credential as for kubectl: retrying in ${RENEW_RETRY_MS / 1000} s`
          : `cannot renew the narrowlink token of context "${this.#entry.context}" (${e.code ?? 'error'}: ${e.message}); still listening with the current token until it expires at ${this.#entry.expiresAt}; retrying in ${RENEW_RETRY_MS / 1000} s (or run narrowlink login)`,
      );
    }
  }
}
