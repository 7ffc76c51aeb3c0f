/**
 * A NarrowlinkAgent: finalizer, one cert-manager Certificate per published domain, a token Secret for
 * external agents, and status. gather reads the caches; the desired objects come from the pure
 * cores; apply is server-side apply under the operator's field manager. Problems a user must fix end
 * in `Ready=False` plus an Event and a normal return; only transient failures throw (and are retried).
 */
import { isDeepStrictEqual } from 'node:util';
import { type KubeObject, KubeError, Resources } from '@narrowlink/kube';
import { signToken } from '@narrowlink/protocol';
import type { Condition } from '../../crds/common.ts';
import { AGENT_KIND, AgentConditionType, type NarrowlinkAgent, type NarrowlinkAgentStatus } from '../../crds/narrowlink-agent.ts';
import { Component, FIELD_MANAGER, FINALIZER, hasOwnerLabels, STATUS_FIELD_MANAGER } from '../../labels.ts';
import { type Certificate, isDeleting, type Secret } from '../../objects.ts';
import { desiredAgentTokenSecret, agentTokenSecretName, signingKeyId } from '../agent-token/desired.ts';
import { certificatesToDelete, desiredCertificates, tlsSecretsToDelete } from '../certificates/desired.ts';
import { setCondition } from '../conditions.ts';
import { problemKey, type ReconcileContext, type ReconcileResult } from '../context.ts';
import { type GatewayStatusConfigMap, presenceOf } from './presence.ts';
import { domainOwners } from '../domains.ts';

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
  const nowIso = new Date(nowMs).toISOString();
  const generation = agent.metadata.generation ?? 0;
  let conditions: Condition[] = agent.status?.conditions ?? [];
  let result: ReconcileResult = {};

  // Certificates, one per published Terminate domain.
  const desired = desiredCertificates({
    agent,
    ...(ctx.settings.defaultIssuerRef ? { defaultIssuerRef: ctx.settings.defaultIssuerRef } : {}),
    domainOwners: domainOwners(ctx.caches.agents.list() as unknown as NarrowlinkAgent[]),
  });
  let certificateProblem: { reason: string; message: string } | undefined;
  if (desired.skipped.length > 0) {
    const first = desired.skipped[0] as { reason: string; message: string };
    certificateProblem = { reason: first.reason, message: desired.skipped.map((s) => s.message).join('; ') };
  }
  try {
    for (const certificate of desired.certificates) {
      await ctx.client.apply(Resources.certificate, certificate as unknown as KubeObject, { fieldManager: FIELD_MANAGER, force: true });
    }
  } catch (error) {
    if (!(error instanceof KubeError && error.notFound)) throw error;
    certificateProblem = { reason: 'CertManagerMissing', message: 'cert-manager is not installed (no certificates.cert-manager.io API); install it to publish domains' };
  }
  for (const c of certificatesToDelete(certificates, desired.certificates, { namespace, name })) await ctx.client.delete(Resources.certificate, c.namespace, c.name);
  for (const s of tlsSecretsToDelete(tlsSecrets, desired.certificates, { namespace, name })) await ctx.client.delete(Resources.secret, s.namespace, s.name);
  const notReady = desired.certificates.filter((c) => {
    const observed = certificates.find((o) => o.metadata.name === c.metadata.name);
    return !observed?.status?.conditions?.some((cond) => cond.type === 'Ready' && cond.status === 'True');
  });
  conditions = setCondition(
    conditions,
    certificateProblem
      ? { type: AgentConditionType.CertificatesReady, status: 'False', reason: certificateProblem.reason, message: certificateProblem.message, observedGeneration: generation }
      : notReady.length > 0
        ? { type: AgentConditionType.CertificatesReady, status: 'False', reason: 'Issuing', message: `waiting for ${notReady.map((c) => c.metadata.name).join(', ')}`, observedGeneration: generation }
        : { type: AgentConditionType.CertificatesReady, status: 'True', reason: desired.certificates.length > 0 ? 'Issued' : 'NothingToIssue', message: `${desired.certificates.length} certificate(s) ready`, observedGeneration: generation },
    nowIso,
  );

  // Token Secret for agents outside the cluster.
  const observedToken = ctx.caches.secrets.get(`${namespace}/${agentTokenSecretName(name)}`) as unknown as Secret | undefined;
  const plan = await desiredAgentTokenSecret(agent, observedToken, {
    nowMs,
    signingKeyId: signingKeyId(ctx.signingKey.publicKeyPem),
    sign: ({ sub, ttlSeconds, nowMs: at }) => signToken(ctx.signingKey.privateKeyPem, { typ: 'agent', sub, ttlSeconds, nowMs: at }),
  });
  if (plan.secret) {
    if (plan.minted) {
      await ctx.client.apply(Resources.secret, plan.secret as unknown as KubeObject, { fieldManager: FIELD_MANAGER, force: true });
      void ctx.events.record(cached, 'Normal', 'TokenIssued', `agent token written to Secret ${plan.secret.metadata.name} (${plan.minted})`);
    }
    result = { requeueAfterMs: Math.max(1000, plan.rotateAtMs - nowMs) };
  } else {
    for (const s of tokenSecrets) await ctx.client.delete(Resources.secret, namespace, s.metadata.name ?? '');
  }

  // Connected: what the gateway replicas report through their status ConfigMaps.
  const presence = presenceOf(key, ctx.caches.gatewayStatus.list() as unknown as GatewayStatusConfigMap[], nowMs);
  conditions = setCondition(
    conditions,
    presence.instances > 0
      ? { type: AgentConditionType.Connected, status: 'True', reason: 'Attached', message: `${presence.instances} instance(s) attached to a gateway`, observedGeneration: generation }
      : { type: AgentConditionType.Connected, status: 'False', reason: 'NotAttached', message: 'no instance is attached to a gateway', observedGeneration: generation },
    nowIso,
  );
  if (presence.expiresAtMs !== undefined) {
    // A replica that stops renewing must stop counting: look again when its report runs out.
    const due = presence.expiresAtMs - nowMs + 100;
    result = { requeueAfterMs: Math.min(result.requeueAfterMs ?? due, due) };
  }

  // Ready: in the gateway config (no compile problem) and outputs in place.
  const problem = ctx.problems.get(problemKey(AGENT_KIND, namespace, name));
  if (problem) void ctx.events.record(cached, 'Warning', problem.reason, problem.message);
  if (certificateProblem) void ctx.events.record(cached, 'Warning', certificateProblem.reason, certificateProblem.message);
  conditions = setCondition(
    conditions,
    problem
      ? { type: AgentConditionType.Ready, status: 'False', reason: problem.reason, message: problem.message, observedGeneration: generation }
      : { type: AgentConditionType.Ready, status: 'True', reason: 'Configured', message: 'the agent is in the gateway configuration', observedGeneration: generation },
    nowIso,
  );
  const status: NarrowlinkAgentStatus = {
    ...agent.status,
    conditions,
    observedGeneration: generation,
    connectedInstances: presence.instances,
    ...(plan.secret ? { tokenSecretName: plan.secret.metadata.name } : {}),
    ...(presence.nat ? { natType: presence.nat } : {}),
    directPaths: presence.directPaths ?? 0,
  };
  if (!plan.secret) delete status.tokenSecretName;
  // Key order differs from what the apiserver returns (it sorts keys): compare structurally, not as text.
  if (!isDeepStrictEqual(status, agent.status ?? {})) {
    await ctx.client.apply(
      Resources.narrowlinkAgent,
      { apiVersion: 'narrowlink.io/v1alpha1', kind: AGENT_KIND, metadata: { name, namespace }, status } as KubeObject,
      { fieldManager: STATUS_FIELD_MANAGER, force: true, subresource: 'status' },
    );
  }
  return result;
}
