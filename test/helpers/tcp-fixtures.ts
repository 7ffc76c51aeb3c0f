import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';

/*
 * Deterministic byte streams.
 *
 * A stream for (bytes, seed) is a sequence of 1 MiB blocks, truncated to `bytes`. Block i is an 8-byte
 * header (uint32 LE block index, uint32 LE seed) followed by a (1 MiB - 8)-byte body generated once per
 * seed with mulberry32. Reusing the body keeps generation cheap (no per-block copy: header and body go
 * out in one writev), and the header makes a dropped, duplicated or reordered block change the hash.
 */

/** Size of one block of a deterministic stream, in bytes (1 MiB). */
export const BLOCK_BYTES = 1024 * 1024;
const HEADER_BYTES = 8;
const BODY_BYTES = BLOCK_BYTES - HEADER_BYTES;
const MAX_CACHED_BODIES = 64;

const bodies = new Map<number, Buffer>();
const hashes = new Map<string, string>();

function normalizeSeed(seed: number): number {
  if (!Number.isFinite(seed)) throw new TypeError(`seed must be a finite number, got ${seed}`);
  return Math.trunc(seed) >>> 0;
}

function bodyFor(seed: number): Buffer {
  const cached = bodies.get(seed);
  if (cached !== undefined) return cached;
  const words = new Uint32Array(Math.ceil(BODY_BYTES / 4));
  let state = (seed ^ 0x9e3779b9) >>> 0;
  for (let i = 0; i < words.length; i++) {
    // mulberry32: small, fast and good enough that the body is incompressible.
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    words[i] = (t ^ (t >>> 14)) >>> 0;
  }
  const body = Buffer.from(words.buffer, 0, BODY_BYTES);
  if (bodies.size >= MAX_CACHED_BODIES) {
    const oldest = bodies.keys().next().value;
    if (oldest !== undefined) bodies.delete(oldest);
  }
  bodies.set(seed, body);
  return body;
}

/**
 * The pieces of the deterministic stream for (`bytes`, `seed`), grouped per 1 MiB block.
 *
 * Each yielded array is one block (header and body slices, never copied; do not mutate them). The
 * concatenation of all pieces is exactly `bytes` long.
 *
 * @param bytes - total stream length in bytes (integer ≥ 0).
 * @param seed - any finite number; truncated to uint32.
 */
export function* deterministicBlocks(bytes: number, seed = 1): Generator<Buffer[]> {
  if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`bytes must be an integer >= 0, got ${bytes}`);
  const s = normalizeSeed(seed);
  const body = bodyFor(s);
  let left = bytes;
  for (let index = 0; left > 0; index++) {
    const header = Buffer.allocUnsafe(HEADER_BYTES);
    header.writeUInt32LE(index >>> 0, 0);
    header.writeUInt32LE(s, 4);
    if (left <= HEADER_BYTES) {
      yield [header.subarray(0, left)];
      return;
    }
    const bodyBytes = Math.min(BODY_BYTES, left - HEADER_BYTES);
    yield [header, bodyBytes === BODY_BYTES ? body : body.subarray(0, bodyBytes)];
    left -= HEADER_BYTES + bodyBytes;
  }
}

/**
 * sha256 (lowercase hex) of the deterministic stream for (`bytes`, `seed`). Results are memoized, so
 * calling this before a timed transfer takes the hashing cost out of the measurement.
 */
export function deterministicSha256(bytes: number, seed = 1): string {
  const key = `${bytes}:${normalizeSeed(seed)}`;
  const cached = hashes.get(key);
  if (cached !== undefined) return cached;
  const hash = createHash('sha256');
  for (const block of deterministicBlocks(bytes, seed)) for (const piece of block) hash.update(piece);
  const hex = hash.digest('hex');
  hashes.set(key, hex);
  return hex;
}

function waitForDrain(socket: net.Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      socket.off('drain', onDrain);
      socket.off('close', onClose);
      socket.off('error', onError);
    };
    const onDrain = (): void => {
      cleanup();
      resolve();
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error('socket closed while waiting for drain'));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(err);
    };
    socket.on('drain', onDrain);
    socket.on('close', onClose);
    socket.on('error', onError);
  });
}

/**
 * Write the deterministic stream for (`bytes`, `seed`) to `socket`, respecting backpressure (waits for
 * `drain` whenever the writable buffer is above its high-water mark). Does not end the socket.
 *
 * @param onPiece - optional observer of every piece written (e.g. to hash what was sent).
 * @param afterBlock - optional hook after each 1 MiB block with the bytes written so far (progress, pacing).
 * @returns resolves once everything is handed to the socket; rejects if it closes or errors first.
 */
