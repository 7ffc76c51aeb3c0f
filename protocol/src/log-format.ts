/**
 * Log output of the long-running processes (gateway, agent): pino's JSON lines for machines (files, pipes,
 * Kubernetes), and a human line per record on a terminal, as pino-pretty, zap's console encoder and kubectl do:
 * local time, level name, component, message, then the other fields as key=value. No dependency on pino: the
 * destination takes pino's serialized lines and reformats them.
 */

/** `auto` (pretty on a TTY, JSON otherwise), `json`, or `pretty`. */
export type LogFormat = 'auto' | 'json' | 'pretty';

export const LOG_FORMATS: readonly LogFormat[] = ['auto', 'json', 'pretty'];

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const LEVEL_COLORS: Record<number, string> = { 10: '90', 20: '36', 30: '32', 40: '33', 50: '31', 60: '35' };
/** Keys shown in the line's fixed part, or dropped (process identity that a terminal user knows already). */
const FIXED_KEYS = new Set(['level', 'time', 'msg', 'component', 'service', 'pid', 'hostname']);

function pad(value: number, width = 2): string {
  return String(value).padStart(width, '0');
}

/** `YYYY-MM-DD HH:MM:SS.mmm` in the machine's local time zone. */
export function localTimestamp(epochMs: number): string {
  const d = new Date(epochMs);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function formatValue(value: unknown): string {
  if (typeof value === 'string') return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  if (value === null || typeof value !== 'object') return String(value);
  return JSON.stringify(value);
}

/**
 * One pino JSON line as a human line: `2026-12-07 21:59:01.123 INFO  [session] gateway session open  kind=client`.
 * An `err` field (pino's serialized Error) shows its message inline and its stack on the following lines. A line
 * that is not a JSON object is returned unchanged.
 */
export function prettyLogLine(line: string, options: { color?: boolean } = {}): string {
  let record: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(line);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return line.endsWith('\n') ? line : `${line}\n`;
    record = parsed as Record<string, unknown>;
  } catch {
    return line.endsWith('\n') ? line : `${line}\n`;
  }
  const level = typeof record.level === 'number' ? record.level : 30;
  const name = (LEVEL_NAMES[level] ?? `L${level}`).padEnd(5);
  const levelText = options.color ? `\u001b[${LEVEL_COLORS[level] ?? '0'}m${name}\u001b[0m` : name;
  const time = typeof record.time === 'number' ? localTimestamp(record.time) : '';
  const component = typeof record.component === 'string' ? ` [${record.component}]` : '';
  const fields: string[] = [];
  let stack: string | undefined;
  for (const [key, value] of Object.entries(record)) {
    if (FIXED_KEYS.has(key)) continue;
    if (key === 'err' && value && typeof value === 'object') {
      const err = value as { message?: unknown; stack?: unknown };
      fields.push(`err=${formatValue(err.message ?? value)}`);
      if (typeof err.stack === 'string' && level >= 50) stack = err.stack;
      continue;
    }
    fields.push(`${key}=${formatValue(value)}`);
  }
  const message = typeof record.msg === 'string' ? ` ${record.msg}` : '';
  const tail = fields.length > 0 ? `  ${fields.join(' ')}` : '';
  const stackText = stack ? `\n    ${stack.split('\n').join('\n    ')}` : '';
  return `${time} ${levelText}${component}${message}${tail}${stackText}\n`;
}

/** Whether `format` means human lines on this stream (`auto`: when it is a terminal). */
export function wantsPretty(format: LogFormat, stream: { isTTY?: boolean }): boolean {
  return format === 'pretty' || (format === 'auto' && stream.isTTY === true);
}

/**
 * A pino destination (anything with `write(string)`) that writes pino's lines to `stream` as human lines.
 * Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
 */
export function prettyDestination(
  stream: { write(text: string): unknown; isTTY?: boolean } = process.stdout,
  env: NodeJS.ProcessEnv = process.env,
): { write(line: string): void } {
  const color = stream.isTTY === true && !env.NO_COLOR;
  return {
    write(chunk: string): void {
      // pino writes one record per call, newline-terminated; split anyway in case of batching.
      for (const line of chunk.split('\n')) if (line.length > 0) stream.write(prettyLogLine(line, { color }));
    },
  };
}

/**
 * For pino's `hooks.logMethod`: a call like `log.warn({ code, msg: error.message }, 'text')` would write the `msg` key
 * twice in one JSON line (pino adds the message as `msg` and keeps the object's own), and JSON parsers keep only the
 * last. The object's `msg` becomes `detail` instead; a call without a message string keeps it as the message.
 * Mutates `args` in place.
 */
export function moveMsgField(args: unknown[]): void {
  const [first, second] = args;
  if (first === null || typeof first !== 'object' || !('msg' in first) || typeof second !== 'string') return;
  const { msg, ...rest } = first as Record<string, unknown>;
  args[0] = { ...rest, detail: msg };
}

/**
 * pino options for a long-running process (gateway, agent). `service` names the process at the root (children add
 * `component`: pino appends a child's bindings to its parent's, so reusing one key would write it twice in a line),
 * `redactPaths` are censored, and an object's `msg` next to a message string is kept as `detail` (moveMsgField).
 * Plain data and functions, so this package needs no pino: `pino(processLoggerOptions(...), destination)`.
 */
export function processLoggerOptions(options: { service: string; level: string; redactPaths: string[] }) {
  return {
    level: options.level,
    base: { service: options.service },
    redact: { paths: options.redactPaths, censor: '[redacted]' },
    hooks: {
      logMethod(this: unknown, args: unknown[], method: (...args: unknown[]) => void): void {
        moveMsgField(args);
        method.apply(this, args);
      },
    },
  };
}
