/**
 * cert-manager Certificates of a NarrowlinkAgent, pure: one per `spec.publish[]` entry the gateway terminates
 * TLS for.
 *
 * Decisions:
 * - Only `tls: Terminate` domains get a Certificate; with `Passthrough` the service presents its own
 *   certificate and one issued here would never be used (and would cost an ACME order).
 * - Names are `<agent>-<domain with dots as dashes>` cut to 63 characters plus a hash of (agent, domain)
 *   **always**, not only when cut: flattening dots to dashes is not injective (agent `web` + `a-b.example.com`
 *   and agent `web-a` + `b.example.com` flatten alike), and two agents must never share a Certificate.
 * - The Secret is `<certificate>-tls`; cert-manager gives it no owner reference, so `secretTemplate` stamps the
 *   owner labels on it and the finalizer deletes it by label.
 * - A domain owned by another agent (see `domainOwners`) gets no Certificate: its issuance would race.
 */
import { AGENT_KIND, type AgentIssuerRef, DEFAULT_ISSUER_GROUP, DEFAULT_ISSUER_KIND, DEFAULT_PUBLISH_TLS, type NarrowlinkAgent } from '../../crds/narrowlink-agent.ts';
import { Component, hasOwnerLabels, ownerLabels } from '../../labels.ts';
import { hashedName } from '../../names.ts';
import { type Certificate, controllerReference, type IssuerRef, isDeleting, type Secret } from '../../objects.ts';
import type { DomainOwner } from '../domains.ts';

/** Longest Certificate name: cert-manager copies it into label values (max 63). */
export const CERTIFICATE_NAME_MAX = 63;
/** Suffix of the TLS Secret name. */
export const TLS_SECRET_SUFFIX = '-tls';

/** Why a published domain has no Certificate. CamelCase: condition and Event reason. */
export const CertificateSkipReason = {
  /** Neither spec.issuerRef nor a chart default issuer is set. */
  NoIssuer: 'NoIssuer',
  /** An older agent publishes the same domain. */
  DomainConflict: 'DomainConflict',
} as const;
export type CertificateSkipReason = (typeof CertificateSkipReason)[keyof typeof CertificateSkipReason];

/** Inputs of {@link desiredCertificates}. */
export interface CertificatesInput {
  agent: NarrowlinkAgent;
  /** The chart's default issuer (normally a ClusterIssuer), used when the agent sets no `spec.issuerRef`. */
  defaultIssuerRef?: IssuerRef;
  /** Owners of every published domain in the cluster (`domainOwners(allAgents)`); absent: no conflict check. */
  domainOwners?: ReadonlyMap<string, DomainOwner>;
}

/** Output of {@link desiredCertificates}. */
export interface DesiredCertificates {
  /** Sorted by name. */
  certificates: Certificate[];
  /** Terminate domains without a Certificate, in spec order. */
  skipped: Array<{ domain: string; reason: CertificateSkipReason; message: string }>;
}

/** The Certificate name for (agent, domain): DNS-1123, at most 63 characters, deterministic. */
export function certificateName(agentName: string, domain: string): string {
  return hashedName(`${agentName}-${domain.replaceAll('.', '-')}`, CERTIFICATE_NAME_MAX, `${agentName}\n${domain}`);
}

function issuerOf(ref: AgentIssuerRef | undefined, fallback: IssuerRef | undefined): IssuerRef | undefined {
  if (ref !== undefined) {
    return { name: ref.name, kind: ref.kind ?? DEFAULT_ISSUER_KIND, group: ref.group ?? DEFAULT_ISSUER_GROUP };
  }
  return fallback === undefined ? undefined : { ...fallback };
}

