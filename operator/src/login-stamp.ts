/**
 * The webhook's stamp on a ClientLoginRequest, checkable by the operator: an HMAC-SHA256 over the namespace,
 * the client's key and lifetime and the identity the webhook wrote, kept in the annotation
 * {@link LOGIN_STAMP_ANNOTATION}. Only holders of the signing key can make it (the key is derived from it), and
 * the webhook overwrites whatever a client puts there, so a request that reached storage without passing the
 * webhook (its configuration deleted or edited by mistake) carries no valid stamp and is never signed, even if
 * it names a user in spec. A stamp copied from another request is useless: it binds that request's public key.
 */
import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';

/** Annotation holding the stamp (base64url HMAC-SHA256). */
export const LOGIN_STAMP_ANNOTATION = 'narrowlink.io/login-stamp';

/** The fields a stamp covers. */
export interface LoginStampFields {
  namespace: string;
  publicKey: unknown;
  ttlSeconds: unknown;
  username: unknown;
  uid: unknown;
  groups: unknown;
}

/** The 32-byte HMAC key of the stamps, derived (HKDF-SHA256) from the operator's signing key PEM. */
export function deriveLoginStampKey(signingPrivateKeyPem: string): Buffer {
  return Buffer.from(hkdfSync('sha256', Buffer.from(signingPrivateKeyPem.trim()), Buffer.alloc(0), 'narrowlink login stamp v1', 32));
}

function canonical(fields: LoginStampFields): string {
  // A JSON array in a fixed order: unambiguous however the strings look; absent fields are null.
  return JSON.stringify(['v1', fields.namespace, fields.publicKey ?? null, fields.ttlSeconds ?? null, fields.username ?? null, fields.uid ?? null, fields.groups ?? null]);
}

/** The stamp of `fields` under `key`. */
export function loginStamp(key: Buffer, fields: LoginStampFields): string {
  return createHmac('sha256', key).update(canonical(fields)).digest('base64url');
}

/** True when `stamp` is the stamp of `fields` under `key` (constant-time compare). */
export function verifyLoginStamp(key: Buffer, fields: LoginStampFields, stamp: unknown): boolean {
  if (typeof stamp !== 'string') return false;
  const want = Buffer.from(loginStamp(key, fields));
  const have = Buffer.from(stamp);
  return have.length === want.length && timingSafeEqual(have, want);
}
