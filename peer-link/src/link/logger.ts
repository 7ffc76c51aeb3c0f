/** The subset of a pino logger the link and the direct paths use. */
export interface LinkLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** Logs nothing: the default when no logger is given. */
export const silentLogger: LinkLogger = { debug() {}, info() {}, warn() {} };
