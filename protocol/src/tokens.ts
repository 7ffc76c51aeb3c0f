/**
 * Agent and client tokens: compact JWTs signed with EdDSA over Ed25519, nothing else.
 *
 * Verification is done in a fixed order so that every failure maps to exactly one public code:
 * shape (TOKEN_MALFORMED) → header `alg` (TOKEN_ALG_NOT_ALLOWED, checked by us before any crypto so `none`
 * and HMAC confusion never reach a verifier) → signature against each configured key (TOKEN_BAD_SIGNATURE)
 * → claim types (TOKEN_MISSING_CLAIM) → time (TOKEN_EXPIRED / TOKEN_NOT_YET_VALID) → lifetime, when the caller
 * sets a maximum (TOKEN_LIFETIME_TOO_LONG) → audience
 * (TOKEN_BAD_AUDIENCE) → token type (TOKEN_WRONG_TYPE). Claims are only interpreted after the signature
 * verified, so an attacker learns nothing from which claim error they get.
 *
 * A token may be bound to a key (`cnf: { jkt }`, RFC 7800 / RFC 9449): then it is accepted only with a proof
 * of possession of that key, which the verifier checks with `verifyProof` (proof.ts). verifyToken only checks
 * the claim's shape (TOKEN_MISSING_CLAIM when `cnf` is not `{ jkt: <thumbprint> }`) and returns it.
 *
 * Tokens are bearer secrets: they never appear in error messages; log {@link tokenFingerprint} instead.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, randomUUID } from 'node:crypto';
import { compactVerify, errors as joseErrors, SignJWT } from 'jose';
import { ConfigError, ErrorCode, TokenError } from './errors.ts';

/** Who a token is for: an agent sidecar attaching to the gateway, or a client (CLI user / workload). */
export type TokenType = 'agent' | 'client';

/** Verified claims. All times are seconds since the Unix epoch. */
export interface TokenClaims {
  /** Which kind of peer this token authenticates. */
  typ: TokenType;
  /** Subject: user name, `system:serviceaccount:<ns>:<name>`, or the agent's `<namespace>/<name>`. */
  sub: string;
  /** The audience the token was accepted for (the one passed to {@link verifyToken}). */
  aud: string;
  /** Group memberships used by policy subjects of kind `Group`; `[]` when the token carries none. */
  groups: string[];
  /** Expiry, seconds since epoch. */
  exp: number;
  /** Issued-at, seconds since epoch. */
  iat: number;
  /** Unique token id (for revocation lists and audit). */
  jti: string;
  /**
   * Confirmation: the token is bound to the key whose RFC 7638 SHA-256 thumbprint is `jkt` (base64url), and is
   * only good together with a proof of possession signed by that key. Absent: a plain bearer token.
   */
  cnf?: TokenConfirmation;
}

/** The `cnf` claim of a key-bound token. */
export interface TokenConfirmation {
  /** RFC 7638 JWK SHA-256 thumbprint (base64url, 43 characters) of the client's Ed25519 public key. */
  jkt: string;
}

/** Audience used when none is given, on both sides. */
export const DEFAULT_AUDIENCE = 'narrowlink';
/** Clock skew accepted on `exp`, `nbf` and `iat` when none is given. */
export const DEFAULT_CLOCK_TOLERANCE_SECONDS = 30;

const ALLOWED_ALG = 'EdDSA';
const TOKEN_TYPES: readonly string[] = ['agent', 'client'] satisfies TokenType[];

/** Imported public keys by PEM text. Bounded so a config that churns keys cannot grow it without limit. */
const PUBLIC_KEY_CACHE_MAX = 32;
const publicKeyCache = new Map<string, KeyObject>();

/** Generates a fresh Ed25519 signing key pair as PKCS8 (private) and SPKI (public) PEM. */
export async function generateSigningKeyPair(): Promise<{ privateKeyPem: string; publicKeyPem: string }> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519', {
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

