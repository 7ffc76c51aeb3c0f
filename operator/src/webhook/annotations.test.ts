import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  ANNOTATION_AGENT_NAME,
  ANNOTATION_CPU_LIMIT,
  ANNOTATION_CPU_REQUEST,
  ANNOTATION_EXPOSE,
  ANNOTATION_INJECT,
  ANNOTATION_MEMORY_LIMIT,
  ANNOTATION_MEMORY_REQUEST,
  ANNOTATION_SIDECAR_IMAGE,
  isImageReference,
  isQuantity,
  parseExposeAnnotation,
  parseInjectionAnnotations,
  quantityValue,
} from './annotations.ts';

const inject = (extra: Record<string, string>) => ({ [ANNOTATION_INJECT]: 'true', ...extra });

describe('parseInjectionAnnotations: opt-in', () => {
  const notRequested: Array<[string, Record<string, unknown> | undefined]> = [
    ['no annotations', undefined],
    ['empty map', {}],
    ['"false"', { [ANNOTATION_INJECT]: 'false' }],
    ['"True" (only the exact string "true" opts in)', { [ANNOTATION_INJECT]: 'True' }],
    ['"yes"', { [ANNOTATION_INJECT]: 'yes' }],
    ['"1"', { [ANNOTATION_INJECT]: '1' }],
    ['a non-string value', { [ANNOTATION_INJECT]: true }],
    ['expose without inject', { [ANNOTATION_EXPOSE]: 'http=8080' }],
    ['inject false with a broken expose (not validated)', { [ANNOTATION_INJECT]: 'false', [ANNOTATION_EXPOSE]: '!!' }],
  ];
  for (const [name, annotations] of notRequested) {
    it(`not requested: ${name}`, () => {
      assert.deepEqual(parseInjectionAnnotations(annotations), { requested: false, ok: true });
    });
  }
});

describe('parseInjectionAnnotations: valid', () => {
  const cases: Array<{ name: string; annotations: Record<string, string>; expose: string; expect?: Record<string, unknown> }> = [
    { name: 'one port', annotations: inject({ [ANNOTATION_EXPOSE]: 'http=8080' }), expose: 'http=8080' },
    { name: 'two ports', annotations: inject({ [ANNOTATION_EXPOSE]: 'http=8080,metrics=9090' }), expose: 'http=8080,metrics=9090' },
    {
      name: 'whitespace and a trailing comma are tolerated',
      annotations: inject({ [ANNOTATION_EXPOSE]: ' http = 8080 , metrics=9090, ' }),
      expose: 'http=8080,metrics=9090',
    },
    { name: 'inject value with surrounding spaces', annotations: { [ANNOTATION_INJECT]: ' true ', [ANNOTATION_EXPOSE]: 'a=1' }, expose: 'a=1' },
    { name: 'port bounds 1 and 65535', annotations: inject({ [ANNOTATION_EXPOSE]: 'low=1,high=65535' }), expose: 'low=1,high=65535' },
    { name: 'IANA names with digits and dashes', annotations: inject({ [ANNOTATION_EXPOSE]: '8-http=80,h2c-x1=81' }), expose: '8-http=80,h2c-x1=81' },
    { name: '15-character name', annotations: inject({ [ANNOTATION_EXPOSE]: 'abcdefghijklmno=80' }), expose: 'abcdefghijklmno=80' },
    {
      name: 'all overrides',
      annotations: inject({
        [ANNOTATION_EXPOSE]: 'http=8080',
        [ANNOTATION_AGENT_NAME]: 'shop-frontend',
        [ANNOTATION_SIDECAR_IMAGE]: 'registry.example.com:5000/team/narrowlink:1.2.3',
        [ANNOTATION_CPU_REQUEST]: '5m',
        [ANNOTATION_MEMORY_REQUEST]: '32Mi',
        [ANNOTATION_CPU_LIMIT]: '0.5',
        [ANNOTATION_MEMORY_LIMIT]: '1Gi',
      }),
      expose: 'http=8080',
      expect: {
        agentName: 'shop-frontend',
        image: 'registry.example.com:5000/team/narrowlink:1.2.3',
        resources: { cpuRequest: '5m', memoryRequest: '32Mi', cpuLimit: '0.5', memoryLimit: '1Gi' },
      },
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const result = parseInjectionAnnotations(c.annotations);
      assert.ok(result.requested && result.ok, JSON.stringify(result));
      assert.equal(result.spec.exposeValue, c.expose);
      assert.deepEqual(
        result.spec.expose.map((e) => `${e.name}=${e.port}`),
        c.expose.split(','),
      );
      if (c.expect) for (const [k, v] of Object.entries(c.expect)) assert.deepEqual((result.spec as unknown as Record<string, unknown>)[k], v, k);
    });
  }
});

