import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { desiredInjectedAgent, type InjectedPod } from './desired.ts';

function pod(name: string, expose: string, options: { sa?: string; created?: string; deleting?: boolean } = {}): InjectedPod {
  return {
    metadata: {
      name,
      namespace: 'shop',
      labels: { 'narrowlink.io/agent': 'web' },
      annotations: { 'narrowlink.io/inject': 'true', 'narrowlink.io/expose': expose },
      creationTimestamp: options.created ?? '2026-11-25T10:00:00Z',
      ...(options.deleting ? { deletionTimestamp: '2026-11-25T11:00:00Z' } : {}),
    },
    spec: options.sa === undefined ? {} : { serviceAccountName: options.sa },
  };
}

const owner = { apiVersion: 'apps/v1', kind: 'Deployment', name: 'web', uid: 'u-1' };

describe('desiredInjectedAgent', () => {
  test('one agent for all replicas, exposing the annotation ports, listing their ServiceAccounts', () => {
    const out = desiredInjectedAgent('shop', 'web', [pod('web-a', 'http=8080,metrics=9090', { sa: 'web-sa' }), pod('web-b', 'http=8080,metrics=9090', { sa: 'web-sa' })], owner);
    assert.deepEqual(out.problems, []);
    assert.deepEqual(out.agent?.spec, {
      expose: [
        { name: 'http', port: 8080 },
        { name: 'metrics', port: 9090 },
      ],
      serviceAccounts: ['web-sa'],
    });
    assert.equal(out.agent?.metadata.name, 'web');
    assert.equal(out.agent?.metadata.labels['app.kubernetes.io/managed-by'], 'narrowlink-operator');
    assert.deepEqual(out.agent?.metadata.ownerReferences, [{ ...owner, controller: false, blockOwnerDeletion: false }]);
  });

  test('a pod without serviceAccountName runs as "default"; several accounts are listed sorted and once', () => {
    const out = desiredInjectedAgent('shop', 'web', [pod('a', 'http=80', { sa: 'zeta' }), pod('b', 'http=80'), pod('c', 'http=80', { sa: 'zeta' })]);
    assert.deepEqual(out.agent?.spec.serviceAccounts, ['default', 'zeta']);
    assert.equal(out.agent?.metadata.ownerReferences, undefined, 'a bare pod has no workload owner');
  });

  test('during a rollout the newest pod template decides what is exposed', () => {
    const out = desiredInjectedAgent('shop', 'web', [
      pod('old', 'http=8080', { created: '2026-11-25T09:00:00Z' }),
      pod('new', 'http=8081', { created: '2026-11-25T12:00:00Z' }),
    ]);
    assert.deepEqual(out.agent?.spec.expose, [{ name: 'http', port: 8081 }]);
  });

  test('pods being deleted do not count; with none left there is nothing to apply', () => {
    const out = desiredInjectedAgent('shop', 'web', [pod('gone', 'http=80', { deleting: true })]);
    assert.equal(out.agent, undefined);
    assert.deepEqual(out.problems, []);
  });

  test('invalid annotations are reported per pod and do not stop a valid sibling', () => {
    const out = desiredInjectedAgent('shop', 'web', [pod('bad', 'http=99999', { created: '2026-11-25T12:00:00Z' }), pod('good', 'http=80')]);
    assert.equal(out.problems.length, 1);
    assert.match(out.problems[0] as string, /^pod bad: /);
    assert.deepEqual(out.agent?.spec.expose, [{ name: 'http', port: 80 }]);
  });
});
