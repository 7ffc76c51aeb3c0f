/**
 * bridgeSocket: a local service that writes its answer and closes at once (an echo server, an HTTP/1.0 server)
 * after the far side half-closed must not lose the end of the answer when the stream has no send credit left at
 * that moment: the bytes still waiting go out, then the FIN, and no RESET.
 */
import assert from 'node:assert/strict';
import { type AddressInfo, connect, createServer } from 'node:net';
import { test } from 'node:test';
import { Mux, type MuxStream } from '@narrowlink/protocol';
import { bridgeSocket } from './bridge.ts';

test('a local socket that closes while its data waits for credit: every byte and the FIN arrive, no reset', async () => {
  const total = 1024 * 1024;
  const payload = Buffer.alloc(total);
  for (let i = 0; i < total; i++) payload[i] = i % 251;
  // The local service: writes everything, then closes its side as soon as it can.
  const server = createServer((socket) => {
    socket.end(payload);
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;

  // Two muxes back to back with a 64 KiB window; the far side grants credit only every 20 ms (a slow reader).
  const window = 64 * 1024;
  let near: Mux | undefined;
  let far: Mux | undefined;
  near = new Mux({ role: 'acceptor', localWindow: window, peerWindow: window, send: (b) => setImmediate(() => far?.receive(b)) });
  const received: Buffer[] = [];
  let fin = false;
  let reset: string | undefined;
  far = new Mux({ role: 'initiator', localWindow: window, peerWindow: window, send: (b) => setImmediate(() => near?.receive(b)) });
  const accepted = new Promise<MuxStream>((resolve) => {
    (near as Mux).handlers = { onOpen: (stream) => resolve(stream) };
  });
  const farStream = far.open({ agent: 'svc', port: 1 });
  // Like a client that sent its request and half-closed (an echo's or an HTTP/1.0 client's way).
  farStream.fin();
  farStream.handlers = {
    onData: (data) => {
      received.push(Buffer.from(data));
      setTimeout(() => farStream.consumed(data.length), 20);
    },
    onFin: () => {
      fin = true;
    },
    onReset: (r) => {
      reset = r.code;
    },
  };
  const nearStream = await accepted;
  const socket = connect(port, '127.0.0.1');
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  nearStream.accept();
  const { done } = bridgeSocket(socket, nearStream);
  const outcome = await done;
  const deadline = performance.now() + 10_000;
  while (!fin && reset === undefined && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  server.close();
  assert.equal(reset, undefined, 'no reset');
  assert.equal(outcome, undefined, 'the bridge finished cleanly');
  assert.equal(fin, true, 'the FIN arrived');
  assert.ok(Buffer.concat(received).equals(payload), `all ${total} bytes, in order (got ${Buffer.concat(received).length})`);
});
