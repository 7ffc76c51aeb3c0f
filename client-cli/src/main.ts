#!/usr/bin/env node
/**
 * narrowlink: the developer's CLI. Reaches services behind agents through a gateway.
 */
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import type { ClientDirectPaths, DirectPathStatus, GatewayLink, LinkNatStatus } from '@narrowlink/peer-link';
import { startForwards } from './commands/forward.ts';
import { runLogin, runLogout, summarise, summaryLines } from './commands/login.ts';
import { startSocks } from './commands/socks.ts';
import { DEFAULT_NAMESPACE } from './credentials/exchange.ts';
import { currentContextName } from './credentials/kubeconfig.ts';
import { TokenRenewer } from './credentials/renewal.ts';
import { CliError, CliErrorCode, ExitCode } from './errors.ts';
import { type OutputFormat, Reporter } from './reporter.ts';
import { createLink, DIRECT_WAIT_MS, exitCodeFor, openDirectPaths, openTarget, PortResolver } from './session.ts';
import { resolveSettings, type Settings } from './settings.ts';
import { type ForwardSpec, parseForwardFlag, parseLocal, parseTarget } from './targets.ts';

/** How we were invoked: the kubectl plugin (`kubectl-narrowlink` on PATH) names itself `kubectl narrowlink`. */
const PROGRAM = basename(process.argv[1] ?? '').startsWith('kubectl-narrowlink') ? 'kubectl narrowlink' : 'narrowlink';

const COMMON = `Common options (env in brackets; also read from ~/.config/narrowlink/config.yaml):
  --gateway URL       gateway URL, wss://host[:port] (ws:// on loopback)   [NARROWLINK_GATEWAY]
  --token TOKEN       client token                                          [NARROWLINK_TOKEN]
  --token-file FILE   read the token from FILE                              [NARROWLINK_TOKEN_FILE]
  --ca-file FILE      extra CA certificates to trust (PEM)                  [NARROWLINK_CA_FILE]
  --config FILE       settings file (gateway, token, tokenFile, caFile, mode) [NARROWLINK_CONFIG]
  --mode MODE         auto | direct | relay (default auto)                  [NARROWLINK_MODE]
  --context NAME      use the login of this kube context (default: the kubeconfig's current context)
  --kubeconfig FILE   the kubeconfig to read the current context from (default: KUBECONFIG, ~/.kube/config)
  --timeout-ms N      how long to wait for the gateway and a stream to open (default 15000)
  -o, --output FMT    text | json
  -h, --help          help for the command`;

