import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DEFAULT_KEEPALIVE_MS, KEEPALIVE_TICK_MS, type LivenessAction, LivenessMonitor, MAX_KEEPALIVE_MS } from './liveness.ts';

/** One tick: [nowMs, packetsIn so far, lastHeardAtMs, expected action]. */
type Step = [number, number, number, LivenessAction];

interface Case {
  name: string;
  keepAliveMs?: number;
  openedAtMs: number;
  packetsAtOpen: number;
  steps: Step[];
}

/** Ticks every second from `fromMs` to `toMs` (inclusive) with no packet after `lastHeardAtMs`. */
function silent(fromMs: number, toMs: number, packetsIn: number, lastHeardAtMs: number, expect: (nowMs: number) => LivenessAction): Step[] {
  const steps: Step[] = [];
  for (let now = fromMs; now <= toMs; now += 1000) steps.push([now, packetsIn, lastHeardAtMs, expect(now)]);
  return steps;
}

// Far from the clock's origin unless a case is about the origin (see the last case).
const T = 100_000;

const cases: Case[] = [
  {
    name: 'a quiet path (heard every tick, not busy) only sends the keep-alive, every keepAliveMs',
    openedAtMs: T,
    packetsAtOpen: 10,
    steps: [
      [T + 1000, 11, T + 900, 'none'],
      [T + 14_000, 12, T + 13_500, 'none'],
      [T + 15_000, 13, T + 14_999, 'keep-alive'],
      [T + 16_000, 14, T + 15_500, 'none'],
      [T + 29_000, 15, T + 28_500, 'none'],
      [T + 30_000, 16, T + 29_500, 'keep-alive'],
    ],
  },
  {
    name: 'a busy path (many packets every tick) stays quiet but for the keep-alive',
    openedAtMs: T,
    packetsAtOpen: 0,
    steps: [
      [T + 1000, 500, T + 1000, 'none'],
      [T + 2000, 1000, T + 1999, 'none'],
      [T + 14_000, 7000, T + 14_000, 'none'],
      [T + 15_000, 7500, T + 15_000, 'keep-alive'],
      [T + 16_000, 8000, T + 16_000, 'none'],
    ],
  },
  {
    name: 'a busy path gone silent is probed every tick from 1 s of silence and is dead at 5 s',
    openedAtMs: T,
    packetsAtOpen: 0,
    steps: [
      [T + 1000, 100, T + 1000, 'none'],
      // Silence started at T + 1000; 999 ms is not yet silence.
      [T + 1999, 100, T + 1000, 'none'],
      [T + 2000, 100, T + 1000, 'probe'],
      [T + 3000, 100, T + 1000, 'probe'],
      [T + 4000, 100, T + 1000, 'probe'],
      [T + 5000, 100, T + 1000, 'probe'],
      [T + 5999, 100, T + 1000, 'probe'],
      [T + 6000, 100, T + 1000, 'dead'],
    ],
  },
  {
    name: 'exactly 16 packets in a tick count as busy',
    openedAtMs: T,
    packetsAtOpen: 0,
    steps: [
      [T + 1000, 16, T + 500, 'none'],
      [T + 2000, 16, T + 500, 'probe'],
    ],
  },
  {
    name: '15 packets in a tick are not busy: the silence after them waits for the keep-alive and is never declared dead',
    openedAtMs: T,
    packetsAtOpen: 0,
    steps: [
      [T + 1000, 15, T + 500, 'none'],
      ...silent(T + 2000, T + 14_000, 15, T + 500, () => 'none'),
      [T + 15_000, 15, T + 500, 'keep-alive'],
      ...silent(T + 16_000, T + 29_000, 15, T + 500, () => 'none'),
      [T + 30_000, 15, T + 500, 'keep-alive'],
    ],
  },
  {
    name: 'packets from the handshake (before the open) do not make the first tick busy',
    openedAtMs: T,
    packetsAtOpen: 40,
    steps: [
      [T + 1000, 55, T + 900, 'none'],
      [T + 2000, 55, T + 900, 'none'],
      [T + 6000, 55, T + 900, 'none'],
    ],
  },
  {
    name: 'a packet arriving resets the silence: probing stops, then starts again, and death is counted from the last packet',
    openedAtMs: T,
    packetsAtOpen: 0,
    steps: [
      [T + 1000, 100, T + 1000, 'none'],
      [T + 2000, 100, T + 1000, 'probe'],
      [T + 3000, 100, T + 1000, 'probe'],
      // The probe was answered at T + 3500 (two packets: not busy, but the path is heard).
      [T + 4000, 102, T + 3500, 'none'],
      [T + 5000, 102, T + 3500, 'probe'],
      [T + 6000, 102, T + 3500, 'probe'],
      [T + 7000, 102, T + 3500, 'probe'],
      [T + 8000, 102, T + 3500, 'probe'],
      [T + 8499, 102, T + 3500, 'probe'],
      [T + 8500, 102, T + 3500, 'dead'],
    ],
  },
  {
    name: 'silence is probed only while the last busy tick is at most 20 s ago',
    openedAtMs: T,
    packetsAtOpen: 0,
    steps: [
      [T + 1000, 100, T + 1000, 'none'],
      // A trickle keeps the path heard without being busy; the keep-alive falls due at T + 15 000.
      ...silent(T + 2000, T + 14_000, 101, T + 1000, () => 'none').map(([now, packets, , want]): Step => [now, packets, now - 500, want]),
      [T + 15_000, 102, T + 14_500, 'keep-alive'],
      // Silent from T + 19 500: 1.5 s later the busy tick is 20 s old, still recent.
      [T + 20_000, 103, T + 19_500, 'none'],
      [T + 21_000, 103, T + 19_500, 'probe'],
      // From here on it is 21 s and more: silence waits for the keep-alive (and the idle timeout) again.
      [T + 22_000, 103, T + 19_500, 'none'],
      [T + 35_000, 103, T + 19_500, 'none'],
      [T + 36_000, 103, T + 19_500, 'keep-alive'],
    ],
  },
  {
    name: 'a probe counts as the keep-alive PING: the next keep-alive is due keepAliveMs after the last probe',
    keepAliveMs: 10_000,
    openedAtMs: T,
    packetsAtOpen: 0,
    steps: [
      [T + 1000, 100, T + 1000, 'none'],
      [T + 2000, 100, T + 1000, 'probe'],
      [T + 3000, 100, T + 1000, 'probe'],
      [T + 3500, 102, T + 3500, 'none'],
      [T + 12_999, 110, T + 12_999, 'none'],
      [T + 13_000, 111, T + 13_000, 'keep-alive'],
    ],
  },
  {
    name: 'a short keep-alive interval pings every interval',
    keepAliveMs: 100,
    openedAtMs: T,
    packetsAtOpen: 0,
    steps: [
      [T + 100, 1, T + 50, 'keep-alive'],
      [T + 200, 2, T + 150, 'keep-alive'],
      [T + 299, 3, T + 250, 'none'],
      [T + 300, 3, T + 250, 'keep-alive'],
    ],
  },
  {
    name: 'a path never busy is not probed near the clock origin either: idle silence only gets the keep-alive',
    openedAtMs: 1000,
    packetsAtOpen: 0,
    steps: [
      [2000, 1, 1500, 'none'],
      [3000, 1, 1500, 'none'],
      [6500, 1, 1500, 'none'],
      [15_999, 1, 1500, 'none'],
      [16_000, 1, 1500, 'keep-alive'],
    ],
  },
];

