/**
 * Which agent owns each published domain, pure. Domains are global (one DNS name routes to one agent), so two
 * agents publishing the same domain conflict: the first claim wins (oldest `creationTimestamp`, then
 * namespace/name), like Ingress controllers resolve duplicate hosts. Claims do not depend on the rest of the
 * agent being valid, so an owner that is briefly invalid does not hand its domain to someone else.
 */
import type { NarrowlinkAgent } from '../crds/narrowlink-agent.ts';
import { isDeleting } from '../objects.ts';

/** Namespace and name of the agent that owns a domain. */
export interface DomainOwner {
  namespace: string;
  name: string;
}

function claimOrder(a: NarrowlinkAgent, b: NarrowlinkAgent): number {
  const ta = Date.parse(a.metadata.creationTimestamp ?? '');
  const tb = Date.parse(b.metadata.creationTimestamp ?? '');
  // Missing or unparseable timestamps sort last: an object without one was not read from the API.
  const ka = Number.isNaN(ta) ? Number.POSITIVE_INFINITY : ta;
  const kb = Number.isNaN(tb) ? Number.POSITIVE_INFINITY : tb;
  if (ka !== kb) return ka < kb ? -1 : 1;
  const na = `${a.metadata.namespace ?? ''}/${a.metadata.name ?? ''}`;
  const nb = `${b.metadata.namespace ?? ''}/${b.metadata.name ?? ''}`;
  return na < nb ? -1 : na > nb ? 1 : 0;
}

/** Owner of every domain published by an agent that is not being deleted. */
export function domainOwners(agents: readonly NarrowlinkAgent[]): Map<string, DomainOwner> {
  const owners = new Map<string, DomainOwner>();
  const live = agents.filter((a) => !isDeleting(a)).sort(claimOrder);
  for (const agent of live) {
    for (const p of agent.spec.publish ?? []) {
      if (owners.has(p.domain)) continue;
      owners.set(p.domain, { namespace: agent.metadata.namespace ?? '', name: agent.metadata.name ?? '' });
    }
  }
  return owners;
}
