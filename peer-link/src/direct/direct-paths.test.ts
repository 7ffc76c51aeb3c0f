/**
 * ClientDirectPaths and AgentDirectPaths on loopback: two real QUIC endpoints driven by the messages a gateway would send
 * (a fake link stands in for the session), so punching, the pinned handshake, stream opens with the agent's
 * policy check, revocation, refusals and failures run for real.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer, type Server } from 'node:net';
import { after, before, describe, test } from 'node:test';
import {
  type ControlMessage,
  type DirectAllow,
  type DirectOpenReply,
  type NatClassification,
  type PunchPlan,
  type PunchPlanMessage,
  type PunchSidePlan,
  planPunch,
  punchPlanMessage,
  StreamErrorCode,
  StreamResetError,
} from '@narrowlink/protocol';
import { bridgeDirect } from '../bridge.ts';
import type { GatewayLink } from '../gateway-link.ts';
import { DirectError, DirectErrorCode } from '../quic/errors.ts';
import { generateIdentity } from '../quic/identity.ts';
import { AgentDirectPaths, DIRECT_STREAM_REVOKED } from './agent-paths.ts';
import { ClientDirectPaths } from './client-paths.ts';
import type { DirectPathStatus } from './path-attempt.ts';
import { connect } from 'node:net';

/** Stands in for a GatewayLink: records what the direct paths send, and delivers what the "gateway" says. */
class FakeLink extends EventEmitter {
  state = 'open';
  stats: { helloOk: { version: string }; nat?: object } = { helloOk: { version: '1.2' } };
  options: { udpSocket?: object } = {};
  sent: ControlMessage[] = [];
  sendControl(message: ControlMessage): boolean {
    this.sent.push(message);
    return true;
  }
  reprobes = 0;
  reprobeNat(): boolean {
    this.reprobes++;
    return false;
  }
  deliver(message: ControlMessage): void {
    this.emit('direct', message);
  }
}

/** A side of the plan as the gateway sends it, with a short common start so the tests do not wait. */
function side(plan: PunchPlan, which: PunchSidePlan, pathId: string, peer: string, requestId?: number): PunchPlanMessage {
  return { ...punchPlanMessage(which, plan.strategy, pathId, peer, requestId), leadMs: 20 };
}

function noNat(port: number): NatClassification {
  return { type: 'no-nat', publicEndpoint: { address: '127.0.0.1', port }, filtering: 'endpoint-independent', destinations: 4 };
}

function waitPath(paths: ClientDirectPaths, state: DirectPathStatus['state']): Promise<DirectPathStatus> {
  return new Promise((resolve) => {
    const on = (status: DirectPathStatus): void => {
      if (status.state !== state) return;
      paths.off('path', on);
      resolve(status);
    };
    paths.on('path', on);
  });
}

