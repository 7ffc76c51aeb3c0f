/**
 * UDP endpoints (address + port) as the NAT core sees them: one canonical text form per address so that
 * endpoints compare with `===`, and the byte forms the probe codec puts on the wire.
 *
 * IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack socket reports for IPv4 peers) are
 * normalised to plain IPv4: the same NAT mapping must not look like two different ones.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { ErrorCode, NatError } from '../errors.ts';

/** A UDP endpoint. `address` is canonical text (see {@link normalizeAddress}); `port` is 1..65535. */
export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

export type AddressFamily = 4 | 6;

/** Address bytes for the wire: 4 bytes for IPv4, 16 for IPv6. */
export interface AddressBytes {
  family: AddressFamily;
  bytes: Uint8Array;
}

function invalid(message: string): NatError {
  return new NatError(ErrorCode.NAT_INVALID_INPUT, message);
}

function parseIPv4(text: string, out: Uint8Array, offset: number): void {
  const parts = text.split('.');
  for (let i = 0; i < 4; i++) out[offset + i] = Number(parts[i]);
}

/** Parses an IPv4 or IPv6 address (no zone id) into bytes; IPv4-mapped IPv6 becomes IPv4. */
export function addressToBytes(text: string): AddressBytes {
  if (isIPv4(text)) {
    const bytes = new Uint8Array(4);
    parseIPv4(text, bytes, 0);
    return { family: 4, bytes };
  }
  if (!isIPv6(text) || text.includes('%')) throw invalid(`not an IPv4 or IPv6 address without zone: ${JSON.stringify(text).slice(0, 80)}`);
  const bytes = new Uint8Array(16);
  let head = text;
  let tailV4: string | undefined;
  const lastColon = text.lastIndexOf(':');
  if (text.slice(lastColon + 1).includes('.')) {
    tailV4 = text.slice(lastColon + 1);
    head = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const [left = '', right] = head.split('::') as [string, string | undefined];
  const leftGroups = left === '' ? [] : left.split(':');
  const rightGroups = right === undefined || right === '' ? [] : right.split(':');
  const groups = right === undefined ? leftGroups : [...leftGroups, ...new Array<string>(8 - leftGroups.length - rightGroups.length).fill('0'), ...rightGroups];
  groups.forEach((group, i) => {
    const value = Number.parseInt(group, 16);
    bytes[i * 2] = value >> 8;
    bytes[i * 2 + 1] = value & 0xff;
  });
  if (tailV4 !== undefined) parseIPv4(tailV4, bytes, 12);
  if (isV4Mapped(bytes)) return { family: 4, bytes: bytes.slice(12) };
  return { family: 6, bytes };
}

function isV4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/** Canonical text of address bytes: dotted quad, or RFC 5952 IPv6 (lowercase, longest zero run as `::`). */
export function bytesToAddress(family: AddressFamily, bytes: Uint8Array): string {
  if (family === 4) {
    if (bytes.length !== 4) throw invalid(`IPv4 address needs 4 bytes, got ${bytes.length}`);
    return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  }
  if (bytes.length !== 16) throw invalid(`IPv6 address needs 16 bytes, got ${bytes.length}`);
  if (isV4Mapped(bytes)) return `${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push(((bytes[i * 2] as number) << 8) | (bytes[i * 2 + 1] as number));
  // Longest run of at least two zero groups, the first one on a tie (RFC 5952 §4.2).
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (from: number, to: number) => groups.slice(from, to).map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLength, 8)}`;
}

/** The canonical text form of an address; throws NL_ERR_NAT_INVALID_INPUT for anything else. */
export function normalizeAddress(text: string): string {
  const { family, bytes } = addressToBytes(text);
  return bytesToAddress(family, bytes);
}

export function addressFamily(address: string): AddressFamily {
  return addressToBytes(address).family;
}

export function isValidPort(port: number): boolean {
  return Number.isInteger(port) && port >= 1 && port <= 65_535;
}

/** A validated endpoint with a canonical address. */
export function endpoint(address: string, port: number): Endpoint {
  if (!isValidPort(port)) throw invalid(`port must be an integer in 1..65535, got ${port}`);
  return { address: normalizeAddress(address), port };
}

/** `192.0.2.1:4000` or `[2001:db8::1]:4000`; also usable as a map key for canonical endpoints. */
export function formatEndpoint(e: Endpoint): string {
  return e.address.includes(':') ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`;
}

export function sameEndpoint(a: Endpoint, b: Endpoint): boolean {
  return a.address === b.address && a.port === b.port;
}
