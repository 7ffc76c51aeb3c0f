import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Condition } from '../../crds/common.ts';
import type { NarrowlinkAgent } from '../../crds/narrowlink-agent.ts';
import type { DesiredEvent } from '../../events.ts';
import type { Certificate, Secret } from '../../objects.ts';
import { RotationReason } from '../agent-token/desired.ts';
import type { DesiredCertificates } from '../certificates/desired.ts';
import { makeAgent } from '../test-fixtures.ts';
import { AgentConditionReason, type AgentStatusInput, desiredAgentStatus } from './desired.ts';

const NOW = Date.parse('2026-11-25T12:00:00Z');
const NOW_ISO = new Date(NOW).toISOString();
const EARLIER = '2026-11-01T00:00:00.000Z';

function certificate(name: string, ready?: boolean): Certificate {
  return {
    apiVersion: 'cert-manager.io/v1',
    kind: 'Certificate',
    metadata: { name, namespace: 'default' },
    spec: { secretName: `${name}-tls`, dnsNames: [`${name}.example.com`], issuerRef: { name: 'le', kind: 'ClusterIssuer', group: 'cert-manager.io' } },
    ...(ready === undefined ? {} : { status: { conditions: [{ type: 'Ready', status: ready ? 'True' : 'False' }] } }),
  };
}

const tokenSecret: Secret = { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'web-agent-token', namespace: 'default' } };
const NO_CERTIFICATES: DesiredCertificates = { certificates: [], skipped: [] };

function input(extra: Partial<AgentStatusInput> = {}): AgentStatusInput {
  return {
    agent: makeAgent('web'),
    certificates: NO_CERTIFICATES,
    observedCertificates: [],
    certificateResult: 'applied',
    tokenPlan: { secret: undefined },
    presence: { instances: 0 },
    nowMs: NOW,
    ...extra,
  };
}

/** `Type=Status/Reason: message` of each condition, in order: the decisions without the bookkeeping. */
function summary(conditions: Condition[]): string[] {
  return conditions.map((c) => `${c.type}=${c.status}/${c.reason}: ${c.message}`);
}

