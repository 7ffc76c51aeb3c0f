/**
 * Shared fixture for end-to-end tests: a whole Narrowlink stack on loopback, every component a real
 * process (gateway, agents, client commands), with a throw-away signing key, tokens and gateway
 * config file in a temp directory.
 *
 * Typical use, once per `describe`:
 *
 *   let stack: Stack;
 *   before(async () => {
 *     const echo = await startEchoServer();
 *     stack = await startStack({ tls: true, agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }] });
 *     await stack.startAgent('svc');
 *     forward = await stack.startForward(['svc:echo']);
 *   });
 *   after(() => stack.stop());
 *
 * Defaults: every client token is for subject {@link DEFAULT_CLIENT_SUBJECT} in group
 * {@link DEFAULT_CLIENT_GROUP}, and unless `policies` is given the config holds one Allow-everything
 * policy for that group in every namespace used by `agents`. Agent tokens are `namespace/name`.
 * Children get a clean environment: no inherited `NARROWLINK_*` variables and `XDG_CONFIG_HOME` inside the
 * stack directory, so a developer's `~/.config/narrowlink/config.yaml` cannot leak in.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { generateSigningKeyPair, signToken, type TokenType } from '@narrowlink/protocol';
import { registerChild, type StartedProcess, startProcess, stopChild } from '../helpers/processes.ts';
import { makeTestCertificate, type TestCertificate } from '../helpers/tls.ts';
import { NODE_OPTIONS, SERVER_DIST_DIR } from '../../scripts/build-server.ts';
import { SCRIPTS } from '../helpers/paths.ts';

/** Repository root and component entry points (shared with the other suites). */
export { ROOT, SCRIPTS } from '../helpers/paths.ts';

/** Subject of the default client token. */
export const DEFAULT_CLIENT_SUBJECT = 'e2e-user';
/** Group of the default client token; the default policy allows this group everything. */
export const DEFAULT_CLIENT_GROUP = 'e2e';

/** One exposed port of an agent in the gateway config (`host` defaults to 127.0.0.1 there and in the agent). */
export interface ExposeDocument {
  name: string;
  port: number;
  host?: string;
}

/** An agent entry of the gateway config document (input shape: defaults may be left out). */
export interface AgentDocument {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  mode?: 'auto' | 'direct' | 'relay';
  expose: ExposeDocument[];
}

/** A policy entry of the gateway config document; see protocol/src/gateway-config.ts for every field. */
export interface PolicyDocument {
  name: string;
  namespace?: string;
  expiresAt?: string;
  subjects: Array<{ kind: 'User' | 'Group'; name: string } | { kind: 'ServiceAccount'; name: string; namespace: string }>;
  rules: Array<{
    action: 'Allow' | 'Deny';
    agents?: { names?: string[]; selector?: { matchLabels?: Record<string, string>; matchExpressions?: unknown[] } };
    ports?: Array<number | string>;
    hosts?: string[];
    paths?: Array<'Direct' | 'Relay'>;
  }>;
}

/** The gateway config document as written to disk (`kind: GatewayConfig`). */
export interface GatewayConfigDocument {
  apiVersion: 'narrowlink.io/v1alpha1';
  kind: 'GatewayConfig';
  audience?: string;
  signingPublicKeys: string[];
  allowCrossNamespacePolicies?: boolean;
  agents: AgentDocument[];
  policies: PolicyDocument[];
}

/** Options of {@link startStack}. */
export interface StackOptions {
  /** Serve wss:// with a fresh test CA; agents and clients get `--ca-file`. Default false (ws://). */
  tls?: boolean;
  /** Agents in the gateway config. Default none. */
  agents?: AgentDocument[];
  /** Policies in the gateway config. Default: Allow-all for group {@link DEFAULT_CLIENT_GROUP} per namespace of `agents`. */
  policies?: PolicyDocument[];
  /** Extra gateway flags, e.g. `['--stream-window', '65536']`. `--drain-ms 500` is passed unless given here. */
  gatewayArgs?: string[];
  /** Mirror every child's output to stderr (default: when `NL_TEST_ECHO=1`). */
  echo?: boolean;
  /**
   * `NARROWLINK_MODE` of every client this stack starts (flags still win). Default `relay`: suites about the
   * relay stay deterministic; the direct-path suite asks for `auto`.
   */
  clientMode?: 'auto' | 'direct' | 'relay';
  /**
   * What the gateway and agents run: `source` (default) the TypeScript entry points, `bundle` what ships, the
   * compiled dist/server bundles with the Node options of their runtime-deps.json (built by the caller with
   * `npm run build:server`; benchmarks measure the shipped artifact).
   */
  from?: 'source' | 'bundle';
}

