#!/usr/bin/env node
/**
 * narrowlink: the developer's CLI. Reaches services behind agents through a gateway.
 */
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { StreamErrorCode, StreamResetError } from '@narrowlink/protocol';
import type { ClientDirectPaths, DirectPathStatus, GatewayLink, LinkNatStatus } from '@narrowlink/peer-link';
import { startForwards } from './commands/forward.ts';
import { runLogin, runLogout, summarise, summaryLines } from './commands/login.ts';
import { startSocks } from './commands/socks.ts';
import { COMMANDS, commandHelp, mainHelp, OPTIONS, SHELLS, type Shell, usageLines } from './cli/commands.ts';
import { completionScript } from './cli/completion.ts';
import { currentContextName } from './credentials/kubeconfig.ts';
import { TokenRenewer } from './credentials/renewal.ts';
import { CliError, CliErrorCode, ExitCode } from './errors.ts';
import { type OutputFormat, Reporter, stderrLinkLogger } from './reporter.ts';
import { createLink, credentialHint, DIRECT_WAIT_MS, exitCodeFor, openDirectPaths, openTarget, PortResolver } from './session.ts';
import { resolveSettings, type Settings } from './settings.ts';
import { type ForwardSpec, parseForwardFlag, parseLocal, parseTarget } from './targets.ts';
import { CLI_VERSION } from './version.ts';

/** How we were invoked: the kubectl plugin (`kubectl-narrowlink` on PATH) names itself `kubectl narrowlink`. */
const PROGRAM = basename(process.argv[1] ?? '').startsWith('kubectl-narrowlink') ? 'kubectl narrowlink' : 'narrowlink';

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

/** Text with this invocation's name (`narrowlink` or `kubectl narrowlink`). */
function named(text: string): string {
  return text.replace(/(^|[\s'"`(=])narrowlink(?= |")/gm, `$1${PROGRAM}`);
}

/** Help for a command, or the main help. */
function help(command: string): string {
  return named(command === 'main' ? mainHelp() : commandHelp(command));
}

/** The command being run, for the usage lines that follow a usage error. */
let currentCommand: string | undefined;

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

/** node:util parseArgs' errors (unknown option, missing value) as our usage errors, exit 2. */
function parse(command: string | undefined, args: string[]): ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>> {
  try {
    return parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    const message = (error as Error).message;
    const unknown = /Unknown option '([^']+)'/.exec(message)?.[1];
    if (unknown) usage(`unknown option ${unknown}${command ? ` for ${command}` : ''}`);
    const missing = /Option '([^']+)' argument missing/.exec(message)?.[1];
    if (missing) usage(`${missing.replace(/^-\w, /, '')} needs a value`);
    usage(message.split('. ')[0] ?? message);
  }
}

/** A usage error for the first option given that `command` does not take. */
function checkOptions(command: string, values: Record<string, unknown>): void {
  const allowed = new Set<string>(COMMANDS[command]?.options ?? []);
  for (const [name, value] of Object.entries(values)) {
    if (value === undefined || allowed.has(name)) continue;
    usage(`${name.length > 1 ? `--${name}` : `-${name}`} is not an option of ${command}`);
  }
}

