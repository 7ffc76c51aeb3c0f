import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { type AgentConfig, type GatewayConfig, validateGatewayConfig } from './gateway-config.ts';
import { compilePolicy, type Decision, type Identity, labelSelectorMatches } from './policy.ts';

const NOW_MS = Date.parse('2025-06-01T12:00:00Z');
const KEY = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();

/** Agents shared by every case. */
const AGENTS = [
  {
    name: 'postgres',
    namespace: 'data',
    labels: { app: 'postgres', tier: 'db', env: 'staging' },
    expose: [
      { name: 'pg', port: 5432 },
      { name: 'metrics', port: 9187, host: '10.0.0.5' },
    ],
  },
  { name: 'redis', namespace: 'data', labels: { app: 'redis', tier: 'cache' }, expose: [{ name: 'redis', port: 6379 }] },
  {
    name: 'mongo',
    namespace: 'data',
    labels: { app: 'mongo', tier: 'db', env: 'prod' },
    expose: [{ name: 'mongo', port: 27017 }],
  },
  {
    name: 'frontend',
    namespace: 'web',
    labels: { app: 'web' },
    expose: [
      { name: 'http', port: 8080 },
      { name: 'https', port: 8443 },
      { name: 'api', port: 8001, host: 'api.svc.cluster.local' },
    ],
  },
];

function config(policies: unknown[], extra: Record<string, unknown> = {}): GatewayConfig {
  return validateGatewayConfig({
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'GatewayConfig',
    signingPublicKeys: [KEY],
    agents: AGENTS,
    policies,
    ...extra,
  });
}

function agent(cfg: GatewayConfig, ns: string, name: string): AgentConfig {
  const a = cfg.agents.find((x) => x.namespace === ns && x.name === name);
  assert.ok(a, `no agent ${ns}/${name}`);
  return a;
}

const ALICE: Identity = { sub: 'alice', groups: ['dev'] };
const BOB: Identity = { sub: 'bob', groups: ['ops'] };
const CI_SA: Identity = { sub: 'system:serviceaccount:build:ci', groups: ['system:serviceaccounts'] };

const alice = [{ kind: 'User', name: 'alice' }];
const allowAll = [{ action: 'Allow' }];

/** A policy in namespace `data` (unless overridden) named `p`. */
function pol(subjects: unknown[], rules: unknown[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name: 'p', namespace: 'data', subjects, rules, ...extra };
}

const ALLOW_P0: Decision = { allowed: true, policy: 'data/p', rule: 0 };
const NO_MATCH: Decision = { allowed: false, reason: 'NoMatchingRule' };

interface Case {
  name: string;
  policies: unknown[];
  identity?: Identity;
  /** `<ns>/<name>`; default data/postgres. */
  agent?: string;
  host?: string;
  /** Default 5432. */
  port?: number;
  path?: 'Direct' | 'Relay';
  cross?: boolean;
  expect: Decision;
}

