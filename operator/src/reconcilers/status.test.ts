import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type KubeClient, type KubeObject, Resources } from '@narrowlink/kube';
import { STATUS_FIELD_MANAGER } from '../labels.ts';
import { applyStatusIfChanged } from './status.ts';

/** A client that records applies and refuses everything else. */
function recordingClient(): { client: KubeClient; applies: Array<{ object: KubeObject; options: object }> } {
  const applies: Array<{ object: KubeObject; options: object }> = [];
  const client = new Proxy({} as KubeClient, {
    get: (_target, method) => {
      if (method === 'apply') {
        return async (_type: unknown, object: KubeObject, options: object) => {
          applies.push({ object, options });
          return object;
        };
      }
      return () => Promise.reject(new Error(`unexpected ${String(method)}`));
    },
  });
  return { client, applies };
}

describe('applyStatusIfChanged', () => {
  const where = { namespace: 'shop', name: 'orders' };

  it('writes a changed status through the status subresource under the status field manager', async () => {
    const { client, applies } = recordingClient();
    const wrote = await applyStatusIfChanged(client, Resources.narrowlinkAgent, where, { connectedInstances: 0 }, { connectedInstances: 1 });
    assert.equal(wrote, true);
    assert.deepEqual(applies, [
      {
        object: { apiVersion: 'narrowlink.io/v1alpha1', kind: 'NarrowlinkAgent', metadata: { name: 'orders', namespace: 'shop' }, status: { connectedInstances: 1 } },
        options: { fieldManager: STATUS_FIELD_MANAGER, force: true, subresource: 'status' },
      },
    ]);
  });

  it('skips an equal status whatever its key order, and compares an absent one as {}', async () => {
    const { client, applies } = recordingClient();
    assert.equal(await applyStatusIfChanged(client, Resources.accessPolicy, where, { observedGeneration: 2, conditions: [] }, { conditions: [], observedGeneration: 2 }), false);
    assert.equal(await applyStatusIfChanged(client, Resources.accessPolicy, where, undefined, {}), false);
    assert.equal(applies.length, 0);
    assert.equal(await applyStatusIfChanged(client, Resources.accessPolicy, where, undefined, { observedGeneration: 1 }), true);
    assert.equal(applies[0]?.object.kind, 'AccessPolicy');
  });
});
