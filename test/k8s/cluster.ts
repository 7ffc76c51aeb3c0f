/**
 * node:test fixture for the "Kubernetes API" tier: a real kube-apiserver 1.20.2 + etcd built from Debian's
 * archive by `test/k8s/apiserver.sh` (see ../shared/notes/k8s-api-tier.md for what it can and cannot prove).
 *
 *   describe('my suite', () => {
 *     const k8s = useApiServer();                       // one apiserver for the suite (before/after hooks)
 *     it('does a thing', async (t) => {
 *       const api = k8s.require(t);                     // t.skip('k8s tier: SKIPPED (...)') when unavailable
 *       if (!api) return;
 *       const core = api.kubeConfig().makeApiClient(CoreV1Api);
 *     });
 *   });
 *
 * A machine that cannot build the apiserver (not Debian 12 amd64, offline, no root) yields a *skipped* test with
 * the reason, never a pass. Any other failure to start rejects and fails the suite. Set NARROWLINK_K8S_SKIP=1 to
 * skip the tier on purpose.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { TestContext } from 'node:test';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import { KubeConfig } from '@kubernetes/client-node';

const script = join(dirname(fileURLToPath(import.meta.url)), 'apiserver.sh');

/** Exit code of `apiserver.sh build|up` meaning "this machine cannot run the tier". */
const EXIT_SKIPPED = 3;

/** A running kube-apiserver + etcd on 127.0.0.1, admin access via a static token in `system:masters`. */
export interface ApiServer {
  /** `https://127.0.0.1:PORT`; the port survives {@link ApiServer.restart}. */
  server: string;
  /** Absolute path of a kubeconfig (server, CA, admin token) for kubectl/helm/client-node. */
  kubeconfigPath: string;
  /** Admin bearer token (group `system:masters`). */
  token: string;
  /** PEM of the CA that signed the apiserver's self-signed serving certificate. */
  caPem: string;
  /** Temp directory holding etcd data, certs, keys and logs (`apiserver.log`, `etcd.log`); removed by stop(). */
  dir: string;
  /** CA (`--client-ca-file`) that signs client certificates the apiserver accepts: CN = user, O = groups. */
  clientCaCertPath: string;
  /** Private key (PEM, EC P-256) of {@link ApiServer.clientCaCertPath}. */
  clientCaKeyPath: string;
  /** PEM private key that signs ServiceAccount tokens (`--service-account-signing-key-file`). */
  serviceAccountKeyPath: string;
  /** Issuer of ServiceAccount tokens (`--service-account-issuer`). */
  serviceAccountIssuer: string;
  /** Current pids; `apiserverPid` changes on restart(). */
  etcdPid: number;
  apiserverPid: number;
  /** A fresh client-node KubeConfig for this server (admin token, verified TLS). */
  kubeConfig(): KubeConfig;
  /**
   * `kill -9` the apiserver and start it again on the same port with the same etcd and certificates; resolves
   * once `/readyz` is ok. Open watches end; the watch cache starts over, so old resourceVersions get 410 Gone.
   */
  restart(): Promise<void>;
  /** Stop both processes and remove {@link ApiServer.dir}. Idempotent. */
  stop(): Promise<void>;
}

/** Returned instead of an {@link ApiServer} when this machine cannot run the tier. */
export interface ApiServerSkipped {
  skipped: string;
}

export type ApiServerResult = ApiServer | ApiServerSkipped;

interface ReadyLine {
  event: 'ready';
  server: string;
  kubeconfig: string;
  token: string;
  caFile: string;
  dir: string;
  etcdPid: number;
  apiserverPid: number;
}

interface ScriptResult {
  code: number;
  stdout: string;
  stderr: string;
}

function runScript(args: string[], timeoutMs: number, env?: NodeJS.ProcessEnv): Promise<ScriptResult> {
  return new Promise((resolve) => {
    execFile(
      'bash',
      [script, ...args],
      { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, killSignal: 'SIGKILL', ...(env ? { env } : {}) },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

function skipReason(result: ScriptResult): string {
  const m = /k8s tier: SKIPPED \((.*)\)\s*$/m.exec(result.stdout);
  return m?.[1] ?? 'apiserver.sh reported the tier as unavailable';
}

function tail(text: string, lines = 30): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

function parseReady(result: ScriptResult, what: string): ReadyLine {
  const line = result.stdout
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l.startsWith('{') && l.includes('"ready"'));
  if (result.code !== 0 || !line) {
    throw new Error(`apiserver.sh ${what} failed (exit ${result.code}):\n${tail(result.stderr)}`);
  }
  return JSON.parse(line) as ReadyLine;
}

const running = new Set<ApiServer>();
let exitHookInstalled = false;

/** Last resort when a test file exits without stop(): kill synchronously (the script's reaper removes the dir). */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const api of running) {
      for (const pid of [api.apiserverPid, api.etcdPid]) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  });
}

/** A user the apiserver authenticates by a static bearer token (`--token-auth-file`). */
export interface StaticTokenUser {
  token: string;
  user: string;
  uid: string;
  groups: string[];
}

