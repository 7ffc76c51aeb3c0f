/**
 * The discovery ConfigMap's `ca.crt` (what `narrowlink login` trusts for the gateway) follows `ca.crt` of the
 * gateway's TLS Secret: cert-manager writes the CA there only after the chart is installed, so the chart cannot
 * render it. gather (both objects by name) → desired ({@link discoveryCaPatch}, pure) → apply (a merge patch of
 * that one key). Re-checked every minute; the CA of the chart's PKI changes only when it is re-issued.
 */
import { type KubeObject, Resources } from '@narrowlink/kube';
import type { DiscoverySettings, ReconcileContext, ReconcileResult } from '../context.ts';

/** Data key of the CA bundle in the discovery ConfigMap and in a kubernetes.io/tls Secret. */
export const CA_KEY = 'ca.crt';
/** How often the CA is compared again, ms. */
export const DISCOVERY_RECHECK_MS = 60_000;


/**
 * The merge patch that makes `configMap`'s `ca.crt` equal the Secret's, or undefined when nothing is to do (no
 * ConfigMap: the chart owns its existence; no Secret yet: keep what is there).
 */
export function discoveryCaPatch(configMap: KubeObject | undefined, secret: KubeObject | undefined): { data: Record<string, string> } | undefined {
  if (!configMap || !secret) return undefined;
  const b64 = (secret.data as Record<string, string> | undefined)?.[CA_KEY];
  const want = b64 === undefined ? '' : Buffer.from(b64, 'base64').toString('utf8');
  const have = (configMap.data as Record<string, string> | undefined)?.[CA_KEY];
  if (have === want) return undefined;
  return { data: { [CA_KEY]: want } };
}

export async function reconcileDiscovery(ctx: ReconcileContext, settings: DiscoverySettings): Promise<ReconcileResult> {
  const { namespace } = ctx.settings;
  const [configMap, secret] = await Promise.all([
    ctx.client.get(Resources.configMap, namespace, settings.configMap),
    ctx.client.get(Resources.secret, namespace, settings.caSecret),
  ]);
  const patch = discoveryCaPatch(configMap, secret);
  if (patch) {
    await ctx.client.mergePatch(Resources.configMap, namespace, settings.configMap, patch, { fieldManager: 'narrowlink-operator' });
    ctx.log.info({ component: 'discovery', configMap: settings.configMap, caBytes: patch.data[CA_KEY]?.length ?? 0 }, 'discovery ca.crt updated');
  }
  return { requeueAfterMs: DISCOVERY_RECHECK_MS };
}
