/**
 * Which LAN punch candidates a peer may send to. A `lan` candidate is an address the *other* peer reported about
 * itself; the gateway only checks that it parses. Sent to blindly, it would make the agent a UDP scanner or
 * reflector for any client that shares its public address (issue 10): "my LAN address is 8.8.8.8:53", or any
 * host and port on the agent's network. So a peer keeps a `lan` candidate only when it is
 *
 * - of a private or link-local class: RFC 1918 (10/8, 172.16/12, 192.168/16), RFC 6598 shared address space
 *   (100.64/10: carrier-grade NAT inside, and pod networks such as EKS custom networking use it), IPv4
 *   link-local 169.254/16, IPv6 unique-local fc00::/7 and link-local fe80::/10; loopback (127/8, ::1) only when
 *   the peer itself is on loopback (every process on one host, the local stack);
 * - inside one of the peer's own interface subnets (a LAN peer is on-link, not routed to);
 * - not that subnet's IPv4 network or broadcast address (a broadcast reaches every host on the link).
 *
 * Other candidate kinds (`public`, `predicted`, `filter-opener`) come from what the gateway itself observed and
 * pass unchanged. Pure: the caller passes its subnets (see {@link subnetsFromInterfaces}).
 */
import { type AddressFamily, addressToBytes } from './endpoint.ts';

/** One subnet of a local interface: an address on it and the prefix length. */
export interface LocalSubnet {
  address: string;
  prefixLength: number;
}

export interface LanFilterOptions {
  /** Keep loopback candidates (the peer itself is on loopback); default false. */
  allowLoopback?: boolean;
}

/** Why a LAN candidate is dropped. */
export type LanCandidateDropReason =
  /** Not an IPv4 / IPv6 address. */
  | 'Invalid'
  /** A public (or multicast, unspecified, documentation, …) address: never a LAN peer. */
  | 'NotPrivate'
  /** Loopback while this peer is not on loopback. */
  | 'Loopback'
  /** Private, but in none of this peer's interface subnets. */
  | 'NotOnLink'
  /** The IPv4 network or broadcast address of the subnet it is in. */
  | 'Broadcast';

/** The class of an address as far as LAN candidates care. */
export type LanAddressClass = 'private' | 'link-local' | 'loopback' | 'public';

interface Prefix {
  family: AddressFamily;
  bytes: readonly number[];
  length: number;
  cls: Exclude<LanAddressClass, 'public'>;
}

const prefix = (family: AddressFamily, bytes: number[], length: number, cls: Prefix['cls']): Prefix => ({ family, bytes, length, cls });

const CLASSES: readonly Prefix[] = [
  prefix(4, [10], 8, 'private'),
  prefix(4, [172, 16], 12, 'private'),
  prefix(4, [192, 168], 16, 'private'),
  prefix(4, [100, 64], 10, 'private'),
  prefix(4, [169, 254], 16, 'link-local'),
  prefix(4, [127], 8, 'loopback'),
  prefix(6, [0xfc], 7, 'private'),
  prefix(6, [0xfe, 0x80], 10, 'link-local'),
  prefix(6, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 128, 'loopback'),
];

function matches(bytes: Uint8Array, net: ArrayLike<number>, length: number): boolean {
  const whole = length >> 3;
  for (let i = 0; i < whole; i++) if (bytes[i] !== (net[i] ?? 0)) return false;
  const rest = length & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return ((bytes[whole] as number) & mask) === ((net[whole] ?? 0) & mask);
}

function parse(address: string): { family: AddressFamily; bytes: Uint8Array } | undefined {
  try {
    return addressToBytes(address);
  } catch {
    return undefined;
  }
}

/** `private`, `link-local`, `loopback` or `public` (everything else); undefined for a non-address. */
export function lanAddressClass(address: string): LanAddressClass | undefined {
  const parsed = parse(address);
  if (!parsed) return undefined;
  for (const p of CLASSES) if (p.family === parsed.family && matches(parsed.bytes, p.bytes, p.length)) return p.cls;
  return 'public';
}

