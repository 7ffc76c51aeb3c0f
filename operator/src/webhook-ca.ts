/**
 * Webhook TLS without cert-manager: the operator makes its own CA and serving certificate, keeps
 * them in a Secret (so every replica serves the same certificate and a restart reuses it), and
 * writes the CA into the MutatingWebhookConfiguration's `caBundle`. With cert-manager the chart
 * uses `cert-manager.io/inject-ca-from` instead and none of this runs.
 */
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { type KubeClient, KubeError, KubeErrorCode, type KubeObject, Resources, type ResourceType } from '@narrowlink/kube';
import { ensureOperatorCa, gatewaySans, issueServingCertificate } from './gateway-tls.ts';
import { Component, managedLabels } from './labels.ts';

export const mutatingWebhookConfigurations: ResourceType = {
  group: 'admissionregistration.k8s.io',
  version: 'v1',
  plural: 'mutatingwebhookconfigurations',
  kind: 'MutatingWebhookConfiguration',
  namespaced: false,
};

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 24 * 3600 * 1000;
/** Serving certificates live a year and are renewed with 30 days left. */
const SERVING_LIFETIME_MS = 365 * DAY_MS;
const RENEW_BEFORE_MS = 30 * DAY_MS;

export interface ServingCertificate {
  caPem: string;
  certPem: string;
  keyPem: string;
  notAfterMs: number;
}

async function pkcs8Pem(key: webcrypto.CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').match(/.{1,64}/g)?.join('\n')}\n-----END PRIVATE KEY-----\n`;
}

/** A new CA (10 years) and a serving certificate for the Service's DNS names (1 year). */
export async function makeServingCertificate(serviceName: string, namespace: string, nowMs: number): Promise<ServingCertificate> {
  const caKeys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(8))).toString('hex').replace(/^[89a-f]/, '1'),
    name: `CN=narrowlink-webhook-ca.${namespace}`,
    notBefore: new Date(nowMs - 60_000),
    notAfter: new Date(nowMs + 10 * 365 * DAY_MS),
    keys: caKeys,
    signingAlgorithm: ALGORITHM,
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)],
  });
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const dnsNames = [serviceName, `${serviceName}.${namespace}`, `${serviceName}.${namespace}.svc`, `${serviceName}.${namespace}.svc.cluster.local`];
  const notAfterMs = nowMs + SERVING_LIFETIME_MS;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(8))).toString('hex').replace(/^[89a-f]/, '1'),
    subject: `CN=${serviceName}.${namespace}.svc`,
    issuer: ca.subject,
    notBefore: new Date(nowMs - 60_000),
    notAfter: new Date(notAfterMs),
    publicKey: keys.publicKey,
    signingKey: caKeys.privateKey,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(dnsNames.map((value) => ({ type: 'dns' as const, value }))),
    ],
  });
  return { caPem: ca.toString('pem'), certPem: cert.toString('pem'), keyPem: await pkcs8Pem(keys.privateKey), notAfterMs };
}

function decodeSecret(secret: KubeObject | undefined): ServingCertificate | undefined {
  const data = secret?.data as Record<string, string> | undefined;
  if (!data?.['ca.crt'] || !data['tls.crt'] || !data['tls.key']) return undefined;
  const certPem = Buffer.from(data['tls.crt'], 'base64').toString('utf8');
  try {
    const notAfterMs = new x509.X509Certificate(certPem).notAfter.getTime();
    return { caPem: Buffer.from(data['ca.crt'], 'base64').toString('utf8'), certPem, keyPem: Buffer.from(data['tls.key'], 'base64').toString('utf8'), notAfterMs };
  } catch {
    return undefined;
  }
}

/**
 * Reads the serving certificate Secret, (re)creating it when absent, unreadable or near expiry, and
 * makes the webhook configuration trust its CA. Replicas racing here converge: a lost create (409)
 * re-reads the winner's Secret.
 *
 * With `caSecretName` the certificate is issued from the operator's kept CA in that Secret (docs/adr/0015,
 * made when absent): renewals then leave `caBundle` unchanged, so a replica still serving the previous
 * certificate stays trusted until it re-reads the Secret. A certificate from another CA is re-issued once.
 * Without it, each issuance makes a new throwaway CA (the behaviour before the kept CA existed).
 */
export async function ensureWebhookCertificate(
  client: KubeClient,
  options: { namespace: string; secretName: string; serviceName: string; webhookConfiguration: string; nowMs: number; caSecretName?: string },
): Promise<ServingCertificate> {
  const { namespace, secretName } = options;
  let current = decodeSecret(await client.get(Resources.secret, namespace, secretName));
  const ca = options.caSecretName ? await ensureOperatorCa(client, { namespace, secretName: options.caSecretName, nowMs: options.nowMs }) : undefined;
  if (!current || current.notAfterMs - options.nowMs < RENEW_BEFORE_MS || (ca && current.caPem !== ca.certPem)) {
    const made = ca
      ? { ...(await issueServingCertificate(ca, gatewaySans(options.serviceName, namespace, []), options.nowMs, SERVING_LIFETIME_MS)), caPem: ca.certPem }
      : await makeServingCertificate(options.serviceName, namespace, options.nowMs);
    const body = {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: secretName, namespace, labels: managedLabels(Component.WebhookCertificate) },
      type: 'kubernetes.io/tls',
      data: {
        'ca.crt': Buffer.from(made.caPem).toString('base64'),
        'tls.crt': Buffer.from(made.certPem).toString('base64'),
        'tls.key': Buffer.from(made.keyPem).toString('base64'),
      },
    };
    try {
      if (current) await client.apply(Resources.secret, body, { fieldManager: 'narrowlink-operator', force: true });
      else await client.create(Resources.secret, body);
      current = made;
    } catch (error) {
      if (!(error instanceof KubeError && error.conflict)) throw error;
      current = decodeSecret(await client.get(Resources.secret, namespace, secretName));
      if (!current) throw error;
    }
  }
  await injectCaBundle(client, options.webhookConfiguration, current.caPem);
  return current;
}

/** Sets `caBundle` on every webhook of the configuration (a whole-list merge patch guarded by resourceVersion). */
export async function injectCaBundle(client: KubeClient, name: string, caPem: string): Promise<boolean> {
  const caBundle = Buffer.from(caPem).toString('base64');
  for (let attempt = 0; attempt < 5; attempt++) {
    const configuration = await client.get(mutatingWebhookConfigurations, undefined, name);
    if (!configuration) return false;
    const webhooks = (configuration.webhooks as Array<{ clientConfig?: { caBundle?: string } }> | undefined) ?? [];
    if (webhooks.every((w) => w.clientConfig?.caBundle === caBundle)) return false;
    try {
      await client.mergePatch(mutatingWebhookConfigurations, undefined, name, {
        metadata: { resourceVersion: configuration.metadata.resourceVersion },
        webhooks: webhooks.map((w) => ({ ...w, clientConfig: { ...w.clientConfig, caBundle } })),
      });
      return true;
    } catch (error) {
      if (!(error instanceof KubeError && error.conflict)) throw error;
    }
  }
  throw new KubeError(KubeErrorCode.API, `could not update caBundle of ${name}: too many concurrent changes`);
}
