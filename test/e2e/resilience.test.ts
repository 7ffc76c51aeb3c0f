/**
 * Loopback end-to-end tests of resilience: what clients, agents and the gateway do when a peer dies,
 * restarts, drains, or the configuration changes under open streams. Every component is a real
 * process; assertions are on sockets, exit codes, JSON events of `-o json` and /metrics.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../helpers/ports.ts';
import { type LogLine, registerChild, type StartedProcess, startProcess } from '../helpers/processes.ts';
import { sendAndHash, startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { type ForwardProcess, ROOT, SCRIPTS, type Stack, startStack } from './stack.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const SESSIONS = 'narrowlink_gateway_sessions';
const STREAMS_OPEN = 'narrowlink_gateway_streams_open';

/** Polls `check` every 100 ms until it returns a value other than undefined/false; throws after `timeoutMs`. */
async function waitUntil<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined | false> | T | undefined | false): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      last = error;
    }
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (last error: ${String(last)})` : ''}`);
    await sleep(100);
  }
}

/** Rejects when `promise` takes longer than `ms`. */
async function within<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** How a client TCP connection ended. */
interface Ending {
  /** 'error' (reset or other socket error), 'end' (clean FIN from the far side) or 'close' (neither seen). */
  how: 'error' | 'end' | 'close';
  code: string | undefined;
  /** performance.now() when it happened. */
  at: number;
}

/** Resolves with the first ending of `socket`. */
function ending(socket: net.Socket): Promise<Ending> {
  return new Promise((resolve) => {
    socket.once('error', (error: NodeJS.ErrnoException) => resolve({ how: 'error', code: error.code, at: performance.now() }));
    socket.once('end', () => resolve({ how: 'end', code: undefined, at: performance.now() }));
    socket.once('close', () => resolve({ how: 'close', code: undefined, at: performance.now() }));
  });
}

async function connectTo(port: number): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return socket;
}

/** Opens a connection through `port` to an echo server and proves the stream is up with one round trip. */
async function openEchoStream(port: number): Promise<net.Socket> {
  const socket = await connectTo(port);
  socket.write('ping');
  const reply = await within(
    'echo round trip',
    10_000,
    new Promise<string>((resolve, reject) => {
      let got = '';
      const onData = (chunk: Buffer): void => {
        got += chunk.toString('utf8');
        if (got.length >= 4) {
          socket.off('data', onData);
          resolve(got);
        }
      };
      socket.on('data', onData);
      socket.once('error', reject);
      socket.once('close', () => reject(new Error('closed before the echo came back')));
    }),
  );
  assert.equal(reply, 'ping');
  return socket;
}

/** Asserts that a 64 KiB stream through `port` to an echo server comes back byte for byte. */
async function assertEchoWorks(port: number): Promise<void> {
  const result = await sendAndHash(port, 64 * KiB, 3, { timeoutMs: 15_000 });
  assert.equal(result.replyBytes, 64 * KiB);
  assert.equal(result.replySha256, result.sentSha256);
}

/** A TCP server that sends the same 64 KiB buffer forever (respecting backpressure) to every connection. */
async function startEndlessSource(): Promise<TestServer> {
  const chunk = Buffer.alloc(64 * KiB, 0x5a);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.resume();
    const pump = (): void => {
      while (!socket.destroyed && socket.write(chunk)) {
        // keep writing until the kernel buffer pushes back
      }
    };
    socket.on('drain', pump);
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

function childEnv(env: Record<string, string | undefined>): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries({ ...process.env, ...env }).filter((e): e is [string, string] => e[1] !== undefined));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Pids of the direct children of `pid` (Linux /proc). */
function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === pid) out.push(Number(entry));
    } catch {
      // the process went away while we looked
    }
  }
  return out;
}

/** Runs a child to completion; resolves with its exit code and output. */
function runToExit(child: ChildProcess, timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  child.stdout?.on('data', (chunk: Buffer) => stdout.push(chunk));
  child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) => {
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(stdout).toString('utf8'), stderr: Buffer.concat(stderr).toString('utf8') });
    });
  });
}

