/** Builders of custom resources as the API returns them, for the reconciler unit tests. */
import type { AccessPolicy, AccessPolicySpec } from '../crds/access-policy.ts';
import type { ObjectMeta } from '../crds/common.ts';
import type { NarrowlinkAgent, NarrowlinkAgentSpec } from '../crds/narrowlink-agent.ts';

let uidCounter = 0;

function meta(name: string, namespace: string, extra: Partial<ObjectMeta>): ObjectMeta {
  uidCounter += 1;
  return {
    name,
    namespace,
    uid: `00000000-0000-4000-8000-${String(uidCounter).padStart(12, '0')}`,
    generation: 1,
    creationTimestamp: '2025-01-01T00:00:00Z',
    ...extra,
  };
}

/** A NarrowlinkAgent; `spec` defaults to one exposed port `http=8080`. */
export function makeAgent(
  name: string,
  spec: Partial<NarrowlinkAgentSpec> = {},
  opts: { namespace?: string } & Partial<ObjectMeta> = {},
): NarrowlinkAgent {
  const { namespace = 'default', ...extra } = opts;
  return {
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'NarrowlinkAgent',
    metadata: meta(name, namespace, extra),
    spec: { expose: [{ name: 'http', port: 8080 }], ...spec },
  };
}

/** An AccessPolicy; `spec` defaults to group `devs` allowed everywhere. */
export function makePolicy(
  name: string,
  spec: Partial<AccessPolicySpec> = {},
  opts: { namespace?: string } & Partial<ObjectMeta> = {},
): AccessPolicy {
  const { namespace = 'default', ...extra } = opts;
  return {
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'AccessPolicy',
    metadata: meta(name, namespace, extra),
    spec: { subjects: [{ kind: 'Group', name: 'devs' }], rules: [{ action: 'Allow' }], ...spec },
  };
}
