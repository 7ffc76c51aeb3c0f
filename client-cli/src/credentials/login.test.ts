/**
 * The login exchange against a small fake API server (HTTPS, in-process): what is sent where, what is cached, and
 * how every failure maps to a code and an exit status. The real apiserver + operator run is
 * test/k8s/login-cli.test.ts.
 */
import assert from 'node:assert/strict';
import { createPrivateKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { proofKeyX } from '@narrowlink/protocol';
import { makeTestCertificate, type TestCertificate } from '../../../test/helpers/tls.ts';
import { CliError, ExitCode } from '../errors.ts';
import { readLogin } from './cache.ts';
import { login, renewLogin } from './login.ts';

interface Behaviour {
  discovery: 'ok' | 404 | 403 | 'bad-url';
  create: 'ok' | 403 | 'webhook' | 404 | 401;
  outcome: 'issue' | 'deny' | 'silent' | 'rate-limited';
  watch: 'ok' | 403;
}

interface Recorded {
  method: string;
  path: string;
  authorization: string | undefined;
  body: unknown;
}

const LOGIN_NS = 'narrowlink-system';
let cert: TestCertificate;
let server: Server;
let port: number;
let behaviour: Behaviour;
let requests: Recorded[];
let stored: Map<string, Record<string, unknown>>;
let counter = 0;
const dirs: string[] = [];

function fakeJwt(claims: Record<string, unknown>): string {
  const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${part({ alg: 'EdDSA', typ: 'JWT' })}.${part(claims)}.c2ln`;
}

function status(res: ServerResponse, code: number, reason: string, message: string): void {
  res.writeHead(code, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', code, reason, message }));
}

function withOutcome(object: Record<string, unknown>): Record<string, unknown> {
  const spec = object.spec as { publicKey: string };
  if (behaviour.outcome === 'issue') {
    const exp = Math.floor(Date.now() / 1000) + 3600;
    return {
      ...object,
      metadata: { ...(object.metadata as object), resourceVersion: String(++counter) },
      status: {
        token: fakeJwt({ sub: 'alice', groups: ['dev', 'system:authenticated'], exp, cnf: { jkt: spec.publicKey } }),
        expiresAt: new Date(exp * 1000).toISOString(),
        conditions: [{ type: 'Ready', status: 'True', reason: 'Issued', message: 'issued' }],
      },
    };
  }
  const reason = behaviour.outcome === 'deny' ? 'Denied' : 'RateLimited';
  return {
    ...object,
    metadata: { ...(object.metadata as object), resourceVersion: String(++counter) },
    status: { conditions: [{ type: 'Ready', status: 'False', reason, message: `no token: ${reason}` }] },
  };
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  const url = new URL(req.url ?? '/', 'https://x');
  requests.push({ method: req.method ?? '', path: url.pathname + url.search, authorization: req.headers.authorization, body: text ? JSON.parse(text) : undefined });
  const discoveryPath = '/api/v1/namespaces/narrowlink-system/configmaps/narrowlink-discovery';
  const collection = `/apis/narrowlink.io/v1alpha1/namespaces/${LOGIN_NS}/clientloginrequests`;
  if (req.method === 'GET' && url.pathname === discoveryPath) {
    if (behaviour.discovery === 404) return status(res, 404, 'NotFound', 'configmaps "narrowlink-discovery" not found');
    if (behaviour.discovery === 403) return status(res, 403, 'Forbidden', 'configmaps "narrowlink-discovery" is forbidden');
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        kind: 'ConfigMap',
        metadata: { name: 'narrowlink-discovery', namespace: 'narrowlink-system' },
        data: {
          gatewayUrls: JSON.stringify([behaviour.discovery === 'bad-url' ? 'ws://gw.example.com' : 'wss://gw.example.com:443']),
          'ca.crt': cert.ca,
          natProbePorts: '[3478,3479]',
          loginNamespace: LOGIN_NS,
          tokenTtlSeconds: '28800',
        },
      }),
    );
    return;
  }
  if (req.method === 'POST' && url.pathname === collection) {
    if (behaviour.create === 403) {
      return status(
        res,
        403,
        'Forbidden',
        `clientloginrequests.narrowlink.io is forbidden: User "bob" cannot create resource "clientloginrequests" in API group "narrowlink.io" in the namespace "${LOGIN_NS}"`,
      );
    }
    if (behaviour.create === 'webhook') {
      return status(res, 403, 'Forbidden', 'admission webhook "clientloginrequests.narrowlink.io" denied the request: spec.username is set by the webhook');
    }
    if (behaviour.create === 404) return status(res, 404, 'NotFound', 'the server could not find the requested resource');
    if (behaviour.create === 401) return status(res, 401, 'Unauthorized', 'Unauthorized');
    const body = JSON.parse(text) as { metadata: { generateName: string }; spec: Record<string, unknown> };
    const name = `${body.metadata.generateName}${++counter}`;
    const object = { ...body, metadata: { name, namespace: LOGIN_NS, resourceVersion: String(counter) }, spec: { ...body.spec, username: 'alice' } };
    stored.set(name, object);
    res.writeHead(201, { 'content-type': 'application/json' });
    res.end(JSON.stringify(object));
    return;
  }
  if (req.method === 'GET' && url.pathname === collection && url.searchParams.get('watch') === 'true') {
    if (behaviour.watch === 403) return status(res, 403, 'Forbidden', 'cannot watch');
    const name = (url.searchParams.get('fieldSelector') ?? '').replace('metadata.name=', '');
    const object = stored.get(name);
    res.writeHead(200, { 'content-type': 'application/json' });
    if (!object || behaviour.outcome === 'silent') return; // keeps the stream open with nothing to say
    // The operator answers a little later, as a MODIFIED event.
    setTimeout(() => {
      const updated = withOutcome(object);
      stored.set(name, updated);
      res.write(`${JSON.stringify({ type: 'MODIFIED', object: updated })}\n`);
    }, 30);
    return;
  }
  const itemMatch = url.pathname.startsWith(`${collection}/`) ? url.pathname.slice(collection.length + 1) : undefined;
  if (itemMatch && req.method === 'GET') {
    const object = stored.get(itemMatch);
    if (!object) return status(res, 404, 'NotFound', 'not found');
    // Polling: the first read finds no outcome yet, the next one does (unless silent).
    const next = behaviour.outcome === 'silent' || !object.polled ? { ...object, polled: true } : withOutcome(object);
    stored.set(itemMatch, next);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(next));
    return;
  }
  if (itemMatch && req.method === 'DELETE') {
    stored.delete(itemMatch);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"kind":"Status","status":"Success"}');
    return;
  }
  status(res, 404, 'NotFound', `no route ${req.method} ${url.pathname}`);
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'nl-login-'));
  dirs.push(dir);
  return dir;
}

/** A kubeconfig for the fake server whose user authenticates as `user` says. */
function kubeconfig(user: Record<string, unknown>, options: { server?: string } = {}): string {
  const dir = tempDir();
  const file = join(dir, 'config');
  writeFileSync(
    file,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'fake', cluster: { server: options.server ?? `https://127.0.0.1:${port}`, 'certificate-authority-data': Buffer.from(cert.ca).toString('base64') } }],
      users: [{ name: 'alice', user }],
      contexts: [{ name: 'fake-ctx', context: { cluster: 'fake', user: 'alice' } }],
      'current-context': 'fake-ctx',
    }),
  );
  return file;
}

