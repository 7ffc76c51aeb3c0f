/**
 * `narrowlink doctor` against real processes: a healthy stack (every check ✓, exit 0, with and without AGENT), and
 * one failure per class, each its ✗ and its exit code: UDP blocked (1), an expired token (3), a wrong CA (4), a
 * stopped gateway (4). Gateways probe NAT on a free UDP port pair, never the shared 3478.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { generateProofKey, jwkThumbprint, signToken } from '@narrowlink/protocol';
import { writeLogin } from '@narrowlink/client-cli';
import { makeTestCertificate } from '../helpers/tls.ts';
import { startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { type Stack, startStack } from './stack.ts';
import { freeUdpPortPair } from '../helpers/ports.ts';

interface Check {
  check: string;
  status: 'ok' | 'fail' | 'skip';
  class?: string;
  code?: string;
  detail: string;
  fix?: string;
}
interface Report {
  ok: boolean;
  exitCode: number;
  checks: Check[];
}

function parseReport(stdout: Buffer, stderr: string): Report {
  try {
    return JSON.parse(stdout.toString('utf8')) as Report;
  } catch {
    throw new Error(`doctor printed no JSON report; stderr: ${stderr}\nstdout: ${stdout.toString('utf8')}`);
  }
}

function firstFailure(report: Report): Check | undefined {
  return report.checks.find((c) => c.status === 'fail');
}

describe('narrowlink doctor', () => {
  let stack: Stack;
  let echo: TestServer;

  before(async () => {
    echo = await startEchoServer();
    stack = await startStack({
      tls: true,
      clientMode: 'auto',
      agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }],
      gatewayArgs: ['--nat-probe-port', String(await freeUdpPortPair())],
    });
    await stack.startAgent('svc');
  });
  after(async () => {
    await stack?.stop();
    await echo?.close();
  });

  test('healthy stack: every check passes, exit 0 (doctor AGENT -o json, and text)', async (t) => {
    const run = await stack.runClient(['doctor', 'svc', '-o', 'json']);
    const report = parseReport(run.stdout, run.stderr);
    assert.equal(run.code, 0, JSON.stringify(report.checks, null, 2));
    assert.deepEqual(
      report.checks.map((c) => c.check),
      ['config', 'token', 'dns', 'tcp', 'tls', 'websocket', 'auth', 'clock', 'udp', 'nat', 'policy', 'attached', 'direct'],
    );
    for (const check of report.checks) assert.equal(check.status, 'ok', `${check.check}: ${check.detail}`);
    const tls = report.checks.find((c) => c.check === 'tls');
    assert.match(tls?.detail ?? '', /127\.0\.0\.1/, 'the certificate names are shown');
    assert.doesNotMatch(run.stdout.toString() + run.stderr, new RegExp(stack.clientToken.split('.')[2] as string), 'never prints the token');

    const text = await stack.runClient(['doctor']);
    assert.equal(text.code, 0, text.stdout.toString() + text.stderr);
    t.diagnostic(text.stdout.toString());
    const lines = text.stdout.toString().split('\n');
    assert.equal(lines.filter((l) => l.startsWith('✓ ')).length, 10);
    assert.equal(lines.filter((l) => l.startsWith('✗ ')).length, 0);
  });

  test('an agent the policies do not name: policy ✗, exit 1', async () => {
    const run = await stack.runClient(['doctor', 'nosuch', '-o', 'json']);
    const report = parseReport(run.stdout, run.stderr);
    assert.equal(run.code, 1);
    assert.equal(firstFailure(report)?.check, 'policy');
    assert.deepEqual(
      report.checks.filter((c) => c.status === 'skip').map((c) => c.check),
      ['attached', 'direct'],
    );
  });

  test('an expired token: token ✗ (credentials), auth ✗, exit 3', async () => {
    const expired = await stack.signToken('client', { nowMs: Date.now() - 2 * 3600_000, ttlSeconds: 60 });
    const withToken = await stack.runClient(['doctor', '-o', 'json'], { token: expired });
    const report = parseReport(withToken.stdout, withToken.stderr);
    assert.equal(withToken.code, 3, JSON.stringify(report.checks, null, 2));
    const first = firstFailure(report);
    assert.equal(first?.check, 'token');
    assert.equal(first?.class, 'credentials');
    assert.equal(first?.code, 'NL_ERR_TOKEN_EXPIRED');
    const auth = report.checks.find((c) => c.check === 'auth');
    assert.equal(auth?.status, 'fail', JSON.stringify(report.checks, null, 2));
    // The network checks still ran: the report says what else is (not) wrong.
    for (const name of ['dns', 'tcp', 'tls', 'websocket']) assert.equal(report.checks.find((c) => c.check === name)?.status, 'ok', name);
  });

  test('a wrong CA: tls ✗ with the certificate names and issuer, exit 4', async () => {
    const other = await makeTestCertificate();
    const run = await stack.runClient(['doctor', '-o', 'json', '--gateway', stack.url, '--token-file', stack.clientTokenFile, '--ca-file', other.caFile], { bare: true });
    const report = parseReport(run.stdout, run.stderr);
    assert.equal(run.code, 4, JSON.stringify(report.checks, null, 2));
    const first = firstFailure(report);
    assert.equal(first?.check, 'tls');
    assert.equal(first?.class, 'unreachable');
    assert.match(first?.detail ?? '', /issued by/);
    assert.ok(first?.fix?.includes('--ca-file'));
    assert.ok(report.checks.filter((c) => ['websocket', 'auth', 'udp', 'nat'].includes(c.check)).every((c) => c.status === 'skip'));
  });

  test('a narrowlink login context: named in the config check; a key-bound token passes; an expired one says to log in (exit 3)', async () => {
    const kubeconfig = path.join(stack.dir, 'kubeconfig');
    await writeFile(
      kubeconfig,
      'apiVersion: v1\nkind: Config\ncurrent-context: dev\nclusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: dev, context: {cluster: c, user: u}}]\n',
    );
    const key = generateProofKey();
    const login = async (nowMs: number): Promise<void> => {
      const token = await signToken(stack.keys.privateKeyPem, { typ: 'client', sub: 'alice', groups: ['e2e'], ttlSeconds: 3600, nowMs, cnf: { jkt: jwkThumbprint(key.x) } });
      writeLogin(
        {
          version: 1,
          context: 'dev',
          cluster: 'c',
          server: 'https://127.0.0.1:1',
          kubeconfig,
          namespace: 'narrowlink-system',
          loginNamespace: 'narrowlink-system',
          username: 'alice',
          groups: ['e2e'],
          token,
          expiresAt: new Date(nowMs + 3600_000).toISOString(),
          issuedAt: new Date(nowMs).toISOString(),
          gatewayUrls: [stack.url],
          caPem: stack.tls?.ca ?? '',
          natProbePorts: [],
          proofKeyPem: key.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
        },
        { env: { XDG_CONFIG_HOME: stack.env.XDG_CONFIG_HOME } },
      );
    };
    await login(Date.now());
    const fresh = await stack.runClient(['doctor', '-o', 'json'], { bare: true, env: { KUBECONFIG: kubeconfig } });
    const report = parseReport(fresh.stdout, fresh.stderr);
    assert.equal(fresh.code, 0, JSON.stringify(report.checks, null, 2));
    assert.match(report.checks[0]?.detail ?? '', /login of kube context "dev"/);
    assert.match(report.checks[1]?.detail ?? '', /bound to this machine's key/);

    await login(Date.now() - 3 * 3600_000);
    const expired = await stack.runClient(['doctor', '-o', 'json'], { bare: true, env: { KUBECONFIG: kubeconfig } });
    const expiredReport = parseReport(expired.stdout, expired.stderr);
    assert.equal(expired.code, 3, JSON.stringify(expiredReport.checks, null, 2));
    const first = firstFailure(expiredReport);
    assert.equal(first?.check, 'token');
    assert.match(first?.fix ?? '', /narrowlink login/);
  });

  test('no config at all: config ✗, exit 2 (no hang)', async () => {
    const started = performance.now();
    const run = await stack.runClient(['doctor', '-o', 'json'], { bare: true, env: { KUBECONFIG: '/nonexistent/kubeconfig', HOME: stack.dir } });
    const report = parseReport(run.stdout, run.stderr);
    assert.ok(run.code === 2 || run.code === 3, `exit ${run.code}`);
    assert.equal(firstFailure(report)?.check, 'config');
    assert.ok(performance.now() - started < 15_000);
  });
});

describe('narrowlink doctor: UDP blocked, then the gateway stopped', () => {
  let stack: Stack;
  before(async () => {
    // The gateway tells peers to probe an address nothing answers on (TEST-NET-1): their probes go unanswered.
    stack = await startStack({ clientMode: 'auto', gatewayArgs: ['--nat-probe-port', String(await freeUdpPortPair()), '--nat-probe-advertise', '192.0.2.1'] });
  });
  after(async () => {
    await stack?.stop();
  });

  test('UDP blocked: udp ✗ (UdpBlocked), exit 1; everything before it ✓', async () => {
    const run = await stack.runClient(['doctor', '-o', 'json']);
    const report = parseReport(run.stdout, run.stderr);
    assert.equal(run.code, 1, JSON.stringify(report.checks, null, 2));
    const first = firstFailure(report);
    assert.equal(first?.check, 'udp');
    assert.equal(first?.code, 'UdpBlocked');
    const before = report.checks.slice(0, report.checks.indexOf(first as Check));
    assert.ok(before.every((c) => c.status === 'ok'), JSON.stringify(before));
  });

  test('stopped gateway: tcp ✗ (connection refused), exit 4', async () => {
    await stack.gateway.stop('SIGKILL');
    const started = performance.now();
    const run = await stack.runClient(['doctor', '-o', 'json']);
    const elapsedMs = performance.now() - started;
    const report = parseReport(run.stdout, run.stderr);
    assert.equal(run.code, 4, JSON.stringify(report.checks, null, 2));
    const first = firstFailure(report);
    assert.equal(first?.check, 'tcp');
    assert.equal(first?.code, 'ECONNREFUSED');
    assert.ok(report.checks.slice(report.checks.indexOf(first as Check) + 1).every((c) => c.status === 'skip'));
    // A refused connection is definitive: no waiting for a timeout (the bound is the CLI's start-up on a busy machine).
    assert.ok(elapsedMs < 10_000, `${Math.round(elapsedMs)} ms`);
  });
});