const isEvent =
  (event: string, extra: (line: LogLine) => boolean = () => true) =>
  (line: LogLine): boolean =>
    line.event === event && extra(line);

describe('agent killed, target refusing', () => {
  let stack: Stack;
  let source: TestServer;
  let deadPort: number;
  let agent: StartedProcess;
  let forward: ForwardProcess;

  before(async () => {
    source = await startEndlessSource();
    deadPort = await freePort();
    stack = await startStack({
      agents: [
        {
          name: 'svc',
          expose: [
            { name: 'bulk', port: source.port },
            { name: 'dead', port: deadPort },
          ],
        },
      ],
    });
    agent = await stack.startAgent('svc');
    forward = await stack.startForward('svc:bulk');
  });
  after(async () => {
    await stack?.stop();
    await source?.close();
  });

  test('connect to an exposed port where nothing listens exits 1 with NL_ERR_STREAM_DIAL_FAILED', async () => {
    const run = await stack.runClient(['connect', 'svc', String(deadPort), '--timeout-ms', '5000'], { timeoutMs: 15_000 });
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /NL_ERR_STREAM_DIAL_FAILED/);
    assert.equal(run.stdout.length, 0);
  });

  test('SIGKILL of the agent mid-transfer resets the client connection promptly; streams_open returns to 0', async () => {
    const socket = await connectTo(forward.ports[0] as number);
    const ended = ending(socket);
    let received = 0;
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
    });
    await waitUntil('8 MiB received through the tunnel', 15_000, () => received >= 8 * MiB);
    assert.equal(await stack.metric(STREAMS_OPEN), 1);

    const killedAt = performance.now();
    await agent.kill9();
    const end = await within('client connection ending after the agent died', 5000, ended);
    const atKill = received;
    socket.destroy();
    assert.ok(end.at - killedAt < 3000, `client saw the end ${Math.round(end.at - killedAt)} ms after the kill`);
    // A reset, not a clean end: the application must not mistake a truncated transfer for a complete one.
    assert.notEqual(end.how, 'end', 'connection ended with a clean FIN after the agent was killed');
    assert.equal(end.how, 'error');
    assert.equal(end.code, 'ECONNRESET');
    assert.ok(atKill >= 8 * MiB);

    const reset = await forward.process.waitFor(isEvent('stream-reset'), 5000);
    assert.equal(reset.code, 'PEER_GONE');
    await waitUntil('streams_open back to 0', 5000, async () => (await stack.metric(STREAMS_OPEN)) === 0);
    await waitUntil('agent session gone', 5000, async () => (await stack.metric(SESSIONS, { kind: 'agent' })) === 0);
    assert.equal(forward.process.child.exitCode, null, 'forward must survive the agent dying');
  });
});

