/**
 * ReauthScheduler on a hand-driven clock (no sockets, no global mocks): what it sends and when, for a rotating
 * token, an unchanged one, an unreadable one, a gateway that never confirms, and a session that ends.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type ReauthClock, ReauthScheduler } from './reauth.ts';

/** A clock whose time moves only on `advance`, firing due timers in order (a timer may arm another). */
class ManualClock implements ReauthClock {
  nowMs = 0;
  readonly #timers = new Map<number, { atMs: number; callback: () => void }>();
  #nextId = 1;
  now(): number {
    return this.nowMs;
  }
  setTimeout(callback: () => void, delayMs: number): unknown {
    const id = this.#nextId++;
    this.#timers.set(id, { atMs: this.nowMs + delayMs, callback });
    return id;
  }
  clearTimeout(timer: unknown): void {
    this.#timers.delete(timer as number);
  }
  get pending(): number[] {
    return [...this.#timers.values()].map((t) => t.atMs).sort((a, b) => a - b);
  }
  async advance(ms: number): Promise<void> {
    const endMs = this.nowMs + ms;
    for (;;) {
      const next = [...this.#timers.entries()].sort((a, b) => a[1].atMs - b[1].atMs)[0];
      if (!next || next[1].atMs > endMs) break;
      this.#timers.delete(next[0]);
      this.nowMs = next[1].atMs;
      next[1].callback();
      // Let the token read (a promise) finish before the next timer.
      for (let i = 0; i < 5; i++) await Promise.resolve();
    }
    this.nowMs = endMs;
  }
}

function scheduler(readToken: () => Promise<string>) {
  const clock = new ManualClock();
  const sent: Array<{ token: string; atMs: number }> = [];
  const warnings: string[] = [];
  const reauth = new ReauthScheduler({
    readToken,
    send: (token) => sent.push({ token, atMs: clock.nowMs }),
    log: { debug() {}, info() {}, warn: (_obj, msg) => warnings.push(msg) },
    clock,
  });
  return { clock, sent, warnings, reauth };
}

describe('ReauthScheduler', () => {
  test('a rotated token is sent at 80 % of the lifetime, then resent every 15 s (at most half the time left) until confirmed', async () => {
    let n = 0;
    const { clock, sent, reauth } = scheduler(async () => `tok-${++n}`);
    reauth.opened(await Promise.resolve('tok-0'));
    reauth.schedule(100_000);
    assert.deepEqual(clock.pending, [80_000]);
    await clock.advance(100_000);
    // 80 000: tok-1; then again after half the time left (at most 15 s) while that is ≥ 500 ms.
    assert.deepEqual(
      sent.map((s) => s.atMs),
      [80_000, 90_000, 95_000, 97_500, 98_750, 99_375],
    );
    assert.ok(sent.every((s) => s.token === 'tok-1'), 'the resends repeat the token, they do not re-read it');
    assert.equal(n, 1);
  });

  test('reauth_ok (a new schedule) replaces the pending resend', async () => {
    let n = 0;
    const { clock, sent, reauth } = scheduler(async () => `tok-${++n}`);
    reauth.opened('tok-0');
    reauth.schedule(10_000);
    await clock.advance(8000);
    assert.deepEqual(sent, [{ token: 'tok-1', atMs: 8000 }]);
    reauth.schedule(8000 + 10_000);
    assert.deepEqual(clock.pending, [16_000]);
  });

  test('an unchanged token is looked at again every quarter of the time left (≤ 30 s) until 2 s remain', async () => {
    let reads = 0;
    const readAt: number[] = [];
    const { clock, sent, reauth } = scheduler(async () => {
      reads++;
      readAt.push(clock.nowMs);
      return 'same';
    });
    reauth.opened('same');
    reauth.schedule(200_000);
    await clock.advance(200_000);
    assert.deepEqual(sent, []);
    // 160 000 (80 %), then +10 000 (40 000 / 4), +7 500, +5 625, … until 2 000 or less are left.
    assert.deepEqual(readAt.slice(0, 4), [160_000, 170_000, 177_500, 183_125]);
    assert.equal(reads, 12);
    assert.ok(200_000 - (readAt.at(-2) as number) > 2000, 'the one before the last had more than 2 s left');
    assert.ok(200_000 - (readAt.at(-1) as number) <= 2000, 'the last had 2 s or less left');
    assert.deepEqual(clock.pending, []);
  });

  test('a token that cannot be read is warned about once; the session keeps its credential until it expires', async () => {
    const { clock, sent, warnings, reauth } = scheduler(async () => {
      throw new Error('ENOENT');
    });
    reauth.opened('tok-0');
    reauth.schedule(10_000);
    await clock.advance(20_000);
    assert.deepEqual(sent, []);
    assert.deepEqual(warnings, ['cannot read a fresh token; the session ends when the current one expires']);
    assert.deepEqual(clock.pending, []);
  });

  test('an expiry in the past schedules nothing; stop() cancels what is pending', async () => {
    const { clock, sent, reauth } = scheduler(async () => 'new');
    clock.nowMs = 5000;
    reauth.schedule(5000);
    reauth.schedule(1000);
    assert.deepEqual(clock.pending, []);
    reauth.schedule(15_000);
    assert.deepEqual(clock.pending, [13_000]);
    reauth.stop();
    assert.deepEqual(clock.pending, []);
    await clock.advance(20_000);
    assert.deepEqual(sent, []);
  });

  test('a 90-day lifetime waits in steps of 2^31-1 ms and re-reads the token only at 72 days', async () => {
    const day = 24 * 3600 * 1000;
    let reads = 0;
    const { clock, sent, reauth } = scheduler(async () => {
      reads++;
      return 'rotated';
    });
    reauth.opened('first');
    reauth.schedule(90 * day);
    assert.deepEqual(clock.pending, [2 ** 31 - 1]);
    await clock.advance(2 ** 31 - 1);
    assert.deepEqual(clock.pending, [2 * (2 ** 31 - 1)]);
    await clock.advance(72 * day - 1 - clock.nowMs);
    assert.equal(reads, 0);
    await clock.advance(1);
    assert.equal(reads, 1);
    assert.deepEqual(sent[0], { token: 'rotated', atMs: 72 * day });
  });
});

describe('ReauthScheduler with a proof key (key-bound tokens)', () => {
  function proving(makeProof: (token: string) => Promise<string>) {
    const clock = new ManualClock();
    const sent: Array<{ token: string; proof: string | undefined; atMs: number }> = [];
    const warnings: string[] = [];
    let n = 0;
    const reauth = new ReauthScheduler({
      readToken: async () => `tok-${++n}`,
      send: (token, proof) => sent.push({ token, proof, atMs: clock.nowMs }),
      makeProof,
      log: { debug() {}, info() {}, warn: (_obj, msg) => warnings.push(msg) },
      clock,
    });
    return { clock, sent, warnings, reauth };
  }

  test('every send, resends included, carries a fresh proof made for the token it sends', async () => {
    let proofs = 0;
    const { clock, sent, reauth } = proving(async (token) => `proof-${++proofs}-for-${token}`);
    reauth.opened('tok-0');
    reauth.schedule(100_000);
    await clock.advance(96_000);
    assert.deepEqual(
      sent.map((s) => [s.atMs, s.token, s.proof]),
      [
        [80_000, 'tok-1', 'proof-1-for-tok-1'],
        [90_000, 'tok-1', 'proof-2-for-tok-1'],
        [95_000, 'tok-1', 'proof-3-for-tok-1'],
      ],
    );
  });

  test('a proof that cannot be signed sends nothing and is warned about; the next resend tries again', async () => {
    let fail = true;
    const { clock, sent, warnings, reauth } = proving(async (token) => {
      if (fail) throw new Error('key unavailable');
      return `p-${token}`;
    });
    reauth.opened('tok-0');
    reauth.schedule(100_000);
    await clock.advance(80_000);
    assert.deepEqual(sent, []);
    assert.equal(warnings.length, 1);
    fail = false;
    await clock.advance(10_000);
    assert.deepEqual(sent, [{ token: 'tok-1', proof: 'p-tok-1', atMs: 90_000 }]);
  });

  test('a proof still being signed when the session ends is not sent (it would land on the next session)', async () => {
    let finish: ((proof: string) => void) | undefined;
    const { clock, sent, reauth } = proving(() => new Promise<string>((resolve) => (finish = resolve)));
    reauth.opened('tok-0');
    reauth.schedule(10_000);
    await clock.advance(8000);
    assert.ok(finish, 'signing started');
    reauth.stop();
    finish('late');
    await Promise.resolve();
    await Promise.resolve();
    assert.deepEqual(sent, []);
  });
});
