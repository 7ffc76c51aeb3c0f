/**
 * Sidecar identity without long-lived secrets, on a real kube-apiserver 1.20 (see ./cluster.ts): a ServiceAccount
 * token from the TokenRequest API (what the kubelet projects into an injected pod), presented by a real agent
 * process naming itself with `--agent-name`; a real gateway process (`--config-source kubernetes`, TokenReview on
 * by default) accepts it and relays a client through it, and refuses a wrong audience, an expired token, the token
 * of a deleted ServiceAccount (401) and the token of a ServiceAccount the agent does not list (403).
 *
 * The tests run in order and share one apiserver, the gateway and the objects made by the earlier ones.
 */
import assert from 'node:assert/strict';
import { sign } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { type ResourceType, RestKubeClient, Resources } from '@narrowlink/kube';
import { generateSigningKeyPair, signToken } from '@narrowlink/protocol';
import WebSocket from 'ws';
import { type StartedProcess, startProcess, stopAll } from '../helpers/processes.ts';
import { startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { useApiServer } from './cluster.ts';
import { SCRIPTS } from '../helpers/paths.ts';
import { waitFor } from '../helpers/wait.ts';


const SYSTEM_NS = 'narrowlink-system';
const NS = 'shop';
const CONFIG_SECRET = 'narrowlink-gateway-config';
const SA = 'orders-sa';
/** Listed in the agent's serviceAccounts, then deleted. */
const DOOMED_SA = 'legacy-sa';
/** A valid ServiceAccount the agent does not list. */
const STRANGER_SA = 'stranger-sa';

const serviceAccounts: ResourceType = { group: '', version: 'v1', plural: 'serviceaccounts', kind: 'ServiceAccount', namespaced: true };
const tokenReviews: ResourceType = { group: 'authentication.k8s.io', version: 'v1', plural: 'tokenreviews', kind: 'TokenReview', namespaced: false };

/** The TokenRequest subresource of one ServiceAccount, through the narrow client's `create`. */
async function requestToken(client: RestKubeClient, serviceAccount: string, audiences: string[], expirationSeconds = 600): Promise<string> {
  const subresource: ResourceType = { group: '', version: 'v1', plural: `serviceaccounts/${serviceAccount}/token`, kind: 'TokenRequest', namespaced: true };
  const answer = await client.create(subresource, {
    apiVersion: 'authentication.k8s.io/v1',
    kind: 'TokenRequest',
    metadata: { namespace: NS },
    spec: { audiences, expirationSeconds },
  });
  const token = (answer.status as { token?: string } | undefined)?.token;
  assert.ok(token, `TokenRequest for ${serviceAccount} returned a token`);
  return token;
}

function decodeJwt(token: string): { header: Record<string, unknown>; payload: Record<string, unknown> } {
  const [header, payload] = token
    .split('.')
    .slice(0, 2)
    .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as Record<string, unknown>);
  return { header: header ?? {}, payload: payload ?? {} };
}

