/**
 * The operator against a real kube-apiserver 1.20 (see ./cluster.ts), every component a real process:
 * CRDs installed from crds/*.yaml, a fake cert-manager issuer in this process (./fixtures/fake-cert-manager.ts),
 * the operator, a gateway reading its config Secret, an agent using the operator's token, and `narrowlink
 * forward` with a client token signed by the operator's signing key.
 *
 * The tests run in order and share one apiserver and the objects made by the earlier ones.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { KubeError, type KubeObject, RestKubeClient, Resources } from '@narrowlink/kube';
import { type GatewayConfig, parseGatewayConfig, signToken, verifyToken } from '@narrowlink/protocol';
import { parseAllDocuments } from 'yaml';
import { type LogLine, type StartedProcess, startProcess, stopAll } from '../helpers/processes.ts';
import { startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';
import { type ApiServer, useApiServer } from './cluster.ts';
import { applyCrd, type FakeCertManager, installCertificateCrd, startFakeCertManager } from './fixtures/fake-cert-manager.ts';
import { ROOT, SCRIPTS } from '../helpers/paths.ts';
import { waitFor } from '../helpers/wait.ts';


const SYSTEM_NS = 'narrowlink-system';
const NS = 'shop';
const CONFIG_SECRET = 'narrowlink-gateway-config';
const SIGNING_SECRET = 'narrowlink-signing-key';
const LEASE = 'narrowlink-operator';
const FINALIZER = 'narrowlink.io/cleanup';
const TOKEN_SECRET = 'orders-narrowlink-token';
const OWNED_BY_ORDERS = 'narrowlink.io/owner-kind=NarrowlinkAgent,narrowlink.io/owner-namespace=shop,narrowlink.io/owner-name=orders';
const CAMEL_CASE = /^[A-Z][A-Za-z0-9]*$/;

interface Condition {
  type: string;
  status: string;
  reason: string;
  message: string;
  observedGeneration?: number;
}
type Status = { conditions?: Condition[]; observedGeneration?: number; tokenSecretName?: string } | undefined;

function condition(object: KubeObject | undefined, type: string): Condition | undefined {
  return (object?.status as Status)?.conditions?.find((c) => c.type === type);
}


const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function decode(secret: KubeObject | undefined, key: string): string | undefined {
  const b64 = (secret?.data as Record<string, string> | undefined)?.[key];
  return b64 === undefined ? undefined : Buffer.from(b64, 'base64').toString('utf8');
}

/** A TCP connection to a local port, with everything it receives collected. */
interface Conn {
  socket: net.Socket;
  received: () => Buffer;
  closed: Promise<void>;
}

async function connect(port: number): Promise<Conn> {
  const socket = net.connect({ host: '127.0.0.1', port });
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return { socket, received: () => Buffer.concat(chunks), closed };
}

/** Writes `payload` and waits until the same bytes came back after what was received before. */
async function echoes(conn: Conn, payload: Buffer, timeoutMs = 10_000): Promise<void> {
  const before = conn.received().length;
  conn.socket.write(payload);
  await waitFor(
    'the echo',
    async () => {
      if (conn.socket.destroyed && conn.received().length < before + payload.length) throw new Error('connection closed before the echo');
      return conn.received().length >= before + payload.length;
    },
    timeoutMs,
  );
  assert.deepEqual(conn.received().subarray(before), payload);
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]);
}

