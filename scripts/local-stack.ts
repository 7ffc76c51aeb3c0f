#!/usr/bin/env node
/**
 * `npm start`: a complete Narrowlink stack on loopback, no cluster needed. Starts a gateway, an
 * agent exposing a small built-in demo HTTP service, and a client `forward`, each as its own
 * process, with a throwaway signing key and tokens; prints the local URL that answers through
 * the tunnel and every value the README's walk-through copies. Ctrl-C, SIGTERM and closing the terminal (SIGHUP)
 * stop everything and remove the temporary directory (it holds the tokens and the signing key).
 *
 *   --port N             local port of the forward (default 8080; 0 picks a free one)
 *   --json               print one JSON line with the addresses once ready (for scripts)
 *   --nat-probe-port N   the gateway's NAT probe UDP port (default 3478; 0 turns probing off, for tests)
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { generateSigningKeyPair } from '@narrowlink/protocol';
import { stringify } from 'yaml';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: { port: { type: 'string' }, json: { type: 'boolean' }, 'nat-probe-port': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
});
if (values.help) {
  process.stdout.write('Usage: npm start [-- --port N] [-- --json] [-- --nat-probe-port N]\nStarts gateway, agent, demo service and a client forward on loopback.\n');
  process.exit(0);
}
const forwardPort = Number(values.port ?? 8080);

/** Set once the terminal is gone (SIGHUP): writing to it would fail with EIO, so nothing more is printed. */
let hungUp = false;
const say = (line: string): void => {
  if (!values.json && !hungUp) process.stdout.write(`${line}\n`);
};
// A closed terminal turns writes into EPIPE/EIO errors; they must not stop the clean-up below.
process.stdout.on('error', () => undefined);
process.stderr.on('error', () => undefined);

const children: ChildProcess[] = [];
const workDir = mkdtempSync(join(tmpdir(), 'narrowlink-local-'));
// Last line of defence for the tokens: whatever path ends the process, the directory goes with it.
process.on('exit', () => rmSync(workDir, { recursive: true, force: true }));

/**
 * Settles at the first stop signal. Installed before anything starts, so that a signal during start-up (SIGHUP when
 * the terminal closes, which also reaches the children: they share its process group) never kills this process
 * before it removed the directory: the default action of these signals skips every clean-up.
 */
const stopRequested = new Promise<NodeJS.Signals>((resolve) => {
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      if (signal === 'SIGHUP') hungUp = true;
      resolve(signal);
    });
  }
});

/** JSON lines of every component's stdout, for waiting on later events (the forward's `direct-up`). */
const events = new EventEmitter<{ line: [Record<string, unknown>] }>();

function nextEvent(match: (line: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown> | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      events.off('line', onLine);
      resolve(undefined);
    }, timeoutMs);
    const onLine = (line: Record<string, unknown>): void => {
      if (!match(line)) return;
      clearTimeout(timer);
      events.off('line', onLine);
      resolve(line);
    };
    events.on('line', onLine);
  });
}

/** `narrowlink-gateway token create ARGS`: the token it prints (its only stdout line). */
async function mintToken(args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(process.execPath, [join(root, 'gateway/src/main.ts'), 'token', 'create', ...args]);
  return stdout.trim();
}

