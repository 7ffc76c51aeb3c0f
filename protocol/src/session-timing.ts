/**
 * Timing policy shared by every session adapter: heartbeats, reconnect backoff and the re-authentication
 * schedule. Pure functions of their inputs (time is passed in as `nowMs`); the adapters own the timers.
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

export interface ReconnectBackoffOptions extends BackoffOptions {
  /**
   * Ceiling, before jitter, for a peer whose session was open a moment ago. Default 1 s: after a gateway restart the
   * peer is back within about a second of the gateway being ready, instead of after a doubling delay.
   */
  recentMaxMs?: number;
  /** How long after losing its session a peer keeps the short ceiling: a restart's length. Default 60 s. */
  recentWindowMs?: number;
  /**
   * Past the window, the ceiling grows with the outage: this fraction of the time beyond the window (never less than
   * recentMaxMs, never more than maxMs). Default 0.25: two minutes of outage allow 15 s between attempts.
   */
  outageFraction?: number;
}

/**
 * Delay before reconnect attempt `attempt` (0-based, counted since the last open session or since start).
 * A peer that has never had a session (`lostAtMs` undefined: wrong address, gateway not up yet) backs off
 * exponentially up to maxMs as backoffDelayMs does. A peer whose session ended at `lostAtMs` uses the same curve but
 * capped at recentMaxMs for recentWindowMs (a gateway restart: back within about a second of it being ready), then
 * at a growing fraction of the outage, so a fleet does not keep knocking every second on a gateway that stays away.
 * Pure: time comes in as `nowMs`.
 */
export function reconnectDelayMs(attempt: number, nowMs: number, lostAtMs: number | undefined, options: ReconnectBackoffOptions = {}): number {
  if (lostAtMs === undefined) return backoffDelayMs(attempt, options);
  const max = options.maxMs ?? 30_000;
  const beyondWindowMs = Math.max(0, nowMs - lostAtMs - (options.recentWindowMs ?? 60_000));
  const cap = Math.min(max, Math.max(options.recentMaxMs ?? 1000, beyondWindowMs * (options.outageFraction ?? 0.25)));
  return backoffDelayMs(attempt, { ...options, maxMs: cap });
}

/**
 * The longest delay `setTimeout` honours (2^31 - 1 ms, about 24.8 days); a longer one fires at once (with a
 * TimeoutOverflowWarning). Agent tokens live 90 days, so waits longer than this are taken in steps.
 */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

/**
 * When to hand the gateway a fresh credential for a session whose current one expires at `expiresAtMs`
 * (both epoch ms): at 80 % of the remaining lifetime, which is also when the kubelet rotates a projected token,
 * and never sooner than 1 s from now. `undefined` when the credential has already expired (nothing to save).
 */
export function reauthDueAt(nowMs: number, expiresAtMs: number): number | undefined {
  if (expiresAtMs <= nowMs) return undefined;
  return nowMs + Math.max(1000, (expiresAtMs - nowMs) * 0.8);
}

/** The next timer delay towards `atMs`: the time left, at least 0, in steps of at most MAX_TIMER_DELAY_MS. */
export function timerStepMs(nowMs: number, atMs: number): number {
  return Math.min(MAX_TIMER_DELAY_MS, Math.max(0, atMs - nowMs));
}

/**
 * The credential source still gives the token the session already uses (it is rotated at about 80 % of its
 * lifetime too): how long until looking again, a quarter of the time left and at most 30 s. `undefined` once
 * 2 s or less remain: too late to help.
 */
export function reauthRecheckInMs(nowMs: number, expiresAtMs: number): number | undefined {
  const leftMs = expiresAtMs - nowMs;
  return leftMs > 2000 ? Math.min(30_000, leftMs / 4) : undefined;
}

/**
 * A `reauth` got no `reauth_ok` (the gateway could not check the token yet): how long until sending it again,
 * half the time left and at most 15 s. `undefined` below 500 ms: the session ends with the old credential.
 */
export function reauthResendInMs(nowMs: number, expiresAtMs: number): number | undefined {
  const retryInMs = Math.min(15_000, (expiresAtMs - nowMs) / 2);
  return retryInMs < 500 ? undefined : retryInMs;
}