/** The closest command name, for "did you mean". */
function closestCommand(name: string): string | undefined {
  const distance = (a: string, b: string): number => {
    const row = Array.from({ length: b.length + 1 }, (_, i) => i);
    for (let i = 1; i <= a.length; i++) {
      let previous = row[0] as number;
      row[0] = i;
      for (let j = 1; j <= b.length; j++) {
        const current = row[j] as number;
        row[j] = Math.min((row[j] as number) + 1, (row[j - 1] as number) + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
        previous = current;
      }
    }
    return row[b.length] as number;
  };
  const ranked = Object.keys(COMMANDS)
    .map((candidate) => ({ candidate, d: candidate.startsWith(name) ? 0 : distance(name, candidate) }))
    .sort((a, b) => a.d - b.d);
  return ranked[0] && ranked[0].d <= 2 ? ranked[0].candidate : undefined;
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
  const link = createLink(settings, reporter, { reconnect: true, direct, keepListening: true, log: reporter.verbose ? stderrLinkLogger() : undefined });
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
  currentCommand = command !== undefined && command in COMMANDS ? command : undefined;
  if (command !== undefined && !(command in COMMANDS)) {
    const suggestion = closestCommand(command);
    usage(`unknown command "${command}"${suggestion ? ` (did you mean "${suggestion}"?)` : ''}; try ${PROGRAM} help`);
  }
  const { values, positionals } = parse(command, command ? argv.slice(1) : argv);
  if (!command) {
    if (values.version) {
      process.stdout.write(`${CLI_VERSION}\n`);
      return ExitCode.OK;
    }
    if (positionals.length > 0 || Object.keys(values).some((name) => name !== 'help')) usage(`options come after the command: ${PROGRAM} COMMAND [options]`);
    process.stdout.write(help('main'));
    return values.help ? ExitCode.OK : ExitCode.USAGE;
  }
  checkOptions(command, values);
  if (values.help) {
    process.stdout.write(help(command));
    return ExitCode.OK;
  }
  if (command === 'help') {
    if (positionals.length > 1) usage('help takes at most one COMMAND');
    const topic = positionals[0];
    if (topic !== undefined && !(topic in COMMANDS)) usage(`no help for "${topic}": not a command; try ${PROGRAM} help`);
    process.stdout.write(help(topic ?? 'main'));
    return ExitCode.OK;
  }
  if (command === 'completion') {
    const shell = positionals[0];
    if (positionals.length !== 1 || !SHELLS.includes(shell as Shell)) usage(`completion wants one of ${SHELLS.join(', ')}`);
    process.stdout.write(completionScript(shell as Shell));
    return ExitCode.OK;
  }
  // `ls -o name`: one agent per line as forward, connect and status take it, for scripts and shell completion.
  const names = values.output === 'name' && command === 'ls';
  const output = (names ? 'text' : (values.output ?? 'text')) as OutputFormat;
  if (output !== 'text' && output !== 'json') usage(`--output must be text or json${command === 'ls' ? ' or name' : ''}, got "${values.output}"`);
  if (command === 'version') {
    if (positionals.length > 0) usage('version takes no arguments');
    if (output === 'json') process.stdout.write(`${JSON.stringify({ version: CLI_VERSION, node: process.version, platform: `${process.platform}-${process.arch}` })}\n`);
    else process.stdout.write(`${CLI_VERSION}\n`);
    return ExitCode.OK;
  }
  const verbose = values.verbose === true;
  // -v: the link's log lines (dial attempts, refusals, retries) on stderr.
  const linkLog = verbose ? stderrLinkLogger() : undefined;
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
  if (command === 'doctor') {
    if (positionals.length > 1) usage('doctor takes at most one AGENT');
    const { runDoctor } = await import('./commands/doctor.ts');
    return await runDoctor({ resolveSettings: () => settingsFrom(values), agent: positionals[0], output, timeoutMs, program: PROGRAM });
  }
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
  const reporter = new Reporter(output, process.stdout, process.stderr, { verbose });
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
      // One-shot: a definitive answer (refused, no such host, TLS, not a gateway) fails at once, not at the timeout.
      const link = createLink(settings, undefined, { reconnect: true, failFast: true, log: linkLog }).start();
      try {
        const agents = await link.listAgents(timeoutMs);
        if (names) {
          // A bare NAME where it is unique among your agents, NAMESPACE/NAME where it is not.
          const seen = new Map<string, number>();
          for (const a of agents) seen.set(a.name, (seen.get(a.name) ?? 0) + 1);
          for (const a of agents) process.stdout.write(`${(seen.get(a.name) ?? 0) > 1 ? `${a.namespace}/${a.name}` : a.name}\n`);
        } else if (output === 'json') process.stdout.write(`${JSON.stringify({ agents }, null, 2)}\n`);
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
      const link = createLink(settings, undefined, { reconnect: true, direct, failFast: true, log: linkLog }).start();
      try {
        await link.waitOpen(timeoutMs);
        const rttMs = await link.ping(timeoutMs);
        const agents = await link.listAgents(timeoutMs);
        // The probe info followed hello_ok, so after these round trips the link knows whether it is probing.
        const nat = await link.waitNat(Math.min(timeoutMs, NAT_WAIT_MS));
        const probing = link.natProbing;
        const hello = link.stats.helloOk;
        // An AGENT you may not reach (or with no instance attached) is reported as such, and exits 1: "relay to it"
        // would read as reachable.
        const listed = agentToTry ? agents.filter((a) => (agentToTry.includes('/') ? `${a.namespace}/${a.name}` === agentToTry : a.name === agentToTry)) : [];
        const unreachable =
          agentToTry === undefined
            ? undefined
            : listed.length === 0
              ? `no agent "${agentToTry}" that you may reach (see ${PROGRAM} ls)`
              : listed.every((a) => a.instances === 0)
                ? `agent "${agentToTry}" has no connected instance right now`
                : undefined;
        const path = agentToTry && !unreachable ? await tryDirect(direct, agentToTry, Math.min(timeoutMs, DIRECT_WAIT_MS)) : undefined;
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
          ...(agentToTry ? { agent: { name: agentToTry, reachable: unreachable === undefined, ...(unreachable ? { reason: unreachable } : {}) } } : {}),
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
              `path:      ${unreachable ? `none: ${unreachable}` : describePath(agentToTry, path, settings.mode)}`,
              '',
            ].join('\n'),
          );
        }
        if (unreachable) throw new StreamResetError(StreamErrorCode.NO_AGENT, unreachable);
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
      const link = createLink(settings, undefined, { reconnect: true, direct, failFast: true, log: linkLog }).start();
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
    const hint = credentialHint(error, PROGRAM);
    process.stderr.write(`narrowlink: ${e.code ? `${e.code}: ` : ''}${e.message}${hint ? `; ${hint}` : ''}\n`);
    // A usage error shows the command's usage, as git and kubectl do.
    if (error instanceof CliError && error.code === CliErrorCode.USAGE) process.stderr.write(`${named(usageLines(currentCommand))}\n`);
    process.exit(code);
  },
);
