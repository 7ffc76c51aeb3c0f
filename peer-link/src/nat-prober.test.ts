import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { after, describe, test } from 'node:test';
import { decodeProbeRequest, type Endpoint, encodeProbeResponse, type NatProbeInfo, type ProbeRequest } from '@narrowlink/protocol';
import { probeNat } from './nat-prober.ts';

const SESSION = 'session-1';
const KEY = Buffer.alloc(32, 7);

interface Seen {
  target: number;
  request: ProbeRequest;
  from: Endpoint;
}

/**
 * A scripted probe server on loopback built from the protocol codec: ports N, N+1 (and 127.0.0.2 with
 * `fourEndpoints`). `answer` decides per request whether it is answered (default: always).
 */
async function scriptedServer(options: { fourEndpoints?: boolean; answer?: (seen: Seen, count: number) => boolean } = {}) {
  const addresses = options.fourEndpoints ? ['127.0.0.1', '127.0.0.2'] : ['127.0.0.1'];
  for (let attempt = 0; ; attempt++) {
    const sockets: dgram.Socket[] = [];
    try {
      let base = 0;
      for (const address of addresses) {
        for (let p = 0; p < 2; p++) {
          const socket = dgram.createSocket('udp4');
          sockets.push(socket);
          await new Promise<void>((resolve, reject) => {
            socket.once('error', reject);
            socket.bind({ address, port: base === 0 ? 0 : base + p }, () => resolve());
          });
          if (base === 0) base = socket.address().port;
        }
      }
      const seen: Seen[] = [];
      const endpoints = sockets.map((s) => ({ address: s.address().address, port: s.address().port }));
      sockets.forEach((socket, index) => {
        socket.on('message', (bytes, rinfo) => {
          const request = decodeProbeRequest(bytes, () => KEY);
          const entry = { target: index, request, from: { address: rinfo.address, port: rinfo.port } };
          seen.push(entry);
          if (options.answer && !options.answer(entry, seen.length)) return;
          let from = index;
          if (request.changePort) from ^= 1;
          if (request.changeAddress && sockets.length === 4) from ^= 2;
          const response = encodeProbeResponse({ seq: request.seq, receivedOn: index, answeredFrom: from, mapped: entry.from }, KEY);
          sockets[from]?.send(response, rinfo.port, rinfo.address);
        });
      });
      const info: NatProbeInfo = { type: 'nat_probe_info', key: KEY.toString('base64'), endpoints: endpoints.map((e, index) => ({ index, ...e })) };
      return { info, seen, endpoints, close: () => Promise.all(sockets.map((s) => new Promise<void>((r) => s.close(() => r())))) };
    } catch (error) {
      for (const s of sockets) s.close();
      if (attempt > 10) throw error;
    }
  }
}

const sockets: dgram.Socket[] = [];
async function peerSocket(address = '127.0.0.1'): Promise<dgram.Socket> {
  const socket = dgram.createSocket('udp4');
  sockets.push(socket);
  await new Promise<void>((resolve) => socket.bind({ address, port: 0 }, () => resolve()));
  return socket;
}
after(() => {
  for (const s of sockets) {
    try {
      s.close();
    } catch {
      // already closed by the test
    }
  }
});

