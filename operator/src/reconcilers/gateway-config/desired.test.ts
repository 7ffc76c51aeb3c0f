import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { ConfigError, ErrorCode, GATEWAY_CONFIG_SECRET_KEY, parseGatewayConfig } from '@narrowlink/protocol';
import type { AccessPolicy } from '../../crds/access-policy.ts';
import type { NarrowlinkAgent } from '../../crds/narrowlink-agent.ts';
import { LABEL_COMPONENT, LABEL_MANAGED_BY } from '../../labels.ts';
import { makeAgent, makePolicy } from '../test-fixtures.ts';
import {
  CONFIG_HASH_ANNOTATION,
  desiredGatewayConfig,
  type GatewayConfigInput,
  gatewayConfigSecret,
  type Problem,
  renderGatewayConfig,
} from './desired.ts';

const KEY_A = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();
const KEY_B = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();
const NOW = Date.parse('2025-06-01T00:00:00Z');

function input(agents: NarrowlinkAgent[], policies: AccessPolicy[] = [], extra: Partial<GatewayConfigInput> = {}): GatewayConfigInput {
  return { agents, policies, signingPublicKeys: [KEY_A], allowCrossNamespacePolicies: false, nowMs: NOW, ...extra };
}

function secretBytes(i: GatewayConfigInput): string {
  const secret = gatewayConfigSecret(desiredGatewayConfig(i).config, { namespace: 'narrowlink', name: 'gateway-config' });
  return JSON.stringify(secret);
}

