/**
 * The text of a gateway's rate-limit refusal of a request that has no reply of its own to carry it (`list_agents`,
 * `reauth`): a session `error` (the gateway's `GatewayErrorCode.RATE_LIMITED`) whose message names the request kind
 * first, in this exact form, so a peer can tell it from any other error without knowing the gateway's codes.
 * The error message has no request id (its schema is strict, and older peers reject unknown fields), so the kind
 * is what lets a peer fail the request it was waiting for at once instead of timing out.
 */

/** Request kinds a gateway refuses with a session error when over their rate limit. */
export type RateLimitedRequest = 'list_agents' | 'reauth';

/** The message of a refusal of `kind`, retryable after `retryAfterMs`. */
export function formatRateLimitRefusal(kind: RateLimitedRequest, retryAfterMs: number): string {
  return `${kind} rate limit; retry in ${Math.max(0, Math.ceil(retryAfterMs))} ms`;
}

/** The request kind and retry time of a refusal message, or `undefined` when it is not one. */
export function parseRateLimitRefusal(message: string): { kind: RateLimitedRequest; retryAfterMs: number } | undefined {
  const match = /^(list_agents|reauth) rate limit; retry in (\d{1,9}) ms$/.exec(message);
  if (!match) return undefined;
  return { kind: match[1] as RateLimitedRequest, retryAfterMs: Number(match[2]) };
}
