/**
 * The token Secret of a NarrowlinkAgent that runs outside the cluster (`spec.external: true`). In-cluster
 * sidecars present a projected ServiceAccount token instead, so they get nothing here.
 *
 * Pure apart from the injected signer: the decision to mint ({@link tokenRotationReason}) reads only the
 * observed Secret, the agent and now. Decisions:
 * - Expiry is read from the token itself (its `iat`/`exp` claims), not from an annotation, so a Secret edited
 *   by hand cannot fake freshness; the annotations are for humans only.
 * - Rotation happens when less than `renewBeforeFraction` of the lifetime is left (default 20%, as the
 *   kubelet does for projected tokens). The old token is not revoked and stays valid until its own `exp`, so
 *   whoever copies the token to the external machine has that window to pick up the new one.
 * - A changed signing key (`signingKeyId`), a token for another subject (Secret copied between agents) or an
 *   unreadable token also mint a new one.
 */
import { AGENT_KIND, type NarrowlinkAgent } from '../../crds/narrowlink-agent.ts';
import { Component, ownerLabels } from '../../labels.ts';
import { boundedName, shortHash } from '../../names.ts';
import { controllerReference, isDeleting, type Secret } from '../../objects.ts';

/** Data key holding the token (what `agent-sidecar --token-file` reads when the Secret is mounted). */
export const AGENT_TOKEN_KEY = 'token';
/** Secret type: lets `kubectl get secrets --field-selector type=narrowlink.io/agent-token` find them. */
export const AGENT_TOKEN_SECRET_TYPE = 'narrowlink.io/agent-token';
/** Annotation: token expiry, RFC 3339, informational. */
export const TOKEN_EXPIRES_ANNOTATION = 'narrowlink.io/token-expires-at';
/** Annotation: id of the signing key that signed the token ({@link signingKeyId}). */
export const SIGNING_KEY_ANNOTATION = 'narrowlink.io/signing-key-id';
/** Default token lifetime: 90 days. */
export const DEFAULT_AGENT_TOKEN_TTL_SECONDS = 90 * 24 * 60 * 60;
/** Default share of the lifetime left at which a new token is minted. */
export const DEFAULT_RENEW_BEFORE_FRACTION = 0.2;
/** Longest Secret name (DNS-1123 subdomain). */
const SECRET_NAME_MAX = 253;

/** Why a new token is minted. CamelCase: usable as an Event reason. */
export const RotationReason = {
  Missing: 'TokenMissing',
  Unreadable: 'TokenUnreadable',
  WrongSubject: 'TokenWrongSubject',
  SigningKeyChanged: 'SigningKeyChanged',
  Expired: 'TokenExpired',
  NearExpiry: 'TokenNearExpiry',
} as const;
export type RotationReason = (typeof RotationReason)[keyof typeof RotationReason];

/** Mints a signed agent token (the operator wraps protocol's `signToken(privateKeyPem, {typ: 'agent', ...})`). */
export type AgentTokenSigner = (request: { sub: string; ttlSeconds: number; nowMs: number }) => Promise<string>;

/** Options shared by the rotation decision and the desired Secret. */
export interface RotationOptions {
  /** Expected `sub`: the agent's `namespace/name`. When set, a token for another subject is replaced. */
  sub?: string;
  /** Id of the current signing key ({@link signingKeyId}). When set, a token signed by another is replaced. */
  signingKeyId?: string;
  /** Mint a new token when less than this share of its lifetime is left; default 0.2. */
  renewBeforeFraction?: number;
}

/** A stable id of a signing key: the first 16 hex of SHA-256 over its public PEM. */
export function signingKeyId(publicKeyPem: string): string {
  return shortHash(publicKeyPem.trim(), 16);
}

/** Name of the token Secret of an agent. */
export function agentTokenSecretName(agentName: string): string {
  return boundedName(`${agentName}-narrowlink-token`, SECRET_NAME_MAX);
}

/** Token subject of an agent: `namespace/name`, as the gateway maps tokens to agents. */
export function agentTokenSubject(agent: NarrowlinkAgent): string {
  return `${agent.metadata.namespace ?? ''}/${agent.metadata.name ?? ''}`;
}

/** Claims read (not verified: the operator minted them) from a JWT's payload. */
function readClaims(token: string): { sub: string; iat: number; exp: number } | undefined {
  const parts = token.split('.');
  if (parts.length !== 3 || parts[1] === undefined) return undefined;
  try {
    const claims: unknown = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    if (typeof claims !== 'object' || claims === null) return undefined;
    const { sub, iat, exp } = claims as Record<string, unknown>;
    if (typeof sub !== 'string' || typeof iat !== 'number' || typeof exp !== 'number' || !(exp > iat)) return undefined;
    return { sub, iat, exp };
  } catch {
    return undefined;
  }
}

/** The token in a Secret, if it has one. */
function tokenOf(secret: Pick<Secret, 'data'> | undefined): string | undefined {
  const b64 = secret?.data?.[AGENT_TOKEN_KEY];
  if (b64 === undefined) return undefined;
  return Buffer.from(b64, 'base64').toString('utf8').trim();
}

