import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { applyJsonPatch, escapePointerToken, type JsonPatchOp, pointer } from './json-patch.ts';
import { LABEL_AGENT } from '../labels.ts';
import {
  type SidecarSettings,
  SIDECAR_CONTAINER,
  sidecarPatch,
  sidecarSettingsProblems,
  TOKEN_FILE,
  TOKEN_VOLUME,
} from './patch.ts';
import { INJECT_ANNOTATIONS, TEST_SETTINGS } from './test-fixtures.ts';

const SETTINGS = TEST_SETTINGS;

interface Container {
  name: string;
  image?: string;
  command?: string[];
  args?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>;
  resources?: Record<string, Record<string, string>>;
  securityContext?: Record<string, unknown>;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
}
interface Pod {
  apiVersion: string;
  kind: string;
  metadata: {
    name?: string;
    generateName?: string;
    namespace?: string;
    annotations?: Record<string, string>;
    labels?: Record<string, string>;
    ownerReferences?: Array<Record<string, unknown>>;
  };
  spec: { containers: Container[]; initContainers?: Container[]; volumes?: Array<Record<string, unknown>> };
}

function pod(annotations: Record<string, string> | undefined, extra: Partial<Pod['metadata']> = {}, spec: Partial<Pod['spec']> = {}): Pod {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'web-1', namespace: 'shop', ...(annotations ? { annotations } : {}), ...extra },
    spec: { containers: [{ name: 'app', image: 'nginx' }], ...spec },
  };
}
const INJECT = { ...INJECT_ANNOTATIONS };

function injectOnce(p: Pod, settings = SETTINGS): { patched: Pod; patch: JsonPatchOp[]; warnings: string[] } {
  const result = sidecarPatch(p, settings);
  assert.equal(result.outcome, 'injected', JSON.stringify(result));
  return { patched: applyJsonPatch(p, result.patch), patch: result.patch, warnings: result.warnings };
}

function sidecarOf(p: Pod): Container {
  const found = p.spec.containers.filter((c) => c.name === SIDECAR_CONTAINER);
  assert.equal(found.length, 1, 'exactly one sidecar');
  return found[0] as Container;
}

function envOf(c: Container): Record<string, string> {
  return Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value ?? `fieldRef:${e.valueFrom?.fieldRef?.fieldPath}`]));
}

