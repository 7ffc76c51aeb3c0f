/**
 * A NarrowlinkAgent: finalizer, one cert-manager Certificate per published domain, a token Secret for
 * external agents, and status. gather reads the caches; the desired objects and the status come from the
 * pure cores (`desiredCertificates`, `desiredAgentTokenSecret`, {@link desiredAgentStatus}); apply is
 * server-side apply under the operator's field manager. Problems a user must fix end in `Ready=False` plus an
 * Event and a normal return; only transient failures throw (and are retried).
 */
import { type KubeObject, KubeError, Resources } from '@narrowlink/kube';
import { signToken } from '@narrowlink/protocol';
import { AGENT_KIND, type NarrowlinkAgent } from '../../crds/narrowlink-agent.ts';
import { Component, FIELD_MANAGER, FINALIZER, hasOwnerLabels } from '../../labels.ts';
import { type Certificate, isDeleting, type Secret } from '../../objects.ts';
import { desiredAgentTokenSecret, agentTokenSecretName, signingKeyId } from '../agent-token/desired.ts';
import { certificatesToDelete, desiredCertificates, tlsSecretsToDelete } from '../certificates/desired.ts';
import { problemKey, type ReconcileContext, type ReconcileResult } from '../context.ts';
import { domainOwners } from '../domains.ts';
import { applyStatusIfChanged } from '../status.ts';
import { type CertificateApplyResult, desiredAgentStatus } from './desired.ts';
import { type GatewayStatusConfigMap, presenceOf } from './presence.ts';

function ownedBy<T>(objects: KubeObject[], agent: NarrowlinkAgent, component: Component): T[] {
  const owner = { kind: AGENT_KIND, namespace: agent.metadata.namespace ?? '', name: agent.metadata.name ?? '' };
  return objects.filter((o) => o.metadata.namespace === owner.namespace && hasOwnerLabels(o.metadata.labels, owner, component)) as unknown as T[];
}

export async function reconcileAgent(ctx: ReconcileContext, key: string): Promise<ReconcileResult> {
  const cached = ctx.caches.agents.get(key);
  if (!cached) return {};
  const agent = cached as unknown as NarrowlinkAgent;
  const namespace = agent.metadata.namespace ?? '';
  const name = agent.metadata.name ?? '';
  const log = ctx.log.child({ agent: key });
  const certificates = ownedBy<Certificate>(ctx.caches.certificates.list(), agent, Component.Certificate);
  const tlsSecrets = ownedBy<Secret>(ctx.caches.secrets.list(), agent, Component.Certificate);
  const tokenSecrets = ownedBy<Secret>(ctx.caches.secrets.list(), agent, Component.AgentToken);

  if (isDeleting(agent)) {
    // cert-manager's Secrets carry no owner reference and this API server may have no garbage
    // collector: delete everything the agent caused, then let the object go.
    for (const c of certificatesToDelete(certificates, [], { namespace, name })) await ctx.client.delete(Resources.certificate, c.namespace, c.name);
    for (const s of tlsSecretsToDelete(tlsSecrets, [], { namespace, name })) await ctx.client.delete(Resources.secret, s.namespace, s.name);
    for (const s of tokenSecrets) await ctx.client.delete(Resources.secret, namespace, s.metadata.name ?? '');
    if (agent.metadata.finalizers?.includes(FINALIZER)) {
      await ctx.client.mergePatch(Resources.narrowlinkAgent, namespace, name, {
        metadata: { resourceVersion: agent.metadata.resourceVersion, finalizers: agent.metadata.finalizers.filter((f) => f !== FINALIZER) },
      });
      log.info('cleanup done; finalizer removed');
    }
    return {};
  }

  if (!agent.metadata.finalizers?.includes(FINALIZER)) {
    // The resourceVersion precondition turns a concurrent edit into a 409, retried with fresh state.
    await ctx.client.mergePatch(Resources.narrowlinkAgent, namespace, name, {
      metadata: { resourceVersion: agent.metadata.resourceVersion, finalizers: [...(agent.metadata.finalizers ?? []), FINALIZER] },
    });
    return {}; // the update event brings us back with the new resourceVersion
  }

  const nowMs = ctx.now();

  // Certificates, one per published Terminate domain.
  const certificatePlan = desiredCertificates({
    agent,
    ...(ctx.settings.defaultIssuerRef ? { defaultIssuerRef: ctx.settings.defaultIssuerRef } : {}),
    domainOwners: domainOwners(ctx.caches.agents.list() as unknown as NarrowlinkAgent[]),
  });
  let certificateResult: CertificateApplyResult = 'applied';
  try {
    for (const certificate of certificatePlan.certificates) {
      await ctx.client.apply(Resources.certificate, certificate as unknown as KubeObject, { fieldManager: FIELD_MANAGER, force: true });
    }
  } catch (error) {
    if (!(error instanceof KubeError && error.notFound)) throw error;
    certificateResult = 'certManagerMissing';
  }
  for (const c of certificatesToDelete(certificates, certificatePlan.certificates, { namespace, name })) await ctx.client.delete(Resources.certificate, c.namespace, c.name);
  for (const s of tlsSecretsToDelete(tlsSecrets, certificatePlan.certificates, { namespace, name })) await ctx.client.delete(Resources.secret, s.namespace, s.name);

  // Token Secret for agents outside the cluster.
  const observedToken = ctx.caches.secrets.get(`${namespace}/${agentTokenSecretName(name)}`) as unknown as Secret | undefined;
  const tokenPlan = await desiredAgentTokenSecret(agent, observedToken, {
    nowMs,
    signingKeyId: signingKeyId(ctx.signingKey.publicKeyPem),
    sign: ({ sub, ttlSeconds, nowMs: at }) => signToken(ctx.signingKey.privateKeyPem, { typ: 'agent', sub, ttlSeconds, nowMs: at }),
  });
  if (tokenPlan.secret) {
    if (tokenPlan.minted) await ctx.client.apply(Resources.secret, tokenPlan.secret as unknown as KubeObject, { fieldManager: FIELD_MANAGER, force: true });
  } else {
    for (const s of tokenSecrets) await ctx.client.delete(Resources.secret, namespace, s.metadata.name ?? '');
  }

  // desired: conditions and counters from all of the above, what the gateway replicas report, and the compile.
  const desired = desiredAgentStatus({
    agent,
    certificates: certificatePlan,
    observedCertificates: certificates,
    certificateResult,
    tokenPlan,
    presence: presenceOf(key, ctx.caches.gatewayStatus.list() as unknown as GatewayStatusConfigMap[], nowMs),
    problem: ctx.problems.get(problemKey(AGENT_KIND, namespace, name)),
    nowMs,
  });

  // apply
  for (const event of desired.events) void ctx.events.record(cached, event.type, event.reason, event.message);
  await applyStatusIfChanged(ctx.client, Resources.narrowlinkAgent, { namespace, name }, agent.status, desired.status);
  return desired.requeueAfterMs !== undefined ? { requeueAfterMs: desired.requeueAfterMs } : {};
}
