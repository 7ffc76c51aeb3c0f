/**
 * The `narrowlink` process against real listeners: every definitive failure of a one-shot command (`ls`, `status`,
 * `connect`) ends at once with its code and exit status (never the timeout: each run gets --timeout-ms 30000 and
 * must finish in well under half of it, whatever the start-up time of a loaded machine), usage errors exit 2 with the
 * command's usage, and a cleartext ws:// gateway off loopback gets not a single byte. Messages are checked by their
 * code, not their text. (`status AGENT` and forward's reporting need a gateway: test/e2e/cli.test.ts.)
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { type AddressInfo, createServer as createTcpServer, type Server } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { isLoopbackHost, LinkErrorCode } from '@narrowlink/peer-link';
import { makeTestCertificate, type TestCertificate } from '../../test/helpers/tls.ts';
import { CliErrorCode, ExitCode } from './errors.ts';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), 'main.ts');
const root = mkdtempSync(join(tmpdir(), 'nl-failfast-'));
const servers: (Server | HttpServer)[] = [];
let cert: TestCertificate;
before(async () => {
  cert = await makeTestCertificate(join(root, 'tls'));
});
after(async () => {
  for (const s of servers) s.close();
  rmSync(root, { recursive: true, force: true });
});

/** Long enough that a run which waited for it would blow the bound below. */
const TIMEOUT_MS = 30_000;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
  /** The NL_ERR_ code on stderr's `narrowlink: CODE: message` line. */
  errorCode: string | undefined;
}

function run(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<Run> {
  // No kubeconfig, no config file, no login cache: only what the arguments say.
  const env = { PATH: process.env.PATH, HOME: root, XDG_CONFIG_HOME: join(root, 'xdg'), KUBECONFIG: join(root, 'none'), ...extraEnv };
  const started = performance.now();
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { env, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? ((error as { code?: number }).code ?? 1) : 0;
      resolve({ code, stdout, stderr, ms: performance.now() - started, errorCode: /^narrowlink: (NL_ERR_[A-Z_]+):/m.exec(stderr)?.[1] });
    });
  });
}

/** A one-shot run that must fail fast: its code and exit status, well before the timeout. */
async function failsFast(args: string[], errorCode: string, exitCode: number): Promise<Run> {
  const result = await run([...args, '--timeout-ms', String(TIMEOUT_MS)]);
  assert.equal(result.errorCode, errorCode, result.stderr);
  assert.equal(result.code, exitCode, result.stderr);
  assert.ok(result.ms < TIMEOUT_MS / 2, `took ${Math.round(result.ms)} ms: it waited for the timeout`);
  // One line of error: no stack, no OpenSSL dump.
  assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
  return result;
}

async function listen<T extends Server | HttpServer>(server: T, host = '127.0.0.1'): Promise<number> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return (server.address() as AddressInfo).port;
}

async function refusingPort(): Promise<number> {
  const server = createTcpServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const token = ['--token', 'not.a.token'];

describe('one-shot commands fail at once on definitive answers', () => {
  test('connection refused: NL_ERR_LINK_CONNECTION_REFUSED, exit 4 (ls, status, connect)', async () => {
    const gateway = `ws://127.0.0.1:${await refusingPort()}`;
    await failsFast(['ls', '--gateway', gateway, ...token], LinkErrorCode.CONNECTION_REFUSED, ExitCode.UNREACHABLE);
    await failsFast(['status', '--gateway', gateway, ...token, '--mode', 'relay'], LinkErrorCode.CONNECTION_REFUSED, ExitCode.UNREACHABLE);
    await failsFast(['connect', 'demo', '80', '--gateway', gateway, ...token, '--mode', 'relay'], LinkErrorCode.CONNECTION_REFUSED, ExitCode.UNREACHABLE);
  });

  test('an unresolvable name: NL_ERR_LINK_DNS, exit 4', async () => {
    await failsFast(['ls', '--gateway', 'wss://nosuch.invalid', ...token], LinkErrorCode.DNS, ExitCode.UNREACHABLE);
  });

  test('HTTP 404 from something that is not a gateway: NL_ERR_LINK_NOT_GATEWAY, exit 4', async () => {
    const port = await listen(createHttpServer((_req, res) => res.writeHead(404).end('not found')));
    await failsFast(['ls', '--gateway', `ws://127.0.0.1:${port}`, ...token], LinkErrorCode.NOT_GATEWAY, ExitCode.UNREACHABLE);
  });

  test('TLS with an untrusted CA and with a certificate for another name: NL_ERR_LINK_TLS, exit 4', async () => {
    const https = createHttpsServer({ cert: cert.cert, key: cert.key }, (_req, res) => res.writeHead(404).end());
    const port = await listen(https, '127.0.0.2');
    const untrusted = await failsFast(['ls', '--gateway', `wss://127.0.0.2:${port}`, ...token], LinkErrorCode.TLS, ExitCode.UNREACHABLE);
    assert.doesNotMatch(untrusted.stderr, /openssl|\.c:\d+/i);
    // Trusting the CA leaves the name: the certificate names localhost and 127.0.0.1, not 127.0.0.2.
    await failsFast(['ls', '--gateway', `wss://127.0.0.2:${port}`, '--ca-file', cert.caFile, ...token], LinkErrorCode.TLS, ExitCode.UNREACHABLE);
  });

  test('bad credentials: the gateway code, exit 3', async () => {
    const port = await listen(
      createHttpServer((_req, res) => {
        res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'NL_ERR_AUTH_INVALID_TOKEN', message: 'token rejected' }));
      }),
    );
    await failsFast(['ls', '--gateway', `ws://127.0.0.1:${port}`, ...token], LinkErrorCode.REFUSED, ExitCode.AUTH);
  });
});

