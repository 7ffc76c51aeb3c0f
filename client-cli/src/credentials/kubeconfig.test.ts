import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { CliError } from '../errors.ts';
import { currentContextName, IN_CLUSTER_CONTEXT, kubeconfigFiles, loadKubeConfig } from './kubeconfig.ts';

const root = mkdtempSync(join(tmpdir(), 'nl-kubeconfig-'));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

/** A kubeconfig file with these contexts (each with its own cluster and user) and current-context. */
function file(contexts: string[], current?: string, server = 'https://127.0.0.1:6443'): string {
  const path = join(root, `config-${++n}`);
  writeFileSync(
    path,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: contexts.map((c) => ({ name: `cl-${c}`, cluster: { server } })),
      users: contexts.map((c) => ({ name: `u-${c}`, user: { token: `tok-${c}` } })),
      contexts: contexts.map((c) => ({ name: c, context: { cluster: `cl-${c}`, user: `u-${c}` } })),
      ...(current ? { 'current-context': current } : {}),
    }),
  );
  return path;
}

/** Both readers agree: the cheap one (for ls/forward) and client-node's (for login). */
async function both(selection: Parameters<typeof currentContextName>[0]): Promise<string | undefined> {
  const cheap = currentContextName({ ...selection, serviceAccountTokenFile: join(root, 'no-sa-token') });
  let full: string | undefined;
  try {
    full = (await loadKubeConfig({ ...selection, serviceAccountTokenFile: join(root, 'no-sa-token') })).context;
  } catch (error) {
    assert.ok(error instanceof CliError && error.code === 'NL_ERR_CLI_KUBECONFIG', String(error));
  }
  assert.equal(cheap, full, 'currentContextName and loadKubeConfig pick the same context');
  return cheap;
}

describe('which context a command uses (kubectl rules)', () => {
  test('--kubeconfig: its current-context; --context wins over it', async () => {
    const f = file(['a', 'b'], 'b');
    assert.equal(await both({ kubeconfig: f, env: {} }), 'b');
    assert.equal(await both({ kubeconfig: f, context: 'a', env: {} }), 'a');
  });

  test('KUBECONFIG list: the first file that sets current-context wins; missing files are skipped; names merge first-wins', async () => {
    const none = file(['a']);
    const second = file(['b', 'a'], 'b');
    const third = file(['c'], 'c');
    const missing = join(root, 'missing');
    assert.equal(await both({ env: { KUBECONFIG: [none, second, third].join(':') }, platform: 'linux' }), 'b');
    assert.equal(await both({ env: { KUBECONFIG: [missing, third, second].join(':') }, platform: 'linux' }), 'c');
    // Context "a" is in two files (client-node alone would throw "Duplicate"); the first one is used.
    const loaded = await loadKubeConfig({ env: { KUBECONFIG: [none, second].join(':') }, platform: 'linux', context: 'a' });
    assert.equal(loaded.cluster, 'cl-a');
    assert.equal(loaded.kc.getCurrentUser()?.token, 'tok-a');
  });

  test('~/.kube/config when KUBECONFIG is unset; nothing at all: undefined / NL_ERR_CLI_KUBECONFIG', async () => {
    const home = join(root, `home-${++n}`);
    assert.equal(await both({ env: { HOME: home } }), undefined);
    mkdirSync(join(home, '.kube'), { recursive: true });
    writeFileSync(join(home, '.kube', 'config'), JSON.stringify({ apiVersion: 'v1', kind: 'Config', clusters: [], users: [], contexts: [], 'current-context': 'x' }));
    assert.deepEqual(kubeconfigFiles({ env: { HOME: home }, platform: 'linux' }), [join(home, '.kube', 'config')]);
  });

  test('in a pod with no kubeconfig: the ServiceAccount context', () => {
    const token = join(root, 'sa-token');
    writeFileSync(token, 'x');
    assert.equal(currentContextName({ env: {}, serviceAccountTokenFile: token }), IN_CLUSTER_CONTEXT);
  });

  test('Windows: KUBECONFIG is split on ";"', () => {
    assert.deepEqual(kubeconfigFiles({ env: { KUBECONFIG: 'C:\\a\\config;D:\\b\\config' }, platform: 'win32' }), ['C:\\a\\config', 'D:\\b\\config']);
  });

  test('tokenFile users (kubectl\'s field) get the file\'s token, trimmed, relative to the kubeconfig', async () => {
    const path = join(root, `config-${++n}`);
    writeFileSync(join(root, 'user-token'), 'from-file\n');
    writeFileSync(
      path,
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'c', cluster: { server: 'https://127.0.0.1:6443' } }],
        users: [{ name: 'u', user: { tokenFile: 'user-token' } }],
        contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
        'current-context': 'x',
      }),
    );
    const loaded = await loadKubeConfig({ kubeconfig: path });
    assert.equal(loaded.kc.getCurrentUser()?.token, 'from-file');
  });
});
