import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { compilePolicy, type GatewayConfig, generateSigningKeyPair, validateGatewayConfig } from '@narrowlink/protocol';
import { AgentRegistry, findAgent, normalizeAgentRef, type RegistryPeer } from './agent-registry.ts';

const keys = await generateSigningKeyPair();
const NOW = Date.parse('2030-01-01T00:00:00Z');

function makeConfig(agents: Array<{ name: string; namespace?: string; port?: number }>): GatewayConfig {
  return validateGatewayConfig({
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'GatewayConfig',
    signingPublicKeys: [keys.publicKeyPem],
    agents: agents.map((a) => ({ name: a.name, ...(a.namespace ? { namespace: a.namespace } : {}), expose: [{ name: 'p', port: a.port ?? 80 }] })),
    policies: [
      {
        name: 'alice',
        subjects: [{ kind: 'User', name: 'alice' }],
        rules: [{ action: 'Allow', agents: { names: ['db', 'web'] } }],
      },
      // A policy reaches the agents of its own namespace.
      { name: 'alice', namespace: 'prod', subjects: [{ kind: 'User', name: 'alice' }], rules: [{ action: 'Allow', agents: { names: ['db'] } }] },
    ],
  });
}

interface Peer extends RegistryPeer {
  state: RegistryPeer['state'];
  streamCount: number;
}
const peer = (id: string, streamCount = 0, state: RegistryPeer['state'] = 'open'): Peer => ({ id, state, streamCount });

function setup(agents = [{ name: 'db' }, { name: 'web' }, { name: 'db', namespace: 'prod' }, { name: 'secret' }]) {
  const holder = { config: makeConfig(agents) as GatewayConfig | undefined };
  const registry = new AgentRegistry<Peer>({ config: () => holder.config });
  return { holder, registry };
}

