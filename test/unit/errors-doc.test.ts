/**
 * Keeps docs/errors.md and the code base in sync (CONVENTIONS.md §7).
 *
 * The codes are read from the code objects each package exports (`GatewayErrorCode`, `LinkErrorCode`, …: every
 * exported object whose values are all `NL_ERR_*` strings), not from a text scan, so a code is seen however it is
 * written. Every code must be defined once, in one package, and documented in that package's section; every
 * stream wire code is documented with its `NL_ERR_STREAM_<CODE>` form; the page lists nothing that no longer
 * exists. And no `NL_ERR_*` may appear inside a string anywhere in the product sources outside an `errors.ts`:
 * a code written as a literal elsewhere is a second definition the code objects cannot see.
 */
import assert from 'node:assert/strict';
import { globSync, readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { StreamErrorCode } from '@narrowlink/protocol';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DOC = join(ROOT, 'docs', 'errors.md');
const PACKAGES = ['protocol', 'peer-link', 'kube', 'gateway', 'agent-sidecar', 'client-cli', 'operator'] as const;

interface CodeObject {
  pkg: string;
  name: string;
  codes: string[];
}

/** Exported objects of a package's public module whose values are all `NL_ERR_*` strings. */
async function codeObjectsOf(pkg: string): Promise<CodeObject[]> {
  const exports = (await import(`@narrowlink/${pkg}`)) as Record<string, unknown>;
  const out: CodeObject[] = [];
  for (const [name, value] of Object.entries(exports)) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) continue;
    const values = Object.values(value);
    if (values.length > 0 && values.every((v) => typeof v === 'string' && v.startsWith('NL_ERR_'))) out.push({ pkg, name, codes: values as string[] });
  }
  return out;
}

const codeObjects = (await Promise.all(PACKAGES.map(codeObjectsOf))).flat();
/** code → the packages whose code objects define it (more than one is a failure). */
const definedIn = new Map<string, Set<string>>();
for (const object of codeObjects) {
  for (const code of object.codes) definedIn.set(code, (definedIn.get(code) ?? new Set()).add(object.pkg));
}
const streamCodes = Object.values(StreamErrorCode) as string[];
for (const code of streamCodes) definedIn.set(`NL_ERR_STREAM_${code}`, new Set(['protocol']));

