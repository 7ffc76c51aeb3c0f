/**
 * Punch planning: from both peers' NAT classifications, decide whether a direct path can be punched and, if
 * so, tell each side where to send punch packets, in which order, when, and with which key.
 *
 * A side is "stable" (no NAT or endpoint-independent mapping: its public endpoint is the same towards everyone),
 * "predictable" (a new mapping per destination at last + k·delta) or "random". Pairs:
 *
 * | pair | plan | strategy |
 * |---|---|---|
 * | stable / stable | each sends to the other's public endpoint | `public` |
 * | stable / predictable | stable side sends to the predicted ports last + k·delta (k = 1..N); the predictable side sends to the stable endpoint, so its next mapping is one of them | `predicted` |
 * | predictable / predictable | each sends to the other's predicted ports in ascending k: the k-th new mapping on one side meets the k-th on the other | `lockstep` |
 * | stable / random | the random side sends to the stable endpoint from a port nobody can predict; the stable side first sends to the random side's address (opening an address-dependent filter) and answers whatever arrives. Needs the stable side's filtering to accept unknown ports of a known address: not viable when it is known to be address-and-port-dependent | `reach-stable` |
 * | random / random, random / predictable | not viable: `BothSymmetric` | |
 *
 * When both peers show the same public address they share a LAN (or at least a NAT): their private and link-local
 * local endpoints come first, and the plan is viable on those alone even when the internet pair is not (`lan`).
 *
 * The gateway forwards only certificate fingerprints (sha256 hex of the DER certificate each peer generated for
 * itself); each side must check the other's fingerprint during the QUIC handshake.
 */
import { createHash } from 'node:crypto';
import { ErrorCode, NatError } from '../errors.ts';
import type { PunchPlanMessage } from '../messages.ts';
import type { NatClassification } from './classify.ts';
import { type AddressFamily, addressFamily, type Endpoint, endpoint, formatEndpoint, isValidPort } from './endpoint.ts';
import { hasLoopback, lanAddressClass } from './lan-filter.ts';
import { ATTEMPT_ID_BYTES, type PeerRole } from './probe-codec.ts';

export interface PeerNatInfo {
  nat: NatClassification;
  /** Local endpoints of the peer's QUIC socket (LAN addresses with its bound port). */
  localEndpoints: readonly Endpoint[];
  /** Lowercase sha256 hex of the peer's self-generated DER certificate. */
  certFingerprint: string;
}

/** Returns `n` cryptographically random bytes (injected: `crypto.randomBytes` in production). */
export type RandomBytes = (n: number) => Uint8Array;

export interface PunchPlanOptions {
  /** Delay from planning to the common start, covering delivery of the plan to both peers; default 200 ms. */
  leadMs?: number;
  /** Interval between punch rounds; default 50 ms. */
  intervalMs?: number;
  /** Time from start after which a side gives up; default 3000 ms. */
  budgetMs?: number;
  /** Predicted ports per predictable side (k = 1..N); default 8. */
  maxPredictedPorts?: number;
  /** Candidates per side at most; default 16. */
  maxCandidates?: number;
}

export interface PlanPunchInput {
  client: PeerNatInfo;
  agent: PeerNatInfo;
  /** Gateway clock, ms. */
  nowMs: number;
  random: RandomBytes;
  options?: PunchPlanOptions;
}

export type PunchNotViableReason =
  /** Both sides map per destination (random/random, random/predictable): nobody can aim at the other. */
  | 'BothSymmetric'
  /** A side got no probe responses at all: UDP to the gateway is blocked. */
  | 'UdpBlocked'
  /** A side's NAT could not be classified (too few destinations answered, or an unstable mapping). */
  | 'UnknownNatType'
  /** One side maps randomly and the other is known to filter by address and port: the random side's packets never pass. */
  | 'PortRestrictedVsRandom'
  /** One side is reachable only over IPv4, the other only over IPv6. */
  | 'NoCommonAddressFamily';

export interface PunchNotViable {
  viable: false;
  reason: PunchNotViableReason;
  message: string;
}

