/**
 * Authentication of peers, before any WebSocket exists (the upgrade request) and again during a session
 * (`reauth`): Narrowlink tokens checked against the configuration's signing keys, and agents' ServiceAccount
 * tokens checked by a TokenReview. Failures are `GatewayError`s carrying the HTTP status to answer and a
 * `reason`, counted by reason. The token is never logged.
 *
 * Key-bound tokens (`cnf.jkt`, issued by `narrowlink login`) are accepted only with a proof of possession
 * (protocol's proof.ts, RFC 9449 shape): on the upgrade a `DPoP` header with `htm` GET and `htu` the endpoint's
 * URL as the client dialled it; on `reauth` a `proof` next to the token with `htm` REAUTH and the same `htu` as
 * the session's upgrade, signed by the same key as the session's first token (a session cannot switch keys, nor
 * drop or gain a binding). Proof ids are remembered per gateway process (ProofReplayCache). See
 * docs/adr/0012-key-bound-client-tokens.md.
 */
import {
  DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
  DEFAULT_PROOF_MAX_AGE_SECONDS,
  ErrorCode,
  type GatewayConfig,
  ProofReplayCache,
  REAUTH_PROOF_METHOD,
  TokenError,
  verifyProof,
  verifyToken,
} from '@narrowlink/protocol';
import { findAgent, normalizeAgentRef } from './agent-registry.ts';
import { GatewayAuthReason, GatewayError, GatewayErrorCode } from './errors.ts';
import type { GatewayMetrics } from './metrics.ts';
import type { PeerSession, SessionIdentity, SessionKind } from './peer-session.ts';
import type { TokenReviewer } from './token-review.ts';

/** Dependencies of an {@link Authenticator}. */
export interface AuthenticatorOptions {
  /** The configuration in force (undefined before the first one: the gateway is not ready). */
  config: () => GatewayConfig | undefined;
  /** Whether the gateway is draining (new sessions are refused with 503). */
  shuttingDown: () => boolean;
  /** Wall clock, ms since epoch (token expiry). */
  now: () => number;
  /** Checks ServiceAccount tokens of injected sidecars; absent outside Kubernetes. */
  tokenReviewer?: TokenReviewer | undefined;
  /** Counts every failure of `authenticate` by `reason`. */
  authFailures: Pick<GatewayMetrics['authFailures'], 'inc'>;
  /** How far a proof's `iat` may lie from `now`, either way, seconds. Default DEFAULT_PROOF_MAX_AGE_SECONDS (60). */
  proofMaxAgeSeconds?: number | undefined;
  /** Where proof ids are remembered. Default: a ProofReplayCache of its default size, for this Authenticator. */
  proofReplay?: ProofReplayCache | undefined;
}

/**
 * The proof of possession that came with a credential, and what it must be made for. On the upgrade: the `DPoP`
 * header, `htm` GET and the endpoint's URL as the client dialled it (see app.ts for how it is derived).
 */
export interface ProofContext {
  /** The proof (header value or `reauth.proof`); undefined when none came. */
  proof: string | undefined;
  htm: string;
  /** The URL the proof must name; undefined when it cannot be told (no Host header): a proof then cannot match. */
  htu: string | undefined;
}

/** What a session's first credential bound it to: kept for its `reauth`s (keyed by the session's identity object). */
interface SessionBinding {
  /** The `cnf.jkt` of the first token; undefined for a bearer session. */
  jkt: string | undefined;
  /** The URL of the upgrade, which `reauth` proofs name too. */
  htu: string | undefined;
}

/**
 * What became of a `reauth`: `renewed` (the session takes the new expiry and groups), `deferred` (the gateway
 * could not check now but the current credential is still good: keep the session), or `refused` (close it).
 */
export type ReauthOutcome =
  | { result: 'renewed'; identity: SessionIdentity }
  | { result: 'deferred'; error: GatewayError }
  | { result: 'refused'; error: GatewayError };

/** The configuration's `tokens.deny` as sets, built once per configuration object (a reload brings a new one). */
const denylists = new WeakMap<GatewayConfig, { jti: ReadonlySet<string>; sub: ReadonlySet<string> }>();

