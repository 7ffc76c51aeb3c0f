import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { connect } from 'node:tls';
import { makeTestCertificate } from '../../test/helpers/tls.ts';
import { tlsServerOptions } from './app.ts';
import { TlsReloader } from './tls-reloader.ts';

const silent = { info() {}, warn() {} };

/** The fingerprint of the certificate the server presents to a fresh handshake. */
function servedFingerprint(port: number, ca: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, servername: 'localhost', ca }, () => {
      const raw = socket.getPeerX509Certificate();
      socket.destroy();
      if (!raw) reject(new Error('no peer certificate'));
      else resolve(raw.fingerprint256);
    });
    socket.on('error', reject);
  });
}

describe('TlsReloader', () => {
  const closers: Array<() => void> = [];
  after(() => {
    for (const close of closers) close();
  });

  test('new handshakes get a rotated certificate; a half-written pair is kept out; open connections stay', async () => {
    const first = await makeTestCertificate();
    const second = await makeTestCertificate();
    // The live files the server watches, like a mounted Secret.
    const certFile = join(first.dir, 'live.crt');
    const keyFile = join(first.dir, 'live.key');
    copyFileSync(first.certFile, certFile);
    copyFileSync(first.keyFile, keyFile);
    const server = createServer(tlsServerOptions({ cert: first.cert, key: first.key }), (_req, res) => res.end('ok'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    closers.push(() => server.close());
    const { port } = server.address() as AddressInfo;
    const reloader = new TlsReloader(server, certFile, keyFile, silent, { cert: first.cert, key: first.key });
    closers.push(() => reloader.stop());
    const ca = [first.ca, second.ca];
    assert.equal(await servedFingerprint(port, ca), new X509Certificate(first.cert).fingerprint256);
    assert.equal(reloader.check(), false, 'nothing changed');

    // An established connection that must survive the rotation.
    const held = connect({ host: '127.0.0.1', port, servername: 'localhost', ca });
    await new Promise((r) => held.once('secureConnect', r));

    writeFileSync(certFile, second.cert); // the certificate lands before its key
    assert.equal(reloader.check(), false, 'a certificate without its key is not installed');
    assert.equal(await servedFingerprint(port, ca), new X509Certificate(first.cert).fingerprint256);

    writeFileSync(keyFile, second.key);
    assert.equal(reloader.check(), true);
    assert.equal(reloader.reloads, 1);
    assert.equal(await servedFingerprint(port, ca), new X509Certificate(second.cert).fingerprint256);
    assert.equal(held.destroyed, false, 'the existing connection is untouched');
    held.destroy();
  });

  test('unreadable files keep the current certificate', async () => {
    const cert = await makeTestCertificate();
    const server = createServer(tlsServerOptions({ cert: cert.cert, key: cert.key }));
    const reloader = new TlsReloader(server, join(cert.dir, 'missing.crt'), join(cert.dir, 'missing.key'), silent, { cert: cert.cert, key: cert.key });
    assert.equal(reloader.check(), false);
    assert.equal(reloader.reloads, 0);
  });
});