export type CandidateKind = 'lan' | 'public' | 'predicted' | 'filter-opener';
export type PunchStrategy = 'public' | 'predicted' | 'lockstep' | 'reach-stable' | 'lan';

export interface PunchCandidate {
  endpoint: Endpoint;
  kind: CandidateKind;
}

/** What one peer needs to run its punch session: send this to that peer (and nothing of the other's plan). */
export interface PunchSidePlan {
  role: PeerRole;
  attemptId: Uint8Array;
  punchKey: Uint8Array;
  /** Where this side sends punch packets, highest priority first. */
  candidates: PunchCandidate[];
  /** Delay after the common start before this side's first round (the other side opens its filter first). */
  initialDelayMs: number;
  intervalMs: number;
  budgetMs: number;
  /** Delay from plan creation to start; peers translate it to their own clock (see README). */
  leadMs: number;
  /** Start on the gateway's clock. */
  startAtMs: number;
  quicRole: 'client' | 'server';
  /** The other side's certificate fingerprint, to verify during the QUIC handshake. */
  peerFingerprint: string;
}

export interface PunchPlan {
  viable: true;
  strategy: PunchStrategy;
  sameLan: boolean;
  attemptId: Uint8Array;
  punchKey: Uint8Array;
  startAtMs: number;
  leadMs: number;
  intervalMs: number;
  budgetMs: number;
  /** Both sides have given up by then (gateway clock): the bound for `direct` mode, plus the QUIC handshake. */
  deadlineAtMs: number;
  firstSender: PeerRole | 'both';
  quicClient: PeerRole;
  fingerprints: { client: string; agent: string };
  client: PunchSidePlan;
  agent: PunchSidePlan;
}

export type PunchPlanResult = PunchPlan | PunchNotViable;

export const PUNCH_KEY_BYTES = 32;
export const DEFAULT_PUNCH_OPTIONS = { leadMs: 200, intervalMs: 50, budgetMs: 3000, maxPredictedPorts: 8, maxCandidates: 16 } as const;

const FINGERPRINT = /^[0-9a-f]{64}$/;

/** The fingerprint the gateway forwards: lowercase sha256 hex of the DER certificate. */
export function certificateFingerprint(der: Uint8Array): string {
  return createHash('sha256').update(der).digest('hex');
}

type SideKind = 'stable' | 'predictable' | 'random';

function sideKind(nat: NatClassification): SideKind | undefined {
  switch (nat.type) {
    case 'no-nat':
    case 'endpoint-independent':
      return 'stable';
    case 'endpoint-dependent-predictable':
      return 'predictable';
    case 'endpoint-dependent-random':
      return 'random';
    case 'unknown':
      return undefined;
  }
}

function predictedPorts(nat: NatClassification & { type: 'endpoint-dependent-predictable' }, count: number): Endpoint[] {
  const out: Endpoint[] = [];
  for (let k = 1; k <= count; k++) {
    const port = nat.publicEndpoint.port + k * nat.delta;
    if (isValidPort(port)) out.push({ address: nat.publicEndpoint.address, port });
  }
  return out;
}

/** Candidates for a sender towards `target` over the internet (without LAN candidates). */
function internetCandidates(target: NatClassification, kind: SideKind, maxPredicted: number): PunchCandidate[] {
  if (target.type === 'endpoint-dependent-predictable') return predictedPorts(target, maxPredicted).map((e) => ({ endpoint: e, kind: 'predicted' }));
  if (target.type === 'unknown') return [];
  return [{ endpoint: target.publicEndpoint, kind: kind === 'random' ? 'filter-opener' : 'public' }];
}

function notViable(reason: PunchNotViableReason, message: string): PunchNotViable {
  return { viable: false, reason, message };
}

function positiveInt(value: number, what: string, min = 1): number {
  if (!Number.isInteger(value) || value < min) throw new NatError(ErrorCode.NAT_INVALID_INPUT, `${what} must be an integer ≥ ${min}, got ${value}`);
  return value;
}

