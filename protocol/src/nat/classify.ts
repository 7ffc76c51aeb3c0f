/**
 * NAT classification from what the gateway's probe ports saw of ONE local UDP socket (the peer's QUIC socket).
 *
 * Mapping (RFC 4787 terms), from the first mapping observed towards each probe destination:
 * - `no-nat`: every mapping equals one of the peer's local endpoints (nothing rewrote the source).
 * - `endpoint-independent`: the same mapping for every destination ("cone"); `portPreserving` when its port is
 *   the socket's local port (Linux MASQUERADE does this when the port is free).
 * - `endpoint-dependent-predictable`: a new mapping per destination whose port moves by a constant `delta`
 *   in the order destinations were first contacted. With one delta sample (two destinations) only a small delta
 *   is believed (`confidence: 'low'`); two equal samples give `medium`, three or more `high`.
 * - `endpoint-dependent-random`: a new mapping per destination with no usable pattern (`--random-fully`), or a
 *   different public address per destination.
 * - `unknown`: no responses at all (UDP blocked: `NoResponses`), a single destination (`TooFewDestinations`:
 *   cone and symmetric look the same), or one destination that showed two different mappings
 *   (`UnstableMapping`: the mapping expired or was rebound between probes).
 *
 * Filtering comes from the peer's report of the "answer from the other port / address" probes: any answer from
 * the other address → `endpoint-independent`; from the other port → `address-dependent`; none after at least
 * {@link MIN_FILTER_TESTS} tries → `address-and-port-dependent` (Linux conntrack with a drop-NEW rule);
 * otherwise `unknown`. It decides whether a peer with random mapping can reach this one (see punch-plan).
 * The tests mean something only if the peer runs them BEFORE it sends anything to the other probe port or
 * address: its own NAT would otherwise already admit those. So a peer probes endpoint 0 first (plain request
 * plus the filtering tests), waits for the answers or a timeout, then probes the other endpoints in index order.
 */
import { ErrorCode, NatError } from '../errors.ts';
import { type Endpoint, endpoint, sameEndpoint } from './endpoint.ts';

export type NatType = 'no-nat' | 'endpoint-independent' | 'endpoint-dependent-predictable' | 'endpoint-dependent-random' | 'unknown';
export type FilteringBehavior = 'endpoint-independent' | 'address-dependent' | 'address-and-port-dependent' | 'unknown';
export type UnknownNatReason = 'NoResponses' | 'TooFewDestinations' | 'UnstableMapping';
export type PredictionConfidence = 'low' | 'medium' | 'high';

/** One probe as the gateway saw it. */
export interface ProbeObservation {
  /** Probe endpoint index 0..3 that received it (bit 0: second port, bit 1: second address). */
  target: number;
  /** Source address and port of the probe datagram as received. */
  mapped: Endpoint;
  /** The probe's seq: the order in which the peer sent its probes. */
  seq: number;
}

/** How many "answer from elsewhere" probes the peer sent, and how many answers it got back. */
export interface FilteringTest {
  sent: number;
  received: number;
}

export interface ClassifyInput {
  observations: readonly ProbeObservation[];
  /** The peer's local endpoints of that socket (each local address with the socket's bound port). */
  localEndpoints: readonly Endpoint[];
  filtering?: { changePort?: FilteringTest; changeAddress?: FilteringTest };
  /** Largest delta believed from a single sample; default {@link DEFAULT_MAX_SINGLE_SAMPLE_DELTA}. */
  maxSingleSampleDelta?: number;
}

interface Common {
  filtering: FilteringBehavior;
  /** Distinct probe destinations that answered. */
  destinations: number;
}

export type NatClassification =
  | (Common & { type: 'no-nat'; publicEndpoint: Endpoint })
  | (Common & { type: 'endpoint-independent'; publicEndpoint: Endpoint; portPreserving: boolean })
  | (Common & {
      type: 'endpoint-dependent-predictable';
      /** The mapping towards the last new destination: the base for predictions. */
      publicEndpoint: Endpoint;
      delta: number;
      /** Number of consecutive deltas that agreed. */
      deltaSamples: number;
      confidence: PredictionConfidence;
    })
  | (Common & { type: 'endpoint-dependent-random'; /** The last mapping seen. */ publicEndpoint: Endpoint })
  | (Common & { type: 'unknown'; reason: UnknownNatReason; publicEndpoint?: Endpoint });

