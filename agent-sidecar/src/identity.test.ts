import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, createPrivateKey, X509Certificate } from 'node:crypto';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { generateIdentity } from '@narrowlink/peer-link';
import { generateAgentIdentity } from './identity.ts';

const run = promisify(execFile);

/** `openssl x509 -text` of a certificate with what differs between any two identities (keys, serial, dates) masked. */
async function certificateText(pem: string): Promise<string> {
  const child = run('openssl', ['x509', '-noout', '-text']);
  child.child.stdin?.end(pem);
  const { stdout } = await child;
  return stdout
    .replace(/(Serial Number:)[\s\S]*?(\n\s+Signature Algorithm)/, '$1 <serial>$2')
    .replace(/(Not (Before|After) *:).*/g, '$1 <date>')
    .replace(/(pub:)[\s\S]*?(\n\s+ASN1 OID)/, '$1 <key>$2')
    .replace(/(Signature Value:)[\s\S]*$/, '$1 <signature>');
}

describe('the agent identity (node:crypto, no certificate library)', () => {
  it('is a certificate with the same fields and extensions as peer-link generateIdentity makes', async () => {
    const nowMs = Date.UTC(2026, 11, 8, 3, 4, 5);
    const [ours, theirs] = await Promise.all([
      generateAgentIdentity({ nowMs, commonName: 'narrowlink-agent' }),
      generateIdentity({ nowMs, commonName: 'narrowlink-agent' }),
    ]);
    const text = await certificateText(ours.certPem);
    assert.equal(text, await certificateText(theirs.certPem));
    // What the masked text holds, so an empty or broken parse cannot pass the comparison above.
    assert.match(text, /Version: 3 \(0x2\)/);
    assert.match(text, /X509v3 Basic Constraints: critical\n\s+CA:FALSE/);
    assert.match(text, /X509v3 Key Usage: critical\n\s+Digital Signature\n/);
    assert.match(text, /X509v3 Extended Key Usage: \n\s+TLS Web Server Authentication, TLS Web Client Authentication/);
    assert.match(text, /Signature Algorithm: ecdsa-with-SHA256/);
  });

  it('is self-signed by its own P-256 key, valid from a minute before now for the lifetime, fingerprint = sha256(DER)', async () => {
    const nowMs = Date.UTC(2026, 11, 8, 3, 4, 5);
    const id = await generateAgentIdentity({ nowMs, lifetimeMs: 3600_000, commonName: 'narrowlink-agent' });
    const cert = new X509Certificate(id.certPem);
    assert.ok(cert.verify(cert.publicKey), 'self-signed');
    assert.ok(cert.checkPrivateKey(createPrivateKey(id.keyPem)), 'the key is the certificate key');
    assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.equal(cert.subject, 'CN=narrowlink-agent');
    assert.equal(cert.issuer, 'CN=narrowlink-agent');
    assert.equal(cert.ca, false);
    assert.equal(new Date(cert.validFrom).getTime(), nowMs - 60_000);
    assert.equal(new Date(cert.validTo).getTime(), nowMs + 3600_000);
    assert.equal(id.notAfterMs, nowMs + 3600_000);
    assert.deepEqual(Buffer.from(id.certDer), cert.raw);
    assert.equal(id.fingerprint, createHash('sha256').update(cert.raw).digest('hex'));
    assert.match(id.keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
    assert.match(cert.serialNumber, /^(?!00)[0-7][0-9A-F]{15}$/, 'a positive 64-bit serial, minimal DER');
  });

  it('uses GeneralizedTime from 2050 on and milliseconds-free dates', async () => {
    const nowMs = Date.UTC(2049, 11, 31, 23, 59, 59, 999);
    const id = await generateAgentIdentity({ nowMs, lifetimeMs: 2 * 24 * 3600_000 });
    const cert = new X509Certificate(id.certPem);
    assert.equal(new Date(cert.validFrom).getTime(), Date.UTC(2049, 11, 31, 23, 58, 59));
    assert.equal(new Date(cert.validTo).getTime(), Date.UTC(2050, 0, 2, 23, 59, 59));
    // The tags in the DER: UTCTime (0x17) for 2049, GeneralizedTime (0x18) for 2050.
    assert.ok(Buffer.from(id.certDer).includes(Buffer.from([0x17, 13, ...Buffer.from('491231235859Z')])));
    assert.ok(Buffer.from(id.certDer).includes(Buffer.from([0x18, 15, ...Buffer.from('20500102235959Z')])));
  });

  it('is new each time: another key, serial and fingerprint', async () => {
    const [a, b] = await Promise.all([generateAgentIdentity(), generateAgentIdentity()]);
    assert.notEqual(a.fingerprint, b.fingerprint);
    assert.notEqual(a.keyPem, b.keyPem);
    assert.notEqual(new X509Certificate(a.certPem).serialNumber, new X509Certificate(b.certPem).serialNumber);
    assert.equal(new X509Certificate(a.certPem).subject, 'CN=narrowlink-peer');
  });
});
