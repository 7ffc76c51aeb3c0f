/**
 * Where the CLI's settings come from, highest first: flags, environment, config file
 * (`--config`, `$NARROWLINK_CONFIG`, or `~/.config/narrowlink/config.yaml`), and last the credentials
 * `narrowlink login` cached for the kube context (`--context`, else the kubeconfig's current context): its
 * token, the proof key the token is bound to, the gateway URL and CA it discovered.
 */
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { checkGatewayUrl, LinkError } from '@narrowlink/peer-link';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { type CacheLocation, type CachedLogin, readLogin } from './credentials/cache.ts';
import { currentContextName } from './credentials/kubeconfig.ts';
import { CliError, CliErrorCode, ExitCode } from './errors.ts';

export const fileSettingsSchema = z
  .object({
    gateway: z.string().url().optional(),
    token: z.string().min(1).optional(),
    tokenFile: z.string().min(1).optional(),
    caFile: z.string().min(1).optional(),
    mode: z.enum(['auto', 'direct', 'relay']).optional(),
  })
  .strict();

export interface Settings {
  gateway: string;
  /** The token for the next dial or re-auth (a fresh read of a token file; a renewal for a login). */
  token: () => string | Promise<string>;
  caPem: string | undefined;
  mode: 'auto' | 'direct' | 'relay';
  configPath: string | undefined;
  /** The key a login token is bound to: the link proves possession of it to the gateway. */
  proofKey?: KeyObject | undefined;
  /** Set when the token comes from `narrowlink login`'s cache (holds secrets: never print it whole). */
  login?: CachedLogin | undefined;
}

export interface SettingsInput {
  gateway?: string | undefined;
  token?: string | undefined;
  tokenFile?: string | undefined;
  caFile?: string | undefined;
  config?: string | undefined;
  mode?: string | undefined;
  /** `--context`: whose login cache to use (default: the kubeconfig's current context). */
  context?: string | undefined;
  /** `--kubeconfig`: where that current context is read. */
  kubeconfig?: string | undefined;
}

/** Where the login cache and the kubeconfig are looked for (injected by tests). */
export interface SettingsLocation extends Omit<CacheLocation, 'env'> {
  serviceAccountTokenFile?: string;
}

export function defaultConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME && env.XDG_CONFIG_HOME.length > 0 ? expandPath(env.XDG_CONFIG_HOME, env) : join(homeOf(env), '.config');
  return join(base, 'narrowlink', 'config.yaml');
}

function homeOf(env: NodeJS.ProcessEnv): string {
  return env.HOME || env.USERPROFILE || homedir();
}

/**
 * A path as a shell would have expanded it: a leading `~` or `~/` is the home directory, `$VAR` and `${VAR}` (e.g.
 * `$XDG_RUNTIME_DIR/narrowlink/token`) are environment variables. Config files and quoted flags reach us unexpanded.
 * A relative path is taken from `baseDir` (the config file's directory) when given. An unset variable is a config
 * error, not an empty string: `$UNSET/token` must not become `/token`.
 */
export function expandPath(path: string, env: NodeJS.ProcessEnv = process.env, baseDir?: string): string {
  let expanded = path.replace(/^~(?=$|[/\\])/, () => homeOf(env));
  expanded = expanded.replace(/\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))/g, (_match, braced: string | undefined, bare: string | undefined) => {
    const name = (braced ?? bare) as string;
    const value = env[name];
    if (value === undefined || value === '') throw new CliError(CliErrorCode.CONFIG, `path "${path}" names $${name}, which is not set`);
    return value;
  });
  return baseDir && !isAbsolute(expanded) ? resolve(baseDir, expanded) : expanded;
}

/** " (did you mean tokenFile?)" for keys that differ from a known one only in case, `_` or `-`. */
function didYouMean(keys: readonly PropertyKey[]): string {
  const known = Object.keys(fileSettingsSchema.shape);
  const fold = (key: string): string => key.toLowerCase().replace(/[-_]/g, '');
  const matches = keys.map((key) => known.find((k) => fold(k) === fold(String(key)))).filter((k): k is string => k !== undefined);
  return matches.length > 0 ? ` (did you mean ${matches.join(', ')}?)` : '';
}

