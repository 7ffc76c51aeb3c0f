/**
 * The gateway's UDP probe server (direct path, see protocol/src/nat/README.md): a pair of probe ports (N, N+1)
 * on one specific address, optionally the same pair on a second address. Each peer session gets a random probe
 * key and an anti-replay window; every authenticated probe is recorded as an observation (which probe endpoint
 * saw which source address and port) and answered from the endpoint the request asks for.
 *
 * Why a specific address and never 0.0.0.0: on a multi-homed host a wildcard socket answers from whatever
 * address the route picks, and the peer's NAT drops a reply that does not come from the address it sent to.
 *
 * Nothing unauthenticated or replayed is ever answered (no reflection, no amplification: a response is never
 * larger than its request), a session's observations are capped, and a session's state goes when it closes.
 */
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { isIPv4, isIPv6 } from 'node:net';
import {
  decodeProbeRequest,
  type Endpoint,
  encodeProbeResponse,
  ErrorCode,
  endpoint,
  type NatProbeInfo,
  NatError,
  type ProbeObservation,
  ReplayWindow,
} from '@narrowlink/protocol';

/** Probe key size, bytes (HMAC-SHA256 key). */
export const PROBE_KEY_BYTES = 32;
/** Observations (and answers) per session at most: a peer needs about ten. */
export const MAX_PROBES_PER_SESSION = 64;

export interface NatProbeServerOptions {
  /** The specific (non-wildcard) address to bind. */
  address: string;
  /** First probe port; the second is `port + 1`. 0 picks a free consecutive pair (tests). */
  port: number;
  /** A second public address with the same two ports (lets peers tell address-dependent filtering apart). */
  secondAddress?: string;
  /**
   * What peers are told to probe when they cannot reach the bound addresses directly: the public address(es) of
   * a load balancer that forwards the same ports to `address` (and `secondAddress`) with the client's source
   * address preserved (Kubernetes: externalTrafficPolicy Local). Default: the bound addresses.
   */
  advertiseAddress?: string;
  advertiseSecondAddress?: string;
  /**
   * Called for every datagram handled: `answered`, `limited` (the session used up its probes), `send_error`, or
   * the `ErrorCode.NAT_*` code it was dropped for.
   */
  onResult?: (result: string) => void;
  /** Random source for probe keys (injected in tests); default crypto.randomBytes. */
  random?: (n: number) => Uint8Array;
}

interface ProbeSession {
  key: Uint8Array;
  replay: ReplayWindow;
  observations: ProbeObservation[];
}

export class NatProbeServer {
  /** Probe endpoints by index: bit 0 = second port, bit 1 = second address. */
  readonly endpoints: Endpoint[];
  /** Datagrams handled, by result (`answered` or the code a datagram was dropped for). */
  readonly counts = new Map<string, number>();
  readonly #sockets: dgram.Socket[];
  readonly #sessions = new Map<string, ProbeSession>();
  readonly #options: NatProbeServerOptions;
  #closed = false;

