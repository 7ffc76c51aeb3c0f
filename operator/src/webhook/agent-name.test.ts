import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { agentNameForPod, controllerOf, type PodNameSource, toDnsLabel, workloadName } from './agent-name.ts';

const owner = (kind: string, name: string, controller = true) => ({ apiVersion: 'apps/v1', kind, name, uid: 'u', controller });
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

describe('agentNameForPod', () => {
  const cases: Array<{ name: string; meta: PodNameSource; expect: string }> = [
    {
      name: 'Deployment pod: ReplicaSet NAME-HASH with pod-template-hash → Deployment name',
      meta: { generateName: 'web-7d9f8c6b5d-', labels: { 'pod-template-hash': '7d9f8c6b5d' }, ownerReferences: [owner('ReplicaSet', 'web-7d9f8c6b5d')] },
      expect: 'web',
    },
    {
      name: 'Deployment name with dashes',
      meta: { name: 'shop-api-v2-5b4c-x1', labels: { 'pod-template-hash': '5b4c' }, ownerReferences: [owner('ReplicaSet', 'shop-api-v2-5b4c')] },
      expect: 'shop-api-v2',
    },
    {
      name: 'bare ReplicaSet (no pod-template-hash label) → ReplicaSet name',
      meta: { generateName: 'rs-', ownerReferences: [owner('ReplicaSet', 'my-rs')] },
      expect: 'my-rs',
    },
    {
      name: 'ReplicaSet whose name does not end with the hash → ReplicaSet name',
      meta: { labels: { 'pod-template-hash': 'abc' }, ownerReferences: [owner('ReplicaSet', 'other-xyz')] },
      expect: 'other-xyz',
    },
    {
      name: 'ReplicaSet named exactly "-HASH" is not cut to nothing',
      meta: { labels: { 'pod-template-hash': 'abc' }, ownerReferences: [owner('ReplicaSet', '-abc')] },
      expect: 'abc',
    },
    { name: 'StatefulSet → its name', meta: { name: 'db-0', ownerReferences: [owner('StatefulSet', 'db')] }, expect: 'db' },
    { name: 'DaemonSet → its name', meta: { generateName: 'node-agent-', ownerReferences: [owner('DaemonSet', 'node-agent')] }, expect: 'node-agent' },
    { name: 'Job → its name', meta: { generateName: 'migrate-', ownerReferences: [owner('Job', 'migrate')] }, expect: 'migrate' },
    { name: 'ReplicationController → its name', meta: { generateName: 'rc-', ownerReferences: [owner('ReplicationController', 'legacy')] }, expect: 'legacy' },
    { name: 'non-controller owner is ignored', meta: { name: 'solo', ownerReferences: [owner('StatefulSet', 'db', false)] }, expect: 'solo' },
    { name: 'mirror pod owned by a Node → pod name', meta: { name: 'etcd-node1', ownerReferences: [owner('Node', 'node1')] }, expect: 'etcd-node1' },
    { name: 'unknown controller kind → pod name', meta: { name: 'p', ownerReferences: [owner('Rollout', 'r')] }, expect: 'p' },
    { name: 'plain pod → its name', meta: { name: 'debug' }, expect: 'debug' },
    { name: 'generateName pod → prefix without trailing "-"', meta: { generateName: 'worker-' }, expect: 'worker' },
    { name: 'generateName without a dash', meta: { generateName: 'worker' }, expect: 'worker' },
    { name: 'dots of a subdomain name become "-"', meta: { name: 'api.v1' }, expect: 'api-v1' },
    { name: 'StatefulSet with dots', meta: { ownerReferences: [owner('StatefulSet', 'cache.redis')] }, expect: 'cache-redis' },
    { name: 'no name at all → "pod"', meta: {}, expect: 'pod' },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const name = agentNameForPod(c.meta);
      assert.equal(name, c.expect);
      assert.match(name, DNS_LABEL);
    });
  }

  it('long names are cut to 63 with a hash of the whole name; distinct long names stay distinct', () => {
    const a = agentNameForPod({ name: `${'a'.repeat(70)}-one` });
    const b = agentNameForPod({ name: `${'a'.repeat(70)}-two` });
    assert.equal(a.length, 63);
    assert.match(a, DNS_LABEL);
    assert.match(a, /^a{54}-[0-9a-f]{8}$/);
    assert.notEqual(a, b);
    assert.equal(agentNameForPod({ name: `${'a'.repeat(70)}-one` }), a, 'stable');
  });

  it('exactly 63 characters is kept as is', () => {
    const name = `x${'-y'.repeat(31)}`;
    assert.equal(name.length, 63);
    assert.equal(agentNameForPod({ name }), name);
  });
});

describe('helpers', () => {
  it('controllerOf picks the controller owner', () => {
    assert.deepEqual(controllerOf({ ownerReferences: [owner('ConfigMap', 'x', false), owner('Job', 'j')] }), { kind: 'Job', name: 'j' });
    assert.equal(controllerOf({}), undefined);
  });
  it('workloadName is the raw derivation', () => {
    assert.equal(workloadName({ generateName: 'a.b-' }), 'a.b');
  });
  it('toDnsLabel strips leading and trailing dashes and falls back', () => {
    assert.equal(toDnsLabel('--A_b--'), 'a-b');
    assert.equal(toDnsLabel('___'), 'agent');
  });
});