/** Options of {@link signToken}. */
export interface SignTokenOptions {
  typ: TokenType;
  sub: string;
  /** Default `[]`. */
  groups?: string[];
  /** Default {@link DEFAULT_AUDIENCE}. */
  audience?: string;
  /** Lifetime in whole seconds, > 0. */
  ttlSeconds: number;
  /** Issue time in ms since epoch; default `Date.now()`. */
  nowMs?: number;
  /** Token id; default a random UUID. */
  jti?: string;
  /** Binds the token to a key (`jwkThumbprint(x)` of proof.ts); default: none, a bearer token. */
  cnf?: TokenConfirmation;
}

/**
 * Signs a token. Header is `{ alg: 'EdDSA', typ: 'JWT' }`; the token type goes in the `typ` payload claim.
 * Throws ConfigError(CONFIG_INVALID) if the key is not an Ed25519 PKCS8 PEM, RangeError on bad options.
 */
export async function signToken(privateKeyPem: string, opts: SignTokenOptions): Promise<string> {
  if (!TOKEN_TYPES.includes(opts.typ)) throw new RangeError('signToken: typ must be "agent" or "client"');
  if (typeof opts.sub !== 'string' || opts.sub === '') throw new RangeError('signToken: sub must be a non-empty string');
  if (!Number.isInteger(opts.ttlSeconds) || opts.ttlSeconds <= 0) {
    throw new RangeError('signToken: ttlSeconds must be a positive integer');
  }
  if (opts.cnf !== undefined && !isThumbprint(opts.cnf?.jkt)) {
    throw new RangeError('signToken: cnf.jkt must be a base64url SHA-256 thumbprint (43 characters)');
  }
  const key = importPrivateKey(privateKeyPem);
  const iat = Math.floor((opts.nowMs ?? Date.now()) / 1000);
  return new SignJWT({ typ: opts.typ, groups: opts.groups ?? [], ...(opts.cnf ? { cnf: { jkt: opts.cnf.jkt } } : {}) })
    .setProtectedHeader({ alg: ALLOWED_ALG, typ: 'JWT' })
    .setSubject(opts.sub)
    .setAudience(opts.audience ?? DEFAULT_AUDIENCE)
    .setIssuedAt(iat)
    .setExpirationTime(iat + opts.ttlSeconds)
    .setJti(opts.jti ?? randomUUID())
    .sign(key);
}

/** Options of {@link verifyToken}. */
export interface VerifyTokenOptions {
  /** SPKI PEMs of the accepted signing keys; any one may match (key rotation). At least one. */
  publicKeysPem: string[];
  /** Default {@link DEFAULT_AUDIENCE}. */
  audience?: string;
  expectedType: TokenType;
  /** Verification time in ms since epoch; default `Date.now()`. */
  nowMs?: number;
  /** Accepted clock skew; default {@link DEFAULT_CLOCK_TOLERANCE_SECONDS}. */
  clockToleranceSeconds?: number;
  /** Longest accepted `exp - iat`, seconds (TOKEN_LIFETIME_TOO_LONG beyond it); default: no limit. */
  maxLifetimeSeconds?: number;
}

/**
 * Verifies a token and returns its claims. Throws TokenError whose `code` is one of the `TOKEN_*` codes
 * (see module comment for the order of checks). Throws ConfigError(CONFIG_INVALID) if a configured public
 * key is not an Ed25519 SPKI PEM or the list is empty: that is the operator's fault, not the caller's.
 */
export async function verifyToken(token: string, opts: VerifyTokenOptions): Promise<TokenClaims> {
  if (opts.publicKeysPem.length === 0) {
    throw new ConfigError(ErrorCode.CONFIG_INVALID, 'verifyToken: no signing public keys configured');
  }
  const keys = opts.publicKeysPem.map(importPublicKey);

  checkShapeAndAlg(token);

  let payloadBytes: Uint8Array | undefined;
  let lastFailure: unknown;
  for (const key of keys) {
    try {
      const result = await compactVerify(token, key, { algorithms: [ALLOWED_ALG] });
      payloadBytes = result.payload;
      break;
    } catch (err) {
      if (err instanceof joseErrors.JWSSignatureVerificationFailed) {
        lastFailure = err;
        continue;
      }
      if (err instanceof joseErrors.JOSEAlgNotAllowed) {
        throw new TokenError(ErrorCode.TOKEN_ALG_NOT_ALLOWED, 'token algorithm is not allowed', { cause: err });
      }
      // JWSInvalid, JOSENotSupported (e.g. unknown `crit`), bad base64: the token itself is broken.
      throw new TokenError(ErrorCode.TOKEN_MALFORMED, 'token is not a valid JWS', { cause: err });
    }
  }
  if (payloadBytes === undefined) {
    throw new TokenError(ErrorCode.TOKEN_BAD_SIGNATURE, 'token signature does not match any configured key', {
      cause: lastFailure,
    });
  }

  const payload = decodeJsonObject(payloadBytes, 'payload');
  return checkClaims(payload, opts);
}