/** The node arguments that start `component` from sources or from the shipped bundle (see StackOptions.from). */
export function serverEntry(component: 'gateway' | 'agent', from: 'source' | 'bundle' = 'source'): string[] {
  if (from === 'source') return [SCRIPTS[component]];
  return [...NODE_OPTIONS[component], path.join(SERVER_DIST_DIR, `${component}.mjs`)];
}

/** Token identity overrides, for agents and clients. */
export interface TokenOptions {
  /** Default: agent `namespace/name`, client {@link DEFAULT_CLIENT_SUBJECT}. */
  sub?: string;
  /** Client groups; default `[DEFAULT_CLIENT_GROUP]`. */
  groups?: string[];
  /** Lifetime in seconds; default 3600. */
  ttlSeconds?: number;
  /** Issue time, ms since epoch; default now (an old `nowMs` with a short ttl makes an expired token). */
  nowMs?: number;
}

/** Which credentials a client process uses; default the stack's client token file. */
export interface ClientAuthOptions {
  /** Use this token text (passed with `--token`). */
  token?: string;
  /** Use this token file (passed with `--token-file`). */
  tokenFile?: string;
}

/** Options of {@link Stack.startAgent}. */
export interface StartAgentOptions extends ClientAuthOptions {
  /** Namespace of the agent (token subject and config lookup); default 'default'. */
  namespace?: string;
  /** `--expose` specs (`NAME=[HOST:]PORT`); default: the agent's `expose` list from the current config. */
  expose?: string[];
  /** Extra flags. */
  args?: string[];
  /** Ready event to wait for; default 'ready' (attached to the gateway). */
  readyEvent?: string;
}

/** Options of {@link Stack.startForward} and {@link Stack.startSocks}. */
export interface StartClientOptions extends ClientAuthOptions {
  /** Extra flags. */
  args?: string[];
}

/** A running `narrowlink forward -o json`. */
export interface ForwardProcess {
  process: StartedProcess;
  /** Local ports, one per target, in the order given. */
  ports: number[];
  /** The `listeners` array of the ready line. */
  listeners: Array<{ local: string; port: number; agent: string; target: string }>;
}

/** A running `narrowlink socks -o json`. */
export interface SocksProcess {
  process: StartedProcess;
  /** Local SOCKS5 port on 127.0.0.1. */
  port: number;
}

/** Options of {@link Stack.spawnClient}. */
export interface SpawnClientOptions extends ClientAuthOptions {
  /** Leave out the common flags (gateway, credentials, CA), e.g. to test missing settings. Default false. */
  bare?: boolean;
  /** Extra environment. */
  env?: Record<string, string | undefined>;
}

/** Result of {@link Stack.runClient}. */
export interface ClientRun {
  /** Exit code, null when killed by a signal. */
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** A running stack; every method is safe to call from tests in any order, {@link Stack.stop} last. */
export interface Stack {
  /** Temp directory holding key, tokens, config and (with TLS) certificates. Removed by {@link Stack.stop}. */
  dir: string;
  /** Gateway WebSocket base URL: `ws://127.0.0.1:PORT` or `wss://127.0.0.1:PORT`. */
  url: string;
  /** Gateway public HTTP base URL (`http(s)://127.0.0.1:PORT`): WebSocket upgrades only, 404 for anything else. */
  httpUrl: string;
  /** Gateway admin listener base URL (`http://127.0.0.1:PORT`) for /healthz, /readyz, /metrics. */
  adminUrl: string;
  /** Gateway port. */
  port: number;
  /** Gateway admin port (`--admin-listen`); a restarted gateway passes it again to keep {@link Stack.metric} working. */
  adminPort: number;
  /** The gateway process. */
  gateway: StartedProcess;
  /** Test certificate when started with `tls: true`. */
  tls: TestCertificate | undefined;
  /** Signing key pair (PEM) the gateway trusts. */
  keys: { privateKeyPem: string; publicKeyPem: string };
  /** Path of the gateway config file. */
  configFile: string;
  /** The config document last written (a copy; edit and pass to {@link Stack.reloadConfig}). */
  config(): GatewayConfigDocument;
  /** Default client token (subject {@link DEFAULT_CLIENT_SUBJECT}, group {@link DEFAULT_CLIENT_GROUP}). */
  clientToken: string;
  /** File holding {@link Stack.clientToken}. */
  clientTokenFile: string;
  /** Environment every child gets (merged over `process.env`). */
  env: Record<string, string | undefined>;

