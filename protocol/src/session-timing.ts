/**
 * Timing policy shared by every session adapter: heartbeats and reconnect backoff.
 * Pure functions of their inputs; the adapters own the timers.
 */

/** How often a side sends PING when it has nothing else to say. */
export const HEARTBEAT_INTERVAL_MS = 10_000;
/** A session that received nothing for this long is dead (three missed heartbeats). */
export const HEARTBEAT_DEAD_AFTER_MS = 3 * HEARTBEAT_INTERVAL_MS;

export interface BackoffOptions {
  /** First delay, before jitter. Default 250 ms. */
  baseMs?: number;
  /** Ceiling, before jitter. Default 30 s. */
  maxMs?: number;
  /** Source of randomness in [0, 1); injected so tests can pin it. */
  random?: () => number;
}

/**
 * Delay before reconnect attempt `attempt` (0-based): exponential, capped, with "equal jitter"
 * (half fixed, half random) so a fleet of agents that lost the same gateway does not return in step.
 */
export function backoffDelayMs(attempt: number, options: BackoffOptions = {}): number {
  const base = options.baseMs ?? 250;
  const max = options.maxMs ?? 30_000;
  const random = options.random ?? Math.random;
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
