#!/usr/bin/env node
/**
 * narrowlink-agent: attaches to a gateway and serves streams to its exposed local ports.
 * Runs in the foreground (a container's main process) or, with --background, as a daemon
 * with a pid file, the way Narrowlink's agent does.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { AgentDirectPaths } from '@narrowlink/peer-link';
import { LOG_FORMATS, type LogFormat, prettyDestination, processLoggerOptions, wantsPretty } from '@narrowlink/protocol';
import { Agent } from './agent.ts';
import { AgentError, AgentErrorCode } from './errors.ts';
import { readCaFileWhenPresent } from './ca-file.ts';
import { generateAgentIdentity } from './identity.ts';
import { AllowList, parseExposeList } from './expose.ts';

const HELP = `narrowlink-agent: exposes local ports to Narrowlink clients through a gateway

Usage: narrowlink-agent --gateway URL (--token TOKEN | --token-file FILE) --expose NAME=[HOST:]PORT ...

Options (env in brackets):
  --gateway URL        gateway base URL, wss://host:443 (ws:// for loopback)   [NARROWLINK_GATEWAY]
  --token TOKEN        agent token                                              [NARROWLINK_AGENT_TOKEN]
  --token-file FILE    read the token from FILE on every connect (rotated tokens) [NARROWLINK_AGENT_TOKEN_FILE]
  --expose SPEC        NAME=[HOST:]PORT, repeatable; HOST defaults to 127.0.0.1  [NARROWLINK_EXPOSE, comma-separated]
  --ca-file FILE       extra CA certificates (PEM) to trust for wss://          [NARROWLINK_CA_FILE]
  --agent-name NS/NAME with a ServiceAccount token (--token-file of a projected token): the agent
                       this sidecar is; the gateway checks the token with a TokenReview
                       [NARROWLINK_AGENT_NAME, with NARROWLINK_AGENT_NAMESPACE when NAME has no NS/]
  --instance-id ID     instance name reported to the gateway (default host-pid-random; POD_NAME in a pod)
  --dial-timeout-ms N  max time to connect to a local target (default 5000)
  --direct-port N      UDP port of the direct path (QUIC, NAT probes, punches); 0 picks one (default)
                                                                                [NARROWLINK_DIRECT_PORT]
  --relay-only         no direct path: no UDP socket, no NAT probing            [NARROWLINK_RELAY_ONLY=1]
  --background         detach and run as a daemon (needs --pid-file)
  --pid-file FILE      write the daemon's pid here (removed on exit)
  --log-file FILE      with --background: where logs go (default narrowlink-agent.log)
  --log-level LEVEL    trace|debug|info|warn|error (default info)
  --log-format FMT     auto|json|pretty: pretty = human lines (local time, level names), auto = pretty on a
                       terminal, JSON lines otherwise (default auto)                  [NARROWLINK_LOG_FORMAT]
  -h, --help           show this help
`;

function parse() {
  return parseArgs({
    options: {
      gateway: { type: 'string' },
      token: { type: 'string' },
      'token-file': { type: 'string' },
      expose: { type: 'string', multiple: true },
      'ca-file': { type: 'string' },
      'instance-id': { type: 'string' },
      'agent-name': { type: 'string' },
      'dial-timeout-ms': { type: 'string' },
      'direct-port': { type: 'string' },
      'relay-only': { type: 'boolean' },
      background: { type: 'boolean' },
      'pid-file': { type: 'string' },
      'log-file': { type: 'string' },
      'log-level': { type: 'string' },
      'log-format': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  }).values;
}

function usage(message: string): never {
  throw new AgentError(AgentErrorCode.USAGE, `${message} (see --help)`);
}

/** Re-runs this program detached, minus --background, and returns once the daemon wrote its pid file. */
async function daemonize(pidFile: string, logFile: string): Promise<void> {
  if (existsSync(pidFile)) {
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    let alive = false;
    try {
      process.kill(pid, 0);
      alive = Number.isInteger(pid) && pid > 0;
    } catch {
      alive = false;
    }
    if (alive) throw new AgentError(AgentErrorCode.PID_FILE, `an agent already runs with pid ${pid} (${pidFile})`);
    unlinkSync(pidFile);
  }
  const args = process.argv.slice(1).filter((a) => a !== '--background');
  const out = openSync(logFile, 'a');
  const child = spawn(process.execPath, [...process.execArgv, ...args], { detached: true, stdio: ['ignore', out, out], env: process.env });
  closeSync(out);
  child.unref();
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (existsSync(pidFile)) {
      process.stdout.write(`narrowlink-agent running in the background, pid ${child.pid}, logs in ${logFile}\n`);
      return;
    }
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new AgentError(AgentErrorCode.PID_FILE, `the daemon did not start; see ${logFile}`);
}

