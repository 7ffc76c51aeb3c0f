/**
 * Test support (not exported by the package): a deterministic, discrete-event UDP network with tiny NAT
 * models, a gateway probe server built on the probe codec, and drivers that run probe and punch sessions on it.
 *
 * NAT model (RFC 4787 terms):
 * - mapping `endpoint-independent` (optionally port-preserving), `random` (a fresh random public port per
 *   destination, like `MASQUERADE --random-fully`) or `{ delta }` (a fresh port per destination, last + delta);
 * - filtering of inbound packets to a mapping: `endpoint-independent` (anyone), `address-dependent` (addresses
 *   the mapping has sent to) or `address-and-port-dependent` (exact endpoints it has sent to: Linux conntrack
 *   with the lab's drop-NEW rule). Unsolicited packets are dropped, leaving no state;
 * - no hairpinning: a host cannot reach its own NAT's public address; hosts behind one NAT reach each other
 *   directly by their LAN addresses;
 * - `blockUdp` drops every outbound datagram.
 */
import { type Endpoint, formatEndpoint } from './endpoint.ts';
import { decodeProbeRequest, decodeProbeResponse, encodeProbeRequest, encodeProbeResponse, rawDatagramKind } from './probe-codec.ts';
import type { FilteringTest, ProbeObservation } from './classify.ts';
import type { PunchEvent, PunchOutput, PunchSession } from './punch-session.ts';
import { ReplayWindow } from './replay-window.ts';

export interface SimNatBehavior {
  mapping: 'endpoint-independent' | 'random' | { delta: number; start?: number };
  filtering: 'endpoint-independent' | 'address-dependent' | 'address-and-port-dependent';
  portPreserving?: boolean;
  blockUdp?: boolean;
}

/** Linux `MASQUERADE` with the home-router drop-NEW rule: the NAT lab's default ("cone"). */
export const MASQUERADE: SimNatBehavior = { mapping: 'endpoint-independent', filtering: 'address-and-port-dependent', portPreserving: true };
/** `MASQUERADE --random-fully` with drop-NEW: symmetric, random ports. */
export const RANDOM_FULLY: SimNatBehavior = { mapping: 'random', filtering: 'address-and-port-dependent' };
/** A home router with a cone mapping that admits any port of an address it has talked to. */
export const ADDRESS_RESTRICTED_CONE: SimNatBehavior = { mapping: 'endpoint-independent', filtering: 'address-dependent', portPreserving: true };

/** mulberry32: deterministic randomness from one u32. */
export class Rng {
  #state: number;
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }
  next(): number {
    this.#state = (this.#state + 0x6d2b_79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
}

interface Mapping {
  local: Endpoint;
  /** Set for endpoint-dependent mappings: the one destination this mapping serves. */
  remote?: Endpoint;
  publicPort: number;
  allowed: Set<string>;
}

export class SimNat {
  readonly publicAddress: string;
  readonly behavior: SimNatBehavior;
  #rng: Rng;
  #mappings: Mapping[] = [];
  #used = new Set<number>();
  #nextSequential = 30_000;
  #lastPredictable: number | undefined;

  constructor(publicAddress: string, behavior: SimNatBehavior, seed: number) {
    this.publicAddress = publicAddress;
    this.behavior = behavior;
    this.#rng = new Rng(seed);
  }

  get mappingCount(): number {
    return this.#mappings.length;
  }