describe('sidecarPatch: shape', () => {
  it('a pod without labels or volumes gets the whole map and array created (exact patch)', () => {
    const p = pod(INJECT);
    const result = sidecarPatch(p, SETTINGS);
    assert.equal(result.outcome, 'injected');
    assert.equal(result.agentName, 'web-1');
    const paths = result.patch.map((o) => `${o.op} ${o.path}`);
    assert.deepEqual(paths, [
      'add /metadata/annotations/narrowlink.io~1injected',
      'add /metadata/labels',
      'add /spec/serviceAccountName',
      'add /spec/volumes',
      'add /spec/containers/-',
    ]);
    assert.deepEqual(result.patch[0]?.value, 'true');
    assert.deepEqual(result.patch[1]?.value, { [LABEL_AGENT]: 'web-1' });
    assert.equal(result.patch[2]?.value, 'default', 'a token projection needs a ServiceAccount name');
    assert.deepEqual(result.patch[3]?.value, [
      {
        name: TOKEN_VOLUME,
        projected: { sources: [{ serviceAccountToken: { audience: 'narrowlink', expirationSeconds: 600, path: 'token' } }] },
      },
    ]);
  });

  it('the sidecar container: command, env, security, resources, read-only token mount', () => {
    const { patched } = injectOnce(pod(INJECT));
    const c = sidecarOf(patched);
    assert.equal(c.image, SETTINGS.image);
    assert.deepEqual(c.command, ['node', '--max-semi-space-size=1', 'dist/server/agent.mjs']);
    assert.deepEqual(c.args, ['--instance-id', '$(POD_NAME)']);
    assert.deepEqual(envOf(c), {
      POD_NAME: 'fieldRef:metadata.name',
      NARROWLINK_AGENT_NAMESPACE: 'fieldRef:metadata.namespace',
      NARROWLINK_AGENT_NAME: 'web-1',
      NARROWLINK_GATEWAY: SETTINGS.gatewayUrl,
      NARROWLINK_AGENT_TOKEN_FILE: TOKEN_FILE,
      NARROWLINK_EXPOSE: 'http=8080,metrics=9090',
      MALLOC_ARENA_MAX: '2',
    });
    assert.equal(TOKEN_FILE, '/var/run/secrets/narrowlink/token');
    assert.equal(c.env?.[0]?.name, 'POD_NAME', 'POD_NAME defined before anything may refer to it');
    assert.deepEqual(c.resources, { requests: { cpu: '10m', memory: '32Mi' }, limits: { memory: '128Mi' } });
    assert.deepEqual(c.volumeMounts, [{ name: TOKEN_VOLUME, mountPath: '/var/run/secrets/narrowlink', readOnly: true }]);
    const sc = c.securityContext as Record<string, unknown>;
    assert.equal(sc.runAsNonRoot, true);
    assert.equal(sc.runAsUser, 65532);
    assert.equal(sc.readOnlyRootFilesystem, true);
    assert.equal(sc.allowPrivilegeEscalation, false);
    assert.equal(sc.privileged, false);
    assert.deepEqual(sc.capabilities, { drop: ['ALL'] }, 'nothing added, NET_ADMIN in particular');
    // The app container is untouched and stays first.
    assert.deepEqual(patched.spec.containers[0], { name: 'app', image: 'nginx' });
  });

  it('labels: added to an existing map, or the whole map when absent', () => {
    const withLabels = injectOnce(pod(INJECT, { labels: { app: 'web' } }));
    assert.deepEqual(withLabels.patched.metadata.labels, { app: 'web', [LABEL_AGENT]: 'web-1' });
    assert.ok(withLabels.patch.some((o) => o.path === '/metadata/labels/narrowlink.io~1agent'));
    const without = injectOnce(pod(INJECT));
    assert.deepEqual(without.patched.metadata.labels, { [LABEL_AGENT]: 'web-1' });
  });

  it("a pod's own ServiceAccount is kept", () => {
    const p = pod(INJECT, {}, { serviceAccountName: 'web-sa' } as Partial<Pod['spec']>);
    const { patched, patch } = injectOnce(p);
    assert.ok(!patch.some((o) => o.path === '/spec/serviceAccountName'));
    assert.equal((patched.spec as { serviceAccountName?: string }).serviceAccountName, 'web-sa');
  });

  it('existing volumes and containers are appended to with "/-"', () => {
    const p = pod(INJECT, {}, { volumes: [{ name: 'data', emptyDir: {} }], containers: [{ name: 'a' }, { name: 'b' }] });
    const { patched, patch } = injectOnce(p);
    assert.ok(patch.some((o) => o.op === 'add' && o.path === '/spec/volumes/-'));
    assert.deepEqual(
      patched.spec.volumes?.map((v) => v.name),
      ['data', TOKEN_VOLUME],
    );
    assert.deepEqual(
      patched.spec.containers.map((c) => c.name),
      ['a', 'b', SIDECAR_CONTAINER],
    );
  });

  it('keys with "/" and "~" are escaped per RFC 6901', () => {
    assert.equal(escapePointerToken('narrowlink.io/injected'), 'narrowlink.io~1injected');
    assert.equal(escapePointerToken('a~b/c'), 'a~0b~1c');
    assert.equal(pointer('metadata', 'labels', 'x/y~z'), '/metadata/labels/x~1y~0z');
    const { patched } = injectOnce(pod({ ...INJECT, 'example.com/a~b': 'kept' }));
    assert.equal(patched.metadata.annotations?.['narrowlink.io/injected'], 'true');
    assert.equal(patched.metadata.annotations?.['example.com/a~b'], 'kept');
  });

  it('generateName pod (no name at admission): agent name from the prefix', () => {
    const p = pod(INJECT, { name: undefined, generateName: 'worker-' });
    delete p.metadata.name;
    const { patched } = injectOnce(p);
    assert.equal(envOf(sidecarOf(patched)).NARROWLINK_AGENT_NAME, 'worker');
    assert.equal(patched.metadata.labels?.[LABEL_AGENT], 'worker');
  });

  it('Deployment pod: one agent per Deployment', () => {
    const p = pod(INJECT, {
      name: undefined,
      generateName: 'shop-6f7d8-',
      labels: { 'pod-template-hash': '6f7d8' },
      ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'shop-6f7d8', uid: 'x', controller: true }],
    });
    delete p.metadata.name;
    assert.equal(sidecarPatch(p, SETTINGS).agentName, 'shop');
  });

  it('annotation overrides: agent name, image, resources', () => {
    const { patched } = injectOnce(
      pod({
        ...INJECT,
        'narrowlink.io/agent-name': 'storefront',
        'narrowlink.io/sidecar-image': 'example.com/custom:1',
        'narrowlink.io/sidecar-cpu-request': '20m',
        'narrowlink.io/sidecar-cpu-limit': '200m',
        'narrowlink.io/sidecar-memory-limit': '256Mi',
      }),
    );
    const c = sidecarOf(patched);
    assert.equal(c.image, 'example.com/custom:1');
    assert.equal(envOf(c).NARROWLINK_AGENT_NAME, 'storefront');
    assert.equal(patched.metadata.labels?.[LABEL_AGENT], 'storefront');
    assert.deepEqual(c.resources, { requests: { cpu: '20m', memory: '32Mi' }, limits: { cpu: '200m', memory: '256Mi' } });
  });

  it('gateway CA from a ConfigMap: projected next to the token (optional: a missing copy never blocks the pod), NARROWLINK_CA_FILE set', () => {
    const { patched } = injectOnce(pod(INJECT), { ...SETTINGS, caConfigMap: 'narrowlink-gateway-ca', imagePullPolicy: 'IfNotPresent' });
    const volume = patched.spec.volumes?.find((v) => v.name === TOKEN_VOLUME) as { projected: { sources: unknown[] } };
    assert.deepEqual(volume.projected.sources[1], { configMap: { name: 'narrowlink-gateway-ca', items: [{ key: 'ca.crt', path: 'ca.crt' }], optional: true } });
    const c = sidecarOf(patched) as Container & { imagePullPolicy?: string };
    assert.equal(envOf(c).NARROWLINK_CA_FILE, '/var/run/secrets/narrowlink/ca.crt');
    assert.equal(c.imagePullPolicy, 'IfNotPresent');
  });

  it('gateway CA from a file in the image', () => {
    const { patched } = injectOnce(pod(INJECT), { ...SETTINGS, caFile: '/etc/ssl/narrowlink/ca.crt' });
    assert.equal(envOf(sidecarOf(patched)).NARROWLINK_CA_FILE, '/etc/ssl/narrowlink/ca.crt');
  });

  it('Job pods get a warning that the Job will not complete', () => {
    const { warnings } = injectOnce(pod(INJECT, { ownerReferences: [{ kind: 'Job', name: 'migrate', controller: true }] }));
    assert.equal(warnings.length, 1);
    assert.match(warnings[0] as string, /Job/);
  });

  it('an empty resources section is omitted', () => {
    const { patched } = injectOnce(pod(INJECT), { ...SETTINGS, resources: {} });
    assert.deepEqual(sidecarOf(patched).resources, {});
  });
});

