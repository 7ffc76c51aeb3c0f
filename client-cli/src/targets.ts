/**
 * Parsing of what the user types to name things: `AGENT[:PORT]` targets and `-L`-style
 * forward specs `[LOCAL_ADDR:]LOCAL_PORT:AGENT[:PORT]`.
 */
import { CliError, CliErrorCode } from './errors.ts';

export interface Target {
  /** `name` or `namespace/name`. */
  agent: string;
  /** Exposed port number, exposed port name, or undefined to use the agent's only port. */
  port: number | string | undefined;
}

export interface ForwardSpec {
  localHost: string;
  localPort: number;
  target: Target;
}

const AGENT_REF = /^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\/)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const PORT_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function parsePortNumber(text: string, what: string): number {
  const port = Number(text);
  if (!/^\d{1,5}$/.test(text) || port < 0 || port > 65535) throw new CliError(CliErrorCode.USAGE, `${what} must be a port number 0-65535, got "${text}"`);
  return port;
}

export function parseTarget(text: string): Target {
  const colon = text.indexOf(':');
  const agent = colon < 0 ? text : text.slice(0, colon);
  const portText = colon < 0 ? undefined : text.slice(colon + 1);
  if (!AGENT_REF.test(agent)) throw new CliError(CliErrorCode.USAGE, `"${agent}" is not an agent name (want NAME or NAMESPACE/NAME, lowercase)`);
  if (portText === undefined) return { agent, port: undefined };
  if (/^\d+$/.test(portText)) {
    const port = parsePortNumber(portText, 'agent port');
    if (port === 0) throw new CliError(CliErrorCode.USAGE, 'agent port must be 1-65535');
    return { agent, port };
  }
  if (!PORT_NAME.test(portText)) throw new CliError(CliErrorCode.USAGE, `"${portText}" is neither a port number nor a port name`);
  return { agent, port: portText };
}

/** `8080`, `127.0.0.1:8080`, `[::1]:8080` → host and port (host defaults to 127.0.0.1). */
export function parseLocal(text: string): { host: string; port: number } {
  const bracket = /^\[([0-9a-fA-F:.]+)\]:(\d+)$/.exec(text);
  if (bracket) return { host: bracket[1] as string, port: parsePortNumber(bracket[2] as string, 'local port') };
  const colon = text.lastIndexOf(':');
  if (colon < 0) return { host: '127.0.0.1', port: parsePortNumber(text, 'local port') };
  const host = text.slice(0, colon);
  if (host.length === 0) throw new CliError(CliErrorCode.USAGE, `empty local address in "${text}"`);
  return { host, port: parsePortNumber(text.slice(colon + 1), 'local port') };
}

/** `-L [LOCAL_ADDR:]LOCAL_PORT:AGENT[:PORT]` */
export function parseForwardFlag(text: string): ForwardSpec {
  let rest = text;
  let localHost = '127.0.0.1';
  const bracket = /^\[([0-9a-fA-F:.]+)\]:(.*)$/.exec(rest);
  if (bracket) {
    localHost = bracket[1] as string;
    rest = bracket[2] as string;
  }
  const parts = rest.split(':');
  if (!bracket && parts.length >= 3 && !/^\d+$/.test(parts[0] as string)) {
    localHost = parts.shift() as string;
  }
  const localPortText = parts.shift();
  if (localPortText === undefined || parts.length === 0 || parts.length > 2) {
    throw new CliError(CliErrorCode.USAGE, `-L "${text}": want [LOCAL_ADDR:]LOCAL_PORT:AGENT[:PORT]`);
  }
  return { localHost, localPort: parsePortNumber(localPortText, 'local port'), target: parseTarget(parts.join(':')) };
}
