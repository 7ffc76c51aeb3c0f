/**
 * A NarrowlinkAgent's status, pure: its three conditions (CertificatesReady, Connected, Ready), the counters
 * the gateways report, the Events worth recording and when to look again, from what gather and the
 * Certificate/token steps found. No client, no clock: `nowMs` comes in.
 */
import type { Condition } from '../../crds/common.ts';
import { AgentConditionType, type NarrowlinkAgent, type NarrowlinkAgentStatus } from '../../crds/narrowlink-agent.ts';
import type { DesiredEvent } from '../../events.ts';
import type { Certificate } from '../../objects.ts';
import type { AgentTokenPlan } from '../agent-token/desired.ts';
import type { DesiredCertificates } from '../certificates/desired.ts';
import { setCondition } from '../conditions.ts';
import type { Problem } from '../gateway-config/desired.ts';
import type { AgentPresence } from './presence.ts';

/**
 * Reasons of the agent's conditions besides the compile problems ({@link Problem}'s reasons, on Ready) and the
 * skipped domains (`CertificateSkipReason`, on CertificatesReady). CamelCase, visible on the CR.
 */
export const AgentConditionReason = {
  /** CertificatesReady=False: some Certificate is not Ready yet. */
  Issuing: 'Issuing',
  /** CertificatesReady=True: every Certificate is Ready. */
  Issued: 'Issued',
  /** CertificatesReady=True: the agent publishes no Terminate domain. */
  NothingToIssue: 'NothingToIssue',
  /** CertificatesReady=False: the certificates.cert-manager.io API does not exist. */
  CertManagerMissing: 'CertManagerMissing',
  /** Connected=True: a live gateway report counts an instance. */
  Attached: 'Attached',
  /** Connected=False. */
  NotAttached: 'NotAttached',
  /** Ready=True: the agent is in the gateway configuration. */
  Configured: 'Configured',
} as const;
export type AgentConditionReason = (typeof AgentConditionReason)[keyof typeof AgentConditionReason];

/** Reasons of the Normal Events the agent reconciler records. */
export const AgentEventReason = {
  /** A new agent token was written to the token Secret. */
  TokenIssued: 'TokenIssued',
} as const;
export type AgentEventReason = (typeof AgentEventReason)[keyof typeof AgentEventReason];

/** How applying the desired Certificates went. */
export type CertificateApplyResult = 'applied' | 'certManagerMissing';

/** What {@link desiredAgentStatus} decides from. */
export interface AgentStatusInput {
  agent: NarrowlinkAgent;
  /** The Certificates the agent should have and the domains it cannot have one for. */
  certificates: DesiredCertificates;
  /** The agent's Certificates in the cache (their Ready condition counts). */
  observedCertificates: readonly Certificate[];
  certificateResult: CertificateApplyResult;
  /** The token Secret plan; `minted` means a new token was written. */
  tokenPlan: AgentTokenPlan;
  /** What the live gateway reports say. */
  presence: AgentPresence;
  /** The problem the last gateway-config compile found with this agent, if any. */
  problem?: Pick<Problem, 'reason' | 'message'> | undefined;
  nowMs: number;
}

/** The agent's status, the Events to record, and when to look again. */
export interface DesiredAgentStatus {
  conditions: Condition[];
  status: NarrowlinkAgentStatus;
  events: DesiredEvent[];
  /** Reconcile again after this many ms: token rotation, or a gateway report running out. */
  requeueAfterMs?: number;
}

/** Milliseconds between two looks at a token Secret, at least: a clock step must not cause a busy loop. */
const MIN_TOKEN_REQUEUE_MS = 1000;
/** Slack after a gateway report expires before looking again, so the report has expired by then. */
const PRESENCE_EXPIRY_SLACK_MS = 100;

const CERT_MANAGER_MISSING_MESSAGE = 'cert-manager is not installed (no certificates.cert-manager.io API); install it to publish domains';

