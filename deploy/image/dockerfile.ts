/**
 * Reads deploy/Dockerfile: its stages and instructions, and the build-context paths it copies. Used by the check
 * that the Dockerfile builds what deploy/image/manifest.json describes (test/image/dockerfile.test.ts) and by the
 * Docker tier, which stages a build context holding exactly those paths (test/docker/cluster.test.ts).
 */

/** One Dockerfile instruction, continuation lines joined. */
export interface Instruction {
  op: string;
  args: string;
}

/** Parses a Dockerfile into stages of instructions (comments and line continuations handled). */
export function parseDockerfile(text: string): { name: string | undefined; from: string; instructions: Instruction[] }[] {
  const logical: string[] = [];
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    // A comment line, also between continuation lines (Docker drops those as well).
    if (/^\s*#/.test(line)) continue;
    if (line.endsWith('\\')) {
      current += `${line.slice(0, -1)} `;
      continue;
    }
    current += line;
    if (current.trim() !== '') logical.push(current.trim());
    current = '';
  }
  const stages: { name: string | undefined; from: string; instructions: Instruction[] }[] = [];
  for (const line of logical) {
    const match = /^(\w+)\s+(.*)$/s.exec(line);
    if (!match) throw new Error(`unparsable Dockerfile line: ${line}`);
    const op = (match[1] as string).toUpperCase();
    const args = (match[2] as string).replace(/\s+/g, ' ').trim();
    if (op === 'FROM') {
      const from = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      if (!from) throw new Error(`unparsable FROM: ${args}`);
      stages.push({ from: from[1] as string, name: from[2], instructions: [] });
    } else if (stages.length > 0) {
      (stages.at(-1) as (typeof stages)[number]).instructions.push({ op, args });
    }
  }
  return stages;
}

/** The build-context paths the Dockerfile's COPY lines read (not the ones copied between stages), in order. */
export function buildContextSources(dockerfile: string): string[] {
  return parseDockerfile(dockerfile)
    .flatMap((stage) => stage.instructions)
    .filter((i) => i.op === 'COPY' && !i.args.startsWith('--from'))
    .flatMap((i) => i.args.split(' ').slice(0, -1));
}
