import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { generateProofKey, proofKeyX } from '@narrowlink/protocol';
import { writeLogin } from './credentials/cache.ts';
import { CliError, ExitCode } from './errors.ts';
import { defaultConfigPath, expandPath, resolveSettings } from './settings.ts';

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A temp XDG_CONFIG_HOME, optionally with narrowlink/config.yaml holding `yaml`. */
function home(yaml?: string): { xdg: string; configPath: string; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'nl-settings-'));
  dirs.push(dir);
  const xdg = join(dir, 'xdg');
  const configPath = join(xdg, 'narrowlink', 'config.yaml');
  mkdirSync(join(xdg, 'narrowlink'), { recursive: true });
  if (yaml !== undefined) writeFileSync(configPath, yaml);
  return { xdg, configPath, dir };
}

function assertCliError(fn: () => unknown, code: string, exitCode: number = ExitCode.USAGE): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof CliError, String(error));
    assert.equal(error.code, code);
    assert.equal(error.exitCode, exitCode);
    return true;
  });
}

describe('resolveSettings precedence', () => {
  const file = 'gateway: wss://file.example:443\ntoken: file-token\nmode: relay\n';

  test('the config file alone supplies everything', () => {
    const h = home(file);
    const s = resolveSettings({}, { XDG_CONFIG_HOME: h.xdg });
    assert.equal(s.gateway, 'wss://file.example:443');
    assert.equal(s.token(), 'file-token');
    assert.equal(s.mode, 'relay');
    assert.equal(s.configPath, h.configPath);
    assert.equal(s.caPem, undefined);
  });

  test('environment beats the file', () => {
    const h = home(file);
    const s = resolveSettings({}, { XDG_CONFIG_HOME: h.xdg, NARROWLINK_GATEWAY: 'ws://127.0.0.1:1', NARROWLINK_TOKEN: 'env-token', NARROWLINK_MODE: 'auto' });
    assert.deepEqual([s.gateway, s.token(), s.mode], ['ws://127.0.0.1:1', 'env-token', 'auto']);
  });

  test('flags beat the environment and the file', () => {
    const h = home(file);
    const env = { XDG_CONFIG_HOME: h.xdg, NARROWLINK_GATEWAY: 'ws://127.0.0.1:1', NARROWLINK_TOKEN: 'env-token', NARROWLINK_MODE: 'auto' };
    const s = resolveSettings({ gateway: 'wss://flag.example', token: 'flag-token', mode: 'direct' }, env);
    assert.deepEqual([s.gateway, s.token(), s.mode], ['wss://flag.example', 'flag-token', 'direct']);
  });

  test('a token file is read (trimmed) at use time; an inline token wins over a token file at the same level', () => {
    const h = home();
    const tokenFile = join(h.dir, 'token');
    writeFileSync(tokenFile, 'from-file\n');
    const s = resolveSettings({ gateway: 'ws://127.0.0.1:1', tokenFile }, { XDG_CONFIG_HOME: h.xdg });
    assert.equal(s.token(), 'from-file');
    writeFileSync(tokenFile, 'rotated\n');
    assert.equal(s.token(), 'rotated', 'read per use, so a rotated token is picked up');
    const both = resolveSettings({ gateway: 'ws://127.0.0.1:1', tokenFile, token: 'inline' }, { XDG_CONFIG_HOME: h.xdg });
    assert.equal(both.token(), 'inline');
    const envFile = resolveSettings({ gateway: 'ws://127.0.0.1:1' }, { XDG_CONFIG_HOME: h.xdg, NARROWLINK_TOKEN_FILE: tokenFile });
    assert.equal(envFile.token(), 'rotated');
  });

  test('a token file at a higher level beats an inline token at a lower one', () => {
    const h = home('gateway: wss://file.example\ntoken: file-token\n');
    const tokenFile = join(h.dir, 'token');
    writeFileSync(tokenFile, 'newer\n');
    assert.equal(resolveSettings({ tokenFile }, { XDG_CONFIG_HOME: h.xdg, NARROWLINK_TOKEN: 'env-token' }).token(), 'newer', 'flag file > env token');
    assert.equal(resolveSettings({}, { XDG_CONFIG_HOME: h.xdg, NARROWLINK_TOKEN_FILE: tokenFile }).token(), 'newer', 'env file > file token');
    assert.equal(resolveSettings({}, { XDG_CONFIG_HOME: h.xdg, NARROWLINK_TOKEN: '' }).token(), 'file-token', 'an empty env value is no value');
  });

  test('--config and NARROWLINK_CONFIG pick another file; the flag wins', () => {
    const h = home(file);
    const other = join(h.dir, 'other.yaml');
    writeFileSync(other, 'gateway: ws://127.0.0.1:2\ntoken: other\n');
    const third = join(h.dir, 'third.yaml');
    writeFileSync(third, 'gateway: ws://127.0.0.1:3\ntoken: third\n');
    const viaEnv = resolveSettings({}, { XDG_CONFIG_HOME: h.xdg, NARROWLINK_CONFIG: other });
    assert.deepEqual([viaEnv.gateway, viaEnv.configPath], ['ws://127.0.0.1:2', other]);
    const viaFlag = resolveSettings({ config: third }, { XDG_CONFIG_HOME: h.xdg, NARROWLINK_CONFIG: other });
    assert.deepEqual([viaFlag.gateway, viaFlag.configPath], ['ws://127.0.0.1:3', third]);
  });

  test('mode defaults to auto; a CA file is read', () => {
    const h = home();
    const ca = join(h.dir, 'ca.pem');
    writeFileSync(ca, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
    const s = resolveSettings({ gateway: 'wss://g', token: 't', caFile: ca }, { XDG_CONFIG_HOME: h.xdg });
    assert.equal(s.mode, 'auto');
    assert.match(s.caPem ?? '', /BEGIN CERTIFICATE/);
    assert.equal(s.configPath, undefined, 'no file in use');
  });
});

describe('resolveSettings errors', () => {
  test('no gateway anywhere: NL_ERR_CLI_CONFIG', () => {
    const h = home();
    assertCliError(() => resolveSettings({ token: 't' }, { XDG_CONFIG_HOME: h.xdg }), 'NL_ERR_CLI_CONFIG');
  });

  test('no token anywhere: NL_ERR_CLI_CONFIG', () => {
    const h = home('gateway: wss://g.example\n');
    assertCliError(() => resolveSettings({}, { XDG_CONFIG_HOME: h.xdg }), 'NL_ERR_CLI_CONFIG');
  });

  test('a gateway URL that is not ws:// or wss://: NL_ERR_CLI_CONFIG', () => {
    const h = home();
    for (const gateway of ['https://g.example', 'g.example:443', 'tcp://g']) {
      assertCliError(() => resolveSettings({ gateway, token: 't' }, { XDG_CONFIG_HOME: h.xdg }), 'NL_ERR_CLI_CONFIG');
    }
  });

  test('invalid file fields: unknown key, bad types, bad mode, bad URL, bad YAML', () => {
    for (const yaml of [
      'gatway: wss://typo.example\n',
      'gateway: 42\ntoken: t\n',
      'gateway: wss://g\ntoken: ""\n',
      'gateway: wss://g\ntoken: t\nmode: fast\n',
      'gateway: not a url\ntoken: t\n',
      'gateway: [unclosed\n',
      '- a list\n- not a map\n',
    ]) {
      const h = home(yaml);
      assertCliError(() => resolveSettings({ gateway: 'wss://flag', token: 'flag' }, { XDG_CONFIG_HOME: h.xdg }), 'NL_ERR_CLI_CONFIG');
    }
  });

  test('an empty config file is fine', () => {
    const h = home('');
    const s = resolveSettings({ gateway: 'wss://g', token: 't' }, { XDG_CONFIG_HOME: h.xdg });
    assert.equal(s.gateway, 'wss://g');
  });

  test('an explicit config file that does not exist: NL_ERR_CLI_CONFIG', () => {
    const h = home();
    const missing = join(h.dir, 'missing.yaml');
    assertCliError(() => resolveSettings({ config: missing, gateway: 'wss://g', token: 't' }, { XDG_CONFIG_HOME: h.xdg }), 'NL_ERR_CLI_CONFIG');
    assertCliError(() => resolveSettings({ gateway: 'wss://g', token: 't' }, { XDG_CONFIG_HOME: h.xdg, NARROWLINK_CONFIG: missing }), 'NL_ERR_CLI_CONFIG');
  });

  test('an unreadable CA file: NL_ERR_CLI_CONFIG', () => {
    const h = home();
    assertCliError(() => resolveSettings({ gateway: 'wss://g', token: 't', caFile: join(h.dir, 'nope.pem') }, { XDG_CONFIG_HOME: h.xdg }), 'NL_ERR_CLI_CONFIG');
  });

  test('a bad --mode: NL_ERR_CLI_USAGE', () => {
    const h = home();
    assertCliError(() => resolveSettings({ gateway: 'wss://g', token: 't', mode: 'fast' }, { XDG_CONFIG_HOME: h.xdg }), 'NL_ERR_CLI_USAGE');
    assertCliError(() => resolveSettings({ gateway: 'wss://g', token: 't' }, { XDG_CONFIG_HOME: h.xdg, NARROWLINK_MODE: 'fast' }), 'NL_ERR_CLI_USAGE');
  });
});

describe('defaultConfigPath', () => {
  test('uses XDG_CONFIG_HOME when set, ~/.config otherwise', () => {
    assert.equal(defaultConfigPath({ XDG_CONFIG_HOME: '/tmp/xdg' }), join('/tmp/xdg', 'narrowlink', 'config.yaml'));
    assert.equal(defaultConfigPath({}), join(homedir(), '.config', 'narrowlink', 'config.yaml'));
    assert.equal(defaultConfigPath({ XDG_CONFIG_HOME: '' }), join(homedir(), '.config', 'narrowlink', 'config.yaml'));
  });
});

describe('resolveSettings with a narrowlink login', () => {
  /** A kubeconfig whose current context is `ctx`, and a login cached for it under `xdg`. */
  function loggedIn(options: { cache?: boolean } = {}): { env: NodeJS.ProcessEnv; kubeconfig: string; key: ReturnType<typeof generateProofKey> } {
    const h = home();
    const kubeconfig = join(h.dir, 'kubeconfig');
    writeFileSync(kubeconfig, 'apiVersion: v1\nkind: Config\ncurrent-context: ctx\ncontexts: [{name: ctx, context: {cluster: c, user: u}}, {name: other, context: {cluster: c, user: u}}]\n');
    const key = generateProofKey();
    const env = { XDG_CONFIG_HOME: h.xdg, KUBECONFIG: kubeconfig };
    if (options.cache !== false) {
      writeLogin(
        {
          version: 1,
          context: 'ctx',
          cluster: 'c',
          server: 'https://k:6443',
          kubeconfig: null,
          namespace: 'narrowlink',
          loginNamespace: 'narrowlink',
          username: 'alice',
          groups: ['dev'],
          token: 'login-token',
          expiresAt: '2099-01-01T00:00:00.000Z',
          issuedAt: '2098-12-31T16:00:00.000Z',
          gatewayUrls: ['wss://discovered.example:443', 'wss://second.example:443'],
          caPem: '-----BEGIN CERTIFICATE-----\nCACHED\n-----END CERTIFICATE-----\n',
          natProbePorts: [3478],
          proofKeyPem: key.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
        },
        { env },
      );
    }
    return { env, kubeconfig, key };
  }

  test('no flags, env or file: the current context\'s login supplies gateway, CA, token and proof key', async () => {
    const { env, key } = loggedIn();
    const s = resolveSettings({}, env);
    assert.equal(s.gateway, 'wss://discovered.example:443');
    assert.equal(await s.token(), 'login-token');
    assert.match(s.caPem ?? '', /CACHED/);
    assert.equal(s.login?.username, 'alice');
    assert.ok(s.proofKey);
    assert.equal(proofKeyX(s.proofKey), key.x, 'the cached key, not a new one');
  });

  test('flags still override: --gateway and --ca-file replace the discovered ones; an explicit token means no login and no proof key', async () => {
    const { env } = loggedIn();
    const ca = join(env.XDG_CONFIG_HOME as string, 'flag-ca.pem');
    writeFileSync(ca, 'FLAG CA');
    const s = resolveSettings({ gateway: 'wss://flag.example', caFile: ca }, env);
    assert.deepEqual([s.gateway, await s.token(), s.caPem], ['wss://flag.example', 'login-token', 'FLAG CA']);
    const explicit = resolveSettings({ gateway: 'wss://flag.example', token: 'flag-token' }, env);
    assert.equal(await explicit.token(), 'flag-token');
    assert.equal(explicit.login, undefined);
    assert.equal(explicit.proofKey, undefined);
  });

  test('a context without a login: NL_ERR_CLI_NOT_LOGGED_IN, exit 3; --context picks another context\'s cache', () => {
    const { env } = loggedIn({ cache: false });
    assertCliError(() => resolveSettings({}, env), 'NL_ERR_CLI_NOT_LOGGED_IN', ExitCode.AUTH);
    const cached = loggedIn();
    assertCliError(() => resolveSettings({ context: 'other' }, cached.env), 'NL_ERR_CLI_NOT_LOGGED_IN', ExitCode.AUTH);
    assert.equal(resolveSettings({ context: 'ctx' }, cached.env).login?.context, 'ctx');
  });
});

describe('paths and gateway URLs', () => {
  test('~, $VAR and braced variables are expanded; an unset variable is a config error; relative paths from a base dir', () => {
    const env = { HOME: '/home/u', XDG_RUNTIME_DIR: '/run/user/1' };
    assert.equal(expandPath('~/t', env), '/home/u/t');
    assert.equal(expandPath('~', env), '/home/u');
    assert.equal(expandPath('$XDG_RUNTIME_DIR/narrowlink/token', env), '/run/user/1/narrowlink/token');
    // biome-ignore lint/suspicious/noTemplateCurlyInString: the CLI expands it, not JavaScript
    assert.equal(expandPath('${HOME}/x', env), '/home/u/x');
    assert.equal(expandPath('a~b/c', env), 'a~b/c', 'only a leading ~');
    assert.equal(expandPath('token', env, '/etc/narrowlink'), '/etc/narrowlink/token');
    assertCliError(() => expandPath('$NOPE/token', env), 'NL_ERR_CLI_CONFIG');
  });

  test('tokenFile and caFile in the config file: ~ expanded, relative to the file', () => {
    const h = home();
    writeFileSync(join(h.xdg, 'narrowlink', 'token'), 'from-relative\n');
    writeFileSync(join(h.dir, 'token2'), 'from-home\n');
    writeFileSync(h.configPath, 'gateway: wss://g.example\ntokenFile: token\n');
    assert.equal(resolveSettings({}, { XDG_CONFIG_HOME: h.xdg }).token(), 'from-relative');
    writeFileSync(h.configPath, 'gateway: wss://g.example\ntokenFile: ~/token2\n');
    assert.equal(resolveSettings({}, { XDG_CONFIG_HOME: h.xdg, HOME: h.dir }).token(), 'from-home');
  });

  test('a missing or empty token file is a config error at once (exit 2), not at the first dial', () => {
    const h = home();
    assertCliError(() => resolveSettings({ gateway: 'wss://g.example', tokenFile: join(h.dir, 'missing') }, { XDG_CONFIG_HOME: h.xdg }), 'NL_ERR_CLI_CONFIG');
    writeFileSync(join(h.dir, 'empty'), '\n');
    assertCliError(() => resolveSettings({ gateway: 'wss://g.example', tokenFile: join(h.dir, 'empty') }, { XDG_CONFIG_HOME: h.xdg }), 'NL_ERR_CLI_CONFIG');
  });

  test('cleartext ws:// only to loopback: a remote ws:// gateway is a config error (exit 2)', () => {
    const h = home();
    for (const gateway of ['ws://192.0.2.2:47100', 'ws://gw.example.com', 'ws://[2001:db8::1]:80']) {
      assertCliError(() => resolveSettings({ gateway, token: 't' }, { XDG_CONFIG_HOME: h.xdg }), 'NL_ERR_CLI_CONFIG');
    }
    for (const gateway of ['ws://127.0.0.1:1', 'ws://localhost:1', 'ws://[::1]:1', 'wss://gw.example.com']) {
      assert.equal(resolveSettings({ gateway, token: 't' }, { XDG_CONFIG_HOME: h.xdg }).gateway, gateway);
    }
  });
});

describe('config file mistakes', () => {
  test('a misspelt key names the right one', () => {
    const h = home('gateway: wss://g.example\ntoken_file: /t\n');
    assert.throws(
      () => resolveSettings({}, { XDG_CONFIG_HOME: h.xdg }),
      (error: unknown) => error instanceof CliError && error.code === 'NL_ERR_CLI_CONFIG' && /did you mean tokenFile\?/.test(error.message),
    );
  });
});
