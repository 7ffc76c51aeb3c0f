/**
 * The login exchange with the API server (issue 11 contract): read the discovery ConfigMap, create a
 * ClientLoginRequest carrying our Ed25519 public key, watch it until the operator writes the token (or a
 * `Ready=False` condition), delete it. The user's Kubernetes credential goes to the API server only; the token that
 * comes back is bound to our key and useless without it.
 *
 * Every failure becomes a CliError whose code and exit status say what to do (see docs/errors.md, client-cli).
 */
import { type KubeClient, KubeError, KubeErrorCode, type KubeObject, Resources, type ResourceType } from '@narrowlink/kube';
import { CliError, CliErrorCode, ExitCode } from '../errors.ts';

/** Name of the ConfigMap the chart publishes in its release namespace. */
export const DISCOVERY_CONFIGMAP = 'narrowlink-discovery';
/** The namespace `login` looks in when no `-n` is given (the chart's documented release namespace). */
export const DEFAULT_NAMESPACE = 'narrowlink-system';
/** The ClusterRole the chart ships for `login` (create/get/list/watch/delete on clientloginrequests). */
export const LOGIN_CLUSTER_ROLE = 'narrowlink-login';
/** How long `login` waits for the operator to answer a request, ms. */
export const LOGIN_TIMEOUT_MS = 30_000;
/** The field manager our writes are recorded under. */
export const FIELD_MANAGER = 'narrowlink-cli';

/** Where ClientLoginRequests live (the CRD is the operator's; the CLI only needs its coordinates). */
export const loginRequestType = {
  group: 'narrowlink.io',
  version: 'v1alpha1',
  plural: 'clientloginrequests',
  kind: 'ClientLoginRequest',
  namespaced: true,
} as const satisfies ResourceType;

/** What the discovery ConfigMap says. */
export interface Discovery {
  gatewayUrls: string[];
  /** PEM bundle signing the gateway's certificate ('' when none is needed). */
  caPem: string;
  natProbePorts: number[];
  loginNamespace: string;
  /** The operator's cap on token lifetimes, seconds (undefined when not published). */
  tokenTtlSeconds: number | undefined;
}

/** Where the exchange talks: for messages (`server`) and the discovery namespace. */
export interface ExchangeTarget {
  /** The API server URL, for messages. */
  server: string;
  /** The kube context, for messages. */
  context: string;
}

function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || h.startsWith('127.');
}

function invalidDiscovery(namespace: string, message: string): CliError {
  return new CliError(
    CliErrorCode.DISCOVERY_INVALID,
    `ConfigMap ${namespace}/${DISCOVERY_CONFIGMAP} is not usable: ${message}; ask your cluster admin to upgrade or reinstall the narrowlink chart`,
    ExitCode.FAILURE,
  );
}

/** Validates the ConfigMap's `data` (throws NL_ERR_CLI_DISCOVERY_INVALID). */
export function parseDiscovery(data: Record<string, unknown> | undefined, namespace: string): Discovery {
  const text = (key: string): string | undefined => {
    const value = data?.[key];
    return typeof value === 'string' ? value : undefined;
  };
  const jsonArray = (key: string): unknown[] => {
    const raw = text(key);
    if (raw === undefined) throw invalidDiscovery(namespace, `data.${key} is missing`);
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch {
      throw invalidDiscovery(namespace, `data.${key} is not JSON`);
    }
    if (!Array.isArray(value)) throw invalidDiscovery(namespace, `data.${key} is not a JSON array`);
    return value;
  };
  const gatewayUrls = jsonArray('gatewayUrls');
  if (gatewayUrls.length === 0) throw invalidDiscovery(namespace, 'data.gatewayUrls is empty');
  for (const url of gatewayUrls) {
    let parsed: URL;
    try {
      parsed = new URL(String(url));
    } catch {
      throw invalidDiscovery(namespace, `gateway URL ${JSON.stringify(url)} is not a URL`);
    }
    // A token must never go out in cleartext: ws:// only where it cannot leave the machine.
    if (!(parsed.protocol === 'wss:' || (parsed.protocol === 'ws:' && isLoopbackHost(parsed.hostname)))) {
      throw invalidDiscovery(namespace, `gateway URL ${JSON.stringify(url)} must be wss:// (ws:// only on loopback)`);
    }
  }
  const natProbePorts = text('natProbePorts') === undefined ? [] : jsonArray('natProbePorts');
  if (!natProbePorts.every((p) => Number.isInteger(p) && (p as number) > 0 && (p as number) < 65536)) {
    throw invalidDiscovery(namespace, 'data.natProbePorts must be UDP port numbers');
  }
  const loginNamespace = text('loginNamespace');
  if (!loginNamespace || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(loginNamespace)) throw invalidDiscovery(namespace, 'data.loginNamespace is not a namespace name');
  const ttlText = text('tokenTtlSeconds');
  const tokenTtlSeconds = ttlText === undefined ? undefined : Number(ttlText);
  if (tokenTtlSeconds !== undefined && !(Number.isInteger(tokenTtlSeconds) && tokenTtlSeconds > 0)) {
    throw invalidDiscovery(namespace, 'data.tokenTtlSeconds is not a positive integer');
  }
  return { gatewayUrls: gatewayUrls.map(String), caPem: text('ca.crt') ?? '', natProbePorts: natProbePorts as number[], loginNamespace, tokenTtlSeconds };
}

