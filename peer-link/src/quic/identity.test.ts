import 'reflect-metadata';
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { test } from 'node:test';
import { fingerprint, generateIdentity } from './identity.ts';

test('each identity is a fresh self-signed ECDSA P-256 certificate with a short validity', async () => {
  const nowMs = Date.UTC(2026, 10, 26);
  const [a, b] = await Promise.all([generateIdentity({ nowMs, lifetimeMs: 3600_000 }), generateIdentity({ nowMs })]);
  assert.notEqual(a.fingerprint, b.fingerprint);
  assert.notEqual(a.keyPem, b.keyPem);
  const cert = new X509Certificate(a.certPem);
  assert.ok(cert.verify(cert.publicKey), 'self-signed');
  assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  assert.equal(new Date(cert.validTo).getTime(), nowMs + 3600_000);
  assert.equal(a.notAfterMs, nowMs + 3600_000);
  assert.ok(new Date(cert.validFrom).getTime() <= nowMs);
  assert.deepEqual(Buffer.from(a.certDer), cert.raw);
  assert.ok(a.keyPem.startsWith('-----BEGIN PRIVATE KEY-----\n'));
  assert.equal(new X509Certificate(b.certPem).publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
});

test('fingerprint is the sha256 of the DER certificate as 64 lowercase hex characters', async () => {
  const id = await generateIdentity();
  assert.match(id.fingerprint, /^[0-9a-f]{64}$/);
  assert.equal(fingerprint(id.certDer), createHash('sha256').update(id.certDer).digest('hex'));
  assert.equal(fingerprint(new Uint8Array([1, 2, 3])), '039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81');
});