const CASES: Case[] = [
  // Subjects
  { name: 'User subject matches sub', policies: [pol(alice, allowAll)], expect: ALLOW_P0 },
  { name: 'User subject, other user', policies: [pol(alice, allowAll)], identity: BOB, expect: NO_MATCH },
  { name: 'Group subject matches membership', policies: [pol([{ kind: 'Group', name: 'dev' }], allowAll)], expect: ALLOW_P0 },
  { name: 'Group subject, not a member', policies: [pol([{ kind: 'Group', name: 'dev' }], allowAll)], identity: BOB, expect: NO_MATCH },
  {
    name: 'Group subject does not match a user named like the group',
    policies: [pol([{ kind: 'Group', name: 'bob' }], allowAll)],
    identity: BOB,
    expect: NO_MATCH,
  },
  {
    name: 'ServiceAccount subject matches system:serviceaccount:<ns>:<name>',
    policies: [pol([{ kind: 'ServiceAccount', name: 'ci', namespace: 'build' }], allowAll)],
    identity: CI_SA,
    expect: ALLOW_P0,
  },
  {
    name: 'ServiceAccount subject in another namespace',
    policies: [pol([{ kind: 'ServiceAccount', name: 'ci', namespace: 'data' }], allowAll)],
    identity: CI_SA,
    expect: NO_MATCH,
  },
  {
    name: 'User subject named like the SA name does not match the SA',
    policies: [pol([{ kind: 'User', name: 'ci' }], allowAll)],
    identity: CI_SA,
    expect: NO_MATCH,
  },
  {
    name: 'second subject of a list matches',
    policies: [pol([{ kind: 'User', name: 'carol' }, { kind: 'Group', name: 'ops' }], allowAll)],
    identity: BOB,
    expect: ALLOW_P0,
  },

  // Agent selection
  { name: 'names contains the agent', policies: [pol(alice, [{ action: 'Allow', agents: { names: ['postgres'] } }])], expect: ALLOW_P0 },
  { name: 'names without the agent', policies: [pol(alice, [{ action: 'Allow', agents: { names: ['redis'] } }])], expect: NO_MATCH },
  { name: "names '*'", policies: [pol(alice, [{ action: 'Allow', agents: { names: ['*'] } }])], agent: 'data/mongo', port: 27017, expect: ALLOW_P0 },
  {
    name: 'matchLabels all equal',
    policies: [pol(alice, [{ action: 'Allow', agents: { selector: { matchLabels: { app: 'postgres', tier: 'db' } } } }])],
    expect: ALLOW_P0,
  },
  {
    name: 'matchLabels one differs',
    policies: [pol(alice, [{ action: 'Allow', agents: { selector: { matchLabels: { app: 'postgres', tier: 'cache' } } } }])],
    expect: NO_MATCH,
  },
  {
    name: 'In: value listed',
    policies: [pol(alice, [{ action: 'Allow', agents: { selector: { matchExpressions: [{ key: 'env', operator: 'In', values: ['dev', 'staging'] }] } } }])],
    expect: ALLOW_P0,
  },
  {
    name: 'In: label absent',
    policies: [pol(alice, [{ action: 'Allow', agents: { selector: { matchExpressions: [{ key: 'env', operator: 'In', values: ['staging'] }] } } }])],
    agent: 'data/redis',
    port: 6379,
    expect: NO_MATCH,
  },
  {
    name: 'NotIn: label absent matches',
    policies: [pol(alice, [{ action: 'Allow', agents: { selector: { matchExpressions: [{ key: 'env', operator: 'NotIn', values: ['prod'] }] } } }])],
    agent: 'data/redis',
    port: 6379,
    expect: ALLOW_P0,
  },
  {
    name: 'NotIn: value listed',
    policies: [pol(alice, [{ action: 'Allow', agents: { selector: { matchExpressions: [{ key: 'env', operator: 'NotIn', values: ['prod'] }] } } }])],
    agent: 'data/mongo',
    port: 27017,
    expect: NO_MATCH,
  },
  {
    name: 'Exists: present',
    policies: [pol(alice, [{ action: 'Allow', agents: { selector: { matchExpressions: [{ key: 'env', operator: 'Exists' }] } } }])],
    expect: ALLOW_P0,
  },
  {
    name: 'Exists: absent',
    policies: [pol(alice, [{ action: 'Allow', agents: { selector: { matchExpressions: [{ key: 'env', operator: 'Exists' }] } } }])],
    agent: 'data/redis',
    port: 6379,
    expect: NO_MATCH,
  },
  {
    name: 'DoesNotExist: absent',
    policies: [pol(alice, [{ action: 'Allow', agents: { selector: { matchExpressions: [{ key: 'env', operator: 'DoesNotExist' }] } } }])],
    agent: 'data/redis',
    port: 6379,
    expect: ALLOW_P0,
  },
  {
    name: 'DoesNotExist: present',
    policies: [pol(alice, [{ action: 'Allow', agents: { selector: { matchExpressions: [{ key: 'env', operator: 'DoesNotExist' }] } } }])],
    expect: NO_MATCH,
  },
  {
    name: 'matchLabels and matchExpressions are ANDed',
    policies: [
      pol(alice, [
        {
          action: 'Allow',
          agents: { selector: { matchLabels: { tier: 'db' }, matchExpressions: [{ key: 'env', operator: 'NotIn', values: ['prod'] }] } },
        },
      ]),
    ],
    agent: 'data/mongo',
    port: 27017,
    expect: NO_MATCH,
  },
  {
    name: 'names OR selector: not named but selected',
    policies: [pol(alice, [{ action: 'Allow', agents: { names: ['redis'], selector: { matchLabels: { tier: 'db' } } } }])],
    agent: 'data/mongo',
    port: 27017,
    expect: ALLOW_P0,
  },
  {
    name: 'empty selector selects every agent (Kubernetes semantics)',
    policies: [pol(alice, [{ action: 'Allow', agents: { selector: {} } }])],
    agent: 'data/redis',
    port: 6379,
    expect: ALLOW_P0,
  },

  // Ports
  { name: 'port number listed', policies: [pol(alice, [{ action: 'Allow', ports: [22, 5432] }])], expect: ALLOW_P0 },
  { name: 'port number not listed', policies: [pol(alice, [{ action: 'Allow', ports: [5433] }])], expect: NO_MATCH },
  { name: 'port range contains', policies: [pol(alice, [{ action: 'Allow', ports: ['5000-6000'] }])], expect: ALLOW_P0 },
  { name: 'port range lower bound inclusive', policies: [pol(alice, [{ action: 'Allow', ports: ['5432-5432'] }])], expect: ALLOW_P0 },
  {
    name: 'port range upper bound inclusive',
    policies: [pol(alice, [{ action: 'Allow', ports: ['6000-6379'] }])],
    agent: 'data/redis',
    port: 6379,
    expect: ALLOW_P0,
  },
  { name: 'port outside range', policies: [pol(alice, [{ action: 'Allow', ports: ['5433-6000'] }])], expect: NO_MATCH },

  // Hosts
  {
    name: 'host exact',
    policies: [pol(alice, [{ action: 'Allow', hosts: ['10.0.0.5'] }])],
    host: '10.0.0.5',
    port: 9187,
    expect: ALLOW_P0,
  },
  {
    name: 'host exact is case-insensitive and ignores a trailing dot',
    policies: [pol(alice, [{ action: 'Allow', hosts: ['API.svc.cluster.local.'] }], { namespace: 'web' })],
    agent: 'web/frontend',
    host: 'api.SVC.cluster.local',
    port: 8001,
    expect: { allowed: true, policy: 'web/p', rule: 0 },
  },
  {
    name: 'host exact mismatch',
    policies: [pol(alice, [{ action: 'Allow', hosts: ['localhost'] }])],
    expect: NO_MATCH,
  },
  {
    name: 'host glob matches subdomain',
    policies: [pol(alice, [{ action: 'Allow', hosts: ['*.Cluster.Local'] }], { namespace: 'web' })],
    agent: 'web/frontend',
    host: 'API.svc.cluster.local',
    port: 8001,
    expect: { allowed: true, policy: 'web/p', rule: 0 },
  },
  {
    name: 'host glob does not match its apex or a lookalike',
    policies: [pol(alice, [{ action: 'Allow', hosts: ['*.svc.cluster.local', '*.1'] }], { namespace: 'web' })],
    agent: 'web/frontend',
    host: '127.0.0.1',
    port: 8080,
    expect: NO_MATCH,
  },
  { name: "host '*'", policies: [pol(alice, [{ action: 'Allow', hosts: ['*'] }])], expect: ALLOW_P0 },

  // Paths
  { name: 'paths Relay, Relay requested', policies: [pol(alice, [{ action: 'Allow', paths: ['Relay'] }])], path: 'Relay', expect: ALLOW_P0 },
  { name: 'paths Relay, Direct requested', policies: [pol(alice, [{ action: 'Allow', paths: ['Relay'] }])], path: 'Direct', expect: NO_MATCH },
  { name: 'paths absent allows Direct', policies: [pol(alice, allowAll)], path: 'Direct', expect: ALLOW_P0 },

  // Combination
  {
    name: 'every condition present and satisfied',
    policies: [pol(alice, [{ action: 'Allow', agents: { names: ['postgres'] }, ports: ['5400-5500'], hosts: ['127.0.0.1'], paths: ['Direct'] }])],
    path: 'Direct',
    expect: ALLOW_P0,
  },
  {
    name: 'every condition present, one fails',
    policies: [pol(alice, [{ action: 'Allow', agents: { names: ['postgres'] }, ports: ['5400-5500'], hosts: ['127.0.0.1'], paths: ['Direct'] }])],
    path: 'Relay',
    expect: NO_MATCH,
  },

  // Deny / default deny / reporting
  {
    name: 'deny wins over an earlier allow in the same policy',
    policies: [pol(alice, [{ action: 'Allow' }, { action: 'Deny', ports: [5432] }])],
    expect: { allowed: false, reason: 'DeniedByRule', policy: 'data/p', rule: 1 },
  },
  {
    name: 'deny wins across policies',
    policies: [
      pol(alice, allowAll, { name: 'allow' }),
      pol([{ kind: 'Group', name: 'dev' }], [{ action: 'Deny', agents: { selector: { matchLabels: { tier: 'db' } } } }], { name: 'deny-db' }),
    ],
    expect: { allowed: false, reason: 'DeniedByRule', policy: 'data/deny-db', rule: 0 },
  },
  {
    name: 'deny on another port does not affect this one',
    policies: [pol(alice, [{ action: 'Deny', ports: [9187] }, { action: 'Allow' }])],
    expect: { allowed: true, policy: 'data/p', rule: 1 },
  },
  {
    name: 'deny of a policy for another subject does not apply',
    policies: [pol(alice, allowAll, { name: 'a' }), pol([{ kind: 'User', name: 'bob' }], [{ action: 'Deny' }], { name: 'b' })],
    expect: { allowed: true, policy: 'data/a', rule: 0 },
  },
  {
    name: 'first matching allow is reported',
    policies: [pol(alice, [{ action: 'Allow', ports: [1] }], { name: 'a' }), pol(alice, [{ action: 'Allow', ports: [1] }, { action: 'Allow' }, { action: 'Allow' }], { name: 'b' })],
    expect: { allowed: true, policy: 'data/b', rule: 1 },
  },
  { name: 'default deny with no policies', policies: [], expect: NO_MATCH },

  // Expiry
  { name: 'expired policy ignored', policies: [pol(alice, allowAll, { expiresAt: '2025-06-01T11:59:59Z' })], expect: NO_MATCH },
  { name: 'policy expiring exactly now is ignored', policies: [pol(alice, allowAll, { expiresAt: '2025-06-01T12:00:00Z' })], expect: NO_MATCH },
  {
    name: 'expired deny no longer blocks',
    policies: [pol(alice, allowAll, { name: 'a' }), pol(alice, [{ action: 'Deny' }], { name: 'd', expiresAt: '2025-01-01T00:00:00Z' })],
    expect: { allowed: true, policy: 'data/a', rule: 0 },
  },
  { name: 'unexpired policy applies (offset form)', policies: [pol(alice, allowAll, { expiresAt: '2025-06-01T14:00:01+02:00' })], expect: ALLOW_P0 },

  // Namespace scope
  {
    name: 'cross-namespace off: policy in web cannot reach data',
    policies: [pol(alice, allowAll, { namespace: 'web' })],
    expect: NO_MATCH,
  },
  {
    name: 'cross-namespace off: deny in web does not reach data either',
    policies: [pol(alice, allowAll, { name: 'a' }), pol(alice, [{ action: 'Deny' }], { name: 'd', namespace: 'web' })],
    expect: { allowed: true, policy: 'data/a', rule: 0 },
  },
  {
    name: 'cross-namespace on: policy in web reaches data',
    policies: [pol(alice, allowAll, { namespace: 'web' })],
    cross: true,
    expect: { allowed: true, policy: 'web/p', rule: 0 },
  },

  // Exposure
  { name: 'unexposed port with allow-all', policies: [pol(alice, allowAll)], port: 5433, expect: { allowed: false, reason: 'PortNotExposed' } },
  {
    name: 'exposed port on another host',
    policies: [pol(alice, allowAll)],
    port: 9187,
    host: '127.0.0.1',
    expect: { allowed: false, reason: 'PortNotExposed' },
  },
  { name: 'unexposed port with no policies', policies: [], port: 1, expect: { allowed: false, reason: 'PortNotExposed' } },
];

