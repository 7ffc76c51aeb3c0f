#!/usr/bin/env node
/**
 * CPU per relayed OPEN as the configuration grows: a real `Gateway` in this process, one client and one agent
 * session on in-memory sockets (each frame is handed over synchronously, no network, no TLS), and
 * `process.cpuUsage()` around batches of OPEN → agent OPEN → agent OPEN_OK → client OPEN_OK. What is counted
 * is everything this process does for an OPEN: the client's and the agent's mux as well as the gateway.
 *
 *   node test/bench/open-cost.ts [--json] [--opens N] [--rounds N]
 *
 * Configurations: A agents + P policies in 10 namespaces; every tenth policy names the bench user's group (so at
 * 500 + 500 the user is in 50 policies, at 50 + 50 in 5), the rest name other users. The OPEN names the target by
 * its bare name, as `narrowlink forward svc-0:80` does. Rate limits are off (the bucket is still consulted) so
 * the bench measures cost, not the limit.
 */
import { generateKeyPairSync } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createMetrics, Gateway } from '@narrowlink/gateway';
import { DEFAULT_STREAM_WINDOW, type GatewayConfig, Mux, type MuxStream, PROTOCOL_VERSION, validateGatewayConfig } from '@narrowlink/protocol';
import { pino } from 'pino';

const NAMESPACES = 10;

/** A agents and P policies as described in the header; the bench user reaches `svc-0` (namespace ns-0) on port 80. */
export function benchConfig(agents: number, policies: number): GatewayConfig {
  const key = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();
  return validateGatewayConfig({
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'GatewayConfig',
    signingPublicKeys: [key],
    agents: Array.from({ length: agents }, (_, i) => ({
      name: `svc-${i}`,
      namespace: `ns-${i % NAMESPACES}`,
      labels: { team: `team-${i % 20}`, tier: i % 3 === 0 ? 'db' : 'web' },
      expose: [
        { name: 'http', port: 80 },
        { name: 'https', port: 443 },
        { name: 'admin', port: 9000 + (i % 7) },
      ],
    })),
    policies: Array.from({ length: policies }, (_, j) => ({
      name: `policy-${j}`,
      namespace: `ns-${j % NAMESPACES}`,
      subjects: [j % 10 === 0 ? { kind: 'Group', name: 'bench' } : { kind: 'User', name: `user-${j}` }],
      rules: [
        { action: 'Allow', agents: { names: [`svc-${j % agents}`, `svc-${(j * 7) % agents}`, `svc-${(j * 13) % agents}`] }, ports: [80, 443] },
        { action: 'Allow', agents: { selector: { matchLabels: { team: `team-${j % 20}` } } }, ports: ['9000-9006'], paths: ['Direct'] },
        { action: 'Deny', agents: { selector: { matchLabels: { tier: 'db' } } }, ports: [9000] },
      ],
    })),
  });
}

/** The gateway's end of an in-memory WebSocket: frames it sends wait for the peer in a queue. */
class MemorySocket extends EventEmitter {
  readonly toPeer: Buffer[] = [];
  closed = false;
  /** The queue stands for the network: the bytes left the gateway at once (`flushed`). */
  send(bytes: Uint8Array, _options?: unknown, flushed?: () => void): void {
    if (!this.closed) this.toPeer.push(bytes as Buffer);
    flushed?.();
  }
  pause(): void {}
  resume(): void {}
  close(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.emit('close', code, Buffer.from(reason));
  }
  terminate(): void {
    this.close(1006, '');
  }
}

interface MemoryPeer {
  socket: MemorySocket;
  toGateway: Buffer[];
  mux: Mux;
  helloOk: boolean;
}

export interface OpenCost {
  agents: number;
  policies: number;
  /** Median over rounds of CPU (user + system) per OPEN, µs. */
  cpuUsPerOpen: number;
  opens: number;
}

/** Measures CPU per OPEN through a real Gateway at `agents` + `policies`. */
export async function measureOpenCost(options: { agents: number; policies: number; opens?: number; rounds?: number }): Promise<OpenCost> {
  const bench = openCostBench(options.agents, options.policies);
  const perRound: number[] = [];
  for (let r = 0; r < (options.rounds ?? 5); r++) perRound.push(bench.round(options.opens ?? 2000));
  await bench.close();
  return summary(options.agents, options.policies, perRound, options.opens ?? 2000);
}

function summary(agents: number, policies: number, perRound: number[], opensPerRound: number): OpenCost {
  const sorted = [...perRound].sort((a, b) => a - b);
  return { agents, policies, cpuUsPerOpen: sorted[Math.floor(sorted.length / 2)] as number, opens: opensPerRound * perRound.length };
}

