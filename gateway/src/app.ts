/**
 * The gateway's HTTP surfaces as fastify apps; neither listens (main.ts does).
 *
 * - `buildApp`, the public listener (behind the LoadBalancer): the two WebSocket endpoints and nothing else.
 *   Upgrades are authenticated on the raw `upgrade` event, before any WebSocket exists, and refused with a plain
 *   HTTP status and a coded JSON body; every plain HTTP request is a coded 404.
 * - `buildAdminApp`, the admin listener (`--admin-listen`, loopback by default; the pod network in the chart):
 *   `/healthz`, `/readyz` and `/metrics`. Metrics tell session counts, policy outcomes and load, and readiness
 *   tells when a replica drains: nothing for whoever can reach the public port (issue 10).
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { DEFAULT_CIPHERS as tlsDefaultCiphers } from 'node:tls';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { WebSocketServer } from 'ws';
import { GatewayError, GatewayErrorCode } from './errors.ts';
import type { Gateway } from './gateway.ts';
import type { SessionKind } from './peer-session.ts';

export interface AppOptions {
  gateway: Gateway;
  log: Logger;
  /** TLS key and certificate (PEM). Without them the app serves plain HTTP (loopback only; main.ts enforces). */
  tls?: { key: string; cert: string };
  /** Largest WebSocket message accepted, bytes. Default 1 MiB + frame header. */
  maxMessageBytes?: number;
  /**
   * The gateway's URL as clients dial it (`wss://gw.example.com`, path ignored), when something in front of it
   * terminates TLS or rewrites the Host header: key-bound tokens' proofs must name it (`htu`). Default: the URL of
   * the request as this listener sees it (see {@link proofUrl}).
   */
  publicUrl?: string;
}

/**
 * The `htu` a proof of possession must name for an upgrade to `path`: the configured public URL's origin, or else
 * `wss` when this listener terminates TLS (`ws` otherwise), the Host header, and the path. Behind a TCP load
 * balancer (the chart's Service) that is exactly what the client dialled. A proxy that terminates TLS or rewrites
 * Host changes it, and needs `publicUrl`. Without `publicUrl` the host comes from the client's own Host header,
 * so the check proves the proof was made for this request, not that it was made for this gateway: the token's
 * audience and the replay cache carry that part. Undefined when there is no Host header (no proof can match).
 */
export function proofUrl(path: string, host: string | undefined, tls: boolean, publicUrl?: string): string | undefined {
  if (publicUrl !== undefined) {
    const base = new URL(publicUrl);
    return `${base.protocol}//${base.host}${path}`;
  }
  if (host === undefined || host === '' || /[\s/?#@]/.test(host)) return undefined;
  return `${tls ? 'wss' : 'ws'}://${host}${path}`;
}

const ENDPOINTS: Record<string, SessionKind> = { '/v1/agent': 'agent', '/v1/client': 'client' };

/** TLS settings of the gateway's listener; also used to swap in a rotated certificate. */
export function tlsServerOptions(tls: { key: string; cert: string }) {
  return {
    key: tls.key,
    cert: tls.cert,
    minVersion: 'TLSv1.2' as const,
    // Prefer AES-128-GCM: as safe as AES-256 here and measurably cheaper per relayed byte,
    // which the gateway pays twice (decrypt from one peer, encrypt to the other).
    ciphers: `TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:${tlsDefaultCiphers}`,
    honorCipherOrder: true,
  };
}

export interface AdminAppOptions {
  gateway: Gateway;
  log: Logger;
}

/** A coded 404 for anything not served (the same body shape as an upgrade refusal). */
function notFound(app: FastifyInstance, message: (path: string) => string): void {
  app.setNotFoundHandler((request, reply) => {
    const path = (request.url ?? '').split('?')[0] ?? '';
    const error = new GatewayError(GatewayErrorCode.NOT_FOUND, 404, message(path.slice(0, 200)));
    return reply.code(404).send(error.toJSON());
  });
}

/** The admin listener: health, readiness and Prometheus metrics, plain HTTP. Never listens. */
export function buildAdminApp(options: AdminAppOptions): FastifyInstance {
  const { gateway } = options;
  const app = Fastify({
    // Request lines at info would drown the log (health probes, metrics scrapes): keep warnings and up.
    loggerInstance: options.log.child({ component: 'admin-http' }, { level: 'warn' }),
  }) as unknown as FastifyInstance;

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    if (!gateway.ready) return reply.code(503).send({ status: gateway.shuttingDown ? 'draining' : 'not ready' });
    return { status: 'ready', sessions: gateway.sessionCount, streams: gateway.openStreams };
  });
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', gateway.metrics.registry.contentType);
    return gateway.metrics.registry.metrics();
  });
  notFound(app, (path) => `nothing at ${path}; the admin listener serves /healthz, /readyz and /metrics`);
  return app;
}

