/**
 * The reporter: `detail` events reach text output only with -v (and JSON always); forward's summary prints only when
 * something changed since the last one, and not at all with -v or JSON (they have per-connection lines).
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, test } from 'node:test';
import { formatBytes, Reporter, TrafficSummary } from './reporter.ts';

function capture(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  return { stream, text: () => Buffer.concat(chunks).toString('utf8') };
}

describe('Reporter', () => {
  test('detail: text only with -v, JSON always; event: always', () => {
    for (const [format, verbose, expectDetail] of [
      ['text', false, false],
      ['text', true, true],
      ['json', false, true],
    ] as const) {
      const out = capture();
      const err = capture();
      const reporter = new Reporter(format, out.stream, err.stream, { verbose });
      reporter.detail('stream-closed', { bytesUp: 1 }, 'DETAIL');
      reporter.event('ready', {}, 'EVENT');
      const all = out.text() + err.text();
      assert.equal(/DETAIL|stream-closed/.test(all), expectDetail, `${format} verbose=${verbose}`);
      assert.match(all, /EVENT|"ready"/);
    }
  });
});

describe('TrafficSummary', () => {
  test('prints when counts change, not again while they stay the same', () => {
    const err = capture();
    const summary = new TrafficSummary(new Reporter('text', new PassThrough(), err.stream), 3_600_000);
    try {
      summary.flush();
      assert.equal(err.text(), '', 'nothing happened yet');
      summary.opened();
      summary.flush();
      summary.flush();
      assert.equal(err.text().split('\n').filter(Boolean).length, 1, 'one line for one change');
      summary.closed({ path: 'direct', bytesUp: 2048, bytesDown: 5 * 1024 * 1024, failed: false });
      summary.flush();
      const lines = err.text().split('\n').filter(Boolean);
      assert.equal(lines.length, 2);
      assert.match(lines[1] ?? '', /0 open, 1 done \(0 relay, 1 direct\), 2 KiB up, 5 MiB down/);
    } finally {
      summary.stop();
    }
  });

  test('formatBytes', () => {
    assert.deepEqual([formatBytes(512), formatBytes(1536), formatBytes(150 * 1024 * 1024)], ['512 B', '1.5 KiB', '150 MiB']);
  });
});