function checkPeer(peer: PeerNatInfo, role: PeerRole): PeerNatInfo {
  if (typeof peer.certFingerprint !== 'string' || !FINGERPRINT.test(peer.certFingerprint)) {
    throw new NatError(ErrorCode.NAT_INVALID_INPUT, `${role} certificate fingerprint must be 64 lowercase hex characters (sha256 of the DER)`);
  }
  return { ...peer, localEndpoints: peer.localEndpoints.map((e) => endpoint(e.address, e.port)) };
}

/** `target`'s local endpoints that `sender` may punch at as LAN candidates (by address class; see lan-filter.ts). */
function lanTargets(sender: PeerNatInfo, target: PeerNatInfo): Endpoint[] {
  const allowLoopback = hasLoopback(sender.localEndpoints);
  return target.localEndpoints.filter((e) => {
    const cls = lanAddressClass(e.address);
    return cls === 'private' || cls === 'link-local' || (cls === 'loopback' && allowLoopback);
  });
}

function publicFamily(nat: NatClassification): AddressFamily | undefined {
  return nat.publicEndpoint ? addressFamily(nat.publicEndpoint.address) : undefined;
}

/**
 * Plans one punch attempt between a client and an agent. Pure: time and randomness come from the input.
 * Throws NL_ERR_NAT_INVALID_INPUT only for malformed input (bad fingerprint, option, endpoint, random source).
 */
export function planPunch(input: PlanPunchInput): PunchPlanResult {
  const options = { ...DEFAULT_PUNCH_OPTIONS, ...input.options };
  const leadMs = positiveInt(options.leadMs, 'leadMs', 0);
  const intervalMs = positiveInt(options.intervalMs, 'intervalMs');
  const budgetMs = positiveInt(options.budgetMs, 'budgetMs');
  const maxPredicted = positiveInt(options.maxPredictedPorts, 'maxPredictedPorts');
  const maxCandidates = positiveInt(options.maxCandidates, 'maxCandidates');
  if (!Number.isFinite(input.nowMs)) throw new NatError(ErrorCode.NAT_INVALID_INPUT, 'nowMs must be a finite number');
  const client = checkPeer(input.client, 'client');
  const agent = checkPeer(input.agent, 'agent');

  // Same public address: both behind one NAT (or both on the gateway's network): LAN candidates work without
  // hairpinning, whatever the NAT type. A peer reports its local endpoints itself, so only private and link-local
  // ones are planned (loopback only towards a peer that is on loopback itself): never a public host to punch
  // at. Each peer checks its candidates against its own subnets again (lan-filter.ts); the gateway cannot.
  const clientPublic = client.nat.publicEndpoint?.address;
  const agentLan = lanTargets(client, agent);
  const clientLan = lanTargets(agent, client);
  const sameLan = clientPublic !== undefined && clientPublic === agent.nat.publicEndpoint?.address && clientLan.length > 0 && agentLan.length > 0;

  const ck = sideKind(client.nat);
  const ak = sideKind(agent.nat);
  let failure: PunchNotViable | undefined;
  let strategy: PunchStrategy = 'public';
  let firstSender: PeerRole | 'both' = 'both';
  if (ck === undefined || ak === undefined) {
    const blocked = [client.nat, agent.nat].some((n) => n.type === 'unknown' && n.reason === 'NoResponses');
    failure = blocked
      ? notViable('UdpBlocked', 'a peer received no NAT probe responses: UDP to the gateway is blocked')
      : notViable('UnknownNatType', 'a peer NAT could not be classified (too few probe destinations answered, or its mapping changed)');
  } else if (publicFamily(client.nat) !== publicFamily(agent.nat)) {
    failure = notViable('NoCommonAddressFamily', 'one peer is reachable over IPv4 only, the other over IPv6 only');
  } else if (ck !== 'stable' && ak !== 'stable' && !(ck === 'predictable' && ak === 'predictable')) {
    failure = notViable('BothSymmetric', 'both peers map per destination and at least one at random: neither can aim at the other');
  } else if (ck === 'random' || ak === 'random') {
    const stable = ck === 'random' ? agent.nat : client.nat;
    if (stable.filtering === 'address-and-port-dependent') {
      failure = notViable('PortRestrictedVsRandom', 'one peer maps at random and the other filters by address and port: its punches never pass');
    } else {
      strategy = 'reach-stable';
      firstSender = ck === 'random' ? 'agent' : 'client';
    }
  } else if (ck === 'predictable' && ak === 'predictable') {
    strategy = 'lockstep';
  } else if (ck === 'predictable' || ak === 'predictable') {
    strategy = 'predicted';
  }
  if (failure && !sameLan) return failure;
  if (failure) {
    strategy = 'lan';
    firstSender = 'both';
  }

  const attemptId = takeRandom(input.random, ATTEMPT_ID_BYTES, 'attempt id');
  const punchKey = takeRandom(input.random, PUNCH_KEY_BYTES, 'punch key');
  const startAtMs = input.nowMs + leadMs;

  const candidatesFor = (self: PeerNatInfo, selfKind: SideKind | undefined, other: PeerNatInfo, otherKind: SideKind | undefined): PunchCandidate[] => {
    const family = publicFamily(self.nat) ?? (self.localEndpoints[0] ? addressFamily(self.localEndpoints[0].address) : undefined);
    const list: PunchCandidate[] = [];
    if (sameLan) {
      for (const e of lanTargets(self, other)) if (family === undefined || addressFamily(e.address) === family) list.push({ endpoint: e, kind: 'lan' });
    }
    if (!failure && otherKind !== undefined && selfKind !== undefined) list.push(...internetCandidates(other.nat, otherKind, maxPredicted));
    const seen = new Set<string>();
    return list.filter((c) => !seen.has(formatEndpoint(c.endpoint)) && seen.add(formatEndpoint(c.endpoint))).slice(0, maxCandidates);
  };

  const side = (role: PeerRole, self: PeerNatInfo, selfKind: SideKind | undefined, other: PeerNatInfo, otherKind: SideKind | undefined): PunchSidePlan => ({
    role,
    attemptId,
    punchKey,
    candidates: candidatesFor(self, selfKind, other, otherKind),
    // The side whose packets must pass the other's freshly opened filter starts half an interval later.
    initialDelayMs: firstSender !== 'both' && firstSender !== role ? Math.floor(intervalMs / 2) : 0,
    intervalMs,
    budgetMs,
    leadMs,
    startAtMs,
    quicRole: role === 'client' ? 'client' : 'server',
    peerFingerprint: other.certFingerprint,
  });

  return {
    viable: true,
    strategy,
    sameLan,
    attemptId,
    punchKey,
    startAtMs,
    leadMs,
    intervalMs,
    budgetMs,
    deadlineAtMs: startAtMs + budgetMs,
    firstSender,
    quicClient: 'client',
    fingerprints: { client: client.certFingerprint, agent: agent.certFingerprint },
    client: side('client', client, ck, agent, ak),
    agent: side('agent', agent, ak, client, ck),
  };
}

