/**
 * `narrowlink-gateway token create`: mints one token with the gateway's signing key, for standalone gateways
 * (no cluster, no operator) and CI robots. Prints the token alone on stdout, so `$(narrowlink-gateway token
 * create …)` or `> file` captures exactly it; everything else goes to stderr, coded. Exit 0 on success, 2 for a
 * bad command line, 1 when the key file cannot be read or is not an Ed25519 private key.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import {
  ConfigError,
  DEFAULT_AUDIENCE,
  DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
  ErrorCode,
  isEd25519X,
  jwkThumbprint,
  type SignTokenOptions,
  signToken,
} from '@narrowlink/protocol';
import { GatewayErrorCode } from './errors.ts';

export const TOKEN_HELP = `narrowlink-gateway token create: mint one token with the gateway's signing key

Usage:
  narrowlink-gateway token create --key FILE --user USER [--group GROUP ...] --ttl DURATION [options]
  narrowlink-gateway token create --key FILE --agent NAMESPACE/NAME --ttl DURATION [options]

Prints the token, and nothing else, on stdout.

Options:
  --key FILE         the signing private key (PKCS#8 PEM, Ed25519) whose public key is in the gateway
                     configuration's signingPublicKeys
  --user USER        a client token for USER (AccessPolicy subject kind User)
  --group GROUP      with --user: a group the user is in (subject kind Group); repeat for several
  --agent NS/NAME    an agent token for the agent NAME in namespace NS (the configuration's agents[])
  --ttl DURATION     lifetime: N (seconds), Ns, Nm, Nh or Nd, e.g. 8h; the gateway refuses tokens that live
                     longer than tokens.maxLifetimeSeconds (default: client 30d, agent 90d)
  --audience A       the token audience (default ${DEFAULT_AUDIENCE}; the gateway configuration's audience)
  --bind-key-x X     with --user: bind the token to the client's Ed25519 public key (JWK x, base64url):
                     the gateway then accepts it only with a proof of possession of that key
  -h, --help         show this help

Exit codes: 0 printed a token; 2 bad command line (NL_ERR_GATEWAY_USAGE); 1 the key file cannot be read or
is not an Ed25519 private key (NL_ERR_CONFIG_INVALID).
`;

/** Where the command writes; the real process streams by default. */
export interface TokenCommandIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const DURATION = /^([1-9][0-9]{0,9})([smhd]?)$/;
const UNIT_SECONDS: Record<string, number> = { '': 1, s: 1, m: 60, h: 3600, d: 86_400 };
/** RFC 1123 label, as Kubernetes namespaces and the configuration's agent names are. */
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** `8h` → 28800. Undefined for anything that is not a positive whole number with an optional s/m/h/d unit. */
export function parseDurationSeconds(text: string): number | undefined {
  const match = DURATION.exec(text);
  if (!match) return undefined;
  const seconds = Number(match[1]) * (UNIT_SECONDS[match[2] ?? ''] ?? 1);
  return Number.isSafeInteger(seconds) ? seconds : undefined;
}

class UsageError extends Error {}

