import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { stringify as toYaml } from 'yaml';
import { ConfigError, ErrorCode } from './errors.ts';
import {
  agentKey,
  type GatewayConfig,
  gatewayConfigSchema,
  parseGatewayConfig,
  parseGatewayTokenRules,
  portSpecRange,
  validateGatewayConfig,
} from './gateway-config.ts';

const ED_KEY = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();
const ED_KEY_2 = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();

/** A document as an author writes it: many fields left to their defaults. */
function fullExample(): Record<string, unknown> {
  return {
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'GatewayConfig',
    signingPublicKeys: [ED_KEY, ED_KEY_2],
    agents: [
      {
        name: 'postgres',
        namespace: 'data',
        labels: { app: 'postgres', tier: 'db' },
        mode: 'relay',
        expose: [
          { name: 'pg', port: 5432 },
          { name: 'metrics', port: 9187, host: '10.0.0.5' },
        ],
      },
      { name: 'web', expose: [{ name: 'http', port: 8080 }] },
    ],
    policies: [
      {
        name: 'devs-to-db',
        namespace: 'data',
        expiresAt: '2030-01-01T00:00:00Z',
        subjects: [
          { kind: 'User', name: 'alice' },
          { kind: 'Group', name: 'dev' },
          { kind: 'ServiceAccount', name: 'ci', namespace: 'build' },
        ],
        rules: [
          {
            action: 'Allow',
            agents: {
              names: ['postgres', '*'],
              selector: {
                matchLabels: { app: 'postgres' },
                matchExpressions: [
                  { key: 'tier', operator: 'In', values: ['db'] },
                  { key: 'env', operator: 'NotIn', values: ['prod'] },
                  { key: 'app', operator: 'Exists' },
                  { key: 'legacy', operator: 'DoesNotExist' },
                ],
              },
            },
            ports: [5432, '9000-9200'],
            hosts: ['127.0.0.1', '*.svc.cluster.local', '*'],
            paths: ['Relay', 'Direct'],
          },
          { action: 'Deny', ports: [9187] },
        ],
      },
    ],
  };
}

function expectInvalid(value: unknown, ...fragments: string[]): ConfigError {
  let caught: unknown;
  try {
    validateGatewayConfig(value);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ConfigError, `expected ConfigError, got ${String(caught)}`);
  assert.equal(caught.code, ErrorCode.CONFIG_INVALID);
  for (const f of fragments) assert.ok(caught.message.includes(f), `message lacks "${f}":\n${caught.message}`);
  return caught;
}

/** The tests mutate arbitrary JSON, including into invalid shapes: no static type fits. */
// biome-ignore lint/suspicious/noExplicitAny: see above
type Doc = any;

/** Deep-clones the example and applies `edit` to it. */
function edited(edit: (doc: Doc) => void): unknown {
  const doc = structuredClone(fullExample());
  edit(doc);
  return doc;
}

