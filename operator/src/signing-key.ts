/**
 * The Ed25519 key that signs agent tokens. Its public half goes into the gateway config; the
 * private half never leaves the operator's Secret. Generated once (by the chart, or here on first
 * start when the chart could not) and kept forever after: rotating it is an explicit admin action.
 */
import { generateSigningKeyPair } from '@narrowlink/protocol';
import { type KubeClient, KubeError, KubeErrorCode, Resources } from '@narrowlink/kube';
import { Component, managedLabels } from './labels.ts';

export const PRIVATE_KEY_KEY = 'private.pem';
export const PUBLIC_KEY_KEY = 'public.pem';

export interface SigningKey {
  privateKeyPem: string;
  publicKeyPem: string;
}

function decode(data: Record<string, string> | undefined): SigningKey | undefined {
  const privateB64 = data?.[PRIVATE_KEY_KEY];
  const publicB64 = data?.[PUBLIC_KEY_KEY];
  if (!privateB64 || !publicB64) return undefined;
  return { privateKeyPem: Buffer.from(privateB64, 'base64').toString('utf8'), publicKeyPem: Buffer.from(publicB64, 'base64').toString('utf8') };
}

/** Reads the signing key Secret, creating it with a fresh key pair when absent (racing replicas: one create wins). */
export async function ensureSigningKey(client: KubeClient, namespace: string, name: string): Promise<SigningKey> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const existing = await client.get(Resources.secret, namespace, name);
    if (existing) {
      const key = decode(existing.data as Record<string, string> | undefined);
      if (!key) throw new KubeError(KubeErrorCode.API, `Secret ${namespace}/${name} lacks ${PRIVATE_KEY_KEY} and ${PUBLIC_KEY_KEY}`);
      return key;
    }
    const pair = await generateSigningKeyPair();
    try {
      await client.create(Resources.secret, {
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name, namespace, labels: managedLabels(Component.SigningKey), annotations: { 'helm.sh/resource-policy': 'keep' } },
        type: 'Opaque',
        data: {
          [PRIVATE_KEY_KEY]: Buffer.from(pair.privateKeyPem).toString('base64'),
          [PUBLIC_KEY_KEY]: Buffer.from(pair.publicKeyPem).toString('base64'),
        },
      });
      return pair;
    } catch (error) {
      if (!(error instanceof KubeError && error.conflict)) throw error;
      // another replica created it first: read theirs
    }
  }
  throw new KubeError(KubeErrorCode.API, `could not read or create Secret ${namespace}/${name}`);
}
