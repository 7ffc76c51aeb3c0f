/**
 * Keeps docs/errors.md and the code base in sync (CONVENTIONS.md §7): every `NL_ERR_*` code that appears as a
 * string literal in a package's sources, every stream wire code and its `NL_ERR_STREAM_<CODE>` form must be
 * documented, and the page must list nothing that no longer exists.
 */
import assert from 'node:assert/strict';
import { globSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { StreamErrorCode } from '@narrowlink/protocol';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DOC = join(ROOT, 'docs', 'errors.md');

/** A whole string literal that is a code: 'NL_ERR_X', "NL_ERR_X" or `NL_ERR_X`. */
const CODE_LITERAL = /(['"`])(NL_ERR_[A-Z0-9_]*[A-Z0-9])\1/g;
/** A template literal that builds codes from a prefix: `NL_ERR_STREAM_${...}`. */
const CODE_TEMPLATE = /`(NL_ERR_[A-Z0-9_]*_)\$\{/g;

interface SourceScan {
  /** code → packages (top-level directories) whose sources contain it */
  codes: Map<string, Set<string>>;
  /** prefixes of codes built at run time */
  prefixes: Set<string>;
  files: number;
}

function scanSources(): SourceScan {
  const files = globSync('*/src/**/*.ts', { cwd: ROOT }).filter((f) => !f.endsWith('.test.ts') && !f.split(/[\\/]/).includes('node_modules'));
  const codes = new Map<string, Set<string>>();
  const prefixes = new Set<string>();
  for (const file of files) {
    const text = readFileSync(join(ROOT, file), 'utf8');
    const pkg = file.split(/[\\/]/)[0] as string;
    for (const match of text.matchAll(CODE_LITERAL)) {
      const code = match[2] as string;
      const packages = codes.get(code) ?? new Set<string>();
      packages.add(pkg);
      codes.set(code, packages);
    }
    for (const match of text.matchAll(CODE_TEMPLATE)) prefixes.add(match[1] as string);
  }
  return { codes, prefixes, files: files.length };
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

const streamCodes = Object.values(StreamErrorCode);
const source = scanSources();
const rows = parseDoc();
const documented = new Map<string, DocRow>();
for (const row of rows) for (const code of row.codes) if (!documented.has(code)) documented.set(code, row);

describe('docs/errors.md', () => {
  test('the source scan finds the codes (guards against a vacuous pass)', () => {
    assert.ok(source.files > 20, `scanned ${source.files} files`);
    assert.ok(source.codes.size > 30, `found ${source.codes.size} codes`);
    assert.ok(source.codes.has('NL_ERR_AUTH_INVALID_TOKEN'));
    assert.ok(streamCodes.includes('DENIED'));
  });

  test('every code built from a prefix at run time is one the test knows how to enumerate', () => {
    for (const prefix of source.prefixes) assert.equal(prefix, 'NL_ERR_STREAM_', `cannot enumerate codes built as ${prefix}\${...}`);
  });

  test('every NL_ERR_* code in the sources is documented', () => {
    const missing = [...source.codes.keys()].filter((code) => !documented.has(code)).sort();
    assert.deepEqual(missing, [], `add these codes to docs/errors.md: ${missing.join(', ')}`);
  });

  test('every stream wire code is documented together with its NL_ERR_STREAM_<CODE> form', () => {
    const usesStreamForm = source.prefixes.has('NL_ERR_STREAM_');
    for (const code of streamCodes) {
      const row = rows.find((r) => r.codes.includes(code));
      assert.ok(row, `stream code ${code} is not in docs/errors.md`);
      if (usesStreamForm) assert.ok(row.codes.includes(`NL_ERR_STREAM_${code}`), `line ${row.line}: list NL_ERR_STREAM_${code} next to ${code}`);
    }
  });

  test('the page lists no code that no longer exists', () => {
    const known = new Set<string>([...source.codes.keys(), ...streamCodes]);
    if (source.prefixes.has('NL_ERR_STREAM_')) for (const code of streamCodes) known.add(`NL_ERR_STREAM_${code}`);
    const stale = [...documented.keys()].filter((code) => !known.has(code)).sort();
    assert.deepEqual(stale, [], `remove these codes from docs/errors.md (or restore them in the code): ${stale.join(', ')}`);
  });

  test('each code is listed once, in the section of a package that uses it, with every column filled', () => {
    const seen = new Map<string, number>();
    for (const row of rows) {
      assert.ok(row.codes.length > 0, `line ${row.line}: the first cell names no code`);
      assert.equal(row.cells.length, 4, `line ${row.line}: want Code | Where | Meaning | How to fix`);
      for (const cell of row.cells) assert.ok(cell.length > 0, `line ${row.line}: empty cell`);
      for (const code of row.codes) {
        assert.equal(seen.get(code), undefined, `${code} listed twice (lines ${seen.get(code)} and ${row.line})`);
        seen.set(code, row.line);
        const packages = source.codes.get(code) ?? new Set(['protocol']);
        assert.ok(row.section && packages.has(row.section), `line ${row.line}: ${code} is under "${row.section}", but appears in ${[...packages].join(', ')}`);
      }
    }
  });
});