export function resolveSettings(flags: SettingsInput, env: NodeJS.ProcessEnv = process.env, location: SettingsLocation = {}): Settings {
  const explicitConfig = flags.config ?? env.NARROWLINK_CONFIG;
  const explicitPath = explicitConfig ? expandPath(explicitConfig, env) : undefined;
  const configPath = explicitPath ?? defaultConfigPath(env);
  let file: z.infer<typeof fileSettingsSchema> = {};
  if (existsSync(configPath)) {
    try {
      const parsed = fileSettingsSchema.safeParse(parseYaml(readFileSync(configPath, 'utf8')) ?? {});
      if (!parsed.success) {
        const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}${i.code === 'unrecognized_keys' ? didYouMean(i.keys) : ''}`).join('; ');
        throw new CliError(CliErrorCode.CONFIG, `${configPath}: ${issues}`);
      }
      // Paths in the file are the file's own: `~`, $VARS, and relative to the file's directory.
      const base = dirname(configPath);
      file = {
        ...parsed.data,
        ...(parsed.data.tokenFile ? { tokenFile: expandPath(parsed.data.tokenFile, env, base) } : {}),
        ...(parsed.data.caFile ? { caFile: expandPath(parsed.data.caFile, env, base) } : {}),
      };
    } catch (error) {
      if (error instanceof CliError) throw error;
      throw new CliError(CliErrorCode.CONFIG, `${configPath}: ${(error as Error).message}`, 2, { cause: error });
    }
  } else if (explicitPath) {
    throw new CliError(CliErrorCode.CONFIG, `config file ${explicitPath} does not exist`);
  }
  // The highest level that names a token wins (a --token-file flag beats `token:` in the file); within
  // one level an inline token beats a token file.
  const tokenLevel = [
    { text: flags.token, file: flags.tokenFile ? expandPath(flags.tokenFile, env) : undefined },
    { text: env.NARROWLINK_TOKEN, file: env.NARROWLINK_TOKEN_FILE ? expandPath(env.NARROWLINK_TOKEN_FILE, env) : undefined },
    { text: file.token, file: file.tokenFile },
  ].find((level) => level.text || level.file);
  const tokenText = tokenLevel?.text;
  const tokenFile = tokenLevel?.file;
  const explicitGateway = flags.gateway ?? env.NARROWLINK_GATEWAY ?? file.gateway;
  // No token named anywhere: the login cache of the kube context, if `narrowlink login` ran for it.
  let login: CachedLogin | undefined;
  if (!tokenText && !tokenFile) {
    const platform = location.platform ?? process.platform;
    const context = currentContextName({
      kubeconfig: flags.kubeconfig,
      context: flags.context,
      env,
      platform,
      ...(location.serviceAccountTokenFile ? { serviceAccountTokenFile: location.serviceAccountTokenFile } : {}),
    });
    login = context ? readLogin(context, { env, platform, ...(location.home ? { home: location.home } : {}) }) : undefined;
    if (!login && context) {
      throw new CliError(
        CliErrorCode.NOT_LOGGED_IN,
        `not logged in to kube context "${context}": run narrowlink login${flags.context ? ` --context ${flags.context}` : ''}, or pass --gateway URL and --token TOKEN`,
        ExitCode.AUTH,
      );
    }
    if (!login) {
      throw new CliError(
        CliErrorCode.CONFIG,
        `no token: run narrowlink login (with a kubeconfig), pass --token, set NARROWLINK_TOKEN or NARROWLINK_TOKEN_FILE, or add "token:" to ${configPath}`,
      );
    }
  }
  const gateway = explicitGateway ?? login?.gatewayUrls[0];
  if (!gateway) throw new CliError(CliErrorCode.CONFIG, `no gateway: pass --gateway URL, set NARROWLINK_GATEWAY, or add "gateway:" to ${configPath}`);
  if (!/^wss?:\/\//.test(gateway)) {
    const host = gateway.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '');
    throw new CliError(CliErrorCode.CONFIG, `gateway URL must start with wss:// (ws:// only on loopback), got "${gateway}": try wss://${host}`);
  }
  // Cleartext ws:// off loopback would carry the token unencrypted: refused here, before anything is dialed (the
  // link refuses it again, for every other user of it).
  try {
    checkGatewayUrl(gateway);
  } catch (error) {
    if (error instanceof LinkError) throw new CliError(CliErrorCode.CONFIG, error.message, ExitCode.USAGE, { cause: error });
    throw error;
  }
  const loginToken = login?.token;
  // A token file is read now, so a missing or empty one is a config error at once (exit 2), and again at each dial
  // and re-auth, so a rotated token is picked up.
  const readTokenFile = (path: string): string => {
    let text: string;
    try {
      text = readFileSync(path, 'utf8').trim();
    } catch (error) {
      throw new CliError(CliErrorCode.CONFIG, `cannot read token file ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, ExitCode.USAGE, {
        cause: error,
      });
    }
    if (text.length === 0) throw new CliError(CliErrorCode.CONFIG, `token file ${path} is empty`);
    return text;
  };
  if (!tokenText && tokenFile) readTokenFile(tokenFile);
  const token = tokenText ? () => tokenText : tokenFile ? () => readTokenFile(tokenFile) : () => loginToken as string;
  let proofKey: KeyObject | undefined;
  if (login) {
    try {
      proofKey = createPrivateKey(login.proofKeyPem);
    } catch (error) {
      throw new CliError(CliErrorCode.CACHE, `the proof key cached for context "${login.context}" does not load: run narrowlink login again`, ExitCode.USAGE, { cause: error });
    }
  }
  const caFileText = flags.caFile ?? env.NARROWLINK_CA_FILE;
  const caFile = caFileText ? expandPath(caFileText, env) : file.caFile;
  const mode = flags.mode ?? env.NARROWLINK_MODE ?? file.mode ?? 'auto';
  if (mode !== 'auto' && mode !== 'direct' && mode !== 'relay') throw new CliError(CliErrorCode.USAGE, `--mode must be auto, direct or relay, got "${mode}"`);
  let caPem: string | undefined;
  if (caFile) {
    try {
      caPem = readFileSync(caFile, 'utf8');
    } catch (error) {
      throw new CliError(CliErrorCode.CONFIG, `cannot read CA file ${caFile}: ${(error as Error).message}`, 2, { cause: error });
    }
  }
  if (!caFile && login && login.caPem.length > 0) caPem = login.caPem;
  return { gateway, token, caPem, mode, configPath: existsSync(configPath) ? configPath : undefined, ...(login ? { login, proofKey } : {}) };
}
