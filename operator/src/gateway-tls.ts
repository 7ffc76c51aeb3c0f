/**
 * The gateway's serving certificate without cert-manager (ADR 0015): the operator keeps a long-lived CA in a
 * Secret of its namespace (`narrowlink-ca`: tls.crt/tls.key/ca.crt, the layout cert-manager's CA Certificate
 * gives the same Secret when cert-manager is used) and issues the gateway's leaf certificate from it into the
 * gateway's TLS Secret (`narrowlink-gateway-tls`: tls.crt, tls.key, ca.crt). Leaves rotate (new key, 90 days,
 * renewed with 30 days left); the CA stays, so what sidecars and `narrowlink login` trust does not change when
 * the leaf does. The gateway re-reads its mounted TLS files on change (gateway/src/tls-reloader.ts).
 */
import 'reflect-metadata';
import { isIP } from 'node:net';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { type KubeClient, KubeError, type KubeObject, Resources } from '@narrowlink/kube';
import { Component, FIELD_MANAGER, managedLabels } from './labels.ts';

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 24 * 3600 * 1000;
/** The CA lives 10 years (like the chart's cert-manager CA); it is re-made only when missing or broken. */
export const CA_LIFETIME_MS = 10 * 365 * DAY_MS;
/** Gateway leaf certificates live 90 days ... */
export const GATEWAY_CERT_LIFETIME_MS = 90 * DAY_MS;
/** ... and are renewed with 30 days left (cert-manager's default ratio). */
export const GATEWAY_RENEW_BEFORE_MS = 30 * DAY_MS;
/** How often the manager re-checks the Secrets even when nothing is due (repairs deleted or edited Secrets). */
export const GATEWAY_TLS_RECHECK_MS = 10 * 60 * 1000;

/** A PEM certificate with its PKCS#8 key. */
export interface KeyPairPem {
  certPem: string;
  keyPem: string;
  notAfterMs: number;
}

/** The SANs of the gateway certificate. */
export interface GatewaySans {
  dnsNames: string[];
  ipAddresses: string[];
}

function serial(): string {
  // Positive (first bit clear), 8 random bytes: RFC 5280 wants unique, non-negative serials.
  return Buffer.from(webcrypto.getRandomValues(new Uint8Array(8))).toString('hex').replace(/^[89a-f]/, '1');
}

async function pkcs8Pem(key: webcrypto.CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').match(/.{1,64}/g)?.join('\n')}\n-----END PRIVATE KEY-----\n`;
}

async function importKey(keyPem: string): Promise<webcrypto.CryptoKey> {
  const der = Buffer.from(keyPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  return webcrypto.subtle.importKey('pkcs8', der, ALGORITHM, true, ['sign']);
}

/**
 * The gateway's SANs: the Service's in-cluster names, then `extra` (DNS names or IP addresses, e.g. the public
 * name, a LoadBalancer or node address), without duplicates, in that order.
 */
export function gatewaySans(serviceName: string, namespace: string, extra: readonly string[]): GatewaySans {
  const dnsNames: string[] = [];
  const ipAddresses: string[] = [];
  for (const name of [serviceName, `${serviceName}.${namespace}`, `${serviceName}.${namespace}.svc`, `${serviceName}.${namespace}.svc.cluster.local`, ...extra]) {
    const value = name.trim();
    if (value === '') continue;
    const list = isIP(value) ? ipAddresses : dnsNames;
    if (!list.includes(value)) list.push(value);
  }
  return { dnsNames, ipAddresses };
}

/** A new self-signed CA (ECDSA P-256, 10 years, path length 0). */
export async function makeCa(commonName: string, nowMs: number): Promise<KeyPairPem> {
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const notAfterMs = nowMs + CA_LIFETIME_MS;
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${commonName}`,
    notBefore: new Date(nowMs - 60_000),
    notAfter: new Date(notAfterMs),
    keys,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: ca.toString('pem'), keyPem: await pkcs8Pem(keys.privateKey), notAfterMs };
}

/** A serving certificate for `sans`, signed by `ca`, valid `lifetimeMs` from `nowMs`. */
export async function issueServingCertificate(ca: KeyPairPem, sans: GatewaySans, nowMs: number, lifetimeMs = GATEWAY_CERT_LIFETIME_MS): Promise<KeyPairPem> {
  const caCert = new x509.X509Certificate(ca.certPem);
  const caKey = await importKey(ca.keyPem);
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  // Never outlive the CA: a leaf past its issuer's notAfter fails verification anyway.
  const notAfterMs = Math.min(nowMs + lifetimeMs, caCert.notAfter.getTime());
  const subject = sans.dnsNames[0] ?? sans.ipAddresses[0] ?? 'narrowlink-gateway';
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${subject}`,
    issuer: caCert.subject,
    notBefore: new Date(nowMs - 60_000),
    notAfter: new Date(notAfterMs),
    publicKey: keys.publicKey,
    signingKey: caKey,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([
        ...sans.dnsNames.map((value) => ({ type: 'dns' as const, value })),
        ...sans.ipAddresses.map((value) => ({ type: 'ip' as const, value })),
      ]),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await pkcs8Pem(keys.privateKey), notAfterMs };
}

