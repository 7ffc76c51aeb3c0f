import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { after, before, describe, test } from 'node:test';
import { decodeProbeResponse, encodeProbeRequest, type ProbeResponse, sessionIdBytes } from '@narrowlink/protocol';
import { MAX_PROBES_PER_SESSION, NatProbeServer, PROBE_KEY_BYTES } from './nat-probe.ts';

const SESSION = '6f1c2a4e-1b0d-4c59-9a51-0d3f2c1e7a10';

/** A peer socket on loopback that collects raw answers with their source. */
async function peerSocket(address = '127.0.0.1') {
  const socket = dgram.createSocket('udp4');
  const received: { bytes: Buffer; from: { address: string; port: number } }[] = [];
  socket.on('message', (bytes, rinfo) => received.push({ bytes, from: { address: rinfo.address, port: rinfo.port } }));
  await new Promise<void>((resolve) => socket.bind({ address, port: 0 }, () => resolve()));
  return {
    socket,
    received,
    port: socket.address().port,
    send(bytes: Uint8Array, to: { address: string; port: number }): void {
      socket.send(bytes, to.port, to.address);
    },
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

async function until(predicate: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Waits a little to show that nothing arrives. */
const settle = () => new Promise((r) => setTimeout(r, 60));

function request(seq: number, key: Uint8Array, options: { changePort?: boolean; changeAddress?: boolean; session?: string } = {}): Uint8Array {
  return encodeProbeRequest(
    { seq, sessionId: sessionIdBytes(options.session ?? SESSION), changePort: options.changePort ?? false, changeAddress: options.changeAddress ?? false },
    key,
  );
}

describe('NAT probe server on loopback', () => {
  let server: NatProbeServer;
  const results: string[] = [];
  before(async () => {
    // 127.0.0.2 is on Linux's loopback too (127.0.0.0/8): the second public address.
    server = await NatProbeServer.start({ address: '127.0.0.1', port: 0, secondAddress: '127.0.0.2', onResult: (r) => results.push(r) });
  });
  after(() => server.close());

  test('binds the port pair N, N+1 on each address, specific addresses only', async () => {
    const [a, b, c, d] = server.endpoints;
    assert.equal(server.endpoints.length, 4);
    assert.deepEqual([a?.address, b?.address, c?.address, d?.address], ['127.0.0.1', '127.0.0.1', '127.0.0.2', '127.0.0.2']);
    assert.equal(b?.port, (a?.port as number) + 1);
    assert.equal(c?.port, a?.port);
    assert.equal(d?.port, b?.port);
    await assert.rejects(NatProbeServer.start({ address: '0.0.0.0', port: 0 }), /specific address/);
    await assert.rejects(NatProbeServer.start({ address: 'localhost', port: 0 }), /IP address/);
    // The pair is taken: a second server on the same ports cannot start.
    await assert.rejects(NatProbeServer.start({ address: '127.0.0.1', port: a?.port as number }), { code: 'EADDRINUSE' });
  });

  test('behind a load balancer, peers are told the advertised addresses with the bound ports', async () => {
    const lb = await NatProbeServer.start({ address: '127.0.0.1', port: 0, secondAddress: '127.0.0.2', advertiseAddress: '203.0.113.7', advertiseSecondAddress: '203.0.113.8' });
    try {
      const info = lb.register('s');
      const [a, b] = lb.endpoints;
      assert.deepEqual(
        info.endpoints,
        [
          { index: 0, address: '203.0.113.7', port: a?.port },
          { index: 1, address: '203.0.113.7', port: b?.port },
          { index: 2, address: '203.0.113.8', port: a?.port },
          { index: 3, address: '203.0.113.8', port: b?.port },
        ],
      );
      await assert.rejects(NatProbeServer.start({ address: '127.0.0.1', port: 0, advertiseAddress: 'lb.example.com' }), /IP address/);
    } finally {
      await lb.close();
    }
  });

  test('answers an authenticated probe with the mapping, from the endpoint it asks for, and records it', async () => {
    const info = server.register(SESSION);
    assert.equal(info.type, 'nat_probe_info');
    const key = Buffer.from(info.key, 'base64');
    assert.equal(key.length, PROBE_KEY_BYTES);
    assert.deepEqual(
      info.endpoints,
      server.endpoints.map((e, index) => ({ index, address: e.address, port: e.port })),
    );
    const peer = await peerSocket();
    try {
      const [e0, e1, e2, e3] = server.endpoints as [(typeof server.endpoints)[0], (typeof server.endpoints)[0], (typeof server.endpoints)[0], (typeof server.endpoints)[0]];
      peer.send(request(1, key), e0);
      peer.send(request(2, key, { changePort: true }), e0);
      peer.send(request(3, key, { changeAddress: true }), e0);
      peer.send(request(4, key, { changePort: true, changeAddress: true }), e0);
      peer.send(request(5, key), e3);
      await until(() => peer.received.length === 5, 'five answers');
      const answers = new Map<number, { response: ProbeResponse; from: { address: string; port: number } }>();
      for (const r of peer.received) {
        const response = decodeProbeResponse(r.bytes, key);
        answers.set(response.seq, { response, from: r.from });
      }
      const mapped = { address: '127.0.0.1', port: peer.port };
      const expect = (seq: number, receivedOn: number, answeredFrom: number, from: { address: string; port: number }) => {
        const got = answers.get(seq);
        assert.deepEqual(got?.response, { seq, receivedOn, answeredFrom, mapped }, `seq ${seq}`);
        assert.deepEqual(got?.from, { address: from.address, port: from.port }, `seq ${seq} answered from the right socket`);
      };
      expect(1, 0, 0, e0);
      expect(2, 0, 1, e1);
      expect(3, 0, 2, e2);
      expect(4, 0, 3, e3);
      expect(5, 3, 3, e3);
      assert.deepEqual(
        server.observations(SESSION).map((o) => [o.seq, o.target, o.mapped.port]),
        [
          [1, 0, peer.port],
          [2, 0, peer.port],
          [3, 0, peer.port],
          [4, 0, peer.port],
          [5, 3, peer.port],
        ],
      );
    } finally {
      await peer.close();
      server.unregister(SESSION);
    }
  });

  test('bad MAC, unknown session, replays and garbage are never answered, recorded nothing and are counted', async () => {
    const info = server.register(SESSION);
    const key = Buffer.from(info.key, 'base64');
    const e0 = server.endpoints[0] as { address: string; port: number };
    const peer = await peerSocket();
    const other = await peerSocket('127.0.0.3');
    try {
      const good = request(7, key);
      peer.send(good, e0);
      await until(() => peer.received.length === 1, 'the first answer');
      results.length = 0;

      peer.send(request(8, Buffer.alloc(32, 1)), e0); // wrong key
      const tampered = Buffer.from(request(9, key));
      tampered[5] = (tampered[5] as number) ^ 0xff; // seq altered after signing
      peer.send(tampered, e0);
      peer.send(request(10, key, { session: 'no-such-session' }), e0);
      peer.send(good, e0); // the same datagram again
      other.send(good, e0); // captured and replayed from another address
      peer.send(Buffer.from('GET / HTTP/1.1\r\n\r\n'), e0);
      peer.send(Buffer.alloc(400), e0);
      await until(() => results.length === 7, 'seven drops');
      await settle();
      assert.equal(peer.received.length, 1, 'only the authentic probe was answered');
      assert.equal(other.received.length, 0, 'a replay from elsewhere is not reflected');
      assert.deepEqual(
        server.observations(SESSION).map((o) => [o.seq, o.mapped.address]),
        [[7, '127.0.0.1']],
        'nothing but the authentic probe was recorded',
      );
      assert.deepEqual([...results].sort(), [
        'NL_ERR_NAT_BAD_MAC',
        'NL_ERR_NAT_BAD_MAC',
        'NL_ERR_NAT_NOT_RAW',
        'NL_ERR_NAT_REPLAYED',
        'NL_ERR_NAT_REPLAYED',
        'NL_ERR_NAT_TOO_LARGE',
        'NL_ERR_NAT_UNKNOWN_SESSION',
      ]);
      assert.ok((server.counts.get('NL_ERR_NAT_REPLAYED') ?? 0) >= 2);
    } finally {
      await peer.close();
      await other.close();
      server.unregister(SESSION);
    }
  });

  test('memory is bounded: a session is forgotten on unregister, and answers per session are capped', async () => {
    const info = server.register(SESSION);
    const key = Buffer.from(info.key, 'base64');
    const e0 = server.endpoints[0] as { address: string; port: number };
    const peer = await peerSocket();
    results.length = 0;
    try {
      for (let seq = 1; seq <= MAX_PROBES_PER_SESSION + 10; seq++) peer.send(request(seq, key), e0);
      await until(() => results.length === MAX_PROBES_PER_SESSION + 10, 'every probe handled');
      await settle();
      assert.equal(peer.received.length, MAX_PROBES_PER_SESSION);
      assert.equal(server.observations(SESSION).length, MAX_PROBES_PER_SESSION);
      assert.equal(results.filter((r) => r === 'limited').length, 10);

      assert.equal(server.sessionCount, 1);
      server.unregister(SESSION);
      assert.equal(server.sessionCount, 0);
      assert.deepEqual(server.observations(SESSION), []);
      results.length = 0;
      peer.send(request(500, key), e0);
      await until(() => results.length === 1, 'the late probe handled');
      assert.deepEqual(results, ['NL_ERR_NAT_UNKNOWN_SESSION']);
    } finally {
      await peer.close();
    }
  });

  test('each session has its own key: one session cannot probe as another', async () => {
    const a = server.register('session-a');
    const b = server.register('session-b');
    assert.notEqual(a.key, b.key);
    const e0 = server.endpoints[0] as { address: string; port: number };
    const peer = await peerSocket();
    results.length = 0;
    try {
      peer.send(request(1, Buffer.from(a.key, 'base64'), { session: 'session-b' }), e0);
      await until(() => results.length === 1, 'the probe handled');
      assert.deepEqual(results, ['NL_ERR_NAT_BAD_MAC']);
      assert.deepEqual(server.observations('session-b'), []);
    } finally {
      await peer.close();
      server.unregister('session-a');
      server.unregister('session-b');
    }
  });
});

describe('NAT probe server without a second address', () => {
  test('two endpoints; "answer from the other address" falls back to the receiving address', async () => {
    const server = await NatProbeServer.start({ address: '127.0.0.1', port: 0 });
    const peer = await peerSocket();
    try {
      assert.equal(server.endpoints.length, 2);
      const key = Buffer.from(server.register(SESSION).key, 'base64');
      peer.send(request(1, key, { changeAddress: true }), server.endpoints[0] as { address: string; port: number });
      await until(() => peer.received.length === 1, 'an answer');
      const response = decodeProbeResponse((peer.received[0] as { bytes: Buffer }).bytes, key);
      assert.equal(response.answeredFrom, 0);
    } finally {
      await peer.close();
      await server.close();
    }
  });
});