  /** Signs a token with the stack's key. Defaults as in {@link TokenOptions}; agent sub defaults to 'default/agent'. */
  signToken(typ: TokenType, options?: TokenOptions): Promise<string>;
  /** Writes `token` to a new file (mode 0600) in {@link Stack.dir} and returns its path. */
  writeTokenFile(token: string, name?: string): Promise<string>;
  /**
   * Atomically replaces the config file (write a temp file, rename over). Does not wait for the
   * gateway; use {@link Stack.reloadConfig} for that. Accepts a document or raw text (to test bad configs).
   */
  writeConfig(document: GatewayConfigDocument | string): Promise<void>;
  /**
   * Writes a new config and waits (default 10 s) for the gateway's next `config-reloaded` line. Pass a
   * function to edit a copy of the current document.
   */
  reloadConfig(change: GatewayConfigDocument | ((current: GatewayConfigDocument) => GatewayConfigDocument), timeoutMs?: number): Promise<void>;

  /** Common client flags: `--gateway URL` plus credentials plus `--ca-file` with TLS. */
  clientArgs(auth?: ClientAuthOptions): string[];
  /** Starts an agent attached to this gateway (token `namespace/name`); resolves once it logged `ready`. */
  startAgent(name: string, options?: StartAgentOptions): Promise<StartedProcess>;
  /** Starts `narrowlink forward -o json -L 127.0.0.1:0:TARGET ...`; one local port per `AGENT[:PORT]` target. */
  startForward(targets: string | string[], options?: StartClientOptions): Promise<ForwardProcess>;
  /** Starts `narrowlink socks -o json --listen 127.0.0.1:0`, with `--username/--password` when given. */
  startSocks(options?: StartClientOptions & { username?: string; password?: string }): Promise<SocksProcess>;
  /** Starts any long-running client command (`[COMMAND, ...args]`) with the common flags and waits for `readyEvent`. */
  startClient(args: string[], options?: StartClientOptions & { readyEvent?: string; name?: string }): Promise<StartedProcess>;
  /**
   * Spawns the CLI (`[COMMAND, ...args]`) with all stdio piped (stdin included, e.g. for `connect`).
   * The child is stopped by {@link Stack.stop} if still running.
   */
  spawnClient(args: string[], options?: SpawnClientOptions): ChildProcess;
  /** Runs the CLI to completion, writing `input` to stdin, and collects its output. Kills it after `timeoutMs` (default 30 s). */
  runClient(args: string[], options?: SpawnClientOptions & { input?: Buffer | string; timeoutMs?: number }): Promise<ClientRun>;

  /** GET a path of the gateway's admin listener (/healthz, /readyz, /metrics). */
  httpGet(pathname: string): Promise<{ status: number; body: string }>;
  /** GET a path of the gateway's public listener (trusting the test CA with TLS). */
  publicGet(pathname: string): Promise<{ status: number; body: string }>;
  /** The gateway's /metrics text. */
  metricsText(): Promise<string>;
  /**
   * One sample from /metrics: the value of `name` whose labels include every pair of `labels`
   * (summed over the matching series), or undefined when no series matches.
   */
  metric(name: string, labels?: Record<string, string>): Promise<number | undefined>;

