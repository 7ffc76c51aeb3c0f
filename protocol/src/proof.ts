/**
 * Proof of possession for key-bound client tokens, in the shape of RFC 9449 (DPoP).
 *
 * A token minted for a key carries `cnf: { jkt }` (RFC 7800), the RFC 7638 thumbprint of the client's Ed25519
 * public key. Alone it is worthless: the gateway also wants a *proof*, a small JWS the client signs with the
 * private key for this one request — header `{ typ: "dpop+jwt", alg: "EdDSA", jwk: { kty: "OKP", crv:
 * "Ed25519", x } }`, payload `{ jti, iat, htm, htu, ath }` where `ath` is the SHA-256 of the token. A token
 * copied out of a log, a status field or a shell history cannot be used without the key, and a proof captured in
 * flight names one token, one method and one URL, lives for a minute and is accepted once.
 *
 * {@link verifyProof} checks in a fixed order so that every failure maps to exactly one public code:
 * absent (TOKEN_PROOF_MISSING) → size, shape, header (`typ`, `alg`, the embedded `jwk`: an Ed25519 OKP public key
 * and nothing else) and signature by that jwk (TOKEN_PROOF_INVALID) → the jwk's thumbprint against the token's
 * `cnf.jkt` (TOKEN_PROOF_KEY_MISMATCH) → payload claims, `htm`, `htu` and `ath` (TOKEN_PROOF_INVALID) → `iat`
 * within the window (TOKEN_PROOF_STALE) → `jti` not seen before (TOKEN_PROOF_REPLAYED). The `alg` and the key
 * type are checked by us before any crypto, so `alg: none`, HMAC with the public key as secret, or an RSA key
 * never reach a verifier. Only a proof that passed every other check is recorded as seen: a forged or stale proof
 * cannot fill the replay cache.
 */
import { createHash, createPublicKey, generateKeyPairSync, type KeyObject, randomUUID } from 'node:crypto';
import { CompactSign, compactVerify } from 'jose';
import { ErrorCode, TokenError } from './errors.ts';

/** The `typ` header of a proof (RFC 9449 §4.2). */
export const PROOF_TYPE = 'dpop+jwt';
/** The HTTP header that carries a proof on the WebSocket upgrade. */
export const PROOF_HEADER = 'DPoP';
/** The `htm` of the proof sent with an in-session `reauth` (the upgrade's is `GET`): a proof for one is not one for the other. */
export const REAUTH_PROOF_METHOD = 'REAUTH';
/** Longest proof accepted, characters. A real one is about 600; anything much larger is garbage or an attack. */
export const MAX_PROOF_LENGTH = 4096;
/** Longest `jti` accepted, characters (it is kept in the replay cache). */
export const MAX_PROOF_JTI_LENGTH = 128;
/** How far a proof's `iat` may lie from the verifier's clock, either way, when none is given: seconds. */
export const DEFAULT_PROOF_MAX_AGE_SECONDS = 60;
/** Proof ids the replay cache holds at most when none is given. */
export const DEFAULT_PROOF_REPLAY_CACHE_ENTRIES = 65_536;

const ALG = 'EdDSA';
const BASE64URL = /^[A-Za-z0-9_-]+$/;
/** base64url without padding of 32 bytes: 43 characters, the last one carrying 4 significant bits (its low 2 are zero). */
const ED25519_X = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/;

/** A fresh proof key: keep `privateKey` on the client; `x` (the JWK public value) goes into a login request. */
export interface ProofKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** The raw 32-byte Ed25519 public key, base64url without padding (JWK `x`). */
  x: string;
}

/** Generates an Ed25519 proof key pair. */
export function generateProofKey(): ProofKey {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { privateKey, publicKey, x: proofKeyX(publicKey) };
}

/**
 * The JWK `x` (base64url raw public key) of an Ed25519 key, public or private (a private key's public half).
 * Throws TypeError for any other key type.
 */