describe('AgentRegistry', () => {
  test('attach: only agents of the configuration; detach removes the instance and an empty agent', () => {
    const { registry } = setup();
    assert.equal(registry.attach(peer('x'), 'default/ghost', 'i-1', '1.2'), undefined);
    const a = registry.attach(peer('a'), 'default/db', 'i-1', '1.2');
    assert.ok(a);
    assert.equal(a.kind, 'agent');
    assert.equal(a.key, 'default/db');
    assert.equal(a.agent.name, 'db');
    assert.equal(a.version, '1.2');
    const b = registry.attach(peer('b'), 'default/db', 'i-2', '1.1');
    assert.ok(b);
    assert.deepEqual([...registry.instancesOf('default/db')], [a, b]);
    registry.detach(a);
    assert.deepEqual([...registry.instancesOf('default/db')], [b]);
    registry.detach(b);
    assert.deepEqual([...registry.instancesOf('default/db')], []);
    assert.deepEqual(registry.snapshot(() => undefined, new Map()), {}, 'no entry for an agent without instances');
    registry.detach(b);
  });

  test('leastLoaded: the open instance with the fewest streams, the first on a tie', () => {
    const { registry } = setup();
    assert.equal(registry.leastLoaded('default/db'), undefined);
    const busy = registry.attach(peer('busy', 5), 'default/db', 'i-1', '1.2');
    const idleClosing = registry.attach(peer('closing', 0, 'closing'), 'default/db', 'i-2', '1.2');
    const light = registry.attach(peer('light', 2), 'default/db', 'i-3', '1.2');
    const light2 = registry.attach(peer('light2', 2), 'default/db', 'i-4', '1.2');
    assert.ok(busy && idleClosing && light && light2);
    assert.equal(registry.leastLoaded('default/db'), light);
    light.session.streamCount = 9;
    assert.equal(registry.leastLoaded('default/db'), light2);
    const handshaking = registry.attach(peer('hs', 0, 'handshaking'), 'default/web', 'i-1', '1.2');
    assert.ok(handshaking);
    assert.equal(registry.leastLoaded('default/web'), undefined, 'only open sessions serve streams');
  });

  test('reconfigure: instances pick up their agent\'s new settings; those whose agent left are returned', () => {
    const { holder, registry } = setup();
    const db = registry.attach(peer('db'), 'default/db', 'i-1', '1.2');
    const web = registry.attach(peer('web'), 'default/web', 'i-1', '1.2');
    assert.ok(db && web);
    holder.config = makeConfig([{ name: 'db', port: 5432 }]);
    assert.deepEqual(registry.reconfigure(), [web]);
    assert.equal(db.agent.expose[0]?.port, 5432);
    assert.deepEqual([...registry.instancesOf('default/web')], [web], 'left attached: the gateway closes the session');
  });

  test('resolveVisible: namespace/name exactly, a bare name only when unambiguous, never an invisible agent', () => {
    const { holder, registry } = setup();
    const policy = compilePolicy(holder.config as GatewayConfig, { sub: 'alice', groups: [] }, NOW);
    assert.equal(registry.resolveVisible(policy, 'web')?.namespace, 'default');
    assert.equal(registry.resolveVisible(policy, 'prod/db')?.namespace, 'prod');
    assert.equal(registry.resolveVisible(policy, 'default/db')?.namespace, 'default');
    assert.equal(registry.resolveVisible(policy, 'db'), undefined, 'db exists in two namespaces');
    assert.equal(registry.resolveVisible(policy, 'secret'), undefined, 'not visible to alice');
    assert.equal(registry.resolveVisible(policy, 'default/secret'), undefined);
  });

  test('resolveVisible answers as the scan over visibleAgents() did, for every reference, on a generated configuration', () => {
    // 120 agents over 6 namespaces (names repeat across namespaces), 90 policies; several identities.
    const namespaces = ['default', 'prod', 'dev', 'ops', 'data', 'web'];
    const agents = Array.from({ length: 120 }, (_, i) => ({
      name: `svc-${i % 37}`,
      namespace: namespaces[i % 6],
      labels: { team: `t${i % 5}` },
      expose: [{ name: 'a', port: 1000 + (i % 11) }, ...(i % 3 === 0 ? [{ name: 'b', port: 2000 + (i % 7) }] : [])],
    })).filter((a, i, all) => all.findIndex((b) => b.name === a.name && b.namespace === a.namespace) === i);
    const users = ['alice', 'bob', 'carol', 'dave'];
    const policies = Array.from({ length: 90 }, (_, i) => ({
      name: `p${i}`,
      namespace: namespaces[(i * 5) % 6],
      subjects: [i % 7 === 0 ? { kind: 'Group', name: 'ops' } : { kind: 'User', name: users[i % 4] }],
      rules: [
        i % 4 === 0 ? { action: 'Allow', agents: { selector: { matchLabels: { team: `t${i % 5}` } } } } : { action: 'Allow', agents: { names: [`svc-${(i * 3) % 37}`, `svc-${(i * 7) % 37}`] } },
        ...(i % 9 === 0 ? [{ action: 'Deny', agents: { names: [`svc-${i % 37}`] }, ports: [1000 + (i % 11)] }] : []),
        ...(i % 10 === 0 ? [{ action: 'Allow', ports: [2000 + (i % 7)], paths: ['Direct'] }] : []),
      ],
    }));
    const refs = [...new Set(agents.flatMap((a) => [a.name, `${a.namespace}/${a.name}`]))];
    refs.push('svc-99', 'nowhere/svc-1', 'svc-1/x', '', '/', 'prod/');
    let resolved = 0;
    let ambiguousOrHidden = 0;
    for (const cross of [false, true]) {
      const config = validateGatewayConfig({ apiVersion: 'narrowlink.io/v1alpha1', kind: 'GatewayConfig', signingPublicKeys: [keys.publicKeyPem], agents, policies, allowCrossNamespacePolicies: cross });
      const registry = new AgentRegistry<Peer>({ config: () => config });
      for (const identity of [...users.map((sub) => ({ sub, groups: [] })), { sub: 'eve', groups: ['ops'] }, { sub: 'mallory', groups: [] }]) {
        const policy = compilePolicy(config, identity, NOW);
        // The old path, verbatim: every visible agent, then a scan.
        const visible = policy.visibleAgents().map((v) => v.agent);
        const before = (ref: string) => {
          if (ref.includes('/')) return visible.find((a) => `${a.namespace}/${a.name}` === ref);
          const byName = visible.filter((a) => a.name === ref);
          return byName.length === 1 ? byName[0] : undefined;
        };
        for (const ref of refs) {
          const expected = before(ref);
          assert.equal(registry.resolveVisible(policy, ref), expected, `${identity.sub} ${ref} cross=${cross}`);
          if (expected) resolved++;
          else if (config.agents.some((a) => a.name === ref || `${a.namespace}/${a.name}` === ref)) ambiguousOrHidden++;
        }
      }
    }
    assert.ok(resolved > 50 && ambiguousOrHidden > 50, `the table covers both answers (${resolved} resolved, ${ambiguousOrHidden} hidden or ambiguous)`);
  });

  test('resolveVisible looks only at the agents of that name, not the whole configuration', () => {
    const agents = Array.from({ length: 300 }, (_, i) => ({ name: `a${i}`, ...(i % 2 ? { namespace: 'prod' } : {}) }));
    const { holder, registry } = setup([...agents, { name: 'web' }]);
    const config = holder.config as GatewayConfig;
    // Count which agents' ports anything reads.
    const read = new Map<string, number>();
    for (const agent of config.agents) {
      const expose = agent.expose;
      Object.defineProperty(agent, 'expose', {
        get: () => {
          read.set(`${agent.namespace}/${agent.name}`, (read.get(`${agent.namespace}/${agent.name}`) ?? 0) + 1);
          return expose;
        },
      });
    }
    const policy = compilePolicy(config, { sub: 'alice', groups: [] }, NOW);
    assert.equal(registry.resolveVisible(policy, 'web')?.name, 'web');
    assert.equal(registry.resolveVisible(policy, 'a8'), undefined, 'alice sees only db and web');
    assert.equal(registry.resolveVisible(policy, 'prod/a7'), undefined);
    assert.deepEqual([...read.keys()].sort(), ['default/a8', 'default/web', 'prod/a7'], 'only the agents named were looked at');
    // Cached per compiled policy: asking again reads nothing.
    read.clear();
    registry.resolveVisible(policy, 'web');
    registry.resolveVisible(policy, 'prod/a7');
    assert.deepEqual([...read.keys()], []);
  });

  test('summaries: the visible agents with their attached instances', () => {
    const { holder, registry } = setup();
    registry.attach(peer('w1'), 'default/web', 'i-1', '1.2');
    registry.attach(peer('w2'), 'default/web', 'i-2', '1.2');
    const policy = compilePolicy(holder.config as GatewayConfig, { sub: 'alice', groups: [] }, NOW);
    const summaries = registry.summaries(policy).sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
    assert.deepEqual(summaries, [
      { name: 'db', namespace: 'default', mode: 'auto', instances: 0, ports: [{ name: 'p', port: 80, host: '127.0.0.1' }] },
      { name: 'web', namespace: 'default', mode: 'auto', instances: 2, ports: [{ name: 'p', port: 80, host: '127.0.0.1' }] },
      { name: 'db', namespace: 'prod', mode: 'auto', instances: 0, ports: [{ name: 'p', port: 80, host: '127.0.0.1' }] },
    ]);
  });

  test('snapshot: instances per agent, the NAT type from the sessions, direct paths up only when there are some', () => {
    const { registry } = setup();
    registry.attach(peer('w1'), 'default/web', 'i-1', '1.2');
    registry.attach(peer('w2'), 'default/web', 'i-2', '1.2');
    registry.attach(peer('d1'), 'default/db', 'i-1', '1.2');
    const asked: string[][] = [];
    const natTypeOf = (ids: Iterable<string>): string | undefined => {
      const list = [...ids];
      asked.push(list);
      return list.includes('w2') ? 'endpoint-independent' : undefined;
    };
    assert.deepEqual(registry.snapshot(natTypeOf, new Map([['default/db', 3], ['default/web', 0]])), {
      'default/web': { instances: 2, nat: 'endpoint-independent' },
      'default/db': { instances: 1, directPaths: 3 },
    });
    assert.deepEqual(asked, [['w1', 'w2'], ['d1']]);
  });

  test('findAgent and normalizeAgentRef', () => {
    const { holder } = setup();
    assert.equal(findAgent(holder.config, 'prod/db')?.namespace, 'prod');
    assert.equal(findAgent(holder.config, 'prod/web'), undefined);
    assert.equal(findAgent(undefined, 'default/db'), undefined);
    assert.equal(normalizeAgentRef('web'), 'default/web');
    assert.equal(normalizeAgentRef('prod/db'), 'prod/db');
  });
});