/**
 * Maps an API failure to the CLI's codes: unreachable (exit 4), credential refused (exit 3), anything else (exit 1).
 * `what` names the call for the message.
 */
export function kubeFailure(error: unknown, target: ExchangeTarget, what: string): CliError {
  if (error instanceof CliError) return error;
  if (error instanceof KubeError) {
    if (error.code === KubeErrorCode.TRANSPORT) {
      return new CliError(
        CliErrorCode.KUBE_UNREACHABLE,
        `cannot reach the API server ${target.server} of context "${target.context}" (${what}): ${error.message}; does kubectl get ns work?`,
        ExitCode.UNREACHABLE,
        { cause: error },
      );
    }
    if (error.status === 401) {
      return new CliError(
        CliErrorCode.KUBE_UNAUTHORIZED,
        `the API server ${target.server} did not accept the credential of context "${target.context}" (401): it expired or is wrong; log in to the cluster again (as for kubectl) and retry`,
        ExitCode.AUTH,
        { cause: error },
      );
    }
  }
  return new CliError(CliErrorCode.KUBE_API, `${what}: ${(error as Error).message}`, ExitCode.FAILURE, { cause: error });
}

/** Reads and validates the discovery ConfigMap in `namespace`. */
export async function readDiscovery(client: KubeClient, namespace: string, target: ExchangeTarget): Promise<Discovery> {
  const notInstalled = (why: string, cause?: unknown): CliError =>
    new CliError(
      CliErrorCode.NOT_INSTALLED,
      `narrowlink is not installed in namespace "${namespace}" of context "${target.context}" (${why}): pass -n with the namespace of the narrowlink chart (helm list -A shows it)`,
      ExitCode.USAGE,
      cause === undefined ? undefined : { cause },
    );
  let configMap: KubeObject | undefined;
  try {
    configMap = await client.get(Resources.configMap, namespace, DISCOVERY_CONFIGMAP);
  } catch (error) {
    // The chart lets every authenticated user get this one ConfigMap, so a 403 means no chart there (an ordinary
    // user may not even learn whether a ConfigMap exists in a namespace that is not theirs).
    if (error instanceof KubeError && error.status === 403) throw notInstalled(`ConfigMap ${DISCOVERY_CONFIGMAP} is not readable: ${error.message}`, error);
    throw kubeFailure(error, target, `reading ConfigMap ${namespace}/${DISCOVERY_CONFIGMAP}`);
  }
  if (!configMap) throw notInstalled(`no ConfigMap ${DISCOVERY_CONFIGMAP}`);
  return parseDiscovery(configMap.data as Record<string, unknown> | undefined, namespace);
}

/** What the operator issued. */
export interface IssuedToken {
  token: string;
  /** RFC 3339. */
  expiresAt: string;
  /** From the token's claims (what the gateway will see). */
  username: string;
  groups: string[];
  /** The request's name (already deleted). */
  requestName: string;
}

/** The payload of a JWT, unverified: only to show the user who they are (the gateway verifies). */
function claimsOf(token: string): { sub?: unknown; groups?: unknown; exp?: unknown } {
  try {
    return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { sub?: unknown; groups?: unknown; exp?: unknown };
  } catch {
    return {};
  }
}

interface Condition {
  type?: string;
  status?: string;
  reason?: string;
  message?: string;
}

