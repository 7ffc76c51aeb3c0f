/**
 * Authenticates injected sidecars by their projected ServiceAccount token (audience `narrowlink`)
 * with a TokenReview: no Narrowlink secret has to exist before the pod starts, and the kubelet
 * rotates the token. Results are cached until the token expires (successes) or briefly (failures,
 * so a stream of bad tokens cannot turn into a stream of TokenReviews). RBAC: `tokenreviews: create`.
 */
import { createHash } from 'node:crypto';
import type { KubeClient, ResourceType } from '@narrowlink/kube';
import { ErrorCode } from '@narrowlink/protocol';
import { GatewayAuthReason } from './errors.ts';

export const tokenReviews: ResourceType = { group: 'authentication.k8s.io', version: 'v1', plural: 'tokenreviews', kind: 'TokenReview', namespaced: false };

export type ReviewResult =
  | { authenticated: true; namespace: string; serviceAccount: string; expiresAtMs: number }
  | { authenticated: false; reason: string };

export interface TokenReviewer {
  review(token: string, audience: string): Promise<ReviewResult>;
}

const SA_USER = /^system:serviceaccount:([a-z0-9.-]+):([a-z0-9.-]+)$/;

/** `exp` of a JWT, unverified (the TokenReview verified it), or undefined. */
function unverifiedExpiryMs(token: string): number | undefined {
  try {
    const payload = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { exp?: unknown };
    return typeof payload.exp === 'number' ? payload.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

export class KubeTokenReviewer implements TokenReviewer {
  readonly #client: KubeClient;
  readonly #now: () => number;
  readonly #cache = new Map<string, { result: ReviewResult; until: number }>();
  readonly #maxEntries: number;
  /** How long a rejection is remembered, ms. */
  readonly negativeTtlMs: number;
  /** Longest time an acceptance is remembered, ms (never past the token's expiry). */
  readonly positiveTtlMs: number;
  reviews = 0;

  constructor(client: KubeClient, options: { now?: () => number; maxEntries?: number; negativeTtlMs?: number; positiveTtlMs?: number } = {}) {
    this.#client = client;
    this.#now = options.now ?? Date.now;
    this.#maxEntries = options.maxEntries ?? 10_000;
    this.negativeTtlMs = options.negativeTtlMs ?? 10_000;
    this.positiveTtlMs = options.positiveTtlMs ?? 30_000;
  }

  async review(token: string, audience: string): Promise<ReviewResult> {
    const key = createHash('sha256').update(audience).update('\0').update(token).digest('hex');
    const now = this.#now();
    const cached = this.#cache.get(key);
    if (cached && cached.until > now) return cached.result;
    this.#cache.delete(key);
    const result = await this.#ask(token, audience, now);
    // Successes are trusted for a short while only (like the API server's own cache): a deleted
    // ServiceAccount or pod must stop new sessions soon, not at the token's expiry.
    const until = result.authenticated ? Math.min(result.expiresAtMs, now + this.positiveTtlMs) : now + this.negativeTtlMs;
    if (this.#cache.size >= this.#maxEntries) this.#cache.delete(this.#cache.keys().next().value as string);
    this.#cache.set(key, { result, until });
    return result;
  }

  async #ask(token: string, audience: string, now: number): Promise<ReviewResult> {
    this.reviews++;
    const answer = (await this.#client.create(tokenReviews, {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenReview',
      metadata: {},
      spec: { token, audiences: [audience] },
    })) as { status?: { authenticated?: boolean; error?: string; audiences?: string[]; user?: { username?: string } } };
    const status = answer.status ?? {};
    if (!status.authenticated) return { authenticated: false, reason: GatewayAuthReason.TOKEN_REVIEW_REJECTED };
    // The API server echoes the audiences the token is valid for; it must include ours.
    if (status.audiences && !status.audiences.includes(audience)) return { authenticated: false, reason: ErrorCode.TOKEN_BAD_AUDIENCE };
    const match = SA_USER.exec(status.user?.username ?? '');
    if (!match) return { authenticated: false, reason: GatewayAuthReason.TOKEN_NOT_SERVICE_ACCOUNT };
    const expiresAtMs = unverifiedExpiryMs(token) ?? now + 60_000;
    if (expiresAtMs <= now) return { authenticated: false, reason: ErrorCode.TOKEN_EXPIRED };
    return { authenticated: true, namespace: match[1] as string, serviceAccount: match[2] as string, expiresAtMs };
  }
}