/** The signing options the command line asks for (throws UsageError). */
function tokenOptions(argv: string[]): { keyFile: string; options: SignTokenOptions } | 'help' {
  let values: Record<string, string | string[] | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        key: { type: 'string' },
        user: { type: 'string' },
        group: { type: 'string', multiple: true },
        agent: { type: 'string' },
        ttl: { type: 'string' },
        audience: { type: 'string' },
        'bind-key-x': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
      strict: true,
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (values.help) return 'help';
  const keyFile = values.key as string | undefined;
  const user = values.user as string | undefined;
  const agent = values.agent as string | undefined;
  const groups = (values.group as string[] | undefined) ?? [];
  const ttlText = values.ttl as string | undefined;
  const bindX = values['bind-key-x'] as string | undefined;
  if (!keyFile) throw new UsageError('missing --key FILE (the signing private key)');
  if ((user === undefined) === (agent === undefined)) throw new UsageError('give exactly one of --user USER or --agent NAMESPACE/NAME');
  if (!ttlText) throw new UsageError('missing --ttl DURATION (e.g. 8h)');
  const ttlSeconds = parseDurationSeconds(ttlText);
  if (ttlSeconds === undefined) throw new UsageError(`--ttl wants N, Ns, Nm, Nh or Nd (N a positive whole number), got "${ttlText}"`);
  const audience = values.audience as string | undefined;
  if (audience === '') throw new UsageError('--audience must not be empty');

  if (agent !== undefined) {
    if (groups.length > 0) throw new UsageError('--group goes with --user (agents have no groups)');
    // The agent sidecar has no proof key to go with a bound token: it could never use one.
    if (bindX !== undefined) throw new UsageError('--bind-key-x goes with --user (agents cannot prove possession of a key)');
    const [namespace = '', name = '', ...rest] = agent.split('/');
    if (rest.length > 0 || !DNS_LABEL.test(namespace) || !DNS_LABEL.test(name)) {
      throw new UsageError(`--agent wants NAMESPACE/NAME (lowercase DNS labels), got "${agent}"`);
    }
    return { keyFile, options: { typ: 'agent', sub: agent, ttlSeconds, ...(audience ? { audience } : {}) } };
  }
  if (user === '') throw new UsageError('--user must not be empty');
  if (groups.some((g) => g === '')) throw new UsageError('--group must not be empty');
  if (bindX !== undefined && !isEd25519X(bindX)) {
    throw new UsageError('--bind-key-x wants the Ed25519 public key as JWK x: base64url without padding of 32 bytes (43 characters)');
  }
  return {
    keyFile,
    options: {
      typ: 'client',
      sub: user as string,
      groups,
      ttlSeconds,
      ...(audience ? { audience } : {}),
      ...(bindX ? { cnf: { jkt: jwkThumbprint(bindX) } } : {}),
    },
  };
}

/**
 * Runs `token …` (argv after `token`) and returns the exit code. Never prints the key; prints the token only on
 * stdout.
 */
export async function runTokenCommand(argv: string[], io: TokenCommandIo = defaultIo): Promise<number> {
  const fail = (code: string, message: string, exitCode: number): number => {
    io.stderr(`narrowlink-gateway: ${code}: ${message}\n`);
    return exitCode;
  };
  const [sub, ...rest] = argv;
  if (sub === undefined) {
    io.stderr(TOKEN_HELP);
    return 2;
  }
  if (sub === '--help' || sub === '-h' || sub === 'help') {
    io.stdout(TOKEN_HELP);
    return 0;
  }
  if (sub !== 'create') return fail(GatewayErrorCode.USAGE, `unknown token command "${sub.slice(0, 40)}"; see narrowlink-gateway token --help`, 2);
  let parsed: ReturnType<typeof tokenOptions>;
  try {
    parsed = tokenOptions(rest);
  } catch (error) {
    if (error instanceof UsageError) return fail(GatewayErrorCode.USAGE, `${error.message} (see narrowlink-gateway token create --help)`, 2);
    throw error;
  }
  if (parsed === 'help') {
    io.stdout(TOKEN_HELP);
    return 0;
  }
  const { keyFile, options } = parsed;
  let pem: string;
  try {
    pem = await readFile(keyFile, 'utf8');
  } catch (error) {
    return fail(ErrorCode.CONFIG_INVALID, `cannot read --key ${keyFile}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, 1);
  }
  let token: string;
  try {
    token = await signToken(pem, options);
  } catch (error) {
    if (error instanceof ConfigError) return fail(error.code, `--key ${keyFile}: ${error.message}`, 1);
    throw error;
  }
  const maxSeconds = DEFAULT_MAX_TOKEN_LIFETIME_SECONDS[options.typ];
  if (options.ttlSeconds > maxSeconds) {
    io.stderr(`narrowlink-gateway: warning: --ttl exceeds the gateway's default tokens.maxLifetimeSeconds.${options.typ} (${maxSeconds} s); raise it in the configuration or the gateway refuses this token\n`);
  }
  io.stdout(`${token}\n`);
  return 0;
}

const defaultIo: TokenCommandIo = {
  stdout: (text) => void process.stdout.write(text),
  stderr: (text) => void process.stderr.write(text),
};