const HELP: Record<string, string> = {
  main: `narrowlink: reach services inside your cluster through a Narrowlink gateway

Usage: narrowlink COMMAND [options]

Commands:
  login      log in with your kube context's credentials (kubectl's): finds the gateway, caches a token
  logout     forget the current context's cached token and key
  ls         list the agents you may reach and their ports
  forward    forward local ports to agents:  narrowlink forward 8080 demo:http
  socks      run a local SOCKS5 proxy whose destinations are agents
  connect    pipe stdin/stdout to an agent's port (ssh ProxyCommand)
  status     who you are (user, groups, context, token expiry) and the gateway session

Run "narrowlink COMMAND --help" for a command's options.

Credentials: flags, then environment, then the config file, then the token "narrowlink login" cached for the
kube context (--context, else the current one). With a login nothing else is needed.

${COMMON}
`,
  ls: `Usage: narrowlink ls [-o json]

Lists the agents your policies let you reach, with their exposed ports and connected instances.

${COMMON}
`,
  forward: `Usage: narrowlink forward [LOCAL_ADDR:]LOCAL_PORT AGENT[:PORT_NAME|PORT]
       narrowlink forward -L [LOCAL_ADDR:]LOCAL_PORT:AGENT[:PORT] [-L ...]

Listens on a local port (127.0.0.1 unless given) and relays every connection to the agent's
port. AGENT is NAME or NAMESPACE/NAME; the port may be left out when the agent exposes one.
LOCAL_PORT 0 picks a free port (printed). Listeners stay open while the gateway reconnects.

  -L SPEC             a forward spec; repeatable
${COMMON}
`,
  socks: `Usage: narrowlink socks [--listen 127.0.0.1:1080] [--username U --password P]

Runs a SOCKS5 proxy (CONNECT only). The destination host names the agent (AGENT,
AGENT.NAMESPACE, optionally followed by .narrowlink); the destination port is the agent's port:
  curl --socks5-hostname 127.0.0.1:1080 http://demo:8080/

  --listen ADDR:PORT  where to listen (default 127.0.0.1:1080)
  --username U        require SOCKS username/password authentication  [NARROWLINK_SOCKS_USERNAME]
  --password P                                                       [NARROWLINK_SOCKS_PASSWORD]
${COMMON}
`,
  connect: `Usage: narrowlink connect AGENT PORT

Connects stdin and stdout to the agent's port. Exits 0 when the stream ends cleanly, 1 when it
was reset. For ssh: ssh -o ProxyCommand='narrowlink connect %h 22' user@AGENT

${COMMON}
`,
  login: `Usage: narrowlink login [--context NAME] [--kubeconfig FILE] [-n NAMESPACE] [-o json]

Logs in to Narrowlink with the credentials of a kube context, exactly as kubectl uses them (client
certificates, bearer tokens, token files, exec plugins such as EKS/GKE/OIDC helpers, in-cluster
ServiceAccounts). Your Kubernetes credential goes to the API server only:
  1. reads the ConfigMap narrowlink-discovery in NAMESPACE (gateway URL, its CA, where to log in);
  2. makes an Ed25519 key that never leaves this machine and asks the operator, through a
     ClientLoginRequest, for a token bound to it (the cluster's RBAC decides who may: ClusterRole
     narrowlink-login);
  3. caches token, key, gateway and CA for the context, readable by you only, in
     $XDG_CONFIG_HOME/narrowlink/contexts/ (~/.config/...; %APPDATA%\\narrowlink\\contexts on Windows).
Then ls, forward, socks, connect and status need no --gateway, --token or --ca-file; forward and
socks renew the token before it expires while your kube credential still works.

  --context NAME      the kube context (default: the kubeconfig's current context)
  --kubeconfig FILE   the kubeconfig (default: KUBECONFIG, else ~/.kube/config, else in-cluster)
  -n, --namespace NS  where narrowlink is installed: the chart's release namespace (default ${DEFAULT_NAMESPACE})
  --timeout-ms N      how long to wait for the operator's answer (default 30000)
  -o, --output FMT    text | json
  -h, --help          help for the command
`,
  logout: `Usage: narrowlink logout [--context NAME] [--kubeconfig FILE] [-o json]

Deletes the token and key "narrowlink login" cached for the kube context (default: the current one).
The token itself stays valid until it expires (at most the operator's cap, default 8 h).
`,
  status: `Usage: narrowlink status [AGENT] [--local] [-o json]

With a login: the kube context, cluster, your user and groups as the cluster authenticated them, the
gateway and when the token expires (exit 3 when not logged in or expired). --local stops there;
otherwise it connects to the gateway and reports the session: identity, token expiry, round trip, how many
agents you may reach, and your NAT as the gateway's UDP probes saw it (type, public endpoint),
which decides whether a direct path can work. With AGENT, also sets up a direct path to it and
says whether it came up (how, how fast) or why not (e.g. BothSymmetric, UdpBlocked, Denied).

${COMMON}
`,
};

