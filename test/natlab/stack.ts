/**
 * A Narrowlink stack in the NAT lab: the gateway in `pub` on 192.0.2.1 (TLS listener + UDP probe ports), and
 * helpers to start the agent, the client CLI and TCP ends (tcp-tool.ts) on the hosts behind the routers. Every
 * process is real and runs in its namespace; `stop()` removes them with the lab.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { generateSigningKeyPair, signToken } from '@narrowlink/protocol';
import { ROOT, SCRIPTS as COMPONENTS } from '../helpers/paths.ts';
import { createLab, type ExecResult, LAB, type Lab, type LabHost, type LabOptions, type LabProcess } from './lab.ts';

export const SCRIPTS = { ...COMPONENTS, peer: path.join(ROOT, 'test/natlab/peer.ts'), tcp: path.join(ROOT, 'test/natlab/tcp-tool.ts') };
export const GATEWAY_PORT = 8443;
export const PROBE_PORT = 3478;
/** The gateway's admin listener (/metrics) inside `pub`, on its loopback: the public listener serves no metrics. */
export const ADMIN_PORT = 9090;
/** The ports the lab agent `svc` exposes (served by `tcp-tool.ts serve` on the agent's host). */
export const PORTS = { echo: 7007, sink: 7009, source: 7019 } as const;
const run = promisify(execFile);