export function proofKeyX(key: KeyObject): string {
  if (key.asymmetricKeyType !== 'ed25519') throw new TypeError('proof keys are Ed25519 keys');
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  const jwk = publicKey.export({ format: 'jwk' });
  if (typeof jwk.x !== 'string') throw new TypeError('proof key has no public value');
  return jwk.x;
}

/** True when `x` is a well-formed JWK `x` of an Ed25519 key (base64url, no padding, 32 bytes, canonical). */
export function isEd25519X(x: unknown): x is string {
  return typeof x === 'string' && ED25519_X.test(x);
}

/**
 * RFC 7638 JWK SHA-256 thumbprint of the Ed25519 public key `x`: base64url of SHA-256 over
 * `{"crv":"Ed25519","kty":"OKP","x":"<x>"}` (required members only, in lexicographic order, no whitespace).
 * This is the token's `cnf.jkt`. Throws TypeError if `x` is not a well-formed Ed25519 `x`.
 */
export function jwkThumbprint(x: string): string {
  if (!isEd25519X(x)) throw new TypeError('jwkThumbprint: x must be the base64url (no padding) of 32 bytes');
  return createHash('sha256').update(`{"crv":"Ed25519","kty":"OKP","x":"${x}"}`).digest('base64url');
}

/** The proof's `ath`: base64url of the SHA-256 of the token's ASCII text (RFC 9449 §4.2). */
export function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'ascii').digest('base64url');
}

/**
 * The `htu` of a URL: scheme, host (lower case, default port dropped) and path; no query, no fragment
 * (RFC 9449 §4.3). Returns undefined for something that is not an absolute URL.
 */
export function normalizeProofUrl(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  if (parsed.host === '') return undefined;
  return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
}

/** What a proof is made for. */
export interface CreateProofOptions {
  /** The token the proof accompanies (its hash becomes `ath`). */
  token: string;
  /** `GET` for the WebSocket upgrade, {@link REAUTH_PROOF_METHOD} for an in-session `reauth`. */
  htm: string;
  /** The URL dialled (`wss://host/v1/client`); query and fragment are dropped. */
  htu: string;
  /** Issue time, ms since epoch; default `Date.now()`. */
  nowMs?: number;
  /** Proof id; default a random UUID. */
  jti?: string;
}

/**
 * Signs a proof with the client's Ed25519 private key. Throws TypeError for a key that is not an Ed25519
 * private key or an `htu` that is not an absolute URL.
 */
export async function createProof(privateKey: KeyObject, opts: CreateProofOptions): Promise<string> {
  if (privateKey.type !== 'private' || privateKey.asymmetricKeyType !== 'ed25519') {
    throw new TypeError('createProof: the key must be an Ed25519 private key');
  }
  const htu = normalizeProofUrl(opts.htu);
  if (htu === undefined) throw new TypeError('createProof: htu must be an absolute URL');
  const payload = {
    jti: opts.jti ?? randomUUID(),
    iat: Math.floor((opts.nowMs ?? Date.now()) / 1000),
    htm: opts.htm,
    htu,
    ath: tokenHash(opts.token),
  };
  return new CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
    .setProtectedHeader({ typ: PROOF_TYPE, alg: ALG, jwk: { kty: 'OKP', crv: 'Ed25519', x: proofKeyX(privateKey) } })
    .sign(privateKey);
}

/**
 * Proof ids seen within the acceptance window, so that each proof is accepted once. Memory is bounded by
 * `maxEntries` whatever arrives: an entry is dropped once its proof would be stale anyway (`iat` + the window),
 * and when the cache is full the oldest entry is evicted and its `iat` becomes a floor: proofs issued at or
 * before the floor are refused as possibly replayed, since their id may be the one forgotten. A flood therefore
 * costs a genuine client at most a retry a second later, and never lets a replay through.
 */
export class ProofReplayCache {
  readonly maxEntries: number;
  /** jti → [iat seconds, forget-after ms]; Map order is insertion order, roughly oldest first. */
  readonly #seen = new Map<string, readonly [number, number]>();
  /** The highest `iat` (seconds) of an evicted entry; proofs at or before it are refused. */
  #floorIat = Number.NEGATIVE_INFINITY;