/** A single observed delta above this is taken for chance (random port allocation), not for a pattern. */
export const DEFAULT_MAX_SINGLE_SAMPLE_DELTA = 32;
/** Unanswered "answer from the other port" probes needed before calling filtering port-dependent. */
export const MIN_FILTER_TESTS = 2;

function classifyFiltering(input: ClassifyInput['filtering']): FilteringBehavior {
  const { changePort, changeAddress } = input ?? {};
  if (changeAddress && changeAddress.received > 0) return 'endpoint-independent';
  // Without a second gateway address, EI and address-dependent filtering look the same; both let a known
  // address reach us from any port, which is all punch planning needs.
  if (changePort && changePort.received > 0) return 'address-dependent';
  if (changePort && changePort.sent >= MIN_FILTER_TESTS && changePort.received === 0) return 'address-and-port-dependent';
  return 'unknown';
}

function validate(input: ClassifyInput): { observations: ProbeObservation[]; locals: Endpoint[] } {
  const observations = input.observations.map((o) => {
    if (!Number.isInteger(o.target) || o.target < 0 || o.target > 3) throw new NatError(ErrorCode.NAT_INVALID_INPUT, `probe target ${o.target} is not 0..3`);
    if (!Number.isInteger(o.seq) || o.seq < 0) throw new NatError(ErrorCode.NAT_INVALID_INPUT, `probe seq ${o.seq} is not a non-negative integer`);
    return { target: o.target, seq: o.seq, mapped: endpoint(o.mapped.address, o.mapped.port) };
  });
  const locals = input.localEndpoints.map((e) => endpoint(e.address, e.port));
  return { observations, locals };
}

export function classifyNat(input: ClassifyInput): NatClassification {
  const { observations, locals } = validate(input);
  const filtering = classifyFiltering(input.filtering);
  if (observations.length === 0) return { type: 'unknown', reason: 'NoResponses', filtering, destinations: 0 };

  // The first mapping per destination, in the order the destinations were first probed.
  const sorted = [...observations].sort((a, b) => a.seq - b.seq);
  const firstByTarget = new Map<number, Endpoint>();
  let unstable = false;
  for (const o of sorted) {
    const first = firstByTarget.get(o.target);
    if (first === undefined) firstByTarget.set(o.target, o.mapped);
    else if (!sameEndpoint(first, o.mapped)) unstable = true;
  }
  const mappings = [...firstByTarget.values()];
  const destinations = mappings.length;
  const last = mappings[mappings.length - 1] as Endpoint;
  if (unstable) return { type: 'unknown', reason: 'UnstableMapping', publicEndpoint: last, filtering, destinations };

  if (mappings.every((m) => locals.some((l) => sameEndpoint(l, m)))) {
    return { type: 'no-nat', publicEndpoint: last, filtering, destinations };
  }
  if (destinations < 2) return { type: 'unknown', reason: 'TooFewDestinations', publicEndpoint: last, filtering, destinations };

  if (mappings.every((m) => sameEndpoint(m, last))) {
    return { type: 'endpoint-independent', publicEndpoint: last, portPreserving: locals.some((l) => l.port === last.port), filtering, destinations };
  }
  if (!mappings.every((m) => m.address === last.address)) return { type: 'endpoint-dependent-random', publicEndpoint: last, filtering, destinations };

  const deltas: number[] = [];
  for (let i = 1; i < mappings.length; i++) deltas.push((mappings[i] as Endpoint).port - (mappings[i - 1] as Endpoint).port);
  const delta = deltas[0] as number;
  const constant = delta !== 0 && deltas.every((d) => d === delta);
  const maxSingle = input.maxSingleSampleDelta ?? DEFAULT_MAX_SINGLE_SAMPLE_DELTA;
  if (constant && (deltas.length >= 2 || Math.abs(delta) <= maxSingle)) {
    const confidence: PredictionConfidence = deltas.length >= 3 ? 'high' : deltas.length === 2 ? 'medium' : 'low';
    return { type: 'endpoint-dependent-predictable', publicEndpoint: last, delta, deltaSamples: deltas.length, confidence, filtering, destinations };
  }
  return { type: 'endpoint-dependent-random', publicEndpoint: last, filtering, destinations };
}