describe('gateway config: valid documents', () => {
  it('applies defaults to a full example', () => {
    const cfg = validateGatewayConfig(fullExample());
    assert.equal(cfg.audience, 'narrowlink');
    assert.equal(cfg.allowCrossNamespacePolicies, false);
    const [pg, web] = cfg.agents;
    assert.deepEqual(pg?.expose, [
      { name: 'pg', port: 5432, host: '127.0.0.1' },
      { name: 'metrics', port: 9187, host: '10.0.0.5' },
    ]);
    assert.deepEqual(web, {
      name: 'web',
      namespace: 'default',
      labels: {},
      mode: 'auto',
      expose: [{ name: 'http', port: 8080, host: '127.0.0.1' }],
      serviceAccounts: [],
    });
    assert.equal(cfg.policies[0]?.namespace, 'data');
    assert.deepEqual(cfg.policies[0]?.rules[1], { action: 'Deny', ports: [9187] });
  });

  it('round-trips through YAML and JSON with the same result, and is a fixed point', () => {
    const fromObject = validateGatewayConfig(fullExample());
    const fromYaml = parseGatewayConfig(toYaml(fullExample()));
    const fromJson = parseGatewayConfig(JSON.stringify(fullExample()));
    assert.deepEqual(fromYaml, fromObject);
    assert.deepEqual(fromJson, fromObject);
    // The operator writes the output type; feeding it back must not change it.
    const again: GatewayConfig = parseGatewayConfig(JSON.stringify(fromObject));
    assert.deepEqual(again, fromObject);
  });

  it('accepts a minimal document (no agents, no policies)', () => {
    const cfg = parseGatewayConfig(
      `apiVersion: narrowlink.io/v1alpha1\nkind: GatewayConfig\nsigningPublicKeys:\n  - |\n${ED_KEY.trim()
        .split('\n')
        .map((l) => `    ${l}`)
        .join('\n')}\n`,
    );
    assert.deepEqual(cfg.agents, []);
    assert.deepEqual(cfg.policies, []);
  });

  it('exposes the schema for the operator', () => {
    assert.equal(gatewayConfigSchema.safeParse(fullExample()).success, true);
  });

  it('agentKey joins namespace and name', () => {
    assert.equal(agentKey('data', 'postgres'), 'data/postgres');
  });

  it('portSpecRange parses numbers and ranges', () => {
    assert.deepEqual(portSpecRange(22), { lo: 22, hi: 22 });
    assert.deepEqual(portSpecRange('8000-8100'), { lo: 8000, hi: 8100 });
  });
});

describe('gateway config: parse errors', () => {
  for (const [name, text] of [
    ['broken YAML', 'apiVersion: [unclosed'],
    ['broken JSON', '{"apiVersion": "narrowlink.io/v1alpha1",'],
    ['duplicate keys', 'kind: GatewayConfig\nkind: GatewayConfig\n'],
    ['multiple documents', 'a: 1\n---\nb: 2\n'],
  ] as const) {
    it(`reports ${name} as CONFIG_PARSE`, () => {
      assert.throws(
        () => parseGatewayConfig(text),
        (e: unknown) => e instanceof ConfigError && e.code === ErrorCode.CONFIG_PARSE && e.cause !== undefined,
      );
    });
  }

  it('reports an empty document and a scalar as CONFIG_INVALID', () => {
    for (const text of ['', '42', '"str"', '[]']) {
      assert.throws(
        () => parseGatewayConfig(text),
        (e: unknown) => e instanceof ConfigError && e.code === ErrorCode.CONFIG_INVALID,
      );
    }
  });
});

