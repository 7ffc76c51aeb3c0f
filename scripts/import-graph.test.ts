import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { buildImportGraph, findCycles } from './import-graph.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

describe('findCycles', () => {
  const graph = (edges: Record<string, string[]>): Map<string, Set<string>> => new Map(Object.entries(edges).map(([k, v]) => [k, new Set(v)]));
  const cases: Array<[string, Record<string, string[]>, string[][]]> = [
    ['no edges', {}, []],
    ['a chain', { a: ['b'], b: ['c'] }, []],
    ['a diamond', { a: ['b', 'c'], b: ['d'], c: ['d'] }, []],
    ['two modules', { a: ['b'], b: ['a'] }, [['a', 'b']]],
    ['a self-import', { a: ['a'] }, [['a']]],
    ['a long loop and a separate pair', { a: ['b'], b: ['c'], c: ['a'], x: ['y'], y: ['x'] }, [['a', 'b', 'c'], ['x', 'y']]],
    ['a loop reached from outside', { entry: ['a'], a: ['b'], b: ['a'] }, [['a', 'b']]],
  ];
  for (const [name, edges, expected] of cases) {
    test(name, () => assert.deepEqual(findCycles(graph(edges)).sort(), expected));
  }
});

describe('buildImportGraph on a fixture tree', () => {
  const root = mkdtempSync(join(tmpdir(), 'nl-import-graph-'));
  after(() => rmSync(root, { recursive: true, force: true }));
  const write = (path: string, text: string): void => {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  };
  write('package.json', JSON.stringify({ workspaces: ['protocol', 'gateway', 'operator'] }));
  write('protocol/package.json', JSON.stringify({ name: '@narrowlink/protocol' }));
  write('gateway/package.json', JSON.stringify({ name: '@narrowlink/gateway', dependencies: { '@narrowlink/protocol': '0.1.0' } }));
  write('operator/package.json', JSON.stringify({ name: '@narrowlink/operator', dependencies: { '@narrowlink/protocol': '0.1.0' } }));
  write('protocol/src/index.ts', "export const x = 1;\n");
  write('gateway/src/a.ts', "import type { B } from './b.ts';\nimport { x } from '@narrowlink/protocol';\nexport type A = B;\n");
  write('gateway/src/b.ts', "import type { A } from './a.ts';\nexport type B = A;\n");
  write('gateway/src/a.test.ts', "import './b.ts';\n");
  write('gateway/src/c.ts', "export { y } from '@narrowlink/operator';\n");
  write('gateway/test/own.ts', "import '../src/a.ts';\n");
  write('operator/src/index.ts', "export const y = await import('../../protocol/src/index.ts');\n");
  write('test/e2e/x.test.ts', "import {\n  y,\n} from '../../operator/src/index.ts';\n");

  const graph = buildImportGraph(root);
  const details = (kind: string): string[] => graph.violations.filter((v) => v.kind === kind).map((v) => v.detail).sort();

  test('a type-only module cycle is a cycle; a test importing its module is not', () => {
    assert.deepEqual(details('cycle'), ['gateway/src: a.ts ⇄ b.ts']);
  });
  test('deep imports are found in src (dynamic too) and in test/, but not in a package testing itself', () => {
    assert.deepEqual(details('deep-import'), [
      "operator/src/index.ts imports protocol/src/index.ts; use the package's exports (@narrowlink/protocol)",
      "test/e2e/x.test.ts imports operator/src/index.ts; use the package's exports (@narrowlink/operator)",
    ]);
  });
  test('an undeclared and sideways dependency between deployables', () => {
    assert.deepEqual(details('undeclared'), ['gateway/src/c.ts imports @narrowlink/operator, which gateway/package.json does not declare']);
    assert.deepEqual(details('sideways'), ['gateway/src/c.ts: deployable gateway imports deployable operator']);
  });
  test('the package graph', () => {
    assert.deepEqual(Object.fromEntries([...graph.packageEdges].map(([k, v]) => [k, [...v].sort()])), {
      protocol: [],
      gateway: ['operator', 'protocol'],
      operator: [],
    });
  });
});

describe('this repository', () => {
  const graph = buildImportGraph(ROOT);
  test('the scan sees every workspace and the gateway modules (guards against a vacuous pass)', () => {
    assert.deepEqual(graph.packages, ['protocol', 'peer-link', 'kube', 'gateway', 'agent-sidecar', 'client-cli', 'operator']);
    assert.ok((graph.moduleEdges.get('gateway')?.size ?? 0) > 5);
    assert.ok(graph.packageEdges.get('gateway')?.has('protocol'));
  });
  test('has no import cycle, deep import, undeclared or sideways dependency', () => {
    assert.deepEqual(graph.violations, []);
  });
});
