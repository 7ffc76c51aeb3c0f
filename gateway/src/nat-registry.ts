/**
 * What the gateway knows about each session's NAT: the classification from the probe ports' observations plus
 * the peer's `nat_report`, kept per session id and dropped with the session. Punch planning (the direct-path
 * broker) and the agent status read it; the gateway wires the control messages to it.
 */
import { classifyNat, type Endpoint, type NatClassification, type NatProbeInfo, type NatReport, type NatStatus } from '@narrowlink/protocol';
import type { NatProbeServer } from './nat-probe.ts';

/** A peer's NAT as classified from its probes and its report: what punch planning starts from. */
export interface PeerNat {
  classification: NatClassification;
  /** Local endpoints of the peer's QUIC socket, from its report (LAN candidates). */
  localEndpoints: Endpoint[];
  /** Wall clock of the classification, ms. */
  atMs: number;
  /** sha256 hex of the certificate the peer generated for its QUIC endpoint (from its last report); forwarded in punch plans. */
  certFingerprint?: string;
}

/** nat_report messages a session may send (each re-classifies); more are ignored. The same bound applies to nat_reprobe. */
export const MAX_NAT_REPORTS = 8;

/** The part of the UDP probe server the registry uses (a fake in tests). */
export type NatProbePorts = Pick<NatProbeServer, 'register' | 'unregister' | 'has' | 'observations'>;

/** Dependencies of a {@link NatRegistry}. */
export interface NatRegistryOptions {
  /** The UDP probe ports; absent: nobody is asked to probe and nothing is classified. */
  probe?: NatProbePorts | undefined;
  /** Wall clock, ms since epoch (the classification's `atMs`). */
  now: () => number;
}

interface NatRecord extends PeerNat {
  reports: number;
  reprobes: number;
}

/** NAT classifications by session id, with the per-session report and reprobe budgets. */
export class NatRegistry {
  readonly #probe: NatProbePorts | undefined;
  readonly #now: () => number;
  /** Classified peers by session id; an entry goes with its session. */
  readonly #records = new Map<string, NatRecord>();

  constructor(options: NatRegistryOptions) {
    this.#probe = options.probe;
    this.#now = options.now;
  }

  /** Whether the gateway runs probe ports (without them nobody is classified). */
  get probing(): boolean {
    return this.#probe !== undefined;
  }

  /** Starts probing for a session: the `nat_probe_info` to send it, or undefined when probing is off. */
  register(sessionId: string): NatProbeInfo | undefined {
    return this.#probe?.register(sessionId);
  }

  /**
   * Classifies the peer's NAT from what the probe ports saw plus its report. Returns the classification, or
   * undefined when the report is ignored: the session was never asked to probe, or it spent its
   * {@link MAX_NAT_REPORTS}. Throws (NatError) on a report the classifier rejects; the record is unchanged then.
   */
  report(sessionId: string, report: NatReport): NatClassification | undefined {
    // A report without probe info (probing off, a peer that was not asked) has nothing to classify against.
    const probe = this.#probe;
    if (!probe?.has(sessionId)) return undefined;
    const previous = this.#records.get(sessionId);
    if ((previous?.reports ?? 0) >= MAX_NAT_REPORTS) return undefined;
    const localEndpoints = report.localEndpoints.map((e) => ({ address: e.address, port: e.port }));
    const classification = classifyNat({
      observations: probe.observations(sessionId),
      localEndpoints,
      ...(report.filtering ? { filtering: report.filtering } : {}),
    });
    this.#records.set(sessionId, {
      classification,
      localEndpoints,
      atMs: this.#now(),
      reports: (previous?.reports ?? 0) + 1,
      reprobes: previous?.reprobes ?? 0,
      ...(report.certFingerprint ? { certFingerprint: report.certFingerprint } : {}),
    });
    return classification;
  }

  /**
   * Starts probing afresh for a peer whose mapping may have changed: a new key and no old observations (mixed
   * with the new ones they would read as an unstable mapping). The last classification stays until the new
   * report replaces it. Returns the `nat_probe_info` to send, or undefined when the request is ignored (not
   * probed yet, never classified, or {@link MAX_NAT_REPORTS} reprobes spent).
   */
  reprobe(sessionId: string): NatProbeInfo | undefined {
    const probe = this.#probe;
    const previous = this.#records.get(sessionId);
    if (!probe?.has(sessionId) || !previous || previous.reprobes >= MAX_NAT_REPORTS) return undefined;
    previous.reprobes++;
    return probe.register(sessionId);
  }

  /** The NAT classification of a session, once its peer probed and reported (a copy without the counters). */
  get(sessionId: string): PeerNat | undefined {
    const nat = this.#records.get(sessionId);
    if (!nat) return undefined;
    return {
      classification: nat.classification,
      localEndpoints: nat.localEndpoints,
      atMs: nat.atMs,
      ...(nat.certFingerprint !== undefined ? { certFingerprint: nat.certFingerprint } : {}),
    };
  }

  /** The NAT type of whichever of these sessions was classified last, if any (agent status). */
  latestType(sessionIds: Iterable<string>): string | undefined {
    let latest: NatRecord | undefined;
    for (const id of sessionIds) {
      const nat = this.#records.get(id);
      if (nat && (!latest || nat.atMs >= latest.atMs)) latest = nat;
    }
    return latest?.classification.type;
  }

  /** The session ended: its probe key and its classification go. */
  forget(sessionId: string): void {
    this.#probe?.unregister(sessionId);
    this.#records.delete(sessionId);
  }
}

/** The `nat_status` control message for a classification. */
export function natStatusMessage(nat: NatClassification): NatStatus {
  const out: NatStatus = { type: 'nat_status', natType: nat.type, filtering: nat.filtering, destinations: nat.destinations };
  if (nat.publicEndpoint) out.publicEndpoint = { address: nat.publicEndpoint.address, port: nat.publicEndpoint.port };
  if (nat.type === 'endpoint-independent') out.portPreserving = nat.portPreserving;
  if (nat.type === 'endpoint-dependent-predictable') out.delta = nat.delta;
  if (nat.type === 'unknown') out.reason = nat.reason;
  return out;
}
