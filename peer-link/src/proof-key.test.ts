/**
 * GatewayLink with `proofKey` (key-bound tokens) against a gateway stand-in over a real WebSocket that checks what
 * arrives with the protocol's own verifier: a DPoP proof per dial for that dial's token and URL, and a fresh REAUTH
 * proof with every `reauth`.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { after, describe, test } from 'node:test';
import { generateProofKey, jwkThumbprint, Mux, PROTOCOL_VERSION, ProofReplayCache, REAUTH_PROOF_METHOD, verifyProof } from '@narrowlink/protocol';
import { type WebSocket, WebSocketServer } from 'ws';
import { GatewayLink } from './gateway-link.ts';

const key = generateProofKey();
const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

interface Seen {
  token: string;
  dpop: string | undefined;
  url: string;
  reauths: Array<{ token: string; proof: string | undefined }>;
  ws: WebSocket;
}

/** Records every upgrade's token, DPoP header and URL, and every reauth; the session's token lasts `lifetimeMs`. */
async function gatewayStandIn(lifetimeMs: number) {
  const seen: Seen[] = [];
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const server = createServer();
  server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    wss.handleUpgrade(request, socket, head, (ws) => {
      const dpop = request.headers.dpop;
      const entry: Seen = {
        token: (request.headers.authorization ?? '').replace(/^Bearer /, ''),
        dpop: typeof dpop === 'string' ? dpop : undefined,
        url: `ws://${request.headers.host}${request.url}`,
        reauths: [],
        ws,
      };
      seen.push(entry);
      const mux = new Mux({
        role: 'acceptor',
        send: (bytes) => ws.send(bytes, { binary: true }),
        handlers: {
          onControl: (message) => {
            if (message.type === 'hello') {
              mux.sendControl({
                type: 'hello_ok',
                version: PROTOCOL_VERSION,
                sessionId: `s-${seen.length}`,
                identity: { sub: 'alice', groups: [], typ: 'client', expiresAt: Date.now() + lifetimeMs },
                streamWindow: 256 * 1024,
                heartbeatIntervalMs: 10_000,
              });
            } else if (message.type === 'reauth') {
              entry.reauths.push({ token: message.token, proof: message.proof });
            }
          },
        },
      });
      ws.on('message', (data) => mux.receive(data as Buffer));
      ws.on('close', () => mux.close());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(async () => {
    for (const client of wss.clients) client.terminate();
    wss.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

async function until(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function link(url: string, options: { proofKey?: boolean } = {}): GatewayLink {
  let n = 0;
  const l = new GatewayLink({
    url,
    role: 'client',
    token: () => `tok-${++n}`,
    ...(options.proofKey ? { proofKey: key.privateKey } : {}),
    backoff: { baseMs: 10, maxMs: 50, random: () => 0.5 },
    connectTimeoutMs: 2000,
  });
  cleanups.push(() => l.close());
  return l.start();
}

describe('GatewayLink proofKey', () => {
  test('every dial sends a DPoP proof for that dial’s token and URL, each accepted once', async () => {
    const gw = await gatewayStandIn(600_000);
    const replay = new ProofReplayCache();
    link(gw.url, { proofKey: true });
    await until(() => gw.seen.length === 1, 'first dial');
    // Drop the session: the link dials again with a fresh token and a fresh proof.
    gw.seen[0]?.ws.terminate();
    await until(() => gw.seen.length === 2, 'second dial');
    const jtis = new Set<string>();
    for (const dial of gw.seen) {
      assert.equal(dial.url, `${gw.url}/v1/client`);
      const verified = await verifyProof(dial.dpop, { token: dial.token, htm: 'GET', htu: dial.url, expectedJkt: jwkThumbprint(key.x), nowMs: Date.now(), replay });
      jtis.add(verified.jti);
    }
    assert.deepEqual(
      gw.seen.map((d) => d.token),
      ['tok-1', 'tok-2'],
    );
    assert.equal(jtis.size, 2);
  });

  test('a reauth carries a fresh REAUTH proof for the new token, by the same key, for the dialled URL', async () => {
    // 80 % of 1.5 s: the link re-authenticates after 1.2 s.
    const gw = await gatewayStandIn(1500);
    link(gw.url, { proofKey: true });
    await until(() => (gw.seen[0]?.reauths.length ?? 0) >= 1, 'a reauth', 8000);
    const session = gw.seen[0] as Seen;
    const reauth = session.reauths[0] as { token: string; proof: string | undefined };
    assert.equal(reauth.token, 'tok-2');
    const replay = new ProofReplayCache();
    await verifyProof(reauth.proof, { token: 'tok-2', htm: REAUTH_PROOF_METHOD, htu: session.url, expectedJkt: jwkThumbprint(key.x), nowMs: Date.now(), replay });
    assert.notEqual(reauth.proof, session.dpop);
  });

  test('without proofKey nothing changes: no DPoP header, no proof in reauth', async () => {
    const gw = await gatewayStandIn(1500);
    link(gw.url);
    await until(() => (gw.seen[0]?.reauths.length ?? 0) >= 1, 'a reauth', 8000);
    assert.equal(gw.seen[0]?.dpop, undefined);
    assert.equal(gw.seen[0]?.reauths[0]?.proof, undefined);
  });
});