describe('gateway restart and graceful shutdown', () => {
  const DRAIN_MS = 1000;
  const CLIENT_TIMEOUT_MS = 8000;
  let stack: Stack;
  let echo: TestServer;
  let forward: ForwardProcess;
  let gateway2: StartedProcess | undefined;

  before(async () => {
    echo = await startEchoServer();
    stack = await startStack({ agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }], gatewayArgs: ['--drain-ms', String(DRAIN_MS)] });
    await stack.startAgent('svc');
    forward = await stack.startForward('svc:echo', { args: ['--timeout-ms', String(CLIENT_TIMEOUT_MS)] });
  });
  after(async () => {
    await gateway2?.stop('SIGKILL');
    await stack?.stop();
    await echo?.close();
  });

  test('agent and forward reconnect to a gateway restarted on the same port; the listener stays open', async (t) => {
    const port = forward.ports[0] as number;
    await assertEchoWorks(port);

    assert.equal(await stack.gateway.stop('SIGTERM', 5000), 0);
    // A connection made while the gateway is down: accepted by the listener, then it waits for the gateway.
    const startedAt = performance.now();
    const whileDown = sendAndHash(port, 16 * KiB, 5, { timeoutMs: CLIENT_TIMEOUT_MS + 5000 }).then(
      (result) => ({ ok: result.replySha256 === result.sentSha256, ms: performance.now() - startedAt, error: undefined }),
      (error: Error) => ({ ok: false, ms: performance.now() - startedAt, error }),
    );
    await sleep(1500);
    gateway2 = await startProcess(
      'gateway (restarted)',
      [SCRIPTS.gateway, '--config', stack.configFile, '--listen', `127.0.0.1:${stack.port}`, '--admin-listen', `127.0.0.1:${stack.adminPort}`, '--drain-ms', String(DRAIN_MS)],
      { env: stack.env },
    );
    assert.equal(gateway2.readyLine.port, stack.port);
    const restartedAt = performance.now();

    await waitUntil('agent re-attached', 15_000, async () => (await stack.metric(SESSIONS, { kind: 'agent' })) === 1);
    await waitUntil('forward reconnected', 15_000, async () => (await stack.metric(SESSIONS, { kind: 'client' })) === 1);
    t.diagnostic(`agent and client back ${Math.round(performance.now() - restartedAt)} ms after the restart`);

    const early = await whileDown;
    t.diagnostic(`connection made during the outage: ${early.error ? `failed (${early.error.message})` : 'succeeded'} after ${Math.round(early.ms)} ms`);
    // Either it got through once the gateway was back, or it failed cleanly; never beyond --timeout-ms.
    assert.ok(early.ms < CLIENT_TIMEOUT_MS + 3000, `connection made while the gateway was down settled after ${Math.round(early.ms)} ms`);
    if (early.error === undefined) assert.ok(early.ok, 'echo through a connection made during the outage came back corrupted');

    await assertEchoWorks(port);
    assert.equal(forward.process.child.exitCode, null);
    // -o json told the user what happened: a reconnect, then a new session.
    await waitUntil('forward reported reconnecting then connected', 3000, () => {
      const lines = forward.process.lines;
      const reconnecting = lines.findIndex((line) => line.event === 'reconnecting');
      return reconnecting >= 0 && lines.slice(reconnecting).some((line) => line.event === 'connected');
    });
  });

  test('SIGTERM drains, then resets idle streams with GATEWAY_SHUTTING_DOWN and exits 0', async () => {
    const gateway = gateway2 ?? stack.gateway;
    assert.equal(gateway.child.exitCode, null, 'gateway not running');
    const idle = await openEchoStream(forward.ports[0] as number);
    const idleEnded = ending(idle);

    const connect = stack.spawnClient(['connect', 'svc', String(echo.port), '--timeout-ms', '5000']);
    const echoed = once(connect.stdout as NodeJS.ReadableStream, 'data');
    const connectDone = runToExit(connect, 20_000);
    connect.stdin?.write('x');
    assert.equal(String((await within('connect echoing', 10_000, echoed))[0]), 'x');
    await waitUntil('two streams open', 10_000, async () => (await stack.metric(STREAMS_OPEN)) === 2);

    const stoppedAt = performance.now();
    const code = await gateway.stop('SIGTERM', DRAIN_MS + 8000);
    const took = performance.now() - stoppedAt;
    assert.equal(code, 0, gateway.tail());
    assert.ok(took < DRAIN_MS + 3000, `gateway took ${Math.round(took)} ms to exit`);
    assert.ok(took >= DRAIN_MS - 100, `gateway exited after ${Math.round(took)} ms without waiting for the drain`);

    const end = await within('idle forward connection ending', 3000, idleEnded);
    idle.destroy();
    assert.equal(end.how, 'error');
    const reset = await forward.process.waitFor(isEvent('stream-reset', (l) => l.code === 'GATEWAY_SHUTTING_DOWN'), 3000);
    assert.equal(reset.code, 'GATEWAY_SHUTTING_DOWN');

    connect.stdin?.end();
    const run = await within('connect exiting', 5000, connectDone);
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /NL_ERR_STREAM_GATEWAY_SHUTTING_DOWN/);
  });
});

