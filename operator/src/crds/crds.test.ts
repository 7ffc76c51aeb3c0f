import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { CustomResourceDefinition as CrdModel } from 'kubernetes-models/apiextensions.k8s.io/v1/CustomResourceDefinition';
import { findStaleCrdFiles, REPO_ROOT, writeCrdFiles } from './generate.ts';
import { accessPolicyCrd, CRD_OUTPUT_DIRS, crdFileName, crds, generatedCrdFiles, narrowlinkAgentCrd } from './index.ts';
import type { JSONSchemaProps } from './schema.ts';

function rootSchema(crd: (typeof crds)[number]): JSONSchemaProps {
  const version = crd.spec.versions[0];
  assert.ok(version);
  return version.schema.openAPIV3Schema;
}

/** Every schema node with its path, descending into properties, items and additionalProperties (not junctors). */
function* walk(schema: JSONSchemaProps, path: string): Generator<[string, JSONSchemaProps]> {
  yield [path, schema];
  for (const [k, v] of Object.entries(schema.properties ?? {})) yield* walk(v, `${path}.${k}`);
  if (schema.items !== undefined) yield* walk(schema.items, `${path}[]`);
  if (schema.additionalProperties !== undefined) yield* walk(schema.additionalProperties, `${path}{}`);
}

/** Keywords apiextensions.k8s.io/v1 accepts on Kubernetes 1.20 (no x-kubernetes-validations: CEL is 1.25+). */
const ALLOWED_KEYWORDS = new Set([
  'type',
  'description',
  'format',
  'default',
  'enum',
  'minimum',
  'maximum',
  'minLength',
  'maxLength',
  'pattern',
  'minItems',
  'maxItems',
  'minProperties',
  'maxProperties',
  'required',
  'properties',
  'additionalProperties',
  'items',
  'anyOf',
  'allOf',
  'oneOf',
  'not',
  'x-kubernetes-int-or-string',
  'x-kubernetes-list-type',
  'x-kubernetes-list-map-keys',
  'x-kubernetes-map-type',
]);

/** Inside anyOf/allOf/oneOf/not a structural schema may carry value validations only. */
const FORBIDDEN_IN_JUNCTORS = [
  'type',
  'description',
  'default',
  'additionalProperties',
  'nullable',
  'title',
  'x-kubernetes-int-or-string',
  'x-kubernetes-preserve-unknown-fields',
  'x-kubernetes-embedded-resource',
];

function junctors(s: JSONSchemaProps): JSONSchemaProps[] {
  return [...(s.anyOf ?? []), ...(s.allOf ?? []), ...(s.oneOf ?? []), ...(s.not === undefined ? [] : [s.not])];
}

/** Checks a junctor subtree against its outer schema: forbidden keywords, and fields present outside too. */
function checkJunctor(j: JSONSchemaProps, outer: JSONSchemaProps, path: string, errors: string[]): void {
  for (const key of FORBIDDEN_IN_JUNCTORS) {
    if (key in j) errors.push(`${path}: "${key}" inside a junctor is not structural`);
  }
  for (const [k, v] of Object.entries(j.properties ?? {})) {
    const o = outer.properties?.[k];
    if (o === undefined) errors.push(`${path}.properties.${k}: not specified outside the junctor`);
    else checkJunctor(v, o, `${path}.properties.${k}`, errors);
  }
  for (const nested of junctors(j)) checkJunctor(nested, outer, path, errors);
}

