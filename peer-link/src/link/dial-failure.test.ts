/**
 * Dial failures against real listeners: each definitive answer (refused port, unresolvable name, HTTP 404, TLS with
 * an untrusted CA / a wrong name / no TLS at all) ends a fail-fast link at once with its own code, while a link that
 * is not fail-fast keeps retrying the same answer; and cleartext ws:// to a non-loopback address is refused before a
 * single byte reaches the listener.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { type AddressInfo, createServer as createTcpServer, connect, type Server } from 'node:net';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeTestCertificate, type TestCertificate } from '../../../test/helpers/tls.ts';
import { LinkError, LinkErrorCode } from '../errors.ts';
import { GatewayLink, type GatewayLinkOptions, type LinkRetry } from '../gateway-link.ts';
import { checkGatewayUrl, isLoopbackHost } from './dial-failure.ts';

let cert: TestCertificate;
const servers: (Server | HttpServer)[] = [];
before(async () => {
  cert = await makeTestCertificate();
});
after(async () => {
  for (const s of servers) s.close();
  await cert.remove();
});

async function listen<T extends Server | HttpServer>(server: T, host = '127.0.0.1'): Promise<number> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return (server.address() as AddressInfo).port;
}

/** A port nothing listens on (bound, then closed). */
async function refusingPort(): Promise<number> {
  const server = createTcpServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Starts a fail-fast link and returns how it ended (the fatal error) and how long that took. */
async function failFast(options: Partial<GatewayLinkOptions> & { url: string }): Promise<{ error: LinkError; ms: number }> {
  const started = performance.now();
  const link = new GatewayLink({ role: 'client', token: 'secret-token', reconnect: true, failFast: true, ...options }).start();
  try {
    const error = await link.waitOpen(10_000).then(
      () => assert.fail('the session opened'),
      (e: unknown) => e,
    );
    assert.ok(error instanceof LinkError, String(error));
    assert.equal(link.state, 'closed');
    return { error, ms: performance.now() - started };
  } finally {
    await link.close();
  }
}

describe('definitive dial failures end a fail-fast link at once', () => {
  test('connection refused: NL_ERR_LINK_CONNECTION_REFUSED', async () => {
    const { error, ms } = await failFast({ url: `ws://127.0.0.1:${await refusingPort()}` });
    assert.equal(error.code, LinkErrorCode.CONNECTION_REFUSED);
    assert.equal(error.definitive, true);
    assert.ok(ms < 3000, `${ms} ms`);
  });

  test('an unresolvable name: NL_ERR_LINK_DNS', async () => {
    const { error } = await failFast({ url: 'wss://nosuch.invalid:443' });
    assert.equal(error.code, LinkErrorCode.DNS);
  });

  test('HTTP 404 from something that is not a gateway: NL_ERR_LINK_NOT_GATEWAY with the status', async () => {
    const port = await listen(createHttpServer((_req, res) => res.writeHead(404).end('not found')));
    const { error } = await failFast({ url: `ws://127.0.0.1:${port}` });
    assert.equal(error.code, LinkErrorCode.NOT_GATEWAY);
    assert.equal(error.status, 404);
  });

  test('a CA this side does not trust: NL_ERR_LINK_TLS untrusted-ca, naming the certificate and its issuer', async () => {
    const port = await listen(createHttpsServer({ cert: cert.cert, key: cert.key }, (_req, res) => res.writeHead(404).end()));
    const { error } = await failFast({ url: `wss://localhost:${port}` });
    assert.equal(error.code, LinkErrorCode.TLS);
    assert.equal(error.tlsFailure, 'untrusted-ca');
    assert.match(error.message, /localhost/);
    assert.match(error.message, /Narrowlink Test CA/);
    // One line, no OpenSSL internals.
    assert.doesNotMatch(error.message, /\n|openssl|\.c:\d+/i);
  });

  test('a certificate for another name: NL_ERR_LINK_TLS name-mismatch', async () => {
    // The certificate names localhost and 127.0.0.1; 127.0.0.2 is the same machine under a name it does not list.
    const port = await listen(createHttpsServer({ cert: cert.cert, key: cert.key }, (_req, res) => res.writeHead(404).end()), '127.0.0.2');
    const { error } = await failFast({ url: `wss://127.0.0.2:${port}`, caPem: cert.ca });
    assert.equal(error.code, LinkErrorCode.TLS);
    assert.equal(error.tlsFailure, 'name-mismatch');
    assert.match(error.message, /localhost/);
  });

  test('an expired certificate from a trusted CA: NL_ERR_LINK_TLS expired, with its end date', async () => {
    // The helper's CA signs the helper's request again, valid only in 2020 (`openssl ca` takes explicit dates).
    const dir = cert.dir;
    writeFileSync(join(dir, 'index.txt'), '');
    writeFileSync(join(dir, 'serial'), '1000\n');
    writeFileSync(
      join(dir, 'ca.cnf'),
      ['[ca]', 'default_ca = d', '[d]', `database = ${join(dir, 'index.txt')}`, `new_certs_dir = ${dir}`, `serial = ${join(dir, 'serial')}`, 'default_md = sha256', 'policy = p', '[p]', 'commonName = supplied', ''].join('\n'),
    );
    const expiredFile = join(dir, 'expired.crt');
    execFileSync('openssl', [
      'ca', '-batch', '-config', join(dir, 'ca.cnf'), '-notext', '-startdate', '20200101000000Z', '-enddate', '20200102000000Z',
      '-cert', cert.caFile, '-keyfile', join(dir, 'ca.key'), '-in', join(dir, 'server.csr'), '-out', expiredFile, '-extfile', join(dir, 'server.ext'),
    ], { stdio: 'ignore' });
    const port = await listen(createHttpsServer({ cert: readFileSync(expiredFile, 'utf8'), key: cert.key }, (_req, res) => res.writeHead(404).end()));
    const { error } = await failFast({ url: `wss://localhost:${port}`, caPem: cert.ca });
    assert.equal(error.code, LinkErrorCode.TLS);
    assert.equal(error.tlsFailure, 'expired');
    assert.match(error.message, /2020/);
  });

  test('wss:// to a server that does not speak TLS: NL_ERR_LINK_TLS not-tls', async () => {
    const port = await listen(createHttpServer((_req, res) => res.writeHead(404).end()));
    const { error } = await failFast({ url: `wss://127.0.0.1:${port}` });
    assert.equal(error.code, LinkErrorCode.TLS);
    assert.equal(error.tlsFailure, 'not-tls');
  });

  test('a 503 from a gateway that is starting is still retried (not definitive)', async () => {
    let answers = 0;
    const port = await listen(
      createHttpServer((_req, res) => {
        answers++;
        res.writeHead(503, { 'content-type': 'application/json' }).end('{"code":"NL_ERR_GATEWAY_NOT_READY","message":"starting"}');
      }),
    );
    const link = new GatewayLink({ url: `ws://127.0.0.1:${port}`, role: 'client', token: 't', failFast: true, backoff: { baseMs: 10, maxMs: 20 } }).start();
    try {
      await assert.rejects(link.waitOpen(400), (e: unknown) => e instanceof LinkError && e.code === LinkErrorCode.TIMEOUT);
      assert.ok(answers >= 2, `${answers} attempts`);
    } finally {
      await link.close();
    }
  });
});

describe('a link that is not fail-fast keeps retrying definitive answers', () => {
  test('connection refused: retried, each retry carrying the cause', async () => {
    const link = new GatewayLink({ url: `ws://127.0.0.1:${await refusingPort()}`, role: 'agent', token: 't', backoff: { baseMs: 10, maxMs: 20 } });
    const retries: LinkRetry[] = [];
    link.on('retry', (retry: LinkRetry) => retries.push(retry));
    let fatal = false;
    link.on('fatal', () => {
      fatal = true;
    });
    link.start();
    try {
      await assert.rejects(link.waitOpen(300), (e: unknown) => e instanceof LinkError && e.code === LinkErrorCode.TIMEOUT);
      assert.equal(fatal, false);
      assert.ok(retries.length >= 2, `${retries.length} retries`);
      assert.equal(retries[0]?.error?.code, LinkErrorCode.CONNECTION_REFUSED);
    } finally {
      await link.close();
    }
  });
});

/** A non-loopback IPv4 address of this machine, if it has one. */
function nonLoopbackAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal && !isLoopbackHost(a.address)) return a.address;
  }
  return undefined;
}

