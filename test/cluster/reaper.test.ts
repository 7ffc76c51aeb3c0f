/**
 * A test run that dies without calling stop() (SIGKILL, a crash, CI's timeout) must not leave a cluster running
 * or the host changed: `cluster.sh up OWNER_PID` leaves a reaper behind that runs `down` once the owner is gone.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { captureHostState } from './host-state.ts';

const harness = join(dirname(fileURLToPath(import.meta.url)), 'harness.ts');

/** Child process: start a cluster, print its ready line, then idle until killed. */
const ownerScript = `
const { startCluster } = await import(${JSON.stringify(harness)});
const c = await startCluster();
process.stdout.write(JSON.stringify('skipped' in c ? { skipped: c.skipped } : { dir: c.dir, nodeName: c.nodeName }) + '\\n');
setInterval(() => {}, 1000);
`;

describe('cluster tier: the reaper', { timeout: 30 * 60_000 }, () => {
  it('tears the cluster down and restores the host when the owning process is killed', async (t) => {
    if (process.env.NARROWLINK_CLUSTER_SKIP === '1') {
      t.skip('cluster tier: SKIPPED (NARROWLINK_CLUSTER_SKIP=1)');
      return;
    }
    const before = captureHostState();
    const child = spawn(process.execPath, ['--input-type=module', '-e', ownerScript], { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (chunk: string) => {
        out += chunk;
        const nl = out.indexOf('\n');
        if (nl >= 0) resolve(out.slice(0, nl));
      });
      child.on('exit', (code) => reject(new Error(`owner exited (${code}) before the cluster was up: ${out}`)));
    });
    const ready = JSON.parse(line) as { dir: string; nodeName: string } | { skipped: string };
    if ('skipped' in ready) {
      child.kill('SIGKILL');
      t.skip(`cluster tier: SKIPPED (${ready.skipped})`);
      return;
    }
    assert.ok(existsSync(ready.dir));
    assert.ok(captureHostState().links.includes('nlbr0'), 'the cluster bridge is up while the owner lives');
    const killedMs = Date.now();
    child.kill('SIGKILL');
    const deadline = Date.now() + 120_000;
    while (existsSync(ready.dir) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
    assert.ok(!existsSync(ready.dir), `${ready.dir} still there 120 s after the owner died`);
    t.diagnostic(`reaped ${((Date.now() - killedMs) / 1000).toFixed(1)} s after the owner was killed`);
    assert.deepEqual(captureHostState(), before);
  });
});
