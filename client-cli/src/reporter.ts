/**
 * Output of long-running commands: human lines on stderr, or with `-o json` one JSON object per
 * line on stdout (`{"event": ...}`), for scripts and tests. Tokens never reach either.
 */
import type { LinkLogger } from '@narrowlink/peer-link';

export type OutputFormat = 'text' | 'json';

export class Reporter {
  readonly format: OutputFormat;
  /** `-v`: per-connection lines and every reconnect attempt in text mode. */
  readonly verbose: boolean;
  readonly #out: NodeJS.WritableStream;
  readonly #err: NodeJS.WritableStream;
  constructor(format: OutputFormat, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr, options: { verbose?: boolean } = {}) {
    this.format = format;
    this.verbose = options.verbose ?? false;
    this.#out = out;
    this.#err = err;
  }

  /** An event; `text` is the human rendering. */
  event(event: string, fields: Record<string, unknown>, text: string): void {
    if (this.format === 'json') this.#out.write(`${JSON.stringify({ event, time: new Date().toISOString(), ...fields })}\n`);
    else this.#err.write(`${text}\n`);
  }

  /** An event that is always in the JSON stream but printed as text only with `-v` (one line per connection). */
  detail(event: string, fields: Record<string, unknown>, text: string): void {
    if (this.format === 'json' || this.verbose) this.event(event, fields, text);
  }
}

/** With `-v`: the link's own log lines (dial attempts, refusals, session events) on stderr, one line each. */
export function stderrLinkLogger(err: NodeJS.WritableStream = process.stderr): LinkLogger {
  const line = (level: string) => (fields: object, message: string) => {
    const details = Object.entries(fields)
      .filter(([, value]) => value !== undefined)
      .map(([key, value]) => `${key}=${value instanceof Error ? value.message : typeof value === 'object' ? JSON.stringify(value) : String(value)}`)
      .join(' ');
    err.write(`[${level}] ${message}${details ? ` ${details}` : ''}\n`);
  };
  return { debug: line('debug'), info: line('info'), warn: line('warn') };
}

/** Human byte counts: 512 B, 1.5 KiB, 12.3 MiB. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value >= 100 ? Math.round(value) : Math.round(value * 10) / 10} ${units[unit]}`;
}

/** One finished connection, as `forward` and `socks` report it. */
export interface ConnectionRecord {
  path: 'relay' | 'direct';
  /** Bytes from the local application to the agent. */
  bytesUp: number;
  /** Bytes from the agent to the local application. */
  bytesDown: number;
  failed: boolean;
}

/**
 * Connection counts for the normal-mode summary: a line every `intervalMs` (default 30 s), printed only when
 * something changed since the last one, so an idle forward stays quiet.
 */
export class TrafficSummary {
  #open = 0;
  #done = 0;
  #failed = 0;
  #relay = 0;
  #direct = 0;
  #bytesUp = 0;
  #bytesDown = 0;
  #lastLine = '';
  readonly #timer: NodeJS.Timeout | undefined;
  readonly #reporter: Reporter;

  constructor(reporter: Reporter, intervalMs = 30_000) {
    this.#reporter = reporter;
    // In -v mode every connection has its own line, and JSON has per-connection events: no summary needed.
    if (reporter.format === 'text' && !reporter.verbose) {
      this.#timer = setInterval(() => this.flush(), intervalMs);
      this.#timer.unref();
    }
  }

  opened(): void {
    this.#open++;
  }

  closed(record: ConnectionRecord): void {
    this.#open--;
    this.#done++;
    if (record.failed) this.#failed++;
    if (record.path === 'direct') this.#direct++;
    else this.#relay++;
    this.#bytesUp += record.bytesUp;
    this.#bytesDown += record.bytesDown;
  }

  /** The summary line; undefined when nothing happened yet. */
  line(): string | undefined {
    if (this.#done === 0 && this.#open === 0) return undefined;
    return `connections: ${this.#open} open, ${this.#done} done (${this.#relay} relay, ${this.#direct} direct${this.#failed ? `, ${this.#failed} failed` : ''}), ${formatBytes(this.#bytesUp)} up, ${formatBytes(this.#bytesDown)} down`;
  }

  /** Prints the summary if it changed since the last print. */
  flush(): void {
    const line = this.line();
    if (!line || line === this.#lastLine) return;
    this.#lastLine = line;
    this.#reporter.event('summary', {}, line);
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