/** A string literal on one line ('…', "…" or `…`), escapes allowed. */
const STRING_LITERAL = /(['"`])((?:\\.|(?!\1)[^\\\n])*)\1/g;

interface LiteralUse {
  file: string;
  line: number;
  text: string;
}

/** `NL_ERR_` inside a string in product sources outside `errors.ts` (tests may name codes in assertions). */
function literalCodesOutsideErrorsFiles(): { uses: LiteralUse[]; files: number } {
  const files = globSync('*/src/**/*.ts', { cwd: ROOT }).filter((f) => !f.endsWith('.test.ts') && !f.split(/[\\/]/).includes('node_modules'));
  const uses: LiteralUse[] = [];
  for (const file of files) {
    if (basename(file) === 'errors.ts') continue;
    readFileSync(join(ROOT, file), 'utf8')
      .split('\n')
      .forEach((line, index) => {
        if (/^\s*(\*|\/\/|\/\*)/.test(line)) return; // a comment line may name a code
        for (const match of line.matchAll(STRING_LITERAL)) {
          if ((match[2] as string).includes('NL_ERR_')) uses.push({ file, line: index + 1, text: match[0] });
        }
      });
  }
  return { uses, files: files.length };
}

interface DocRow {
  codes: string[];
  cells: string[];
  /** The package named by the nearest `## \`pkg\`` heading above the row. */
  section: string | undefined;
  line: number;
}

/** Table rows of the page; codes are the backticked tokens of the first cell. */
function parseDoc(): DocRow[] {
  const rows: DocRow[] = [];
  let section: string | undefined;
  readFileSync(DOC, 'utf8')
    .split('\n')
    .forEach((line, index) => {
      const heading = /^## `([a-z-]+)`/.exec(line);
      if (heading) section = heading[1];
      if (!line.startsWith('|')) return;
      const cells = line
        .replace(/^\|/, '')
        .replace(/\|\s*$/, '')
        .split(/(?<!\\)\|/)
        .map((c) => c.trim());
      const first = cells[0] ?? '';
      if (first === 'Code' || /^-+$/.test(first)) return;
      const codes = [...first.matchAll(/`([A-Z][A-Z0-9_]*)`/g)].map((m) => m[1] as string);
      rows.push({ codes, cells, section, line: index + 1 });
    });
  return rows;
}

const rows = parseDoc();
const documented = new Map<string, DocRow>();
for (const row of rows) for (const code of row.codes) if (!documented.has(code)) documented.set(code, row);

describe('docs/errors.md', () => {
  test('the code objects are found (guards against a vacuous pass)', () => {
    assert.ok(definedIn.size > 60, `found ${definedIn.size} codes`);
    for (const pkg of PACKAGES) assert.ok(codeObjects.some((o) => o.pkg === pkg), `no code object exported by @narrowlink/${pkg}`);
    assert.ok(definedIn.get('NL_ERR_AUTH_INVALID_TOKEN')?.has('gateway'));
    assert.ok(streamCodes.includes('DENIED'));
  });

  test('every code is defined by one package only', () => {
    const twice = [...definedIn].filter(([, packages]) => packages.size > 1).map(([code, packages]) => `${code} (${[...packages].join(', ')})`);
    assert.deepEqual(twice, [], `define each code once: ${twice.join('; ')}`);
  });

  test('no NL_ERR_ code is written inside a string outside an errors.ts', () => {
    const { uses, files } = literalCodesOutsideErrorsFiles();
    assert.ok(files > 50, `scanned ${files} files`);
    const listed = uses.map((u) => `${u.file}:${u.line} ${u.text}`);
    assert.deepEqual(listed, [], `use the package's code object instead of these literals:\n${listed.join('\n')}`);
  });

  test('every code is documented', () => {
    const missing = [...definedIn.keys()].filter((code) => !documented.has(code)).sort();
    assert.deepEqual(missing, [], `add these codes to docs/errors.md: ${missing.join(', ')}`);
  });

  test('every stream wire code is documented together with its NL_ERR_STREAM_<CODE> form', () => {
    for (const code of streamCodes) {
      const row = rows.find((r) => r.codes.includes(code));
      assert.ok(row, `stream code ${code} is not in docs/errors.md`);
      assert.ok(row.codes.includes(`NL_ERR_STREAM_${code}`), `line ${row.line}: list NL_ERR_STREAM_${code} next to ${code}`);
    }
  });

  test('the page lists no code that no longer exists', () => {
    const known = new Set<string>([...definedIn.keys(), ...streamCodes]);
    const stale = [...documented.keys()].filter((code) => !known.has(code)).sort();
    assert.deepEqual(stale, [], `remove these codes from docs/errors.md (or restore them in the code): ${stale.join(', ')}`);
  });

  test('each code is listed once, in the section of the package that defines it, with every column filled', () => {
    const seen = new Map<string, number>();
    for (const row of rows) {
      assert.ok(row.codes.length > 0, `line ${row.line}: the first cell names no code`);
      assert.equal(row.cells.length, 4, `line ${row.line}: want Code | Where | Meaning | How to fix`);
      for (const cell of row.cells) assert.ok(cell.length > 0, `line ${row.line}: empty cell`);
      for (const code of row.codes) {
        assert.equal(seen.get(code), undefined, `${code} listed twice (lines ${seen.get(code)} and ${row.line})`);
        seen.set(code, row.line);
        const packages = definedIn.get(code) ?? new Set(streamCodes.includes(code) ? ['protocol'] : []);
        assert.ok(row.section && packages.has(row.section), `line ${row.line}: ${code} is under "${row.section}", but is defined in ${[...packages].join(', ') || 'no package'}`);
      }
    }
  });
});
