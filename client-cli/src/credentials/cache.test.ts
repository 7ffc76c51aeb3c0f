import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix, win32 } from 'node:path';
import { after, describe, test } from 'node:test';
import { CliError, ExitCode } from '../errors.ts';
import { type CachedLogin, cachePath, contextFileName, contextsDir, deleteLogin, readLogin, writeLogin } from './cache.ts';

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});
function tempXdg(): string {
  const dir = mkdtempSync(join(tmpdir(), 'nl-cache-'));
  dirs.push(dir);
  return dir;
}

function entry(context: string, overrides: Partial<CachedLogin> = {}): CachedLogin {
  return {
    version: 1,
    context,
    cluster: 'c1',
    server: 'https://127.0.0.1:6443',
    kubeconfig: null,
    namespace: 'narrowlink',
    loginNamespace: 'narrowlink',
    username: 'alice',
    groups: ['dev'],
    token: 'header.payload.sig',
    expiresAt: '2030-01-01T00:00:00.000Z',
    issuedAt: '2029-12-31T16:00:00.000Z',
    gatewayUrls: ['wss://gw.example:443'],
    caPem: '',
    natProbePorts: [3478],
    proofKeyPem: '-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n',
    ...overrides,
  };
}

function assertCode(fn: () => unknown, code: string, exitCode: number): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof CliError, String(error));
    assert.equal(error.code, code);
    assert.equal(error.exitCode, exitCode);
    return true;
  });
}

describe('cache location per OS', () => {
  test('Linux/macOS: $XDG_CONFIG_HOME, else ~/.config; an empty XDG_CONFIG_HOME is no value', () => {
    assert.equal(contextsDir({ env: { XDG_CONFIG_HOME: '/x' }, platform: 'linux', home: '/home/a' }), posix.join('/x', 'narrowlink', 'contexts'));
    assert.equal(contextsDir({ env: {}, platform: 'darwin', home: '/Users/a' }), '/Users/a/.config/narrowlink/contexts');
    assert.equal(contextsDir({ env: { XDG_CONFIG_HOME: '' }, platform: 'linux', home: '/home/a' }), '/home/a/.config/narrowlink/contexts');
  });

  test('Windows: %APPDATA%, else the profile\'s AppData\\Roaming; XDG is ignored there', () => {
    const appData = 'C:\\Users\\a\\AppData\\Roaming';
    assert.equal(contextsDir({ env: { APPDATA: appData, XDG_CONFIG_HOME: '/x' }, platform: 'win32', home: 'C:\\Users\\a' }), win32.join(appData, 'narrowlink', 'contexts'));
    assert.equal(contextsDir({ env: {}, platform: 'win32', home: 'C:\\Users\\a' }), 'C:\\Users\\a\\AppData\\Roaming\\narrowlink\\contexts');
    assert.equal(cachePath('kind-dev', { env: { APPDATA: appData }, platform: 'win32' }), `${appData}\\narrowlink\\contexts\\kind-dev.json`);
  });
});

describe('contextFileName', () => {
  test('a plain name is kept', () => {
    assert.equal(contextFileName('kind-dev'), 'kind-dev.json');
    assert.equal(contextFileName('prod.eu_1'), 'prod.eu_1.json');
  });

  test('separators and other characters never reach the path, and names that differ keep different files', () => {
    const names = [
      'arn:aws:eks:eu-west-1:123456789012:cluster/shop',
      'alice@prod',
      'a/b',
      'a_b',
      '../../etc/passwd',
      '..',
      '.',
      '',
      'CON',
      'nul',
      'x'.repeat(300),
      'ü-cluster',
      'a\\b',
    ];
    const files = names.map(contextFileName);
    for (const file of files) {
      assert.match(file, /^[A-Za-z0-9._-]+\.json$/);
      assert.ok(!file.startsWith('.'), file);
      assert.ok(file.length <= 120, file);
      assert.ok(!/^(con|nul)\.json$/i.test(file), file);
    }
    assert.equal(new Set(files).size, names.length, 'no two contexts share a file');
  });
});