/** Starts a component and resolves with its first JSON line carrying `event: "ready"`. */
function startComponent(name: string, script: string, args: string[]): Promise<Record<string, unknown>> {
  const child = spawn(process.execPath, [join(root, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const tail: string[] = [];
  return new Promise((resolve, reject) => {
    const remember = (line: string): void => {
      tail.push(line);
      if (tail.length > 20) tail.shift();
    };
    createInterface({ input: child.stderr as NodeJS.ReadableStream }).on('line', remember);
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      remember(line);
      try {
        const parsed = JSON.parse(line) as Record<string, unknown>;
        events.emit('line', parsed);
        if (parsed.event === 'ready') resolve(parsed);
      } catch {
        // a human line; kept in the tail for errors
      }
    });
    child.once('exit', (code) => reject(new Error(`${name} exited (${code}) before it was ready:\n${tail.join('\n')}`)));
  });
}

async function stopAll(): Promise<void> {
  for (const child of children.reverse()) {
    if (child.exitCode !== null) continue;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }
  rmSync(workDir, { recursive: true, force: true });
}

/** Whether 127.0.0.1:`port` can be listened on now (checked before anything starts, so a taken port fails at once). */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createTcpServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

async function main(): Promise<void> {
  if (forwardPort !== 0 && !(await portFree(forwardPort))) {
    throw new Error(`127.0.0.1:${forwardPort} is already in use: run npm start -- --port 0 (any free port) or -- --port N`);
  }
  // 1. The demo service the agent exposes.
  const demo = createServer((request, response) => {
    response.setHeader('content-type', 'text/plain; charset=utf-8');
    response.end(`Hello from the Narrowlink demo service behind the agent.\nYou asked for ${request.method} ${request.url}.\n`);
  });
  await new Promise<void>((r) => demo.listen(0, '127.0.0.1', r));
  const demoPort = (demo.address() as { port: number }).port;

  // 2. Throwaway identity: a signing key, and an agent token and a client token minted with it by
  // `narrowlink-gateway token create`, as a user of a standalone gateway would.
  const keys = await generateSigningKeyPair();
  const signingKeyFile = join(workDir, 'signing.key');
  writeFileSync(signingKeyFile, keys.privateKeyPem, { mode: 0o600 });
  const [agentToken, clientToken] = await Promise.all([
    mintToken(['--key', signingKeyFile, '--agent', 'default/demo', '--ttl', '24h']),
    mintToken(['--key', signingKeyFile, '--user', 'developer', '--group', 'developers', '--ttl', '24h']),
  ]);
  const agentTokenFile = join(workDir, 'agent.token');
  const clientTokenFile = join(workDir, 'client.token');
  writeFileSync(agentTokenFile, agentToken, { mode: 0o600 });
  writeFileSync(clientTokenFile, clientToken, { mode: 0o600 });

  // 3. Gateway configuration: one agent, one policy letting the developers group reach it.
  const configFile = join(workDir, 'gateway.yaml');
  writeFileSync(
    configFile,
    stringify({
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'GatewayConfig',
      signingPublicKeys: [keys.publicKeyPem],
      agents: [{ name: 'demo', namespace: 'default', labels: { app: 'demo' }, expose: [{ name: 'http', port: demoPort, host: '127.0.0.1' }] }],
      policies: [
        {
          name: 'developers-reach-demo',
          namespace: 'default',
          subjects: [{ kind: 'Group', name: 'developers' }],
          rules: [{ action: 'Allow', agents: { names: ['demo'] }, ports: [demoPort] }],
        },
      ],
    }),
  );

  const gateway = await startComponent('gateway', 'gateway/src/main.ts', [
    '--config',
    configFile,
    '--listen',
    '127.0.0.1:0',
    '--drain-ms',
    '1000',
    ...(values['nat-probe-port'] === undefined ? [] : ['--nat-probe-port', values['nat-probe-port']]),
  ]);
  const gatewayUrl = gateway.url as string;
  say(`gateway  ${gatewayUrl} (config ${configFile})`);
  await startComponent('agent', 'agent-sidecar/src/main.ts', ['--gateway', gatewayUrl, '--token-file', agentTokenFile, '--expose', `http=127.0.0.1:${demoPort}`]);
  say(`agent    demo, exposing http=127.0.0.1:${demoPort} (the built-in demo service)`);
  const forward = await startComponent('client', 'client-cli/src/main.ts', [
    'forward',
    `127.0.0.1:${forwardPort}`,
    'demo:http',
    '--gateway',
    gatewayUrl,
    '--token-file',
    clientTokenFile,
    '-o',
    'json',
  ]);
  const listener = (forward.listeners as Array<{ local: string; port: number }>)[0] as { local: string; port: number };
  const url = `http://${listener.local}:${listener.port}/`;

  // 4. Prove the path works before telling the user it does. The first request goes through the relay at once;
  // the direct path (QUIC between client and agent, punched with the gateway's help) comes up behind it.
  const direct = nextEvent((l) => l.event === 'direct-up' || l.event === 'direct-failed', 5000);
  const response = await fetch(url);
  const body = await response.text();
  if (!response.ok) throw new Error(`the demo service did not answer through the tunnel: HTTP ${response.status}`);
  const outcome = await direct;
  const path = outcome?.event === 'direct-up' ? 'direct' : 'relay';
  const remote = outcome?.remote as { address?: string; port?: number } | undefined;
  const pathText =
    path === 'direct'
      ? `direct (client -> QUIC ${remote?.address}:${remote?.port} -> agent "demo", up in ${outcome?.ms} ms; the gateway ${gatewayUrl} only introduced them)`
      : `relay (client -> gateway ${gatewayUrl} -> agent "demo"; direct: ${outcome ? `${outcome.reason}: ${outcome.message}` : 'not up yet'})`;
  if (values.json) {
    process.stdout.write(
      `${JSON.stringify({ event: 'ready', url, gateway: gatewayUrl, path, demoPort, clientTokenFile, configFile, signingKeyFile, workDir })}\n`,
    );
  } else {
    say('');
    say(`The demo service answers through the tunnel at ${url}`);
    say(`  path: ${pathText} -> 127.0.0.1:${demoPort}`);
    say(`  try:  curl ${url}`);
    say(`  first answer: ${body.split('\n')[0]}`);
    say('');
    say('In another terminal:');
    say(`  export NARROWLINK_GATEWAY=${gatewayUrl} NARROWLINK_TOKEN_FILE=${clientTokenFile}`);
    say('  npx narrowlink ls');
    say('  npx narrowlink socks --listen 127.0.0.1:1080 &');
    say(`  curl --socks5-hostname 127.0.0.1:1080 http://demo:${demoPort}/    # SOCKS takes the port number: ${demoPort}`);
    say(`  mint: npx narrowlink-gateway token create --key ${signingKeyFile} --user NAME --group developers --ttl 8h`);
    say(`  edit: ${configFile}    # the gateway reloads it on save`);
    say('Ctrl-C stops everything and removes the temporary directory.');
  }

  const childExited = new Promise<void>((resolve) => {
    for (const child of children) child.once('exit', () => resolve());
  });
  await Promise.race([stopRequested, childExited]);
  say('stopping…');
  demo.close();
  await stopAll();
}

main().then(
  () => process.exit(existsSync(workDir) ? 1 : 0),
  async (error: unknown) => {
    if (!hungUp) process.stderr.write(`npm start: ${(error as Error).message}\n`);
    await stopAll();
    process.exit(1);
  },
);
