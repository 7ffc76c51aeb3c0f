/**
 * NAT probing for one gateway session: when the gateway sends `nat_probe_info`, probe from the direct path's UDP
 * socket and report (`nat_report`); keep the gateway's classification (`nat_status`) until the next session or a
 * re-probe. The link routes the messages here and emits `nat`; see docs/lifecycle/direct-path.md.
 */
import type dgram from 'node:dgram';
import type { EventEmitter } from 'node:events';
import type { Mux, NatProbeInfo, NatStatus } from '@narrowlink/protocol';
import { type NatProbeOptions, probeNat } from '../nat-prober.ts';
import type { LinkLogger } from './logger.ts';

/** The gateway's classification of this peer's NAT (`nat_status`), with how long probing took. */
export interface LinkNatStatus extends Omit<NatStatus, 'type'> {
  /** From receiving `nat_probe_info` to receiving `nat_status`, ms. */
  measuredInMs: number;
  /** The local endpoints this side reported (the socket's port on each local address). */
  localEndpoints: { address: string; port: number }[];
}

/** What probing needs of the link's options (read at each use, as the link's own options are). */
export interface NatSessionSettings {
  /** The direct path's bound UDP socket; without it nothing is probed. */
  udpSocket?: dgram.Socket | undefined;
  /** sha256 hex of the QUIC endpoint's certificate, sent with the report. */
  certFingerprint?: string | undefined;
  natProbe?: NatProbeTuning | undefined;
}

/** Tuning of the probe exchange (timeouts, tries); see NatProbeOptions. */
export type NatProbeTuning = Pick<NatProbeOptions, 'timeoutMs' | 'retryIntervalMs' | 'filteringTests' | 'localAddresses'>;

export class NatSession {
  readonly #settings: NatSessionSettings;
  readonly #log: LinkLogger;
  /** Where `nat` is emitted (the link): `wait` listens there. */
  readonly #events: EventEmitter;
  /** performance.now() when this session's probe info came; undefined when not probing. */
  #probeStartedAt: number | undefined;
  /** What we reported last. */
  #localEndpoints: { address: string; port: number }[] = [];
  /** The gateway's answer, once it came. */
  #status: LinkNatStatus | undefined;

  constructor(settings: NatSessionSettings, log: LinkLogger, events: EventEmitter) {
    this.#settings = settings;
    this.#log = log;
    this.#events = events;
  }

  /** Whether this session is probing (the gateway sent probe info and we have a UDP socket). */
  get probing(): boolean {
    return this.#probeStartedAt !== undefined;
  }

  /** The classification of the current session, once the gateway sent it. */
  get status(): LinkNatStatus | undefined {
    return this.#status;
  }

  /** A new session probes afresh (new key, maybe a new mapping). */
  reset(): void {
    this.#probeStartedAt = undefined;
    this.#status = undefined;
  }

  /** Whether probe info is to be acted on: a socket to probe from, and not already probing this session. */
  wantsProbe(): boolean {
    return Boolean(this.#settings.udpSocket) && this.#probeStartedAt === undefined;
  }

  /** Probes from the shared UDP socket and reports, if the session is still the one that asked (`isCurrent`). */
  async probe(mux: Mux, sessionId: string, info: NatProbeInfo, isCurrent: () => boolean): Promise<void> {
    const settings = this.#settings;
    const log = this.#log;
    this.#probeStartedAt = performance.now();
    try {
      const outcome = await probeNat({ socket: settings.udpSocket as dgram.Socket, sessionId, info, ...settings.natProbe });
      if (!isCurrent()) return;
      this.#localEndpoints = outcome.report.localEndpoints;
      log.debug({ responses: outcome.responses.length, sent: outcome.sent, durationMs: Math.round(outcome.durationMs) }, 'NAT probes done');
      mux.sendControl(settings.certFingerprint ? { ...outcome.report, certFingerprint: settings.certFingerprint } : outcome.report);
    } catch (error) {
      // An unbound or closed socket: no probing for this session; the relay path is unaffected.
      log.warn({ err: (error as Error).message }, 'NAT probing failed');
    }
  }

  /** Records the gateway's `nat_status` and returns it as the link reports it. */
  classified(message: NatStatus): LinkNatStatus {
    const { type: _type, ...status } = message;
    this.#status = {
      ...status,
      measuredInMs: this.#probeStartedAt === undefined ? 0 : Math.round(performance.now() - this.#probeStartedAt),
      localEndpoints: this.#localEndpoints,
    };
    this.#log.info({ event: 'nat', natType: status.natType, publicEndpoint: status.publicEndpoint }, 'gateway classified our NAT');
    return this.#status;
  }

  /** Forgets the classification and asks the gateway (through `mux`) to probe again. */
  reprobe(mux: Mux): void {
    this.#probeStartedAt = undefined;
    this.#status = undefined;
    mux.sendControl({ type: 'nat_reprobe' });
  }

  /** Resolves with the classification once it arrives; `undefined` when not probing or after `timeoutMs`. */
  wait(timeoutMs: number): Promise<LinkNatStatus | undefined> {
    if (this.#status) return Promise.resolve(this.#status);
    if (this.#probeStartedAt === undefined) return Promise.resolve(undefined);
    const events = this.#events;
    return new Promise((resolve) => {
      const onNat = (nat: LinkNatStatus): void => {
        clearTimeout(timer);
        resolve(nat);
      };
      const timer = setTimeout(() => {
        events.off('nat', onNat);
        resolve(undefined);
      }, timeoutMs);
      events.once('nat', onNat);
    });
  }
}
