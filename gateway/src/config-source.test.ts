import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { GatewayConfig } from '@narrowlink/protocol';
import { stringify as toYaml } from 'yaml';
import { FileConfigSource, StaticConfigSource } from './config-source.ts';

const KEY = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();

function document(agentNames: string[]): string {
  return toYaml({
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'GatewayConfig',
    signingPublicKeys: [KEY],
    agents: agentNames.map((name) => ({ name, expose: [{ name: 'http', port: 8080 }] })),
    policies: [],
  });
}

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A watched config file with recorded callbacks; `next*` resolve on the next callback or time out. */
function watched(initial: string) {
  const dir = mkdtempSync(join(tmpdir(), 'nl-config-'));
  dirs.push(dir);
  const path = join(dir, 'gateway.yaml');
  writeFileSync(path, initial);
  const source = new FileConfigSource(path, { pollIntervalMs: 100 });
  const changes: GatewayConfig[] = [];
  const errors: Error[] = [];
  const first = source.start(
    (config) => changes.push(config),
    (error) => errors.push(error),
  );
  after(() => source.stop());
  async function until(predicate: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!predicate()) {
      if (performance.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  return { dir, path, source, first, changes, errors, until };
}

const quiet = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('FileConfigSource', () => {
  test('loads the YAML document at start', () => {
    const w = watched(document(['db', 'web']));
    assert.deepEqual(
      w.first.agents.map((a) => `${a.namespace}/${a.name}`),
      ['default/db', 'default/web'],
    );
    assert.equal(w.first.audience, 'narrowlink', 'defaults applied');
  });

  test('start throws a coded error for a missing or invalid file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nl-config-'));
    dirs.push(dir);
    assert.throws(() => new FileConfigSource(join(dir, 'absent.yaml')).start(() => undefined, () => undefined), { code: 'ENOENT' });
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'apiVersion: narrowlink.io/v1alpha1\nkind: GatewayConfig\n');
    assert.throws(() => new FileConfigSource(bad).start(() => undefined, () => undefined), { code: 'NL_ERR_CONFIG_INVALID' });
    writeFileSync(bad, 'agents: [unclosed\n');
    assert.throws(() => new FileConfigSource(bad).start(() => undefined, () => undefined), { code: 'NL_ERR_CONFIG_PARSE' });
  });

  test('reports an overwritten file through onChange', async () => {
    const w = watched(document(['db']));
    writeFileSync(w.path, document(['db', 'cache']));
    await w.until(() => w.changes.length > 0, 'onChange');
    assert.deepEqual(
      w.changes.at(-1)?.agents.map((a) => a.name),
      ['db', 'cache'],
    );
    assert.deepEqual(w.errors, []);
  });

  test('reports an atomically renamed file through onChange', async () => {
    const w = watched(document(['db']));
    const staged = join(w.dir, '.gateway.yaml.tmp');
    writeFileSync(staged, document(['queue']));
    renameSync(staged, w.path);
    await w.until(() => w.changes.length > 0, 'onChange after rename');
    assert.deepEqual(
      w.changes.at(-1)?.agents.map((a) => a.name),
      ['queue'],
    );
    // The watch survives the inode swap: a second replace is seen too.
    writeFileSync(staged, document(['queue', 'search']));
    renameSync(staged, w.path);
    await w.until(() => w.changes.length > 1 && w.changes.at(-1)?.agents.length === 2, 'second onChange after rename');
    assert.deepEqual(w.errors, []);
  });

  test('reports an invalid change through onError only, then picks up the next valid one', async () => {
    const w = watched(document(['db']));
    writeFileSync(w.path, document(['Not_A_Label']));
    await w.until(() => w.errors.length > 0, 'onError');
    assert.equal((w.errors[0] as Error & { code?: string }).code, 'NL_ERR_CONFIG_INVALID');
    await quiet(300);
    assert.equal(w.changes.length, 0, 'an invalid document never reaches onChange');
    writeFileSync(w.path, document(['db', 'fixed']));
    await w.until(() => w.changes.length > 0, 'onChange after the fix');
    assert.deepEqual(
      w.changes[0]?.agents.map((a) => a.name),
      ['db', 'fixed'],
    );
  });

  test('ignores a rewrite with identical content', async () => {
    const text = document(['db']);
    const w = watched(text);
    writeFileSync(w.path, text);
    const staged = join(w.dir, 'same.tmp');
    writeFileSync(staged, text);
    renameSync(staged, w.path);
    await quiet(600);
    assert.equal(w.changes.length, 0);
    assert.deepEqual(w.errors, []);
    // Still watching: a real change after the no-op rewrites is reported.
    writeFileSync(w.path, document(['db', 'later']));
    await w.until(() => w.changes.length > 0, 'onChange');
  });

  test('stop() ends the watching', async () => {
    const w = watched(document(['db']));
    w.source.stop();
    writeFileSync(w.path, document(['db', 'after-stop']));
    await quiet(400);
    assert.equal(w.changes.length, 0);
  });
});

describe('StaticConfigSource', () => {
  test('returns its configuration at start and reports update() as a change', () => {
    const w = watched(document(['db']));
    const source = new StaticConfigSource(w.first);
    const seen: GatewayConfig[] = [];
    assert.equal(source.start((c) => seen.push(c)), w.first);
    source.update({ ...w.first, agents: [] });
    assert.equal(seen.length, 1);
    source.stop();
    source.update(w.first);
    assert.equal(seen.length, 1, 'no callbacks after stop');
  });
});