/** The Certificates an agent should have right now; none while it is being deleted (the finalizer cleans up). */
export function desiredCertificates(input: CertificatesInput): DesiredCertificates {
  const { agent } = input;
  const out: DesiredCertificates = { certificates: [], skipped: [] };
  if (isDeleting(agent)) return out;
  const namespace = agent.metadata.namespace ?? '';
  const name = agent.metadata.name ?? '';
  const issuerRef = issuerOf(agent.spec.issuerRef, input.defaultIssuerRef);
  const labels = ownerLabels({ kind: AGENT_KIND, namespace, name }, Component.Certificate);

  for (const p of agent.spec.publish ?? []) {
    if ((p.tls ?? DEFAULT_PUBLISH_TLS) !== 'Terminate') continue;
    const owner = input.domainOwners?.get(p.domain);
    if (owner !== undefined && (owner.namespace !== namespace || owner.name !== name)) {
      out.skipped.push({
        domain: p.domain,
        reason: CertificateSkipReason.DomainConflict,
        message: `domain "${p.domain}" is already published by NarrowlinkAgent ${owner.namespace}/${owner.name}`,
      });
      continue;
    }
    if (issuerRef === undefined) {
      out.skipped.push({
        domain: p.domain,
        reason: CertificateSkipReason.NoIssuer,
        message: `no issuer for "${p.domain}": set spec.issuerRef or the chart's default issuer`,
      });
      continue;
    }
    const certName = certificateName(name, p.domain);
    out.certificates.push({
      apiVersion: 'cert-manager.io/v1',
      kind: 'Certificate',
      metadata: { name: certName, namespace, labels: { ...labels }, ownerReferences: [controllerReference(agent)] },
      spec: {
        secretName: `${certName}${TLS_SECRET_SUFFIX}`,
        dnsNames: [p.domain],
        issuerRef: { ...issuerRef },
        // A new key on every renewal (cert-manager before 1.18 defaults to reusing the key forever).
        privateKey: { rotationPolicy: 'Always' },
        secretTemplate: { labels: { ...labels } },
      },
    });
  }
  out.certificates.sort((a, b) => ((a.metadata.name ?? '') < (b.metadata.name ?? '') ? -1 : 1));
  return out;
}

/** A Certificate to remove, and the Secret cert-manager made for it (which nothing else deletes). */
export interface CertificateDeletion {
  namespace: string;
  name: string;
  secretName?: string;
}

function byNamespaceName(a: { namespace: string; name: string }, b: { namespace: string; name: string }): number {
  if (a.namespace !== b.namespace) return a.namespace < b.namespace ? -1 : 1;
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/**
 * Observed Certificates of `owner` that are not desired any more. Only objects carrying the owner labels of
 * `owner` are candidates, so neither a user's own Certificate nor another agent's is ever deleted, whatever
 * the caller listed. For an agent being deleted, pass `desired = []`: everything it owns goes.
 */
export function certificatesToDelete(
  observed: readonly Certificate[],
  desired: readonly Certificate[],
  owner: { namespace: string; name: string },
): CertificateDeletion[] {
  const identity = { kind: AGENT_KIND, namespace: owner.namespace, name: owner.name };
  const wanted = new Set(desired.map((c) => c.metadata.name ?? ''));
  const out: CertificateDeletion[] = [];
  for (const cert of observed) {
    if (cert.metadata.namespace !== owner.namespace) continue;
    if (!hasOwnerLabels(cert.metadata.labels, identity, Component.Certificate)) continue;
    const name = cert.metadata.name ?? '';
    if (wanted.has(name)) continue;
    const deletion: CertificateDeletion = { namespace: owner.namespace, name };
    if (cert.spec?.secretName !== undefined) deletion.secretName = cert.spec.secretName;
    out.push(deletion);
  }
  return out.sort(byNamespaceName);
}

/**
 * Observed TLS Secrets of `owner` (labelled through `secretTemplate`) that no desired Certificate names:
 * cert-manager leaves them behind when their Certificate goes, and a crash between the two deletes must not
 * leak them either.
 */
export function tlsSecretsToDelete(
  observed: readonly Secret[],
  desired: readonly Certificate[],
  owner: { namespace: string; name: string },
): Array<{ namespace: string; name: string }> {
  const identity = { kind: AGENT_KIND, namespace: owner.namespace, name: owner.name };
  const wanted = new Set(desired.map((c) => c.spec.secretName));
  const out: Array<{ namespace: string; name: string }> = [];
  for (const secret of observed) {
    if (secret.metadata.namespace !== owner.namespace) continue;
    if (!hasOwnerLabels(secret.metadata.labels, identity, Component.Certificate)) continue;
    const name = secret.metadata.name ?? '';
    if (!wanted.has(name)) out.push({ namespace: owner.namespace, name });
  }
  return out.sort(byNamespaceName);
}