async function loginError(fn: () => Promise<unknown>, code: string, exitCode: number): Promise<CliError> {
  let caught: unknown;
  try {
    await fn();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof CliError, `expected a CliError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  assert.equal(caught.exitCode, exitCode);
  return caught;
}

before(async () => {
  cert = await makeTestCertificate();
  server = createServer({ cert: cert.cert, key: cert.key }, (req, res) => void handle(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});
after(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await cert.remove();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});
beforeEach(() => {
  behaviour = { discovery: 'ok', create: 'ok', outcome: 'issue', watch: 'ok' };
  requests = [];
  stored = new Map();
});

describe('login against a fake API server', () => {
  test('bearer token user: discovery → request with our public key → token cached (0600) with key, gateway and CA; request deleted', async () => {
    const xdg = tempDir();
    const { entry, file } = await login({ kubeconfig: kubeconfig({ token: 'kube-secret' }), cache: { env: { XDG_CONFIG_HOME: xdg } } });
    assert.equal(file, join(xdg, 'narrowlink', 'contexts', 'fake-ctx.json'));
    if (process.platform !== 'win32') assert.equal(statSync(file).mode & 0o777, 0o600);
    const cached = readLogin('fake-ctx', { env: { XDG_CONFIG_HOME: xdg } });
    assert.deepEqual(cached, entry);
    assert.equal(entry.context, 'fake-ctx');
    assert.equal(entry.cluster, 'fake');
    assert.equal(entry.username, 'alice');
    assert.deepEqual(entry.groups, ['dev', 'system:authenticated']);
    assert.deepEqual(entry.gatewayUrls, ['wss://gw.example.com:443']);
    assert.equal(entry.caPem, cert.ca);
    assert.deepEqual(entry.natProbePorts, [3478, 3479]);
    assert.equal(entry.loginNamespace, LOGIN_NS);
    assert.ok(Date.parse(entry.expiresAt) > Date.now());

    const create = requests.find((r) => r.method === 'POST');
    assert.ok(create);
    const sentKey = (create.body as { spec: { publicKey: string } }).spec.publicKey;
    assert.equal(sentKey, proofKeyX(createPrivateKey(entry.proofKeyPem)), 'the request carries the public half of the cached key');
    assert.deepEqual(Object.keys((create.body as { spec: object }).spec), ['publicKey'], 'no username/groups/uid from the client');
    assert.match(create.path, /fieldManager=narrowlink-cli/);
    assert.ok(requests.every((r) => r.authorization === 'Bearer kube-secret'), 'the kube credential goes to the API server, on every call');
    const name = (stored.size === 0 && requests.find((r) => r.method === 'DELETE')?.path) || '';
    assert.match(name, /clientloginrequests\/login-\d+$/, 'the request was deleted');
    assert.ok(!readFileSync(file, 'utf8').includes('kube-secret'), 'the kube credential is not cached');
  });

  test('exec credential plugin (as EKS/GKE/OIDC helpers) and token files: the credential kubectl would send is sent', async () => {
    const dir = tempDir();
    const plugin = join(dir, 'plugin.mjs');
    writeFileSync(
      plugin,
      `process.stdout.write(JSON.stringify({ apiVersion: 'client.authentication.k8s.io/v1beta1', kind: 'ExecCredential', status: { token: 'from-exec-plugin' } }));\n`,
    );
    const xdg = tempDir();
    await login({
      kubeconfig: kubeconfig({ exec: { apiVersion: 'client.authentication.k8s.io/v1beta1', command: process.execPath, args: [plugin], interactiveMode: 'Never' } }),
      cache: { env: { XDG_CONFIG_HOME: xdg } },
    });
    assert.ok(requests.length >= 3);
    assert.ok(requests.every((r) => r.authorization === 'Bearer from-exec-plugin'));

    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, 'from-token-file\n');
    requests = [];
    await login({ kubeconfig: kubeconfig({ tokenFile }), cache: { env: { XDG_CONFIG_HOME: xdg } } });
    assert.ok(requests.every((r) => r.authorization === 'Bearer from-token-file'));
  });

  test('a user who may create but not watch: the CLI polls the request instead', async () => {
    behaviour.watch = 403;
    const { entry } = await login({ kubeconfig: kubeconfig({ token: 't' }), cache: { env: { XDG_CONFIG_HOME: tempDir() } } });
    assert.equal(entry.username, 'alice');
    assert.ok(requests.filter((r) => r.method === 'GET' && /clientloginrequests\/login-/.test(r.path)).length >= 2);
  });

  test('renewLogin: same kubeconfig credential, same key, cache rewritten', async () => {
    const xdg = tempDir();
    const cache = { env: { XDG_CONFIG_HOME: xdg } };
    const { entry } = await login({ kubeconfig: kubeconfig({ token: 't' }), cache });
    requests = [];
    const renewed = await renewLogin(entry, { cache });
    assert.equal(renewed.proofKeyPem, entry.proofKeyPem);
    const create = requests.find((r) => r.method === 'POST');
    assert.ok(create);
    assert.equal((create.body as { spec: { publicKey: string } }).spec.publicKey, proofKeyX(createPrivateKey(entry.proofKeyPem)));
    assert.equal(requests.some((r) => r.path.includes('configmaps')), false, 'a renewal does not re-read discovery');
    assert.deepEqual(readLogin('fake-ctx', cache)?.token, renewed.token);
  });
});

describe('login failures: code and exit status', () => {
  test('no RBAC to create: NL_ERR_CLI_LOGIN_FORBIDDEN, exit 3, naming the permission and the ClusterRole', async () => {
    behaviour.create = 403;
    const error = await loginError(() => login({ kubeconfig: kubeconfig({ token: 't' }), cache: { env: { XDG_CONFIG_HOME: tempDir() } } }), 'NL_ERR_CLI_LOGIN_FORBIDDEN', ExitCode.AUTH);
    assert.match(error.message, new RegExp(`create clientloginrequests\\.narrowlink\\.io in namespace "${LOGIN_NS}"`));
    assert.match(error.message, /narrowlink-login/);
  });

  test('the webhook refuses: NL_ERR_CLI_LOGIN_REFUSED, exit 3', async () => {
    behaviour.create = 'webhook';
    await loginError(() => login({ kubeconfig: kubeconfig({ token: 't' }), cache: { env: { XDG_CONFIG_HOME: tempDir() } } }), 'NL_ERR_CLI_LOGIN_REFUSED', ExitCode.AUTH);
  });

  test('no discovery ConfigMap: NL_ERR_CLI_NOT_INSTALLED, exit 2, suggesting -n', async () => {
    behaviour.discovery = 404;
    const error = await loginError(() => login({ kubeconfig: kubeconfig({ token: 't' }), cache: { env: { XDG_CONFIG_HOME: tempDir() } } }), 'NL_ERR_CLI_NOT_INSTALLED', ExitCode.USAGE);
    assert.match(error.message, /-n/);
    assert.equal(requests.some((r) => r.method === 'POST'), false, 'nothing is created');
  });

  test('discovery ConfigMap not readable (403: no chart, so no Role for authenticated users there): NL_ERR_CLI_NOT_INSTALLED, exit 2', async () => {
    behaviour.discovery = 403;
    await loginError(() => login({ kubeconfig: kubeconfig({ token: 't' }), cache: { env: { XDG_CONFIG_HOME: tempDir() } } }), 'NL_ERR_CLI_NOT_INSTALLED', ExitCode.USAGE);
  });

  test('no ClientLoginRequest kind (an old chart): NL_ERR_CLI_NOT_INSTALLED', async () => {
    behaviour.create = 404;
    await loginError(() => login({ kubeconfig: kubeconfig({ token: 't' }), cache: { env: { XDG_CONFIG_HOME: tempDir() } } }), 'NL_ERR_CLI_NOT_INSTALLED', ExitCode.USAGE);
  });

  test('a discovery ConfigMap with a cleartext remote gateway: NL_ERR_CLI_DISCOVERY_INVALID, and no request made', async () => {
    behaviour.discovery = 'bad-url';
    await loginError(() => login({ kubeconfig: kubeconfig({ token: 't' }), cache: { env: { XDG_CONFIG_HOME: tempDir() } } }), 'NL_ERR_CLI_DISCOVERY_INVALID', ExitCode.FAILURE);
    assert.equal(requests.some((r) => r.method === 'POST'), false);
  });

  test('Ready=False Denied / RateLimited: NL_ERR_CLI_LOGIN_REFUSED, exit 3, nothing cached, request deleted', async () => {
    for (const outcome of ['deny', 'rate-limited'] as const) {
      behaviour.outcome = outcome;
      requests = [];
      const xdg = tempDir();
      const error = await loginError(() => login({ kubeconfig: kubeconfig({ token: 't' }), cache: { env: { XDG_CONFIG_HOME: xdg } } }), 'NL_ERR_CLI_LOGIN_REFUSED', ExitCode.AUTH);
      assert.match(error.message, outcome === 'deny' ? /Denied/ : /RateLimited/);
      assert.equal(readLogin('fake-ctx', { env: { XDG_CONFIG_HOME: xdg } }), undefined);
      assert.ok(requests.some((r) => r.method === 'DELETE'));
    }
  });

  test('no answer from the operator: NL_ERR_CLI_LOGIN_TIMEOUT (exit 1) after the timeout, request deleted', async () => {
    behaviour.outcome = 'silent';
    const started = Date.now();
    await loginError(
      () => login({ kubeconfig: kubeconfig({ token: 't' }), timeoutMs: 400, cache: { env: { XDG_CONFIG_HOME: tempDir() } } }),
      'NL_ERR_CLI_LOGIN_TIMEOUT',
      ExitCode.FAILURE,
    );
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 350 && elapsed < 5000, `took ${elapsed} ms`);
    assert.ok(requests.some((r) => r.method === 'DELETE'));
  });

  test('credential refused (401): NL_ERR_CLI_KUBE_UNAUTHORIZED, exit 3', async () => {
    behaviour.create = 401;
    await loginError(() => login({ kubeconfig: kubeconfig({ token: 't' }), cache: { env: { XDG_CONFIG_HOME: tempDir() } } }), 'NL_ERR_CLI_KUBE_UNAUTHORIZED', ExitCode.AUTH);
  });

  test('API server unreachable: NL_ERR_CLI_KUBE_UNREACHABLE, exit 4', async () => {
    // A port nothing listens on (bound, then closed).
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const deadPort = (probe.address() as AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
    await loginError(
      () => login({ kubeconfig: kubeconfig({ token: 't' }, { server: `https://127.0.0.1:${deadPort}` }), cache: { env: { XDG_CONFIG_HOME: tempDir() } } }),
      'NL_ERR_CLI_KUBE_UNREACHABLE',
      ExitCode.UNREACHABLE,
    );
  });

  test('no such context, no kubeconfig: NL_ERR_CLI_KUBECONFIG, exit 2', async () => {
    await loginError(() => login({ kubeconfig: kubeconfig({ token: 't' }), context: 'nope' }), 'NL_ERR_CLI_KUBECONFIG', ExitCode.USAGE);
    await loginError(() => login({ kubeconfig: join(tempDir(), 'missing') }), 'NL_ERR_CLI_KUBECONFIG', ExitCode.USAGE);
  });
});