describe('sidecarPatch: idempotency', () => {
  const shapes: Array<[string, Pod]> = [
    ['minimal pod', pod(INJECT)],
    ['pod with labels and volumes', pod(INJECT, { labels: { a: 'b' } }, { volumes: [{ name: 'v', emptyDir: {} }] })],
  ];
  for (const [name, p] of shapes) {
    it(`${name}: the patched pod patches to nothing (re-invocation)`, () => {
      const once = injectOnce(p).patched;
      const again = sidecarPatch(once, SETTINGS);
      assert.equal(again.outcome, 'already-injected');
      assert.deepEqual(again.patch, []);
      assert.deepEqual(applyJsonPatch(once, again.patch), once);
      sidecarOf(once);
    });
  }

  it('the container alone (annotation removed by someone) is enough to skip', () => {
    const once = injectOnce(pod(INJECT)).patched;
    delete once.metadata.annotations?.['narrowlink.io/injected'];
    assert.equal(sidecarPatch(once, SETTINGS).outcome, 'already-injected');
  });

  it('the annotation alone is enough to skip', () => {
    const result = sidecarPatch(pod({ ...INJECT, 'narrowlink.io/injected': 'true' }), SETTINGS);
    assert.deepEqual([result.outcome, result.patch], ['already-injected', []]);
  });

  it('an already-injected pod with now-invalid annotations is still left alone (no warning storm)', () => {
    const once = injectOnce(pod(INJECT)).patched;
    once.metadata.annotations = { ...once.metadata.annotations, 'narrowlink.io/expose': 'bad' };
    assert.equal(sidecarPatch(once, SETTINGS).outcome, 'already-injected');
  });
});