function denylistOf(config: GatewayConfig): { jti: ReadonlySet<string>; sub: ReadonlySet<string> } {
  let lists = denylists.get(config);
  if (!lists) {
    lists = { jti: new Set(config.tokens?.deny?.jti), sub: new Set(config.tokens?.deny?.sub) };
    denylists.set(config, lists);
  }
  return lists;
}

/**
 * Whether `config`'s `tokens.deny` revokes a credential with this subject and token id (ServiceAccount tokens
 * have no `jti`; their subject is the agent's `namespace/name`).
 */
export function isDenied(config: GatewayConfig, identity: { sub: string; jti?: string | undefined }): boolean {
  const lists = denylistOf(config);
  return lists.sub.has(identity.sub) || (identity.jti !== undefined && lists.jti.has(identity.jti));
}

/** The longest `exp - iat` accepted for `kind`'s Narrowlink tokens under `config`, seconds. */
export function maxTokenLifetimeSeconds(config: GatewayConfig, kind: SessionKind): number {
  return config.tokens?.maxLifetimeSeconds?.[kind] ?? DEFAULT_MAX_TOKEN_LIFETIME_SECONDS[kind];
}

function revoked(): GatewayError {
  return new GatewayError(GatewayErrorCode.AUTH_INVALID_TOKEN, 401, 'token rejected: token has been revoked', { reason: ErrorCode.TOKEN_REVOKED });
}

/** Checks the credentials of upgrades and of `reauth` (see the file header). */
export class Authenticator {
  readonly #config: () => GatewayConfig | undefined;
  readonly #shuttingDown: () => boolean;
  readonly #now: () => number;
  readonly #tokenReviewer: TokenReviewer | undefined;
  readonly #authFailures: AuthenticatorOptions['authFailures'];
  readonly #proofMaxAgeSeconds: number;
  readonly #proofReplay: ProofReplayCache;
  /**
   * Each session's binding, by its identity object (the one `authenticate` returned, which the session keeps and
   * `reauth` updates in place): the session module need not know about proofs, and a closed session's entry goes
   * with it.
   */
  readonly #bindings = new WeakMap<SessionIdentity, SessionBinding>();

  constructor(options: AuthenticatorOptions) {
    this.#config = options.config;
    this.#shuttingDown = options.shuttingDown;
    this.#now = options.now;
    this.#tokenReviewer = options.tokenReviewer;
    this.#authFailures = options.authFailures;
    this.#proofMaxAgeSeconds = options.proofMaxAgeSeconds ?? DEFAULT_PROOF_MAX_AGE_SECONDS;
    this.#proofReplay = options.proofReplay ?? new ProofReplayCache();
  }

