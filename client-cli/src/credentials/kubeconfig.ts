/**
 * The developer's kubeconfig, read as kubectl reads it. Authentication (client certificates, bearer tokens, token
 * files, exec plugins, in-cluster ServiceAccount) is `@kubernetes/client-node`'s `KubeConfig`: never a hand-written
 * subset. That module costs about 0.7 s to import, so it is imported only by the commands that talk to the API
 * server (`login`, and a token renewal); `ls`, `forward` and friends only need the current context's *name* to
 * find its cache file, which {@link currentContextName} reads with the same rules and no import.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, delimiter as hostDelimiter, isAbsolute, join, posix, win32 } from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import { RestKubeClient } from '@narrowlink/kube';
import { parse as parseYaml } from 'yaml';
import { CliError, CliErrorCode, ExitCode } from '../errors.ts';

/** client-node's name for the context it builds from a pod's ServiceAccount mount (no kubeconfig file). */
export const IN_CLUSTER_CONTEXT = 'inClusterContext';
/** Where the kubelet mounts a pod's ServiceAccount token. */
export const SERVICE_ACCOUNT_TOKEN_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/** Which kubeconfig and context a command uses, and the environment to read the defaults from. */
export interface KubeSelection {
  /** `--kubeconfig FILE`: this file only, as kubectl does (the `KUBECONFIG` list is then ignored). */
  kubeconfig?: string | undefined;
  /** `--context NAME`: this context instead of the file's `current-context`. */
  context?: string | undefined;
  env?: NodeJS.ProcessEnv;
  platform?: NodeJS.Platform;
  /** Injected for tests (default {@link SERVICE_ACCOUNT_TOKEN_FILE}). */
  serviceAccountTokenFile?: string;
}

function kubeconfigError(message: string, cause?: unknown): CliError {
  return new CliError(CliErrorCode.KUBECONFIG, message, ExitCode.USAGE, cause === undefined ? undefined : { cause });
}

/** The home directory kubectl uses: `$HOME`; on Windows the first of HOME, HOMEDRIVE+HOMEPATH, USERPROFILE with a `.kube\config`. */
function kubeHome(env: NodeJS.ProcessEnv, platform: NodeJS.Platform): string | undefined {
  if (platform !== 'win32') return env.HOME || undefined;
  const candidates = [env.HOME, env.HOMEDRIVE && env.HOMEPATH ? win32.join(env.HOMEDRIVE, env.HOMEPATH) : undefined, env.USERPROFILE].filter(
    (c): c is string => Boolean(c),
  );
  return candidates.find((dir) => existsSync(win32.join(dir, '.kube', 'config'))) ?? candidates[0];
}

/** The kubeconfig files in kubectl's order: `--kubeconfig`, else the `KUBECONFIG` list, else `~/.kube/config`. */
export function kubeconfigFiles(selection: KubeSelection = {}): string[] {
  if (selection.kubeconfig) return [selection.kubeconfig];
  const env = selection.env ?? process.env;
  const platform = selection.platform ?? process.platform;
  if (env.KUBECONFIG && env.KUBECONFIG.length > 0) {
    const delimiter = platform === 'win32' ? ';' : platform === process.platform ? hostDelimiter : ':';
    return env.KUBECONFIG.split(delimiter).filter((f) => f.length > 0);
  }
  const home = kubeHome(env, platform);
  if (!home) return [];
  return [(platform === 'win32' ? win32 : posix).join(home, '.kube', 'config')];
}

/**
 * The name of the context a command uses, without importing client-node: `--context`, else the first
 * `current-context` in the kubeconfig files (kubectl's merge rule: the first file that sets it wins), else
 * {@link IN_CLUSTER_CONTEXT} inside a pod, else `undefined` (no kubeconfig at all). Unreadable files are skipped
 * here; `login` reports them.
 */
export function currentContextName(selection: KubeSelection = {}): string | undefined {
  if (selection.context) return selection.context;
  const files = kubeconfigFiles(selection);
  let anyFile = false;
  for (const file of files) {
    let doc: unknown;
    try {
      doc = parseYaml(readFileSync(file, 'utf8'));
      anyFile = true;
    } catch {
      continue;
    }
    const current = (doc as { 'current-context'?: unknown } | null)?.['current-context'];
    if (typeof current === 'string' && current.length > 0) return current;
  }
  if (anyFile || selection.kubeconfig) return undefined;
  return existsSync(selection.serviceAccountTokenFile ?? SERVICE_ACCOUNT_TOKEN_FILE) ? IN_CLUSTER_CONTEXT : undefined;
}

/**
 * kubectl's `users[].user.tokenFile` (a bearer token read from a file, whitespace trimmed): client-node 2.0.1 only
 * knows a non-standard `token-file` and does not trim, so the token is read here, relative to the kubeconfig that
 * names it, for users without a token of their own (the first file naming a user wins, as in the merge).
 */
