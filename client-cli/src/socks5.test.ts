import assert from 'node:assert/strict';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { agentFromSocksHost, readSocksRequest, type SocksAuth, SocksProtocolError, SocksReply, type SocksRequest, socksReplyFor } from './socks5.ts';

/**
 * A real socket pair: the test writes the client's bytes, the server side runs readSocksRequest
 * exactly as `narrowlink socks` does (paused socket, half-open allowed).
 */
let server: Server;
let port = 0;
let nextAuth: SocksAuth | undefined;
const pending: Array<(result: { request?: SocksRequest; error?: unknown; socket: Socket }) => void> = [];

before(async () => {
  server = createServer({ pauseOnConnect: true, allowHalfOpen: true }, (socket) => {
    socket.on('error', () => undefined);
    const deliver = pending.shift();
    readSocksRequest(socket, nextAuth).then(
      (request) => deliver?.({ request, socket }),
      (error: unknown) => {
        deliver?.({ error, socket });
        socket.end();
      },
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});
after(() => new Promise<void>((resolve) => server.close(() => resolve())));

/** Sends `chunks` (each its own write, a tick apart) and returns the server's outcome and every reply byte. */
async function handshake(chunks: Buffer[], auth?: SocksAuth, options: { endAfter?: boolean } = {}) {
  nextAuth = auth;
  const outcome = new Promise<{ request?: SocksRequest; error?: unknown; socket: Socket }>((resolve) => pending.push(resolve));
  const client = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
  const received: Buffer[] = [];
  client.on('data', (d: Buffer) => received.push(d));
  client.on('error', () => undefined);
  await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  for (const chunk of chunks) {
    client.write(chunk);
    await new Promise((r) => setTimeout(r, 5));
  }
  if (options.endAfter) client.end();
  const result = await outcome;
  // Let the replies arrive, then close both ends.
  await new Promise((r) => setTimeout(r, 20));
  result.socket.destroy();
  client.destroy();
  return { ...result, reply: Buffer.concat(received) };
}

const greetingNoAuth = Buffer.from([0x05, 0x01, 0x00]);
const greetingUserPass = Buffer.from([0x05, 0x01, 0x02]);

function connectDomain(host: string, targetPort: number, command = 0x01): Buffer {
  const name = Buffer.from(host);
  const portBytes = Buffer.alloc(2);
  portBytes.writeUInt16BE(targetPort);
  return Buffer.concat([Buffer.from([0x05, command, 0x00, 0x03, name.length]), name, portBytes]);
}

function userPass(username: string, password: string): Buffer {
  const u = Buffer.from(username);
  const p = Buffer.from(password);
  return Buffer.concat([Buffer.from([0x01, u.length]), u, Buffer.from([p.length]), p]);
}

const failureReply = (code: number) => Buffer.from([0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);

describe('readSocksRequest', () => {
  test('no authentication, domain name: method 0x00 chosen, host and port returned', async () => {
    const r = await handshake([greetingNoAuth, connectDomain('demo', 8080)]);
    assert.equal(r.error, undefined);
    assert.deepEqual(r.request && { host: r.request.host, port: r.request.port, early: r.request.early.length }, { host: 'demo', port: 8080, early: 0 });
    assert.deepEqual([...r.reply], [0x05, 0x00], 'only the method choice; success is replied after the stream opens');
  });

  test('everything in one write, with early application data kept for forwarding', async () => {
    const early = Buffer.from('GET / HTTP/1.1\r\n\r\n');
    const r = await handshake([Buffer.concat([greetingNoAuth, connectDomain('web.team', 80), early])]);
    assert.equal(r.request?.host, 'web.team');
    assert.equal(r.request?.port, 80);
    assert.ok(r.request?.early.equals(early), 'early bytes are returned, not lost');
  });

  test('a client offering several methods gets no-auth when no credentials are configured', async () => {
    const r = await handshake([Buffer.from([0x05, 0x02, 0x02, 0x00]), connectDomain('demo', 22)]);
    assert.equal(r.request?.host, 'demo');
    assert.deepEqual([...r.reply], [0x05, 0x00]);
  });

  test('username/password accepted', async () => {
    const auth = { username: 'dev', password: 's3cret' };
    const r = await handshake([greetingUserPass, userPass('dev', 's3cret'), connectDomain('demo', 5432)], auth);
    assert.equal(r.error, undefined);
    assert.equal(r.request?.port, 5432);
    assert.deepEqual([...r.reply], [0x05, 0x02, 0x01, 0x00]);
  });

  test('wrong password: status 0x01 and a NOT_ALLOWED error', async () => {
    const auth = { username: 'dev', password: 's3cret' };
    const r = await handshake([greetingUserPass, userPass('dev', 'guess'), connectDomain('demo', 5432)], auth);
    assert.ok(r.error instanceof SocksProtocolError);
    assert.equal(r.error.reply, SocksReply.NOT_ALLOWED);
    assert.deepEqual([...r.reply], [0x05, 0x02, 0x01, 0x01]);
  });

  test('credentials required but the client offers only no-auth: 0xFF, no acceptable method', async () => {
    const r = await handshake([greetingNoAuth], { username: 'dev', password: 'x' });
    assert.ok(r.error instanceof SocksProtocolError);
    assert.deepEqual([...r.reply], [0x05, 0xff]);
  });

  test('no credentials configured but the client offers only username/password: 0xFF', async () => {
    const r = await handshake([greetingUserPass]);
    assert.ok(r.error instanceof SocksProtocolError);
    assert.deepEqual([...r.reply], [0x05, 0xff]);
  });

  test('IPv4 address type', async () => {
    const r = await handshake([greetingNoAuth, Buffer.from([0x05, 0x01, 0x00, 0x01, 10, 0, 0, 7, 0x1f, 0x90])]);
    assert.equal(r.request?.host, '10.0.0.7');
    assert.equal(r.request?.port, 8080);
  });

  test('IPv6 address type', async () => {
    const address = Buffer.alloc(16);
    address[15] = 1;
    address.writeUInt16BE(0xfd00, 0);
    const r = await handshake([greetingNoAuth, Buffer.concat([Buffer.from([0x05, 0x01, 0x00, 0x04]), address, Buffer.from([0x00, 0x16])])]);
    assert.equal(r.request?.host, 'fd00:0000:0000:0000:0000:0000:0000:0001');
    assert.equal(r.request?.port, 22);
  });

  test('not SOCKS5 (a SOCKS4 client): refused without a SOCKS5 reply', async () => {
    const r = await handshake([Buffer.from([0x04, 0x01, 0x00, 0x50, 127, 0, 0, 1, 0x00])]);
    assert.ok(r.error instanceof SocksProtocolError);
    assert.equal(r.reply.length, 0);
  });

  test('a bad version in the request itself is refused', async () => {
    const request = connectDomain('demo', 80);
    request[0] = 0x04;
    const r = await handshake([greetingNoAuth, request]);
    assert.ok(r.error instanceof SocksProtocolError);
  });

  test('BIND and UDP ASSOCIATE are answered with 0x07 command not supported', async () => {
    for (const command of [0x02, 0x03]) {
      const r = await handshake([greetingNoAuth, connectDomain('demo', 80, command)]);
      assert.ok(r.error instanceof SocksProtocolError);
      assert.equal(r.error.reply, SocksReply.COMMAND_NOT_SUPPORTED);
      assert.deepEqual(r.reply, Buffer.concat([Buffer.from([0x05, 0x00]), failureReply(0x07)]));
    }
  });

  test('an unknown address type is answered with 0x08', async () => {
    const r = await handshake([greetingNoAuth, Buffer.from([0x05, 0x01, 0x00, 0x09, 0, 0])]);
    assert.ok(r.error instanceof SocksProtocolError);
    assert.equal(r.error.reply, SocksReply.ADDRESS_TYPE_NOT_SUPPORTED);
    assert.deepEqual(r.reply, Buffer.concat([Buffer.from([0x05, 0x00]), failureReply(0x08)]));
  });

  test('a client that hangs up mid-handshake ends in a SocksProtocolError', async () => {
    const r = await handshake([greetingNoAuth, Buffer.from([0x05, 0x01])], undefined, { endAfter: true });
    assert.ok(r.error instanceof SocksProtocolError);
  });
});

describe('agentFromSocksHost', () => {
  test('maps AGENT, AGENT.NAMESPACE and the .narrowlink suffix to an agent reference', () => {
    const cases: Array<[string, string | undefined]> = [
      ['demo', 'demo'],
      ['DEMO', 'demo'],
      ['demo.', 'demo'],
      ['demo.narrowlink', 'demo'],
      ['demo.team', 'team/demo'],
      ['demo.team.narrowlink', 'team/demo'],
      ['demo.team.narrowlink.', 'team/demo'],
      ['orders-db.payments', 'payments/orders-db'],
    ];
    for (const [host, expected] of cases) assert.equal(agentFromSocksHost(host), expected, host);
  });

  test('anything else names no agent', () => {
    for (const host of ['', '.', 'a.b.c', '10.0.0.1', '::1', 'fd00:0000:0000:0000:0000:0000:0000:0001', 'bad_name', '-demo', 'demo-.team', 'x.narrowlink.narrowlink.y']) {
      assert.equal(agentFromSocksHost(host), undefined, host);
    }
  });
});

describe('socksReplyFor', () => {
  test('maps stream error codes to SOCKS5 replies', () => {
    assert.equal(socksReplyFor('DENIED'), 0x02);
    assert.equal(socksReplyFor('NO_AGENT'), 0x04);
    assert.equal(socksReplyFor('DIAL_FAILED'), 0x05);
    assert.equal(socksReplyFor('TIMEOUT'), 0x06);
    for (const other of ['PEER_GONE', 'INTERNAL', 'GATEWAY_SHUTTING_DOWN', undefined]) assert.equal(socksReplyFor(other), SocksReply.GENERAL_FAILURE, String(other));
  });
});
