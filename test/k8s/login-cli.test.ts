/**
 * `narrowlink login` end to end on the Kubernetes API tier: a real kube-apiserver 1.20 with the chart's login RBAC
 * and discovery ConfigMap, the operator's webhook and control loop (./login-fixtures.ts), a real gateway (TLS,
 * trusting the operator's signing key) and agent (test/e2e/stack.ts), and the real `narrowlink` CLI process with
 * nothing but a kubeconfig: alice, authenticated by a client certificate with `O=devs`, runs `narrowlink login`
 * (token, key, gateway URL and CA cached), then `narrowlink forward` with no --gateway, --token or --ca-file
 * reaches the agent's TCP echo through the relay, bytes verified. An AccessPolicy naming `User alice` lets her in
 * and not bob (same group, also logged in); `forward` renews the token in-process and its session outlives the
 * first token; a static-token user and a ServiceAccount log in the same way; mallory, without the narrowlink-login
 * binding, gets exit 3 naming the missing permission; a wrong -n says narrowlink is not installed there.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPrivateKey, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { jwkThumbprint, proofKeyX, verifyToken } from '@narrowlink/protocol';
import { startStack, type Stack } from '../e2e/stack.ts';
import { SCRIPTS } from '../helpers/paths.ts';
import { type StartedProcess, startProcess } from '../helpers/processes.ts';
import { sendAndHash, startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { type ApiServer, type StaticTokenUser, useApiServer } from './cluster.ts';
import { clientCertUser, type LoginBackend, serviceAccountUser, startLoginBackend, staticTokenUser, type TestUser } from './login-fixtures.ts';
import { toolsUnavailableReason } from './tools.ts';

const NS = 'narrowlink-system';
/** A user the apiserver authenticates by a static bearer token (its token file is read at startup). */
const CAROL: StaticTokenUser = { token: randomBytes(24).toString('hex'), user: 'carol', uid: 'carol-uid', groups: ['ops'] };

/** The operator's cap on token lifetimes in this suite: short, so that `forward` has to renew while we watch. */
const TOKEN_TTL_SECONDS = 60;