export async function writeDeterministic(
  socket: net.Socket,
  bytes: number,
  seed = 1,
  onPiece?: (piece: Buffer) => void,
  afterBlock?: (written: number) => void | Promise<void>,
): Promise<void> {
  let written = 0;
  for (const block of deterministicBlocks(bytes, seed)) {
    if (socket.destroyed) throw new Error('socket destroyed while writing');
    // cork/uncork turns header + body into a single writev syscall.
    socket.cork();
    for (const piece of block) {
      onPiece?.(piece);
      socket.write(piece);
      written += piece.length;
    }
    socket.uncork();
    if (socket.writableNeedDrain) await waitForDrain(socket);
    await afterBlock?.(written);
  }
}

/** A listening test server. */
export interface TestServer {
  /** TCP port on 127.0.0.1. */
  port: number;
  /** Stop listening and destroy every open connection. */
  close(): Promise<void>;
}

/** One connection completed by a sink server. */
export interface SinkResult {
  /** Bytes received, until the peer's FIN. */
  bytes: number;
  /** sha256 (lowercase hex) of the received bytes; empty string when hashing was disabled. */
  sha256: string;
  /** Milliseconds from accept to the peer's FIN. */
  ms: number;
}

/** Server returned by {@link startSinkServer}. */
export interface SinkServer extends TestServer {
  /** Completed connections, in completion order (live array). */
  results: SinkResult[];
}

/** Server returned by {@link startSourceServer}. */
export interface SourceServer extends TestServer {
  /** sha256 (lowercase hex) of what every connection receives. */
  expectedSha256: string;
  /** Bytes each connection receives. */
  bytes: number;
}

async function listen(server: net.Server, port = 0): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (typeof address !== 'object' || address === null) throw new Error('server has no TCP address');
  return address.port;
}

function trackedServer(onConnection: (socket: net.Socket) => void): { server: net.Server; close(): Promise<void> } {
  const sockets = new Set<net.Socket>();
  // allowHalfOpen: a sink must still be able to reply after the client's FIN.
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    // Peers in tests reset connections on purpose; an unhandled 'error' must not crash the runner.
    socket.on('error', () => {});
    onConnection(socket);
  });
  const close = async (): Promise<void> => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of sockets) socket.destroy();
    await closed;
  };
  return { server, close };
}

/**
 * Start a TCP echo server on 127.0.0.1 (random port): every byte received is written back; the
 * server half-closes after the client does.
 */
export async function startEchoServer(): Promise<TestServer> {
  const { server, close } = trackedServer((socket) => {
    socket.pipe(socket);
  });
  return { port: await listen(server), close };
}

/** Options for {@link startSinkServer}. */
export interface SinkOptions {
  /** Listen port on 127.0.0.1; default 0 (random). */
  port?: number;
  /**
   * Hash the received bytes (default true). When false the reply is the received byte count in decimal
   * instead of the sha256, which keeps hashing CPU out of throughput measurements.
   */
  hash?: boolean;
  /** Called once per connection when the peer's FIN arrives. */
  onResult?: (result: SinkResult) => void;
}

/**
 * Start a sink on 127.0.0.1: reads everything a connection sends; on the peer's FIN replies with the
 * sha256 (lowercase hex, 64 ASCII bytes, no newline) of what it received and closes.
 */
export async function startSinkServer(options: SinkOptions = {}): Promise<SinkServer> {
  const hashing = options.hash ?? true;
  const results: SinkResult[] = [];
  const { server, close } = trackedServer((socket) => {
    const started = performance.now();
    const hash = hashing ? createHash('sha256') : undefined;
    let bytes = 0;
    socket.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      hash?.update(chunk);
    });
    socket.on('end', () => {
      const result: SinkResult = { bytes, sha256: hash?.digest('hex') ?? '', ms: performance.now() - started };
      results.push(result);
      options.onResult?.(result);
      socket.end(hashing ? result.sha256 : String(bytes));
    });
  });
  return { port: await listen(server, options.port), close, results };
}

/**
 * Start a source on 127.0.0.1: on every connection writes `bytes` deterministic pseudo-random bytes
 * (see {@link deterministicBlocks}) as fast as backpressure allows, then ends. Incoming data is ignored.
 *
 * @param bytes - bytes per connection.
 * @param seed - stream seed (default 1).
 */