describe('parseInjectionAnnotations: invalid', () => {
  /** Each case: annotations, and a fragment every expected problem contains (one problem per fragment). */
  const cases: Array<{ name: string; annotations: Record<string, string>; problems: RegExp[] }> = [
    { name: 'expose missing', annotations: inject({}), problems: [/narrowlink\.io\/expose is missing/] },
    { name: 'expose empty', annotations: inject({ [ANNOTATION_EXPOSE]: '' }), problems: [/at least one NAME=PORT/] },
    { name: 'expose only commas', annotations: inject({ [ANNOTATION_EXPOSE]: ' , ,' }), problems: [/at least one NAME=PORT/] },
    { name: 'no "="', annotations: inject({ [ANNOTATION_EXPOSE]: '8080' }), problems: [/"8080" is not NAME=PORT/] },
    { name: 'port 0', annotations: inject({ [ANNOTATION_EXPOSE]: 'http=0' }), problems: [/port "0" of "http" must be a number 1-65535/] },
    { name: 'port 65536', annotations: inject({ [ANNOTATION_EXPOSE]: 'http=65536' }), problems: [/port "65536"/] },
    { name: 'port not a number', annotations: inject({ [ANNOTATION_EXPOSE]: 'http=web' }), problems: [/port "web"/] },
    { name: 'negative port', annotations: inject({ [ANNOTATION_EXPOSE]: 'http=-1' }), problems: [/port "-1"/] },
    { name: 'host:port (the sidecar dials the pod only)', annotations: inject({ [ANNOTATION_EXPOSE]: 'db=10.0.0.1:5432' }), problems: [/port "10\.0\.0\.1:5432"/] },
    { name: 'uppercase name', annotations: inject({ [ANNOTATION_EXPOSE]: 'HTTP=80' }), problems: [/port name "HTTP"/] },
    { name: 'name without a letter', annotations: inject({ [ANNOTATION_EXPOSE]: '123=80' }), problems: [/port name "123"/] },
    { name: 'name with "--"', annotations: inject({ [ANNOTATION_EXPOSE]: 'a--b=80' }), problems: [/port name "a--b"/] },
    { name: 'name of 16 characters', annotations: inject({ [ANNOTATION_EXPOSE]: 'abcdefghijklmnop=80' }), problems: [/longer than 15/] },
    { name: 'empty name', annotations: inject({ [ANNOTATION_EXPOSE]: '=80' }), problems: [/a port name is empty/] },
    { name: 'duplicate name', annotations: inject({ [ANNOTATION_EXPOSE]: 'http=80,http=81' }), problems: [/port name "http" is given twice/] },
    { name: 'duplicate port', annotations: inject({ [ANNOTATION_EXPOSE]: 'http=80,web=80' }), problems: [/port 80 is given twice/] },
    {
      name: 'every problem is reported, not only the first',
      annotations: inject({ [ANNOTATION_EXPOSE]: 'HTTP=80,ok=0', [ANNOTATION_CPU_LIMIT]: 'lots' }),
      problems: [/port name "HTTP"/, /port "0" of "ok"/, /sidecar-cpu-limit: "lots" is not a Kubernetes quantity/],
    },
    { name: 'agent name not a DNS label', annotations: inject({ [ANNOTATION_EXPOSE]: 'a=1', [ANNOTATION_AGENT_NAME]: 'Shop_Front' }), problems: [/agent-name: "Shop_Front"/] },
    { name: 'agent name of 64 characters', annotations: inject({ [ANNOTATION_EXPOSE]: 'a=1', [ANNOTATION_AGENT_NAME]: 'a'.repeat(64) }), problems: [/agent-name/] },
    { name: 'image with spaces', annotations: inject({ [ANNOTATION_EXPOSE]: 'a=1', [ANNOTATION_SIDECAR_IMAGE]: 'bad image' }), problems: [/sidecar-image: "bad image"/] },
    { name: 'image with uppercase path', annotations: inject({ [ANNOTATION_EXPOSE]: 'a=1', [ANNOTATION_SIDECAR_IMAGE]: 'Org/Image' }), problems: [/sidecar-image/] },
    { name: 'negative memory', annotations: inject({ [ANNOTATION_EXPOSE]: 'a=1', [ANNOTATION_MEMORY_REQUEST]: '-64Mi' }), problems: [/sidecar-memory-request/] },
    { name: 'unknown suffix', annotations: inject({ [ANNOTATION_EXPOSE]: 'a=1', [ANNOTATION_MEMORY_LIMIT]: '64MB' }), problems: [/sidecar-memory-limit: "64MB"/] },
    { name: 'cpu with unit', annotations: inject({ [ANNOTATION_EXPOSE]: 'a=1', [ANNOTATION_CPU_REQUEST]: '100 m' }), problems: [/sidecar-cpu-request/] },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const result = parseInjectionAnnotations(c.annotations);
      assert.equal(result.requested, true);
      assert.ok(!result.ok, `expected problems, got ${JSON.stringify(result)}`);
      assert.equal(result.problems.length, c.problems.length, result.problems.join('\n'));
      c.problems.forEach((re, i) => {
        assert.match(result.problems[i] as string, re);
      });
      for (const p of result.problems) assert.ok(!p.includes('\n') && p.length < 200, `one short line: ${p}`);
    });
  }

  it('a very long value is cut in the message', () => {
    const result = parseInjectionAnnotations(inject({ [ANNOTATION_EXPOSE]: `x${'y'.repeat(500)}` }));
    assert.ok(!result.ok && result.problems.every((p) => p.length < 200));
  });
});