/** When (ms since epoch) the token of a valid Secret is due for rotation; undefined when unreadable. */
export function rotationDueMs(
  secret: Pick<Secret, 'data'> | undefined,
  renewBeforeFraction = DEFAULT_RENEW_BEFORE_FRACTION,
): number | undefined {
  const token = tokenOf(secret);
  const claims = token === undefined ? undefined : readClaims(token);
  if (claims === undefined) return undefined;
  return Math.floor((claims.exp - renewBeforeFraction * (claims.exp - claims.iat)) * 1000);
}

/** Why the Secret needs a new token, or undefined when the current one is good. */
export function tokenRotationReason(
  secret: Pick<Secret, 'data' | 'metadata'> | undefined,
  nowMs: number,
  opts: RotationOptions = {},
): RotationReason | undefined {
  const token = tokenOf(secret);
  if (token === undefined || token === '') return RotationReason.Missing;
  const claims = readClaims(token);
  if (claims === undefined) return RotationReason.Unreadable;
  if (opts.sub !== undefined && claims.sub !== opts.sub) return RotationReason.WrongSubject;
  if (opts.signingKeyId !== undefined && secret?.metadata.annotations?.[SIGNING_KEY_ANNOTATION] !== opts.signingKeyId) {
    return RotationReason.SigningKeyChanged;
  }
  if (claims.exp * 1000 <= nowMs) return RotationReason.Expired;
  const due = rotationDueMs(secret, opts.renewBeforeFraction);
  if (due !== undefined && due <= nowMs) return RotationReason.NearExpiry;
  return undefined;
}

/** True when the Secret needs a new token now (see {@link tokenRotationReason}). */
export function needsRotation(
  secret: Pick<Secret, 'data' | 'metadata'> | undefined,
  nowMs: number,
  opts: RotationOptions = {},
): boolean {
  return tokenRotationReason(secret, nowMs, opts) !== undefined;
}

/** Inputs of {@link desiredAgentTokenSecret} beyond the agent and the observed Secret. */
export interface AgentTokenOptions extends Omit<RotationOptions, 'sub'> {
  nowMs: number;
  sign: AgentTokenSigner;
  /** Lifetime of a new token, seconds; default {@link DEFAULT_AGENT_TOKEN_TTL_SECONDS}. */
  ttlSeconds?: number;
}

/** What the agent's token Secret should be. */
export type AgentTokenPlan =
  /** No Secret: in-cluster agent or agent being deleted. Apply deletes an observed one that has the owner labels. */
  | { secret: undefined }
  | {
      secret: Secret;
      /** Set when a new token was minted, with why (an Event is worth emitting). */
      minted?: RotationReason;
      /** When to reconcile again to rotate, ms since epoch. */
      rotateAtMs: number;
    };

/**
 * The desired token Secret of `agent`, given the Secret observed under {@link agentTokenSecretName}. Keeps the
 * observed token while it is good (so a reconcile never changes it needlessly), else mints one with `sign`.
 */
export async function desiredAgentTokenSecret(
  agent: NarrowlinkAgent,
  observed: Pick<Secret, 'data' | 'metadata'> | undefined,
  opts: AgentTokenOptions,
): Promise<AgentTokenPlan> {
  if (agent.spec.external !== true || isDeleting(agent)) return { secret: undefined };
  const sub = agentTokenSubject(agent);
  const renewBeforeFraction = opts.renewBeforeFraction ?? DEFAULT_RENEW_BEFORE_FRACTION;
  const rotation: RotationOptions = { sub, renewBeforeFraction };
  if (opts.signingKeyId !== undefined) rotation.signingKeyId = opts.signingKeyId;
  const reason = tokenRotationReason(observed, opts.nowMs, rotation);

  let token: string;
  if (reason === undefined) {
    token = tokenOf(observed) ?? '';
  } else {
    token = await opts.sign({ sub, ttlSeconds: opts.ttlSeconds ?? DEFAULT_AGENT_TOKEN_TTL_SECONDS, nowMs: opts.nowMs });
  }
  const claims = readClaims(token);
  if (claims === undefined) throw new TypeError('desiredAgentTokenSecret: the signer returned no readable JWT');

  const annotations: Record<string, string> = {
    [TOKEN_EXPIRES_ANNOTATION]: new Date(claims.exp * 1000).toISOString(),
  };
  if (opts.signingKeyId !== undefined) annotations[SIGNING_KEY_ANNOTATION] = opts.signingKeyId;
  const namespace = agent.metadata.namespace ?? '';
  const name = agent.metadata.name ?? '';
  const secret: Secret = {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: agentTokenSecretName(name),
      namespace,
      labels: ownerLabels({ kind: AGENT_KIND, namespace, name }, Component.AgentToken),
      annotations,
      ownerReferences: [controllerReference(agent)],
    },
    type: AGENT_TOKEN_SECRET_TYPE,
    data: { [AGENT_TOKEN_KEY]: Buffer.from(token, 'utf8').toString('base64') },
  };
  const rotateAtMs = Math.floor((claims.exp - renewBeforeFraction * (claims.exp - claims.iat)) * 1000);
  return reason === undefined ? { secret, rotateAtMs } : { secret, minted: reason, rotateAtMs };
}
