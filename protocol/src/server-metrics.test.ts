import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { promisify } from 'node:util';
import { buildInfoLabels, narrowlinkVersion, OMITTED_DEFAULT_METRICS } from './server-metrics.ts';

describe('server metrics shared by the gateway and the operator', () => {
  test('build info: the workspace version, the Node version, the component, and a commit only when it is hex', () => {
    const version = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
    assert.equal(narrowlinkVersion(), version);
    assert.deepEqual(buildInfoLabels('gateway', { NARROWLINK_COMMIT: ' 0123456789ABCDEF0123456789abcdef01234567\n' }), {
      version,
      commit: '0123456789abcdef0123456789abcdef01234567',
      node_version: process.version.slice(1),
      component: 'gateway',
    });
    for (const bad of [undefined, '', 'abc123', 'not-a-commit', '0123456789abcdef0123456789abcdef012345678', 'g123456']) {
      assert.equal(buildInfoLabels('operator', bad === undefined ? {} : { NARROWLINK_COMMIT: bad }).commit, '', String(bad));
    }
  });

  test('event loop time: active seconds grow by at least the time the loop was held busy', async () => {
    // In a process of its own: under the test runner the loop's timing has not started (both read 0), while a
    // gateway or operator runs a plain event loop like this child.
    const script = `
      const { eventLoopSeconds } = await import(${JSON.stringify(new URL('./server-metrics.ts', import.meta.url).href)});
      await new Promise((resolve) => setTimeout(resolve, 30));
      const before = eventLoopSeconds();
      const started = performance.now();
      while (performance.now() - started < 60) {} // held busy: active time
      await new Promise((resolve) => setTimeout(resolve, 40)); // waiting: idle time, and the busy time is booked
      const after = eventLoopSeconds();
      console.log(JSON.stringify({ active: after.active - before.active, idle: after.idle - before.idle }));`;
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { timeout: 30_000 });
    const grew = JSON.parse(stdout) as { active: number; idle: number };
    assert.ok(grew.active >= 0.055, `active grew ${grew.active.toFixed(3)} s`);
    assert.ok(grew.idle >= 0.02, `idle grew ${grew.idle.toFixed(3)} s`);
  });

  test('the omitted defaults are exactly prom-client gauges named _total', () => {
    assert.deepEqual([...OMITTED_DEFAULT_METRICS].sort(), ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']);
  });
});