/** A JWT with `header` and `payload`, RS256-signed with the apiserver's ServiceAccount key. */
function signRs256(keyPem: string, header: Record<string, unknown>, payload: Record<string, unknown>): string {
  const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${b64(header)}.${b64(payload)}`;
  return `${input}.${sign('sha256', Buffer.from(input), keyPem).toString('base64url')}`;
}

/** Opens a raw upgrade to /v1/agent: `accepted` on 101, else the HTTP status and JSON body. */
function upgrade(url: string, token: string, agentRef: string): Promise<{ accepted: boolean; status: number; body: { code?: string; reason?: string } }> {
  const ws = new WebSocket(`${url}/v1/agent`, { headers: { authorization: `Bearer ${token}`, 'x-narrowlink-agent': agentRef }, perMessageDeflate: false });
  ws.on('error', () => undefined);
  return new Promise((resolve) => {
    ws.once('open', () => {
      ws.terminate();
      resolve({ accepted: true, status: 101, body: {} });
    });
    ws.once('unexpected-response', (_request, response) => {
      const chunks: Buffer[] = [];
      response.on('data', (c: Buffer) => chunks.push(c));
      response.on('end', () => resolve({ accepted: false, status: response.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) }));
    });
  });
}


/** One sample from the gateway's /metrics, served on its admin listener (`adminUrl`, plain HTTP). */
async function metric(adminUrl: string, line: string): Promise<number | undefined> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const found = text.split('\n').find((l) => l.startsWith(`${line} `));
  return found === undefined ? undefined : Number(found.slice(line.length + 1));
}

async function echoThrough(port: number, payload: Buffer): Promise<Buffer> {
  const socket = net.connect({ host: '127.0.0.1', port });
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.write(payload);
  await waitFor('the echo', async () => Buffer.concat(chunks).length >= payload.length, 10_000);
  socket.destroy();
  return Buffer.concat(chunks);
}

describe('sidecar identity on a real kube-apiserver: TokenRequest tokens, TokenReview at the gateway', () => {
  // Registered before useApiServer's hooks so the processes stop before the apiserver does.
  let echo: TestServer | undefined;
  let tmp: string | undefined;
  after(async () => {
    await stopAll('SIGTERM', 3_000);
    await echo?.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });
  const k8s = useApiServer();

  let client: RestKubeClient;
  let env: Record<string, string | undefined>;
  let gateway: StartedProcess;
  let url: string;
  let adminUrl: string;
  let saKeyPem: string;
  let issuer: string;
  let orderToken: string;

  it('setup: namespaces, ServiceAccounts, the gateway config Secret and a gateway with the Kubernetes config source', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    tmp = await mkdtemp(path.join(os.tmpdir(), 'nl-k8s-sidecar-'));
    env = { XDG_CONFIG_HOME: path.join(tmp, 'xdg'), KUBECONFIG: api.kubeconfigPath };
    for (const key of Object.keys(process.env)) if (key.startsWith('NARROWLINK_')) env[key] = undefined;
    client = await RestKubeClient.fromKubeConfig(api.kubeConfig());
    saKeyPem = readFileSync(api.serviceAccountKeyPath, 'utf8');
    issuer = api.serviceAccountIssuer;
    echo = await startEchoServer();
    for (const name of [SYSTEM_NS, NS]) await client.create(Resources.namespace, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
    for (const name of [SA, DOOMED_SA, STRANGER_SA]) {
      await client.create(serviceAccounts, { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace: NS } });
    }
    const signing = await generateSigningKeyPair();
    const config = {
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'GatewayConfig',
      signingPublicKeys: [signing.publicKeyPem],
      agents: [{ name: 'orders', namespace: NS, expose: [{ name: 'http', port: echo.port }], serviceAccounts: [SA, DOOMED_SA] }],
      policies: [{ name: 'devs', namespace: NS, subjects: [{ kind: 'User', name: 'alice' }], rules: [{ action: 'Allow', agents: { names: ['orders'] } }] }],
    };
    await client.apply(
      Resources.secret,
      {
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: CONFIG_SECRET, namespace: SYSTEM_NS },
        type: 'Opaque',
        data: { 'config.yaml': Buffer.from(JSON.stringify(config)).toString('base64') },
      },
      { fieldManager: 'sidecar-identity-test' },
    );
    gateway = await startProcess(
      'gateway',
      [
        SCRIPTS.gateway,
        '--config-source', 'kubernetes',
        '--config-secret', CONFIG_SECRET,
        '--config-namespace', SYSTEM_NS,
        '--kubeconfig', api.kubeconfigPath,
        '--listen', '127.0.0.1:0',
        '--admin-listen', '127.0.0.1:0',
        '--drain-ms', '200',
      ],
      { env, timeoutMs: 20_000 },
    );
    url = String(gateway.readyLine.url);
    adminUrl = String(gateway.readyLine.adminUrl);
    // The alice token is signed by our key: written to a file for the CLI below.
    writeFileSync(path.join(tmp, 'alice.token'), await signToken(signing.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 600 }));
  });

  it('an agent process with a TokenRequest token and --agent-name attaches; a client forward goes through it', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    assert.ok(echo && tmp && url, 'setup did not complete');
    orderToken = await requestToken(client, SA, ['narrowlink']);
    const { payload } = decodeJwt(orderToken);
    assert.equal(payload.sub, `system:serviceaccount:${NS}:${SA}`);
    assert.deepEqual(payload.aud, ['narrowlink']);
    const tokenFile = path.join(tmp, 'sa.token');
    writeFileSync(tokenFile, `${orderToken}\n`);
    await startProcess('agent (ServiceAccount)', [SCRIPTS.agent, '--gateway', url, '--token-file', tokenFile, '--agent-name', `${NS}/orders`, '--expose', `http=127.0.0.1:${echo.port}`], {
      env,
    });
    await waitFor('sessions{kind="agent"} 1', async () => (await metric(adminUrl, 'narrowlink_gateway_sessions{kind="agent"}')) === 1, 5_000);

    const forward = await startProcess(
      'narrowlink forward',
      [SCRIPTS.client, 'forward', '-o', 'json', '-L', `127.0.0.1:0:${NS}/orders:http`, '--gateway', url, '--token-file', path.join(tmp, 'alice.token')],
      { env },
    );
    const port = Number((forward.readyLine.listeners as Array<{ port: number }>)[0]?.port);
    const payloadBytes = Buffer.from('through an agent that holds no Narrowlink secret\n');
    assert.deepEqual(await echoThrough(port, payloadBytes), payloadBytes);
    assert.equal(await metric(adminUrl, 'narrowlink_gateway_streams_total{result="ok"}'), 1);
    await forward.stop();

    // The injected form: the name from NARROWLINK_AGENT_NAME + NARROWLINK_AGENT_NAMESPACE, a second instance.
    const second = await startProcess('agent (env)', [SCRIPTS.agent, '--gateway', url, '--token-file', tokenFile, '--expose', `http=127.0.0.1:${echo.port}`], {
      env: { ...env, NARROWLINK_AGENT_NAME: 'orders', NARROWLINK_AGENT_NAMESPACE: NS, POD_NAME: 'orders-7d9f-x2' },
    });
    await waitFor('sessions{kind="agent"} 2', async () => (await metric(adminUrl, 'narrowlink_gateway_sessions{kind="agent"}')) === 2, 5_000);
    await second.stop();
    await waitFor('sessions{kind="agent"} 1', async () => (await metric(adminUrl, 'narrowlink_gateway_sessions{kind="agent"}')) === 1, 5_000);
  });

  it('a token for another audience is refused with 401 (the TokenReview rejects it)', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    const other = await requestToken(client, SA, ['other']);
    const refused = await upgrade(url, other, `${NS}/orders`);
    assert.equal(refused.status, 401);
    assert.equal(refused.body.code, 'NL_ERR_AUTH_INVALID_TOKEN');
    assert.equal(refused.body.reason, 'NL_ERR_TOKEN_REVIEW_REJECTED');
  });

  it('an expired token signed with the apiserver key is refused with 401; the same token, unexpired, is accepted', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    // Mirror a real TokenRequest token (header with kid, kubernetes.io claims), only with the times moved.
    const { header, payload } = decodeJwt(orderToken);
    assert.equal(header.alg, 'RS256');
    assert.equal(payload.iss, issuer);
    assert.ok(payload['kubernetes.io'], 'a bound token carries kubernetes.io claims');
    const now = Math.floor(Date.now() / 1000);
    const craft = (iat: number, exp: number): string => signRs256(saKeyPem, header, { ...payload, iat, nbf: iat, exp, jti: undefined });
    // Control: crafted the same way but valid, the apiserver and the gateway accept it.
    const valid = craft(now - 60, now + 600);
    assert.equal((await upgrade(url, valid, `${NS}/orders`)).status, 101, 'a crafted, unexpired token is accepted (the crafting is right)');
    // Expired an hour ago: well past the apiserver's one-minute leeway.
    const expired = craft(now - 7200, now - 3600);
    const refused = await upgrade(url, expired, `${NS}/orders`);
    assert.equal(refused.status, 401);
    assert.equal(refused.body.code, 'NL_ERR_AUTH_INVALID_TOKEN');
    assert.equal(refused.body.reason, 'NL_ERR_TOKEN_REVIEW_REJECTED');
  });

  it('the token of a deleted ServiceAccount is refused with 401', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    // Three distinct tokens (TokenRequest tokens have no jti: two asked for in the same second with the same
    // expiry are byte-identical, and the gateway caches a success until expiry). `before` shows the
    // ServiceAccount's tokens work while it exists; `probe` follows the apiserver until it has seen the deletion
    // (it caches successes briefly); `after` is presented to the gateway for the first time after that.
    const before = await requestToken(client, DOOMED_SA, ['narrowlink'], 600);
    const after = await requestToken(client, DOOMED_SA, ['narrowlink'], 601);
    const probe = await requestToken(client, DOOMED_SA, ['narrowlink'], 602);
    assert.equal(new Set([before, after, probe]).size, 3);
    assert.equal((await upgrade(url, before, `${NS}/orders`)).status, 101, 'listed and alive: accepted');
    assert.equal(await client.delete(serviceAccounts, NS, DOOMED_SA), true);
    await waitFor('the apiserver to reject tokens of the deleted ServiceAccount', async () => {
      const review = await client.create(tokenReviews, { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', metadata: {}, spec: { token: probe, audiences: ['narrowlink'] } });
      return (review.status as { authenticated?: boolean } | undefined)?.authenticated !== true;
    });
    const refused = await upgrade(url, after, `${NS}/orders`);
    assert.equal(refused.status, 401);
    assert.equal(refused.body.code, 'NL_ERR_AUTH_INVALID_TOKEN');
    assert.equal(refused.body.reason, 'NL_ERR_TOKEN_REVIEW_REJECTED');
  });

  it('a valid token of a ServiceAccount the agent does not list is refused with 403', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    const stranger = await requestToken(client, STRANGER_SA, ['narrowlink']);
    const refused = await upgrade(url, stranger, `${NS}/orders`);
    assert.equal(refused.status, 403);
    assert.equal(refused.body.code, 'NL_ERR_AUTH_SERVICE_ACCOUNT_NOT_ALLOWED');
    // The attached agent is untouched by all of the above.
    assert.equal(await metric(adminUrl, 'narrowlink_gateway_sessions{kind="agent"}'), 1);
  });
});