describe('operator on a real kube-apiserver: CRDs → token, Certificates, gateway config → a live relay', () => {
  // Registered before useApiServer's hooks so the processes stop before the apiserver does.
  let issuer: FakeCertManager | undefined;
  let echo: TestServer | undefined;
  let tmp: string | undefined;
  after(async () => {
    issuer?.stop();
    await stopAll('SIGTERM', 3_000);
    await echo?.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });
  const k8s = useApiServer();

  let client: RestKubeClient;
  let env: Record<string, string | undefined>;
  let operatorA: StartedProcess;
  let gateway: StartedProcess;
  let signingKey: { privateKeyPem: string; publicKeyPem: string } | undefined;

  const operatorArgs = (api: ApiServer, extra: string[]): string[] => [
    SCRIPTS.operator,
    '--kubeconfig', api.kubeconfigPath,
    '--namespace', SYSTEM_NS,
    '--default-issuer', 'test-issuer',
    '--listen', '127.0.0.1:0',
    ...extra,
  ];
  const startOperator = (api: ApiServer, identity: string, extra: string[] = []): Promise<StartedProcess> =>
    startProcess(`operator ${identity}`, operatorArgs(api, ['--identity', identity, ...extra]), { env, timeoutMs: 20_000 });

  const gatewayConfig = async (): Promise<GatewayConfig | undefined> => {
    const text = decode(await client.get(Resources.secret, SYSTEM_NS, CONFIG_SECRET), 'config.yaml');
    return text === undefined ? undefined : parseGatewayConfig(text);
  };
  const policy = (name: string, spec: Record<string, unknown>): KubeObject => ({
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'AccessPolicy',
    metadata: { name, namespace: NS },
    spec,
  });
  const policyReady = (name: string): Promise<KubeObject> =>
    waitFor(`AccessPolicy ${name} Ready=True`, async () => {
      const p = await client.get(Resources.accessPolicy, NS, name);
      const ready = condition(p, 'Ready');
      return ready?.status === 'True' && ready.observedGeneration === p?.metadata.generation ? p : undefined;
    });

  it('setup: namespaces, the CRDs from crds/, a cert-manager Certificate CRD and the fake issuer', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    tmp = await mkdtemp(path.join(os.tmpdir(), 'nl-k8s-operator-'));
    // Children must not pick up a developer's settings or credentials.
    env = { XDG_CONFIG_HOME: path.join(tmp, 'xdg'), KUBECONFIG: api.kubeconfigPath };
    for (const key of Object.keys(process.env)) if (key.startsWith('NARROWLINK_')) env[key] = undefined;
    client = await RestKubeClient.fromKubeConfig(api.kubeConfig());
    for (const name of [SYSTEM_NS, NS]) {
      await client.create(Resources.namespace, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
    }
    const crdDir = path.join(ROOT, 'crds');
    const files = readdirSync(crdDir).filter((f) => f.endsWith('.yaml'));
    assert.ok(files.length >= 2, `CRD YAML in ${crdDir}: ${files.join(', ')}`);
    for (const file of files) {
      for (const doc of parseAllDocuments(readFileSync(path.join(crdDir, file), 'utf8'))) {
        const crd = doc.toJS() as KubeObject | null;
        if (crd) await applyCrd(client, crd);
      }
    }
    await installCertificateCrd(client);
    issuer = await startFakeCertManager(client);
    echo = await startEchoServer();
  });

  it('an agent and a policy become a token Secret, one Certificate per domain and the gateway config Secret', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    assert.ok(echo && issuer, 'the setup test did not complete');
    operatorA = await startOperator(api, 'op-a');
    await operatorA.waitFor((l) => l.event === 'leading', 20_000);

    const created = await client.create(Resources.narrowlinkAgent, {
      apiVersion: 'narrowlink.io/v1alpha1',
      kind: 'NarrowlinkAgent',
      metadata: { name: 'orders', namespace: NS, labels: { app: 'orders' } },
      spec: {
        external: true,
        expose: [{ name: 'http', port: echo.port, host: '127.0.0.1' }],
        publish: [
          { domain: 'a.shop.example', port: echo.port, tls: 'Terminate' },
          { domain: 'b.shop.example', port: echo.port, tls: 'Terminate' },
        ],
      },
    });
    await client.create(Resources.accessPolicy, policy('devs', { subjects: [{ kind: 'User', name: 'alice' }], rules: [{ action: 'Allow', agents: { names: ['orders'] } }] }));

    // Finalizer.
    await waitFor('the finalizer', async () => (await client.get(Resources.narrowlinkAgent, NS, 'orders'))?.metadata.finalizers?.includes(FINALIZER));

    // The signing key the operator created, and the agent token signed with it.
    const signing = await waitFor('the signing key Secret', () => client.get(Resources.secret, SYSTEM_NS, SIGNING_SECRET));
    signingKey = { privateKeyPem: decode(signing, 'private.pem') ?? '', publicKeyPem: decode(signing, 'public.pem') ?? '' };
    assert.match(signingKey.privateKeyPem, /BEGIN PRIVATE KEY/);
    const tokenSecret = await waitFor('the token Secret', () => client.get(Resources.secret, NS, TOKEN_SECRET));
    assert.equal(tokenSecret.type, 'narrowlink.io/agent-token');
    const claims = await verifyToken(decode(tokenSecret, 'token') ?? '', { publicKeysPem: [signingKey.publicKeyPem], expectedType: 'agent' });
    assert.equal(claims.typ, 'agent');
    assert.equal(claims.sub, 'shop/orders');
    const owner = (tokenSecret.metadata.ownerReferences as Array<{ uid?: string; kind?: string }> | undefined)?.[0];
    assert.deepEqual([owner?.kind, owner?.uid], ['NarrowlinkAgent', created.metadata.uid]);

    // Exactly two Certificates, one per domain, with the default ClusterIssuer.
    const certificates = await waitFor('two Certificates', async () => {
      const { items } = await client.list(Resources.certificate, { namespace: NS });
      return items.length >= 2 ? items : undefined;
    });
    await sleep(300); // nothing more than two may appear
    const { items: allCertificates } = await client.list(Resources.certificate, { namespace: NS });
    assert.equal(allCertificates.length, 2, allCertificates.map((c) => c.metadata.name).join(', '));
    const specs = certificates.map((c) => c.spec as { dnsNames: string[]; secretName: string; issuerRef: unknown; secretTemplate?: { labels?: Record<string, string> } });
    assert.deepEqual(specs.map((s) => s.dnsNames).sort(), [['a.shop.example'], ['b.shop.example']]);
    for (const s of specs) {
      assert.deepEqual(s.issuerRef, { name: 'test-issuer', kind: 'ClusterIssuer', group: 'cert-manager.io' });
      assert.equal(s.secretTemplate?.labels?.['narrowlink.io/owner-name'], 'orders');
    }

    // The fake issuer made the TLS Secrets (owner labels from secretTemplate) and set Ready.
    const tlsSecrets = await waitFor('two TLS Secrets', async () => {
      const { items } = await client.list(Resources.secret, { namespace: NS, labelSelector: `${OWNED_BY_ORDERS},app.kubernetes.io/component=certificate` });
      return items.length === 2 ? items : undefined;
    });
    assert.deepEqual(tlsSecrets.map((s) => s.metadata.name).sort(), specs.map((s) => s.secretName).sort());
    for (const s of tlsSecrets) {
      assert.equal(s.type, 'kubernetes.io/tls');
      assert.match(decode(s, 'tls.crt') ?? '', /BEGIN CERTIFICATE/);
    }

    // The gateway config Secret.
    const config = await waitFor('the gateway config to list orders and devs', async () => {
      const c = await gatewayConfig();
      return c?.agents.some((a) => a.name === 'orders') && c.policies.some((p) => p.name === 'devs') ? c : undefined;
    });
    assert.deepEqual(
      config.agents.map(({ name, namespace, labels, mode, expose }) => ({ name, namespace, labels, mode, expose })),
      [{ name: 'orders', namespace: NS, labels: { app: 'orders' }, mode: 'auto', expose: [{ name: 'http', port: echo.port, host: '127.0.0.1' }] }],
    );
    assert.deepEqual(
      config.policies.map((p) => ({ name: p.name, namespace: p.namespace, subjects: p.subjects })),
      [{ name: 'devs', namespace: NS, subjects: [{ kind: 'User', name: 'alice' }] }],
    );
    assert.deepEqual(config.signingPublicKeys.map((k) => k.trim()), [signingKey.publicKeyPem.trim()]);

    // Status: Ready, CertificatesReady (after the fake issuer), observedGeneration current.
    const agent = await waitFor('agent Ready and CertificatesReady', async () => {
      const a = await client.get(Resources.narrowlinkAgent, NS, 'orders');
      return condition(a, 'Ready')?.status === 'True' && condition(a, 'CertificatesReady')?.status === 'True' ? a : undefined;
    });
    const generation = agent.metadata.generation;
    assert.equal((agent.status as Status)?.observedGeneration, generation);
    assert.equal(condition(agent, 'Ready')?.observedGeneration, generation);
    assert.equal(condition(agent, 'CertificatesReady')?.observedGeneration, generation);
    assert.equal((agent.status as Status)?.tokenSecretName, TOKEN_SECRET);
    await policyReady('devs');

    // Every Certificate the operator emitted has cert-manager's shape.
    await issuer.idle();
    for (const c of certificates) assert.ok(issuer.validated.has(`${NS}/${c.metadata.name}`), `not validated: ${c.metadata.name}`);
    assert.deepEqual(issuer.validationErrors, []);
    assert.deepEqual(issuer.failures, []);
  });

  it('end to end: a gateway reading the Secret relays alice; an invalid policy is reported and ignored; revoking alice resets her stream', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    assert.ok(echo && signingKey, 'the earlier tests did not complete');
    gateway = await startProcess(
      'gateway',
      [
        SCRIPTS.gateway,
        '--config-source', 'kubernetes',
        '--config-secret', CONFIG_SECRET,
        '--config-namespace', SYSTEM_NS,
        '--kubeconfig', api.kubeconfigPath,
        '--listen', '127.0.0.1:0',
        '--drain-ms', '500',
      ],
      { env, timeoutMs: 20_000 },
    );
    const url = String(gateway.readyLine.url);
    const agentToken = decode(await client.get(Resources.secret, NS, TOKEN_SECRET), 'token') ?? '';
    const agent = await startProcess('agent shop/orders', [SCRIPTS.agent, '--gateway', url, '--token', agentToken, '--expose', `http=127.0.0.1:${echo.port}`], { env });
    const aliceToken = await signToken(signingKey.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 600 });
    const forward = await startProcess(
      'narrowlink forward',
      [SCRIPTS.client, 'forward', '-o', 'json', '-L', '127.0.0.1:0:shop/orders:http', '--gateway', url, '--token', aliceToken],
      { env },
    );
    const port = Number((forward.readyLine.listeners as Array<{ port: number }>)[0]?.port);

    const held = await connect(port);
    await echoes(held, Buffer.from('hello through the relay\n'));

    // An AccessPolicy the CRD accepts but the compile refuses (a port range with lo > hi).
    await client.create(Resources.accessPolicy, policy('broken', { subjects: [{ kind: 'ServiceAccount', name: 'ci' }], rules: [{ action: 'Allow', ports: ['9000-8000'] }] }));
    const broken = await waitFor('AccessPolicy broken Ready=False', async () => {
      const p = await client.get(Resources.accessPolicy, NS, 'broken');
      return condition(p, 'Ready')?.status === 'False' ? p : undefined;
    });
    const notReady = condition(broken, 'Ready');
    assert.match(notReady?.reason ?? '', CAMEL_CASE);
    assert.equal(notReady?.reason, 'InvalidSpec');
    assert.match(notReady?.message ?? '', /spec\.rules\[0\]\.ports\[0\]/);
    assert.equal(notReady?.observedGeneration, broken.metadata.generation);
    const warning = await waitFor('a Warning Event on AccessPolicy broken', async () => {
      const { items } = await client.list(Resources.event, { namespace: NS, fieldSelector: 'involvedObject.kind=AccessPolicy,involvedObject.name=broken' });
      return items.find((e) => e.type === 'Warning' && e.reason === notReady?.reason);
    });
    assert.equal((warning.involvedObject as { uid?: string }).uid, broken.metadata.uid);
    // The rest keeps working: the config is unchanged and alice still gets through, old and new connections.
    const config = await gatewayConfig();
    assert.deepEqual(config?.policies.map((p) => p.name), ['devs']);
    await echoes(held, Buffer.from('still here\n'));
    const fresh = await connect(port);
    await echoes(fresh, Buffer.from('a new stream\n'));
    fresh.socket.end();
    await within(fresh.closed, 5_000, 'the second stream to close');

    // Revoke alice: the gateway reloads, resets her open stream and refuses a new one.
    const reloaded = gateway.waitFor((l) => l.event === 'config-reloaded', 15_000, { includePast: false });
    const resetLine = forward.waitFor((l) => l.event === 'stream-reset', 15_000, { includePast: false });
    await client.mergePatch(Resources.accessPolicy, NS, 'devs', { spec: { subjects: [{ kind: 'User', name: 'bob' }] } });
    await reloaded;
    await within(held.closed, 5_000, 'the open stream to be reset');
    assert.equal((await resetLine).code, 'DENIED');
    const failedLine = forward.waitFor((l) => l.event === 'stream-failed', 10_000, { includePast: false });
    const refused = await connect(port);
    refused.socket.write('anyone?\n');
    const failed: LogLine = await failedLine;
    assert.ok(failed.code === 'DENIED' || failed.code === 'NO_AGENT', `stream-failed code ${String(failed.code)}`);
    await within(refused.closed, 5_000, 'the refused connection to close');
    assert.equal(refused.received().length, 0);

    // The gateway stays for the resilience checks; the agent goes before its NarrowlinkAgent does.
    await forward.stop();
    await agent.stop();
  });

  it('deleting the agent: the finalizer removes its Certificates, their TLS Secrets and the token Secret, then the agent goes', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    const { items: certificates } = await client.list(Resources.certificate, { namespace: NS, labelSelector: OWNED_BY_ORDERS });
    const { items: owned } = await client.list(Resources.secret, { namespace: NS, labelSelector: OWNED_BY_ORDERS });
    assert.equal(certificates.length, 2);
    assert.deepEqual(owned.map((s) => s.metadata.name).sort(), [...certificates.map((c) => (c.spec as { secretName: string }).secretName), TOKEN_SECRET].sort());

    await client.delete(Resources.narrowlinkAgent, NS, 'orders');
    await waitFor('the agent to be gone', async () => (await client.get(Resources.narrowlinkAgent, NS, 'orders')) === undefined);
    // The finalizer went last, so everything it cleans up is gone by now.
    for (const c of certificates) assert.equal(await client.get(Resources.certificate, NS, c.metadata.name ?? ''), undefined, `Certificate ${c.metadata.name} left`);
    for (const s of owned) assert.equal(await client.get(Resources.secret, NS, s.metadata.name ?? ''), undefined, `Secret ${s.metadata.name} left`);
    const config = await waitFor('orders out of the gateway config', async () => {
      const c = await gatewayConfig();
      return c && !c.agents.some((a) => a.name === 'orders') ? c : undefined;
    });
    assert.deepEqual(config.agents, []);
  });

  it('kill -9 and restart of the apiserver under the operator and the gateway: both converge', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    await api.restart();
    const reloaded = gateway.waitFor((l) => l.event === 'config-reloaded', 45_000, { includePast: false });
    await waitFor(
      'a policy created after the restart',
      () =>
        client
          .create(Resources.accessPolicy, policy('after-restart', { subjects: [{ kind: 'Group', name: 'ops' }], rules: [{ action: 'Allow' }] }))
          .catch((error: unknown) => {
            // An earlier attempt may have landed without its answer reaching us.
            if (error instanceof KubeError && error.conflict) return true;
            throw error;
          }),
      10_000,
    );
    await waitFor(
      'after-restart in the gateway config',
      async () => (await gatewayConfig())?.policies.some((p) => p.name === 'after-restart'),
      40_000,
    );
    await policyReady('after-restart');
    const line = await reloaded;
    assert.equal(line.policies, 2); // devs and after-restart; broken is left out
    assert.equal(operatorA.child.exitCode, null, 'the operator kept running through the restart');
  });

  it('leader election: two operators, exactly one leads; SIGKILL the leader and the other takes the Lease', async (t) => {
    const api = k8s.require(t);
    if (!api) return;
    // The first operator steps down cleanly (releasing the Lease) so two fresh ones with short timings campaign.
    assert.equal(await operatorA.stop('SIGTERM', 10_000), 0);
    const LEASE_SECONDS = 3;
    const timings = ['--lease-duration-seconds', String(LEASE_SECONDS), '--retry-period-ms', '250'];
    const candidates = await Promise.all([startOperator(api, 'op-b', timings), startOperator(api, 'op-c', timings)]);
    const leads = (p: StartedProcess): boolean => p.lines.some((l) => l.event === 'leading');
    await waitFor('a leader', async () => candidates.some(leads), 15_000);
    await sleep(4 * 250 + 500); // several retry periods: a second leader would show up by now
    const leaders = candidates.filter(leads);
    assert.equal(leaders.length, 1, `leaders: ${leaders.map((p) => p.name).join(', ')}`);
    const [leader, standby] = leads(candidates[0] as StartedProcess) ? candidates : [candidates[1], candidates[0]];
    assert.ok(leader && standby);
    const identity = (p: StartedProcess): string => String(p.readyLine.identity);
    const before = await client.get(Resources.lease, SYSTEM_NS, LEASE);
    const spec = (l: KubeObject | undefined) => l?.spec as { holderIdentity?: string; leaseTransitions?: number } | undefined;
    assert.equal(spec(before)?.holderIdentity, identity(leader));

    const killedAt = Date.now();
    await leader.kill9();
    await standby.waitFor((l) => l.event === 'leading', (LEASE_SECONDS + 7) * 1000);
    const tookMs = Date.now() - killedAt;
    assert.ok(tookMs < (LEASE_SECONDS + 4) * 1000, `failover took ${tookMs} ms`);
    const afterFailover = await client.get(Resources.lease, SYSTEM_NS, LEASE);
    assert.equal(spec(afterFailover)?.holderIdentity, identity(standby));
    assert.ok((spec(afterFailover)?.leaseTransitions ?? 0) > (spec(before)?.leaseTransitions ?? 0));

    // The new leader runs the control loop.
    await client.create(Resources.accessPolicy, policy('after-failover', { subjects: [{ kind: 'Group', name: 'ops' }], rules: [{ action: 'Allow' }] }));
    await waitFor('after-failover in the gateway config', async () => (await gatewayConfig())?.policies.some((p) => p.name === 'after-failover'));
    await policyReady('after-failover');
  });
});