function applyTokenFiles(kc: KubeConfig, files: string[]): void {
  const seen = new Set<string>();
  for (const file of files) {
    const doc = parseYaml(readFileSync(file, 'utf8')) as { users?: Array<{ name?: unknown; user?: { tokenFile?: unknown } }> } | null;
    for (const entry of doc?.users ?? []) {
      if (typeof entry?.name !== 'string' || seen.has(entry.name)) continue;
      seen.add(entry.name);
      const tokenFile = entry.user?.tokenFile;
      if (typeof tokenFile !== 'string' || tokenFile.length === 0) continue;
      const index = kc.users.findIndex((u) => u.name === entry.name);
      const user = kc.users[index];
      if (!user || user.token) continue;
      const path = isAbsolute(tokenFile) ? tokenFile : join(dirname(file), tokenFile);
      kc.users[index] = { ...user, token: readFileSync(path, 'utf8').trim() };
    }
  }
}

/** A kubeconfig loaded for one context. */
export interface LoadedKubeConfig {
  kc: KubeConfig;
  context: string;
  cluster: string;
  server: string;
  /** The kubeconfig file named with `--kubeconfig`, or null (kubectl's default rules). */
  kubeconfig: string | null;
}

/**
 * Loads the kubeconfig with client-node exactly as kubectl would (KUBECONFIG list merged with the first file's
 * current-context winning, `~/.kube/config`, in-cluster) and selects the context. Throws NL_ERR_CLI_KUBECONFIG
 * when there is none, it cannot be parsed, or the context does not exist.
 */
export async function loadKubeConfig(selection: KubeSelection = {}): Promise<LoadedKubeConfig> {
  // Only KubeConfig (its module, not the package index, whose generated API clients and models take most of a
  // second to load): `login` and the commands that read a kube context start that much faster.
  const { KubeConfig } = await import('@kubernetes/client-node/dist/config.js');
  const kc = new KubeConfig();
  try {
    if (selection.kubeconfig) kc.loadFromFile(selection.kubeconfig);
    else {
      // kubectl's merge of the KUBECONFIG list: missing files are skipped, the first file that names a cluster,
      // user or context wins (client-node throws on a duplicate and lets a later current-context win).
      const files = kubeconfigFiles(selection).filter((file) => existsSync(file));
      // No file: inside a pod, its ServiceAccount (client-node's in-cluster config, as kubectl does there).
      if (files.length === 0 && existsSync(selection.serviceAccountTokenFile ?? SERVICE_ACCOUNT_TOKEN_FILE)) kc.loadFromCluster();
      for (const [index, file] of files.entries()) {
        if (index === 0) {
          kc.loadFromFile(file);
          continue;
        }
        const part = new KubeConfig();
        part.loadFromFile(file);
        for (const cluster of part.clusters) if (!kc.getCluster(cluster.name)) kc.addCluster(cluster);
        for (const user of part.users) if (!kc.getUser(user.name)) kc.addUser(user);
        for (const context of part.contexts) if (!kc.getContextObject(context.name)) kc.addContext(context);
      }
    }
    applyTokenFiles(kc, selection.kubeconfig ? [selection.kubeconfig] : kubeconfigFiles(selection).filter((file) => existsSync(file)));
  } catch (error) {
    const where = selection.kubeconfig ?? (kubeconfigFiles(selection).join(', ') || '~/.kube/config');
    throw kubeconfigError(`cannot load the kubeconfig (${where}): ${(error as Error).message}`, error);
  }
  if (kc.getContexts().length === 0) {
    throw kubeconfigError('no kubeconfig found: set KUBECONFIG, pass --kubeconfig FILE, or create ~/.kube/config (kubectl config view should show a context)');
  }
  // The same name currentContextName() finds, so login and the commands that use its cache agree.
  const wanted = selection.context ?? currentContextName({ ...selection, serviceAccountTokenFile: '' });
  if (wanted && wanted !== kc.getCurrentContext()) {
    if (!kc.getContextObject(wanted)) throw kubeconfigError(`no context "${wanted}" in the kubeconfig; kubectl config get-contexts lists them`);
    kc.setCurrentContext(wanted);
  }
  const context = kc.getCurrentContext();
  if (!context || !kc.getContextObject(context)) throw kubeconfigError('the kubeconfig has no current context: pass --context NAME (kubectl config get-contexts)');
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw kubeconfigError(`context "${context}" names a cluster that is not in the kubeconfig`);
  return { kc, context, cluster: cluster.name, server: cluster.server, kubeconfig: selection.kubeconfig ?? null };
}

/** A REST client with the context's credentials (exec plugins run now, once). */
export async function kubeClientFor(loaded: LoadedKubeConfig, options: { requestTimeoutMs?: number } = {}): Promise<RestKubeClient> {
  try {
    return await RestKubeClient.fromKubeConfig(loaded.kc, { requestTimeoutMs: options.requestTimeoutMs ?? 15_000 });
  } catch (error) {
    // An exec plugin that fails, a token file that is missing, a client key that does not parse.
    throw new CliError(CliErrorCode.KUBE_UNAUTHORIZED, `cannot use the credential of context "${loaded.context}": ${(error as Error).message}`, ExitCode.AUTH, {
      cause: error,
    });
  }
}
