/**
 * The completion scripts: the bash one parses (`bash -n`) and completes through bash's own `complete`/`COMP_WORDS`
 * machinery (commands, a command's options, option values, shells); zsh parses and fish completes (`complete -C`) where
 * those shells exist; every
 * script names every command, and `narrowlink completion bash` prints the same script.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { COMMANDS, SHELLS } from './commands.ts';
import { completionScript } from './completion.ts';

const dir = mkdtempSync(join(tmpdir(), 'nl-completion-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'main.ts');

function has(shell: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${shell}`]).status === 0;
}

/** A stand-in `narrowlink` on PATH whose `ls -o name` lists two agents: what the scripts ask the gateway through. */
const fakeBin = join(dir, 'bin');
mkdirSync(fakeBin);
writeFileSync(join(fakeBin, 'narrowlink'), '#!/bin/sh\nif [ "$1" = ls ] && [ "$2" = -o ] && [ "$3" = name ]; then printf "demo\\nteam/web\\n"; fi\n');
chmodSync(join(fakeBin, 'narrowlink'), 0o755);
const withFake = { ...process.env, PATH: `${fakeBin}:${process.env.PATH}` };

const bashFile = join(dir, 'narrowlink.bash');
writeFileSync(bashFile, completionScript('bash'));

/** What bash completes for the command line `words` (the last word is the one being completed). */
function complete(words: string[]): string[] {
  const script = [
    `source ${bashFile}`,
    // The function bash would call for narrowlink, as `complete -p` registered it.
    `fn=$(complete -p narrowlink | sed -E 's/.*-F ([^ ]+).*/\\1/')`,
    `COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')})`,
    `COMP_CWORD=${words.length - 1}`,
    '"$fn" narrowlink',
    `printf '%s\\n' "\${COMPREPLY[@]}"`,
  ].join('\n');
  return execFileSync('bash', ['-c', script], { encoding: 'utf8', env: withFake })
    .split('\n')
    .filter((line) => line.length > 0);
}

describe('bash completion', () => {
  test('parses (bash -n) and registers for narrowlink and kubectl-narrowlink', () => {
    execFileSync('bash', ['-n', bashFile]);
    const registered = execFileSync('bash', ['-c', `source ${bashFile}; complete -p narrowlink kubectl-narrowlink`], { encoding: 'utf8' });
    assert.match(registered, /-F _narrowlink narrowlink/);
    assert.match(registered, /-F _narrowlink kubectl-narrowlink/);
  });

  test('completes commands, options of the command, option values and shells', () => {
    assert.deepEqual(complete(['narrowlink', 'fo']), ['forward']);
    assert.deepEqual(complete(['narrowlink', '']).sort(), Object.keys(COMMANDS).sort());
    assert.deepEqual(complete(['narrowlink', 'ls', '--mo']), ['--mode']);
    assert.deepEqual(complete(['narrowlink', 'ls', '--mode', '']), ['auto', 'direct', 'relay']);
    assert.deepEqual(complete(['narrowlink', 'status', '--lo']), ['--local']);
    assert.deepEqual(complete(['narrowlink', 'ls', '--lo']), [], 'ls has no --local');
    assert.deepEqual(complete(['narrowlink', 'socks', '--li']), ['--listen']);
    assert.deepEqual(complete(['narrowlink', 'completion', 'z']), ['zsh']);
    assert.deepEqual(complete(['narrowlink', 'help', 'lo']).sort(), ['login', 'logout']);
    // An option's value is not the command: `--context dev ls --mo` still completes ls's options.
    assert.deepEqual(complete(['narrowlink', '--context', 'dev', 'ls', '-o', '']), ['text', 'json']);
  });

  test('completes agent names from ls -o name for forward, connect and status', () => {
    assert.deepEqual(complete(['narrowlink', 'connect', 'd']), ['demo']);
    assert.deepEqual(complete(['narrowlink', 'status', 't']), ['team/web']);
    assert.deepEqual(complete(['narrowlink', 'forward', '8080', '']).sort(), ['demo', 'team/web']);
    assert.deepEqual(complete(['narrowlink', 'ls', '']), [], 'ls takes no agent');
  });

  test('`narrowlink completion bash` prints this script', async () => {
    const stdout = await new Promise<string>((resolve, reject) =>
      execFile(process.execPath, [MAIN, 'completion', 'bash'], (error, out) => (error ? reject(error) : resolve(out))),
    );
    assert.equal(stdout, completionScript('bash'));
  });
});

describe('other shells', () => {
  test('every script names every command', () => {
    for (const shell of SHELLS) {
      const script = completionScript(shell);
      for (const name of Object.keys(COMMANDS)) assert.ok(script.includes(name), `${shell} lacks ${name}`);
    }
  });

  test('zsh parses', { skip: has('zsh') ? false : 'no zsh here' }, () => {
    const file = join(dir, '_narrowlink');
    writeFileSync(file, completionScript('zsh'));
    execFileSync('zsh', ['-n', file]);
  });

  test('fish parses and completes (complete -C)', { skip: has('fish') ? false : 'no fish here' }, () => {
    const file = join(dir, 'narrowlink.fish');
    writeFileSync(file, completionScript('fish'));
    execFileSync('fish', ['--no-execute', file]);
    const fish = (line: string): string[] =>
      execFileSync('fish', ['-c', `source ${file}; complete -C '${line}'`], { encoding: 'utf8', env: withFake })
        .split('\n')
        .filter((l) => l.length > 0)
        .map((l) => l.split('\t')[0] as string);
    assert.deepEqual(fish('narrowlink fo'), ['forward']);
    assert.deepEqual(fish('narrowlink ls --mo'), ['--mode']);
    assert.deepEqual(fish('narrowlink ls --mode '), ['auto', 'direct', 'relay']);
    assert.deepEqual(fish('narrowlink completion ').sort(), [...SHELLS].sort());
    assert.deepEqual(fish('narrowlink connect d'), ['demo']);
  });
});