describe('configuration errors exit 2 at once', () => {
  test('a missing token file (also through ~): NL_ERR_CLI_CONFIG, exit 2', async () => {
    const gateway = `ws://127.0.0.1:${await refusingPort()}`;
    await failsFast(['ls', '--gateway', gateway, '--token-file', join(root, 'missing')], CliErrorCode.CONFIG, ExitCode.USAGE);
    await failsFast(['ls', '--gateway', gateway, '--token-file', '~/missing'], CliErrorCode.CONFIG, ExitCode.USAGE);
  });

  test('~ and $XDG_* in paths: a token file named through them is found', async () => {
    writeFileSync(join(root, 'token'), 'not.a.token\n');
    mkdirSync(join(root, 'xdg'), { recursive: true });
    writeFileSync(join(root, 'xdg', 'token'), 'not.a.token\n');
    const gateway = `ws://127.0.0.1:${await refusingPort()}`;
    // Found (so the run gets as far as the refused gateway), not a config error.
    await failsFast(['ls', '--gateway', gateway, '--token-file', '~/token'], LinkErrorCode.CONNECTION_REFUSED, ExitCode.UNREACHABLE);
    // biome-ignore lint/suspicious/noTemplateCurlyInString: the CLI expands it, not JavaScript
    await failsFast(['ls', '--gateway', gateway, '--token-file', '${XDG_CONFIG_HOME}/token'], LinkErrorCode.CONNECTION_REFUSED, ExitCode.UNREACHABLE);
  });
});

describe('usage errors exit 2 with the usage', () => {
  test('unknown option, option of another command, missing value, unknown command', async () => {
    for (const args of [['ls', '--foo'], ['status', '--listen', 'x'], ['ls', '--mode'], ['frward'], ['completion', 'tcsh'], ['help', 'nosuch']]) {
      const result = await run(args);
      assert.equal(result.code, ExitCode.USAGE, `${args.join(' ')}: ${result.stderr}`);
      assert.equal(result.errorCode, CliErrorCode.USAGE, result.stderr);
      assert.match(result.stderr, /^Usage: narrowlink /m, 'the usage follows the error');
    }
  });

  test('--version, version -o json, help COMMAND: exit 0', async () => {
    const version = await run(['--version']);
    assert.equal(version.code, 0);
    assert.match(version.stdout, /^\d+\.\d+\.\d+\S*\n$/);
    const json = JSON.parse((await run(['version', '-o', 'json'])).stdout) as { version: string };
    assert.equal(`${json.version}\n`, version.stdout);
    const help = await run(['help', 'forward']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^Usage: narrowlink forward /);
  });
});

/** A non-loopback IPv4 address of this machine, if it has one. */
function nonLoopbackAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal && !isLoopbackHost(a.address)) return a.address;
  }
  return undefined;
}

describe('cleartext ws:// off loopback', () => {
  const address = nonLoopbackAddress();
  test('is refused (exit 2) and not a byte reaches the listener', { skip: address ? false : 'no non-loopback IPv4 address here' }, async () => {
    let connections = 0;
    const received: Buffer[] = [];
    const port = await listen(
      createTcpServer((socket) => {
        connections++;
        socket.on('data', (chunk) => received.push(chunk));
      }),
      address,
    );
    for (const command of [['ls'], ['status'], ['connect', 'demo', '80']]) {
      await failsFast([...command, '--gateway', `ws://${address}:${port}`, '--token', 'secret-token'], CliErrorCode.CONFIG, ExitCode.USAGE);
    }
    // The same URL through the environment and a config file.
    const config = join(root, 'insecure.yaml');
    writeFileSync(config, `gateway: ws://${address}:${port}\ntoken: secret-token\n`);
    assert.equal((await run(['ls', '--config', config])).code, ExitCode.USAGE);
    assert.equal((await run(['ls', '--token', 'secret-token'], { NARROWLINK_GATEWAY: `ws://${address}:${port}` })).code, ExitCode.USAGE);
    assert.equal(connections, 0);
    assert.equal(Buffer.concat(received).length, 0);
  });
});

describe('long-running commands keep retrying definitive answers, and say so once per cause', () => {
  test('forward against something answering 404: listening, one reconnecting event with the cause over many attempts', async () => {
    let attempts = 0;
    const port = await listen(
      createHttpServer((_req, res) => {
        attempts++;
        res.writeHead(404).end();
      }),
    );
    const env = { PATH: process.env.PATH, HOME: root, XDG_CONFIG_HOME: join(root, 'xdg'), KUBECONFIG: join(root, 'none') };
    const child = spawn(process.execPath, [MAIN, 'forward', '0', 'demo:80', '--gateway', `ws://127.0.0.1:${port}`, ...token, '--mode', 'relay', '-o', 'json'], { env });
    const events: Array<Record<string, unknown>> = [];
    let buffered = '';
    child.stdout.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('utf8');
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) if (line.trim()) events.push(JSON.parse(line) as Record<string, unknown>);
    });
    try {
      // Driven by the listener's count, not by a clock: the link keeps dialing with its backoff.
      while (attempts < 4) {
        assert.equal(child.exitCode, null, 'forward gave up');
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(events.some((e) => e.event === 'ready'), 'the listener opened');
      const reconnecting = events.filter((e) => e.event === 'reconnecting');
      assert.equal(reconnecting.length, 1, JSON.stringify(reconnecting));
      assert.equal(reconnecting[0]?.error, LinkErrorCode.NOT_GATEWAY);
      assert.equal(typeof reconnecting[0]?.delayMs, 'number');
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('close', r));
    }
  });
});
