import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { access, rm } from 'node:fs/promises';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import tls from 'node:tls';
import { measureRawTcp, measureSshForward } from '../bench/baselines.ts';
import { freePort } from './ports.ts';
import { startProcess, stopAll } from './processes.ts';
import {
  deterministicBlocks,
  deterministicSha256,
  receiveAndHash,
  sendAndHash,
  startEchoServer,
  startHttpDemo,
  startSinkServer,
  startSourceServer,
} from './tcp-fixtures.ts';
import { makeTestCertificate } from './tls.ts';

after(() => stopAll());

describe('ports', () => {
  test('freePort returns a port that can be bound', async () => {
    const port = await freePort();
    assert.ok(port > 0 && port < 65536);
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', resolve);
    });
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
});

describe('tls', () => {
  test('openssl makes a CA and a localhost/127.0.0.1 server certificate that a CA-trusting client accepts', async () => {
    const cert = await makeTestCertificate();
    after(() => cert.remove());
    for (const file of [cert.certFile, cert.keyFile, cert.caFile]) await access(file);
    assert.match(cert.cert, /^-----BEGIN CERTIFICATE-----/);
    assert.match(cert.key, /PRIVATE KEY-----/);

    const server = tls.createServer({ cert: cert.cert, key: cert.key }, (socket) => socket.end('ok'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    try {
      const readAll = (options: tls.ConnectionOptions): Promise<{ authorized: boolean; body: string }> =>
        new Promise((resolve, reject) => {
          const socket = tls.connect(options);
          let body = '';
          socket.setEncoding('utf8');
          socket.on('data', (chunk: string) => {
            body += chunk;
          });
          socket.once('end', () => resolve({ authorized: socket.authorized, body }));
          socket.once('error', reject);
        });
      // By name (SNI + DNS SAN) and by IP (IP SAN).
      assert.deepEqual(await readAll({ host: '127.0.0.1', port, ca: cert.ca, servername: 'localhost' }), {
        authorized: true,
        body: 'ok',
      });
      assert.deepEqual(await readAll({ host: '127.0.0.1', port, ca: cert.ca }), { authorized: true, body: 'ok' });
      // Without trusting the CA the handshake must fail.
      await assert.rejects(readAll({ host: '127.0.0.1', port, servername: 'localhost' }), (err: NodeJS.ErrnoException) => {
        assert.equal(err.code, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE');
        return true;
      });
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test('writes into a given directory', async () => {
    const dir = `${process.env.TMPDIR ?? '/tmp'}/nl-tls-given-${process.pid}`;
    after(() => rm(dir, { recursive: true, force: true }));
    const cert = await makeTestCertificate(dir);
    assert.equal(cert.dir, dir);
    assert.ok(cert.certFile.startsWith(dir));
  });
});

describe('tcp-fixtures', () => {
  test('deterministic stream: exact length, seed-dependent, memoized hash matches pieces', () => {
    const bytes = 3 * 1024 * 1024 + 5;
    let total = 0;
    const hash = createHash('sha256');
    for (const block of deterministicBlocks(bytes, 7)) {
      for (const piece of block) {
        total += piece.length;
        hash.update(piece);
      }
    }
    assert.equal(total, bytes);
    assert.equal(hash.digest('hex'), deterministicSha256(bytes, 7));
    assert.notEqual(deterministicSha256(bytes, 7), deterministicSha256(bytes, 8));
    assert.equal(deterministicSha256(0, 1), createHash('sha256').digest('hex'));
    // Short tails (inside the 8-byte header) are exact too.
    for (const n of [1, 8, 9, 1024 * 1024 + 3]) {
      let length = 0;
      for (const block of deterministicBlocks(n, 1)) for (const piece of block) length += piece.length;
      assert.equal(length, n);
    }
  });

  test('echo round trip returns the same bytes', async () => {
    const echo = await startEchoServer();
    try {
      const result = await sendAndHash(echo.port, 5 * 1024 * 1024 + 123, 3);
      assert.equal(result.sentSha256, deterministicSha256(5 * 1024 * 1024 + 123, 3));
      assert.equal(result.replySha256, result.sentSha256);
      assert.equal(result.replyBytes, 5 * 1024 * 1024 + 123);
    } finally {
      await echo.close();
    }
  });

  test('sink replies with the sha256 of what it received', async () => {
    const sink = await startSinkServer();
    try {
      const result = await sendAndHash(sink.port, 2 * 1024 * 1024, 9);
      assert.equal(result.replyHead, result.sentSha256);
      assert.equal(result.replyBytes, 64);
      assert.equal(sink.results.length, 1);
      assert.equal(sink.results[0]?.bytes, 2 * 1024 * 1024);
      assert.equal(sink.results[0]?.sha256, result.sentSha256);
    } finally {
      await sink.close();
    }
  });

  test('sink without hashing replies with the byte count', async () => {
    const sink = await startSinkServer({ hash: false });
    try {
      const result = await sendAndHash(sink.port, 12345, 1);
      assert.equal(result.replyHead, '12345');
    } finally {
      await sink.close();
    }
  });

  test('source sends the expected deterministic bytes to every client', async () => {
    const source = await startSourceServer(4 * 1024 * 1024 + 1, 5);
    try {
      const [a, b] = await Promise.all([receiveAndHash(source.port), receiveAndHash(source.port)]);
      for (const r of [a, b]) {
        assert.equal(r.bytes, 4 * 1024 * 1024 + 1);
        assert.equal(r.sha256, source.expectedSha256);
      }
    } finally {
      await source.close();
    }
  });

  test('http demo answers 200 hello', async () => {
    const demo = await startHttpDemo();
    try {
      const response = await fetch(`http://127.0.0.1:${demo.port}/anything`);
      assert.equal(response.status, 200);
      assert.equal(await response.text(), 'hello');
    } finally {
      await demo.close();
    }
  });

  test('close() ends open connections', async () => {
    const sink = await startSinkServer();
    const socket = net.connect(sink.port, '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    const closed = new Promise((resolve) => socket.once('close', resolve));
    socket.on('error', () => {});
    await sink.close();
    await closed;
  });
});

describe('processes', () => {
  const readyScript = `
    console.log('plain text first');
    console.log(JSON.stringify({ level: 30, event: 'ready', port: 1234 }));
    process.stdin.resume();
    setInterval(() => console.log(JSON.stringify({ event: 'tick' })), 20);
  `;

  test('resolves on the ready line, parses lines, waitFor sees later lines, stop() ends it', async () => {
    const proc = await startProcess('ready-script', ['-e', readyScript]);
    assert.equal(proc.readyLine.event, 'ready');
    assert.equal(proc.readyLine.port, 1234);
    assert.deepEqual(proc.lines[0], { text: 'plain text first' });
    const tick = await proc.waitFor((line) => line.event === 'tick', 2000);
    assert.equal(tick.event, 'tick');
    const code = await proc.stop();
    assert.equal(code, null);
    assert.equal(proc.child.signalCode, 'SIGTERM');
  });

  test('stop() escalates to SIGKILL when SIGTERM is ignored', async () => {
    const script = `process.on('SIGTERM', () => {}); console.log('{"event":"ready"}'); setInterval(() => {}, 1000);`;
    const proc = await startProcess('stubborn', ['-e', script]);
    const started = Date.now();
    assert.equal(await proc.stop('SIGTERM', 300), null);
    assert.equal(proc.child.signalCode, 'SIGKILL');
    assert.ok(Date.now() - started >= 250);
  });

  test('a graceful exit code is returned; custom readyEvent and env work', async () => {
    const script = `
      process.on('SIGTERM', () => process.exit(0));
      console.log(JSON.stringify({ event: 'listening', value: process.env.NL_HELPER_TEST }));
      setInterval(() => {}, 1000);
    `;
    const proc = await startProcess('graceful', ['-e', script], { readyEvent: 'listening', env: { NL_HELPER_TEST: 'x1' } });
    assert.equal(proc.readyLine.value, 'x1');
    assert.equal(await proc.stop(), 0);
  });

  test('exiting before ready rejects with the output', async () => {
    const script = `console.log('starting up'); console.error('boom: port in use'); process.exit(3);`;
    await assert.rejects(startProcess('early-exit', ['-e', script]), (err: Error) => {
      assert.match(err.message, /early-exit/);
      assert.match(err.message, /code 3/);
      assert.match(err.message, /boom: port in use/);
      assert.match(err.message, /starting up/);
      return true;
    });
  });

  test('timing out before ready kills the child and rejects', async () => {
    const script = `console.log('waiting forever'); setInterval(() => {}, 1000);`;
    let pid: number | undefined;
    await assert.rejects(startProcess('never-ready', ['-e', script], { timeoutMs: 500 }), (err: Error) => {
      assert.match(err.message, /timed out after 500 ms/);
      assert.match(err.message, /waiting forever/);
      pid = Number(/pid (\d+)/.exec(err.message)?.[1]);
      return true;
    });
    assert.ok(pid !== undefined && pid > 0);
    // The child is gone (not orphaned): signal 0 to it fails.
    assert.throws(() => process.kill(pid as number, 0), { code: 'ESRCH' });
  });

  test('waitFor rejects when the process exits without a match', async () => {
    const script = `console.log('{"event":"ready"}'); setTimeout(() => process.exit(0), 50);`;
    const proc = await startProcess('short-lived', ['-e', script]);
    await assert.rejects(proc.waitFor((line) => line.event === 'never', 5000), /before a matching line/);
  });
});

describe('baselines (small)', () => {
  test('measureRawTcp moves and verifies bytes between two processes', async () => {
    const result = await measureRawTcp({ bytes: 8 * 1024 * 1024 });
    assert.equal(result.bytes, 8 * 1024 * 1024);
    assert.equal(result.verified, true);
    assert.ok(result.mbPerSec > 0);
  });

  test('measureSshForward works or says why it skipped', async (t) => {
    const result = await measureSshForward({ bytes: 4 * 1024 * 1024 });
    if ('skipped' in result) {
      t.skip(result.skipped);
      return;
    }
    assert.equal(result.verified, true);
    assert.ok(result.mbPerSec > 0);
  });
});
