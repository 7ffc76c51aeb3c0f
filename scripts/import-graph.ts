#!/usr/bin/env node
/**
 * `node scripts/import-graph.ts [--package NAME]…`: the import graph between the workspaces and between the
 * modules of each package's `src/`, with the rules the layout depends on (CONVENTIONS.md §1, DESIGN.md
 * "Allowed imports"). Prints the package graph and the module graph of the named packages (default:
 * gateway), then every violation, and exits 1 when there is one:
 *
 *   - cycle         a module cycle inside one package's src/ (type-only imports count: they are how a
 *                   cycle creeps in) or a cycle between packages
 *   - deep-import   a file reaches into another workspace's `src/` by path instead of its package exports
 *                   (test/ and scripts/ included)
 *   - undeclared    a package imports `@narrowlink/x` without declaring it in its package.json
 *   - sideways      a deployable (gateway, agent-sidecar, client-cli, operator) imports another deployable
 *
 * The same analysis backs `scripts/import-graph.test.ts`, so `npm test` fails on a violation.
 */
import { globSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import ts from 'typescript';

/** Workspaces whose binaries are deployed on their own: none may import another. */
export const DEPLOYABLES = ['gateway', 'agent-sidecar', 'client-cli', 'operator'] as const;

export interface Violation {
  kind: 'cycle' | 'deep-import' | 'undeclared' | 'sideways';
  /** Human-readable: the files or packages involved. */
  detail: string;
}

export interface ImportGraph {
  /** Workspace directory names, in package.json order. */
  packages: string[];
  /** package → packages its src/ imports (through `@narrowlink/<name>`). */
  packageEdges: Map<string, Set<string>>;
  /** package → (module path relative to the package's src/ → modules it imports, same package). */
  moduleEdges: Map<string, Map<string, Set<string>>>;
  violations: Violation[];
}

interface Workspace {
  dir: string;
  name: string;
  dependencies: Set<string>;
}

const toPosix = (path: string): string => path.split(sep).join('/');

function readWorkspaces(root: string): Workspace[] {
  const rootManifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { workspaces: string[] };
  return rootManifest.workspaces.map((dir) => {
    const manifest = JSON.parse(readFileSync(join(root, dir, 'package.json'), 'utf8')) as {
      name: string;
      dependencies?: Record<string, string>;
    };
    return { dir, name: manifest.name, dependencies: new Set(Object.keys(manifest.dependencies ?? {})) };
  });
}

/** Every module specifier a file imports or re-exports, static or dynamic, type-only included. */
function specifiersOf(text: string): string[] {
  return ts.preProcessFile(text, true, true).importedFiles.map((file) => file.fileName);
}

/** Cycles in a directed graph, each reported once as the list of its nodes (Tarjan's strongly connected components). */
export function findCycles(edges: Map<string, Set<string>>): string[][] {
  let index = 0;
  const indexOf = new Map<string, number>();
  const lowLink = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  const visit = (node: string): void => {
    indexOf.set(node, index);
    lowLink.set(node, index);
    index++;
    stack.push(node);
    onStack.add(node);
    for (const next of edges.get(node) ?? []) {
      if (!indexOf.has(next)) {
        visit(next);
        lowLink.set(node, Math.min(lowLink.get(node) as number, lowLink.get(next) as number));
      } else if (onStack.has(next)) {
        lowLink.set(node, Math.min(lowLink.get(node) as number, indexOf.get(next) as number));
      }
    }
    if (lowLink.get(node) !== indexOf.get(node)) return;
    const component: string[] = [];
    let member: string | undefined;
    do {
      member = stack.pop() as string;
      onStack.delete(member);
      component.push(member);
    } while (member !== node);
    if (component.length > 1 || edges.get(node)?.has(node)) cycles.push(component.sort());
  };
  for (const node of [...edges.keys()].sort()) if (!indexOf.has(node)) visit(node);
  return cycles;
}

/** Reads the tree under `root` and builds the graphs and the list of violations. */
export function buildImportGraph(root: string): ImportGraph {
  const workspaces = readWorkspaces(root);
  const byName = new Map(workspaces.map((w) => [w.name, w]));
  const byDir = new Map(workspaces.map((w) => [w.dir, w]));
  const packageEdges = new Map<string, Set<string>>(workspaces.map((w) => [w.dir, new Set<string>()]));
  const moduleEdges = new Map<string, Map<string, Set<string>>>(workspaces.map((w) => [w.dir, new Map()]));
  const violations: Violation[] = [];

  const files = globSync(['*/src/**/*.ts', '*/test/**/*.ts', 'test/**/*.ts', 'scripts/**/*.ts'], { cwd: root })
    .map(toPosix)
    .filter((file) => !file.split('/').includes('node_modules'))
    .sort();
  for (const file of files) {
    const ownerDir = file.split('/')[0] as string;
    const owner = file.split('/')[1] === 'src' ? byDir.get(ownerDir) : undefined;
    const isTest = file.endsWith('.test.ts');
    const text = readFileSync(join(root, file), 'utf8');
    for (const specifier of specifiersOf(text)) {
      if (specifier.startsWith('.')) {
        const target = toPosix(relative(root, resolve(root, dirname(file), specifier)));
        const targetDir = target.split('/')[0] as string;
        // A package's own tests (`<pkg>/test/`) may reach its src/; nobody else may.
        if (byDir.has(targetDir) && target.split('/')[1] === 'src' && targetDir !== ownerDir) {
          violations.push({ kind: 'deep-import', detail: `${file} imports ${target}; use the package's exports (@narrowlink/${targetDir})` });
        }
        // Tests are leaves: they may import anything of their own package without forming a product cycle.
        if (owner && !isTest && targetDir === owner.dir) {
          const from = file.slice(`${owner.dir}/src/`.length);
          const to = normalize(target.slice(`${owner.dir}/src/`.length));
          const modules = moduleEdges.get(owner.dir) as Map<string, Set<string>>;
          const set = modules.get(from) ?? new Set<string>();
          set.add(toPosix(to));
          modules.set(from, set);
        }
        continue;
      }
      const match = /^(@narrowlink\/[^/]+)/.exec(specifier);
      const target = match ? byName.get(match[1] as string) : undefined;
      if (!owner || !target || target.dir === owner.dir) continue;
      if (!owner.dependencies.has(target.name)) {
        violations.push({ kind: 'undeclared', detail: `${file} imports ${target.name}, which ${owner.dir}/package.json does not declare` });
      }
      if ((DEPLOYABLES as readonly string[]).includes(owner.dir) && (DEPLOYABLES as readonly string[]).includes(target.dir)) {
        violations.push({ kind: 'sideways', detail: `${file}: deployable ${owner.dir} imports deployable ${target.dir}` });
      }
      if (!isTest) (packageEdges.get(owner.dir) as Set<string>).add(target.dir);
    }
  }
  for (const cycle of findCycles(packageEdges)) violations.push({ kind: 'cycle', detail: `packages: ${cycle.join(' ⇄ ')}` });
  for (const [dir, modules] of moduleEdges) {
    for (const cycle of findCycles(modules)) violations.push({ kind: 'cycle', detail: `${dir}/src: ${cycle.join(' ⇄ ')}` });
  }
  return { packages: workspaces.map((w) => w.dir), packageEdges, moduleEdges, violations };
}

function render(graph: ImportGraph, modulesOf: string[]): string {
  const lines = ['packages (src/, tests left out):'];
  for (const dir of graph.packages) lines.push(`  ${dir} → ${[...(graph.packageEdges.get(dir) ?? [])].sort().join(', ') || '(nothing)'}`);
  for (const dir of modulesOf) {
    const modules = graph.moduleEdges.get(dir);
    if (!modules) {
      lines.push(`no package "${dir}"`);
      continue;
    }
    lines.push('', `${dir}/src modules (tests left out):`);
    for (const [from, to] of [...modules].sort(([a], [b]) => a.localeCompare(b))) lines.push(`  ${from} → ${[...to].sort().join(', ')}`);
  }
  lines.push('', graph.violations.length === 0 ? 'no violations' : `${graph.violations.length} violation(s):`);
  for (const v of graph.violations) lines.push(`  ${v.kind}: ${v.detail}`);
  return `${lines.join('\n')}\n`;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { package: { type: 'string', multiple: true } } });
  const graph = buildImportGraph(join(dirname(fileURLToPath(import.meta.url)), '..'));
  process.stdout.write(render(graph, values.package ?? ['gateway']));
  process.exitCode = graph.violations.length === 0 ? 0 : 1;
}