/** The outcome in a request object: the token, a refusal (thrown), or undefined (not yet). */
function outcomeOf(object: KubeObject, namespace: string): Omit<IssuedToken, 'requestName'> | undefined {
  const status = (object.status ?? {}) as { token?: unknown; expiresAt?: unknown; conditions?: Condition[] };
  const ready = (Array.isArray(status.conditions) ? status.conditions : []).find((c) => c?.type === 'Ready');
  if (ready?.status === 'False') {
    const reason = ready.reason ?? 'Unknown';
    const hint =
      reason === 'RateLimited'
        ? 'wait a minute and run narrowlink login again'
        : reason === 'Denied'
          ? `the operator's admission webhook did not stamp the request: ask your cluster admin to check the narrowlink webhook in namespace "${namespace}"`
          : 'report this to your cluster admin with the message';
    throw new CliError(CliErrorCode.LOGIN_REFUSED, `the operator refused the login (${reason}): ${ready.message ?? ''}; ${hint}`, ExitCode.AUTH);
  }
  if (typeof status.token !== 'string' || status.token.length === 0) return undefined;
  const claims = claimsOf(status.token);
  const spec = (object.spec ?? {}) as { username?: unknown; groups?: unknown };
  const expFromClaims = typeof claims.exp === 'number' ? new Date(claims.exp * 1000).toISOString() : undefined;
  const expiresAt = typeof status.expiresAt === 'string' && !Number.isNaN(Date.parse(status.expiresAt)) ? status.expiresAt : expFromClaims;
  if (!expiresAt) throw new CliError(CliErrorCode.LOGIN_REFUSED, 'the operator issued a token without an expiry', ExitCode.FAILURE);
  const username = typeof claims.sub === 'string' ? claims.sub : typeof spec.username === 'string' ? spec.username : '';
  const groupsSource = Array.isArray(claims.groups) ? claims.groups : Array.isArray(spec.groups) ? spec.groups : [];
  return { token: status.token, expiresAt, username, groups: groupsSource.filter((g): g is string => typeof g === 'string') };
}

/** Options of {@link requestToken}. */
export interface RequestTokenOptions {
  /** The namespace to create the request in (discovery's `loginNamespace`). */
  namespace: string;
  /** Our Ed25519 public key, JWK `x`. */
  publicKeyX: string;
  /** Requested lifetime; the operator caps it. Default: the cap. */
  ttlSeconds?: number;
  /** How long to wait for the operator, ms (default {@link LOGIN_TIMEOUT_MS}). */
  timeoutMs?: number;
}

/**
 * Creates a ClientLoginRequest, waits for its outcome (a watch from the create's resourceVersion, so no update is
 * missed; polling if this user may not watch), and deletes it whatever happened.
 */
export async function requestToken(client: KubeClient, target: ExchangeTarget, options: RequestTokenOptions): Promise<IssuedToken> {
  const { namespace } = options;
  const timeoutMs = options.timeoutMs ?? LOGIN_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  let created: KubeObject;
  try {
    created = await client.create(
      loginRequestType,
      {
        apiVersion: `${loginRequestType.group}/${loginRequestType.version}`,
        kind: loginRequestType.kind,
        metadata: { generateName: 'login-', namespace },
        spec: { publicKey: options.publicKeyX, ...(options.ttlSeconds ? { ttlSeconds: options.ttlSeconds } : {}) },
      },
      { fieldManager: FIELD_MANAGER },
    );
  } catch (error) {
    throw createFailure(error, target, namespace);
  }
  const name = created.metadata.name as string;
  try {
    const issued = outcomeOf(created, namespace) ?? (await waitForOutcome(client, target, namespace, name, created.metadata.resourceVersion ?? '', deadline, timeoutMs));
    return { ...issued, requestName: name };
  } finally {
    // Best effort: the token was read (or never will be); the operator collects what we cannot delete.
    await client.delete(loginRequestType, namespace, name).catch(() => undefined);
  }
}

