/**
 * Logs of the gateway and the agent: JSON lines without duplicate keys when piped (what log collectors read), human
 * lines (local time, level names) on a terminal. Real processes; the gateway runs without NAT probe ports.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { processLoggerOptions } from '@narrowlink/protocol';
import { pino } from 'pino';
import { duplicateKeys } from '../helpers/json-duplicates.ts';
import { startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { SCRIPTS, type Stack, startStack } from './stack.ts';
import { freeUdpPortPair } from '../helpers/ports.ts';

function capture(): { lines: string[]; write(text: string): void } {
  const lines: string[] = [];
  return { lines, write: (text: string) => lines.push(...text.split('\n').filter((l) => l.length > 0)) };
}

test('the duplicate-detecting reader finds what JSON.parse hides, and the process logger options produce none', () => {
  assert.deepEqual(duplicateKeys('{"a":1,"b":{"c":2,"c":3},"a":[{"d":1,"d":2}]}'), ['$.b.c', '$.a', '$.a[0].d']);
  assert.throws(() => duplicateKeys('{"a":1'), SyntaxError);

  // The shape the gateway had: the root's base `component` and a child's `component`; a `msg` in the object.
  const before = capture();
  const old = pino({ base: { component: 'gateway' } }, before);
  old.child({ component: 'session' }).info({ session: 's1' }, 'gateway session open');
  old.warn({ code: 'X', msg: 'inner' }, 'outer');
  assert.deepEqual(before.lines.map(duplicateKeys), [['$.component'], ['$.msg']]);

  const now = capture();
  const log = pino(processLoggerOptions({ service: 'gateway', level: 'info', redactPaths: ['token'] }), now);
  log.child({ component: 'session' }).info({ session: 's1' }, 'gateway session open');
  log.child({ component: 'session' }).warn({ code: 'X', msg: 'inner', token: 'secret' }, 'outer');
  for (const line of now.lines) assert.deepEqual(duplicateKeys(line), [], line);
  const [open, warn] = now.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(open?.service, 'gateway');
  assert.equal(open?.component, 'session');
  assert.equal(warn?.msg, 'outer');
  assert.equal(warn?.detail, 'inner');
  assert.equal(warn?.token, '[redacted]');
});

describe('gateway and agent processes', () => {
  let stack: Stack;
  let echo: TestServer;
  const raw = { gateway: [] as string[], agent: [] as string[] };
  const tap = (stream: NodeJS.ReadableStream | null | undefined, into: string[]): void => {
    let rest = '';
    stream?.on('data', (chunk: Buffer) => {
      const parts = (rest + chunk.toString('utf8')).split('\n');
      rest = parts.pop() ?? '';
      into.push(...parts.filter((p) => p.length > 0));
    });
  };

  before(async () => {
    echo = await startEchoServer();
    stack = await startStack({ agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }], gatewayArgs: ['--nat-probe-port', String(await freeUdpPortPair())], clientMode: 'auto' });
    tap(stack.gateway.child.stdout, raw.gateway);
  });
  after(async () => {
    await stack?.stop();
    await echo?.close();
  });

  test('piped: every stdout line is JSON without a duplicate key (sessions, streams, a direct path lost)', async () => {
    const agent = await stack.startAgent('svc');
    tap(agent.child.stdout, raw.agent);
    const forward = await stack.startForward(['svc:echo']);
    const socket = net.connect(forward.ports[0] as number, '127.0.0.1');
    socket.end('ping');
    const echoed = await new Promise<string>((resolve, reject) => {
      let text = '';
      socket.on('data', (c: Buffer) => {
        text += c.toString();
      });
      socket.on('end', () => resolve(text));
      socket.on('error', reject);
    });
    assert.equal(echoed, 'ping');
    // The forward asked for a direct path behind that stream; once it is up, stopping the forward loses it, and the
    // agent logs that with the path's message (the line that used to carry `msg` twice).
    await forward.process.waitFor((line) => line.event === 'direct-up' || line.event === 'direct-failed', 10_000);
    await forward.process.stop();
    const deadline = performance.now() + 5000;
    while (!raw.agent.some((l) => l.includes('"direct-failed"')) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await agent.stop();
    await new Promise((r) => setTimeout(r, 300));
    const lost = raw.agent.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.event === 'direct-failed');
    assert.ok(lost, `the agent logged the lost direct path:\n${raw.agent.join('\n')}`);
    assert.equal(typeof lost.detail, 'string');
    assert.equal(typeof lost.msg, 'string');

    // Lines before the taps were attached are in the processes' parsed history; the raw ones are checked here.
    const all = [...raw.gateway.map((l) => ['gateway', l]), ...raw.agent.map((l) => ['agent', l])];
    assert.ok(raw.gateway.length >= 2 && raw.agent.length >= 1, `gateway ${raw.gateway.length}, agent ${raw.agent.length} lines`);
    for (const [who, line] of all) assert.deepEqual(duplicateKeys(line as string), [], `${who}: ${line}`);
    const gatewayLines = raw.gateway.map((l) => JSON.parse(l) as Record<string, unknown>);
    const session = gatewayLines.find((l) => l.component === 'session');
    assert.ok(session, `a session line: ${raw.gateway.join('\n')}`);
    assert.equal(session.service, 'gateway');
    assert.ok(raw.agent.every((l) => (JSON.parse(l) as { service?: string }).service === 'agent'));
  });

  /** Runs `args` under script(1), which gives it a pseudo-terminal; resolves with its output once `done` matches. */
  async function onTerminal(args: string[], done: RegExp): Promise<string> {
    const command = [process.execPath, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
    const child = spawn('script', ['-qfec', command, '/dev/null'], { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...stack.env, NO_COLOR: '' } });
    let output = '';
    try {
      return await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no match for ${done} in:\n${output}`)), 15_000);
        child.stdout?.on('data', (c: Buffer) => {
          output += c.toString();
          if (done.test(output)) {
            clearTimeout(timer);
            resolve(output);
          }
        });
        child.once('exit', (code) => {
          clearTimeout(timer);
          reject(new Error(`exited ${code}:\n${output}`));
        });
      });
    } finally {
      try {
        process.kill(-(child.pid as number), 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  // The level may be wrapped in an ANSI colour (ESC [ n m) on a terminal.
  const humanLine = new RegExp(`^\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d\\.\\d{3} (?:${String.fromCharCode(27)}\\[\\d+m)?(?:TRACE|DEBUG|INFO|WARN|ERROR|FATAL)`, 'm');

  test('on a terminal the gateway and the agent print human lines (local time, level names), not JSON', async () => {
    const gateway = await onTerminal(
      [SCRIPTS.gateway, '--config', stack.configFile, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--nat-probe-port', '0'],
      /listening|ready/i,
    );
    assert.match(gateway, humanLine);
    assert.ok(!/^\{/m.test(gateway), gateway);
    const agent = await onTerminal([SCRIPTS.agent, '--gateway', stack.url, '--token-file', await stack.writeTokenFile(await stack.signToken('agent', { sub: 'default/svc' })), '--expose', `echo=127.0.0.1:${echo.port}`], /attached/);
    assert.match(agent, humanLine);
    assert.match(agent, /INFO.* agent attached to the gateway/);
    assert.ok(!/^\{/m.test(agent), agent);
  });
});