export async function startSourceServer(bytes: number, seed = 1): Promise<SourceServer> {
  const expectedSha256 = deterministicSha256(bytes, seed);
  const { server, close } = trackedServer((socket) => {
    socket.resume();
    writeDeterministic(socket, bytes, seed).then(
      () => socket.end(),
      () => socket.destroy(),
    );
  });
  return { port: await listen(server), close, expectedSha256, bytes };
}

/** Start a tiny HTTP/1.1 server on 127.0.0.1 answering every request with `200 hello` (text/plain). */
export async function startHttpDemo(): Promise<TestServer> {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '5' });
    res.end('hello');
  });
  const port = await listen(server);
  return {
    port,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    },
  };
}

/** Result of {@link sendAndHash}. */
export interface SendResult {
  /** sha256 (lowercase hex) of the bytes sent. */
  sentSha256: string;
  /** sha256 (lowercase hex) of the whole reply. */
  replySha256: string;
  /** Reply length in bytes. */
  replyBytes: number;
  /** First ≤ 128 bytes of the reply as UTF-8; for a sink server this is the sink's sha256 hex. */
  replyHead: string;
  /** Milliseconds from connect start to the reply's end. */
  ms: number;
}

/** Options shared by the client helpers. */
export interface ClientOptions {
  /** Host to connect to; default `127.0.0.1`. */
  host?: string;
  /** Abort (destroy + reject) after this many milliseconds; default 60000. */
  timeoutMs?: number;
}

function connect(port: number, options: ClientOptions): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: options.host ?? '127.0.0.1', port });
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

function withTimeout<T>(what: string, timeoutMs: number, socket: () => net.Socket | undefined, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      socket()?.destroy();
      reject(new Error(`${what} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Connect to 127.0.0.1:`port`, write the deterministic stream for (`bytes`, `seed`), half-close, and
 * read the reply until the server closes. Against an echo server `replySha256 === sentSha256`; against
 * a sink server `replyHead === sentSha256`.
 */
export function sendAndHash(port: number, bytes: number, seed = 1, options: ClientOptions = {}): Promise<SendResult> {
  let socket: net.Socket | undefined;
  const work = (async (): Promise<SendResult> => {
    const started = performance.now();
    socket = await connect(port, options);
    const s = socket;
    const sent = createHash('sha256');
    const reply = createHash('sha256');
    let replyBytes = 0;
    let head = Buffer.alloc(0);
    const ended = new Promise<void>((resolve, reject) => {
      s.on('data', (chunk: Buffer) => {
        replyBytes += chunk.length;
        reply.update(chunk);
        if (head.length < 128) head = Buffer.concat([head, chunk.subarray(0, 128 - head.length)]);
      });
      s.once('end', resolve);
      s.once('error', reject);
      s.once('close', () => reject(new Error('connection closed before the reply ended')));
    });
    // Observed below; this only stops an early reset from counting as an unhandled rejection.
    ended.catch(() => {});
    await writeDeterministic(s, bytes, seed, (piece) => sent.update(piece));
    s.end();
    await ended;
    s.destroy();
    return {
      sentSha256: sent.digest('hex'),
      replySha256: reply.digest('hex'),
      replyBytes,
      replyHead: head.toString('utf8'),
      ms: performance.now() - started,
    };
  })();
  return withTimeout('sendAndHash', options.timeoutMs ?? 60_000, () => socket, work);
}

/** Result of {@link receiveAndHash}. */
export interface ReceiveResult {
  /** Bytes received until the server's FIN. */
  bytes: number;
  /** sha256 (lowercase hex) of the received bytes. */
  sha256: string;
  /** Milliseconds from connect start to the server's FIN. */
  ms: number;
}

/**
 * Connect to 127.0.0.1:`port`, send nothing, and read until the server ends the stream (e.g. a
 * {@link startSourceServer}); half-closes in return.
 */
export function receiveAndHash(port: number, options: ClientOptions = {}): Promise<ReceiveResult> {
  let socket: net.Socket | undefined;
  const work = (async (): Promise<ReceiveResult> => {
    const started = performance.now();
    socket = await connect(port, options);
    const s = socket;
    const hash = createHash('sha256');
    let bytes = 0;
    await new Promise<void>((resolve, reject) => {
      s.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
      });
      s.once('end', resolve);
      s.once('error', reject);
      s.once('close', () => reject(new Error('connection closed before the stream ended')));
    });
    const ms = performance.now() - started;
    s.end();
    s.destroy();
    return { bytes, sha256: hash.digest('hex'), ms };
  })();
  return withTimeout('receiveAndHash', options.timeoutMs ?? 60_000, () => socket, work);
}