  #filterKey(remote: Endpoint): string {
    switch (this.behavior.filtering) {
      case 'endpoint-independent':
        return '*';
      case 'address-dependent':
        return remote.address;
      case 'address-and-port-dependent':
        return formatEndpoint(remote);
    }
  }

  #allocate(local: Endpoint): number {
    const mapping = this.behavior.mapping;
    if (mapping === 'endpoint-independent') {
      if (this.behavior.portPreserving && !this.#used.has(local.port)) return local.port;
      while (this.#used.has(this.#nextSequential)) this.#nextSequential++;
      return this.#nextSequential++;
    }
    if (mapping === 'random') {
      for (;;) {
        const port = 1024 + this.#rng.int(65_536 - 1024);
        if (!this.#used.has(port)) return port;
      }
    }
    let port = this.#lastPredictable === undefined ? (mapping.start ?? 40_000) : this.#lastPredictable + mapping.delta;
    while (this.#used.has(port)) port += mapping.delta;
    this.#lastPredictable = port;
    return port;
  }

  /** Translates an outbound datagram; returns the public source port, or undefined when dropped. */
  outbound(local: Endpoint, remote: Endpoint): number | undefined {
    if (this.behavior.blockUdp) return undefined;
    const independent = this.behavior.mapping === 'endpoint-independent';
    let mapping = this.#mappings.find(
      (m) => formatEndpoint(m.local) === formatEndpoint(local) && (independent || (m.remote && formatEndpoint(m.remote) === formatEndpoint(remote))),
    );
    if (!mapping) {
      const publicPort = this.#allocate(local);
      this.#used.add(publicPort);
      mapping = { local, publicPort, allowed: new Set() };
      if (!independent) mapping.remote = remote;
      this.#mappings.push(mapping);
    }
    mapping.allowed.add(this.#filterKey(remote));
    return mapping.publicPort;
  }

  /** Filters and translates an inbound datagram; returns the local destination, or undefined when dropped. */
  inbound(from: Endpoint, publicPort: number): Endpoint | undefined {
    const mapping = this.#mappings.find((m) => m.publicPort === publicPort);
    if (!mapping) return undefined;
    const key = this.#filterKey(from);
    if (key !== '*' && !mapping.allowed.has(key)) return undefined;
    return mapping.local;
  }
}

export type DatagramHandler = (bytes: Uint8Array, from: Endpoint, nowMs: number) => void;

export interface SimSocket {
  readonly local: Endpoint;
  send(to: Endpoint, bytes: Uint8Array): void;
}

export interface SimPacket {
  from: Endpoint;
  to: Endpoint;
  bytes: Uint8Array;
  /** Sequence number of this send in the whole network, from 0. */
  index: number;
  /** Sequence number of this send from this socket, from 0. */
  socketIndex: number;
}

interface Host {
  address: string;
  nat: SimNat | undefined;
  sockets: Map<number, DatagramHandler>;
}

interface Scheduled {
  at: number;
  order: number;
  run: () => void;
}

export class SimNetwork {
  nowMs = 0;
  readonly wanLatencyMs: number;
  readonly lanLatencyMs: number;
  /** Return true to drop a datagram as it is sent. */
  loss: ((packet: SimPacket) => boolean) | undefined;
  readonly delivered: SimPacket[] = [];
  #queue: Scheduled[] = [];
  #order = 0;
  #sent = 0;
  #hosts = new Map<string, Host>();
  #nats = new Map<string, SimNat>();

  constructor(options: { wanLatencyMs?: number; lanLatencyMs?: number } = {}) {
    this.wanLatencyMs = options.wanLatencyMs ?? 20;
    this.lanLatencyMs = options.lanLatencyMs ?? 1;
  }

  addNat(publicAddress: string, behavior: SimNatBehavior, seed = 1): SimNat {
    const nat = new SimNat(publicAddress, behavior, seed);
    this.#nats.set(publicAddress, nat);
    return nat;
  }

  /** A host with a public address (no NAT), or a LAN address behind `nat`. */
  addHost(address: string, nat?: SimNat): void {
    this.#hosts.set(address, { address, nat, sockets: new Map() });
  }

  bind(address: string, port: number, handler: DatagramHandler): SimSocket {
    const host = this.#hosts.get(address);
    if (!host) throw new Error(`no host ${address}`);
    host.sockets.set(port, handler);
    const local = { address, port };
    let socketIndex = 0;
    return { local, send: (to, bytes) => this.#send(host, local, to, Uint8Array.from(bytes), socketIndex++) };
  }

  schedule(at: number, run: () => void): void {
    const item = { at: Math.max(at, this.nowMs), order: this.#order++, run };
    let i = this.#queue.length;
    while (i > 0 && (this.#queue[i - 1] as Scheduled).at > item.at) i--;
    this.#queue.splice(i, 0, item);
  }

  /** Runs events in time order until `done()` holds after an event, or time passes `untilMs`. */
  run(untilMs: number, done: () => boolean = () => false): void {
    while (this.#queue.length > 0 && !done()) {
      const next = this.#queue[0] as Scheduled;
      if (next.at > untilMs) break;
      this.#queue.shift();
      this.nowMs = next.at;
      next.run();
    }
    if (!done()) this.nowMs = Math.max(this.nowMs, untilMs);
  }

  #send(host: Host, local: Endpoint, to: Endpoint, bytes: Uint8Array, socketIndex: number): void {
    const index = this.#sent++;
    if (this.loss?.({ from: local, to, bytes, index, socketIndex })) return;
    const nat = host.nat;
    if (!nat) {
      this.schedule(this.nowMs + this.wanLatencyMs, () => this.#arrive(local, to, bytes, index, socketIndex));
      return;
    }
    const peer = this.#hosts.get(to.address);
    if (peer && peer.nat === nat) {
      this.schedule(this.nowMs + this.lanLatencyMs, () => this.#deliver(peer, local, to, bytes, index, socketIndex));
      return;
    }
    if (to.address === nat.publicAddress) return; // no hairpinning
    this.schedule(this.nowMs + this.lanLatencyMs, () => {
      const publicPort = nat.outbound(local, to);
      if (publicPort === undefined) return;
      const from = { address: nat.publicAddress, port: publicPort };
      this.schedule(this.nowMs + this.wanLatencyMs, () => this.#arrive(from, to, bytes, index, socketIndex));
    });
  }

  /** A datagram reaches `to.address` on the internet: a NAT's public side or a public host. */
  #arrive(from: Endpoint, to: Endpoint, bytes: Uint8Array, index: number, socketIndex: number): void {
    const nat = this.#nats.get(to.address);
    if (nat) {
      const local = nat.inbound(from, to.port);
      if (!local) return;
      const host = this.#hosts.get(local.address);
      if (host) this.schedule(this.nowMs + this.lanLatencyMs, () => this.#deliver(host, from, local, bytes, index, socketIndex));
      return;
    }
    const host = this.#hosts.get(to.address);
    if (host && !host.nat) this.#deliver(host, from, to, bytes, index, socketIndex);
  }

  #deliver(host: Host, from: Endpoint, to: Endpoint, bytes: Uint8Array, index: number, socketIndex: number): void {
    const handler = host.sockets.get(to.port);
    if (!handler) return;
    this.delivered.push({ from, to, bytes, index, socketIndex });
    handler(bytes, from, this.nowMs);
  }
}

/** The gateway's probe ports: 2 ports on 1 or 2 public addresses, answering authenticated probes. */
export class SimProbeServer {
  readonly endpoints: Endpoint[];
  readonly observations = new Map<string, ProbeObservation[]>();
  #keys = new Map<string, Uint8Array>();
  #replay = new Map<string, ReplayWindow>();
  #sockets: SimSocket[] = [];
  rejected = 0;

  constructor(net: SimNetwork, addresses: readonly string[], ports: readonly [number, number]) {
    this.endpoints = [];
    for (const [a, address] of addresses.entries()) {
      net.addHost(address);
      for (const [p, port] of ports.entries()) {
        const index = a * 2 + p;
        this.endpoints[index] = { address, port };
        this.#sockets[index] = net.bind(address, port, (bytes, from) => this.#onRequest(index, bytes, from));
      }
    }
  }

  register(sessionId: Uint8Array, probeKey: Uint8Array): void {
    const id = Buffer.from(sessionId).toString('hex');
    this.#keys.set(id, probeKey);
    this.#replay.set(id, new ReplayWindow());
    this.observations.set(id, []);
  }

  observationsFor(sessionId: Uint8Array): ProbeObservation[] {
    return this.observations.get(Buffer.from(sessionId).toString('hex')) ?? [];
  }

  #onRequest(index: number, bytes: Uint8Array, from: Endpoint): void {
    let key: Uint8Array | undefined;
    let id = '';
    try {
      const request = decodeProbeRequest(bytes, (sid) => {
        id = Buffer.from(sid).toString('hex');
        key = this.#keys.get(id);
        return key;
      });
      if (!key || !this.#replay.get(id)?.accept(request.seq)) {
        this.rejected++;
        return;
      }
      this.observations.get(id)?.push({ target: index, mapped: from, seq: request.seq });
      let answerFrom = index;
      if (request.changePort) answerFrom ^= 1;
      if (request.changeAddress && this.endpoints.length === 4) answerFrom ^= 2;
      const response = encodeProbeResponse({ seq: request.seq, receivedOn: index, answeredFrom: answerFrom, mapped: from }, key);
      this.#sockets[answerFrom]?.send(from, response);
    } catch {
      this.rejected++;
    }
  }
}

/** A peer: one socket shared by probes and punches, as on a real QUIC endpoint. */
export class SimPeer {
  readonly socket: SimSocket;
  session: PunchSession | undefined;
  readonly events: PunchEvent[] = [];
  readonly responses: { receivedOn: number; answeredFrom: number; mapped: Endpoint; seq: number }[] = [];
  #net: SimNetwork;
  #probeKey: Uint8Array | undefined;
  #timerGeneration = 0;

  constructor(net: SimNetwork, address: string, port: number, nat?: SimNat) {
    this.#net = net;
    net.addHost(address, nat);
    this.socket = net.bind(address, port, (bytes, from, nowMs) => this.#onDatagram(bytes, from, nowMs));
  }

  /**
   * Probes like a real peer must: first endpoint 0 alone, with the filtering tests ("answer from the other
   * port / address"), and only after those answers (or a timeout) the other endpoints in index order, so that
   * (1) our own NAT has not yet been opened towards the other port/address when the tests run, and
   * (2) endpoint-dependent NATs allocate mappings in probe order. Returns the gateway's observations and the
   * filtering report once the network settles.
   */
  probe(server: SimProbeServer, sessionId: Uint8Array, probeKey: Uint8Array, options: { filteringTests?: number; settleMs?: number } = {}) {
    this.#probeKey = probeKey;
    server.register(sessionId, probeKey);
    const settleMs = options.settleMs ?? 500;
    let seq = 1;
    const tests = options.filteringTests ?? 2;
    const [first, ...others] = server.endpoints as [Endpoint, ...Endpoint[]];
    const hasSecondAddress = server.endpoints.length === 4;
    this.socket.send(first, encodeProbeRequest({ seq: seq++, sessionId, changePort: false, changeAddress: false }, probeKey));
    for (let i = 0; i < tests; i++) {
      this.socket.send(first, encodeProbeRequest({ seq: seq++, sessionId, changePort: true, changeAddress: false }, probeKey));
      if (hasSecondAddress) this.socket.send(first, encodeProbeRequest({ seq: seq++, sessionId, changePort: false, changeAddress: true }, probeKey));
    }
    this.#net.run(this.#net.nowMs + settleMs);
    for (const to of others) this.socket.send(to, encodeProbeRequest({ seq: seq++, sessionId, changePort: false, changeAddress: false }, probeKey));
    this.#net.run(this.#net.nowMs + settleMs);
    const changed = (bit: number) => this.responses.filter((r) => ((r.receivedOn ^ r.answeredFrom) & bit) !== 0).length;
    const filtering: { changePort: FilteringTest; changeAddress?: FilteringTest } = { changePort: { sent: tests, received: changed(1) } };
    if (hasSecondAddress) filtering.changeAddress = { sent: tests, received: changed(2) };
    return { observations: server.observationsFor(sessionId), filtering };
  }

  /** Installs a punch session and schedules its start. */
  attach(session: PunchSession, startAtMs: number): void {
    this.session = session;
    this.#net.schedule(startAtMs, () => this.#apply(session.start(this.#net.nowMs)));
  }

  #apply(out: PunchOutput): void {
    for (const t of out.transmits) this.socket.send(t.to, t.bytes);
    this.events.push(...out.events);
    const generation = ++this.#timerGeneration;
    if (out.deadlineMs !== undefined) {
      const session = this.session;
      this.#net.schedule(out.deadlineMs, () => {
        if (generation === this.#timerGeneration && session) this.#apply(session.tick(this.#net.nowMs));
      });
    }
  }

  #onDatagram(bytes: Uint8Array, from: Endpoint, nowMs: number): void {
    const kind = rawDatagramKind(bytes);
    if (kind === 'probe-response' && this.#probeKey) {
      try {
        this.responses.push(decodeProbeResponse(bytes, this.#probeKey));
      } catch {
        // dropped: counted nowhere, the test looks at what arrived
      }
    } else if (kind === 'punch' && this.session) {
      this.#apply(this.session.receive(bytes, from, nowMs));
    }
  }
}

/** Runs the network until both peers' sessions are done (established or failed) or `limitMs` passes. */
export function runUntilSettled(net: SimNetwork, peers: readonly SimPeer[], limitMs: number): void {
  const settled = () => peers.every((p) => p.session?.state === 'established' || p.session?.state === 'failed');
  net.run(limitMs, settled);
}