async function main(): Promise<void> {
  const values = parse();
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const env = process.env;
  const gatewayUrl = values.gateway ?? env.NARROWLINK_GATEWAY ?? usage('missing --gateway URL');
  const tokenFile = values['token-file'] ?? env.NARROWLINK_AGENT_TOKEN_FILE;
  const tokenValue = values.token ?? env.NARROWLINK_AGENT_TOKEN;
  if (!tokenValue && !tokenFile) usage('missing --token or --token-file');
  const exposeSpecs = values.expose ?? (env.NARROWLINK_EXPOSE ? [env.NARROWLINK_EXPOSE] : []);
  if (exposeSpecs.length === 0) usage('nothing to expose: give at least one --expose NAME=[HOST:]PORT');
  const allowList = new AllowList(parseExposeList(exposeSpecs));
  const caFile = values['ca-file'] ?? env.NARROWLINK_CA_FILE;
  const agentName = values['agent-name'] ?? env.NARROWLINK_AGENT_NAME;
  const agentRef = agentName && !agentName.includes('/') && env.NARROWLINK_AGENT_NAMESPACE ? `${env.NARROWLINK_AGENT_NAMESPACE}/${agentName}` : agentName;
  const pidFile = values['pid-file'];

  if (values.background) {
    if (!pidFile) usage('--background needs --pid-file');
    await daemonize(pidFile, values['log-file'] ?? 'narrowlink-agent.log');
    return;
  }

  const logFormat = (values['log-format'] ?? env.NARROWLINK_LOG_FORMAT ?? 'auto') as LogFormat;
  if (!LOG_FORMATS.includes(logFormat)) usage(`--log-format must be auto, json or pretty, got "${logFormat}"`);
  // The link and the direct path log `{ msg: … }` next to a message: processLoggerOptions keeps it once, as `detail`.
  const log = pino(
    processLoggerOptions({ service: 'agent', level: values['log-level'] ?? 'info', redactPaths: ['token', '*.token', 'authorization', '*.authorization'] }),
    wantsPretty(logFormat, process.stdout) ? prettyDestination(process.stdout) : undefined,
  );
  const relayOnly = values['relay-only'] ?? env.NARROWLINK_RELAY_ONLY === '1';
  const directPort = Number(values['direct-port'] ?? env.NARROWLINK_DIRECT_PORT ?? 0);
  if (!Number.isInteger(directPort) || directPort < 0 || directPort > 65535) usage('--direct-port must be 0-65535');
  let direct: AgentDirectPaths | undefined;
  if (!relayOnly) {
    try {
      // Made with node:crypto, not peer-link's certificate library, which an idle sidecar would keep loaded (identity.ts).
      direct = await AgentDirectPaths.create({ identity: await generateAgentIdentity({ commonName: 'narrowlink-agent' }), port: directPort, log });
    } catch (error) {
      // No UDP here (port taken, sandbox): serve on the relay rather than not at all.
      log.warn({ err: (error as Error).message, port: directPort }, 'no direct path: cannot bind its UDP socket; relay only');
    }
  }
  // A missing CA file (its optional ConfigMap not in this namespace yet) is waited for, not fatal: ADR 0015.
  const caPem = caFile ? await readCaFileWhenPresent(caFile, log) : undefined;
  const agent = new Agent({
    ...(direct ? { direct } : {}),
    gatewayUrl,
    // A token file is read on every connect so a rotated token is picked up without a restart.
    token: tokenFile ? () => readFileSync(tokenFile, 'utf8').trim() : (tokenValue as string),
    allowList,
    ...(caPem ? { caPem } : {}),
    ...(agentRef ? { agentRef } : {}),
    ...((values['instance-id'] ?? env.POD_NAME) ? { instanceId: (values['instance-id'] ?? env.POD_NAME) as string } : {}),
    dialTimeoutMs: Number(values['dial-timeout-ms'] ?? 5000),
    log,
  });
  if (pidFile) {
    writeFileSync(pidFile, `${process.pid}\n`, { flag: 'wx' });
    process.on('exit', () => {
      try {
        unlinkSync(pidFile);
      } catch {
        // already gone
      }
    });
  }
  // Printed whatever the log level: supervisors and tests wait for it.
  agent.link.once('open', () =>
    log.child({}, { level: 'info' }).info({ event: 'ready', expose: allowList.entries.map((e) => `${e.name}=${e.host}:${e.port}`) }, 'agent attached to the gateway'),
  );
  agent.start();
  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'agent stopping');
    await agent.stop();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

main().catch((error: unknown) => {
  const code = (error as { code?: string }).code;
  process.stderr.write(`narrowlink-agent: ${code ? `${code}: ` : ''}${(error as Error).message}\n`);
  process.exit(2);
});