function structuralErrors(root: JSONSchemaProps): string[] {
  const errors: string[] = [];
  for (const [path, s] of walk(root, 'openAPIV3Schema')) {
    for (const key of Object.keys(s)) {
      if (!ALLOWED_KEYWORDS.has(key)) errors.push(`${path}: keyword "${key}" is not allowed on Kubernetes 1.20`);
    }
    const intOrString = s['x-kubernetes-int-or-string'] === true;
    if (intOrString) {
      if (s.type !== undefined) errors.push(`${path}: type must be empty with x-kubernetes-int-or-string`);
      assert.deepEqual(s.anyOf, [{ type: 'integer' }, { type: 'string' }], `${path}: int-or-string anyOf`);
    } else if (s.type === undefined) {
      errors.push(`${path}: type must be set`);
    }
    if (s.properties !== undefined && s.additionalProperties !== undefined) {
      errors.push(`${path}: properties and additionalProperties are mutually exclusive`);
    }
    if (s.type === 'array' && s.items === undefined) errors.push(`${path}: array without items`);
    for (const r of s.required ?? []) {
      if (s.properties?.[r] === undefined) errors.push(`${path}: required "${r}" is not a property`);
    }
    for (const [i, j] of (intOrString ? [] : junctors(s)).entries()) checkJunctor(j, s, `${path}.<junctor ${i}>`, errors);
    const listType = s['x-kubernetes-list-type'];
    if (listType === 'map') {
      const keys = s['x-kubernetes-list-map-keys'] ?? [];
      if (keys.length === 0) errors.push(`${path}: list-type map without list-map-keys`);
      for (const k of keys) {
        const item = s.items;
        const scalar = item?.properties?.[k]?.type;
        if (item?.type !== 'object' || !item.required?.includes(k)) errors.push(`${path}: map key "${k}" must be required`);
        if (scalar !== 'string' && scalar !== 'integer') errors.push(`${path}: map key "${k}" must be a scalar`);
      }
    }
    if (listType === 'set' && (s.items?.type === 'object' || s.items?.type === 'array')) {
      errors.push(`${path}: list-type set needs scalar items`);
    }
    if (s.pattern !== undefined) {
      // The apiserver compiles patterns with Go's RE2: no look-around, no back-references.
      if (/\(\?[=!<]|\\[1-9]/.test(s.pattern)) errors.push(`${path}: pattern is not RE2: ${s.pattern}`);
      new RegExp(s.pattern);
    }
  }
  // metadata may only restrict name/generateName; 1.20 refuses anything else there, a description included
  // ("must not specify anything other than name and generateName").
  const metadata = root.properties?.metadata;
  if (metadata !== undefined && Object.keys(metadata).some((k) => k !== 'type')) {
    errors.push('openAPIV3Schema.metadata: only type is set by this project');
  }
  return errors;
}

/**
 * A minimal validator for the schema subset above, with the apiserver's semantics where they matter
 * (pattern only checks strings, minimum only numbers). Unknown fields are not errors: the apiserver prunes them.
 */
function validate(schema: JSONSchemaProps, value: unknown, path = ''): string[] {
  const errors: string[] = [];
  const at = path === '' ? '<root>' : path;
  const intOrString = schema['x-kubernetes-int-or-string'] === true;
  if (intOrString) {
    if (!Number.isInteger(value) && typeof value !== 'string') return [`${at}: must be integer or string`];
  } else if (schema.type !== undefined) {
    const ok =
      schema.type === 'object'
        ? typeof value === 'object' && value !== null && !Array.isArray(value)
        : schema.type === 'array'
          ? Array.isArray(value)
          : schema.type === 'integer'
            ? Number.isInteger(value)
            : typeof value === schema.type;
    if (!ok) return [`${at}: must be ${schema.type}`];
  }
  if (schema.enum !== undefined && !schema.enum.includes(value as string)) errors.push(`${at}: not in enum`);
  if (typeof value === 'string') {
    if (schema.pattern !== undefined && !new RegExp(schema.pattern).test(value)) errors.push(`${at}: pattern`);
    if (schema.maxLength !== undefined && value.length > schema.maxLength) errors.push(`${at}: maxLength`);
    if (schema.minLength !== undefined && value.length < schema.minLength) errors.push(`${at}: minLength`);
    if (schema.format === 'date-time' && Number.isNaN(Date.parse(value))) errors.push(`${at}: date-time`);
  }
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) errors.push(`${at}: minimum`);
    if (schema.maximum !== undefined && value > schema.maximum) errors.push(`${at}: maximum`);
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) errors.push(`${at}: minItems`);
    if (schema.maxItems !== undefined && value.length > schema.maxItems) errors.push(`${at}: maxItems`);
    const keys = schema['x-kubernetes-list-map-keys'];
    if (schema['x-kubernetes-list-type'] === 'map' && keys !== undefined) {
      const seen = new Set(value.map((v) => JSON.stringify(keys.map((k) => (v as Record<string, unknown>)[k]))));
      if (seen.size !== value.length) errors.push(`${at}: duplicate map key`);
    }
    if (schema['x-kubernetes-list-type'] === 'set' && new Set(value).size !== value.length) errors.push(`${at}: duplicate`);
    value.forEach((v, i) => {
      if (schema.items !== undefined) errors.push(...validate(schema.items, v, `${path}[${i}]`));
    });
  }
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const obj = value as Record<string, unknown>;
    for (const r of schema.required ?? []) if (!(r in obj)) errors.push(`${path === '' ? '' : `${path}.`}${r}: required`);
    for (const [k, v] of Object.entries(obj)) {
      const child = schema.properties?.[k] ?? schema.additionalProperties;
      if (child !== undefined) errors.push(...validate(child, v, path === '' ? k : `${path}.${k}`));
    }
  }
  // Junctors: value validations against the same value.
  if (!intOrString && schema.anyOf !== undefined && !schema.anyOf.some((s) => validate(s, value, path).length === 0)) {
    errors.push(`${at}: must match at least one of anyOf`);
  }
  if (schema.not !== undefined && validate(schema.not, value, path).length === 0) errors.push(`${at}: must not match not`);
  return errors;
}