describe('quantities', () => {
  const valid: Array<[string, number]> = [
    ['0', 0],
    ['1', 1],
    ['100m', 0.1],
    ['0.5', 0.5],
    ['.5', 0.5],
    ['1.', 1],
    ['64Mi', 64 * 2 ** 20],
    ['1Gi', 2 ** 30],
    ['2k', 2000],
    ['1M', 1e6],
    ['1e3', 1000],
    ['5E-1', 0.5],
    ['250u', 250e-6],
    ['1E', 1e18],
  ];
  for (const [q, v] of valid) {
    it(`${q} = ${v}`, () => {
      assert.ok(isQuantity(q));
      const got = quantityValue(q);
      assert.ok(got !== undefined && Math.abs(got - v) <= Math.abs(v) * 1e-12, `${q} -> ${got}`);
    });
  }
  for (const q of ['', '-1', '+1', '1.2.3', 'Mi', '1mi', '1KB', '1 Gi', '1e', 'e3', '1Gi ', '0x10']) {
    it(`rejects ${JSON.stringify(q)}`, () => {
      assert.equal(isQuantity(q), false);
      assert.equal(quantityValue(q), undefined);
    });
  }
});

describe('image references', () => {
  for (const ok of [
    'narrowlink',
    'ghcr.io/narrowlink/narrowlink-k8s:0.1.0',
    'localhost:5000/a/b_c__d-e:latest',
    `ghcr.io/x/y@sha256:${'a'.repeat(64)}`,
    `ghcr.io/x/y:v1@sha256:${'0'.repeat(64)}`,
  ]) {
    it(`accepts ${ok}`, () => assert.ok(isImageReference(ok)));
  }
  for (const bad of ['', 'a b', 'org/UPPER', 'x:', 'x@sha256:short', '-lead', 'a//b', `x:${'t'.repeat(200)}`]) {
    it(`rejects ${JSON.stringify(bad)}`, () => assert.equal(isImageReference(bad), false));
  }
});

describe('parseExposeAnnotation', () => {
  it('keeps annotation order', () => {
    assert.deepEqual(parseExposeAnnotation('b=2,a=1'), { ok: true, expose: [{ name: 'b', port: 2 }, { name: 'a', port: 1 }] });
  });
});