/** Options of {@link startApiServer}. */
export interface StartApiServerOptions {
  /** Static-token users besides the admin (read at startup; they survive restart()). */
  staticTokenUsers?: StaticTokenUser[];
}

function tokenCsvField(value: string): string {
  if (/[\n\r"]/.test(value)) throw new Error(`static token field ${JSON.stringify(value)}: no quotes or newlines`);
  return `"${value}"`;
}

/**
 * Build (cached after the first time, ~3 min cold) and start a kube-apiserver + etcd.
 * Resolves `{ skipped: reason }` when this machine cannot run the tier; rejects on any other failure.
 * The processes are tied to this process: if it dies without stop(), a reaper removes them within a second.
 */
export async function startApiServer(options: StartApiServerOptions = {}): Promise<ApiServerResult> {
  if (process.env.NARROWLINK_K8S_SKIP === '1') return { skipped: 'NARROWLINK_K8S_SKIP=1' };
  const build = await runScript(['build'], 30 * 60_000);
  if (build.code === EXIT_SKIPPED) return { skipped: skipReason(build) };
  if (build.code !== 0) throw new Error(`apiserver.sh build failed (exit ${build.code}):\n${tail(build.stderr)}`);
  let env: NodeJS.ProcessEnv | undefined;
  let extraDir: string | undefined;
  if (options.staticTokenUsers && options.staticTokenUsers.length > 0) {
    extraDir = mkdtempSync(join(tmpdir(), 'nl-k8s-tokens-'));
    const file = join(extraDir, 'tokens.csv');
    const lines = options.staticTokenUsers.map((u) => [u.token, u.user, u.uid, u.groups.join(',')].map(tokenCsvField).join(','));
    writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o600 });
    env = { ...process.env, NARROWLINK_K8S_EXTRA_TOKENS: file };
  }
  const up = await runScript(['up', String(process.pid)], 5 * 60_000, env).finally(() => {
    if (extraDir) rmSync(extraDir, { recursive: true, force: true });
  });
  if (up.code === EXIT_SKIPPED) return { skipped: skipReason(up) };
  const ready = parseReady(up, 'up');

  let stopped = false;
  const api: ApiServer = {
    server: ready.server,
    kubeconfigPath: ready.kubeconfig,
    token: ready.token,
    caPem: readFileSync(ready.caFile, 'utf8'),
    dir: ready.dir,
    clientCaCertPath: join(ready.dir, 'client-ca.crt'),
    clientCaKeyPath: join(ready.dir, 'client-ca.key'),
    serviceAccountKeyPath: join(ready.dir, 'sa.key'),
    serviceAccountIssuer: 'https://kubernetes.default.svc.cluster.local',
    etcdPid: ready.etcdPid,
    apiserverPid: ready.apiserverPid,
    kubeConfig() {
      const kc = new KubeConfig();
      kc.loadFromFile(ready.kubeconfig);
      return kc;
    },
    async restart() {
      if (stopped) throw new Error('apiserver already stopped');
      const again = parseReady(await runScript(['restart', ready.dir], 5 * 60_000), 'restart');
      api.apiserverPid = again.apiserverPid;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      running.delete(api);
      const down = await runScript(['down', ready.dir], 60_000);
      if (down.code !== 0) throw new Error(`apiserver.sh down failed (exit ${down.code}):\n${tail(down.stderr)}`);
    },
  };
  running.add(api);
  installExitHook();
  return api;
}

/** True when {@link startApiServer} could not run the tier here. */
export function isSkipped(result: ApiServerResult | undefined): result is ApiServerSkipped {
  return result !== undefined && 'skipped' in result;
}

const announced = new Set<string>();

/**
 * The running apiserver, or `undefined` after marking the test skipped with `k8s tier: SKIPPED (reason)` (shown
 * as `# SKIP` by the reporter, never counted as a pass). Call first thing in a test and return when undefined.
 * Throws when the fixture was never started (a bug in the suite, not a reason to skip).
 */
export function requireApiServer(t: TestContext, result: ApiServerResult | undefined): ApiServer | undefined {
  if (result === undefined) throw new Error('requireApiServer: the apiserver fixture was not started (missing before hook?)');
  if (isSkipped(result)) {
    const message = `k8s tier: SKIPPED (${result.skipped})`;
    if (!announced.has(message)) {
      announced.add(message);
      process.stderr.write(`${message}\n`);
    }
    t.skip(message);
    return undefined;
  }
  return result;
}

/** Handle returned by {@link useApiServer}. */
export interface ApiServerHandle {
  /** See {@link requireApiServer}. */
  require(t: TestContext): ApiServer | undefined;
  /** The fixture result once the `before` hook ran (undefined before). */
  readonly result: ApiServerResult | undefined;
}

/**
 * Register suite-level `before`/`after` hooks (call inside `describe`) that start ONE apiserver for the suite
 * and stop it afterwards.
 */
export function useApiServer(options: StartApiServerOptions = {}): ApiServerHandle {
  let result: ApiServerResult | undefined;
  before(async () => {
    result = await startApiServer(options);
  });
  after(async () => {
    if (result && !isSkipped(result)) await result.stop();
  });
  return {
    require: (t) => requireApiServer(t, result),
    get result() {
      return result;
    },
  };
}
