/**
 * The agent never punches at a `lan` candidate that is not on one of its own links (issue 10: a client that shares
 * the agent's public address reports "LAN endpoints" such as 8.8.8.8:53 or a host on the agent's network, and the
 * agent would send UDP there). The agent's punch datagrams are captured at the endpoint; timers are mocked.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { afterEach, describe, mock, test } from 'node:test';
import type { ControlMessage, PunchPlanMessage } from '@narrowlink/protocol';
import type { GatewayLink } from '../gateway-link.ts';
import { generateIdentity } from '../quic/identity.ts';
import { AgentDirectPaths } from './agent-paths.ts';

class FakeLink extends EventEmitter {
  state = 'open';
  stats: { helloOk: { version: string }; nat?: { localEndpoints: { address: string; port: number }[] } } = { helloOk: { version: '1.2' } };
  sent: ControlMessage[] = [];
  sendControl(message: ControlMessage): boolean {
    this.sent.push(message);
    return true;
  }
  reprobeNat(): boolean {
    return false;
  }
  deliver(message: ControlMessage): void {
    this.emit('direct', message);
  }
}

const CANDIDATES: PunchPlanMessage['candidates'] = [
  { address: '8.8.8.8', port: 53, kind: 'lan' },
  { address: '10.1.0.2', port: 50_000, kind: 'lan' },
  { address: '10.1.0.255', port: 50_000, kind: 'lan' },
  { address: '10.200.0.9', port: 22, kind: 'lan' },
  { address: '127.0.0.1', port: 6379, kind: 'lan' },
  { address: '2606:4700::1111', port: 53, kind: 'lan' },
  { address: '198.51.100.2', port: 50_001, kind: 'public' },
];

function plan(pathId: string): PunchPlanMessage {
  return {
    type: 'punch_plan',
    pathId,
    peer: 'alice',
    role: 'agent',
    quicRole: 'server',
    strategy: 'public',
    attemptId: randomBytes(8).toString('base64'),
    punchKey: randomBytes(32).toString('base64'),
    candidates: CANDIDATES,
    initialDelayMs: 0,
    intervalMs: 50,
    budgetMs: 3000,
    leadMs: 0,
    peerFingerprint: 'a'.repeat(64),
  };
}

/** Runs one plan on an agent on 10.1.0.3/24 (+ loopback) and returns where its first punch round went. */
async function firstRound(link: FakeLink): Promise<{ targets: string[]; dropped: number }> {
  const agent = (
    await AgentDirectPaths.create({
      identity: await generateIdentity(),
      host: '0.0.0.0',
      localSubnets: () => [
        { address: '127.0.0.1', prefixLength: 8 },
        { address: '10.1.0.3', prefixLength: 24 },
      ],
    })
  ).attach(link as unknown as GatewayLink);
  const targets: string[] = [];
  agent.endpoint.sendRaw = (_bytes: Uint8Array, to: { address: string; port: number }) => {
    targets.push(`${to.address}:${to.port}`);
  };
  try {
    mock.timers.enable({ apis: ['setTimeout'] });
    link.deliver({ type: 'direct_policy', pathId: 'p1', allow: [] });
    link.deliver(plan('p1'));
    mock.timers.tick(0);
    mock.timers.reset();
    return { targets, dropped: agent.lanCandidatesDropped };
  } finally {
    mock.timers.reset();
    await agent.close();
  }
}

describe('AgentDirectPaths: LAN punch candidates', () => {
  afterEach(() => mock.timers.reset());

  test('only private candidates on its own links (no broadcast, no loopback, no public host) get punch packets; the rest is counted', async () => {
    const { targets, dropped } = await firstRound(new FakeLink());
    assert.deepEqual(targets, ['10.1.0.2:50000', '198.51.100.2:50001']);
    assert.equal(dropped, 5);
  });

  test('an agent on loopback with its gateway (the local stack) keeps loopback candidates', async () => {
    const link = new FakeLink();
    link.stats.nat = { localEndpoints: [{ address: '127.0.0.1', port: 40_000 }] };
    const { targets, dropped } = await firstRound(link);
    assert.deepEqual(targets, ['10.1.0.2:50000', '127.0.0.1:6379', '198.51.100.2:50001']);
    assert.equal(dropped, 4);
  });
});