  /**
   * Authenticates an upgrade request (`Authorization: Bearer <token>`). `agentRef` is the agent a sidecar names
   * itself (it then presents a ServiceAccount token). `proof` is the proof of possession that came with it
   * (required when the token is key-bound; absent counts as no proof). Throws GatewayError with the HTTP status
   * to answer.
   */
  async authenticate(kind: SessionKind, authorization: string | undefined, agentRef?: string, proof?: ProofContext): Promise<SessionIdentity> {
    try {
      if (this.#shuttingDown()) throw new GatewayError(GatewayErrorCode.SHUTTING_DOWN, 503, 'gateway is shutting down; reconnect shortly');
      const config = this.#config();
      if (!config) throw new GatewayError(GatewayErrorCode.NOT_READY, 503, 'gateway has no configuration yet');
      const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
      if (!match) throw new GatewayError(GatewayErrorCode.AUTH_MISSING_TOKEN, 401, 'send "Authorization: Bearer <token>"');
      // An agent naming itself presents a ServiceAccount token (injected sidecar), checked by TokenReview.
      if (kind === 'agent' && agentRef !== undefined) return await this.#authenticateServiceAccount(config, match[1] as string, agentRef);
      let claims: Awaited<ReturnType<typeof verifyToken>>;
      try {
        claims = await verifyToken(match[1] as string, {
          publicKeysPem: config.signingPublicKeys,
          audience: config.audience,
          expectedType: kind,
          nowMs: this.#now(),
          maxLifetimeSeconds: maxTokenLifetimeSeconds(config, kind),
        });
      } catch (error) {
        if (!(error instanceof TokenError)) throw error;
        const wrongType = error.code === ErrorCode.TOKEN_WRONG_TYPE;
        throw new GatewayError(
          wrongType ? GatewayErrorCode.AUTH_WRONG_ENDPOINT : GatewayErrorCode.AUTH_INVALID_TOKEN,
          wrongType ? 403 : 401,
          wrongType ? `this endpoint takes ${kind} tokens` : `token rejected: ${error.message}`,
          { reason: error.code, cause: error },
        );
      }
      // verifyToken allows 30 s of skew past `exp`, but the sweep closes a session at `exp` itself: accepting such a
      // token would let a peer reconnect and be closed again, in a loop, for those 30 s.
      if (claims.exp * 1000 <= this.#now()) {
        throw new GatewayError(GatewayErrorCode.AUTH_INVALID_TOKEN, 401, 'token rejected: token has expired', { reason: ErrorCode.TOKEN_EXPIRED });
      }
      // A key-bound token is worth nothing without its key: the proof is part of authenticating it.
      if (claims.cnf) await this.#checkProof(match[1] as string, claims.cnf.jkt, proof);
      // The configuration of now, not of before the await: a reload may have removed the agent (or denied the
      // token) meanwhile.
      const current = this.#config() ?? config;
      if (isDenied(current, claims)) throw revoked();
      if (kind === 'agent' && !findAgent(current, normalizeAgentRef(claims.sub))) {
        throw new GatewayError(GatewayErrorCode.AUTH_UNKNOWN_AGENT, 403, `agent "${claims.sub}" is not configured on this gateway`);
      }
      const identity: SessionIdentity = { sub: claims.sub, groups: claims.groups, typ: kind, expiresAtMs: claims.exp * 1000, jti: claims.jti };
      this.#bindings.set(identity, { jkt: claims.cnf?.jkt, htu: proof?.htu });
      return identity;
    } catch (error) {
      const gatewayError = asGatewayError(error);
      this.#authFailures.inc({ reason: gatewayError.reason });
      throw gatewayError;
    }
  }

  async #checkProof(token: string, jkt: string, context: ProofContext | undefined): Promise<void> {
    try {
      await verifyProof(context?.proof, {
        token,
        htm: context?.htm ?? 'GET',
        // No URL to compare with: nothing can match it (never a wildcard).
        htu: context?.htu ?? 'invalid:',
        expectedJkt: jkt,
        nowMs: this.#now(),
        maxAgeSeconds: this.#proofMaxAgeSeconds,
        replay: this.#proofReplay,
      });
    } catch (error) {
      if (!(error instanceof TokenError)) throw error;
      throw new GatewayError(GatewayErrorCode.AUTH_INVALID_TOKEN, 401, `token rejected: ${error.message}`, { reason: error.code, cause: error });
    }
  }

