/**
 * Writes the CRD YAML generated from operator/src/crds/ into crds/ and charts/narrowlink/crds/.
 *
 *   node operator/src/crds/generate.ts          regenerate
 *   node operator/src/crds/generate.ts --check  exit 1 when a checked-in file is missing or stale (CI)
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { generatedCrdFiles } from './index.ts';

/** Repository root (this file is operator/src/crds/generate.ts). */
export const REPO_ROOT = join(import.meta.dirname, '..', '..', '..');

/** A checked-in file that differs from what the generator would write. */
export interface StaleFile {
  path: string;
  /** 1-based first differing line, or undefined when the file is missing. */
  firstDifferentLine?: number;
}

/** Compares the generated files with the ones under `root`. Pure apart from reading files. */
export async function findStaleCrdFiles(root = REPO_ROOT): Promise<StaleFile[]> {
  const stale: StaleFile[] = [];
  for (const [path, want] of generatedCrdFiles()) {
    let have: string;
    try {
      have = await readFile(join(root, path), 'utf8');
    } catch {
      stale.push({ path });
      continue;
    }
    if (have === want) continue;
    const a = have.split('\n');
    const b = want.split('\n');
    let line = 0;
    while (line < a.length && line < b.length && a[line] === b[line]) line++;
    stale.push({ path, firstDifferentLine: line + 1 });
  }
  return stale;
}

/** Writes every generated file under `root`; returns the paths written. */
export async function writeCrdFiles(root = REPO_ROOT): Promise<string[]> {
  const written: string[] = [];
  for (const [path, content] of generatedCrdFiles()) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), content);
    written.push(path);
  }
  return written;
}

async function main(argv: string[]): Promise<number> {
  if (argv.includes('--check')) {
    const stale = await findStaleCrdFiles();
    for (const f of stale) {
      const where = f.firstDifferentLine === undefined ? 'missing' : `differs from line ${f.firstDifferentLine}`;
      process.stderr.write(`stale: ${f.path} (${where})\n`);
    }
    if (stale.length > 0) {
      process.stderr.write(
        'CRD YAML is out of date with operator/src/crds/. Run: node operator/src/crds/generate.ts, then `git diff crds charts` to review.\n',
      );
      return 1;
    }
    return 0;
  }
  for (const path of await writeCrdFiles()) process.stdout.write(`wrote ${path}\n`);
  return 0;
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