describe('configuration reloads under open streams; background agent', () => {
  let stack: Stack;
  let echo: TestServer;
  let alt: TestServer;
  let forward: ForwardProcess;
  let daemonPid: number | undefined;

  before(async () => {
    echo = await startEchoServer();
    alt = await startEchoServer();
    stack = await startStack({
      agents: [
        {
          name: 'svc',
          expose: [
            { name: 'echo', port: echo.port },
            { name: 'alt', port: alt.port },
          ],
        },
        { name: 'other', expose: [{ name: 'web', port: alt.port }] },
        { name: 'bg', expose: [{ name: 'echo', port: echo.port }] },
      ],
      policies: [
        {
          name: 'e2e-some',
          namespace: 'default',
          subjects: [{ kind: 'Group', name: 'e2e' }],
          rules: [{ action: 'Allow', agents: { names: ['svc', 'bg'] } }],
        },
      ],
    });
    await stack.startAgent('svc');
    forward = await stack.startForward('svc:echo');
  });
  after(async () => {
    if (daemonPid !== undefined && isAlive(daemonPid)) process.kill(daemonPid, 'SIGKILL');
    await stack?.stop();
    await echo?.close();
    await alt?.close();
  });

  async function listedAgents(): Promise<string[]> {
    const run = await stack.runClient(['ls', '-o', 'json', '--timeout-ms', '5000'], { timeoutMs: 15_000 });
    assert.equal(run.code, 0, run.stderr);
    const { agents } = JSON.parse(run.stdout.toString('utf8')) as { agents: Array<{ name: string }> };
    return agents.map((a) => a.name).sort();
  }

  test('a reload that revokes access resets the open stream and refuses new ones with DENIED', async () => {
    const port = forward.ports[0] as number;
    const stream = await openEchoStream(port);
    const ended = ending(stream);
    const resetsBefore = (await stack.metric('narrowlink_gateway_policy_resets_total')) ?? 0;

    const reloadedAt = performance.now();
    await stack.reloadConfig((config) => {
      const policy = config.policies[0];
      assert.ok(policy);
      policy.rules.push({ action: 'Deny', agents: { names: ['svc'] }, ports: [echo.port] });
      return config;
    });
    const end = await within('revoked stream ending', 5000, ended);
    stream.destroy();
    assert.ok(end.at - reloadedAt < 5000);
    assert.notEqual(end.how, 'end', 'a revoked stream must be reset, not ended cleanly');
    assert.equal(await stack.metric('narrowlink_gateway_policy_resets_total'), resetsBefore + 1);
    const revoked = await forward.process.waitFor(isEvent('stream-reset'), 3000);
    assert.equal(revoked.code, 'DENIED');
    await waitUntil('streams_open back to 0', 5000, async () => (await stack.metric(STREAMS_OPEN)) === 0);

    // The reset may even beat the connect callback: watch the socket from the start.
    const refused = net.connect({ host: '127.0.0.1', port });
    const refusedEnd = await within('refused connection ending', 10_000, ending(refused));
    refused.destroy();
    assert.notEqual(refusedEnd.how, 'end');
    const failed = await forward.process.waitFor(isEvent('stream-failed'), 3000);
    assert.equal(failed.code, 'DENIED');
  });

  test('a reload that grants access makes ls show the agent', async () => {
    assert.deepEqual(await listedAgents(), ['bg', 'svc']);
    await stack.reloadConfig((config) => {
      const policy = config.policies[0];
      assert.ok(policy);
      policy.rules = [{ action: 'Allow' }];
      return config;
    });
    assert.deepEqual(await listedAgents(), ['bg', 'other', 'svc']);
    // The Deny is gone too: the forward works again.
    await assertEchoWorks(forward.ports[0] as number);
  });

  test('an invalid config is rejected and the previous one stays in force', async () => {
    const invalidBefore = (await stack.metric('narrowlink_gateway_config_reloads_total', { result: 'invalid' })) ?? 0;
    const okBefore = await stack.metric('narrowlink_gateway_config_reloads_total', { result: 'ok' });
    await stack.writeConfig('apiVersion: narrowlink.io/v1alpha1\nkind: GatewayConfig\nagents: 5\npolicies: [\n');
    await waitUntil(
      'config_reloads_total{result="invalid"} incremented',
      10_000,
      async () => ((await stack.metric('narrowlink_gateway_config_reloads_total', { result: 'invalid' })) ?? 0) > invalidBefore,
    );
    assert.equal(await stack.metric('narrowlink_gateway_config_reloads_total', { result: 'ok' }), okBefore);
    assert.equal((await stack.httpGet('/readyz')).status, 200);
    await assertEchoWorks(forward.ports[0] as number);
    assert.deepEqual(await listedAgents(), ['bg', 'other', 'svc']);
  });

  test('agent --background --pid-file returns, attaches as a daemon, and SIGTERM removes the pid file', async () => {
    // The previous test left an invalid file in place; put the good one back (same as the config in force).
    await stack.writeConfig(stack.config());
    const pidFile = path.join(stack.dir, 'bg.pid');
    const logFile = path.join(stack.dir, 'bg.log');
    const tokenFile = await stack.writeTokenFile(await stack.signToken('agent', { sub: 'default/bg' }), 'bg.jwt');
    const agentsBefore = (await stack.metric(SESSIONS, { kind: 'agent' })) ?? 0;

    const launcher = spawn(
      process.execPath,
      [SCRIPTS.agent, '--gateway', stack.url, '--token-file', tokenFile, '--expose', `echo=127.0.0.1:${echo.port}`, '--background', '--pid-file', pidFile, '--log-file', logFile],
      { env: childEnv(stack.env), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    registerChild(launcher);
    const launched = await within('agent --background returning', 15_000, runToExit(launcher, 15_000));
    assert.equal(launched.code, 0, launched.stderr);

    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    daemonPid = pid;
    assert.ok(Number.isInteger(pid) && pid > 0 && pid !== launcher.pid, `pid file holds ${pid}`);
    assert.ok(isAlive(pid), 'the daemon is not running');
    await waitUntil('daemon attached', 10_000, async () => (await stack.metric(SESSIONS, { kind: 'agent' })) === agentsBefore + 1);

    process.kill(pid, 'SIGTERM');
    await waitUntil('daemon gone and pid file removed', 8000, () => !isAlive(pid) && !existsSync(pidFile));
    await waitUntil('daemon session closed', 5000, async () => (await stack.metric(SESSIONS, { kind: 'agent' })) === agentsBefore);
  });
});

describe('npm start (scripts/local-stack.ts)', () => {
  let local: StartedProcess | undefined;
  after(async () => {
    await local?.stop('SIGKILL');
  });

  test('serves the demo through the tunnel; SIGINT stops it and every child', async () => {
    local = await startProcess('local-stack', [path.join(ROOT, 'scripts/local-stack.ts'), '--port', '0', '--json'], { timeoutMs: 30_000 });
    const url = String(local.readyLine.url);
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    // On loopback nothing stands in the way of the direct path: the stack says it took it.
    assert.equal(local.readyLine.path, 'direct');
    const response = await fetch(url, { headers: { connection: 'close' } });
    assert.equal(response.status, 200);
    assert.match(await response.text(), /Hello from the Narrowlink demo service/);

    const children = childPids(local.child.pid as number);
    assert.equal(children.length, 3, `expected gateway, agent and client, found pids ${children.join(', ')}`);
    const stoppedAt = performance.now();
    const code = await local.stop('SIGINT', 10_000);
    assert.equal(code, 0, local.tail());
    assert.ok(performance.now() - stoppedAt < 10_000);
    await waitUntil('children gone', 5000, () => children.every((pid) => !isAlive(pid)));
  });
});