/**
 * Whether this peer may send punch packets to `address` as a LAN candidate; the reason when not.
 * `subnets` are this peer's interface subnets (both families; the wrong family never matches).
 */
export function lanCandidateVerdict(address: string, subnets: readonly LocalSubnet[], options: LanFilterOptions = {}): LanCandidateDropReason | undefined {
  const parsed = parse(address);
  if (!parsed) return 'Invalid';
  const cls = lanAddressClass(address);
  if (cls === 'public') return 'NotPrivate';
  if (cls === 'loopback' && !options.allowLoopback) return 'Loopback';
  let onLink = false;
  for (const subnet of subnets) {
    const net = parse(subnet.address);
    const max = parsed.family === 4 ? 32 : 128;
    if (!net || net.family !== parsed.family || !Number.isInteger(subnet.prefixLength) || subnet.prefixLength < 0 || subnet.prefixLength > max) continue;
    if (!matches(parsed.bytes, net.bytes, subnet.prefixLength)) continue;
    // A /31 or /32 has no network or broadcast address (RFC 3021).
    if (parsed.family === 4 && subnet.prefixLength <= 30 && isNetworkOrBroadcast(parsed.bytes, subnet.prefixLength)) return 'Broadcast';
    onLink = true;
  }
  return onLink ? undefined : 'NotOnLink';
}

/** Host bits all zero or all one. */
function isNetworkOrBroadcast(bytes: Uint8Array, prefixLength: number): boolean {
  const value = (((bytes[0] as number) << 24) | ((bytes[1] as number) << 16) | ((bytes[2] as number) << 8) | (bytes[3] as number)) >>> 0;
  const hostMask = prefixLength === 0 ? 0xffffffff : (0xffffffff >>> prefixLength) >>> 0;
  const host = (value & hostMask) >>> 0;
  return host === 0 || host === hostMask;
}

/** A candidate as the punch plan message carries it. */
export interface AddressedCandidate {
  address: string;
  kind: string;
}

export interface LanFilterResult<C extends AddressedCandidate> {
  /** The candidates to punch, in their order; every non-`lan` candidate is kept. */
  kept: C[];
  /** The dropped `lan` candidates with why. */
  dropped: Array<{ candidate: C; reason: LanCandidateDropReason }>;
}

/** Keeps the non-`lan` candidates and the `lan` ones {@link lanCandidateVerdict} allows. */
export function filterLanCandidates<C extends AddressedCandidate>(candidates: readonly C[], subnets: readonly LocalSubnet[], options: LanFilterOptions = {}): LanFilterResult<C> {
  const result: LanFilterResult<C> = { kept: [], dropped: [] };
  for (const candidate of candidates) {
    const reason = candidate.kind === 'lan' ? lanCandidateVerdict(candidate.address, subnets, options) : undefined;
    if (reason === undefined) result.kept.push(candidate);
    else result.dropped.push({ candidate, reason });
  }
  return result;
}

/** What `os.networkInterfaces()` returns, as far as subnets go (`cidr` is `address/prefix`, null when unknown). */
export type InterfaceList = Record<string, ReadonlyArray<{ address: string; cidr: string | null }> | undefined>;

/** The subnets of `os.networkInterfaces()` (entries without a CIDR are skipped; zone ids are stripped). */
export function subnetsFromInterfaces(interfaces: InterfaceList): LocalSubnet[] {
  const out: LocalSubnet[] = [];
  for (const list of Object.values(interfaces)) {
    for (const entry of list ?? []) {
      if (!entry.cidr) continue;
      const slash = entry.cidr.lastIndexOf('/');
      const prefixLength = Number(entry.cidr.slice(slash + 1));
      const address = entry.cidr.slice(0, slash).split('%')[0] as string;
      if (slash > 0 && Number.isInteger(prefixLength) && parse(address)) out.push({ address, prefixLength });
    }
  }
  return out;
}

/** Whether any of `addresses` is loopback (a peer that reported one is on loopback with its gateway). */
export function hasLoopback(addresses: ReadonlyArray<{ address: string }>): boolean {
  return addresses.some((e) => lanAddressClass(e.address) === 'loopback');
}