describe('writeLogin / readLogin / deleteLogin', () => {
  test('round trip; the file is 0600 and the directory 0700, even under a permissive umask; no temp file left', { skip: process.platform === 'win32' }, () => {
    const xdg = tempXdg();
    const oldUmask = process.umask(0o000);
    try {
      const file = writeLogin(entry('kind-dev'), { env: { XDG_CONFIG_HOME: xdg } });
      assert.equal(file, join(xdg, 'narrowlink', 'contexts', 'kind-dev.json'));
      assert.equal(statSync(file).mode & 0o777, 0o600);
      assert.equal(statSync(join(xdg, 'narrowlink', 'contexts')).mode & 0o777, 0o700);
      assert.deepEqual(readdirSync(join(xdg, 'narrowlink', 'contexts')), ['kind-dev.json']);
    } finally {
      process.umask(oldUmask);
    }
    assert.deepEqual(readLogin('kind-dev', { env: { XDG_CONFIG_HOME: xdg } }), entry('kind-dev'));
    // Rewriting (a renewal) replaces the content.
    writeLogin(entry('kind-dev', { token: 'renewed.token.x' }), { env: { XDG_CONFIG_HOME: xdg } });
    assert.equal(readLogin('kind-dev', { env: { XDG_CONFIG_HOME: xdg } })?.token, 'renewed.token.x');
  });

  test('an existing contexts directory with loose permissions is tightened to 0700', { skip: process.platform === 'win32' }, () => {
    const xdg = tempXdg();
    writeLogin(entry('a'), { env: { XDG_CONFIG_HOME: xdg } });
    chmodSync(join(xdg, 'narrowlink', 'contexts'), 0o755);
    writeLogin(entry('b'), { env: { XDG_CONFIG_HOME: xdg } });
    assert.equal(statSync(join(xdg, 'narrowlink', 'contexts')).mode & 0o777, 0o700);
  });

  test('no file: undefined; delete reports whether there was one', () => {
    const xdg = tempXdg();
    const location = { env: { XDG_CONFIG_HOME: xdg } };
    assert.equal(readLogin('nope', location), undefined);
    assert.equal(deleteLogin('nope', location), false);
    writeLogin(entry('arn:aws:eks:eu-west-1:1:cluster/shop'), location);
    assert.equal(readLogin('arn:aws:eks:eu-west-1:1:cluster/shop', location)?.username, 'alice');
    assert.equal(deleteLogin('arn:aws:eks:eu-west-1:1:cluster/shop', location), true);
    assert.equal(readLogin('arn:aws:eks:eu-west-1:1:cluster/shop', location), undefined);
  });

  test('a file others can read is refused (NL_ERR_CLI_CACHE, exit 2), not used', { skip: process.platform === 'win32' }, () => {
    const xdg = tempXdg();
    const file = writeLogin(entry('kind-dev'), { env: { XDG_CONFIG_HOME: xdg } });
    chmodSync(file, 0o644);
    assertCode(() => readLogin('kind-dev', { env: { XDG_CONFIG_HOME: xdg } }), 'NL_ERR_CLI_CACHE', ExitCode.USAGE);
  });

  test('malformed, foreign or mismatched files: NL_ERR_CLI_CACHE', () => {
    const xdg = tempXdg();
    const location = { env: { XDG_CONFIG_HOME: xdg } };
    const file = writeLogin(entry('kind-dev'), location);
    for (const text of ['not json', '{"version":2}', JSON.stringify({ ...entry('kind-dev'), extra: 1 })]) {
      writeFileSync(file, text, { mode: 0o600 });
      assertCode(() => readLogin('kind-dev', location), 'NL_ERR_CLI_CACHE', ExitCode.USAGE);
    }
    // A file that names another context (a hand-copied file) is not used for this one.
    writeFileSync(file, JSON.stringify(entry('other')), { mode: 0o600 });
    assertCode(() => readLogin('kind-dev', location), 'NL_ERR_CLI_CACHE', ExitCode.USAGE);
  });
});