describe('CompiledPolicy.evaluate', () => {
  for (const c of CASES) {
    it(c.name, () => {
      const cfg = config(c.policies, c.cross === undefined ? {} : { allowCrossNamespacePolicies: c.cross });
      const [ns = '', name = ''] = (c.agent ?? 'data/postgres').split('/');
      const compiled = compilePolicy(cfg, c.identity ?? ALICE, NOW_MS);
      const decision = compiled.evaluate({
        agent: agent(cfg, ns, name),
        host: c.host ?? '127.0.0.1',
        port: c.port ?? 5432,
        path: c.path ?? 'Relay',
      });
      assert.deepEqual(decision, c.expect);
    });
  }
  it('has at least 25 table cases', () => assert.ok(CASES.length >= 25));
});

describe('compilePolicy', () => {
  it('keeps only applicable, unexpired policies and reports the earliest expiry among them', () => {
    const cfg = config([
      pol(alice, allowAll, { name: 'late', expiresAt: '2025-06-03T00:00:00Z' }),
      pol(alice, allowAll, { name: 'expired', expiresAt: '2025-05-01T00:00:00Z' }),
      pol([{ kind: 'User', name: 'bob' }], allowAll, { name: 'bobs', expiresAt: '2025-06-01T13:00:00Z' }),
      pol(alice, allowAll, { name: 'soon', expiresAt: '2025-06-02T00:00:00Z' }),
      pol(alice, allowAll, { name: 'forever' }),
    ]);
    const compiled = compilePolicy(cfg, ALICE, NOW_MS);
    assert.deepEqual(compiled.policyIds, ['data/late', 'data/soon', 'data/forever']);
    assert.equal(compiled.nextExpiryMs, Date.parse('2025-06-02T00:00:00Z'));
    // Recompiling at that instant drops the policy and moves the deadline on.
    const later = compilePolicy(cfg, ALICE, Date.parse('2025-06-02T00:00:00Z'));
    assert.deepEqual(later.policyIds, ['data/late', 'data/forever']);
    assert.equal(later.nextExpiryMs, Date.parse('2025-06-03T00:00:00Z'));
  });

  it('nextExpiryMs is undefined when nothing kept expires', () => {
    assert.equal(compilePolicy(config([pol(alice, allowAll)]), ALICE, NOW_MS).nextExpiryMs, undefined);
    assert.equal(compilePolicy(config([]), ALICE, NOW_MS).nextExpiryMs, undefined);
  });
});