const OPTIONS = {
  gateway: { type: 'string' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  'ca-file': { type: 'string' },
  config: { type: 'string' },
  mode: { type: 'string' },
  'timeout-ms': { type: 'string' },
  output: { type: 'string', short: 'o' },
  help: { type: 'boolean', short: 'h' },
  L: { type: 'string', short: 'L', multiple: true },
  listen: { type: 'string' },
  username: { type: 'string' },
  password: { type: 'string' },
  context: { type: 'string' },
  kubeconfig: { type: 'string' },
  namespace: { type: 'string', short: 'n' },
  local: { type: 'boolean' },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

function settingsFrom(values: Values): Settings {
  return resolveSettings({
    gateway: values.gateway,
    token: values.token,
    tokenFile: values['token-file'],
    caFile: values['ca-file'],
    config: values.config,
    mode: values.mode,
    context: values.context,
    kubeconfig: values.kubeconfig,
  });
}

/** Help text with this invocation's name (`narrowlink` or `kubectl narrowlink`). */
function help(command: string): string {
  return (HELP[command] as string).replace(/(^|[\s'"`(=])narrowlink(?= )/gm, `$1${PROGRAM}`);
}

/**
 * A login's token, renewed in-process before it expires (see credentials/renewal.ts); an expired one is renewed
 * now or refused (exit 3). Other credentials are used as they are.
 */
async function withRenewal(settings: Settings, reporter: Reporter): Promise<Settings> {
  if (!settings.login) return settings;
  const { renewLogin } = await import('./credentials/login.ts');
  const renewer = new TokenRenewer({ entry: settings.login, renew: (entry) => renewLogin(entry), reporter });
  await renewer.usableToken();
  return { ...settings, token: () => renewer.token() };
}

function usage(message: string): never {
  throw new CliError(CliErrorCode.USAGE, message, ExitCode.USAGE);
}

/** Resolves when the process is asked to stop. */
function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
}

/**
 * Runs a long-lived command (forward, socks): its listeners open before the session so that
 * connections made while the gateway is still coming up wait for it; then it serves until a
 * signal, or until the gateway refuses our credentials for good.
 */
async function serveUntilStopped(
  settings: Settings,
  reporter: Reporter,
  start: (link: GatewayLink, direct: ClientDirectPaths | undefined) => Promise<{ close(): Promise<void>; ready: { fields: Record<string, unknown>; text: string } }>,
): Promise<number> {
  const direct = await openDirectPaths(settings);
  const link = createLink(settings, reporter, { reconnect: true, direct, keepListening: true });
  const fatal = new Promise<never>((_, reject) => link.once('fatal', reject));
  const service = await start(link, direct);
  link.start();
  reporter.event('ready', service.ready.fields, service.ready.text);
  try {
    await Promise.race([untilSignal(), fatal]);
    return ExitCode.OK;
  } finally {
    await service.close();
    await link.close();
    await direct?.close();
  }
}

/** How long `status` waits for the NAT classification after the session is up: probing is bounded by 2 s. */
const NAT_WAIT_MS = 4000;

/** One line for the NAT: type, details, public endpoint. */
function describeNat(nat: LinkNatStatus | undefined, probing: boolean): string {
  if (!nat) return probing ? 'not classified in time' : 'not probed (the gateway runs no probe ports, or mode relay)';
  const details: string[] = [];
  if (nat.portPreserving) details.push('port-preserving');
  if (nat.delta !== undefined) details.push(`port delta ${nat.delta}`);
  if (nat.reason) details.push(nat.reason);
  details.push(`filtering ${nat.filtering}`);
  const publicEndpoint = nat.publicEndpoint ? `; public ${nat.publicEndpoint.address}:${nat.publicEndpoint.port}` : '';
  return `${nat.natType} (${details.join(', ')})${publicEndpoint}; probed in ${nat.measuredInMs} ms`;
}

/** Sets up a direct path to `agent` (what `status AGENT` reports): its state once up or failed. */
async function tryDirect(direct: ClientDirectPaths | undefined, agent: string, timeoutMs: number): Promise<DirectPathStatus | { state: 'failed'; reason: string; message: string }> {
  if (!direct) return { state: 'failed', reason: 'NoSocket', message: 'mode relay, or no UDP socket could be bound here' };
  try {
    await direct.waitUp(agent, timeoutMs);
  } catch {
    // The status below carries the reason.
  }
  return direct.status().find((p) => p.peer === agent) ?? { state: 'failed', reason: 'Unknown', message: 'no path state' };
}

function describePath(agent: string | undefined, path: Awaited<ReturnType<typeof tryDirect>> | undefined, mode: string): string {
  if (!agent) return `relay available; mode ${mode}; \`narrowlink status AGENT\` tries a direct path`;
  if (path?.state === 'up' && 'remote' in path) {
    return `direct to ${agent} via ${path.via} (${path.strategy}) ${path.remote?.address}:${path.remote?.port}, ready in ${path.readyInMs} ms, rtt ${path.rttMs} ms`;
  }
  return `relay to ${agent}; direct unavailable: ${path?.reason}: ${path?.message}`;
}

async function run(argv: string[]): Promise<number> {
  const command = argv[0] && !argv[0].startsWith('-') ? argv[0] : undefined;
  const { values, positionals } = parseArgs({ args: command ? argv.slice(1) : argv, options: OPTIONS, allowPositionals: true, strict: true });
  if (!command) {
    process.stdout.write(help('main'));
    return values.help ? ExitCode.OK : ExitCode.USAGE;
  }
  if (!(command in HELP) || command === 'main') usage(`unknown command "${command}"; try ${PROGRAM} --help`);
  if (values.help) {
    process.stdout.write(help(command));
    return ExitCode.OK;
  }
  const output = (values.output ?? 'text') as OutputFormat;
  if (output !== 'text' && output !== 'json') usage(`--output must be text or json, got "${values.output}"`);
  const timeoutMs = Number(values['timeout-ms'] ?? 15_000);
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) usage('--timeout-ms must be a positive number');
  const selection = { context: values.context, kubeconfig: values.kubeconfig };
  if (command === 'login') {
    if (positionals.length > 0) usage('login takes no arguments');
    return await runLogin({ ...selection, namespace: values.namespace, timeoutMs: values['timeout-ms'] ? timeoutMs : undefined }, output, PROGRAM);
  }
  if (command === 'logout') {
    if (positionals.length > 0) usage('logout takes no arguments');
    return runLogout(selection, output);
  }
  if (values.namespace !== undefined) usage('-n/--namespace is a login option');
  if (values.local && command !== 'status') usage('--local is a status option');
  let settings: Settings;
  try {
    settings = settingsFrom(values);
  } catch (error) {
    // `status` reports "not logged in" as a state (exit 3), like gh auth status.
    if (command !== 'status' || !(error instanceof CliError) || error.code !== CliErrorCode.NOT_LOGGED_IN) throw error;
    const summary = summarise(currentContextName(selection), undefined);
    if (output === 'json') process.stdout.write(`${JSON.stringify({ login: summary }, null, 2)}\n`);
    else process.stdout.write(`${summaryLines(summary, PROGRAM).join('\n')}\n`);
    return ExitCode.AUTH;
  }
  const reporter = new Reporter(output);
  if (command === 'status' && settings.login) {
    const summary = summarise(settings.login.context, settings.login);
    if (summary.state === 'expired' || values.local) {
      if (output === 'json') process.stdout.write(`${JSON.stringify({ login: summary }, null, 2)}\n`);
      else process.stdout.write(`${summaryLines(summary, PROGRAM).join('\n')}\n`);
      return summary.state === 'expired' ? ExitCode.AUTH : ExitCode.OK;
    }
  } else if (command === 'status' && values.local) {
    const source = { gateway: settings.gateway, login: null, configFile: settings.configPath ?? null };
    if (output === 'json') process.stdout.write(`${JSON.stringify(source, null, 2)}\n`);
    else process.stdout.write(`gateway:   ${settings.gateway}\nlogin:     none (credentials from flags, environment or ${settings.configPath ?? 'config file'})\n`);
    return ExitCode.OK;
  } else {
    // Renewal messages of one-shot commands go to stderr whatever -o says: their stdout is their answer.
    settings = await withRenewal(settings, command === 'forward' || command === 'socks' ? reporter : new Reporter('text'));
  }

  switch (command) {
    case 'ls': {
      if (positionals.length > 0) usage('ls takes no arguments');
      const link = createLink(settings, undefined, { reconnect: true }).start();
      try {
        const agents = await link.listAgents(timeoutMs);
        if (output === 'json') process.stdout.write(`${JSON.stringify({ agents }, null, 2)}\n`);
        else {
          const rows = [['NAME', 'NAMESPACE', 'INSTANCES', 'MODE', 'PORTS']];
          for (const a of agents) rows.push([a.name, a.namespace, String(a.instances), a.mode, a.ports.map((p) => `${p.name}=${p.port}`).join(',')]);
          const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
          for (const row of rows) process.stdout.write(`${row.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()}\n`);
          if (agents.length === 0) process.stderr.write('no agents: your policies allow none, or none are configured\n');
        }
        return ExitCode.OK;
      } finally {
        await link.close();
      }
    }
    case 'status': {
      if (positionals.length > 1) usage('status takes at most one AGENT');
      const agentToTry = positionals[0];
      const direct = await openDirectPaths(settings);
      const link = createLink(settings, undefined, { reconnect: true, direct }).start();
      try {
        await link.waitOpen(timeoutMs);
        const rttMs = await link.ping(timeoutMs);
        const agents = await link.listAgents(timeoutMs);
        // The probe info followed hello_ok, so after these round trips the link knows whether it is probing.
        const nat = await link.waitNat(Math.min(timeoutMs, NAT_WAIT_MS));
        const probing = link.natProbing;
        const hello = link.stats.helloOk;
        const path = agentToTry ? await tryDirect(direct, agentToTry, Math.min(timeoutMs, DIRECT_WAIT_MS)) : undefined;
        const status = {
          gateway: settings.gateway,
          state: link.state,
          session: hello?.sessionId,
          protocol: hello?.version,
          identity: hello ? { subject: hello.identity.sub, groups: hello.identity.groups, expiresAt: new Date(hello.identity.expiresAt).toISOString() } : undefined,
          rttMs: Math.round(rttMs * 1000) / 1000,
          reachableAgents: agents.length,
          connectedAgents: agents.filter((a) => a.instances > 0).length,
          mode: settings.mode,
          nat: nat ?? null,
          direct: path ?? null,
          configFile: settings.configPath ?? null,
          login: settings.login ? summarise(settings.login.context, settings.login) : null,
        };
        if (output === 'json') process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
        else {
          process.stdout.write(
            [
              ...(status.login ? summaryLines(status.login, PROGRAM).filter((line) => !line.startsWith('gateway:')) : []),
              `gateway:   ${status.gateway} (${status.state}, protocol ${status.protocol})`,
              `identity:  ${status.identity?.subject} groups=[${status.identity?.groups.join(', ')}] token expires ${status.identity?.expiresAt}`,
              `round trip: ${status.rttMs} ms`,
              `agents:    ${status.reachableAgents} reachable, ${status.connectedAgents} connected`,
              `nat:       ${describeNat(nat, probing)}`,
              `path:      ${describePath(agentToTry, path, settings.mode)}`,
              '',
            ].join('\n'),
          );
        }
        return ExitCode.OK;
      } finally {
        await link.close();
        await direct?.close();
      }
    }
    case 'connect': {
      if (positionals.length !== 2) usage('connect wants AGENT PORT');
      const target = parseTarget(`${positionals[0]}:${positionals[1]}`);
      // A one-shot stream gains nothing from a path that comes up after it started: only `direct` mode punches.
      const direct = settings.mode === 'direct' ? await openDirectPaths(settings) : undefined;
      const link = createLink(settings, undefined, { reconnect: true, direct }).start();
      try {
        const opened = await openTarget(link, direct, new PortResolver(link), target, settings.mode, timeoutMs);
        const duplex = opened.duplex();
        const result = await new Promise<number>((resolve) => {
          process.stdin.pipe(duplex);
          duplex.pipe(process.stdout);
          duplex.on('error', (error) => {
            // Same shape as every other failure: the public code (NL_ERR_STREAM_<CODE>), then the message.
            const code = (error as { code?: string }).code;
            process.stderr.write(`narrowlink: ${code ? `${code}: ` : ''}${error.message}\n`);
            resolve(ExitCode.FAILURE);
          });
          duplex.on('end', () => process.stdout.end(() => resolve(ExitCode.OK)));
        });
        return result;
      } finally {
        await link.close();
        await direct?.close();
      }
    }
    case 'forward': {
      const specs: ForwardSpec[] = (values.L ?? []).map(parseForwardFlag);
      if (positionals.length === 2) {
        const local = parseLocal(positionals[0] as string);
        specs.push({ localHost: local.host, localPort: local.port, target: parseTarget(positionals[1] as string) });
      } else if (positionals.length !== 0) usage('forward wants [LOCAL_ADDR:]LOCAL_PORT AGENT[:PORT], or -L specs');
      if (specs.length === 0) usage('nothing to forward; see narrowlink forward --help');
      return await serveUntilStopped(settings, reporter, async (link, direct) => {
        const handle = await startForwards(link, direct, settings, specs, reporter, { openTimeoutMs: timeoutMs });
        const lines = handle.addresses.map((a) => `forwarding ${a.local}:${a.port} -> ${a.target}`).join('\n');
        return { close: handle.close, ready: { fields: { listeners: handle.addresses }, text: lines } };
      });
    }
    case 'socks': {
      if (positionals.length > 0) usage('socks takes no positional arguments');
      const listen = parseLocal(values.listen ?? '127.0.0.1:1080');
      const username = values.username ?? process.env.NARROWLINK_SOCKS_USERNAME;
      const password = values.password ?? process.env.NARROWLINK_SOCKS_PASSWORD;
      if (Boolean(username) !== Boolean(password)) usage('--username and --password go together');
      const auth = username && password ? { username, password } : undefined;
      return await serveUntilStopped(settings, reporter, async (link, direct) => {
        const socks = await startSocks(link, direct, settings, listen, auth, reporter, { openTimeoutMs: timeoutMs });
        const address = `${listen.host}:${socks.port}`;
        return { close: socks.close, ready: { fields: { listen: address, port: socks.port }, text: `SOCKS5 proxy on ${address}` } };
      });
    }
  }
  return usage(`unknown command "${command}"`);
}

run(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    const e = error as Error & { code?: string };
    const code = exitCodeFor(error);
    process.stderr.write(`narrowlink: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
    process.exit(code);
  },
);
