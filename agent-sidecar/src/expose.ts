/**
 * The agent's own allow-list: what it will dial, from `--expose NAME=[HOST:]PORT` specs.
 * Checked on every stream, independently of the gateway (defence in depth).
 */
import { AgentError, AgentErrorCode } from './errors.ts';

export interface ExposeEntry {
  name: string;
  host: string;
  port: number;
}

const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Parses `http=8080`, `db=127.0.0.1:5432` or `api=[::1]:9000`. Host defaults to 127.0.0.1. */
export function parseExpose(spec: string): ExposeEntry {
  const eq = spec.indexOf('=');
  const name = spec.slice(0, eq).trim();
  const target = spec.slice(eq + 1).trim();
  if (eq <= 0 || !NAME.test(name)) {
    throw new AgentError(AgentErrorCode.BAD_EXPOSE, `--expose "${spec}": want NAME=[HOST:]PORT with a lowercase DNS-label NAME`);
  }
  const match = /^(?:(\[[0-9a-fA-F:.]+\]|[^:[\]]+):)?(\d{1,5})$/.exec(target);
  const port = Number(match?.[2]);
  if (!match || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new AgentError(AgentErrorCode.BAD_EXPOSE, `--expose "${spec}": port must be 1-65535`);
  }
  const host = (match[1] ?? '127.0.0.1').replace(/^\[|\]$/g, '');
  return { name, host, port };
}

/** Parses several specs (flags, or one comma-separated env value); rejects duplicate names or targets. */
export function parseExposeList(specs: string[]): ExposeEntry[] {
  const entries = specs.flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean).map(parseExpose);
  const names = new Set<string>();
  const targets = new Set<string>();
  for (const entry of entries) {
    const target = `${entry.host.toLowerCase()}:${entry.port}`;
    if (names.has(entry.name)) throw new AgentError(AgentErrorCode.BAD_EXPOSE, `--expose: name "${entry.name}" given twice`);
    if (targets.has(target)) throw new AgentError(AgentErrorCode.BAD_EXPOSE, `--expose: ${target} given twice`);
    names.add(entry.name);
    targets.add(target);
  }
  return entries;
}

export class AllowList {
  readonly entries: readonly ExposeEntry[];
  readonly #targets: Set<string>;
  constructor(entries: ExposeEntry[]) {
    this.entries = entries;
    this.#targets = new Set(entries.map((e) => `${e.host.toLowerCase()}|${e.port}`));
  }
  allows(host: string, port: number): boolean {
    return this.#targets.has(`${host.toLowerCase()}|${port}`);
  }
}