describe('CompiledPolicy.visibleAgents', () => {
  it('lists agents with at least one reachable port, with only those ports', () => {
    const cfg = config(
      [
        pol(alice, [{ action: 'Allow', agents: { selector: { matchLabels: { tier: 'db' } } } }, { action: 'Deny', ports: [9187] }], {
          name: 'db',
        }),
        // Direct-only still counts as visible.
        pol(alice, [{ action: 'Allow', agents: { names: ['frontend'] }, ports: ['8000-8100'], paths: ['Direct'] }], {
          name: 'fe',
          namespace: 'web',
        }),
        // Someone else's policy does not leak.
        pol([{ kind: 'User', name: 'bob' }], allowAll, { name: 'bob' }),
      ],
    );
    const visible = compilePolicy(cfg, ALICE, NOW_MS).visibleAgents();
    assert.deepEqual(
      visible.map((v) => [`${v.agent.namespace}/${v.agent.name}`, v.ports.map((p) => p.name)]),
      [
        ['data/postgres', ['pg']],
        ['data/mongo', ['mongo']],
        ['web/frontend', ['http', 'api']],
      ],
    );
    // The agent objects are the config's own.
    assert.equal(visible[0]?.agent, agent(cfg, 'data', 'postgres'));
  });

  it('is empty without applicable policies', () => {
    const cfg = config([pol(alice, allowAll)]);
    assert.deepEqual(compilePolicy(cfg, BOB, NOW_MS).visibleAgents(), []);
  });

  it('respects the namespace scope', () => {
    const policies = [pol(alice, allowAll, { namespace: 'web' })];
    const names = (cross: boolean): string[] =>
      compilePolicy(config(policies, { allowCrossNamespacePolicies: cross }), ALICE, NOW_MS)
        .visibleAgents()
        .map((v) => v.agent.name);
    assert.deepEqual(names(false), ['frontend']);
    assert.deepEqual(names(true), ['postgres', 'redis', 'mongo', 'frontend']);
  });
});