function secretText(secret: KubeObject | undefined, key: string): string | undefined {
  const b64 = (secret?.data as Record<string, string> | undefined)?.[key];
  return b64 === undefined ? undefined : Buffer.from(b64, 'base64').toString('utf8');
}

/** The CA of a kubernetes.io/tls Secret when it is a usable CA (parses, is a CA, not expired), else undefined. */
function decodeCa(secret: KubeObject | undefined, nowMs: number): KeyPairPem | undefined {
  const certPem = secretText(secret, 'tls.crt');
  const keyPem = secretText(secret, 'tls.key');
  if (!certPem || !keyPem) return undefined;
  try {
    const cert = new x509.X509Certificate(certPem);
    const basic = cert.getExtension(x509.BasicConstraintsExtension);
    if (!basic?.ca || cert.notAfter.getTime() <= nowMs) return undefined;
    return { certPem, keyPem, notAfterMs: cert.notAfter.getTime() };
  } catch {
    return undefined;
  }
}

function tlsSecret(namespace: string, name: string, component: Component, pair: KeyPairPem, caPem: string): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name, namespace, labels: managedLabels(component) },
    type: 'kubernetes.io/tls',
    data: {
      'ca.crt': Buffer.from(caPem).toString('base64'),
      'tls.crt': Buffer.from(pair.certPem).toString('base64'),
      'tls.key': Buffer.from(pair.keyPem).toString('base64'),
    },
  };
}

/**
 * Reads the operator's CA Secret, making it when absent or unusable. Replicas racing here converge: a lost
 * create (409) re-reads the winner's CA. An unusable CA Secret (edited, expired) is replaced in place.
 */
export async function ensureOperatorCa(client: KubeClient, options: { namespace: string; secretName: string; nowMs: number }): Promise<KeyPairPem> {
  const { namespace, secretName, nowMs } = options;
  const existing = await client.get(Resources.secret, namespace, secretName);
  const current = decodeCa(existing, nowMs);
  if (current) return current;
  const made = await makeCa(`narrowlink-ca.${namespace}`, nowMs);
  const body = tlsSecret(namespace, secretName, Component.OperatorCa, made, made.certPem);
  try {
    if (existing) await client.apply(Resources.secret, body, { fieldManager: FIELD_MANAGER, force: true });
    else await client.create(Resources.secret, body);
    return made;
  } catch (error) {
    if (!(error instanceof KubeError && error.conflict)) throw error;
    const winner = decodeCa(await client.get(Resources.secret, namespace, secretName), nowMs);
    if (!winner) throw error;
    return winner;
  }
}

/** Why the gateway certificate in `secret` must be (re)issued, or undefined when it is good until the renewal time. */
export function gatewayCertificateProblem(secret: KubeObject | undefined, ca: KeyPairPem, sans: GatewaySans, nowMs: number): string | undefined {
  if (!secret) return 'missing';
  const certPem = secretText(secret, 'tls.crt');
  const keyPem = secretText(secret, 'tls.key');
  if (!certPem || !keyPem) return 'incomplete';
  if (secretText(secret, 'ca.crt') !== ca.certPem) return 'ca.crt is not the current CA';
  let cert: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate(certPem);
  } catch {
    return 'tls.crt does not parse';
  }
  if (cert.issuer !== new x509.X509Certificate(ca.certPem).subject) return 'not issued by the current CA';
  if (cert.notAfter.getTime() - nowMs < GATEWAY_RENEW_BEFORE_MS) return 'due for renewal';
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  const names = san?.names.toJSON() ?? [];
  const have = {
    dns: names.filter((n) => n.type === 'dns').map((n) => n.value).sort(),
    ip: names.filter((n) => n.type === 'ip').map((n) => n.value).sort(),
  };
  if (JSON.stringify(have.dns) !== JSON.stringify([...sans.dnsNames].sort()) || JSON.stringify(have.ip) !== JSON.stringify([...sans.ipAddresses].sort())) {
    return 'SANs changed';
  }
  return undefined;
}