describe('desiredAgentStatus', () => {
  const cases: Array<{
    name: string;
    input: Partial<AgentStatusInput>;
    conditions: string[];
    events?: DesiredEvent[];
    requeueAfterMs?: number;
  }> = [
    {
      name: 'an in-cluster agent with nothing to publish, not attached',
      input: {},
      conditions: [
        'CertificatesReady=True/NothingToIssue: 0 certificate(s) ready',
        'Connected=False/NotAttached: no instance is attached to a gateway',
        'Ready=True/Configured: the agent is in the gateway configuration',
      ],
    },
    {
      name: 'a Certificate that is not Ready yet (or not observed at all) is still issuing',
      input: {
        certificates: { certificates: [certificate('a'), certificate('b'), certificate('c')], skipped: [] },
        observedCertificates: [certificate('a', true), certificate('b', false)],
      },
      conditions: [
        'CertificatesReady=False/Issuing: waiting for b, c',
        'Connected=False/NotAttached: no instance is attached to a gateway',
        'Ready=True/Configured: the agent is in the gateway configuration',
      ],
    },
    {
      name: 'every Certificate Ready: issued',
      input: { certificates: { certificates: [certificate('a'), certificate('b')], skipped: [] }, observedCertificates: [certificate('b', true), certificate('a', true)] },
      conditions: [
        'CertificatesReady=True/Issued: 2 certificate(s) ready',
        'Connected=False/NotAttached: no instance is attached to a gateway',
        'Ready=True/Configured: the agent is in the gateway configuration',
      ],
    },
    {
      name: 'skipped domains: the first reason, every message, and a Warning',
      input: {
        certificates: {
          certificates: [certificate('a')],
          skipped: [
            { domain: 'x.example.com', reason: 'DomainConflict', message: 'x.example.com is published by default/old' },
            { domain: 'y.example.com', reason: 'NoIssuer', message: 'y.example.com: no issuer' },
          ],
        },
        observedCertificates: [certificate('a', true)],
      },
      conditions: [
        'CertificatesReady=False/DomainConflict: x.example.com is published by default/old; y.example.com: no issuer',
        'Connected=False/NotAttached: no instance is attached to a gateway',
        'Ready=True/Configured: the agent is in the gateway configuration',
      ],
      events: [{ type: 'Warning', reason: 'DomainConflict', message: 'x.example.com is published by default/old; y.example.com: no issuer' }],
    },
    {
      name: 'no cert-manager API outweighs skipped domains',
      input: {
        certificates: { certificates: [certificate('a')], skipped: [{ domain: 'y.example.com', reason: 'NoIssuer', message: 'no issuer' }] },
        certificateResult: 'certManagerMissing',
      },
      conditions: [
        'CertificatesReady=False/CertManagerMissing: cert-manager is not installed (no certificates.cert-manager.io API); install it to publish domains',
        'Connected=False/NotAttached: no instance is attached to a gateway',
        'Ready=True/Configured: the agent is in the gateway configuration',
      ],
      events: [{ type: 'Warning', reason: 'CertManagerMissing', message: 'cert-manager is not installed (no certificates.cert-manager.io API); install it to publish domains' }],
    },
    {
      name: 'a minted token: a Normal Event and a look again at rotation time',
      input: { tokenPlan: { secret: tokenSecret, minted: RotationReason.Missing, rotateAtMs: NOW + 60_000 } },
      conditions: [
        'CertificatesReady=True/NothingToIssue: 0 certificate(s) ready',
        'Connected=False/NotAttached: no instance is attached to a gateway',
        'Ready=True/Configured: the agent is in the gateway configuration',
      ],
      events: [{ type: 'Normal', reason: 'TokenIssued', message: 'agent token written to Secret web-agent-token (TokenMissing)' }],
      requeueAfterMs: 60_000,
    },
    {
      name: 'a kept token due (or overdue) for rotation: no Event, look again in no less than a second',
      input: { tokenPlan: { secret: tokenSecret, rotateAtMs: NOW - 5_000 } },
      conditions: [
        'CertificatesReady=True/NothingToIssue: 0 certificate(s) ready',
        'Connected=False/NotAttached: no instance is attached to a gateway',
        'Ready=True/Configured: the agent is in the gateway configuration',
      ],
      requeueAfterMs: 1000,
    },
    {
      name: 'attached: look again just after the earliest gateway report runs out, if that is before rotation',
      input: { presence: { instances: 3, expiresAtMs: NOW + 20_000 }, tokenPlan: { secret: tokenSecret, rotateAtMs: NOW + 60_000 } },
      conditions: [
        'CertificatesReady=True/NothingToIssue: 0 certificate(s) ready',
        'Connected=True/Attached: 3 instance(s) attached to a gateway',
        'Ready=True/Configured: the agent is in the gateway configuration',
      ],
      requeueAfterMs: 20_100,
    },
    {
      name: 'rotation before the report runs out wins',
      input: { presence: { instances: 1, expiresAtMs: NOW + 20_000 }, tokenPlan: { secret: tokenSecret, rotateAtMs: NOW + 3_000 } },
      conditions: [
        'CertificatesReady=True/NothingToIssue: 0 certificate(s) ready',
        'Connected=True/Attached: 1 instance(s) attached to a gateway',
        'Ready=True/Configured: the agent is in the gateway configuration',
      ],
      requeueAfterMs: 3_000,
    },
    {
      name: 'a compile problem: Ready=False with its reason; its Warning comes before the certificate one',
      input: {
        problem: { reason: 'InvalidSpec', message: 'spec.expose[1].port: duplicate' },
        certificates: { certificates: [], skipped: [{ domain: 'y.example.com', reason: 'NoIssuer', message: 'no issuer' }] },
      },
      conditions: [
        'CertificatesReady=False/NoIssuer: no issuer',
        'Connected=False/NotAttached: no instance is attached to a gateway',
        'Ready=False/InvalidSpec: spec.expose[1].port: duplicate',
      ],
      events: [
        { type: 'Warning', reason: 'InvalidSpec', message: 'spec.expose[1].port: duplicate' },
        { type: 'Warning', reason: 'NoIssuer', message: 'no issuer' },
      ],
    },
  ];

  for (const c of cases) {
    it(c.name, () => {
      const out = desiredAgentStatus(input(c.input));
      assert.deepEqual(summary(out.conditions), c.conditions);
      assert.deepEqual(out.events, c.events ?? []);
      assert.equal(out.requeueAfterMs, c.requeueAfterMs);
      assert.equal('requeueAfterMs' in out, c.requeueAfterMs !== undefined, 'absent, not undefined, when there is nothing to wait for');
      assert.equal(out.status.conditions, out.conditions);
      for (const condition of out.conditions) assert.equal(condition.observedGeneration, 1);
    });
  }

  it('fills the counters and the token Secret name, and keeps fields it does not decide', () => {
    const agent: NarrowlinkAgent = { ...makeAgent('web', {}, { generation: 4 }), status: { natType: 'endpoint-independent', observedGeneration: 3 } };
    const out = desiredAgentStatus(
      input({ agent, presence: { instances: 2, directPaths: 1, expiresAtMs: NOW + 1000 }, tokenPlan: { secret: tokenSecret, rotateAtMs: NOW + 10_000 } }),
    );
    assert.deepEqual(out.status, {
      natType: 'endpoint-independent',
      conditions: out.conditions,
      observedGeneration: 4,
      connectedInstances: 2,
      tokenSecretName: 'web-agent-token',
      directPaths: 1,
    });
    const measured = desiredAgentStatus(input({ agent, presence: { instances: 1, nat: 'address-dependent' } }));
    assert.equal(measured.status.natType, 'address-dependent');
    assert.equal(measured.status.directPaths, 0);
  });

  it('drops the token Secret name once the agent has no token Secret', () => {
    const agent: NarrowlinkAgent = { ...makeAgent('web'), status: { tokenSecretName: 'web-agent-token', connectedInstances: 0 } };
    const out = desiredAgentStatus(input({ agent }));
    assert.equal('tokenSecretName' in out.status, false);
  });

  it('keeps lastTransitionTime of conditions whose status did not change', () => {
    const first = desiredAgentStatus(input({ nowMs: Date.parse(EARLIER) }));
    const agent: NarrowlinkAgent = { ...makeAgent('web'), status: { conditions: first.conditions } };
    const later = desiredAgentStatus(input({ agent, presence: { instances: 1 } }));
    assert.deepEqual(
      later.conditions.map((c) => [c.type, c.lastTransitionTime]),
      [
        ['CertificatesReady', EARLIER],
        ['Connected', NOW_ISO],
        ['Ready', EARLIER],
      ],
    );
    assert.deepEqual(desiredAgentStatus(input({ agent: { ...agent, status: { conditions: later.conditions } }, presence: { instances: 1 } })).conditions, later.conditions);
  });

  it('names every reason it writes itself in AgentConditionReason', () => {
    assert.deepEqual(Object.values(AgentConditionReason).sort(), ['Attached', 'CertManagerMissing', 'Configured', 'Issued', 'Issuing', 'NotAttached', 'NothingToIssue']);
  });
});