  constructor(maxEntries = DEFAULT_PROOF_REPLAY_CACHE_ENTRIES) {
    if (!Number.isInteger(maxEntries) || maxEntries < 1) throw new RangeError('ProofReplayCache: maxEntries must be a positive integer');
    this.maxEntries = maxEntries;
  }

  /** Entries held now. */
  get size(): number {
    return this.#seen.size;
  }

  /**
   * Records `jti` (issued at `iatSeconds`, kept until `forgetAfterMs`) and returns true, or returns false when it
   * was seen before or may have been (its `iat` is at or before the eviction floor).
   */
  checkAndRemember(jti: string, iatSeconds: number, forgetAfterMs: number, nowMs: number): boolean {
    this.#prune(nowMs);
    if (iatSeconds <= this.#floorIat || this.#seen.has(jti)) return false;
    if (this.#seen.size >= this.maxEntries) {
      const oldest = this.#seen.entries().next();
      if (oldest.done !== true) {
        this.#seen.delete(oldest.value[0]);
        this.#floorIat = Math.max(this.#floorIat, oldest.value[1][0]);
        // The new proof may itself be at or before the floor just raised.
        if (iatSeconds <= this.#floorIat) return false;
      }
    }
    this.#seen.set(jti, [iatSeconds, forgetAfterMs]);
    return true;
  }

  /** Drops expired entries from the front (insertion order is close to expiry order; stragglers wait their turn, which is only safe). */
  #prune(nowMs: number): void {
    for (const [jti, [, forgetAfterMs]] of this.#seen) {
      if (forgetAfterMs > nowMs) break;
      this.#seen.delete(jti);
    }
  }
}

/** What a proof must match. */
export interface VerifyProofOptions {
  /** The token the proof came with (`ath` must be its hash). */
  token: string;
  /** The expected `htm`. */
  htm: string;
  /** The URL of the endpoint as the client dialled it; compared after {@link normalizeProofUrl}. */
  htu: string;
  /** The token's `cnf.jkt`: the thumbprint the proof's key must have. */
  expectedJkt: string;
  /** Verification time, ms since epoch. */
  nowMs: number;
  /** How far `iat` may lie from `nowMs`, either way, seconds; default {@link DEFAULT_PROOF_MAX_AGE_SECONDS}. */
  maxAgeSeconds?: number;
  /** Where proof ids are remembered; share one per verifier (a gateway process). */
  replay: ProofReplayCache;
}

/** What a valid proof told. */
export interface VerifiedProof {
  jti: string;
  /** Seconds since epoch. */
  iat: number;
  /** The key's thumbprint (equal to the expected `jkt`). */
  jkt: string;
}

function invalid(message: string, cause?: unknown): TokenError {
  return new TokenError(ErrorCode.TOKEN_PROOF_INVALID, `proof of possession rejected: ${message}`, cause === undefined ? undefined : { cause });
}

function decodeObject(part: string, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(part, 'base64url')));
  } catch (err) {
    throw invalid(`${what} is not valid JSON`, err);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(`${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

const HEADER_MEMBERS = new Set(['typ', 'alg', 'jwk']);
const JWK_MEMBERS = new Set(['kty', 'crv', 'x']);

/** The embedded key, checked member by member: an Ed25519 OKP public key and nothing else. */
function checkHeader(header: Record<string, unknown>): string {
  for (const name of Object.keys(header)) {
    // `crit`, `jku`, `x5u`, `kid`, `b64`…: nothing we understand, and some would make jose fetch or re-interpret.
    if (!HEADER_MEMBERS.has(name)) throw invalid(`unexpected header member "${name.slice(0, 32)}"`);
  }
  if (header.typ !== PROOF_TYPE) throw invalid(`header typ must be "${PROOF_TYPE}"`);
  if (header.alg !== ALG) throw invalid(`header alg must be "${ALG}"`);
  const jwk = header.jwk;
  if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) throw invalid('header jwk must be a JSON object');
  const members = jwk as Record<string, unknown>;
  if ('d' in members) throw invalid('header jwk contains a private key');
  for (const name of Object.keys(members)) {
    if (!JWK_MEMBERS.has(name)) throw invalid(`unexpected jwk member "${name.slice(0, 32)}"`);
  }
  if (members.kty !== 'OKP' || members.crv !== 'Ed25519') throw invalid('header jwk must be an Ed25519 OKP key');
  if (!isEd25519X(members.x)) throw invalid('header jwk x must be 32 bytes base64url');
  return members.x;
}

/**
 * Verifies a proof of possession (see the module comment for the order of checks) and records its id in
 * `opts.replay`. Throws TokenError with a `TOKEN_PROOF_*` code.
 */
export async function verifyProof(proof: string | undefined, opts: VerifyProofOptions): Promise<VerifiedProof> {
  if (proof === undefined || proof === '') {
    throw new TokenError(ErrorCode.TOKEN_PROOF_MISSING, `this token is bound to a key: send a proof of possession (${PROOF_HEADER})`);
  }
  if (typeof proof !== 'string' || proof.length > MAX_PROOF_LENGTH) throw invalid(`proof is longer than ${MAX_PROOF_LENGTH} characters`);
  const parts = proof.split('.');
  if (parts.length !== 3 || !parts.every((p) => BASE64URL.test(p))) throw invalid('proof must be three non-empty base64url parts');
  const [headerPart = '', payloadPart = ''] = parts;
  const x = checkHeader(decodeObject(headerPart, 'header'));
  const payload = decodeObject(payloadPart, 'payload');

  let key: KeyObject;
  try {
    key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x }, format: 'jwk' });
  } catch (err) {
    throw invalid('header jwk is not a valid Ed25519 public key', err);
  }
  try {
    await compactVerify(proof, key, { algorithms: [ALG] });
  } catch (err) {
    throw invalid('signature does not verify with the embedded key', err);
  }

  const jkt = jwkThumbprint(x);
  if (jkt !== opts.expectedJkt) {
    throw new TokenError(ErrorCode.TOKEN_PROOF_KEY_MISMATCH, 'proof of possession rejected: the proof is signed by another key than the one the token is bound to');
  }

  const { jti, iat, htm, htu, ath } = payload;
  if (typeof jti !== 'string' || jti === '' || jti.length > MAX_PROOF_JTI_LENGTH) throw invalid(`jti must be a string of 1..${MAX_PROOF_JTI_LENGTH} characters`);
  if (typeof iat !== 'number' || !Number.isFinite(iat)) throw invalid('iat must be a number');
  if (typeof htm !== 'string' || typeof htu !== 'string' || typeof ath !== 'string') throw invalid('htm, htu and ath must be strings');
  if (htm !== opts.htm) throw invalid(`htm must be "${opts.htm}"`);
  const expectedHtu = normalizeProofUrl(opts.htu);
  if (expectedHtu === undefined || normalizeProofUrl(htu) !== expectedHtu) throw invalid(`htu must be ${expectedHtu ?? 'this endpoint'}`);
  if (ath !== tokenHash(opts.token)) throw invalid('ath does not match the token it came with');

  const maxAgeSeconds = opts.maxAgeSeconds ?? DEFAULT_PROOF_MAX_AGE_SECONDS;
  const nowSeconds = opts.nowMs / 1000;
  if (Math.abs(nowSeconds - iat) > maxAgeSeconds) {
    throw new TokenError(ErrorCode.TOKEN_PROOF_STALE, `proof of possession rejected: iat is more than ${maxAgeSeconds} s away from the verifier's clock`);
  }
  if (!opts.replay.checkAndRemember(jti, iat, (iat + maxAgeSeconds) * 1000, opts.nowMs)) {
    throw new TokenError(ErrorCode.TOKEN_PROOF_REPLAYED, 'proof of possession rejected: this proof was used before; make a fresh one for every request');
  }
  return { jti, iat, jkt };
}