describe('ClientDirectPaths and AgentDirectPaths (loopback, real QUIC)', () => {
  let echo: Server;
  let echoPort: number;
  const echoSockets = new Set<import('node:net').Socket>();
  before(async () => {
    echo = createServer((s) => {
      echoSockets.add(s);
      s.on('close', () => echoSockets.delete(s));
      s.on('error', () => {});
      s.pipe(s);
    });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', () => r()));
    echoPort = (echo.address() as { port: number }).port;
  });
  after(() => {
    for (const s of echoSockets) s.destroy();
    echo.close();
  });

  async function pair(options: { budgetMs?: number; agentCandidatePort?: number } = {}) {
    const clientLink = new FakeLink();
    const agentLink = new FakeLink();
    const client = (await ClientDirectPaths.create({ identity: await generateIdentity(), host: '127.0.0.1', retryAfterMs: 60_000 })).attach(
      clientLink as unknown as GatewayLink,
    );
    const served: Array<{ target: DirectAllow; client: string }> = [];
    const agent = (
      await AgentDirectPaths.create({
        identity: await generateIdentity(),
        host: '127.0.0.1',
        serve: (request, stream, reply: (r: DirectOpenReply) => void) => {
          served.push({ target: request.target, client: request.client });
          const socket = connect({ host: request.target.host, port: request.target.port, allowHalfOpen: true });
          socket.once('connect', () => {
            reply({ ok: true });
            bridgeDirect(socket, stream);
          });
          socket.once('error', (e) => reply({ code: StreamErrorCode.DIAL_FAILED, message: e.message }));
        },
      })
    ).attach(agentLink as unknown as GatewayLink);
    const plan = planPunch({
      client: { nat: noNat(client.endpoint.port), localEndpoints: [], certFingerprint: client.fingerprint },
      agent: { nat: noNat(options.agentCandidatePort ?? agent.endpoint.port), localEndpoints: [], certFingerprint: agent.fingerprint },
      nowMs: Date.now(),
      random: randomBytes,
      options: { budgetMs: options.budgetMs ?? 2000, intervalMs: 20 },
    });
    assert.equal(plan.viable, true);
    return { client, agent, clientLink, agentLink, plan: plan as PunchPlan, served };
  }

  async function up(p: Awaited<ReturnType<typeof pair>>, allow: DirectAllow[]): Promise<DirectPathStatus> {
    const status = p.client.request('ns/web');
    assert.equal(status.state, 'requesting');
    const request = p.clientLink.sent.find((m) => m.type === 'direct_request');
    assert.ok(request && request.type === 'direct_request');
    assert.equal(request.agent, 'ns/web');
    p.agentLink.deliver({ type: 'direct_policy', pathId: 'path1', allow });
    p.agentLink.deliver(side(p.plan, p.plan.agent, 'path1', 'alice'));
    const upped = waitPath(p.client, 'up');
    p.clientLink.deliver(side(p.plan, p.plan.client, 'path1', 'ns/web', request.requestId));
    return await upped;
  }

  test('punch, pinned handshake, a stream checked against the policy, and the state reported to the gateway', async () => {
    const p = await pair();
    try {
      const status = await up(p, [{ name: 'echo', host: '127.0.0.1', port: echoPort }]);
      assert.equal(status.remote?.port, p.agent.endpoint.port);
      assert.ok((status.readyInMs ?? 1e9) < 2000, `ready in ${status.readyInMs} ms`);
      const state = p.clientLink.sent.find((m) => m.type === 'direct_state');
      assert.deepEqual(state && { type: state.type, state: (state as { state: string }).state }, { type: 'direct_state', state: 'up' });
      // By exposed name and by port.
      for (const port of ['echo', echoPort] as const) {
        const stream = await p.client.openStream('ns/web', { port });
        const payload = randomBytes(256 * 1024);
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c)).resume();
        const ended = new Promise((r) => stream.once('end', r));
        stream.end(payload);
        await ended;
        assert.ok(Buffer.concat(chunks).equals(payload));
      }
      assert.equal(p.served.length, 2);
      assert.equal(p.served[0]?.client, 'alice');
      assert.equal(p.agent.status()[0]?.state, 'up');
    } finally {
      await p.client.close();
      await p.agent.close();
    }
  });

  test('the agent refuses a target the policy does not allow (DENIED), and a narrower policy resets an open stream', async () => {
    const p = await pair();
    try {
      await up(p, [{ name: 'echo', host: '127.0.0.1', port: echoPort }]);
      await assert.rejects(p.client.openStream('ns/web', { port: 1 }), (e: unknown) => e instanceof StreamResetError && e.streamCode === StreamErrorCode.DENIED);
      await assert.rejects(p.client.openStream('ns/web', { port: 'admin' }), (e: unknown) => e instanceof StreamResetError && e.streamCode === StreamErrorCode.DENIED);
      const stream = await p.client.openStream('ns/web', { port: 'echo' });
      const failed = new Promise<Error>((r) => stream.once('error', r));
      stream.write('hello');
      await new Promise((r) => stream.once('data', r).resume());
      p.agentLink.deliver({ type: 'direct_policy', pathId: 'path1', allow: [] });
      const error = await failed;
      assert.ok(error instanceof DirectError && error.code === DirectErrorCode.STREAM_RESET && error.streamCode === DIRECT_STREAM_REVOKED, String(error));
    } finally {
      await p.client.close();
      await p.agent.close();
    }
  });

  test('a stream with a malformed, oversized or missing open header is reset by the agent and serves nothing', async () => {
    const p = await pair();
    try {
      await up(p, [{ name: 'echo', host: '127.0.0.1', port: echoPort }]);
      const transport = p.client.transport('ns/web');
      assert.ok(transport);
      const header = (json: string): Buffer => Buffer.concat([Buffer.from([json.length >> 8, json.length & 0xff]), Buffer.from(json)]);
      for (const bytes of [header("{not json"), header(JSON.stringify({ port: "echo", admin: true })), Buffer.from([0xff, 0xff, 1, 2, 3]), Buffer.alloc(0)]) {
        const stream = await transport.openStream();
        const failed = new Promise<Error | undefined>((resolve) => {
          stream.once('error', resolve);
          stream.once('close', () => resolve(undefined));
        });
        stream.resume();
        stream.end(bytes);
        const error = await failed;
        assert.ok(error instanceof DirectError && error.code === DirectErrorCode.STREAM_RESET, `${bytes.length} bytes: ${error}`);
      }
      assert.equal(p.served.length, 0);
      // The path itself is unharmed.
      const ok = await p.client.openStream('ns/web', { port: 'echo' });
      ok.destroy();
    } finally {
      await p.client.close();
      await p.agent.close();
    }
  });

  test('streams reset with megabytes in flight both ways do not use up the connection: a new stream still opens at once', { timeout: 60_000 }, async () => {
    const p = await pair();
    try {
      await up(p, [{ name: 'echo', host: '127.0.0.1', port: echoPort }]);
      for (let i = 0; i < 8; i++) {
        const stream = await p.client.openStream('ns/web', { port: 'echo' });
        stream.on('error', () => {});
        // Send 8 MiB without reading the echo: both directions fill up, then abort.
        const chunk = Buffer.alloc(256 * 1024, i);
        for (let k = 0; k < 32; k++) stream.write(chunk);
        await new Promise((r) => setTimeout(r, 150));
        stream.destroy();
      }
      await new Promise((r) => setTimeout(r, 200));
      const started = performance.now();
      const stream = await p.client.openStream('ns/web', { port: 'echo' });
      const back = new Promise<Buffer>((resolve) => stream.once('data', resolve));
      stream.resume();
      stream.write('still there?');
      assert.equal((await back).toString(), 'still there?');
      assert.ok(performance.now() - started < 2000, `took ${Math.round(performance.now() - started)} ms`);
      stream.destroy();
    } finally {
      await p.client.close();
      await p.agent.close();
    }
  });

  test('a refusal fails the path with its reason at once; direct mode does not wait, and no new request goes out before the retry time', async () => {
    const p = await pair();
    try {
      const waiting = p.client.waitUp('ns/web', 5000);
      const request = p.clientLink.sent.find((m) => m.type === 'direct_request') as { requestId: number };
      p.clientLink.deliver({ type: 'direct_refused', requestId: request.requestId, reason: 'BothSymmetric', message: 'both map at random' });
      await assert.rejects(waiting, (e: unknown) => e instanceof DirectError && e.code === DirectErrorCode.UNAVAILABLE && e.reason === 'BothSymmetric');
      const started = performance.now();
      await assert.rejects(p.client.waitUp('ns/web', 5000), (e: unknown) => e instanceof DirectError && e.reason === 'BothSymmetric');
      assert.ok(performance.now() - started < 100);
      assert.equal(p.clientLink.sent.filter((m) => m.type === 'direct_request').length, 1);
      const status = p.client.status()[0];
      assert.equal(status?.reason, 'BothSymmetric');
      assert.ok((status?.retryInMs ?? 0) > 50_000);
    } finally {
      await p.client.close();
      await p.agent.close();
    }
  });

  test('a punch nobody answers fails by the plan deadline (PunchTimeout) and the gateway hears of it', async () => {
    // The plan points the client at a port where nothing listens.
    const p = await pair({ budgetMs: 300, agentCandidatePort: 9 });
    try {
      const waiting = p.client.waitUp('ns/web', 5000);
      const request = p.clientLink.sent.find((m) => m.type === 'direct_request') as { requestId: number };
      const started = performance.now();
      p.clientLink.deliver(side(p.plan, p.plan.client, 'path2', 'ns/web', request.requestId));
      await assert.rejects(waiting, (e: unknown) => e instanceof DirectError && e.reason === 'PunchTimeout');
      assert.ok(performance.now() - started < 1500);
      const state = p.clientLink.sent.find((m) => m.type === 'direct_state') as { state: string; reason: string };
      assert.deepEqual({ state: state.state, reason: state.reason }, { state: 'failed', reason: 'PunchTimeout' });
    } finally {
      await p.client.close();
      await p.agent.close();
    }
  });

  test('direct_close from the gateway takes the path down on both sides; a lost path may be asked for again soon', async () => {
    const p = await pair();
    try {
      await up(p, [{ name: 'echo', host: '127.0.0.1', port: echoPort }]);
      const down = waitPath(p.client, 'failed');
      p.agentLink.deliver({ type: 'direct_close', pathId: 'path1', reason: 'client session ended' });
      const status = await down;
      assert.ok(status.reason === 'PathLost' || status.reason === 'ClosedByGateway', status.reason);
      assert.equal(p.client.transport('ns/web'), undefined);
      assert.equal(p.agent.status().length, 0);
      assert.ok((p.client.status()[0]?.retryInMs ?? 1e9) <= 5000);
      // Both sides ask to be probed afresh: the path may have died of a changed mapping on either side.
      assert.equal(p.clientLink.reprobes, 1);
      assert.ok(p.agentLink.reprobes >= 1);
    } finally {
      await p.client.close();
      await p.agent.close();
    }
  });

  test('a request waits for our NAT classification (still being probed) instead of being refused as NotProbed', async () => {
    const p = await pair();
    try {
      p.clientLink.options.udpSocket = p.client.socket;
      p.client.request('ns/web');
      assert.equal(p.clientLink.sent.length, 0);
      p.clientLink.stats.nat = { natType: 'no-nat' };
      p.clientLink.emit('nat', p.clientLink.stats.nat);
      assert.equal(p.clientLink.sent[0]?.type, 'direct_request');
      // An older gateway is not asked at all.
      p.clientLink.stats.helloOk.version = '1.1';
      await assert.rejects(p.client.waitUp('ns/other', 1000), (e: unknown) => e instanceof DirectError && e.reason === 'GatewayTooOld');
    } finally {
      await p.client.close();
      await p.agent.close();
    }
  });

  test('a path ends with the gateway session that planned it (its policy is kept current only through that session)', async () => {
    const p = await pair();
    try {
      await up(p, [{ name: 'echo', host: '127.0.0.1', port: echoPort }]);
      const down = waitPath(p.client, 'failed');
      p.agentLink.state = 'connecting';
      p.agentLink.emit('state', 'connecting');
      assert.equal(p.agent.status().length, 0, 'the agent dropped the path at once');
      const status = await down;
      assert.ok(status.reason === 'PathLost', `client: ${status.reason}`);
      p.clientLink.emit('state', 'connecting');
      assert.equal(p.client.transport('ns/web'), undefined);
    } finally {
      await p.client.close();
      await p.agent.close();
    }
  });

  test('a policy whose plan never comes (the path ended meanwhile) does not linger on the agent', async () => {
    const agentLink = new FakeLink();
    const agent = (await AgentDirectPaths.create({ identity: await generateIdentity(), host: '127.0.0.1', planWaitMs: 50 })).attach(
      agentLink as unknown as GatewayLink,
    );
    try {
      agentLink.deliver({ type: 'direct_policy', pathId: 'gone', allow: [{ name: 'echo', host: '127.0.0.1', port: echoPort }] });
      assert.equal(agent.status()[0]?.state, 'requesting');
      await new Promise((r) => setTimeout(r, 120));
      assert.deepEqual(agent.status(), []);
    } finally {
      await agent.close();
    }
  });

  test('plans and messages that do not belong are ignored: unknown request, plan without policy, garbage punches', async () => {
    const p = await pair();
    try {
      p.clientLink.deliver(side(p.plan, p.plan.client, 'pathX', 'ns/web', 999));
      p.agentLink.deliver(side(p.plan, p.plan.agent, 'pathY', 'alice'));
      p.clientLink.deliver({ type: 'direct_refused', requestId: 12345, reason: 'Denied', message: 'no' });
      p.client.onRawDatagram(Buffer.from([0, 1, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), { address: '127.0.0.1', port: 1 });
      p.agent.onRawDatagram(Buffer.alloc(64), { address: '127.0.0.1', port: 1 });
      assert.deepEqual(p.client.status(), []);
      assert.deepEqual(p.agent.status(), []);
    } finally {
      await p.client.close();
      await p.agent.close();
    }
  });
});