describe('gateway config: schema errors name the field path', () => {
  const cases: Array<[string, (doc: Doc) => void, string[]]> = [
    ['wrong apiVersion', (d) => (d.apiVersion = 'narrowlink.io/v1'), ['apiVersion:']],
    ['wrong kind', (d) => (d.kind = 'Gateway'), ['kind:']],
    ['expose port 0', (d) => (d.agents[0].expose[0].port = 0), ['agents.0.expose.0.port:']],
    ['expose port 70000', (d) => (d.agents[0].expose[1].port = 70000), ['agents.0.expose.1.port:']],
    ['expose port not integer', (d) => (d.agents[0].expose[0].port = 80.5), ['agents.0.expose.0.port:']],
    ['expose port as string', (d) => (d.agents[0].expose[0].port = '5432'), ['agents.0.expose.0.port:']],
    ['agent name uppercase', (d) => (d.agents[0].name = 'Postgres'), ['agents.0.name:']],
    ['agent name with dot', (d) => (d.agents[1].name = 'web.app'), ['agents.1.name:']],
    ['agent name too long', (d) => (d.agents[1].name = 'a'.repeat(64)), ['agents.1.name:']],
    ['agent name trailing dash', (d) => (d.agents[1].name = 'web-'), ['agents.1.name:']],
    ['agent namespace invalid', (d) => (d.agents[1].namespace = 'Kube_System'), ['agents.1.namespace:']],
    ['agent mode invalid', (d) => (d.agents[1].mode = 'p2p'), ['agents.1.mode:']],
    ['port name too long', (d) => (d.agents[0].expose[0].name = 'postgresql-main1'), ['agents.0.expose.0.name:']],
    ['port name digits only', (d) => (d.agents[0].expose[0].name = '5432'), ['agents.0.expose.0.name:']],
    ['port name uppercase', (d) => (d.agents[0].expose[0].name = 'PG'), ['agents.0.expose.0.name:']],
    [
      'duplicate agent (default namespace)',
      (d) => d.agents.push({ name: 'web', namespace: 'default', expose: [] }),
      ['agents.2.name:', 'duplicate agent default/web'],
    ],
    [
      'duplicate expose port',
      (d) => d.agents[0].expose.push({ name: 'pg2', port: 5432 }),
      ['agents.0.expose.2.port:', 'duplicate port 5432'],
    ],
    [
      'duplicate expose name',
      (d) => d.agents[0].expose.push({ name: 'pg', port: 5433 }),
      ['agents.0.expose.2.name:', 'duplicate port name'],
    ],
    ['unknown top-level field', (d) => (d.allowCrossNamespace = true), ['allowCrossNamespace: unknown field']],
    ['unknown agent field', (d) => (d.agents[0].ports = []), ['agents.0.ports: unknown field']],
    ['unknown rule field', (d) => (d.policies[0].rules[0].prots = [1]), ['policies.0.rules.0.prots: unknown field']],
    [
      'unknown selector field',
      (d) => (d.policies[0].rules[0].agents.selector.matchLabel = {}),
      ['policies.0.rules.0.agents.selector.matchLabel: unknown field'],
    ],
    ['missing signing keys', (d) => delete d.signingPublicKeys, ['signingPublicKeys:']],
    ['empty signing keys', (d) => (d.signingPublicKeys = []), ['signingPublicKeys:']],
    ['signing key not PEM', (d) => (d.signingPublicKeys[1] = 'ssh-ed25519 AAAA'), ['signingPublicKeys.1:']],
    [
      'signing key is a private key',
      (d) =>
        (d.signingPublicKeys[0] = generateKeyPairSync('ed25519')
          .privateKey.export({ type: 'pkcs8', format: 'pem' })
          .toString()),
      ['signingPublicKeys.0:'],
    ],
    [
      'signing key is RSA',
      (d) =>
        (d.signingPublicKeys[0] = generateKeyPairSync('rsa', { modulusLength: 1024 })
          .publicKey.export({ type: 'spki', format: 'pem' })
          .toString()),
      ['signingPublicKeys.0:', 'Ed25519'],
    ],
    [
      'signing key PEM with corrupt body',
      (d) => (d.signingPublicKeys[0] = '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n'),
      ['signingPublicKeys.0:'],
    ],
    ['bad subject kind', (d) => (d.policies[0].subjects[0].kind = 'Role'), ['policies.0.subjects.0.kind:']],
    [
      'ServiceAccount without namespace',
      (d) => (d.policies[0].subjects[2] = { kind: 'ServiceAccount', name: 'ci' }),
      ['policies.0.subjects.2.namespace:'],
    ],
    ['User with namespace', (d) => (d.policies[0].subjects[0].namespace = 'x'), ['policies.0.subjects.0.namespace']],
    ['no subjects', (d) => (d.policies[0].subjects = []), ['policies.0.subjects:']],
    ['no rules', (d) => (d.policies[0].rules = []), ['policies.0.rules:']],
    ['bad action', (d) => (d.policies[0].rules[0].action = 'allow'), ['policies.0.rules.0.action:']],
    ['bad range 9-3', (d) => (d.policies[0].rules[0].ports = ['9-3']), ['policies.0.rules.0.ports.0:', '9-3']],
    ['range above 65535', (d) => (d.policies[0].rules[0].ports = ['1-70000']), ['policies.0.rules.0.ports.0:']],
    ['range from 0', (d) => (d.policies[0].rules[0].ports = ['0-10']), ['policies.0.rules.0.ports.0:']],
    ['range garbage', (d) => (d.policies[0].rules[0].ports = [22, 'http']), ['policies.0.rules.0.ports.1:']],
    ['rule port 0', (d) => (d.policies[0].rules[0].ports = [0]), ['policies.0.rules.0.ports.0:']],
    ['rule port 70000', (d) => (d.policies[0].rules[0].ports = [70000]), ['policies.0.rules.0.ports.0:']],
    ['bad path', (d) => (d.policies[0].rules[0].paths = ['P2P']), ['policies.0.rules.0.paths.0:']],
    ['host with inner wildcard', (d) => (d.policies[0].rules[0].hosts = ['a.*.com']), ['policies.0.rules.0.hosts.0:']],
    ['host bare "*."', (d) => (d.policies[0].rules[0].hosts = ['*.']), ['policies.0.rules.0.hosts.0:']],
    ['agents {} without names or selector', (d) => (d.policies[0].rules[0].agents = {}), ['policies.0.rules.0.agents:']],
    [
      'agent name pattern in names',
      (d) => (d.policies[0].rules[0].agents.names = ['post*']),
      ['policies.0.rules.0.agents.names.0:'],
    ],
    [
      'In without values',
      (d) => (d.policies[0].rules[0].agents.selector.matchExpressions[0].values = []),
      ['policies.0.rules.0.agents.selector.matchExpressions.0.values:'],
    ],
    [
      'Exists with values',
      (d) => (d.policies[0].rules[0].agents.selector.matchExpressions[2].values = ['x']),
      ['policies.0.rules.0.agents.selector.matchExpressions.2.values:'],
    ],
    [
      'bad operator',
      (d) => (d.policies[0].rules[0].agents.selector.matchExpressions[0].operator = 'Equals'),
      ['policies.0.rules.0.agents.selector.matchExpressions.0.operator:'],
    ],
    ['expiresAt not ISO', (d) => (d.policies[0].expiresAt = 'tomorrow'), ['policies.0.expiresAt:']],
    ['expiresAt without offset', (d) => (d.policies[0].expiresAt = '2030-01-01T00:00:00'), ['policies.0.expiresAt:']],
    [
      'duplicate policy',
      (d) => d.policies.push(structuredClone(d.policies[0])),
      ['policies.1.name:', 'duplicate policy data/devs-to-db'],
    ],
    ['allowCrossNamespacePolicies as string', (d) => (d.allowCrossNamespacePolicies = 'yes'), ['allowCrossNamespacePolicies:']],
  ];

  for (const [name, edit, fragments] of cases) {
    it(name, () => {
      expectInvalid(edited(edit), ...fragments);
    });
  }

  it('lists every issue, one per line', () => {
    const err = expectInvalid(
      edited((d) => {
        d.agents[0].expose[0].port = 0;
        d.policies[0].rules[0].ports = ['9-3'];
        d.typo = 1;
      }),
    );
    const lines = err.message.split('\n').slice(1);
    assert.deepEqual(
      lines.map((l) => l.slice(0, l.indexOf(':'))).sort(),
      ['agents.0.expose.0.port', 'policies.0.rules.0.ports.0', 'typo'].sort(),
    );
  });

  it('reports the root of a non-object', () => {
    expectInvalid(null, '(root):');
  });
});

describe('gateway config: token rules text (the operator\'s --gateway-token-rules)', () => {
  it('parses a valid section', () => {
    assert.deepEqual(parseGatewayTokenRules('{"maxLifetimeSeconds":{"agent":86400},"deny":{"sub":["bob"]}}'), {
      maxLifetimeSeconds: { agent: 86400 },
      deny: { sub: ['bob'] },
    });
  });
  it('refuses bad JSON with CONFIG_PARSE and a bad section with CONFIG_INVALID naming the field', () => {
    assert.throws(() => parseGatewayTokenRules('{'), (e: unknown) => e instanceof ConfigError && e.code === ErrorCode.CONFIG_PARSE);
    assert.throws(
      () => parseGatewayTokenRules('{"maxLifetimeSeconds":{"client":5}}'),
      (e: unknown) => e instanceof ConfigError && e.code === ErrorCode.CONFIG_INVALID && /maxLifetimeSeconds\.client/.test(e.message),
    );
    assert.throws(() => parseGatewayTokenRules('{"deny":{"ip":["x"]}}'), (e: unknown) => e instanceof ConfigError && e.code === ErrorCode.CONFIG_INVALID);
  });
});
