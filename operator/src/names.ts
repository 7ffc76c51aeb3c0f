/**
 * Deterministic, DNS-safe names for the objects the operator creates. A name derived from user input can be
 * too long or collide with another derivation; a short hash of the full input keeps it unique and stable
 * across restarts (same input, same name, so server-side apply finds the object again).
 */
import { createHash } from 'node:crypto';

/** Hex characters of the hash suffix: 8 hex = 32 bits, ample for the objects of one namespace. */
export const HASH_SUFFIX_HEX = 8;

/** First `hexChars` hex digits of SHA-256(input). */
export function shortHash(input: string, hexChars = HASH_SUFFIX_HEX): string {
  return createHash('sha256').update(input).digest('hex').slice(0, hexChars);
}

/** Cuts `s` to at most `max` characters and strips what DNS names may not end with ('-', '.'). */
function cut(s: string, max: number): string {
  return s.slice(0, max).replace(/[-.]+$/, '');
}

/**
 * `base` when it fits in `maxLength`, else its prefix plus `-` and a hash of `hashInput` (default `base`).
 * For names whose base is already unique (label values of object names).
 */
export function boundedName(base: string, maxLength: number, hashInput = base): string {
  if (base.length <= maxLength) return base;
  return `${cut(base, maxLength - HASH_SUFFIX_HEX - 1)}-${shortHash(hashInput)}`;
}

/**
 * `base` (truncated to fit) plus `-` and a hash of `hashInput`, always. For names derived from several parts
 * whose plain concatenation could collide (agent `web` + domain `a-b.example` and agent `web-a` + domain
 * `b.example` both flatten to `web-a-b-example`).
 */
export function hashedName(base: string, maxLength: number, hashInput: string): string {
  return `${cut(base, maxLength - HASH_SUFFIX_HEX - 1)}-${shortHash(hashInput)}`;
}
