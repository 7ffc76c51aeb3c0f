import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type AgentConfig, type ClientOpen, compilePolicy, generateSigningKeyPair, StreamErrorCode, validateGatewayConfig } from '@narrowlink/protocol';
import { decideRelayOpen } from './relay-open.ts';

const NOW = Date.parse('2030-01-01T00:00:00Z');
const keys = await generateSigningKeyPair();

const config = validateGatewayConfig({
  apiVersion: 'narrowlink.io/v1alpha1',
  kind: 'GatewayConfig',
  signingPublicKeys: [keys.publicKeyPem],
  agents: [
    {
      name: 'web',
      expose: [
        { name: 'http', port: 8080 },
        { name: 'admin', port: 9000 },
        { name: 'metrics', port: 9100 },
        { name: 'pg', port: 5432, host: '10.0.0.5' },
      ],
    },
    { name: 'edge', mode: 'direct', expose: [{ name: 'ssh', port: 22 }] },
  ],
  policies: [
    {
      name: 'alice',
      subjects: [{ kind: 'User', name: 'alice' }],
      rules: [
        { action: 'Allow', agents: { names: ['web'] }, ports: [8080, 5432] },
        // metrics over the direct path only
        { action: 'Allow', agents: { names: ['web'] }, ports: [9100], paths: ['Direct'] },
        { action: 'Allow', agents: { names: ['edge'] } },
      ],
    },
  ],
});
const policy = compilePolicy(config, { sub: 'alice', groups: [] }, NOW);
const agent = (name: string): AgentConfig => config.agents.find((a) => a.name === name) as AgentConfig;
const web = agent('web');
const edge = agent('edge');

interface Case {
  what: string;
  agent: AgentConfig | undefined;
  request: ClientOpen;
  /** An exposed port name, or the refusal. */
  want: string | { code: StreamErrorCode; message: string };
}

const cases: Case[] = [
  {
    what: 'an unresolved agent is NO_AGENT, worded so names do not leak',
    agent: undefined,
    request: { agent: 'ghost', port: 80 },
    want: { code: StreamErrorCode.NO_AGENT, message: 'no agent "ghost" that you may reach' },
  },
  {
    what: 'a port number the agent does not expose is DENIED',
    agent: web,
    request: { agent: 'web', port: 1234 },
    want: { code: StreamErrorCode.DENIED, message: 'agent "web" exposes no port 1234' },
  },
  {
    what: 'an exposed port on another host is DENIED, naming the host',
    agent: web,
    request: { agent: 'web', port: 5432, host: '10.0.0.6' },
    want: { code: StreamErrorCode.DENIED, message: 'agent "web" exposes no port 5432 on 10.0.0.6' },
  },
  {
    what: 'an unknown port name is DENIED',
    agent: web,
    request: { agent: 'web', port: 'nope' },
    want: { code: StreamErrorCode.DENIED, message: 'agent "web" exposes no port nope' },
  },
  {
    what: 'the exposed-port check comes before the mode check',
    agent: web,
    request: { agent: 'web', port: 1234, mode: 'direct' },
    want: { code: StreamErrorCode.DENIED, message: 'agent "web" exposes no port 1234' },
  },
  {
    what: 'mode direct is DIRECT_UNAVAILABLE: the relay never carries it',
    agent: web,
    request: { agent: 'web', port: 8080, mode: 'direct' },
    want: {
      code: StreamErrorCode.DIRECT_UNAVAILABLE,
      message:
        'direct-mode streams travel on the direct path (ask for one with direct_request); the relay does not carry them. Use mode auto or relay to go through the gateway',
    },
  },
  {
    what: 'mode direct to a direct-only agent is still DIRECT_UNAVAILABLE (the request mode is checked first)',
    agent: edge,
    request: { agent: 'edge', port: 22, mode: 'direct' },
    want: {
      code: StreamErrorCode.DIRECT_UNAVAILABLE,
      message:
        'direct-mode streams travel on the direct path (ask for one with direct_request); the relay does not carry them. Use mode auto or relay to go through the gateway',
    },
  },
  {
    what: 'a direct-only agent is RELAY_NOT_OFFERED',
    agent: edge,
    request: { agent: 'edge', port: 22 },
    want: { code: StreamErrorCode.RELAY_NOT_OFFERED, message: 'agent "edge" offers direct paths only (mode direct); use mode auto or direct' },
  },
  {
    what: 'a direct-only agent is RELAY_NOT_OFFERED in mode relay too',
    agent: edge,
    request: { agent: 'edge', port: 'ssh', mode: 'relay' },
    want: { code: StreamErrorCode.RELAY_NOT_OFFERED, message: 'agent "edge" offers direct paths only (mode direct); use mode auto or direct' },
  },
  {
    what: 'a target the policy allows over the direct path only is RELAY_NOT_OFFERED',
    agent: web,
    request: { agent: 'web', port: 'metrics', mode: 'auto' },
    want: { code: StreamErrorCode.RELAY_NOT_OFFERED, message: 'policy allows web:9100 over the direct path only' },
  },
  {
    what: 'a target the policy does not allow at all is DENIED with the policy reason',
    agent: web,
    request: { agent: 'web', port: 9000 },
    want: { code: StreamErrorCode.DENIED, message: 'policy denies web:9000 (NoMatchingRule)' },
  },
  { what: 'allowed by port number', agent: web, request: { agent: 'web', port: 8080 }, want: 'http' },
  { what: 'allowed by port name in mode relay', agent: web, request: { agent: 'web', port: 'http', mode: 'relay' }, want: 'http' },
  { what: 'allowed by port number and matching host', agent: web, request: { agent: 'web', port: 5432, host: '10.0.0.5' }, want: 'pg' },
  { what: 'allowed by port number without a host (any host)', agent: web, request: { agent: 'web', port: 5432, mode: 'auto' }, want: 'pg' },
];

describe('decideRelayOpen', () => {
  for (const c of cases) {
    test(c.what, () => {
      const decision = decideRelayOpen(policy, c.agent, c.request);
      if (typeof c.want === 'string') {
        assert.ok('exposed' in decision, `refused: ${JSON.stringify(decision)}`);
        assert.equal(decision.agent, c.agent);
        assert.deepEqual(
          decision.exposed,
          web.expose.find((p) => p.name === c.want),
        );
      } else {
        assert.deepEqual(decision, c.want);
      }
    });
  }

  test('the table covers every refusal code the relay-open decision produces', () => {
    const codes = new Set(cases.flatMap((c) => (typeof c.want === 'string' ? [] : [c.want.code])));
    assert.deepEqual([...codes].sort(), [StreamErrorCode.DENIED, StreamErrorCode.DIRECT_UNAVAILABLE, StreamErrorCode.NO_AGENT, StreamErrorCode.RELAY_NOT_OFFERED].sort());
  });
});
