import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, describe, test } from 'node:test';
import { type GatewayConfig, generateSigningKeyPair, signToken, validateGatewayConfig } from '@narrowlink/protocol';
import { pino } from 'pino';
import WebSocket from 'ws';
import { buildAdminApp, buildApp } from './app.ts';
import { Gateway } from './gateway.ts';
import { createMetrics } from './metrics.ts';

const keys = await generateSigningKeyPair();
const log = pino({ level: 'silent' });

function config(): GatewayConfig {
  return validateGatewayConfig({
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'GatewayConfig',
    signingPublicKeys: [keys.publicKeyPem],
    agents: [{ name: 'db', expose: [{ name: 'pg', port: 5432 }] }],
    policies: [{ name: 'all', subjects: [{ kind: 'User', name: 'alice' }], rules: [{ action: 'Allow' }] }],
  });
}

const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

function setup(options: { configured?: boolean; now?: () => number } = {}) {
  const metrics = createMetrics({ defaultMetrics: false });
  const gateway = new Gateway({ log, metrics, ...(options.now ? { now: options.now } : {}) });
  if (options.configured ?? true) gateway.applyConfig(config());
  const app = buildApp({ gateway, log });
  const admin = buildAdminApp({ gateway, log });
  cleanups.push(async () => {
    await gateway.shutdown(0);
    await app.close();
    await admin.close();
  });
  return { gateway, app, admin, metrics };
}

/** Attempts a WebSocket upgrade and returns the HTTP refusal (status and JSON body), or 101. */
async function upgrade(url: string, headers: Record<string, string>): Promise<{ status: number; body: Record<string, unknown> | undefined }> {
  const ws = new WebSocket(url, { headers, perMessageDeflate: false });
  return await new Promise((resolve, reject) => {
    ws.once('unexpected-response', (_request, response) => {
      const chunks: Buffer[] = [];
      response.on('data', (c: Buffer) => chunks.push(c));
      response.on('end', () => {
        ws.terminate();
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: response.statusCode ?? 0, body: text ? (JSON.parse(text) as Record<string, unknown>) : undefined });
      });
    });
    ws.once('open', () => {
      ws.terminate();
      resolve({ status: 101, body: undefined });
    });
    ws.once('error', reject);
  });
}