describe('desiredGatewayConfig', () => {
  it('renders agents and policies into the document the gateway loads', () => {
    const agents = [
      makeAgent('web', { expose: [{ name: 'http', port: 8080 }], mode: 'relay' }, { labels: { tier: 'web', app: 'shop' } }),
      makeAgent('db', { expose: [{ name: 'pg', port: 5432, host: '10.0.0.5' }] }, { namespace: 'data' }),
    ];
    const policies = [
      makePolicy('devs', {
        subjects: [
          { kind: 'Group', name: 'devs' },
          { kind: 'ServiceAccount', name: 'ci' },
        ],
        rules: [
          { action: 'Allow', agents: { selector: { matchLabels: { tier: 'web' } } }, ports: ['8080', '9000-9100'] },
          { action: 'Deny', agents: { names: ['db'] }, paths: ['Direct'] },
        ],
        expiresAt: '2030-01-01T01:00:00+01:00',
      }),
    ];
    const out = desiredGatewayConfig(input(agents, policies));
    assert.deepEqual(out.problems, []);
    assert.deepEqual(out.config, {
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'GatewayConfig',
      audience: 'narrowlink',
      signingPublicKeys: [KEY_A],
      allowCrossNamespacePolicies: false,
      agents: [
        { name: 'db', namespace: 'data', labels: {}, mode: 'auto', expose: [{ name: 'pg', port: 5432, host: '10.0.0.5' }], serviceAccounts: [] },
        {
          name: 'web',
          namespace: 'default',
          labels: { app: 'shop', tier: 'web' },
          mode: 'relay',
          expose: [{ name: 'http', port: 8080, host: '127.0.0.1' }],
          serviceAccounts: [],
        },
      ],
      policies: [
        {
          name: 'devs',
          namespace: 'default',
          expiresAt: '2030-01-01T00:00:00.000Z',
          subjects: [
            { kind: 'Group', name: 'devs' },
            { kind: 'ServiceAccount', name: 'ci', namespace: 'default' },
          ],
          rules: [
            { action: 'Allow', agents: { selector: { matchLabels: { tier: 'web' } } }, ports: [8080, '9000-9100'] },
            { action: 'Deny', agents: { names: ['db'] }, paths: ['Direct'] },
          ],
        },
      ],
    });
    assert.equal(out.nextExpiryMs, Date.parse('2030-01-01T00:00:00Z'));
    // What the gateway reads back from the Secret is exactly this document.
    assert.deepEqual(parseGatewayConfig(renderGatewayConfig(out.config)), out.config);
  });

  it('passes allowCrossNamespacePolicies through and dedupes and sorts signing keys', () => {
    const out = desiredGatewayConfig(input([], [], { signingPublicKeys: [KEY_B, KEY_A, KEY_B], allowCrossNamespacePolicies: true }));
    assert.deepEqual(out.config.signingPublicKeys, [KEY_A, KEY_B].sort());
    assert.equal(out.config.allowCrossNamespacePolicies, true);
  });

  it('renders the chart\'s token rules with denylists deduplicated and sorted, and leaves them out when unset', () => {
    const out = desiredGatewayConfig(
      input([], [], { tokenRules: { maxLifetimeSeconds: { client: 3600 }, deny: { jti: ['b', 'a', 'b'], sub: ['mallory'] } } }),
    );
    assert.deepEqual(out.config.tokens, { maxLifetimeSeconds: { client: 3600 }, deny: { jti: ['a', 'b'], sub: ['mallory'] } });
    assert.deepEqual(parseGatewayConfig(renderGatewayConfig(out.config)).tokens, out.config.tokens, 'the gateway reads them back');
    assert.equal(desiredGatewayConfig(input([], [])).config.tokens, undefined);
  });

  const agentCases: Array<{ name: string; agent: NarrowlinkAgent; reason: Problem['reason']; message: RegExp }> = [
    { name: 'name with a dot', agent: makeAgent('web.v2'), reason: 'InvalidName', message: /^metadata\.name: / },
    { name: 'name longer than 63', agent: makeAgent('a'.repeat(64)), reason: 'InvalidName', message: /^metadata\.name: .*63/ },
    {
      name: 'duplicate exposed port',
      agent: makeAgent('web', {
        expose: [
          { name: 'http', port: 8080 },
          { name: 'alt', port: 8080 },
        ],
      }),
      reason: 'InvalidSpec',
      message: /^spec\.expose\[1\]\.port: duplicate port 8080$/,
    },
    {
      name: 'bad port name (schema bypassed)',
      agent: makeAgent('web', { expose: [{ name: '80', port: 80 }] }),
      reason: 'InvalidSpec',
      message: /^spec\.expose\[0\]\.name: must contain at least one letter$/,
    },
    {
      name: 'publish port not exposed',
      agent: makeAgent('web', { publish: [{ domain: 'web.example.com', port: 9999 }] }),
      reason: 'PublishPortNotExposed',
      message: /^spec\.publish\[0\]\.port: port 9999 is not in spec\.expose$/,
    },
    {
      name: 'duplicate published domain',
      agent: makeAgent('web', {
        publish: [
          { domain: 'web.example.com', port: 8080 },
          { domain: 'web.example.com', port: 8080, tls: 'Passthrough' },
        ],
      }),
      reason: 'InvalidSpec',
      message: /^spec\.publish\[1\]\.domain: duplicate domain "web\.example\.com"$/,
    },
  ];
  for (const c of agentCases) {
    it(`leaves out and reports an agent: ${c.name}`, () => {
      const good = makeAgent('good');
      const out = desiredGatewayConfig(input([c.agent, good]));
      assert.deepEqual(
        out.config.agents.map((a) => a.name),
        ['good'],
      );
      assert.equal(out.problems.length, 1);
      const [p] = out.problems;
      assert.equal(p?.kind, 'NarrowlinkAgent');
      assert.equal(p?.name, c.agent.metadata.name);
      assert.equal(p?.namespace, 'default');
      assert.equal(p?.reason, c.reason);
      assert.match(p?.message ?? '', c.message);
    });
  }

  const policyCases: Array<{ name: string; policy: AccessPolicy; message: RegExp }> = [
    {
      name: 'namespace on a User subject',
      policy: makePolicy('p', { subjects: [{ kind: 'User', name: 'alice', namespace: 'x' }] }),
      message: /^spec\.subjects\[0\]\.namespace: only allowed for kind ServiceAccount, not User$/,
    },
    {
      name: 'In without values',
      policy: makePolicy('p', {
        rules: [{ action: 'Allow', agents: { selector: { matchExpressions: [{ key: 'tier', operator: 'In' }] } } }],
      }),
      message: /^spec\.rules\[0\]\.agents\.selector\.matchExpressions\[0\]\.values: must be non-empty for operator In$/,
    },
    {
      name: 'inverted port range',
      policy: makePolicy('p', { rules: [{ action: 'Allow', ports: ['9000-8000'] }] }),
      message: /^spec\.rules\[0\]\.ports\[0\]: invalid port range "9000-8000"/,
    },
    {
      name: 'port range above 65535',
      policy: makePolicy('p', { rules: [{ action: 'Allow', ports: ['1-99999'] }] }),
      message: /^spec\.rules\[0\]\.ports\[0\]: invalid port range/,
    },
    {
      name: 'agents with neither names nor selector',
      policy: makePolicy('p', { rules: [{ action: 'Allow', agents: {} }] }),
      message: /^spec\.rules\[0\]\.agents: must set names or selector/,
    },
    {
      name: 'unparseable expiresAt',
      policy: makePolicy('p', { expiresAt: 'next tuesday' }),
      message: /^spec\.expiresAt: "next tuesday" is not an RFC 3339 date-time$/,
    },
  ];
  for (const c of policyCases) {
    it(`leaves out and reports a policy: ${c.name}`, () => {
      const out = desiredGatewayConfig(input([makeAgent('web')], [c.policy, makePolicy('good')]));
      assert.deepEqual(
        out.config.policies.map((p) => p.name),
        ['good'],
      );
      assert.deepEqual(
        out.problems.map((p) => [p.kind, p.namespace, p.name, p.reason]),
        [['AccessPolicy', 'default', 'p', 'InvalidSpec']],
      );
      assert.match(out.problems[0]?.message ?? '', c.message);
    });
  }

  it('gives a published domain to the oldest claim, whatever the input order', () => {
    const older = makeAgent('old', { publish: [{ domain: 'shop.example.com', port: 8080 }] }, { namespace: 'b', creationTimestamp: '2025-01-01T00:00:00Z' });
    const newer = makeAgent('new', { publish: [{ domain: 'shop.example.com', port: 8080 }] }, { namespace: 'a', creationTimestamp: '2025-02-01T00:00:00Z' });
    for (const agents of [
      [older, newer],
      [newer, older],
    ]) {
      const out = desiredGatewayConfig(input(agents));
      assert.deepEqual(
        out.config.agents.map((a) => `${a.namespace}/${a.name}`),
        ['b/old'],
      );
      assert.deepEqual(out.problems, [
        {
          kind: 'NarrowlinkAgent',
          namespace: 'a',
          name: 'new',
          reason: 'DomainConflict',
          message: 'spec.publish[0].domain: domain "shop.example.com" is already published by NarrowlinkAgent b/old',
        },
      ]);
    }
  });

  it('leaves out objects being deleted without reporting them', () => {
    const deleting = { deletionTimestamp: '2025-06-01T00:00:00Z' };
    const out = desiredGatewayConfig(
      input(
        [makeAgent('gone', { publish: [{ domain: 'x.example.com', port: 8080 }] }, deleting), makeAgent('web', { publish: [{ domain: 'x.example.com', port: 8080 }] })],
        [makePolicy('gone', {}, deleting)],
      ),
    );
    assert.deepEqual(
      out.config.agents.map((a) => a.name),
      ['web'],
      'a deleting agent neither appears nor keeps its domain claim',
    );
    assert.deepEqual(out.config.policies, []);
    assert.deepEqual(out.problems, []);
  });

  it('keeps expired policies (the gateway ignores them at expiresAt) and reports them and the next expiry', () => {
    const policies = [
      makePolicy('expired', { expiresAt: '2025-05-31T23:59:59Z' }),
      makePolicy('exactly-now', { expiresAt: new Date(NOW).toISOString() }),
      makePolicy('later', { expiresAt: '2025-06-02T00:00:00Z' }),
      makePolicy('soon', { expiresAt: '2025-06-01T00:00:01Z' }),
      makePolicy('forever'),
    ];
    const out = desiredGatewayConfig(input([], policies));
    assert.deepEqual(
      out.config.policies.map((p) => p.name),
      ['exactly-now', 'expired', 'forever', 'later', 'soon'],
    );
    assert.deepEqual(out.expiredPolicies, [
      { namespace: 'default', name: 'exactly-now' },
      { namespace: 'default', name: 'expired' },
    ]);
    assert.equal(out.nextExpiryMs, NOW + 1000);
    assert.equal(desiredGatewayConfig(input([], [makePolicy('forever')])).nextExpiryMs, undefined);
  });

  it('renders identical bytes whatever the order of objects, labels and keys', () => {
    const a1 = makeAgent('a', {}, { labels: { z: '1', a: '2' } });
    const a2 = makeAgent('b', {}, { namespace: 'other' });
    const a1Reordered = { ...a1, metadata: { ...a1.metadata, labels: { a: '2', z: '1' } } };
    const p1 = makePolicy('p1', { rules: [{ action: 'Allow', agents: { selector: { matchLabels: { y: '1', b: '2' } } } }] });
    const p2 = makePolicy('p2', {}, { namespace: 'other' });
    const first = secretBytes(input([a1, a2], [p1, p2], { signingPublicKeys: [KEY_A, KEY_B] }));
    const second = secretBytes(input([a2, a1Reordered], [p2, p1], { signingPublicKeys: [KEY_B, KEY_A] }));
    assert.equal(first, second);
  });

  it('fails as a whole only on the operator inputs: no signing key, bad signing key', () => {
    for (const signingPublicKeys of [[], ['not a key']]) {
      assert.throws(
        () => desiredGatewayConfig(input([makeAgent('web')], [], { signingPublicKeys })),
        (err: unknown) => err instanceof ConfigError && err.code === ErrorCode.CONFIG_INVALID,
      );
    }
  });
});

