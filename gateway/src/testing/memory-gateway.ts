/**
 * A real Gateway driven over in-memory sockets, for session-level tests: every frame waits in a queue until
 * `flush()`, the clock is injected. Agents accept every OPEN at once unless `holdOpens` is set; then their OPENs wait
 * in `inbox` until the test answers them (an agent whose dials take time). Test support only: no production import.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import {
  type ControlMessage,
  DEFAULT_STREAM_WINDOW,
  type GatewayConfig,
  generateSigningKeyPair,
  Mux,
  type MuxStream,
  PROTOCOL_VERSION,
  type ResetPayload,
  validateGatewayConfig,
} from '@narrowlink/protocol';
import { pino } from 'pino';
import type { WebSocket } from 'ws';
import { Gateway, type GatewayOptions } from '../gateway.ts';
import { createMetrics, type GatewayMetrics } from '../metrics.ts';

/** The key pair whose public half `memoryConfig` trusts (to sign reauth tokens). */
export const memoryKeys = await generateSigningKeyPair();
/** The harness clock's start. */
export const T0 = Date.parse('2030-01-01T00:00:00Z');

/** Agent `db` exposing pg 5432; group `dev` may reach everything. */
export const memoryConfig: GatewayConfig = validateGatewayConfig({
  apiVersion: 'narrowlink.io/v1alpha1',
  kind: 'GatewayConfig',
  signingPublicKeys: [memoryKeys.publicKeyPem],
  agents: [{ name: 'db', expose: [{ name: 'pg', port: 5432 }] }],
  policies: [{ name: 'all', subjects: [{ kind: 'Group', name: 'dev' }], rules: [{ action: 'Allow' }] }],
});

/** The gateway's end of an in-memory WebSocket: what it sends is queued for the peer. */
export class MemorySocket extends EventEmitter {
  readonly toPeer: Buffer[] = [];
  closed: { code: number; reason: string } | undefined;
  /** The queue stands for the network: the bytes left the gateway at once (`flushed`). */
  send(bytes: Uint8Array, _options?: unknown, flushed?: () => void): void {
    if (!this.closed) this.toPeer.push(Buffer.from(bytes));
    flushed?.();
  }
  pause(): void {}
  resume(): void {}
  close(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = { code, reason };
    this.emit('close', code, Buffer.from(reason));
  }
  terminate(): void {
    this.close(1006, '');
  }
}

/** A peer's end: its own Mux, the control messages it got and, for a holding agent, the OPENs not answered yet. */
export class MemoryPeer {
  readonly socket = new MemorySocket();
  readonly toGateway: Buffer[] = [];
  readonly controls: ControlMessage[] = [];
  /** OPENs a `holdOpens` agent received and has not answered, oldest first. */
  readonly inbox: MuxStream[] = [];
  /** Every OPEN this agent received, in arrival order (its `client` field says whose). */
  readonly received: string[] = [];
  readonly mux: Mux;
  constructor(role: 'agent' | 'client', holdOpens = false) {
    this.mux = new Mux({
      role: 'initiator',
      send: (bytes) => this.toGateway.push(Buffer.from(bytes)),
      handlers: {
        onControl: (message) => this.controls.push(message),
        onOpen: (stream, payload) => {
          if (role !== 'agent') return stream.reset('PROTOCOL_ERROR', 'clients accept no streams');
          this.received.push(String((payload as { client?: unknown }).client ?? ''));
          if (holdOpens) this.inbox.push(stream);
          else stream.accept({ path: 'relay' });
        },
      },
    });
  }
  errors(): string[] {
    return this.controls.flatMap((c) => (c.type === 'error' ? [c.code] : []));
  }
}

/** What `open()` saw of one client OPEN. */
export interface OpenResult {
  stream: MuxStream;
  ok: boolean;
  reset: ResetPayload | undefined;
}

/** A gateway with `memoryConfig` applied, and the means to connect peers, move frames and open streams. */
export function memoryGateway(options: Partial<GatewayOptions> = {}) {
  const clock = { now: T0 };
  const metrics: GatewayMetrics = createMetrics({ defaultMetrics: false });
  const gateway = new Gateway({ log: pino({ level: 'silent' }), metrics, now: () => clock.now, ...options });
  gateway.applyConfig(memoryConfig);
  const peers: MemoryPeer[] = [];
  function flush(): void {
    for (let moved = true; moved; ) {
      moved = false;
      for (const peer of peers) {
        for (let b = peer.socket.toPeer.shift(); b; b = peer.socket.toPeer.shift(), moved = true) peer.mux.receive(b);
        for (let b = peer.toGateway.shift(); b; b = peer.toGateway.shift(), moved = true) if (!peer.socket.closed) peer.socket.emit('message', b, true);
      }
    }
  }
  function connect(role: 'agent' | 'client', connectOptions: { sub?: string; version?: string; holdOpens?: boolean; expectHelloOk?: boolean } = {}): MemoryPeer {
    const peer = new MemoryPeer(role, connectOptions.holdOpens);
    peers.push(peer);
    const sub = connectOptions.sub ?? (role === 'agent' ? 'default/db' : 'alice');
    gateway.attach(role, { sub, groups: ['dev'], typ: role, expiresAtMs: T0 + 3_600_000 }, peer.socket as unknown as WebSocket);
    peer.mux.sendControl({
      type: 'hello',
      version: connectOptions.version ?? PROTOCOL_VERSION,
      role,
      streamWindow: DEFAULT_STREAM_WINDOW,
      ...(role === 'agent' ? { agent: { instanceId: `i-${peers.length}`, expose: [{ name: 'pg', port: 5432 }] } } : {}),
    });
    flush();
    if (connectOptions.expectHelloOk !== false) assert.ok(peer.controls.some((c) => c.type === 'hello_ok'), `${role} hello_ok`);
    return peer;
  }
  /** Opens db:5432 from `peer`; with `flushNow` false the OPEN stays queued until the next flush. */
  function open(peer: MemoryPeer, flushNow = true): OpenResult {
    const result: OpenResult = { stream: undefined as unknown as MuxStream, ok: false, reset: undefined };
    result.stream = peer.mux.open({ agent: 'db', port: 5432 }, { onOpenOk: () => (result.ok = true), onReset: (reset) => (result.reset = reset) });
    if (flushNow) flush();
    return result;
  }
  return { gateway, metrics, clock, flush, connect, open, peers };
}

/** The sum of a metric's values whose labels include `labels`. */
export async function metricValue(metrics: GatewayMetrics, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = metrics.registry.getSingleMetric(name);
  assert.ok(metric, name);
  const { values } = await metric.get();
  return values.filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l)).reduce((sum, v) => sum + v.value, 0);
}