  /** Stops every process this stack started (clients, then agents, then the gateway) and removes {@link Stack.dir}. */
  stop(): Promise<void>;
}

function defaultPolicies(agents: AgentDocument[]): PolicyDocument[] {
  const namespaces = new Set(agents.map((a) => a.namespace ?? 'default'));
  if (namespaces.size === 0) namespaces.add('default');
  return [...namespaces].map((namespace) => ({
    name: `${DEFAULT_CLIENT_GROUP}-allow-all`,
    namespace,
    subjects: [{ kind: 'Group', name: DEFAULT_CLIENT_GROUP }],
    rules: [{ action: 'Allow' }],
  }));
}

/** Parses Prometheus text exposition into (name, labels, value) samples. */
export function parseMetrics(text: string): Array<{ name: string; labels: Record<string, string>; value: number }> {
  const samples: Array<{ name: string; labels: Record<string, string>; value: number }> = [];
  for (const line of text.split('\n')) {
    if (line.length === 0 || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1] as string] = (pair[2] as string).replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    }
    samples.push({ name: match[1] as string, labels, value: Number(match[3]) });
  }
  return samples;
}

/**
 * Creates the temp directory, signing key, default client token and config file, then starts the
 * gateway (`--listen 127.0.0.1:0`) and waits for its ready line. Agents and clients are started
 * separately with the returned {@link Stack}'s methods.
 */
