import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { readCaFileWhenPresent } from './ca-file.ts';

const dir = mkdtempSync(join(tmpdir(), 'narrowlink-ca-file-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function recorder() {
  const lines: Array<{ level: string; obj: Record<string, unknown>; msg: string }> = [];
  return {
    lines,
    log: {
      error: (obj: object, msg: string) => lines.push({ level: 'error', obj: obj as Record<string, unknown>, msg }),
      info: (obj: object, msg: string) => lines.push({ level: 'info', obj: obj as Record<string, unknown>, msg }),
    },
  };
}

const PEM = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';

describe('agent CA file (optional ConfigMap projection)', () => {
  it('a present file is read at once; an empty one means the system CAs', async () => {
    const file = join(dir, 'present.crt');
    writeFileSync(file, PEM);
    const { lines, log } = recorder();
    assert.equal(await readCaFileWhenPresent(file, log), PEM);
    writeFileSync(file, '\n');
    assert.equal(await readCaFileWhenPresent(file, log), undefined);
    assert.deepEqual(lines, []);
  });

  it('a missing file is waited for with a coded error, then read when the kubelet adds it', async () => {
    const file = join(dir, 'later.crt');
    const { lines, log } = recorder();
    const reading = readCaFileWhenPresent(file, log, { retryMs: 20, logEveryMs: 60_000 });
    await new Promise((r) => setTimeout(r, 120));
    writeFileSync(file, PEM);
    assert.equal(await reading, PEM);
    const errors = lines.filter((l) => l.level === 'error');
    assert.equal(errors.length, 1, 'logged once per logEveryMs, not per attempt');
    assert.equal(errors[0]?.obj.code, 'NL_ERR_AGENT_CA_FILE_MISSING');
    assert.match(errors[0]?.msg ?? '', /later\.crt does not exist yet; waiting/);
    assert.equal(lines.at(-1)?.obj.event, 'ca-file-ready');
  });

  it('stops waiting when aborted (SIGTERM during the wait); other read errors are thrown', async () => {
    const controller = new AbortController();
    const reading = readCaFileWhenPresent(join(dir, 'never.crt'), recorder().log, { retryMs: 10_000, signal: controller.signal });
    setTimeout(() => controller.abort(new Error('stopping')), 30);
    await assert.rejects(reading, /stopping/);
    await assert.rejects(readCaFileWhenPresent(dir, recorder().log), { code: 'EISDIR' });
  });
});

describe('narrowlink-agent with a CA file that appears later (the process)', () => {
  it('logs NL_ERR_AGENT_CA_FILE_MISSING, keeps running, and goes on once the file exists', async () => {
    const { spawn } = await import('node:child_process');
    const file = join(dir, 'process-ca.crt');
    const main = join(import.meta.dirname, 'main.ts');
    const child = spawn(
      process.execPath,
      [main, '--gateway', 'ws://127.0.0.1:9', '--token', 'x.y.z', '--expose', 'http=8080', '--ca-file', file, '--relay-only', '--log-format', 'json', '--log-level', 'info'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const lines: Array<Record<string, unknown>> = [];
    let buffered = '';
    child.stdout.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      for (let i = buffered.indexOf('\n'); i >= 0; i = buffered.indexOf('\n')) {
        const line = buffered.slice(0, i);
        buffered = buffered.slice(i + 1);
        try {
          lines.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          // not JSON: ignore
        }
      }
    });
    const until = async (what: string, check: () => boolean, timeoutMs = 20_000) => {
      const deadline = Date.now() + timeoutMs;
      while (!check()) {
        assert.ok(Date.now() < deadline, `timed out waiting for ${what}; log: ${JSON.stringify(lines)}`);
        assert.equal(child.exitCode, null, `the agent exited: ${JSON.stringify(lines)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    try {
      await until('the missing CA error', () => lines.some((l) => l.code === 'NL_ERR_AGENT_CA_FILE_MISSING'));
      writeFileSync(file, PEM);
      await until('ca-file-ready', () => lines.some((l) => l.event === 'ca-file-ready'), 10_000);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
