/**
 * The `narrowlink` process: help for login/logout/status, the kubectl plugin, and `status`/`logout` on the login
 * cache (no gateway, no API server needed). The login exchange's failures are in credentials/login.test.ts.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { generateProofKey } from '@narrowlink/protocol';
import { kubectlPath, toolsUnavailableReason } from '../../test/k8s/tools.ts';
import { cachePath, writeLogin } from './credentials/cache.ts';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), 'main.ts');
const root = mkdtempSync(join(tmpdir(), 'nl-main-'));
after(() => rmSync(root, { recursive: true, force: true }));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve) => {
    execFile(file, args, { env, timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** An environment with its own config dir and a kubeconfig whose current context is `dev`. */
function sandbox(): NodeJS.ProcessEnv {
  const dir = mkdtempSync(join(root, 'home-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, 'apiVersion: v1\nkind: Config\ncurrent-context: dev\ncontexts: [{name: dev, context: {cluster: c, user: u}}]\n');
  return { PATH: process.env.PATH, HOME: dir, XDG_CONFIG_HOME: join(dir, 'xdg'), KUBECONFIG: kubeconfig };
}

function cacheLogin(env: NodeJS.ProcessEnv, expiresAt: string): string {
  return writeLogin(
    {
      version: 1,
      context: 'dev',
      cluster: 'c',
      server: 'https://k:6443',
      kubeconfig: null,
      namespace: 'narrowlink',
      loginNamespace: 'narrowlink',
      username: 'alice',
      groups: ['dev', 'system:authenticated'],
      token: 'secret.token.value',
      expiresAt,
      issuedAt: new Date(Date.parse(expiresAt) - 8 * 3_600_000).toISOString(),
      gatewayUrls: ['wss://gw.example:443'],
      caPem: '',
      natProbePorts: [],
      proofKeyPem: generateProofKey().privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    },
    { env },
  );
}

describe('narrowlink help', () => {
  test('login, logout and status --help: exit 0 with their usage', async () => {
    for (const [command, usage] of [
      ['login', /^Usage: narrowlink login \[--context NAME\] \[--kubeconfig FILE\] \[-n NAMESPACE\]/],
      ['logout', /^Usage: narrowlink logout/],
      ['status', /^Usage: narrowlink status \[AGENT\] \[--local\]/],
    ] as const) {
      const result = await run(process.execPath, [MAIN, command, '--help'], sandbox());
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, usage);
    }
    const main = await run(process.execPath, [MAIN, '--help'], sandbox());
    assert.match(main.stdout, /^ {2}login /m);
    assert.match(main.stdout, /^ {2}logout /m);
  });

  test('kubectl narrowlink --help: kubectl finds the plugin on PATH and its help names "kubectl narrowlink"', async (t) => {
    const reason = toolsUnavailableReason();
    if (reason) {
      t.skip(reason);
      return;
    }
    const kubectl = kubectlPath();
    // A PATH with only the plugin and the Node that runs it, as after `npm install -g`.
    const bin = join(root, 'bin');
    mkdirSync(bin, { recursive: true });
    if (!existsSync(join(bin, 'kubectl-narrowlink'))) {
      symlinkSync(MAIN, join(bin, 'kubectl-narrowlink'));
      symlinkSync(process.execPath, join(bin, 'node'));
    }
    const env = { ...sandbox(), PATH: `${bin}:/usr/bin:/bin` };
    const list = await run(kubectl, ['plugin', 'list'], env);
    assert.match(list.stdout, /kubectl-narrowlink/);
    const help = await run(kubectl, ['narrowlink', '--help'], env);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /Usage: kubectl narrowlink COMMAND/);
    assert.match(help.stdout, /kubectl narrowlink forward 8080 demo:http/);
    const loginHelp = await run(kubectl, ['narrowlink', 'login', '--help'], env);
    assert.match(loginHelp.stdout, /^Usage: kubectl narrowlink login/);
  });
});

describe('narrowlink status / logout on the login cache', () => {
  test('not logged in: status says so, exit 3 (json too)', async () => {
    const env = sandbox();
    const text = await run(process.execPath, [MAIN, 'status'], env);
    assert.equal(text.code, 3);
    assert.match(text.stdout, /not logged in/);
    const json = await run(process.execPath, [MAIN, 'status', '-o', 'json'], env);
    assert.equal(json.code, 3);
    assert.deepEqual(JSON.parse(json.stdout).login, { state: 'not-logged-in', context: 'dev', cacheFile: cachePath('dev', { env }) });
  });

  test('logged in: status --local shows user, groups, cluster, context, gateway, expiry; never the token', async () => {
    const env = sandbox();
    const expiresAt = new Date(Date.now() + 3_600_000).toISOString();
    cacheLogin(env, expiresAt);
    const json = await run(process.execPath, [MAIN, 'status', '--local', '-o', 'json'], env);
    assert.equal(json.code, 0, json.stderr);
    const login = JSON.parse(json.stdout).login;
    assert.equal(login.state, 'logged-in');
    assert.deepEqual([login.context, login.cluster, login.user, login.groups, login.gateway, login.expiresAt], ['dev', 'c', 'alice', ['dev', 'system:authenticated'], 'wss://gw.example:443', expiresAt]);
    const text = await run(process.execPath, [MAIN, 'status', '--local'], env);
    assert.equal(text.code, 0);
    assert.match(text.stdout, /^user: +alice$/m);
    for (const output of [json.stdout, text.stdout, json.stderr, text.stderr]) {
      assert.ok(!output.includes('secret.token.value'), 'no token in the output');
      assert.ok(!output.includes('PRIVATE KEY'), 'no key in the output');
    }
  });

  test('expired: status exits 3 without contacting the gateway; logout removes the cache', async () => {
    const env = sandbox();
    const file = cacheLogin(env, new Date(Date.now() - 60_000).toISOString());
    const json = await run(process.execPath, [MAIN, 'status', '-o', 'json'], env);
    assert.equal(json.code, 3);
    assert.equal(JSON.parse(json.stdout).login.state, 'expired');
    const logout = await run(process.execPath, [MAIN, 'logout', '-o', 'json'], env);
    assert.equal(logout.code, 0, logout.stderr);
    assert.deepEqual(JSON.parse(logout.stdout), { context: 'dev', removed: true });
    assert.equal(existsSync(file), false);
    const again = await run(process.execPath, [MAIN, 'logout'], env);
    assert.equal(again.code, 0);
  });

  test('ls with an expired login whose kube credential fails: NL_ERR_CLI_LOGIN_EXPIRED, exit 3, at once', async () => {
    const env = sandbox();
    cacheLogin(env, new Date(Date.now() - 60_000).toISOString());
    const started = Date.now();
    const result = await run(process.execPath, [MAIN, 'ls'], env);
    assert.equal(result.code, 3, result.stderr);
    assert.match(result.stderr, /NL_ERR_CLI_LOGIN_EXPIRED/);
    assert.ok(Date.now() - started < 15_000);
  });
});