describe('probeNat', () => {
  test('probes endpoint 0 with the filtering tests first, then the others in index order; reports the socket', async () => {
    const server = await scriptedServer({ fourEndpoints: true });
    const socket = await peerSocket();
    try {
      const outcome = await probeNat({ socket, sessionId: SESSION, info: server.info });
      const firstOther = server.seen.findIndex((s) => s.request.seq === Math.min(...server.seen.filter((x) => x.target !== 0).map((x) => x.request.seq)));
      const phaseOne = server.seen.filter((s) => s.target === 0);
      // Every endpoint-0 probe (plain + both tests) was sent before anything went elsewhere.
      const lastZeroSeq = Math.max(...phaseOne.map((s) => s.request.seq));
      const firstOtherSeq = Math.min(...server.seen.filter((s) => s.target !== 0).map((s) => s.request.seq));
      assert.ok(firstOther >= 0);
      assert.ok(lastZeroSeq < firstOtherSeq, 'endpoint 0 is done before the others start');
      assert.ok(phaseOne.some((s) => s.request.changePort) && phaseOne.some((s) => s.request.changeAddress));
      assert.ok(server.seen.filter((s) => s.target !== 0).every((s) => !s.request.changePort && !s.request.changeAddress));
      // The others in index order (by seq, which is what the gateway reads).
      const order = server.seen.filter((s) => s.target !== 0).sort((a, b) => a.request.seq - b.request.seq).map((s) => s.target);
      assert.deepEqual(order, [1, 2, 3]);
      assert.deepEqual(new Set(server.seen.map((s) => s.request.seq)).size, server.seen.length, 'every probe has its own seq');

      // Loopback answers everything: both tests answered at the first try.
      assert.deepEqual(outcome.report.filtering, { changePort: { sent: 1, received: 1 }, changeAddress: { sent: 1, received: 1 } });
      assert.deepEqual(outcome.report.localEndpoints, [{ address: '127.0.0.1', port: socket.address().port }]);
      assert.equal(outcome.report.type, 'nat_report');
      assert.deepEqual(new Set(outcome.responses.map((r) => r.receivedOn)), new Set([0, 1, 2, 3]));
      assert.ok(outcome.durationMs < 500, `took ${outcome.durationMs} ms`);
      assert.equal(socket.listenerCount('message'), 0, 'the probe listener is gone');
    } finally {
      await server.close();
    }
  });

  test('unanswered filtering tests are tried twice and reported as such; the path still gets classified', async () => {
    // Like the NAT lab's conntrack + drop-NEW: answers from the other port never arrive.
    const server = await scriptedServer({ answer: (s) => !s.request.changePort });
    const socket = await peerSocket();
    try {
      const outcome = await probeNat({ socket, sessionId: SESSION, info: server.info });
      assert.deepEqual(outcome.report.filtering, { changePort: { sent: 2, received: 0 } });
      assert.deepEqual(new Set(outcome.responses.map((r) => r.receivedOn)), new Set([0, 1]));
      const lastTest = Math.max(...server.seen.filter((s) => s.request.changePort).map((s) => s.request.seq));
      const firstOther = Math.min(...server.seen.filter((s) => s.target === 1).map((s) => s.request.seq));
      assert.ok(lastTest < firstOther, 'both tests went before the other port was contacted');
      assert.ok(outcome.durationMs < 500, `took ${outcome.durationMs} ms`);
    } finally {
      await server.close();
    }
  });

  test('lost probes are resent with new seqs', async () => {
    // Drop the first two plain probes to endpoint 0 and the first to endpoint 1.
    let dropped0 = 0;
    let dropped1 = 0;
    const server = await scriptedServer({
      answer: (s) => {
        if (s.target === 0 && !s.request.changePort && dropped0 < 2) return ++dropped0 === 0;
        if (s.target === 1 && dropped1 < 1) return ++dropped1 === 0;
        return true;
      },
    });
    const socket = await peerSocket();
    try {
      const outcome = await probeNat({ socket, sessionId: SESSION, info: server.info, retryIntervalMs: 30 });
      assert.deepEqual(new Set(outcome.responses.map((r) => r.receivedOn)), new Set([0, 1]));
      assert.equal(server.seen.filter((s) => s.target === 0 && !s.request.changePort).length, 3);
      assert.equal(server.seen.filter((s) => s.target === 1).length, 2);
      assert.equal(new Set(server.seen.map((s) => s.request.seq)).size, server.seen.length);
    } finally {
      await server.close();
    }
  });

  test('UDP blocked: no answers, ends at the timeout with nothing, never hangs', async () => {
    const server = await scriptedServer({ answer: () => false });
    const socket = await peerSocket();
    try {
      const startedAt = performance.now();
      const outcome = await probeNat({ socket, sessionId: SESSION, info: server.info, timeoutMs: 400, retryIntervalMs: 100 });
      const took = performance.now() - startedAt;
      assert.equal(outcome.responses.length, 0);
      assert.ok(took >= 390 && took < 800, `took ${took} ms`);
      // Only endpoint 0 was tried: without an answer there, the others are never probed.
      assert.ok(server.seen.every((s) => s.target === 0));
      assert.ok(server.seen.length >= 4, 'the plain probe was retried');
      assert.equal(outcome.report.filtering?.changePort?.received, 0);
    } finally {
      await server.close();
    }
  });

  test('ignores QUIC packets, forged or foreign answers on the shared socket', async () => {
    // The server answers nothing itself; we inject what arrives.
    const server = await scriptedServer({ answer: () => false });
    const socket = await peerSocket();
    const other = await peerSocket();
    try {
      const done = probeNat({ socket, sessionId: SESSION, info: server.info, timeoutMs: 300 });
      const to = socket.address();
      const mapped = { address: '127.0.0.1', port: to.port };
      other.send(Buffer.from([0x40, 1, 2, 3, 4]), to.port, to.address); // QUIC short header
      other.send(encodeProbeResponse({ seq: 1, receivedOn: 0, answeredFrom: 0, mapped }, Buffer.alloc(32, 9)), to.port, to.address); // wrong key
      other.send(encodeProbeResponse({ seq: 999, receivedOn: 0, answeredFrom: 0, mapped }, KEY), to.port, to.address); // never asked
      other.send(encodeProbeResponse({ seq: 1, receivedOn: 1, answeredFrom: 1, mapped }, KEY), to.port, to.address); // wrong endpoint for seq 1
      const outcome = await done;
      assert.equal(outcome.responses.length, 0);
    } finally {
      await server.close();
    }
  });

  test('a socket closed mid-probe ends the exchange early', async () => {
    const server = await scriptedServer({ answer: () => false });
    const socket = await peerSocket();
    try {
      const startedAt = performance.now();
      const done = probeNat({ socket, sessionId: SESSION, info: server.info, timeoutMs: 5000 });
      setTimeout(() => socket.close(), 50);
      const outcome = await done;
      assert.ok(performance.now() - startedAt < 1000);
      assert.equal(outcome.responses.length, 0);
    } finally {
      await server.close();
    }
  });

  test('a wildcard-bound socket reports each local address with its port', async () => {
    const server = await scriptedServer();
    const socket = await peerSocket('0.0.0.0');
    try {
      const outcome = await probeNat({ socket, sessionId: SESSION, info: server.info, localAddresses: ['10.1.0.2', '::ffff:10.1.0.3', '10.1.0.2'] });
      const port = socket.address().port;
      assert.deepEqual(outcome.report.localEndpoints, [
        { address: '10.1.0.2', port },
        { address: '10.1.0.3', port },
      ]);
    } finally {
      await server.close();
    }
  });
});