/** First 12 hex chars of the token's SHA-256: safe to log, enough to correlate. */
export function tokenFingerprint(token: string): string {
  return createHash('sha256').update(token).digest('hex').slice(0, 12);
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;
/** base64url (no padding) of 32 bytes: the shape of a SHA-256 JWK thumbprint. */
const THUMBPRINT = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/;

function isThumbprint(v: unknown): v is string {
  return typeof v === 'string' && THUMBPRINT.test(v);
}

/** Structural checks and the `alg` allow-list, before any key is touched. */
function checkShapeAndAlg(token: string): void {
  if (typeof token !== 'string' || token.length === 0) {
    throw new TokenError(ErrorCode.TOKEN_MALFORMED, 'token is empty');
  }
  const parts = token.split('.');
  if (parts.length !== 3) {
    throw new TokenError(ErrorCode.TOKEN_MALFORMED, 'token must have three dot-separated parts');
  }
  const [headerPart = '', payloadPart = '', signaturePart = ''] = parts;
  if (headerPart === '' || payloadPart === '' || !parts.every((p) => BASE64URL.test(p))) {
    throw new TokenError(ErrorCode.TOKEN_MALFORMED, 'token parts must be non-empty base64url');
  }
  const header = decodeJsonObject(Buffer.from(headerPart, 'base64url'), 'header');
  if (header.alg !== ALLOWED_ALG) {
    throw new TokenError(ErrorCode.TOKEN_ALG_NOT_ALLOWED, `token algorithm is not allowed (only ${ALLOWED_ALG})`);
  }
  // Decode the payload early too, so garbage reports MALFORMED rather than BAD_SIGNATURE.
  decodeJsonObject(Buffer.from(payloadPart, 'base64url'), 'payload');
  if (signaturePart === '') {
    throw new TokenError(ErrorCode.TOKEN_MALFORMED, 'token has no signature');
  }
}

function decodeJsonObject(bytes: Uint8Array, what: 'header' | 'payload'): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (err) {
    throw new TokenError(ErrorCode.TOKEN_MALFORMED, `token ${what} is not valid JSON`, { cause: err });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new TokenError(ErrorCode.TOKEN_MALFORMED, `token ${what} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

function missing(claim: string): TokenError {
  return new TokenError(ErrorCode.TOKEN_MISSING_CLAIM, `token claim "${claim}" is missing or has the wrong type`);
}

function isNonEmptyString(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0;
}

function isNumericDate(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

function checkClaims(p: Record<string, unknown>, opts: VerifyTokenOptions): TokenClaims {
  // 1. Presence and types.
  const { sub, exp, iat, jti, typ, nbf, aud } = p;
  if (!isNonEmptyString(sub)) throw missing('sub');
  if (!isNumericDate(exp)) throw missing('exp');
  if (!isNumericDate(iat)) throw missing('iat');
  if (!isNonEmptyString(jti)) throw missing('jti');
  if (!isNonEmptyString(typ)) throw missing('typ');
  if (nbf !== undefined && !isNumericDate(nbf)) throw missing('nbf');
  let groups: string[] = [];
  if (p.groups !== undefined) {
    if (!Array.isArray(p.groups) || !p.groups.every((g) => typeof g === 'string')) throw missing('groups');
    groups = [...(p.groups as string[])];
  }
  let cnf: TokenConfirmation | undefined;
  if (p.cnf !== undefined) {
    // Exactly `{ jkt }`: a confirmation method we do not check (x5t#S256, jwk, …) must not pass as a bearer token.
    const c = p.cnf;
    if (typeof c !== 'object' || c === null || Array.isArray(c) || Object.keys(c).length !== 1 || !isThumbprint((c as { jkt?: unknown }).jkt)) {
      throw missing('cnf');
    }
    cnf = { jkt: (c as { jkt: string }).jkt };
  }

  // 2. Time. Expired when exp <= now - tolerance (RFC 7519 §4.1.4: "on or after").
  const nowSeconds = (opts.nowMs ?? Date.now()) / 1000;
  const tolerance = opts.clockToleranceSeconds ?? DEFAULT_CLOCK_TOLERANCE_SECONDS;
  if (exp <= nowSeconds - tolerance) throw new TokenError(ErrorCode.TOKEN_EXPIRED, 'token has expired');
  if (nbf !== undefined && nbf > nowSeconds + tolerance) {
    throw new TokenError(ErrorCode.TOKEN_NOT_YET_VALID, 'token is not valid yet (nbf in the future)');
  }
  if (iat > nowSeconds + tolerance) {
    throw new TokenError(ErrorCode.TOKEN_NOT_YET_VALID, 'token is not valid yet (iat in the future)');
  }
  // A token minted to live for years is worth as much to whoever copies it: the issuer's word is not enough.
  if (opts.maxLifetimeSeconds !== undefined && exp - iat > opts.maxLifetimeSeconds) {
    throw new TokenError(ErrorCode.TOKEN_LIFETIME_TOO_LONG, `token lifetime (exp - iat) exceeds the maximum of ${opts.maxLifetimeSeconds} s`);
  }

  // 3. Audience: a string, or an array that contains ours (RFC 7519 §4.1.3).
  const audience = opts.audience ?? DEFAULT_AUDIENCE;
  const audOk = aud === audience || (Array.isArray(aud) && aud.includes(audience));
  if (!audOk) throw new TokenError(ErrorCode.TOKEN_BAD_AUDIENCE, 'token audience does not match');

  // 4. Type last: an agent token must never be usable as a client token and vice versa.
  if (typ !== opts.expectedType) {
    throw new TokenError(ErrorCode.TOKEN_WRONG_TYPE, `token type is not "${opts.expectedType}"`);
  }

  return { typ: opts.expectedType, sub, aud: audience, groups, exp, iat, jti, ...(cnf ? { cnf } : {}) };
}

function importPublicKey(pem: string, index: number): KeyObject {
  const cached = publicKeyCache.get(pem);
  if (cached !== undefined) {
    // Refresh recency: Map iteration order is insertion order, so the first entry is the least recently used.
    publicKeyCache.delete(pem);
    publicKeyCache.set(pem, cached);
    return cached;
  }
  // createPublicKey would happily derive a public key from a private PEM; a private key in the gateway's
  // config is a leak we refuse to paper over.
  if (!pem.includes('-----BEGIN PUBLIC KEY-----')) {
    throw new ConfigError(ErrorCode.CONFIG_INVALID, `signing public key #${index} is not a PEM "PUBLIC KEY" block`);
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new ConfigError(ErrorCode.CONFIG_INVALID, `signing public key #${index} is not a valid PEM public key`, {
      cause: err,
    });
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new ConfigError(ErrorCode.CONFIG_INVALID, `signing public key #${index} is not an Ed25519 key`);
  }
  if (publicKeyCache.size >= PUBLIC_KEY_CACHE_MAX) {
    const oldest = publicKeyCache.keys().next();
    if (oldest.done !== true) publicKeyCache.delete(oldest.value);
  }
  publicKeyCache.set(pem, key);
  return key;
}

function importPrivateKey(pem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new ConfigError(ErrorCode.CONFIG_INVALID, 'signing private key is not a valid PEM private key', {
      cause: err,
    });
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new ConfigError(ErrorCode.CONFIG_INVALID, 'signing private key is not an Ed25519 key');
  }
  return key;
}