function agent(spec: Record<string, unknown>): Record<string, unknown> {
  return { apiVersion: 'narrowlink.io/v1alpha1', kind: 'NarrowlinkAgent', metadata: { name: 'web' }, spec };
}

function policy(spec: Record<string, unknown>): Record<string, unknown> {
  return { apiVersion: 'narrowlink.io/v1alpha1', kind: 'AccessPolicy', metadata: { name: 'p' }, spec };
}

const goodPolicySpec = {
  subjects: [{ kind: 'Group', name: 'devs' }],
  rules: [{ action: 'Allow', agents: { names: ['web'] }, ports: [8080] }],
};

describe('generated CRD YAML', () => {
  it('is up to date in crds/ and charts/narrowlink/crds/ (run node operator/src/crds/generate.ts)', async () => {
    assert.deepEqual(await findStaleCrdFiles(), []);
  });

  it('generate --check exits 0 when current', () => {
    const run = spawnSync(process.execPath, [join(REPO_ROOT, 'operator/src/crds/generate.ts'), '--check'], {
      encoding: 'utf8',
    });
    assert.equal(run.status, 0, run.stderr);
  });

  it('reports missing and stale files with the first differing line', async () => {
    const root = await mkdtemp(join(tmpdir(), 'nl-crds-'));
    try {
      assert.equal((await findStaleCrdFiles(root)).length, generatedCrdFiles().size);
      await writeCrdFiles(root);
      assert.deepEqual(await findStaleCrdFiles(root), []);
      const path = `crds/${crdFileName(narrowlinkAgentCrd)}`;
      const content = generatedCrdFiles().get(path) ?? '';
      await writeFile(join(root, path), content.replace('shortNames:', 'shortnames:'));
      const stale = await findStaleCrdFiles(root);
      assert.equal(stale.length, 1);
      assert.equal(stale[0]?.path, path);
      const line = content.split('\n').findIndex((l) => l.includes('shortNames:')) + 1;
      assert.equal(stale[0]?.firstDifferentLine, line);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('writes identical copies to every output directory', () => {
    const files = generatedCrdFiles();
    for (const crd of crds) {
      const copies = CRD_OUTPUT_DIRS.map((d) => files.get(`${d}/${crdFileName(crd)}`));
      assert.ok(copies[0]?.startsWith('# Code generated'));
      for (const c of copies) assert.equal(c, copies[0]);
    }
  });
});

describe('CRD schemas', () => {
  for (const crd of crds) {
    describe(crd.spec.names.kind, () => {
      it('has a description on every field, recursively', () => {
        const missing = [...walk(rootSchema(crd), 'openAPIV3Schema')]
          // Root metadata is the exception: 1.20 refuses a description there (see the structural check).
          .filter(([path, s]) => !path.endsWith('{}') && path !== 'openAPIV3Schema.metadata' && (s.description ?? '').trim() === '')
          .map(([path]) => path);
        assert.deepEqual(missing, []);
      });

      it('is structural and uses only Kubernetes 1.20 keywords', () => {
        assert.deepEqual(structuralErrors(rootSchema(crd)), []);
      });

      it('has defaults that pass their own schema', () => {
        for (const [path, s] of walk(rootSchema(crd), 'openAPIV3Schema')) {
          if (s.default === undefined) continue;
          assert.deepEqual(validate(s, s.default, path), [], path);
        }
      });

      it('is a valid apiextensions.k8s.io/v1 object', () => {
        new CrdModel(structuredClone(crd) as never).validate();
      });

      it('serves one version with the status subresource, printer columns, short name and category', () => {
        assert.equal(crd.spec.versions.length, 1);
        const v = crd.spec.versions[0];
        assert.deepEqual(v?.subresources, { status: {} });
        assert.equal(crd.spec.scope, 'Namespaced');
        assert.deepEqual(crd.spec.names.categories, ['narrowlink']);
        assert.equal(crd.spec.names.shortNames.length, 1);
        for (const col of v?.additionalPrinterColumns ?? []) {
          assert.match(col.jsonPath, /^\.(status|spec|metadata)\./);
        }
      });
    });
  }

  it('prints the columns the issue asks for', () => {
    const names = (c: typeof narrowlinkAgentCrd) => c.spec.versions[0]?.additionalPrinterColumns.map((p) => p.name);
    assert.deepEqual(names(narrowlinkAgentCrd), ['Ready', 'Connected', 'Instances', 'NAT', 'Direct', 'Age']);
    assert.deepEqual(names(accessPolicyCrd), ['Subjects', 'Rules', 'Age']);
    assert.deepEqual(narrowlinkAgentCrd.spec.names.shortNames, ['nla']);
    assert.deepEqual(accessPolicyCrd.spec.names.shortNames, ['nlap']);
  });
});

describe('NarrowlinkAgent schema validation', () => {
  const schema = rootSchema(narrowlinkAgentCrd);
  const cases: Array<{ name: string; spec: Record<string, unknown>; errors: string[] }> = [
    {
      name: 'full valid spec',
      spec: {
        expose: [
          { name: 'http', port: 8080 },
          { name: 'pg', port: 5432, host: 'db.internal' },
          { name: '8080-web1', port: 1 },
        ],
        publish: [{ domain: 'app.example.com', port: 8080, tls: 'Passthrough' }],
        mode: 'relay',
        issuerRef: { name: 'letsencrypt', kind: 'ClusterIssuer' },
        external: true,
      },
      errors: [],
    },
    { name: 'empty spec (all defaulted)', spec: {}, errors: [] },
    { name: 'port 0', spec: { expose: [{ name: 'http', port: 0 }] }, errors: ['spec.expose[0].port: minimum'] },
    { name: 'port 65536', spec: { expose: [{ name: 'http', port: 65536 }] }, errors: ['spec.expose[0].port: maximum'] },
    { name: 'port name "--"', spec: { expose: [{ name: 'a--b', port: 1 }] }, errors: ['spec.expose[0].name: pattern'] },
    { name: 'port name all digits', spec: { expose: [{ name: '8080', port: 1 }] }, errors: ['spec.expose[0].name: pattern'] },
    { name: 'port name uppercase', spec: { expose: [{ name: 'Http', port: 1 }] }, errors: ['spec.expose[0].name: pattern'] },
    {
      name: 'port name too long',
      spec: { expose: [{ name: 'abcdefghijklmnop', port: 1 }] },
      errors: ['spec.expose[0].name: maxLength'],
    },
    {
      name: 'duplicate port name',
      spec: {
        expose: [
          { name: 'http', port: 1 },
          { name: 'http', port: 2 },
        ],
      },
      errors: ['spec.expose: duplicate map key'],
    },
    { name: 'host with space', spec: { expose: [{ name: 'h', port: 1, host: 'a b' }] }, errors: ['spec.expose[0].host: pattern'] },
    {
      name: 'domain uppercase',
      spec: { publish: [{ domain: 'App.example.com', port: 1 }] },
      errors: ['spec.publish[0].domain: pattern'],
    },
    { name: 'domain single label', spec: { publish: [{ domain: 'localhost', port: 1 }] }, errors: ['spec.publish[0].domain: pattern'] },
    { name: 'domain wildcard', spec: { publish: [{ domain: '*.example.com', port: 1 }] }, errors: ['spec.publish[0].domain: pattern'] },
    { name: 'tls enum', spec: { publish: [{ domain: 'a.example.com', port: 1, tls: 'Reencrypt' }] }, errors: ['spec.publish[0].tls: not in enum'] },
    { name: 'mode enum', spec: { mode: 'fast' }, errors: ['spec.mode: not in enum'] },
    { name: 'issuer kind enum', spec: { issuerRef: { name: 'x', kind: 'Foo' } }, errors: ['spec.issuerRef.kind: not in enum'] },
    { name: 'issuer without name', spec: { issuerRef: { kind: 'Issuer' } }, errors: ['spec.issuerRef.name: required'] },
  ];
  for (const c of cases) {
    it(c.name, () => assert.deepEqual(validate(schema, agent(c.spec)), c.errors));
  }
  it('requires spec', () => {
    assert.deepEqual(validate(schema, { apiVersion: 'narrowlink.io/v1alpha1', kind: 'NarrowlinkAgent', metadata: {} }), [
      'spec: required',
    ]);
  });
});

describe('AccessPolicy schema validation', () => {
  const schema = rootSchema(accessPolicyCrd);
  const rule = (r: Record<string, unknown>) => ({ ...goodPolicySpec, rules: [{ action: 'Allow', ...r }] });
  const subject = (s: Record<string, unknown>) => ({ ...goodPolicySpec, subjects: [s] });
  const cases: Array<{ name: string; spec: Record<string, unknown>; errors: string[] }> = [
    { name: 'valid', spec: goodPolicySpec, errors: [] },
    {
      name: 'full valid spec',
      spec: {
        subjects: [
          { kind: 'User', name: 'alice@example.com' },
          { kind: 'ServiceAccount', name: 'ci', namespace: 'tools' },
          { kind: 'ServiceAccount', name: 'ci' },
        ],
        rules: [
          {
            action: 'Deny',
            agents: { selector: { matchLabels: { tier: 'db' }, matchExpressions: [{ key: 'env', operator: 'In', values: ['prod'] }] } },
            ports: [5432, '8000-8100', '9090'],
            hosts: ['*', '*.svc.cluster.local', '10.0.0.1'],
            paths: ['Direct', 'Relay'],
          },
          { action: 'Allow' },
        ],
        expiresAt: '2030-01-01T00:00:00Z',
      },
      errors: [],
    },
    { name: 'no subjects', spec: { ...goodPolicySpec, subjects: [] }, errors: ['spec.subjects: minItems'] },
    { name: 'no rules', spec: { ...goodPolicySpec, rules: [] }, errors: ['spec.rules: minItems'] },
    { name: 'missing rules', spec: { subjects: goodPolicySpec.subjects }, errors: ['spec.rules: required'] },
    { name: 'subject kind enum', spec: subject({ kind: 'Robot', name: 'r' }), errors: ['spec.subjects[0].kind: not in enum'] },
    {
      name: 'namespace on a User',
      spec: subject({ kind: 'User', name: 'u', namespace: 'x' }),
      errors: ['spec.subjects[0]: must match at least one of anyOf'],
    },
    { name: 'action enum', spec: rule({ action: 'Maybe' }), errors: ['spec.rules[0].action: not in enum'] },
    { name: 'agents without names or selector', spec: rule({ agents: {} }), errors: ['spec.rules[0].agents: must match at least one of anyOf'] },
    { name: 'agent name "*"', spec: rule({ agents: { names: ['*'] } }), errors: [] },
    { name: 'agent name with dot', spec: rule({ agents: { names: ['a.b'] } }), errors: ['spec.rules[0].agents.names[0]: pattern'] },
    { name: 'port 0', spec: rule({ ports: [0] }), errors: ['spec.rules[0].ports[0]: minimum'] },
    { name: 'port 70000', spec: rule({ ports: [70000] }), errors: ['spec.rules[0].ports[0]: maximum'] },
    { name: 'port range with 0', spec: rule({ ports: ['0-5'] }), errors: ['spec.rules[0].ports[0]: pattern'] },
    { name: 'port name string', spec: rule({ ports: ['http'] }), errors: ['spec.rules[0].ports[0]: pattern'] },
    { name: 'port as boolean', spec: rule({ ports: [true] }), errors: ['spec.rules[0].ports[0]: must be integer or string'] },
    { name: 'host glob in the middle', spec: rule({ hosts: ['a.*.b'] }), errors: ['spec.rules[0].hosts[0]: pattern'] },
    { name: 'paths enum', spec: rule({ paths: ['Tunnel'] }), errors: ['spec.rules[0].paths[0]: not in enum'] },
    { name: 'paths duplicate', spec: rule({ paths: ['Relay', 'Relay'] }), errors: ['spec.rules[0].paths: duplicate'] },
    {
      name: 'selector operator enum',
      spec: rule({ agents: { selector: { matchExpressions: [{ key: 'a', operator: 'Gt' }] } } }),
      errors: ['spec.rules[0].agents.selector.matchExpressions[0].operator: not in enum'],
    },
    { name: 'expiresAt not a date', spec: { ...goodPolicySpec, expiresAt: 'tomorrow' }, errors: ['spec.expiresAt: date-time'] },
  ];
  for (const c of cases) {
    it(c.name, () => assert.deepEqual(validate(schema, policy(c.spec)), c.errors));
  }
});
