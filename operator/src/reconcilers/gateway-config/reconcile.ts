/**
 * gather (agents + policies from the caches) → desired (pure compile) → apply (one Secret, server-side
 * apply). The Secret is written only when its content changes, so gateways reload only then.
 */
import { Resources } from '@narrowlink/kube';
import { GATEWAY_CONFIG_SECRET_KEY } from '@narrowlink/protocol';
import type { AccessPolicy } from '../../crds/access-policy.ts';
import type { NarrowlinkAgent } from '../../crds/narrowlink-agent.ts';
import { FIELD_MANAGER } from '../../labels.ts';
import { problemKey, type ReconcileContext, type ReconcileResult } from '../context.ts';
import { desiredGatewayConfig, gatewayConfigSecret, type Problem } from './desired.ts';

export interface GatewayConfigOutcome extends ReconcileResult {
  /** Keys (`Kind/namespace/name`) whose problem changed since the previous compile: their status needs a look. */
  changed: string[];
  written: boolean;
}

export async function reconcileGatewayConfig(ctx: ReconcileContext): Promise<GatewayConfigOutcome> {
  // gather
  const agents = ctx.caches.agents.list() as unknown as NarrowlinkAgent[];
  const policies = ctx.caches.policies.list() as unknown as AccessPolicy[];
  const nowMs = ctx.now();
  // desired
  const desired = desiredGatewayConfig({
    agents,
    policies,
    signingPublicKeys: [ctx.signingKey.publicKeyPem],
    allowCrossNamespacePolicies: ctx.settings.allowCrossNamespacePolicies,
    ...(ctx.settings.gatewayTokenRules ? { tokenRules: ctx.settings.gatewayTokenRules } : {}),
    nowMs,
  });
  const secret = gatewayConfigSecret(desired.config, { namespace: ctx.settings.namespace, name: ctx.settings.gatewayConfigSecret });
  // apply
  const observed = ctx.caches.secrets.get(`${ctx.settings.namespace}/${ctx.settings.gatewayConfigSecret}`);
  const observedData = (observed?.data as Record<string, string> | undefined)?.[GATEWAY_CONFIG_SECRET_KEY];
  const written = observedData !== secret.data?.[GATEWAY_CONFIG_SECRET_KEY];
  if (written) {
    await ctx.client.apply(Resources.secret, secret as never, { fieldManager: FIELD_MANAGER, force: true });
    ctx.log.info({ agents: desired.config.agents.length, policies: desired.config.policies.length, problems: desired.problems.length }, 'gateway config written');
  }
  const next = new Map<string, Problem>(desired.problems.map((p) => [problemKey(p.kind, p.namespace, p.name), p]));
  const changed: string[] = [];
  for (const key of new Set([...next.keys(), ...ctx.problems.keys()])) {
    if (JSON.stringify(next.get(key)) !== JSON.stringify(ctx.problems.get(key))) changed.push(key);
  }
  ctx.problems.clear();
  for (const [key, problem] of next) ctx.problems.set(key, problem);
  return { changed, written, ...(desired.nextExpiryMs !== undefined ? { requeueAfterMs: Math.max(0, desired.nextExpiryMs - nowMs) } : {}) };
}
