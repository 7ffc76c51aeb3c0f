/**
 * `narrowlink login`, `logout`, and the login part of `status`: who the cluster says you are, for which context,
 * and until when. Tokens and keys are never printed.
 */
import { type CacheLocation, type CachedLogin, cachePath, deleteLogin, readLogin } from '../credentials/cache.ts';
import { currentContextName, type KubeSelection } from '../credentials/kubeconfig.ts';
import { login } from '../credentials/login.ts';
import { EXPIRY_MARGIN_MS } from '../credentials/renewal.ts';
import { CliError, CliErrorCode, ExitCode } from '../errors.ts';
import type { OutputFormat } from '../reporter.ts';

/** `1h 5m`, `42s`: a duration for people. */
export function humanDuration(ms: number): string {
  const seconds = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s}s`;
  return `${s}s`;
}

/** The login facts a person or a script may see (no token, no key). */
export interface LoginSummary {
  state: 'logged-in' | 'expired' | 'not-logged-in';
  context: string | null;
  cluster?: string;
  server?: string;
  user?: string;
  groups?: string[];
  gateway?: string;
  expiresAt?: string;
  /** Seconds until expiry (negative once expired). */
  expiresInSeconds?: number;
  cacheFile?: string;
}

/** Summarises a cached login (or its absence) for `context`. */
export function summarise(context: string | undefined, entry: CachedLogin | undefined, location: CacheLocation = {}, nowMs = Date.now()): LoginSummary {
  if (!context) return { state: 'not-logged-in', context: null };
  if (!entry) return { state: 'not-logged-in', context, cacheFile: cachePath(context, location) };
  const expiresAtMs = Date.parse(entry.expiresAt);
  return {
    state: nowMs >= expiresAtMs - EXPIRY_MARGIN_MS ? 'expired' : 'logged-in',
    context,
    cluster: entry.cluster,
    server: entry.server,
    user: entry.username,
    groups: entry.groups,
    gateway: entry.gatewayUrls[0] as string,
    expiresAt: entry.expiresAt,
    expiresInSeconds: Math.round((expiresAtMs - nowMs) / 1000),
    cacheFile: cachePath(context, location),
  };
}

/** Human lines for a summary (the `status` table's login part). */
export function summaryLines(summary: LoginSummary, program: string): string[] {
  if (summary.state === 'not-logged-in') {
    return summary.context
      ? [`context:   ${summary.context}`, `login:     not logged in: run ${program} login`]
      : [`login:     not logged in, and no kube context (no kubeconfig): pass --gateway and --token, or set up kubectl first`];
  }
  const expiry =
    summary.state === 'expired'
      ? `EXPIRED at ${summary.expiresAt}: run ${program} login (or any command: it renews with your kubeconfig credential)`
      : `${summary.expiresAt} (in ${humanDuration((summary.expiresInSeconds ?? 0) * 1000)})`;
  return [
    `context:   ${summary.context}`,
    `cluster:   ${summary.cluster} (${summary.server})`,
    `user:      ${summary.user}`,
    `groups:    ${(summary.groups ?? []).join(', ') || '(none)'}`,
    `gateway:   ${summary.gateway}`,
    `expires:   ${expiry}`,
  ];
}

/** `narrowlink login`. */
export async function runLogin(
  options: KubeSelection & { namespace?: string | undefined; ttlSeconds?: number | undefined; timeoutMs?: number | undefined },
  output: OutputFormat,
  program: string,
): Promise<number> {
  const { entry, file } = await login(options);
  const summary = summarise(entry.context, entry, {});
  if (output === 'json') process.stdout.write(`${JSON.stringify({ ...summary, cacheFile: file }, null, 2)}\n`);
  else {
    process.stdout.write(
      `logged in to context "${entry.context}" as ${entry.username}${entry.groups.length > 0 ? ` (groups ${entry.groups.join(', ')})` : ''}\n` +
        `gateway ${entry.gatewayUrls[0]}; token expires ${entry.expiresAt} (in ${humanDuration(Date.parse(entry.expiresAt) - Date.now())})\n` +
        `try: ${program} ls\n`,
    );
  }
  return ExitCode.OK;
}

/** `narrowlink logout`: forgets the context's cached token and key. */
export function runLogout(selection: KubeSelection, output: OutputFormat): number {
  const context = currentContextName(selection);
  if (!context) throw new CliError(CliErrorCode.KUBECONFIG, 'no kube context: pass --context NAME (kubectl config get-contexts lists them)', ExitCode.USAGE);
  const removed = deleteLogin(context);
  if (output === 'json') process.stdout.write(`${JSON.stringify({ context, removed }, null, 2)}\n`);
  else process.stdout.write(removed ? `logged out of context "${context}"\n` : `not logged in to context "${context}"; nothing to do\n`);
  return ExitCode.OK;
}

/** The login summary of the selected context (for `status`). */
export function loginSummary(selection: KubeSelection): LoginSummary {
  const context = currentContextName(selection);
  return summarise(context, context ? readLogin(context) : undefined);
}