describe('CompiledPolicy.canSee', () => {
  it('answers exactly as visibleAgents, agent by agent, on a generated configuration', () => {
    // 40 agents in 4 namespaces, labels and ports varied; 60 policies for users, groups and a ServiceAccount
    // with Allow and Deny rules on names, selectors, port ranges, hosts and paths. Deterministic.
    let seed = 7;
    const rnd = (n: number): number => {
      // mulberry32
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) % n;
    };
    const namespaces = ['a', 'b', 'c', 'd'];
    const agents = Array.from({ length: 40 }, (_, i) => ({
      name: `agent-${i % 13}`,
      namespace: namespaces[i % 4],
      labels: { tier: ['db', 'web', 'cache'][rnd(3)] as string },
      expose: Array.from({ length: 1 + rnd(3) }, (_, j) => ({ name: `p${j}`, port: 1000 + 7 * j + rnd(7), ...(rnd(4) === 0 ? { host: `h${rnd(3)}.svc` } : {}) })),
    })).filter((a, i, all) => all.findIndex((b) => b.name === a.name && b.namespace === a.namespace) === i);
    const subjects = [{ kind: 'User', name: 'alice' }, { kind: 'Group', name: 'dev' }, { kind: 'User', name: 'bob' }, { kind: 'ServiceAccount', namespace: 'build', name: 'ci' }];
    const policies = Array.from({ length: 60 }, (_, i) => ({
      name: `p${i}`,
      namespace: namespaces[rnd(4)],
      subjects: [subjects[rnd(4)]],
      rules: Array.from({ length: 1 + rnd(3) }, () => ({
        // A Deny always names agents, or a few blanket Denies would hide everything.
        ...(rnd(6) === 0 ? { action: 'Deny', agents: { names: [`agent-${rnd(13)}`] } } : { action: 'Allow' }),
        ...(rnd(2) ? { agents: rnd(2) ? { names: [`agent-${rnd(13)}`] } : { selector: { matchLabels: { tier: ['db', 'web', 'cache'][rnd(3)] } } } } : {}),
        ...(rnd(2) ? { ports: [`${1000 + rnd(10)}-${1010 + rnd(10)}`] } : {}),
        ...(rnd(5) === 0 ? { hosts: ['*.svc'] } : {}),
        ...(rnd(3) === 0 ? { paths: [rnd(2) ? 'Direct' : 'Relay'] } : {}),
      })),
    }));
    for (const cross of [false, true]) {
      const cfg = validateGatewayConfig({ apiVersion: 'narrowlink.io/v1alpha1', kind: 'GatewayConfig', signingPublicKeys: [KEY], agents, policies, allowCrossNamespacePolicies: cross });
      let seen = 0;
      for (const identity of [ALICE, BOB, CI_SA, { sub: 'nobody', groups: [] }]) {
        const policy = compilePolicy(cfg, identity, NOW_MS);
        const visible = new Set(policy.visibleAgents().map((v) => v.agent));
        for (const a of cfg.agents) {
          assert.equal(policy.canSee(a), visible.has(a), `${identity.sub} ${a.namespace}/${a.name} cross=${cross}`);
          // Cached: the same answer again.
          assert.equal(policy.canSee(a), visible.has(a));
        }
        seen += visible.size;
      }
      assert.ok(seen > 0 && seen < 4 * cfg.agents.length, `visible ${seen} of ${4 * cfg.agents.length}: the generated config has visible and invisible agents`);
    }
  });

  it('a Deny on every port hides the agent; direct-only keeps it visible', () => {
    const cfg = config([
      pol(alice, [{ action: 'Allow' }, { action: 'Deny', agents: { names: ['redis'] } }], { name: 'all' }),
      pol(alice, [{ action: 'Allow', agents: { names: ['frontend'] }, paths: ['Direct'] }], { name: 'fe', namespace: 'web' }),
    ]);
    const policy = compilePolicy(cfg, ALICE, NOW_MS);
    assert.equal(policy.canSee(agent(cfg, 'data', 'postgres')), true);
    assert.equal(policy.canSee(agent(cfg, 'data', 'redis')), false);
    assert.equal(policy.canSee(agent(cfg, 'web', 'frontend')), true);
    assert.equal(compilePolicy(cfg, BOB, NOW_MS).canSee(agent(cfg, 'data', 'postgres')), false);
  });
});

describe('labelSelectorMatches', () => {
  it('does not treat inherited properties as labels', () => {
    assert.equal(labelSelectorMatches({ matchExpressions: [{ key: 'toString', operator: 'Exists' }] }, {}), false);
    assert.equal(labelSelectorMatches({ matchLabels: { constructor: 'x' } }, {}), false);
  });
});
