/**
 * `npm start` (scripts/local-stack.ts) as a user runs it in a terminal: it prints every value the README's
 * walk-through copies, and closing the terminal (SIGHUP to its process group) removes the temporary directory that
 * holds the tokens.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { ROOT } from '../helpers/paths.ts';

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

let groupId: number | undefined;
after(() => {
  if (groupId !== undefined && isAlive(groupId)) process.kill(-groupId, 'SIGKILL');
});

test('npm start prints the walk-through values; SIGHUP to its group (terminal closed) removes the temp dir', { timeout: 60_000 }, async () => {
  // detached: its own process group, as a shell job in a terminal has; --nat-probe-port 0 leaves UDP 3478 to others.
  const child = spawn(process.execPath, [path.join(ROOT, 'scripts/local-stack.ts'), '--port', '0', '--nat-probe-port', '0'], {
    cwd: ROOT,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  groupId = child.pid as number;
  const lines: string[] = [];
  const errors: string[] = [];
  createInterface({ input: child.stderr }).on('line', (line) => errors.push(line));
  const ready = new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      lines.push(line);
      if (line.startsWith('Ctrl-C')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`npm start exited ${code}: ${errors.join('\n')}`)));
  });
  await ready;
  const text = lines.join('\n');

  // Every placeholder of the README walk-through (PORT of the gateway, the token file, DEMO_PORT, the config path).
  const gateway = text.match(/^gateway {2}(ws:\/\/127\.0\.0\.1:\d+) \(config (\S+gateway\.yaml)\)$/m);
  assert.ok(gateway, text);
  const [, gatewayUrl, configFile] = gateway;
  const demoPort = text.match(/exposing http=127\.0\.0\.1:(\d+)/)?.[1];
  assert.ok(demoPort, text);
  const env = text.match(/export NARROWLINK_GATEWAY=(\S+) NARROWLINK_TOKEN_FILE=(\S+)$/m);
  assert.equal(env?.[1], gatewayUrl);
  const tokenFile = env?.[2] as string;
  assert.ok(existsSync(tokenFile), 'the printed token file exists');
  assert.match(text, new RegExp(`curl --socks5-hostname 127\\.0\\.0\\.1:1080 http://demo:${demoPort}/`));
  assert.ok(text.includes(`edit: ${configFile}`));
  const url = text.match(/answers through the tunnel at (http:\/\/127\.0\.0\.1:\d+\/)/)?.[1] as string;
  assert.equal((await fetch(url, { headers: { connection: 'close' } })).status, 200);
  const workDir = path.dirname(tokenFile);
  assert.equal(path.dirname(configFile as string), workDir);

  // The terminal closes: the kernel sends SIGHUP to the whole foreground process group.
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  process.kill(-groupId, 'SIGHUP');
  const code = await exited;
  assert.equal(code, 0, errors.join('\n'));
  assert.equal(existsSync(workDir), false, `${workDir} (tokens) must be removed`);
});

test('npm start on a taken port fails at once, before starting anything, and says to use --port 0', { timeout: 30_000 }, async () => {
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  const port = (taken.address() as net.AddressInfo).port;
  try {
    const started = performance.now();
    const child = spawn(process.execPath, [path.join(ROOT, 'scripts/local-stack.ts'), '--port', String(port), '--nat-probe-port', '0'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    assert.equal(code, 1);
    assert.match(stderr, /--port 0/);
    // Nothing was started: no gateway start-up (seconds) before the refusal.
    assert.ok(performance.now() - started < 10_000);
  } finally {
    taken.close();
  }
});