  async #authenticateServiceAccount(config: GatewayConfig, token: string, agentRef: string): Promise<SessionIdentity> {
    if (!this.#tokenReviewer) {
      throw new GatewayError(GatewayErrorCode.AUTH_INVALID_TOKEN, 401, 'this gateway does not accept ServiceAccount tokens (it runs without Kubernetes)', {
        reason: GatewayAuthReason.TOKEN_REVIEW_UNAVAILABLE,
      });
    }
    let result: Awaited<ReturnType<TokenReviewer['review']>>;
    try {
      result = await this.#tokenReviewer.review(token, config.audience);
    } catch (error) {
      throw new GatewayError(GatewayErrorCode.NOT_READY, 503, 'cannot verify ServiceAccount tokens right now (TokenReview failed); retry', {
        reason: GatewayAuthReason.TOKEN_REVIEW_UNAVAILABLE,
        cause: error,
      });
    }
    if (!result.authenticated) throw new GatewayError(GatewayErrorCode.AUTH_INVALID_TOKEN, 401, 'ServiceAccount token rejected by the TokenReview', { reason: result.reason });
    // Only an authenticated caller learns whether the agent exists (no name oracle before authentication).
    const key = normalizeAgentRef(agentRef);
    if (isDenied(this.#config() ?? config, { sub: key })) throw revoked();
    const agent = findAgent(this.#config(), key);
    if (!agent) throw new GatewayError(GatewayErrorCode.AUTH_UNKNOWN_AGENT, 403, `agent "${agentRef}" is not configured on this gateway`);
    if (result.namespace !== agent.namespace || !agent.serviceAccounts.includes(result.serviceAccount)) {
      throw new GatewayError(
        GatewayErrorCode.AUTH_SERVICE_ACCOUNT_NOT_ALLOWED,
        403,
        `ServiceAccount ${result.namespace}/${result.serviceAccount} may not attach as agent ${key}`,
      );
    }
    return { sub: key, groups: [], typ: 'agent', expiresAtMs: result.expiresAtMs, viaServiceAccount: true };
  }

  /**
   * Checks a fresh credential (`reauth`) for a session of `kind` with `identity`: the same way as at the upgrade
   * (a ServiceAccount agent through the TokenReview again), and it must name the same subject. A key-bound token
   * needs `proof` (`htm` REAUTH, the upgrade's URL), and its key must be the session's: a session keeps the binding
   * of its first token (no other key, no dropping or gaining one). A 503 (the TokenReview is unavailable, the
   * gateway drains) while the current credential is still good defers instead of refusing: the peer retries, and
   * the sweep ends the session at expiry if it never succeeds.
   */
  async reauthenticate(kind: SessionKind, identity: Readonly<SessionIdentity>, token: string, proof?: string): Promise<ReauthOutcome> {
    try {
      const binding = this.#bindings.get(identity);
      const next = await this.authenticate(kind, `Bearer ${token}`, identity.viaServiceAccount ? identity.sub : undefined, {
        proof,
        htm: REAUTH_PROOF_METHOD,
        htu: binding?.htu,
      });
      if (next.sub !== identity.sub) {
        throw new GatewayError(GatewayErrorCode.AUTH_INVALID_TOKEN, 401, 'a session cannot change identity; reconnect instead', {
          reason: GatewayAuthReason.AUTH_IDENTITY_CHANGED,
        });
      }
      const nextJkt = this.#bindings.get(next)?.jkt;
      if (nextJkt !== binding?.jkt) {
        // Like a change of subject, not counted as an authentication failure: the credential itself was good.
        throw new GatewayError(GatewayErrorCode.AUTH_INVALID_TOKEN, 401, 'token rejected: a session cannot switch to another key (or drop or gain one); reconnect instead', {
          reason: ErrorCode.TOKEN_PROOF_KEY_MISMATCH,
        });
      }
      return { result: 'renewed', identity: next };
    } catch (error) {
      const e = asGatewayError(error);
      if (e.statusCode === 503 && this.#now() < identity.expiresAtMs) return { result: 'deferred', error: e };
      return { result: 'refused', error: e };
    }
  }
}

/**
 * Closes every live session whose credential `config` denies (`tokens.deny`): the peer hears NL_ERR_TOKEN_REVOKED
 * and the session closes with 4401. Sessions already closing are left alone. Returns how many were closed.
 */
export function closeRevokedSessions(config: GatewayConfig, sessions: Iterable<PeerSession>): number {
  let closed = 0;
  for (const session of sessions) {
    if (session.state === 'closing' || session.state === 'closed' || !isDenied(config, session.identity)) continue;
    session.log.info({ code: ErrorCode.TOKEN_REVOKED }, 'the configuration revokes this session\'s token; closing it');
    session.mux.sendControl({ type: 'error', code: ErrorCode.TOKEN_REVOKED, message: 'token revoked by the gateway configuration; reconnect with another token' });
    session.close(4401, ErrorCode.TOKEN_REVOKED);
    closed++;
  }
  return closed;
}

/** Anything unexpected becomes a masked 500. */
function asGatewayError(error: unknown): GatewayError {
  return error instanceof GatewayError ? error : new GatewayError(GatewayErrorCode.INTERNAL, 500, 'internal error', { cause: error });
}