/** A gateway at `agents` + `policies` with its two sessions, warmed up; `round(n)` is µs of CPU per OPEN over n. */
function openCostBench(agents: number, policies: number): { round(opens: number): number; close(): Promise<void> } {
  const options = { agents, policies };
  const batch = 100;
  const config = benchConfig(options.agents, options.policies);
  const gateway = new Gateway({
    log: pino({ level: 'silent' }),
    metrics: createMetrics({ defaultMetrics: false }),
    // The bench opens as fast as the CPU allows: no OPEN rate limit, per session or per identity.
    rateLimits: { open: { perSecond: 0, burst: 0 } },
    identityRateLimits: { open: { perSecond: 0, burst: 0 } },
  } as ConstructorParameters<typeof Gateway>[0]);
  gateway.applyConfig(config);
  const peers: MemoryPeer[] = [];
  const flush = (): void => {
    for (let moved = true; moved; ) {
      moved = false;
      for (const peer of peers) {
        for (let b = peer.socket.toPeer.shift(); b; b = peer.socket.toPeer.shift(), moved = true) peer.mux.receive(b);
        for (let b = peer.toGateway.shift(); b; b = peer.toGateway.shift(), moved = true) peer.socket.emit('message', b, true);
      }
    }
  };
  const connect = (role: 'agent' | 'client', sub: string, groups: string[]): MemoryPeer => {
    const toGateway: Buffer[] = [];
    const peer: MemoryPeer = {
      socket: new MemorySocket(),
      toGateway,
      helloOk: false,
      mux: new Mux({
        role: 'initiator',
        send: (bytes) => toGateway.push(bytes as Buffer),
        handlers: {
          onControl: (message) => {
            if (message.type === 'hello_ok') peer.helloOk = true;
          },
          onOpen: (stream) => stream.accept({ path: 'relay' }),
        },
      }),
    };
    peers.push(peer);
    // biome-ignore lint/suspicious/noExplicitAny: the in-memory socket stands in for a ws WebSocket
    gateway.attach(role, { sub, groups, typ: role, expiresAtMs: Date.now() + 3_600_000 }, peer.socket as any);
    peer.mux.sendControl({
      type: 'hello',
      version: PROTOCOL_VERSION,
      role,
      streamWindow: DEFAULT_STREAM_WINDOW,
      ...(role === 'agent' ? { agent: { instanceId: 'bench', expose: [{ name: 'http', port: 80 }] } } : {}),
    });
    flush();
    if (!peer.helloOk) throw new Error(`${role} session did not open`);
    return peer;
  };
  connect('agent', 'ns-0/svc-0', []);
  const client = connect('client', 'bench-user', ['bench']);

  let failed: string | undefined;
  const openBatch = (n: number): MuxStream[] => {
    const streams: MuxStream[] = [];
    for (let i = 0; i < n; i++) {
      let ok = false;
      const stream = client.mux.open(
        { agent: 'svc-0', port: 80 },
        {
          onOpenOk: () => {
            ok = true;
          },
          onReset: (reset) => {
            failed ??= `${reset.code}: ${reset.message}`;
          },
        },
      );
      flush();
      if (!ok) throw new Error(`OPEN was not accepted (${failed ?? 'no answer'})`);
      streams.push(stream);
    }
    return streams;
  };
  const closeAll = (streams: MuxStream[]): void => {
    for (const stream of streams) stream.reset('CANCELLED', 'bench');
    flush();
  };

  // Warm-up: JIT, the policy cache, the agent's first streams.
  for (let i = 0; i < 20; i++) closeAll(openBatch(batch));
  return {
    round: (opens) => {
      let cpuUs = 0;
      for (let done = 0; done < opens; done += batch) {
        const before = process.cpuUsage();
        const streams = openBatch(batch);
        const used = process.cpuUsage(before);
        cpuUs += used.user + used.system;
        closeAll(streams);
      }
      return cpuUs / opens;
    },
    close: () => gateway.shutdown(0),
  };
}

/**
 * The two sizes `npm run bench` reports, and their ratio (1 = flat). Rounds alternate between the two gateways so
 * that a noisy neighbour or a late JIT tier hits both alike.
 */
export async function measureOpenCostFlatness(options: { opens?: number; rounds?: number } = {}): Promise<{ small: OpenCost; large: OpenCost; flatness: number }> {
  const opens = options.opens ?? 2000;
  const benches = [openCostBench(50, 50), openCostBench(500, 500)] as const;
  const rounds: [number[], number[]] = [[], []];
  for (let r = 0; r < (options.rounds ?? 5); r++) for (const i of [0, 1] as const) rounds[i].push(benches[i].round(opens));
  await Promise.all(benches.map((b) => b.close()));
  const small = summary(50, 50, rounds[0], opens);
  const large = summary(500, 500, rounds[1], opens);
  return { small, large, flatness: large.cpuUsPerOpen / small.cpuUsPerOpen };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { json: { type: 'boolean' }, opens: { type: 'string' }, rounds: { type: 'string' } } });
  const options = { ...(values.opens ? { opens: Number(values.opens) } : {}), ...(values.rounds ? { rounds: Number(values.rounds) } : {}) };
  const { small, large, flatness } = await measureOpenCostFlatness(options);
  const round2 = (x: number): number => Math.round(x * 100) / 100;
  const result = { open_cost_us_50x50: round2(small.cpuUsPerOpen), open_cost_us_500x500: round2(large.cpuUsPerOpen), open_cost_flatness: round2(flatness) };
  if (values.json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return;
  }
  process.stdout.write('config              CPU per OPEN (µs)   (target ≤ 100 µs at 500 + 500)\n');
  for (const c of [small, large]) process.stdout.write(`${`${c.agents} agents + ${c.policies} policies`.padEnd(28)}${c.cpuUsPerOpen.toFixed(1).padStart(10)}\n`);
  process.stdout.write(`flatness (500x500 / 50x50): ${flatness.toFixed(2)}\n${JSON.stringify(result)}\n`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