describe('gatewayConfigSecret', () => {
  const config = desiredGatewayConfig(input([makeAgent('web')], [makePolicy('devs')])).config;

  it('carries the config YAML the gateway parses back to the same document', () => {
    const secret = gatewayConfigSecret(config, { namespace: 'narrowlink', name: 'gateway-config' });
    assert.equal(secret.apiVersion, 'v1');
    assert.equal(secret.kind, 'Secret');
    assert.equal(secret.type, 'Opaque');
    assert.deepEqual(Object.keys(secret.data ?? {}), [GATEWAY_CONFIG_SECRET_KEY]);
    assert.equal(secret.metadata.name, 'gateway-config');
    assert.equal(secret.metadata.namespace, 'narrowlink');
    assert.equal(secret.metadata.labels?.[LABEL_MANAGED_BY], 'narrowlink-operator');
    assert.equal(secret.metadata.labels?.[LABEL_COMPONENT], 'gateway-config');
    const text = Buffer.from(secret.data?.[GATEWAY_CONFIG_SECRET_KEY] ?? '', 'base64').toString('utf8');
    assert.deepEqual(parseGatewayConfig(text), config);
  });

  it('changes its content hash exactly when the content changes', () => {
    const hash = (c: typeof config) =>
      gatewayConfigSecret(c, { namespace: 'n', name: 's' }).metadata.annotations?.[CONFIG_HASH_ANNOTATION];
    const again = desiredGatewayConfig(input([makeAgent('web')], [makePolicy('devs')])).config;
    const changed = desiredGatewayConfig(input([makeAgent('web', { mode: 'relay' })], [makePolicy('devs')])).config;
    assert.match(hash(config) ?? '', /^[0-9a-f]{64}$/);
    assert.equal(hash(again), hash(config));
    assert.notEqual(hash(changed), hash(config));
  });
});
