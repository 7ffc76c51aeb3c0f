import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { podNamespace } from './in-cluster.ts';

describe('podNamespace', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nl-in-cluster-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'namespace');
  writeFileSync(file, 'narrowlink-system\n');

  test('the ServiceAccount mount wins, trimmed', () => assert.equal(podNamespace({ file, env: { POD_NAMESPACE: 'other' } }), 'narrowlink-system'));
  test('without the mount: POD_NAMESPACE', () => assert.equal(podNamespace({ file: join(dir, 'missing'), env: { POD_NAMESPACE: 'team-a' } }), 'team-a'));
  test('neither: undefined (not in a pod)', () => assert.equal(podNamespace({ file: join(dir, 'missing'), env: {} }), undefined));
});