  private constructor(options: NatProbeServerOptions, sockets: dgram.Socket[], endpoints: Endpoint[]) {
    this.#options = options;
    this.#sockets = sockets;
    this.endpoints = endpoints;
    sockets.forEach((socket, index) => {
      socket.on('message', (bytes, rinfo) => this.#onDatagram(index, bytes, rinfo));
      // A send error (ICMP unreachable reported on the socket) must not crash the gateway.
      socket.on('error', () => this.#count('send_error'));
    });
  }

  /** Binds every probe socket; rejects (closing what was bound) when an address or port is unavailable. */
  static async start(options: NatProbeServerOptions): Promise<NatProbeServer> {
    const addresses = [options.address, ...(options.secondAddress ? [options.secondAddress] : [])];
    for (const address of [...addresses, ...[options.advertiseAddress, options.advertiseSecondAddress].filter((a): a is string => a !== undefined)]) {
      if (!isIPv4(address) && !isIPv6(address)) throw new TypeError(`NAT probe address must be an IP address, got "${address}"`);
      if (address === '0.0.0.0' || address === '::') throw new TypeError('NAT probe address must be a specific address, not a wildcard');
    }
    if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65_534) throw new TypeError(`NAT probe port must be 0..65534, got ${options.port}`);
    const attempts = options.port === 0 ? 20 : 1;
    let lastError: unknown;
    for (let attempt = 0; attempt < attempts; attempt++) {
      const sockets: dgram.Socket[] = [];
      try {
        // The first socket fixes N (a random free one when port is 0); the others must get exactly theirs.
        let base = options.port;
        for (const [a, address] of addresses.entries()) {
          for (let p = 0; p < 2; p++) {
            const socket = dgram.createSocket({ type: isIPv6(address) ? 'udp6' : 'udp4' });
            sockets.push(socket);
            const port = await bind(socket, address, base === 0 ? 0 : base + p);
            if (a === 0 && p === 0) base = port;
          }
        }
        const endpoints = sockets.map((s) => {
          const bound = s.address();
          return endpoint(bound.address, bound.port);
        });
        return new NatProbeServer(options, sockets, endpoints);
      } catch (error) {
        lastError = error;
        for (const socket of sockets) socket.close();
      }
    }
    throw lastError;
  }

  /** The probe endpoints as peers are told them (see `advertiseAddress`), by index. */
  get advertisedEndpoints(): Endpoint[] {
    const { advertiseAddress, advertiseSecondAddress } = this.#options;
    return this.endpoints.map((e, index) => {
      const advertised = index & 2 ? advertiseSecondAddress : advertiseAddress;
      return advertised ? endpoint(advertised, e.port) : e;
    });
  }

  /** Sessions currently registered (bounded by the gateway's open sessions). */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  /** Starts probing for a session: a fresh key and replay window. Returns what the peer needs. */
  register(sessionId: string): NatProbeInfo {
    const key = (this.#options.random ?? randomBytes)(PROBE_KEY_BYTES);
    this.#sessions.set(sessionId, { key, replay: new ReplayWindow(), observations: [] });
    return {
      type: 'nat_probe_info',
      key: Buffer.from(key).toString('base64'),
      endpoints: this.advertisedEndpoints.map((e, index) => ({ index, address: e.address, port: e.port })),
    };
  }

  /** Whether the session was registered (and not yet forgotten). */
  has(sessionId: string): boolean {
    return this.#sessions.has(sessionId);
  }

  /** What the probe ports saw of this session, in arrival order. */
  observations(sessionId: string): ProbeObservation[] {
    return [...(this.#sessions.get(sessionId)?.observations ?? [])];
  }

  /** Forgets a session (on session close): its probes are no longer answered. */
  unregister(sessionId: string): void {
    this.#sessions.delete(sessionId);
  }

  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    this.#sessions.clear();
    return Promise.all(this.#sockets.map((s) => new Promise<void>((resolve) => s.close(() => resolve())))).then(() => undefined);
  }

  #count(result: string): void {
    this.counts.set(result, (this.counts.get(result) ?? 0) + 1);
    this.#options.onResult?.(result);
  }

  #onDatagram(index: number, bytes: Buffer, rinfo: dgram.RemoteInfo): void {
    let session: ProbeSession | undefined;
    try {
      const request = decodeProbeRequest(bytes, (sid) => {
        session = this.#sessions.get(Buffer.from(sid).toString('utf8'));
        return session?.key;
      });
      const current = session as ProbeSession;
      if (current.observations.length >= MAX_PROBES_PER_SESSION) return this.#count('limited');
      // A captured probe replayed (from anywhere) records nothing and is not answered again.
      if (!current.replay.accept(request.seq)) return this.#count(ErrorCode.NAT_REPLAYED);
      const mapped = endpoint(rinfo.address, rinfo.port);
      current.observations.push({ target: index, mapped, seq: request.seq });
      let answerFrom = index;
      if (request.changePort) answerFrom ^= 1;
      if (request.changeAddress && this.endpoints.length === 4) answerFrom ^= 2;
      const socket = this.#sockets[answerFrom] as dgram.Socket;
      const response = encodeProbeResponse({ seq: request.seq, receivedOn: index, answeredFrom: answerFrom, mapped }, current.key);
      socket.send(response, rinfo.port, rinfo.address);
      this.#count('answered');
    } catch (error) {
      this.#count(error instanceof NatError ? error.code : ErrorCode.NAT_INVALID_INPUT);
    }
  }
}

function bind(socket: dgram.Socket, address: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind({ address, port, exclusive: true }, () => {
      socket.off('error', reject);
      resolve(socket.address().port);
    });
  });
}