/** One TCP connection kept open across the renewal: write a line, read it back from the echo. */
async function openEcho(port: number): Promise<{ roundTrip(text: string): Promise<string>; close(): void }> {
  const socket = connect(port, '127.0.0.1');
  await once(socket, 'connect');
  let buffered = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    buffered += chunk;
  });
  return {
    async roundTrip(text) {
      buffered = '';
      socket.write(text);
      const deadline = Date.now() + 10_000;
      while (buffered.length < text.length) {
        if (socket.destroyed || Date.now() > deadline) throw new Error(`echo stream ended or stalled (got ${JSON.stringify(buffered)})`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      return buffered;
    },
    close: () => socket.destroy(),
  };
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

describe('narrowlink login → forward on a real kube-apiserver, gateway and agent', () => {
  const k8s = useApiServer({ staticTokenUsers: [CAROL] });
  let dir: string | undefined;
  let backend: LoginBackend | undefined;
  let stack: Stack | undefined;
  let echo: TestServer | undefined;
  let forward: StartedProcess | undefined;
  let alice: TestUser;
  let bob: TestUser;
  let mallory: TestUser;
  /** The CLI's environment: its own config dir, no NARROWLINK_* or KUBECONFIG from the developer's shell. */
  let cliEnv: Record<string, string | undefined>;

  after(async () => {
    await forward?.stop();
    await stack?.stop();
    await backend?.stop();
    await echo?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const setup = async (t: Parameters<typeof k8s.require>[0]): Promise<ApiServer | undefined> => {
    const api = k8s.require(t);
    if (!api) return undefined;
    const tools = toolsUnavailableReason();
    if (tools) {
      t.skip(`k8s tier: SKIPPED (${tools})`);
      return undefined;
    }
    if (backend) return api;
    dir = await mkdtemp(join(tmpdir(), 'nl-k8s-login-cli-'));
    echo = await startEchoServer();
    stack = await startStack({
      tls: true,
      agents: [{ name: 'svc', namespace: 'default', expose: [{ name: 'echo', port: echo.port }] }],
      policies: [{ name: 'alice-only', namespace: 'default', subjects: [{ kind: 'User', name: 'alice' }], rules: [{ action: 'Allow' }] }],
      // No UDP probe ports: this suite is about the relay, and must not hold 3478 against other suites.
      gatewayArgs: ['--nat-probe-port', '0'],
    });
    backend = await startLoginBackend(api, {
      namespace: NS,
      scratchDir: dir,
      login: { tokenTtlSeconds: TOKEN_TTL_SECONDS },
      chartValues: {
        login: {
          tokenTtlSeconds: TOKEN_TTL_SECONDS,
          subjects: [
            { kind: 'Group', name: 'devs' },
            { kind: 'User', name: 'carol' },
            { kind: 'ServiceAccount', name: 'robot', namespace: 'ci' },
          ],
          gatewayUrls: [stack.url],
          caBundle: stack.tls?.ca ?? '',
        },
      },
    });
    // The gateway trusts what the operator signs (in a cluster: the operator writes its key into the gateway config).
    const operatorKey = backend.signingKey.publicKeyPem;
    await stack.reloadConfig((config) => ({ ...config, signingPublicKeys: [...config.signingPublicKeys, operatorKey] }));
    await stack.startAgent('svc');
    alice = await clientCertUser(api, dir, { user: 'alice', groups: ['devs'] });
    bob = await clientCertUser(api, dir, { user: 'bob', groups: ['devs'] });
    mallory = await clientCertUser(api, dir, { user: 'mallory', groups: ['contractors'] });
    cliEnv = { ...Object.fromEntries(Object.keys(process.env).filter((k) => k.startsWith('NARROWLINK_')).map((k) => [k, undefined])) };
    cliEnv.XDG_CONFIG_HOME = join(dir, 'xdg');
    cliEnv.KUBECONFIG = undefined;
    cliEnv.NARROWLINK_MODE = 'relay';
    return api;
  };

  const cli = (args: string[]): Promise<Run> =>
    new Promise((resolve) => {
      const env = Object.fromEntries(Object.entries({ ...process.env, ...cliEnv }).filter((e): e is [string, string] => e[1] !== undefined));
      execFile(process.execPath, [SCRIPTS.client, ...args], { env, timeout: 60_000 }, (error, stdout, stderr) => {
        resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
      });
    });

  it('alice (client certificate, O=devs) runs narrowlink login: a key-bound token for what the API server authenticated is cached, 0600', async (t) => {
    if (!(await setup(t)) || !stack || !backend) return;
    const result = await cli(['login', '--kubeconfig', alice.kubeconfigPath, '-n', NS, '-o', 'json']);
    assert.equal(result.code, 0, result.stderr);
    const summary = JSON.parse(result.stdout) as Record<string, unknown>;
    assert.equal(summary.state, 'logged-in');
    assert.equal(summary.context, alice.contextName);
    assert.equal(summary.user, 'alice');
    assert.deepEqual(summary.groups, alice.groups);
    assert.equal(summary.gateway, stack.url);

    const file = String(summary.cacheFile);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const cached = JSON.parse(readFileSync(file, 'utf8')) as { token: string; proofKeyPem: string; caPem: string };
    assert.ok(!result.stdout.includes(cached.token) && !result.stderr.includes(cached.token), 'the token is never printed');
    assert.equal(cached.caPem, stack.tls?.ca);
    const claims = await verifyToken(cached.token, { publicKeysPem: [backend.signingKey.publicKeyPem], expectedType: 'client' });
    assert.deepEqual([claims.sub, claims.groups], ['alice', alice.groups]);
    assert.deepEqual(claims.cnf, { jkt: jwkThumbprint(proofKeyX(createPrivateKey(cached.proofKeyPem))) }, 'bound to the cached key');
  });

  it('forward with nothing but the kubeconfig: through the gateway relay to the agent\'s TCP echo, bytes verified', async (t) => {
    if (!(await setup(t)) || !stack) return;
    forward = await startProcess('narrowlink forward (login)', [SCRIPTS.client, 'forward', '-o', 'json', '-L', '127.0.0.1:0:svc:echo', '--kubeconfig', alice.kubeconfigPath], {
      env: cliEnv,
      timeoutMs: 30_000,
    });
    const port = (forward.readyLine.listeners as Array<{ port: number }>)[0]?.port ?? 0;
    const sent = await sendAndHash(port, 256 * 1024, 7);
    assert.equal(sent.replyBytes, 256 * 1024);
    assert.equal(sent.replySha256, sent.sentSha256);
    const opened = await forward.waitFor((line) => line.event === 'stream-open');
    assert.equal(opened.path, 'relay');
    await forward.stop();
    forward = undefined;
  });

  it('forward renews the token in-process before it expires: the session and an open stream outlive the first token', async (t) => {
    if (!(await setup(t)) || !stack) return;
    // A fresh login, so the whole lifetime lies ahead.
    const login = await cli(['login', '--kubeconfig', alice.kubeconfigPath, '-n', NS, '-o', 'json']);
    assert.equal(login.code, 0, login.stderr);
    const cacheFile = String((JSON.parse(login.stdout) as { cacheFile: string }).cacheFile);
    const first = JSON.parse(readFileSync(cacheFile, 'utf8')) as { token: string; expiresAt: string };
    forward = await startProcess('narrowlink forward (renewal)', [SCRIPTS.client, 'forward', '-o', 'json', '-L', '127.0.0.1:0:svc:echo', '--kubeconfig', alice.kubeconfigPath], {
      env: cliEnv,
      timeoutMs: 30_000,
    });
    const port = (forward.readyLine.listeners as Array<{ port: number }>)[0]?.port ?? 0;
    const held = await openEcho(port);
    try {
      assert.equal(await held.roundTrip('before'), 'before');
      // Due at 70 % of the 60 s lifetime; the link re-authenticates (with a fresh proof) at 80 % of what it saw.
      const renewed = await forward.waitFor((line) => line.event === 'token-renewed', TOKEN_TTL_SECONDS * 1000);
      const second = JSON.parse(readFileSync(cacheFile, 'utf8')) as { token: string; expiresAt: string };
      assert.notEqual(second.token, first.token, 'the cache holds the renewed token');
      assert.equal(renewed.expiresAt, second.expiresAt);
      // Past the first token's expiry: the gateway closes a session whose credential expired (4401) within a
      // second, so a session still open now carries the renewed token.
      const waitMs = Date.parse(first.expiresAt) - Date.now() + 3000;
      if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
      assert.equal(await held.roundTrip('after'), 'after', 'the stream opened under the first token still works');
      const sent = await sendAndHash(port, 64 * 1024, 9);
      assert.equal(sent.replySha256, sent.sentSha256, 'new streams open after the first token expired');
      const output = JSON.stringify(forward.lines) + forward.stderrLines.join('\n');
      assert.ok(!output.includes(first.token) && !output.includes(second.token), 'forward never prints a token');
      assert.deepEqual(
        forward.lines.filter((line) => line.event === 'reconnecting' || line.event === 'token-renewal-failed'),
        [],
        'the session never dropped and no renewal failed',
      );
    } finally {
      held.close();
      await forward.stop();
      forward = undefined;
    }
  });

  it('an AccessPolicy naming User alice lets alice see the agent and not bob (same group, logged in too)', async (t) => {
    if (!(await setup(t))) return;
    const bobLogin = await cli(['login', '--kubeconfig', bob.kubeconfigPath, '-n', NS]);
    assert.equal(bobLogin.code, 0, bobLogin.stderr);
    const aliceLs = await cli(['ls', '-o', 'json', '--kubeconfig', alice.kubeconfigPath]);
    assert.equal(aliceLs.code, 0, aliceLs.stderr);
    assert.deepEqual((JSON.parse(aliceLs.stdout) as { agents: Array<{ name: string }> }).agents.map((a) => a.name), ['svc']);
    const bobLs = await cli(['ls', '-o', 'json', '--kubeconfig', bob.kubeconfigPath]);
    assert.equal(bobLs.code, 0, bobLs.stderr);
    assert.deepEqual((JSON.parse(bobLs.stdout) as { agents: unknown[] }).agents, []);
    const status = await cli(['status', '--local', '-o', 'json', '--kubeconfig', bob.kubeconfigPath]);
    assert.equal((JSON.parse(status.stdout) as { login: { user: string } }).login.user, 'bob');
  });

  it('an AccessPolicy naming Group devs lets bob in: the group came from his client certificate\'s O= field', async (t) => {
    if (!(await setup(t)) || !stack) return;
    const bobLogin = await cli(['login', '--kubeconfig', bob.kubeconfigPath, '-n', NS]);
    assert.equal(bobLogin.code, 0, bobLogin.stderr);
    await stack.reloadConfig((config) => ({
      ...config,
      policies: [...config.policies, { name: 'devs', namespace: 'default', subjects: [{ kind: 'Group', name: 'devs' }], rules: [{ action: 'Allow' }] }],
    }));
    try {
      const bobLs = await cli(['ls', '-o', 'json', '--kubeconfig', bob.kubeconfigPath]);
      assert.equal(bobLs.code, 0, bobLs.stderr);
      assert.deepEqual((JSON.parse(bobLs.stdout) as { agents: Array<{ name: string }> }).agents.map((a) => a.name), ['svc']);
    } finally {
      await stack.reloadConfig((config) => ({ ...config, policies: config.policies.filter((p) => p.name !== 'devs') }));
    }
  });

  it('a static bearer token user and a ServiceAccount (a CI robot) log in with the same command; the token says who the API server authenticated', async (t) => {
    const api = await setup(t);
    if (!api || !dir || !backend) return;
    for (const user of [await staticTokenUser(api, dir, CAROL), await serviceAccountUser(api, dir, { namespace: 'ci', name: 'robot' })]) {
      const result = await cli(['login', '--kubeconfig', user.kubeconfigPath, '-n', NS, '-o', 'json']);
      assert.equal(result.code, 0, result.stderr);
      const summary = JSON.parse(result.stdout) as { user: string; groups: string[]; cacheFile: string };
      assert.deepEqual([summary.user, summary.groups], [user.username, user.groups]);
      const { token } = JSON.parse(readFileSync(summary.cacheFile, 'utf8')) as { token: string };
      const claims = await verifyToken(token, { publicKeysPem: [backend.signingKey.publicKeyPem], expectedType: 'client' });
      assert.deepEqual([claims.sub, claims.groups], [user.username, user.groups]);
    }
  });

  it('mallory without the narrowlink-login binding: exit 3, NL_ERR_CLI_LOGIN_FORBIDDEN naming the permission and the ClusterRole; a wrong -n: exit 2, NL_ERR_CLI_NOT_INSTALLED', async (t) => {
    if (!(await setup(t))) return;
    const refused = await cli(['login', '--kubeconfig', mallory.kubeconfigPath, '-n', NS]);
    assert.equal(refused.code, 3, refused.stderr);
    assert.match(refused.stderr, /NL_ERR_CLI_LOGIN_FORBIDDEN/);
    assert.match(refused.stderr, new RegExp(`create clientloginrequests\\.narrowlink\\.io in namespace "${NS}"`));
    assert.match(refused.stderr, /ClusterRole narrowlink-login/);
    const wrongNamespace = await cli(['login', '--kubeconfig', alice.kubeconfigPath, '-n', 'default']);
    assert.equal(wrongNamespace.code, 2, wrongNamespace.stderr);
    assert.match(wrongNamespace.stderr, /NL_ERR_CLI_NOT_INSTALLED/);
  });
});