describe('gateway admin app', () => {
  test('/healthz answers 200 always', async () => {
    const { admin } = setup({ configured: false });
    const response = await admin.inject({ method: 'GET', url: '/healthz' });
    assert.equal(response.statusCode, 200);
    assert.deepEqual(response.json(), { status: 'ok' });
  });

  test('/readyz is 503 before the first configuration, 200 after, 503 while shutting down', async () => {
    const { admin, gateway } = setup({ configured: false });
    const before = await admin.inject({ method: 'GET', url: '/readyz' });
    assert.equal(before.statusCode, 503);
    assert.deepEqual(before.json(), { status: 'not ready' });

    gateway.applyConfig(config());
    const ready = await admin.inject({ method: 'GET', url: '/readyz' });
    assert.equal(ready.statusCode, 200);
    assert.deepEqual(ready.json(), { status: 'ready', sessions: 0, streams: 0 });

    await gateway.shutdown(0);
    const draining = await admin.inject({ method: 'GET', url: '/readyz' });
    assert.equal(draining.statusCode, 503);
    assert.deepEqual(draining.json(), { status: 'draining' });
  });

  test('/metrics serves the Prometheus text format with the gateway metrics', async () => {
    const { admin, metrics } = setup();
    metrics.configReloads.inc({ result: 'ok' });
    const response = await admin.inject({ method: 'GET', url: '/metrics' });
    assert.equal(response.statusCode, 200);
    assert.match(String(response.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    for (const name of [
      'narrowlink_gateway_sessions',
      'narrowlink_gateway_streams_open',
      'narrowlink_gateway_streams_total',
      'narrowlink_gateway_relay_bytes_total',
      'narrowlink_gateway_stream_open_seconds',
      'narrowlink_gateway_auth_failures_total',
      'narrowlink_gateway_config_reloads_total',
      'narrowlink_gateway_policy_resets_total',
    ]) {
      assert.match(response.body, new RegExp(`^# TYPE ${name} `, 'm'), name);
    }
    assert.match(response.body, /^narrowlink_gateway_config_reloads_total\{result="ok"\} 1$/m);
  });

  test('an unknown path is a coded 404', async () => {
    const { admin } = setup();
    const response = await admin.inject({ method: 'GET', url: '/nope' });
    assert.equal(response.statusCode, 404);
    assert.equal(response.json().code, 'NL_ERR_GATEWAY_NOT_FOUND');
  });
});

describe('gateway public app', () => {
  test('serves no health, readiness or metrics: every plain HTTP request is a coded 404 (issue 10)', async () => {
    const { app } = setup();
    for (const [method, url] of [
      ['GET', '/metrics'],
      ['GET', '/readyz'],
      ['GET', '/healthz'],
      ['GET', '/'],
      ['GET', '/v1/client'],
      ['POST', '/v1/agent'],
      ['GET', '/metrics?x=1'],
    ] as const) {
      const response = await app.inject({ method, url });
      assert.equal(response.statusCode, 404, `${method} ${url}`);
      assert.equal(response.json().code, 'NL_ERR_GATEWAY_NOT_FOUND', `${method} ${url}`);
      assert.doesNotMatch(response.body, /narrowlink_gateway_|sessions/, `${method} ${url}`);
    }
  });

  test('a real listener: /metrics is 404 on the public port, 200 on the admin port', async () => {
    const { app, admin } = setup();
    await app.listen({ host: '127.0.0.1', port: 0 });
    await admin.listen({ host: '127.0.0.1', port: 0 });
    const publicPort = (app.server.address() as AddressInfo).port;
    const adminPort = (admin.server.address() as AddressInfo).port;
    const publicResponse = await fetch(`http://127.0.0.1:${publicPort}/metrics`);
    assert.equal(publicResponse.status, 404);
    assert.equal(((await publicResponse.json()) as { code: string }).code, 'NL_ERR_GATEWAY_NOT_FOUND');
    const adminResponse = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
    assert.equal(adminResponse.status, 200);
    assert.match(await adminResponse.text(), /^# TYPE narrowlink_gateway_sessions /m);
  });
});

describe('gateway upgrade refusals', async () => {
  const { app, gateway, metrics } = setup();
  await app.listen({ host: '127.0.0.1', port: 0 });
  const base = `ws://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const clientToken = await signToken(keys.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 600 });
  const agentToken = await signToken(keys.privateKeyPem, { typ: 'agent', sub: 'default/db', ttlSeconds: 600 });

  test('no Authorization header: 401 NL_ERR_AUTH_MISSING_TOKEN', async () => {
    const { status, body } = await upgrade(`${base}/v1/client`, {});
    assert.equal(status, 401);
    assert.equal(body?.code, 'NL_ERR_AUTH_MISSING_TOKEN');
  });

  test('a garbage token: 401 NL_ERR_AUTH_INVALID_TOKEN with the token reason', async () => {
    const { status, body } = await upgrade(`${base}/v1/client`, { authorization: 'Bearer not.a.token' });
    assert.equal(status, 401);
    assert.equal(body?.code, 'NL_ERR_AUTH_INVALID_TOKEN');
    assert.equal(body?.reason, 'NL_ERR_TOKEN_MALFORMED');
  });

  test('an expired token: 401 with reason NL_ERR_TOKEN_EXPIRED', async () => {
    const old = await signToken(keys.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 60, nowMs: Date.now() - 3600_000 });
    const { status, body } = await upgrade(`${base}/v1/client`, { authorization: `Bearer ${old}` });
    assert.equal(status, 401);
    assert.deepEqual([body?.code, body?.reason], ['NL_ERR_AUTH_INVALID_TOKEN', 'NL_ERR_TOKEN_EXPIRED']);
  });

  test('a token inside the clock tolerance but past its exp is refused, as the session sweep would close it', async () => {
    const justExpired = await signToken(keys.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 60, nowMs: Date.now() - 70_000 });
    const { status, body } = await upgrade(`${base}/v1/client`, { authorization: `Bearer ${justExpired}` });
    assert.equal(status, 401);
    assert.deepEqual([body?.code, body?.reason], ['NL_ERR_AUTH_INVALID_TOKEN', 'NL_ERR_TOKEN_EXPIRED']);
  });

  test('an agent token on the client endpoint: 403 NL_ERR_AUTH_WRONG_ENDPOINT', async () => {
    const { status, body } = await upgrade(`${base}/v1/client`, { authorization: `Bearer ${agentToken}` });
    assert.equal(status, 403);
    assert.equal(body?.code, 'NL_ERR_AUTH_WRONG_ENDPOINT');
  });

  test('an agent token for an agent not in the configuration: 403 NL_ERR_AUTH_UNKNOWN_AGENT', async () => {
    const stranger = await signToken(keys.privateKeyPem, { typ: 'agent', sub: 'default/stranger', ttlSeconds: 600 });
    const { status, body } = await upgrade(`${base}/v1/agent`, { authorization: `Bearer ${stranger}` });
    assert.equal(status, 403);
    assert.equal(body?.code, 'NL_ERR_AUTH_UNKNOWN_AGENT');
  });

  test('an unknown WebSocket path: 404 NL_ERR_GATEWAY_NOT_FOUND', async () => {
    const { status, body } = await upgrade(`${base}/v1/other`, { authorization: `Bearer ${clientToken}` });
    assert.equal(status, 404);
    assert.equal(body?.code, 'NL_ERR_GATEWAY_NOT_FOUND');
  });

  test('valid tokens upgrade on their endpoints; refusals are counted by reason', async () => {
    assert.equal((await upgrade(`${base}/v1/client`, { authorization: `Bearer ${clientToken}` })).status, 101);
    assert.equal((await upgrade(`${base}/v1/agent`, { authorization: `bearer ${agentToken}` })).status, 101);
    const { values } = await metrics.authFailures.get();
    const byReason = Object.fromEntries(values.map((v) => [v.labels.reason, v.value]));
    assert.equal(byReason.NL_ERR_AUTH_MISSING_TOKEN, 1);
    assert.equal(byReason.NL_ERR_TOKEN_MALFORMED, 1);
    assert.equal(byReason.NL_ERR_TOKEN_EXPIRED, 2);
    assert.equal(byReason.NL_ERR_TOKEN_WRONG_TYPE, 1, 'wrong endpoint counts the token reason');
    assert.equal(byReason.NL_ERR_AUTH_UNKNOWN_AGENT, 1);
  });

  test('while shutting down: 503 NL_ERR_GATEWAY_SHUTTING_DOWN', async () => {
    await gateway.shutdown(0);
    const { status, body } = await upgrade(`${base}/v1/client`, { authorization: `Bearer ${clientToken}` });
    assert.equal(status, 503);
    assert.equal(body?.code, 'NL_ERR_GATEWAY_SHUTTING_DOWN');
  });
});

describe('gateway upgrade before configuration', () => {
  test('503 NL_ERR_GATEWAY_NOT_READY', async () => {
    const { app } = setup({ configured: false });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const url = `ws://127.0.0.1:${(app.server.address() as AddressInfo).port}/v1/client`;
    const { status, body } = await upgrade(url, { authorization: 'Bearer x' });
    assert.equal(status, 503);
    assert.equal(body?.code, 'NL_ERR_GATEWAY_NOT_READY');
  });
});
