/**
 * The direct path's peer identity. Each peer (agent or client) makes its own ECDSA P-256 key pair and a
 * short-lived self-signed certificate at startup; the private key never leaves the process. The gateway only
 * ever sees and forwards the certificate's fingerprint, so it can neither read nor impersonate a direct
 * connection: each side pins the fingerprint it was handed when the QUIC handshake completes.
 */
import { createHash, webcrypto } from 'node:crypto';
import type * as X509 from '@peculiar/x509';

/**
 * @peculiar/x509 (with reflect-metadata, which it needs loaded first) is a large module tree: loaded on the first
 * identity, so commands that never set up a direct path (`--help`, `ls`, `login`) do not pay for it at start-up.
 */
let x509Module: Promise<typeof X509> | undefined;
function loadX509(): Promise<typeof X509> {
  // The package is CommonJS (no `exports`): Node gives its names on the namespace, but a bundle's split chunk
  // (the CLI package, dist/server) gives the module as `default` only; take whichever holds the API.
  x509Module ??= import('reflect-metadata')
    .then(() => import('@peculiar/x509'))
    .then((module): typeof X509 => (module.X509CertificateGenerator ? module : module.default) as typeof X509);
  return x509Module;
}

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
/** Default certificate lifetime: a day. A peer makes a new identity at each start. */
export const DEFAULT_IDENTITY_LIFETIME_MS = 24 * 3600 * 1000;

export interface PeerIdentity {
  /** Self-signed certificate, PEM. */
  certPem: string;
  /** The same certificate, DER. */
  certDer: Uint8Array;
  /** PKCS#8 private key, PEM. Stays in this process. */
  keyPem: string;
  /** sha256 of `certDer`, 64 lowercase hex characters: what the gateway forwards to the other peer. */
  fingerprint: string;
  /** Expiry, epoch ms. */
  notAfterMs: number;
}

/** sha256 of a DER certificate as 64 lowercase hex characters. */
export function fingerprint(certDer: Uint8Array): string {
  return createHash('sha256').update(certDer).digest('hex');
}

/**
 * A new key pair and self-signed certificate. `lifetimeMs` defaults to a day; `notBefore` is backdated a minute
 * for clock skew (peers pin the fingerprint, not the validity, but TLS stacks still read the dates).
 */
export async function generateIdentity(options: { lifetimeMs?: number; nowMs?: number; commonName?: string } = {}): Promise<PeerIdentity> {
  const nowMs = options.nowMs ?? Date.now();
  const notAfterMs = nowMs + (options.lifetimeMs ?? DEFAULT_IDENTITY_LIFETIME_MS);
  const x509 = await loadX509();
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(8))).toString('hex').replace(/^[89a-f]/, '1'),
    name: `CN=${options.commonName ?? 'narrowlink-peer'}`,
    notBefore: new Date(nowMs - 60_000),
    notAfter: new Date(notAfterMs),
    keys,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
    ],
  });
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').match(/.{1,64}/g)?.join('\n')}\n-----END PRIVATE KEY-----\n`;
  const certDer = new Uint8Array(cert.rawData);
  return { certPem: cert.toString('pem'), certDer, keyPem, fingerprint: fingerprint(certDer), notAfterMs };
}
