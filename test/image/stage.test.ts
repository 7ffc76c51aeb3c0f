/**
 * deploy/image/stage.ts picks the image's runtime node_modules by Node's own resolution from the repository's
 * install. These cases run on a made-up node_modules tree (no build, no root): what is copied, what is left out,
 * and that a missing or mismatched package stops the build instead of producing an image that fails at run time.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { type ImageManifest, readManifest, runtimeClosure, StageError, stageApp } from '../../deploy/image/stage.ts';

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function pkg(root: string, rel: string, json: Record<string, unknown>, files: Record<string, string> = {}): void {
  const dir = path.join(root, rel);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify(json));
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text);
}

/**
 * a@1.0.0 → b (hoisted), c@2 (nested under a because the top-level c is 1.x), optional x (installed) and y (not:
 * another platform's binary), required peer p; d is installed but nothing needs it.
 */
function fixture(): string {
  const root = mkdtempSync(path.join(tmpdir(), 'nl-stage-'));
  dirs.push(root);
  pkg(root, 'node_modules/a', { name: 'a', version: '1.0.0', dependencies: { b: '^1', c: '^2' }, optionalDependencies: { x: '1.0.0', y: '1.0.0' }, peerDependencies: { p: '*', q: '*' }, peerDependenciesMeta: { q: { optional: true } } }, { 'index.js': 'a' });
  pkg(root, 'node_modules/a/node_modules/c', { name: 'c', version: '2.0.0' });
  pkg(root, 'node_modules/a/node_modules/.bin', { name: 'not-a-package' });
  pkg(root, 'node_modules/b', { name: 'b', version: '1.2.0', dependencies: { c: '^1' } });
  pkg(root, 'node_modules/c', { name: 'c', version: '1.0.0' });
  pkg(root, 'node_modules/x', { name: 'x', version: '1.0.0' });
  pkg(root, 'node_modules/p', { name: 'p', version: '3.0.0' });
  pkg(root, 'node_modules/d', { name: 'd', version: '9.9.9' });
  return root;
}

describe('runtimeClosure', () => {
  test('follows dependencies, installed optional ones and required peers as Node resolves them', () => {
    const closure = runtimeClosure(fixture(), { a: '1.0.0' });
    assert.deepEqual(
      closure.map((p) => `${p.dir}@${p.version}`),
      ['node_modules/a@1.0.0', 'node_modules/a/node_modules/c@2.0.0', 'node_modules/b@1.2.0', 'node_modules/c@1.0.0', 'node_modules/p@3.0.0', 'node_modules/x@1.0.0'],
    );
  });

  test('a root at another version than the bundles were built for stops the build', () => {
    assert.throws(() => runtimeClosure(fixture(), { a: '1.0.1' }), (err: unknown) => err instanceof StageError && /1\.0\.1 wanted, 1\.0\.0 installed/.test(err.message));
  });

  test('a missing root or a missing required dependency stops the build', () => {
    const root = fixture();
    assert.throws(() => runtimeClosure(root, { nope: '1.0.0' }), StageError);
    rmSync(path.join(root, 'node_modules/p'), { recursive: true });
    assert.throws(() => runtimeClosure(root, { a: '1.0.0' }), (err: unknown) => err instanceof StageError && /needs p/.test(err.message));
  });

  test('a workspace link is refused (bundled code must not need the workspace at run time)', () => {
    const root = fixture();
    pkg(root, 'ws-real', { name: 'w', version: '0.1.0' });
    symlinkSync(path.join(root, 'ws-real'), path.join(root, 'node_modules/w'));
    assert.throws(() => runtimeClosure(root, { w: '0.1.0' }), (err: unknown) => err instanceof StageError && /is a link/.test(err.message));
  });
});

describe('stageApp', () => {
  function repo(runtimeDeps: Record<string, string>): { root: string; manifest: ImageManifest } {
    const root = fixture();
    const manifest = readManifest();
    mkdirSync(path.join(root, 'dist/server'), { recursive: true });
    for (const entry of ['gateway', 'agent', 'operator']) writeFileSync(path.join(root, 'dist/server', `${entry}.mjs`), '');
    writeFileSync(path.join(root, 'dist/server/runtime-deps.json'), JSON.stringify({ dependencies: runtimeDeps }));
    pkg(root, 'client-cli/dist', { name: '@narrowlink/cli', version: '0.1.0', optionalDependencies: { x: '1.0.0' } });
    mkdirSync(path.join(root, 'client-cli/dist/bin'));
    writeFileSync(path.join(root, 'client-cli/dist/bin/narrowlink.mjs'), '');
    return { root, manifest };
  }

  test('stages /app with the bundles, the CLI, the closure (nested node_modules only for its members) and the links', () => {
    const { root, manifest } = repo({ a: '1.0.0' });
    const out = path.join(root, 'out');
    stageApp(root, manifest, out);
    const app = path.join(out, manifest.workdir);
    for (const file of Object.values(manifest.components)) assert.ok(existsSync(path.join(app, file)), file);
    assert.equal(readFileSync(path.join(app, 'node_modules/a/index.js'), 'utf8'), 'a');
    assert.ok(existsSync(path.join(app, 'node_modules/a/node_modules/c/package.json')), 'nested c@2');
    assert.equal(existsSync(path.join(app, 'node_modules/a/node_modules/.bin')), false, 'nested non-members stay out');
    assert.equal(existsSync(path.join(app, 'node_modules/d')), false, 'unneeded packages stay out');
    for (const [link, target] of Object.entries(manifest.links)) assert.equal(readlinkSync(path.join(out, link)), target, link);
  });

  test('a range instead of an exact version in runtime-deps.json, or a missing bundle directory, stops the build', () => {
    const ranged = repo({ a: '^1.0.0' });
    assert.throws(() => stageApp(ranged.root, ranged.manifest, path.join(ranged.root, 'out')), (err: unknown) => err instanceof StageError && /not an exact version/.test(err.message));
    const missing = repo({ a: '1.0.0' });
    rmSync(path.join(missing.root, 'dist/server'), { recursive: true });
    assert.throws(() => stageApp(missing.root, missing.manifest, path.join(missing.root, 'out')), StageError);
  });
});
