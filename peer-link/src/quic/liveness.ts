/**
 * When an open direct connection sends a PING, and when it gives the path up: the keep-alive that holds NAT
 * mappings, and the probing that notices a path a NAT flush or rebinding cut. A pure function of the time and of
 * the datagram counters the connection keeps: no timer, no socket, no clock of its own. The connection owns the
 * interval (every `tickMs`), calls `tick()` and carries out the answer, so tests drive the rules with plain numbers.
 */

/** Tick resolution (finer when the keep-alive interval itself is shorter). */
export const KEEPALIVE_TICK_MS = 1000;
/** Keep-alive interval when the endpoint sets none. */
export const DEFAULT_KEEPALIVE_MS = 15_000;
/** Longest keep-alive interval (the cap `QuicheEndpointOptions.keepAliveMs` documents). */
export const MAX_KEEPALIVE_MS = 25_000;
/** A tick with this many datagrams from the peer counts as busy. */
export const BUSY_PACKETS_PER_TICK = 16;
/** Silence after which a recently busy path is probed every tick. */
export const PROBE_AFTER_SILENCE_MS = 1000;
/** How long after its last busy tick a path still counts as recently busy (and silence gets probed). */
export const PROBE_WHILE_RECENTLY_BUSY_MS = 20_000;
/** Silence (despite probing) after which a recently busy path counts as dead. */
export const DEAD_AFTER_SILENCE_MS = 5000;

/**
 * What the connection does on a tick:
 * - `none`: nothing (the peer was heard recently enough, and no keep-alive is due);
 * - `keep-alive`: send an ack-eliciting PING because `keepAliveMs` passed since the last one;
 * - `probe`: send an ack-eliciting PING because a recently busy peer went silent;
 * - `dead`: probes went unanswered for `DEAD_AFTER_SILENCE_MS`; close the connection and report it now.
 */
export type LivenessAction = 'none' | 'keep-alive' | 'probe' | 'dead';

export interface LivenessOptions {
  /** The endpoint's `keepAliveMs` option (default `DEFAULT_KEEPALIVE_MS`, capped at `MAX_KEEPALIVE_MS`). */
  keepAliveMs?: number;
  /** When the connection opened (the handshake completed), ms on the clock later passed to `tick()`. */
  openedAtMs: number;
  /** Datagrams received from the peer up to the open: handshake packets do not count towards a busy tick. */
  packetsIn: number;
}

/** The liveness rules of one open connection; see the module comment. */
export class LivenessMonitor {
  /** Keep-alive interval after default and cap, ms. */
  readonly keepAliveMs: number;
  /** How often the connection should call `tick()`, ms. */
  readonly tickMs: number;
  #lastPingAtMs: number;
  /**
   * The last busy tick; never, until one is. (It used to start at 0, the clock's origin: with `performance.now()`
   * as the clock, a path that was never busy counted as recently busy during the process's first 20 s and was
   * probed every second of idle silence instead of once per keep-alive. The live peer answered each probe, so
   * nothing broke, but an idle path sent 15 times the PINGs it needed.)
   */
  #busyAtMs = Number.NEGATIVE_INFINITY;
  #packetsBefore: number;

  constructor(options: LivenessOptions) {
    this.keepAliveMs = Math.min(options.keepAliveMs ?? DEFAULT_KEEPALIVE_MS, MAX_KEEPALIVE_MS);
    this.tickMs = Math.min(KEEPALIVE_TICK_MS, this.keepAliveMs);
    this.#lastPingAtMs = options.openedAtMs;
    this.#packetsBefore = options.packetsIn;
  }

  /**
   * One tick at `nowMs`, given the datagram count so far and when the last datagram came (`lastHeardAtMs`, on the
   * same clock). A `keep-alive` or `probe` answer counts as the PING having been sent.
   */
  tick(nowMs: number, packetsIn: number, lastHeardAtMs: number): LivenessAction {
    const heard = packetsIn - this.#packetsBefore;
    this.#packetsBefore = packetsIn;
    if (heard >= BUSY_PACKETS_PER_TICK) this.#busyAtMs = nowMs;
    const silentMs = nowMs - lastHeardAtMs;
    // A peer that was busy a moment ago went silent: after a NAT flush or rebinding our own NAT lets its
    // packets in again only once we send, and the sender's retransmission timer backs off meanwhile. Probe
    // every tick for a while instead of waiting for the keep-alive (measured in the NAT lab: stalls of up to
    // 23 s after `conntrack -F` without this).
    const probing = silentMs >= PROBE_AFTER_SILENCE_MS && nowMs - this.#busyAtMs <= PROBE_WHILE_RECENTLY_BUSY_MS;
    // Probes every tick went unanswered: the mapping is gone (a NAT that re-mapped us to another port drops
    // everything until a new punch). Say so now, so streams go back to the relay, rather than after the
    // 30 s idle timeout.
    if (probing && silentMs >= DEAD_AFTER_SILENCE_MS) return 'dead';
    if (probing) {
      this.#lastPingAtMs = nowMs;
      return 'probe';
    }
    if (nowMs - this.#lastPingAtMs >= this.keepAliveMs) {
      this.#lastPingAtMs = nowMs;
      return 'keep-alive';
    }
    return 'none';
  }
}
