/**
 * deploy/Dockerfile and deploy/build-image.sh must build equivalent images (issue 13): same files under /app, same
 * Node binary, same user, entry point, command, environment and labels. Both follow deploy/image/manifest.json; this
 * suite reads the Dockerfile (no Docker needed) and checks each of those against the manifest, and that the build
 * context its COPY lines need is not filtered out by Dockerfile.dockerignore. The script's side of the same
 * manifest is checked on the built image itself in image.test.ts.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { buildContextSources, type Instruction, parseDockerfile } from '../../deploy/image/dockerfile.ts';
import { readManifest, ROOT } from '../../deploy/image/stage.ts';

/** `KEY=value` / `KEY="value"` pairs of an ENV or LABEL instruction. */
function keyValues(args: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of args.matchAll(/([\w.-]+)=("((?:\\.|[^"\\])*)"|\S+)/g)) out[m[1] as string] = m[3] ?? (m[2] as string);
  return out;
}

/** Whether Dockerfile.dockerignore keeps `rel` (the last rule matching it or one of its parents decides). */
function kept(rules: string[], rel: string): boolean {
  const parts = rel.split('/');
  let keep = true;
  for (let i = 1; i <= parts.length; i++) {
    const prefix = parts.slice(0, i).join('/');
    for (const rule of rules) {
      const negated = rule.startsWith('!');
      const pattern = (negated ? rule.slice(1) : rule).replace(/^\//, '');
      if (path.matchesGlob(prefix, pattern)) keep = negated;
    }
  }
  return keep;
}

const manifest = readManifest();
const stages = parseDockerfile(readFileSync(path.join(ROOT, 'deploy', 'Dockerfile'), 'utf8'));
const final = stages.at(-1);
const buildStage = stages.find((s) => s.name === 'build');

function only(instructions: Instruction[], op: string): string {
  const found = instructions.filter((i) => i.op === op);
  assert.equal(found.length, 1, `the final stage has exactly one ${op}`);
  return (found[0] as Instruction).args;
}

describe('deploy/Dockerfile matches deploy/image/manifest.json', () => {
  test('has a build stage and a final stage', () => {
    assert.ok(buildStage, 'a stage named build');
    assert.ok(final && final !== buildStage, 'a final stage after it');
  });

  test('user, workdir, entry point and command', () => {
    assert.ok(final);
    assert.equal(only(final.instructions, 'USER'), `${manifest.user.uid}:${manifest.user.gid}`);
    assert.equal(only(final.instructions, 'WORKDIR'), manifest.workdir);
    assert.deepEqual(JSON.parse(only(final.instructions, 'ENTRYPOINT')), manifest.entrypoint);
    assert.deepEqual(JSON.parse(only(final.instructions, 'CMD')), manifest.cmd);
  });

  test('environment and labels', () => {
    assert.ok(final);
    const env = Object.assign({}, ...final.instructions.filter((i) => i.op === 'ENV').map((i) => keyValues(i.args)));
    // PATH is the Debian base image's own (the same value the manifest writes for the mmdebstrap image).
    const { PATH: _path, ...wanted } = manifest.env;
    assert.deepEqual(env, wanted);
    const labels = Object.assign({}, ...final.instructions.filter((i) => i.op === 'LABEL').map((i) => keyValues(i.args)));
    assert.deepEqual(labels, manifest.labels);
  });

  test('the nonroot user gets the same passwd and group lines, home and mode as the script writes', () => {
    assert.ok(final);
    const run = final.instructions.filter((i) => i.op === 'RUN').map((i) => i.args).join(' ');
    const { uid, gid, name, home } = manifest.user;
    assert.ok(run.includes(`'${name}:x:${uid}:${gid}:${name}:${home}:/usr/sbin/nologin' >> /etc/passwd`), 'passwd line');
    assert.ok(run.includes(`'${name}:x:${gid}:' >> /etc/group`), 'group line');
    assert.ok(run.includes(`chown ${uid}:${gid} ${home}`) && run.includes(`chmod 0700 ${home}`), 'home dir');
    assert.ok(run.includes(`apt-get install -y --no-install-recommends ${manifest.base.include.join(' ')}`), 'same packages as the mmdebstrap root');
  });

  test('/app and the links come from the same staging code (deploy/image/stage.ts), the Node binary from the pinned package', () => {
    assert.ok(buildStage && final);
    const buildRuns = buildStage.instructions.filter((i) => i.op === 'RUN').map((i) => i.args).join(' && ');
    assert.match(buildRuns, /npm run build:server/);
    assert.match(buildRuns, /npm run build:cli/);
    assert.match(buildRuns, /node deploy\/image\/stage\.ts --out \/stage(\s|$)/);
    // stripped as build-image.sh does
    assert.ok(buildRuns.includes(`strip -o /stage${manifest.node.binary} node_modules/${manifest.node.package}/bin/node`), 'node binary');
    const copies = final.instructions.filter((i) => i.op === 'COPY').map((i) => i.args);
    assert.deepEqual(copies, ['--from=build /stage/ /'], 'the final stage copies the staged tree and nothing else');
    const pin = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { optionalDependencies: Record<string, string> })
      .optionalDependencies[manifest.node.package];
    assert.ok(pin, `package.json pins ${manifest.node.package}`);
  });

  test('every path the build stage copies exists and survives Dockerfile.dockerignore', () => {
    assert.ok(buildStage);
    const rules = readFileSync(path.join(ROOT, 'deploy', 'Dockerfile.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    const sources = buildContextSources(readFileSync(path.join(ROOT, 'deploy', 'Dockerfile'), 'utf8'));
    assert.ok(sources.length > 5);
    for (const source of sources) {
      assert.ok(existsSync(path.join(ROOT, source)), `${source} exists`);
      assert.ok(kept(rules, source), `${source} is not excluded by Dockerfile.dockerignore`);
    }
    // and what must stay out does
    for (const out of ['node_modules', 'test', 'gateway/src/gateway.test.ts', '.git', 'dist', 'client-cli/dist']) {
      assert.equal(kept(rules, out), false, `${out} stays out of the build context`);
    }
  });
});