/** A self-made CA and a server certificate for the lab gateway's address. */
async function labCertificate(dir: string): Promise<{ certFile: string; keyFile: string; caFile: string }> {
  const f = (name: string): string => path.join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await run('openssl', ['req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '2', '-subj', '/CN=Narrowlink NAT lab CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  await run('openssl', ['req', '-new', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', `/CN=${LAB.gateway}`]);
  await writeFile(f('server.ext'), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:${LAB.gateway}\n`);
  await run('openssl', ['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('server.crt'), '-days', '2', '-extfile', f('server.ext')]);
  return { certFile: f('server.crt'), keyFile: f('server.key'), caFile: f('ca.crt') };
}

/** One sample from Prometheus text: the value of `name{labels}` exactly as written, 0 when absent. */
export function metricValue(text: string, name: string, labels: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

/** A running `narrowlink forward -o json`: its JSON lines and one local port (in its namespace) per target. */
export interface LabForward {
  process: LabProcess;
  ports: number[];
  /** The `stream-open` lines so far. */
  opens(): Record<string, unknown>[];
}

/** One lab with a gateway in `pub`, tokens and a CA; peers are started by the tests. */
export class LabStack {
  lab!: Lab;
  dir!: string;
  gateway!: LabProcess;
  caFile!: string;
  clientToken!: string;
  agentToken!: string;
  readonly url = `wss://${LAB.gateway}:${GATEWAY_PORT}`;
  /** Children get no NARROWLINK_* settings from the developer's environment. */
  readonly env: Record<string, string | undefined> = Object.fromEntries(Object.keys(process.env).filter((k) => k.startsWith('NARROWLINK_')).map((k) => [k, undefined]));

  async start(options: LabOptions): Promise<void> {
    this.dir = await mkdtemp(path.join(os.tmpdir(), 'nl-natlab-'));
    this.env.XDG_CONFIG_HOME = this.dir;
    this.lab = await createLab(options);
    const keys = await generateSigningKeyPair();
    const cert = await labCertificate(this.dir);
    this.caFile = cert.caFile;
    this.clientToken = await signToken(keys.privateKeyPem, { typ: 'client', sub: 'lab-user', groups: ['lab'], ttlSeconds: 3600 });
    this.agentToken = await signToken(keys.privateKeyPem, { typ: 'agent', sub: 'default/svc', ttlSeconds: 3600 });
    const configFile = path.join(this.dir, 'gateway.json');
    await writeFile(
      configFile,
      JSON.stringify({
        apiVersion: 'narrowlink.io/v1alpha1',
        kind: 'GatewayConfig',
        signingPublicKeys: [keys.publicKeyPem],
        agents: [{ name: 'svc', expose: Object.entries(PORTS).map(([name, port]) => ({ name, port })) }],
        policies: [{ name: 'lab', subjects: [{ kind: 'Group', name: 'lab' }], rules: [{ action: 'Allow' }] }],
      }),
    );
    this.gateway = this.lab.spawnNode(
      'pub',
      [
        SCRIPTS.gateway,
        '--config', configFile,
        '--listen', `${LAB.gateway}:${GATEWAY_PORT}`,
        '--tls-cert', cert.certFile,
        '--tls-key', cert.keyFile,
        '--nat-probe-port', String(PROBE_PORT),
        '--admin-listen', `127.0.0.1:${ADMIN_PORT}`,
        ...(options.secondGatewayAddress ? ['--nat-probe-second-address', LAB.gatewaySecond] : []),
      ],
      this.env,
    );
    await this.gateway.waitFor((line) => line.event === 'ready', 15_000);
  }

  /** The client CLI's common flags. */
  clientArgs(): string[] {
    return ['--gateway', this.url, '--token', this.clientToken, '--ca-file', this.caFile];
  }

  /** Runs the client CLI (`[COMMAND, ...args]`) on a host to completion; `input` goes to its stdin. */
  async client(host: LabHost, args: string[], options: { input?: string; timeoutMs?: number } = {}): Promise<ExecResult & { tookMs: number }> {
    const startedAt = performance.now();
    const result = await this.lab.exec(host, ['env', ...this.envArgs(), process.execPath, SCRIPTS.client, ...args, ...this.clientArgs()], {
      allowFailure: true,
      input: options.input ?? '',
      timeoutMs: options.timeoutMs ?? 20_000,
    });
    return { ...result, tookMs: performance.now() - startedAt };
  }

  /** `env` arguments that apply {@link env} (unset NARROWLINK_*, set the rest) for a command run with `exec`. */
  envArgs(): string[] {
    return Object.entries(this.env).flatMap(([key, value]) => (value === undefined ? ['-u', key] : [`${key}=${value}`]));
  }

  /** `narrowlink status [AGENT] -o json` on a host; returns the parsed output and the wall time it took. */
  async status(host: LabHost, agent?: string): Promise<{ status: Record<string, unknown> & { state: string }; tookMs: number }> {
    const result = await this.client(host, ['status', ...(agent ? [agent] : []), '-o', 'json', '--timeout-ms', '10000']);
    assert.equal(result.code, 0, `status on ${host} failed: ${result.stderr}`);
    return { status: JSON.parse(result.stdout), tookMs: result.tookMs };
  }

  /** Starts `tcp-tool.ts serve` on the agent's host: echo, sink and source on {@link PORTS}. */
  async startServers(host: LabHost, sourceBytes: number, sourceSeed = 1): Promise<{ process: LabProcess; sourceSha256: string }> {
    const proc = this.lab.spawnNode(host, [
      SCRIPTS.tcp, 'serve',
      '--echo', String(PORTS.echo),
      '--sink', String(PORTS.sink),
      '--source', String(PORTS.source),
      '--source-bytes', String(sourceBytes),
      '--source-seed', String(sourceSeed),
    ]);
    const ready = await proc.waitFor((l) => l.event === 'ready', 10_000);
    return { process: proc, sourceSha256: String(ready.sourceSha256) };
  }

  /** Starts the agent `svc` on a host (exposing {@link PORTS}) and waits until it is attached. */
  async startAgent(host: LabHost, args: string[] = []): Promise<LabProcess> {
    const agent = this.lab.spawnNode(
      host,
      [
        SCRIPTS.agent,
        '--gateway', this.url,
        '--token', this.agentToken,
        '--ca-file', this.caFile,
        ...Object.entries(PORTS).flatMap(([name, port]) => ['--expose', `${name}=127.0.0.1:${port}`]),
        ...args,
      ],
      this.env,
    );
    await agent.waitFor((l) => l.event === 'ready', 15_000);
    return agent;
  }

  /** Starts `narrowlink forward -o json` on a host, one local port per target (`svc:echo`, ...). */
  async startForward(host: LabHost, targets: string[], args: string[] = []): Promise<LabForward> {
    const proc = this.lab.spawnNode(host, [SCRIPTS.client, 'forward', '-o', 'json', ...targets.flatMap((t) => ['-L', `127.0.0.1:0:${t}`]), ...this.clientArgs(), ...args], this.env);
    const ready = await proc.waitFor((l) => l.event === 'ready', 15_000);
    const listeners = ready.listeners as Array<{ port: number }>;
    return { process: proc, ports: listeners.map((l) => l.port), opens: () => proc.lines.filter((l) => l.event === 'stream-open') };
  }

  /** Runs `tcp-tool.ts` (send/receive) on a host to completion; returns its last JSON line. */
  async tcp(host: LabHost, args: string[], timeoutMs = 60_000): Promise<Record<string, unknown>> {
    const result = await this.lab.runNode(host, [SCRIPTS.tcp, ...args, '--timeout-ms', String(timeoutMs)], {}, timeoutMs + 5000);
    const last = result.stdout.trim().split('\n').at(-1) ?? '';
    try {
      return JSON.parse(last) as Record<string, unknown>;
    } catch {
      return { event: 'error', message: `tcp-tool exited ${result.code}: ${result.stderr.trim() || result.stdout.trim()}` };
    }
  }

  /** The gateway's /metrics, fetched from inside `pub`. */
  async metrics(): Promise<string> {
    const script = `const r = await fetch(${JSON.stringify(`http://127.0.0.1:${ADMIN_PORT}/metrics`)}); process.stdout.write(await r.text());`;
    const result = await this.lab.runNode('pub', ['--input-type=module', '-e', script], this.env);
    assert.equal(result.code, 0, result.stderr);
    return result.stdout;
  }

  /** Bytes the gateway relayed so far (`narrowlink_gateway_relay_bytes_total`, every series summed). */
  async relayBytes(): Promise<number> {
    return sumMetric(await this.metrics(), 'narrowlink_gateway_relay_bytes_total');
  }

  async stop(): Promise<void> {
    await this.lab?.destroy();
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}

/** The sum of every series of `name` in Prometheus text. */
export function sumMetric(text: string, name: string): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) total += Number(line.split(' ').at(-1));
  }
  return total;
}