/** The public listener: the WebSocket endpoints only. Never listens. */
export function buildApp(options: AppOptions): FastifyInstance {
  const { gateway } = options;
  const app = Fastify({
    loggerInstance: options.log.child({ component: 'http' }, { level: 'warn' }),
    ...(options.tls ? { https: tlsServerOptions(options.tls) } : {}),
  }) as unknown as FastifyInstance;
  notFound(app, (path) => `no HTTP endpoint at ${path}: this listener serves WebSocket upgrades to /v1/agent and /v1/client only`);

  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    maxPayload: options.maxMessageBytes ?? 1024 * 1024 + 9,
    // No client-side buffering limits here: the mux's credits bound what we queue.
    // One message per socket per event-loop turn: ws otherwise parses a whole read (64 KiB: thousands of small
    // frames) at once, so one peer flooding OPENs or PINGs holds the loop for tens of milliseconds per read while
    // every other session's frames wait behind it. Deferred, the sockets take turns (issue 10, class 4).
    allowSynchronousEvents: false,
  });

  app.server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    void handleUpgrade(request, socket, head);
  });

  async function handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', () => undefined);
    const path = (request.url ?? '').split('?')[0] ?? '';
    const kind = ENDPOINTS[path];
    try {
      if (!kind) throw new GatewayError(GatewayErrorCode.NOT_FOUND, 404, `no WebSocket endpoint at ${path}; use /v1/agent or /v1/client`);
      const agentHeader = request.headers['x-narrowlink-agent'];
      // Several DPoP headers arrive joined with ", ", which no proof contains: they are refused as invalid (RFC 9449 §4.3).
      const dpop = request.headers.dpop;
      const proof = { proof: Array.isArray(dpop) ? dpop.join(', ') : dpop, htm: 'GET', htu: proofUrl(path, request.headers.host, options.tls !== undefined, options.publicUrl) };
      const identity = await gateway.authenticate(kind, request.headers.authorization, typeof agentHeader === 'string' ? agentHeader : undefined, proof);
      if (socket.destroyed) return;
      wss.handleUpgrade(request, socket, head, (ws) => {
        gateway.attach(kind, identity, ws);
      });
    } catch (error) {
      const e = error instanceof GatewayError ? error : new GatewayError(GatewayErrorCode.INTERNAL, 500, 'internal error', { cause: error });
      if (e.statusCode >= 500 && e.code === GatewayErrorCode.INTERNAL) options.log.error({ err: error }, 'upgrade failed');
      else options.log.info({ code: e.code, reason: e.reason, kind }, 'upgrade refused');
      rejectUpgrade(socket, e);
    }
  }

  app.addHook('onClose', async () => {
    wss.close();
  });
  return app;
}

const STATUS_TEXT: Record<number, string> = { 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 500: 'Internal Server Error', 503: 'Service Unavailable' };

function rejectUpgrade(socket: Duplex, error: GatewayError): void {
  if (socket.destroyed) return;
  const body = JSON.stringify(error.toJSON());
  const headers = [
    `HTTP/1.1 ${error.statusCode} ${STATUS_TEXT[error.statusCode] ?? 'Error'}`,
    'Content-Type: application/json',
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Connection: close',
    ...(error.statusCode === 401 ? ['WWW-Authenticate: Bearer realm="narrowlink"'] : []),
  ];
  socket.end(`${headers.join('\r\n')}\r\n\r\n${body}`);
}