describe('LivenessMonitor', () => {
  for (const c of cases) {
    test(c.name, () => {
      const m = new LivenessMonitor({ keepAliveMs: c.keepAliveMs, openedAtMs: c.openedAtMs, packetsIn: c.packetsAtOpen });
      const got = c.steps.map(([now, packets, heardAt]) => [now, m.tick(now, packets, heardAt)]);
      assert.deepEqual(
        got,
        c.steps.map(([now, , , want]) => [now, want]),
      );
    });
  }

  test('keep-alive interval: default, cap, and the tick that follows it', () => {
    const table: Array<[number | undefined, number, number]> = [
      [undefined, DEFAULT_KEEPALIVE_MS, KEEPALIVE_TICK_MS],
      [15_000, 15_000, 1000],
      [25_000, 25_000, 1000],
      [60_000, MAX_KEEPALIVE_MS, 1000],
      [1000, 1000, 1000],
      [100, 100, 100],
    ];
    for (const [option, keepAliveMs, tickMs] of table) {
      const m = new LivenessMonitor({ keepAliveMs: option, openedAtMs: T, packetsIn: 0 });
      assert.deepEqual([m.keepAliveMs, m.tickMs], [keepAliveMs, tickMs], `keepAliveMs option ${option}`);
    }
    assert.equal(DEFAULT_KEEPALIVE_MS, 15_000);
    assert.equal(MAX_KEEPALIVE_MS, 25_000);
  });
});