function createFailure(error: unknown, target: ExchangeTarget, namespace: string): CliError {
  if (error instanceof KubeError && error.code === KubeErrorCode.API) {
    const webhook = /admission webhook/i.test(error.message);
    if (webhook) {
      return new CliError(CliErrorCode.LOGIN_REFUSED, `the narrowlink admission webhook refused the login request: ${error.message}`, ExitCode.AUTH, { cause: error });
    }
    if (error.status === 403) {
      return new CliError(
        CliErrorCode.LOGIN_FORBIDDEN,
        `you may not log in to narrowlink in context "${target.context}": missing permission to create clientloginrequests.narrowlink.io in namespace "${namespace}". ` +
          `Ask a cluster admin to bind the ClusterRole ${LOGIN_CLUSTER_ROLE} to you or your group (kubectl create rolebinding narrowlink-login-YOU -n ${namespace} --clusterrole=${LOGIN_CLUSTER_ROLE} --user=YOU), ` +
          `or to set the chart value login.subjects. (API server: ${error.message})`,
        ExitCode.AUTH,
        { cause: error },
      );
    }
    if (error.status === 404) {
      return new CliError(
        CliErrorCode.NOT_INSTALLED,
        `the API server of context "${target.context}" does not know ClientLoginRequests (namespace "${namespace}"): the narrowlink chart installed there is older than narrowlink login; ask your cluster admin to upgrade it`,
        ExitCode.USAGE,
        { cause: error },
      );
    }
    if (error.status === 400 || error.status === 422) {
      return new CliError(CliErrorCode.LOGIN_REFUSED, `the API server refused the login request: ${error.message}`, ExitCode.AUTH, { cause: error });
    }
  }
  return kubeFailure(error, target, `creating a ClientLoginRequest in namespace "${namespace}"`);
}

function timeoutError(namespace: string, timeoutMs: number): CliError {
  return new CliError(
    CliErrorCode.LOGIN_TIMEOUT,
    `no token from the narrowlink operator within ${Math.round(timeoutMs / 1000)} s: is it running? (kubectl get pods -n ${namespace}; kubectl get nllogin -n ${namespace})`,
    ExitCode.FAILURE,
  );
}

async function waitForOutcome(
  client: KubeClient,
  target: ExchangeTarget,
  namespace: string,
  name: string,
  fromVersion: string,
  deadline: number,
  timeoutMs: number,
): Promise<Omit<IssuedToken, 'requestName'>> {
  let resourceVersion = fromVersion;
  let poll = false;
  for (;;) {
    const remainingMs = deadline - Date.now();
    if (remainingMs <= 0) throw timeoutError(namespace, timeoutMs);
    if (poll) {
      const object = await client.get(loginRequestType, namespace, name).catch((error: unknown) => {
        throw kubeFailure(error, target, `reading ClientLoginRequest ${namespace}/${name}`);
      });
      if (!object) throw new CliError(CliErrorCode.LOGIN_REFUSED, `ClientLoginRequest ${namespace}/${name} was deleted before a token was issued`, ExitCode.FAILURE);
      const outcome = outcomeOf(object, namespace);
      if (outcome) return outcome;
      await new Promise((resolve) => setTimeout(resolve, Math.min(250, remainingMs)));
      continue;
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), remainingMs);
    let outcome: Omit<IssuedToken, 'requestName'> | undefined;
    let failure: unknown;
    try {
      await client.watch(
        loginRequestType,
        { namespace, fieldSelector: `metadata.name=${name}`, resourceVersion, timeoutSeconds: Math.max(1, Math.ceil(remainingMs / 1000)), signal: controller.signal },
        (type, object) => {
          if (outcome || failure) return;
          if (object.metadata.resourceVersion) resourceVersion = object.metadata.resourceVersion;
          try {
            if (type === 'DELETED') {
              throw new CliError(CliErrorCode.LOGIN_REFUSED, `ClientLoginRequest ${namespace}/${name} was deleted before a token was issued`, ExitCode.FAILURE);
            }
            outcome = outcomeOf(object, namespace);
          } catch (error) {
            failure = error;
          }
          if (outcome || failure) controller.abort();
        },
      );
    } catch (error) {
      if (!outcome && !failure && !controller.signal.aborted) {
        if (error instanceof KubeError && error.status === 403) poll = true;
        else if (error instanceof KubeError && error.gone) resourceVersion = '';
        else throw kubeFailure(error, target, `watching ClientLoginRequest ${namespace}/${name}`);
      }
    } finally {
      clearTimeout(timer);
    }
    if (failure) throw failure;
    if (outcome) return outcome;
    if (resourceVersion === '') {
      // 410 Gone: start again from the object as it is now.
      const object = await client.get(loginRequestType, namespace, name).catch(() => undefined);
      const now = object ? outcomeOf(object, namespace) : undefined;
      if (now) return now;
      resourceVersion = object?.metadata.resourceVersion ?? fromVersion;
    }
  }
}
