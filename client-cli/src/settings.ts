/**
 * Where the CLI's settings come from, highest first: flags, environment, config file
 * (`--config`, `$NARROWLINK_CONFIG`, or `~/.config/narrowlink/config.yaml`).
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { CliError, CliErrorCode } from './errors.ts';

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
  token: () => string;
  caPem: string | undefined;
  mode: 'auto' | 'direct' | 'relay';
  configPath: string | undefined;
}

export interface SettingsInput {
  gateway?: string | undefined;
  token?: string | undefined;
  tokenFile?: string | undefined;
  caFile?: string | undefined;
  config?: string | undefined;
  mode?: string | undefined;
}

export function defaultConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME && env.XDG_CONFIG_HOME.length > 0 ? env.XDG_CONFIG_HOME : join(homedir(), '.config');
  return join(base, 'narrowlink', 'config.yaml');
}

export function resolveSettings(flags: SettingsInput, env: NodeJS.ProcessEnv = process.env): Settings {
  const explicitPath = flags.config ?? env.NARROWLINK_CONFIG;
  const configPath = explicitPath ?? defaultConfigPath(env);
  let file: z.infer<typeof fileSettingsSchema> = {};
  if (existsSync(configPath)) {
    try {
      const parsed = fileSettingsSchema.safeParse(parseYaml(readFileSync(configPath, 'utf8')) ?? {});
      if (!parsed.success) {
        const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
        throw new CliError(CliErrorCode.CONFIG, `${configPath}: ${issues}`);
      }
      file = parsed.data;
    } catch (error) {
      if (error instanceof CliError) throw error;
      throw new CliError(CliErrorCode.CONFIG, `${configPath}: ${(error as Error).message}`, 2, { cause: error });
    }
  } else if (explicitPath) {
    throw new CliError(CliErrorCode.CONFIG, `config file ${explicitPath} does not exist`);
  }
  const gateway = flags.gateway ?? env.NARROWLINK_GATEWAY ?? file.gateway;
  if (!gateway) throw new CliError(CliErrorCode.CONFIG, `no gateway: pass --gateway URL, set NARROWLINK_GATEWAY, or add "gateway:" to ${configPath}`);
  if (!/^wss?:\/\//.test(gateway)) throw new CliError(CliErrorCode.CONFIG, `gateway URL must start with ws:// or wss://, got "${gateway}"`);
  // The highest level that names a token wins (a --token-file flag beats `token:` in the file); within
  // one level an inline token beats a token file.
  const tokenLevel = [
    { text: flags.token, file: flags.tokenFile },
    { text: env.NARROWLINK_TOKEN, file: env.NARROWLINK_TOKEN_FILE },
    { text: file.token, file: file.tokenFile },
  ].find((level) => level.text || level.file);
  const tokenText = tokenLevel?.text;
  const tokenFile = tokenLevel?.file;
  if (!tokenText && !tokenFile) {
    throw new CliError(CliErrorCode.CONFIG, `no token: pass --token, set NARROWLINK_TOKEN or NARROWLINK_TOKEN_FILE, or add "token:" to ${configPath}`);
  }
  const token = tokenText ? () => tokenText : () => readFileSync(tokenFile as string, 'utf8').trim();
  const caFile = flags.caFile ?? env.NARROWLINK_CA_FILE ?? file.caFile;
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
  return { gateway, token, caPem, mode, configPath: existsSync(configPath) ? configPath : undefined };
}