describe('cleartext ws:// off loopback', () => {
  const address = nonLoopbackAddress();

  test('loopback names and addresses are loopback; others are not', () => {
    for (const host of ['localhost', '127.0.0.1', '127.0.0.2', '[::1]', 'a.localhost']) assert.equal(isLoopbackHost(host), true, host);
    for (const host of ['192.0.2.2', 'gw.example.com', '[2001:db8::1]', '10.0.0.1', 'localhost.example.com', '0.0.0.0']) assert.equal(isLoopbackHost(host), false, host);
    assert.throws(() => checkGatewayUrl('https://gw.example.com'), (e: unknown) => e instanceof LinkError && e.code === LinkErrorCode.INSECURE_URL);
    assert.equal(checkGatewayUrl('wss://gw.example.com').host, 'gw.example.com');
  });

  test('is refused before a single byte reaches the listener', { skip: address ? false : 'this machine has no non-loopback IPv4 address' }, async () => {
    const bytes: Buffer[] = [];
    let connections = 0;
    const listener = createTcpServer((socket) => {
      connections++;
      socket.on('data', (chunk) => bytes.push(chunk));
    });
    const port = await listen(listener, address);
    // The listener is reachable: a raw connection from here gets through (and is counted), so zero below means zero.
    await new Promise<void>((resolve, reject) => connect(port, address).once('connect', function (this: import('node:net').Socket) {
      this.end(resolve);
    }).once('error', reject));
    while (connections < 1) await new Promise((r) => setTimeout(r, 5));
    const before = connections;
    assert.throws(
      () => new GatewayLink({ url: `ws://${address}:${port}`, role: 'client', token: 'secret-token' }),
      (e: unknown) => e instanceof LinkError && e.code === LinkErrorCode.INSECURE_URL && e.retryable === false,
    );
    // Give a stray dial time to arrive, were there one.
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(connections, before);
    assert.equal(Buffer.concat(bytes).length, 0);
  });
});
