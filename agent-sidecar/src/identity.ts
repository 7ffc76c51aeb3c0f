/**
 * The agent's direct-path identity (an ECDSA P-256 key and a self-signed certificate, peer-link's `PeerIdentity`)
 * made with `node:crypto` and a few bytes of DER, instead of peer-link's `generateIdentity` and its certificate
 * library (@peculiar/x509, asn1js, reflect-metadata, tsyringe: ~0.8 MB of source the sidecar kept loaded for its
 * whole life only to make one certificate at start; issue 13, docs/adr/0014). The certificate has the same content:
 * version 3, a random positive 64-bit serial, `CN=<commonName>` as subject and issuer, validity from a minute
 * before now, signed ecdsa-with-SHA256, and the same three extensions (basicConstraints cA=false critical,
 * keyUsage digitalSignature critical, extKeyUsage serverAuth + clientAuth). Peers pin its fingerprint only.
 */
import { generateKeyPair, randomBytes, sign } from 'node:crypto';
import { promisify } from 'node:util';
import { DEFAULT_IDENTITY_LIFETIME_MS, fingerprint, type PeerIdentity } from '@narrowlink/peer-link';

const generateKeyPairAsync = promisify(generateKeyPair);

/** DER: one tag-length-value. */
function tlv(tag: number, ...content: Uint8Array[]): Buffer {
  const body = Buffer.concat(content);
  const n = body.length;
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : n < 0x10000 ? [0x82, n >> 8, n & 0xff] : undefined;
  if (!length) throw new RangeError(`DER value of ${n} bytes is larger than a certificate needs`);
  return Buffer.concat([Buffer.from([tag, ...length]), body]);
}

const sequence = (...content: Uint8Array[]): Buffer => tlv(0x30, ...content);

/** DER OBJECT IDENTIFIER from dotted text. */
function oid(text: string): Buffer {
  const [first, second, ...rest] = text.split('.').map(Number);
  const bytes = [(first as number) * 40 + (second as number)];
  for (const arc of rest) {
    const groups = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) groups.unshift((v & 0x7f) | 0x80);
    bytes.push(...groups);
  }
  return tlv(0x06, Buffer.from(bytes));
}

/** UTCTime before 2050, GeneralizedTime from then on (RFC 5280 4.1.2.5), whole seconds, UTC. */
function time(ms: number): Buffer {
  const iso = new Date(ms).toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
  const year = new Date(ms).getUTCFullYear();
  return year < 2050 ? tlv(0x17, Buffer.from(digits.slice(2), 'ascii')) : tlv(0x18, Buffer.from(digits, 'ascii'));
}

/** Name: one RDN, commonName as UTF8String. */
const commonNameRdn = (cn: string): Buffer => sequence(tlv(0x31, sequence(oid('2.5.4.3'), tlv(0x0c, Buffer.from(cn, 'utf8')))));

const ECDSA_WITH_SHA256 = sequence(oid('1.2.840.10045.4.3.2'));
const TRUE = tlv(0x01, Buffer.from([0xff]));

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return sequence(oid(id), ...(critical ? [TRUE] : []), tlv(0x04, value));
}

const EXTENSIONS = tlv(
  0xa3,
  sequence(
    // basicConstraints: cA FALSE (the DEFAULT, so an empty SEQUENCE), critical.
    extension('2.5.29.19', true, sequence()),
    // keyUsage: digitalSignature (bit 0; 7 unused bits), critical.
    extension('2.5.29.15', true, tlv(0x03, Buffer.from([0x07, 0x80]))),
    // extKeyUsage: serverAuth, clientAuth.
    extension('2.5.29.37', false, sequence(oid('1.3.6.1.5.5.7.3.1'), oid('1.3.6.1.5.5.7.3.2'))),
  ),
);

/**
 * A new key pair and self-signed certificate for the agent's direct path. `lifetimeMs` defaults to a day
 * (`DEFAULT_IDENTITY_LIFETIME_MS`); `notBefore` is backdated a minute for clock skew; both dates are whole seconds.
 */
export async function generateAgentIdentity(options: { lifetimeMs?: number; nowMs?: number; commonName?: string } = {}): Promise<PeerIdentity> {
  const nowMs = options.nowMs ?? Date.now();
  const notAfterMs = nowMs + (options.lifetimeMs ?? DEFAULT_IDENTITY_LIFETIME_MS);
  const { publicKey, privateKey } = await generateKeyPairAsync('ec', { namedCurve: 'prime256v1' });
  // A positive serial of 8 bytes with no leading zero byte (DER INTEGERs are minimal).
  const serial = randomBytes(8);
  serial[0] = ((serial[0] as number) & 0x7f) || 0x01;
  const name = commonNameRdn(options.commonName ?? 'narrowlink-peer');
  const tbs = sequence(
    tlv(0xa0, tlv(0x02, Buffer.from([0x02]))), // version v3
    tlv(0x02, serial),
    ECDSA_WITH_SHA256,
    name,
    sequence(time(nowMs - 60_000), time(notAfterMs)),
    name,
    publicKey.export({ type: 'spki', format: 'der' }),
    EXTENSIONS,
  );
  // crypto.sign gives ECDSA's DER Ecdsa-Sig-Value, what the certificate's BIT STRING holds.
  const signature = sign('sha256', tbs, privateKey);
  const certDer = sequence(tbs, ECDSA_WITH_SHA256, tlv(0x03, Buffer.from([0x00]), signature));
  const base64 = certDer.toString('base64').match(/.{1,64}/g)?.join('\n') ?? '';
  return {
    certPem: `-----BEGIN CERTIFICATE-----\n${base64}\n-----END CERTIFICATE-----\n`,
    certDer: new Uint8Array(certDer),
    keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    fingerprint: fingerprint(certDer),
    notAfterMs,
  };
}
