/**
 * Output of long-running commands: human lines on stderr, or with `-o json` one JSON object per
 * line on stdout (`{"event": ...}`), for scripts and tests. Tokens never reach either.
 */
export type OutputFormat = 'text' | 'json';

export class Reporter {
  readonly format: OutputFormat;
  readonly #out: NodeJS.WritableStream;
  readonly #err: NodeJS.WritableStream;
  constructor(format: OutputFormat, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr) {
    this.format = format;
    this.#out = out;
    this.#err = err;
  }

  /** An event; `text` is the human rendering. */
  event(event: string, fields: Record<string, unknown>, text: string): void {
    if (this.format === 'json') this.#out.write(`${JSON.stringify({ event, time: new Date().toISOString(), ...fields })}\n`);
    else this.#err.write(`${text}\n`);
  }
}