describe('sidecarPatch: not requested and invalid', () => {
  it('no inject annotation: nothing', () => {
    assert.deepEqual(sidecarPatch(pod(undefined), SETTINGS), { outcome: 'not-requested', patch: [], warnings: [], problems: [] });
    assert.equal(sidecarPatch(pod({ 'narrowlink.io/inject': 'false', 'narrowlink.io/expose': 'x' }), SETTINGS).outcome, 'not-requested');
  });

  it('invalid annotations: no patch, coded warnings plus a note, problems for strict mode', () => {
    const result = sidecarPatch(pod({ 'narrowlink.io/inject': 'true', 'narrowlink.io/expose': 'http=99999' }), SETTINGS);
    assert.equal(result.outcome, 'invalid');
    assert.deepEqual(result.patch, []);
    assert.equal(result.problemCode, 'NL_ERR_WEBHOOK_INVALID_ANNOTATIONS');
    assert.equal(result.problems.length, 1);
    assert.match(result.warnings[0] as string, /^NL_ERR_WEBHOOK_INVALID_ANNOTATIONS: narrowlink\.io\/expose: port "99999"/);
    assert.match(result.warnings[1] as string, /admitted without the narrowlink-agent sidecar/);
  });

  it('a request above its limit (after merging chart defaults) is refused before the API server rejects the pod', () => {
    const result = sidecarPatch(pod({ ...INJECT, 'narrowlink.io/sidecar-memory-limit': '16Mi' }), SETTINGS);
    assert.equal(result.outcome, 'invalid');
    assert.match(result.problems[0] as string, /memory request 32Mi is above the memory limit 16Mi/);
    const cpu = sidecarPatch(pod({ ...INJECT, 'narrowlink.io/sidecar-cpu-request': '1', 'narrowlink.io/sidecar-cpu-limit': '500m' }), SETTINGS);
    assert.match(cpu.problems[0] as string, /cpu request 1 is above the cpu limit 500m/);
    const equal = sidecarPatch(pod({ ...INJECT, 'narrowlink.io/sidecar-memory-limit': '32Mi' }), SETTINGS);
    assert.equal(equal.outcome, 'injected');
  });

  it('name clashes with the pod are conflicts', () => {
    const vol = sidecarPatch(pod(INJECT, {}, { volumes: [{ name: TOKEN_VOLUME, emptyDir: {} }] }), SETTINGS);
    assert.equal(vol.outcome, 'invalid');
    assert.equal(vol.problemCode, 'NL_ERR_WEBHOOK_CONFLICT');
    const init = sidecarPatch(pod(INJECT, {}, { initContainers: [{ name: SIDECAR_CONTAINER }] }), SETTINGS);
    assert.equal(init.problemCode, 'NL_ERR_WEBHOOK_CONFLICT');
  });

  it('never throws on odd JSON shapes', () => {
    for (const odd of [null, 42, 'pod', [], {}, { metadata: 'x' }, { metadata: { annotations: INJECT }, spec: null }, { metadata: { annotations: INJECT, labels: 'x' }, spec: { containers: 'x', volumes: 7 } }]) {
      const result = sidecarPatch(odd, SETTINGS);
      assert.ok(['not-requested', 'injected', 'invalid'].includes(result.outcome));
    }
    // Missing containers array: the patch creates it instead of appending to nothing.
    const bare = { metadata: { name: 'p', annotations: INJECT } };
    const result = sidecarPatch(bare, SETTINGS);
    const patched = applyJsonPatch(bare as unknown as Pod, result.patch);
    assert.equal(patched.spec.containers.length, 1);
  });
});

describe('sidecarSettingsProblems', () => {
  it('accepts the defaults', () => assert.deepEqual(sidecarSettingsProblems(SETTINGS), []));
  const bad: Array<[string, Partial<SidecarSettings>, RegExp]> = [
    ['empty image', { image: '' }, /image/],
    ['http gateway URL', { gatewayUrl: 'https://gw' }, /ws:\/\//],
    ['both CAs', { caConfigMap: 'a', caFile: '/b' }, /not both/],
    ['short token', { tokenExpirationSeconds: 300 }, />= 600/],
    ['bad quantity', { resources: { requests: { cpu: 'x' } } }, /requests\.cpu/],
    ['request above limit', { resources: { requests: { memory: '1Gi' }, limits: { memory: '1Mi' } } }, /above/],
  ];
  for (const [name, override, re] of bad) {
    it(`rejects ${name}`, () => {
      const problems = sidecarSettingsProblems({ ...SETTINGS, ...override });
      assert.ok(problems.some((p) => re.test(p)), problems.join('; '));
    });
  }
});

describe('applyJsonPatch (RFC 6902 subset)', () => {
  it('add/replace/remove/test on objects and arrays', () => {
    const doc = { a: { 'b/c': 1 }, list: [1, 2] };
    const out = applyJsonPatch(doc, [
      { op: 'test', path: '/a/b~1c', value: 1 },
      { op: 'add', path: '/list/-', value: 3 },
      { op: 'add', path: '/list/0', value: 0 },
      { op: 'replace', path: '/a/b~1c', value: 2 },
      { op: 'remove', path: '/list/1' },
      { op: 'add', path: '/new', value: { x: 1 } },
    ]);
    assert.deepEqual(out, { a: { 'b/c': 2 }, list: [0, 2, 3], new: { x: 1 } });
    assert.deepEqual(doc, { a: { 'b/c': 1 }, list: [1, 2] }, 'input untouched');
  });
  it('fails like the API server on a path into nothing', () => {
    assert.throws(() => applyJsonPatch({}, [{ op: 'add', path: '/metadata/annotations/x', value: '1' }]), /path does not exist/);
    assert.throws(() => applyJsonPatch({ a: 1 }, [{ op: 'test', path: '/a', value: 2 }]), /test failed/);
  });
});