export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'nl-e2e-'));
  const started: Array<{ role: 'client' | 'agent'; child: ChildProcess }> = [];
  let gatewayProcess: StartedProcess | undefined;
  let cert: TestCertificate | undefined;
  let tokenFiles = 0;

  // Children must not pick up the developer's settings or credentials.
  const env: Record<string, string | undefined> = { XDG_CONFIG_HOME: path.join(dir, 'xdg') };
  for (const key of Object.keys(process.env)) if (key.startsWith('NARROWLINK_')) env[key] = undefined;
  // Suites about the relay (counters, drain, revocation) must know which path a stream takes; in auto mode a
  // direct path comes up behind the first stream and takes the later ones, depending on timing.
  env.NARROWLINK_MODE = options.clientMode ?? 'relay';
  const echo = options.echo;

  const stop = async (): Promise<void> => {
    const clients = started.filter((s) => s.role === 'client').map((s) => s.child);
    const agents = started.filter((s) => s.role === 'agent').map((s) => s.child);
    await Promise.all(clients.map((child) => stopChild(child, 'SIGTERM', 3000)));
    await Promise.all(agents.map((child) => stopChild(child, 'SIGTERM', 3000)));
    if (gatewayProcess) await gatewayProcess.stop('SIGTERM', 5000);
    await cert?.remove();
    await rm(dir, { recursive: true, force: true });
  };

  try {
    const keys = await generateSigningKeyPair();
    if (options.tls) cert = await makeTestCertificate(path.join(dir, 'tls'));
    const agents = options.agents ?? [];
    let current: GatewayConfigDocument = {
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'GatewayConfig',
      signingPublicKeys: [keys.publicKeyPem],
      agents,
      policies: options.policies ?? defaultPolicies(agents),
    };
    const configFile = path.join(dir, 'gateway.json');
    let writes = 0;
    const writeConfig = async (document: GatewayConfigDocument | string): Promise<void> => {
      const text = typeof document === 'string' ? document : `${JSON.stringify(document, null, 2)}\n`;
      if (typeof document !== 'string') current = structuredClone(document);
      // Same directory, then rename: the gateway never sees a half-written file.
      const temp = path.join(dir, `.gateway.json.${++writes}.tmp`);
      await writeFile(temp, text);
      await rename(temp, configFile);
    };
    await writeConfig(current);

    const sign = (typ: TokenType, tokenOptions: TokenOptions = {}): Promise<string> =>
      signToken(keys.privateKeyPem, {
        typ,
        sub: tokenOptions.sub ?? (typ === 'agent' ? 'default/agent' : DEFAULT_CLIENT_SUBJECT),
        ...(typ === 'client' ? { groups: tokenOptions.groups ?? [DEFAULT_CLIENT_GROUP] } : {}),
        ttlSeconds: tokenOptions.ttlSeconds ?? 3600,
        ...(tokenOptions.nowMs !== undefined ? { nowMs: tokenOptions.nowMs } : {}),
      });
    const writeTokenFile = async (token: string, name?: string): Promise<string> => {
      const file = path.join(dir, name ?? `token-${++tokenFiles}.jwt`);
      await writeFile(file, token, { mode: 0o600 });
      return file;
    };
    const clientToken = await sign('client');
    const clientTokenFile = await writeTokenFile(clientToken, 'client.jwt');

    const gatewayArgs = options.gatewayArgs ?? [];
    const tlsArgs = cert ? ['--tls-cert', cert.certFile, '--tls-key', cert.keyFile] : [];
    const drainArgs = gatewayArgs.includes('--drain-ms') ? [] : ['--drain-ms', '500'];
    // Health, readiness and metrics are on the admin listener only; port 0 so stacks run side by side.
    const adminArgs = gatewayArgs.includes('--admin-listen') ? [] : ['--admin-listen', '127.0.0.1:0'];
    gatewayProcess = await startProcess(
      'gateway',
      [...serverEntry('gateway', options.from), '--config', configFile, '--listen', '127.0.0.1:0', ...tlsArgs, ...drainArgs, ...adminArgs, ...gatewayArgs],
      { env, ...(echo !== undefined ? { echo } : {}) },
    );
    const gateway = gatewayProcess;
    const url = String(gateway.readyLine.url);
    const port = Number(gateway.readyLine.port);
    const httpUrl = `${cert ? 'https' : 'http'}://127.0.0.1:${port}`;
    const adminUrl = String(gateway.readyLine.adminUrl);
    const adminPort = Number(gateway.readyLine.adminPort);

    const authArgs = (auth: ClientAuthOptions = {}): string[] => {
      if (auth.token !== undefined) return ['--token', auth.token];
      return ['--token-file', auth.tokenFile ?? clientTokenFile];
    };
    const caArgs = (): string[] => (cert ? ['--ca-file', cert.caFile] : []);
    const clientArgs = (auth: ClientAuthOptions = {}): string[] => ['--gateway', url, ...authArgs(auth), ...caArgs()];
    const track = (role: 'client' | 'agent', child: ChildProcess): void => {
      started.push({ role, child });
    };
    const startClient = async (
      args: string[],
      clientOptions: StartClientOptions & { readyEvent?: string; name?: string } = {},
    ): Promise<StartedProcess> => {
      const child = await startProcess(
        clientOptions.name ?? `narrowlink ${args[0] ?? ''}`,
        [SCRIPTS.client, ...args, ...clientArgs(clientOptions), ...(clientOptions.args ?? [])],
        { env, ...(clientOptions.readyEvent ? { readyEvent: clientOptions.readyEvent } : {}), ...(echo !== undefined ? { echo } : {}) },
      );
      track('client', child.child);
      return child;
    };

    const get = (base: string, pathname: string): Promise<{ status: number; body: string }> =>
      new Promise((resolve, reject) => {
        const onResponse = (response: http.IncomingMessage): void => {
          const chunks: Buffer[] = [];
          response.on('data', (chunk: Buffer) => chunks.push(chunk));
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
          response.on('error', reject);
        };
        const request =
          cert && base.startsWith('https:')
            ? https.get(`${base}${pathname}`, { ca: cert.ca, agent: false }, onResponse)
            : http.get(`${base}${pathname}`, { agent: false }, onResponse);
        request.setTimeout(10_000, () => request.destroy(new Error(`GET ${pathname} timed out`)));
        request.on('error', reject);
      });
    const httpGet = (pathname: string) => get(adminUrl, pathname);
    const publicGet = (pathname: string) => get(httpUrl, pathname);
    const metricsText = async (): Promise<string> => {
      const response = await httpGet('/metrics');
      if (response.status !== 200) throw new Error(`GET /metrics: HTTP ${response.status}`);
      return response.body;
    };

    const spawnClient = (args: string[], spawnOptions: SpawnClientOptions = {}): ChildProcess => {
      const child = spawn(process.execPath, [SCRIPTS.client, ...args, ...(spawnOptions.bare ? [] : clientArgs(spawnOptions))], {
        env: Object.fromEntries(
          Object.entries({ ...process.env, ...env, ...spawnOptions.env }).filter((e): e is [string, string] => e[1] !== undefined),
        ),
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      registerChild(child);
      track('client', child);
      // A child that exits before reading all of stdin must not crash the test runner with EPIPE.
      child.stdin?.on('error', () => undefined);
      return child;
    };

    return {
      dir,
      url,
      httpUrl,
      adminUrl,
      port,
      adminPort,
      gateway,
      tls: cert,
      keys,
      configFile,
      config: () => structuredClone(current),
      clientToken,
      clientTokenFile,
      env,
      signToken: sign,
      writeTokenFile,
      writeConfig,
      async reloadConfig(change, timeoutMs = 10_000) {
        const next = typeof change === 'function' ? change(structuredClone(current)) : change;
        const reloaded = gateway.waitFor((line) => line.event === 'config-reloaded', timeoutMs, { includePast: false });
        reloaded.catch(() => undefined);
        await writeConfig(next);
        await reloaded;
      },
      clientArgs,
      async startAgent(name, agentOptions = {}) {
        const namespace = agentOptions.namespace ?? 'default';
        let expose = agentOptions.expose;
        if (expose === undefined) {
          const entry = current.agents.find((a) => a.name === name && (a.namespace ?? 'default') === namespace);
          if (!entry) throw new Error(`startAgent: no agent ${namespace}/${name} in the config; pass options.expose`);
          expose = entry.expose.map((e) => `${e.name}=${e.host ?? '127.0.0.1'}:${e.port}`);
        }
        let tokenArgs: string[];
        if (agentOptions.token !== undefined) tokenArgs = ['--token', agentOptions.token];
        else if (agentOptions.tokenFile !== undefined) tokenArgs = ['--token-file', agentOptions.tokenFile];
        else tokenArgs = ['--token-file', await writeTokenFile(await sign('agent', { sub: `${namespace}/${name}` }), `agent-${namespace}-${name}.jwt`)];
        const child = await startProcess(
          `agent ${namespace}/${name}`,
          [...serverEntry('agent', options.from), '--gateway', url, ...tokenArgs, ...caArgs(), ...expose.flatMap((spec) => ['--expose', spec]), ...(agentOptions.args ?? [])],
          { env, ...(agentOptions.readyEvent ? { readyEvent: agentOptions.readyEvent } : {}), ...(echo !== undefined ? { echo } : {}) },
        );
        track('agent', child.child);
        return child;
      },
      async startForward(targets, forwardOptions = {}) {
        const list = typeof targets === 'string' ? [targets] : targets;
        const forward = await startClient(
          ['forward', '-o', 'json', ...list.flatMap((target) => ['-L', `127.0.0.1:0:${target}`])],
          { ...forwardOptions, name: `narrowlink forward ${list.join(' ')}` },
        );
        const listeners = forward.readyLine.listeners as ForwardProcess['listeners'];
        return { process: forward, listeners, ports: listeners.map((l) => l.port) };
      },
      async startSocks(socksOptions = {}) {
        const auth = socksOptions.username !== undefined ? ['--username', socksOptions.username, '--password', socksOptions.password ?? ''] : [];
        const socks = await startClient(['socks', '-o', 'json', '--listen', '127.0.0.1:0', ...auth], socksOptions);
        return { process: socks, port: Number(socks.readyLine.port) };
      },
      startClient,
      spawnClient,
      async runClient(args, runOptions = {}) {
        const child = spawnClient(args, runOptions);
        const stdout: Buffer[] = [];
        const stderr: Buffer[] = [];
        child.stdout?.on('data', (chunk: Buffer) => stdout.push(chunk));
        child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk));
        const closed = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
        child.stdin?.end(runOptions.input ?? '');
        const timeoutMs = runOptions.timeoutMs ?? 30_000;
        const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
        const code = await closed.finally(() => clearTimeout(timer));
        return { code, stdout: Buffer.concat(stdout), stderr: Buffer.concat(stderr).toString('utf8') };
      },
      httpGet,
      publicGet,
      metricsText,
      async metric(name, labels = {}) {
        const samples = parseMetrics(await metricsText()).filter(
          (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
        );
        return samples.length === 0 ? undefined : samples.reduce((sum, s) => sum + s.value, 0);
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