function takeRandom(random: RandomBytes, n: number, what: string): Uint8Array {
  const bytes = random(n);
  if (!(bytes instanceof Uint8Array) || bytes.length !== n) throw new NatError(ErrorCode.NAT_INVALID_INPUT, `random source returned no ${n}-byte ${what}`);
  return Uint8Array.from(bytes);
}

/**
 * One side of a plan as the `punch_plan` control message the gateway sends that peer (keys as base64). `peer` names
 * the other end for that side (agent `namespace/name` for a client, the client identity for an agent);
 * `requestId` answers the client's `direct_request`.
 */
export function punchPlanMessage(side: PunchSidePlan, strategy: PunchStrategy, pathId: string, peer: string, requestId?: number): PunchPlanMessage {
  return {
    type: 'punch_plan',
    pathId,
    ...(requestId !== undefined ? { requestId } : {}),
    peer,
    role: side.role,
    quicRole: side.quicRole,
    strategy,
    attemptId: Buffer.from(side.attemptId).toString('base64'),
    punchKey: Buffer.from(side.punchKey).toString('base64'),
    candidates: side.candidates.map((c) => ({ address: c.endpoint.address, port: c.endpoint.port, kind: c.kind })),
    initialDelayMs: side.initialDelayMs,
    intervalMs: side.intervalMs,
    budgetMs: side.budgetMs,
    leadMs: side.leadMs,
    peerFingerprint: side.peerFingerprint,
  };
}
