/**
 * Re-authentication of an open gateway session: before the credential expires, re-read it (a projected token
 * file is rotated by the kubelet, a token file by its owner) and hand the fresh one to the gateway, so the session
 * outlives it. The rules (when, how often) are pure functions in protocol/src/session-timing.ts; this module owns
 * the one timer, on an injected clock so tests drive it with `mock.timers` or by hand.
 *
 * A key-bound token (`cnf.jkt`) goes with a proof of possession made for it (`makeProof`): a fresh one for every
 * `reauth` sent, resends included, since the gateway accepts each proof once.
 */
import { reauthDueAt, reauthRecheckInMs, reauthResendInMs, timerStepMs } from '@narrowlink/protocol';
import type { LinkLogger } from './logger.ts';

/** Wall-clock time and one-shot timers; timers it arms never keep the process alive. */
export interface ReauthClock {
  /** Epoch ms, the clock the gateway's `expiresAt` is on. */
  now(): number;
  setTimeout(callback: () => void, delayMs: number): unknown;
  clearTimeout(timer: unknown): void;
}

/** `Date.now` and the global timers, looked up at each call so `mock.timers` can stand in for them. */
export const systemReauthClock: ReauthClock = {
  now: () => Date.now(),
  setTimeout: (callback, delayMs) => setTimeout(callback, delayMs).unref(),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout | undefined),
};

export interface ReauthSchedulerOptions {
  /** Reads the credential afresh (the link's `token` option). */
  readToken: () => Promise<string>;
  /** Sends `reauth` with this token (and its proof, with `makeProof`) on the current session. */
  send: (token: string, proof?: string) => void;
  /** Signs a fresh proof of possession for `token` (key-bound tokens); absent: `reauth` carries none. */
  makeProof?: ((token: string) => Promise<string>) | undefined;
  log: LinkLogger;
  clock?: ReauthClock;
}

/**
 * One link's re-auth timer. The link tells it the token each session opens with (`opened`), each expiry the
 * gateway announces (`schedule`, from `hello_ok` and `reauth_ok`), and when the session ends (`stop`).
 */
export class ReauthScheduler {
  readonly #options: ReauthSchedulerOptions;
  readonly #clock: ReauthClock;
  #timer: unknown;
  /** The credential the current session was opened (or last re-authenticated) with. */
  #sessionToken: string | undefined;
  /** Bumped by `stop()`: a proof still being signed for an ended session is not sent on the next one. */
  #generation = 0;

  constructor(options: ReauthSchedulerOptions) {
    this.#options = options;
    this.#clock = options.clock ?? systemReauthClock;
  }

  /** A session is being opened with `token`: only a different one is worth a `reauth`. */
  opened(token: string): void {
    this.#sessionToken = token;
  }

  /** The gateway says the credential expires at `expiresAtMs` (epoch ms): re-authenticate at 80 % of that. */
  schedule(expiresAtMs: number): void {
    const dueAtMs = reauthDueAt(this.#clock.now(), expiresAtMs);
    if (dueAtMs === undefined) return;
    this.#arm(dueAtMs, expiresAtMs);
  }

  /** The session ended: nothing pending fires. */
  stop(): void {
    this.#generation++;
    this.#clock.clearTimeout(this.#timer);
  }

  /** Waits for `atMs` in steps a timer can take (see MAX_TIMER_DELAY_MS), then re-authenticates. */
  #arm(atMs: number, expiresAtMs: number): void {
    const clock = this.#clock;
    clock.clearTimeout(this.#timer);
    this.#timer = clock.setTimeout(
      () => (clock.now() >= atMs ? void this.#reauth(expiresAtMs) : this.#arm(atMs, expiresAtMs)),
      timerStepMs(clock.now(), atMs),
    );
  }

  async #reauth(expiresAtMs: number): Promise<void> {
    let token: string;
    try {
      token = await this.#options.readToken();
    } catch (error) {
      this.#options.log.warn({ err: (error as Error).message }, 'cannot read a fresh token; the session ends when the current one expires');
      return;
    }
    if (token === this.#sessionToken) {
      // Nothing new yet (the kubelet refreshes at 80% of the lifetime too): look again shortly.
      const recheckInMs = reauthRecheckInMs(this.#clock.now(), expiresAtMs);
      if (recheckInMs !== undefined) this.#timer = this.#clock.setTimeout(() => void this.#reauth(expiresAtMs), recheckInMs);
      return;
    }
    this.#sessionToken = token;
    this.#send(token, expiresAtMs);
  }

  /** Sends `reauth`; without a `reauth_ok` in 15 s (the gateway could not check it yet), sends it again. */
  #send(token: string, expiresAtMs: number): void {
    if (this.#options.makeProof) void this.#sendWithProof(this.#options.makeProof, token);
    else this.#options.send(token);
    this.#clock.clearTimeout(this.#timer);
    const resendInMs = reauthResendInMs(this.#clock.now(), expiresAtMs);
    if (resendInMs === undefined) return;
    this.#timer = this.#clock.setTimeout(() => this.#send(token, expiresAtMs), resendInMs);
  }

  async #sendWithProof(makeProof: (token: string) => Promise<string>, token: string): Promise<void> {
    const generation = this.#generation;
    let proof: string;
    try {
      proof = await makeProof(token);
    } catch (error) {
      // The resend timer tries again; the session keeps its credential until it expires meanwhile.
      this.#options.log.warn({ err: (error as Error).message }, 'cannot sign a proof for the fresh token; retrying with the next resend');
      return;
    }
    if (generation === this.#generation) this.#options.send(token, proof);
  }
}