/** Settings of {@link ensureGatewayCertificate} and {@link GatewayTlsManager}. */
export interface GatewayTlsSettings {
  /** The operator's (and gateway's) namespace. */
  namespace: string;
  /** The CA Secret (`narrowlink-ca`). */
  caSecretName: string;
  /** The gateway's TLS Secret (`narrowlink-gateway-tls`). */
  tlsSecretName: string;
  /** The gateway Service (`narrowlink-gateway`): its in-cluster names are the first SANs. */
  serviceName: string;
  /** Further SANs: DNS names or IP addresses. */
  extraSans: readonly string[];
}

/** What one {@link ensureGatewayCertificate} did. */
export interface GatewayCertificateOutcome {
  /** Why a new certificate was issued; undefined when the existing one was kept. */
  issued?: string;
  /** notAfter of the certificate now in the Secret, ms. */
  notAfterMs: number;
  caPem: string;
}

/**
 * Makes the gateway TLS Secret hold a certificate from the operator's CA for the current SANs, issuing a new one
 * when it is missing, from another CA, for other names or due for renewal. Idempotent; racing replicas converge
 * (the Secret is written with server-side apply, last writer wins with an equally valid certificate).
 */
export async function ensureGatewayCertificate(client: KubeClient, settings: GatewayTlsSettings, nowMs: number): Promise<GatewayCertificateOutcome> {
  const ca = await ensureOperatorCa(client, { namespace: settings.namespace, secretName: settings.caSecretName, nowMs });
  const sans = gatewaySans(settings.serviceName, settings.namespace, settings.extraSans);
  const existing = await client.get(Resources.secret, settings.namespace, settings.tlsSecretName);
  const problem = gatewayCertificateProblem(existing, ca, sans, nowMs);
  if (problem === undefined) {
    const certPem = secretText(existing, 'tls.crt') as string;
    return { notAfterMs: new x509.X509Certificate(certPem).notAfter.getTime(), caPem: ca.certPem };
  }
  const leaf = await issueServingCertificate(ca, sans, nowMs);
  await client.apply(Resources.secret, tlsSecret(settings.namespace, settings.tlsSecretName, Component.GatewayTls, leaf, ca.certPem), {
    fieldManager: FIELD_MANAGER,
    force: true,
  });
  return { issued: problem, notAfterMs: leaf.notAfterMs, caPem: ca.certPem };
}

/** The logger surface the manager uses (pino fits). */
interface Log {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/**
 * Keeps the gateway certificate issued and renewed: checks at start, then when renewal is due and every
 * {@link GATEWAY_TLS_RECHECK_MS} (a deleted or edited Secret is repaired), retrying failures after `retryMs`.
 */
export class GatewayTlsManager {
  readonly #client: KubeClient;
  readonly #settings: GatewayTlsSettings;
  readonly #log: Log;
  readonly #now: () => number;
  readonly #recheckMs: number;
  readonly #retryMs: number;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  #running: Promise<void> | undefined;

  constructor(options: { client: KubeClient; settings: GatewayTlsSettings; log: Log; now?: () => number; recheckMs?: number; retryMs?: number }) {
    this.#client = options.client;
    this.#settings = options.settings;
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
    this.#recheckMs = options.recheckMs ?? GATEWAY_TLS_RECHECK_MS;
    this.#retryMs = options.retryMs ?? 5_000;
  }

  /** Runs the first check (resolving when it is done, failed checks included: they retry) and schedules the next. */
  start(): Promise<void> {
    this.#running = this.#check();
    return this.#running;
  }

  /** One check now (tests); resolves with its outcome. */
  async checkNow(): Promise<GatewayCertificateOutcome> {
    return ensureGatewayCertificate(this.#client, this.#settings, this.#now());
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  async #check(): Promise<void> {
    let nextMs = this.#recheckMs;
    try {
      const outcome = await this.checkNow();
      if (outcome.issued !== undefined) {
        this.#log.info(
          { component: 'gateway-tls', secret: this.#settings.tlsSecretName, reason: outcome.issued, notAfter: new Date(outcome.notAfterMs).toISOString() },
          'gateway certificate issued',
        );
      }
      nextMs = Math.max(1_000, Math.min(this.#recheckMs, outcome.notAfterMs - GATEWAY_RENEW_BEFORE_MS - this.#now()));
    } catch (error) {
      nextMs = this.#retryMs;
      this.#log.warn({ component: 'gateway-tls', err: (error as Error).message, retryInMs: nextMs }, 'could not check the gateway certificate; will retry');
    }
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#running = this.#check();
    }, nextMs);
    this.#timer.unref();
  }
}