export function desiredAgentStatus(input: AgentStatusInput): DesiredAgentStatus {
  const { agent, certificates, tokenPlan, presence, problem, nowMs } = input;
  const nowIso = new Date(nowMs).toISOString();
  const generation = agent.metadata.generation ?? 0;
  const events: DesiredEvent[] = [];
  let conditions: Condition[] = agent.status?.conditions ?? [];
  let requeueAfterMs: number | undefined;

  // CertificatesReady: one Certificate per published Terminate domain, each Ready.
  let certificateProblem: { reason: string; message: string } | undefined;
  if (certificates.skipped.length > 0) {
    const first = certificates.skipped[0] as { reason: string; message: string };
    certificateProblem = { reason: first.reason, message: certificates.skipped.map((s) => s.message).join('; ') };
  }
  if (input.certificateResult === 'certManagerMissing') {
    certificateProblem = { reason: AgentConditionReason.CertManagerMissing, message: CERT_MANAGER_MISSING_MESSAGE };
  }
  const notReady = certificates.certificates.filter((c) => {
    const observed = input.observedCertificates.find((o) => o.metadata.name === c.metadata.name);
    return !observed?.status?.conditions?.some((cond) => cond.type === 'Ready' && cond.status === 'True');
  });
  conditions = setCondition(
    conditions,
    certificateProblem
      ? { type: AgentConditionType.CertificatesReady, status: 'False', reason: certificateProblem.reason, message: certificateProblem.message, observedGeneration: generation }
      : notReady.length > 0
        ? { type: AgentConditionType.CertificatesReady, status: 'False', reason: AgentConditionReason.Issuing, message: `waiting for ${notReady.map((c) => c.metadata.name).join(', ')}`, observedGeneration: generation }
        : {
            type: AgentConditionType.CertificatesReady,
            status: 'True',
            reason: certificates.certificates.length > 0 ? AgentConditionReason.Issued : AgentConditionReason.NothingToIssue,
            message: `${certificates.certificates.length} certificate(s) ready`,
            observedGeneration: generation,
          },
    nowIso,
  );

  // Token Secret for agents outside the cluster: look again when it is due for rotation.
  if (tokenPlan.secret) {
    if (tokenPlan.minted) {
      events.push({ type: 'Normal', reason: AgentEventReason.TokenIssued, message: `agent token written to Secret ${tokenPlan.secret.metadata.name} (${tokenPlan.minted})` });
    }
    requeueAfterMs = Math.max(MIN_TOKEN_REQUEUE_MS, tokenPlan.rotateAtMs - nowMs);
  }

  // Connected: what the gateway replicas report through their status ConfigMaps.
  conditions = setCondition(
    conditions,
    presence.instances > 0
      ? { type: AgentConditionType.Connected, status: 'True', reason: AgentConditionReason.Attached, message: `${presence.instances} instance(s) attached to a gateway`, observedGeneration: generation }
      : { type: AgentConditionType.Connected, status: 'False', reason: AgentConditionReason.NotAttached, message: 'no instance is attached to a gateway', observedGeneration: generation },
    nowIso,
  );
  if (presence.expiresAtMs !== undefined) {
    // A replica that stops renewing must stop counting: look again when its report runs out.
    const due = presence.expiresAtMs - nowMs + PRESENCE_EXPIRY_SLACK_MS;
    requeueAfterMs = Math.min(requeueAfterMs ?? due, due);
  }

  // Ready: in the gateway config (no compile problem) and outputs in place.
  if (problem) events.push({ type: 'Warning', reason: problem.reason, message: problem.message });
  if (certificateProblem) events.push({ type: 'Warning', reason: certificateProblem.reason, message: certificateProblem.message });
  conditions = setCondition(
    conditions,
    problem
      ? { type: AgentConditionType.Ready, status: 'False', reason: problem.reason, message: problem.message, observedGeneration: generation }
      : { type: AgentConditionType.Ready, status: 'True', reason: AgentConditionReason.Configured, message: 'the agent is in the gateway configuration', observedGeneration: generation },
    nowIso,
  );

  const status: NarrowlinkAgentStatus = {
    ...agent.status,
    conditions,
    observedGeneration: generation,
    connectedInstances: presence.instances,
    ...(tokenPlan.secret ? { tokenSecretName: tokenPlan.secret.metadata.name } : {}),
    ...(presence.nat ? { natType: presence.nat } : {}),
    directPaths: presence.directPaths ?? 0,
  };
  if (!tokenPlan.secret) delete status.tokenSecretName;
  return { conditions, status, events, ...(requeueAfterMs !== undefined ? { requeueAfterMs } : {}) };
}
