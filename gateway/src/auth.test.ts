/** The Authenticator without a WebSocket: plain config, clock, reviewer and a counting authFailures. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { EventEmitter } from 'node:events';
import {
  type ControlMessage,
  createProof,
  DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
  decodeFrame,
  ErrorCode,
  type GatewayConfig,
  generateProofKey,
  generateSigningKeyPair,
  jwkThumbprint,
  REAUTH_PROOF_METHOD,
  signToken,
  validateGatewayConfig,
  verifyToken,
} from '@narrowlink/protocol';
import { pino } from 'pino';
import type { WebSocket } from 'ws';
import { Authenticator } from './auth.ts';
import { Gateway } from './gateway.ts';
import { createMetrics } from './metrics.ts';
import { GatewayAuthReason, GatewayError, GatewayErrorCode } from './errors.ts';
import type { SessionIdentity } from './peer-session.ts';
import type { ReviewResult, TokenReviewer } from './token-review.ts';

const keys = await generateSigningKeyPair();
const T0 = Date.parse('2030-01-01T00:00:00Z');
const SA_EXPIRY = T0 + 600_000;

const config = validateGatewayConfig({
  apiVersion: 'narrowlink.io/v1alpha1',
  kind: 'GatewayConfig',
  signingPublicKeys: [keys.publicKeyPem],
  agents: [
    { name: 'orders', namespace: 'shop', expose: [{ name: 'http', port: 8080 }], serviceAccounts: ['orders-sa'] },
    { name: 'web', expose: [{ name: 'http', port: 8080 }] },
  ],
  policies: [],
});

const sa = (namespace: string, serviceAccount: string): ReviewResult => ({ authenticated: true, namespace, serviceAccount, expiresAtMs: SA_EXPIRY });
const reviews: Record<string, ReviewResult | Error> = {
  'sa-orders': sa('shop', 'orders-sa'),
  'sa-default': sa('shop', 'default'),
  'sa-user': { authenticated: false, reason: GatewayAuthReason.TOKEN_NOT_SERVICE_ACCOUNT },
  'sa-broken': new Error('connect ECONNREFUSED 127.0.0.1:6443'),
};
const reviewer: TokenReviewer = {
  async review(token) {
    const answer = reviews[token] ?? { authenticated: false, reason: GatewayAuthReason.TOKEN_REVIEW_REJECTED };
    if (answer instanceof Error) throw answer;
    return answer;
  },
};

function setup(options: { reviewer?: TokenReviewer; config?: GatewayConfig | undefined } = {}) {
  const state = { config: 'config' in options ? options.config : config, shuttingDown: false, now: T0 };
  const failures: string[] = [];
  const auth = new Authenticator({
    config: () => state.config,
    shuttingDown: () => state.shuttingDown,
    now: () => state.now,
    tokenReviewer: options.reviewer,
    authFailures: { inc: (labels) => void failures.push(String((labels as { reason: string }).reason)) },
  });
  return { auth, state, failures };
}

const token = (typ: 'agent' | 'client', sub: string, options: { ttlSeconds?: number; groups?: string[]; nowMs?: number; jti?: string } = {}): Promise<string> =>
  signToken(keys.privateKeyPem, {
    typ,
    sub,
    ttlSeconds: options.ttlSeconds ?? 600,
    groups: options.groups ?? [],
    nowMs: options.nowMs ?? T0,
    ...(options.jti === undefined ? {} : { jti: options.jti }),
  });

/** Runs `fn`, which must reject with a GatewayError; returns its status, code and reason. */
async function refusal(fn: () => Promise<unknown>): Promise<{ status: number; code: string; reason: string }> {
  try {
    await fn();
  } catch (error) {
    assert.ok(error instanceof GatewayError, `a GatewayError, got ${String(error)}`);
    return { status: error.statusCode, code: error.code, reason: error.reason };
  }
  assert.fail('authentication succeeded');
}

describe('Authenticator.authenticate', () => {
  test('a client token yields the identity with its expiry', async () => {
    const { auth, failures } = setup();
    const identity = await auth.authenticate('client', `Bearer ${await token('client', 'alice', { groups: ['dev'], jti: 'j-1' })}`);
    assert.deepEqual(identity, { sub: 'alice', groups: ['dev'], typ: 'client', expiresAtMs: T0 + 600_000, jti: 'j-1' });
    assert.deepEqual(failures, []);
  });

  test('refusals carry status, code and reason, and each is counted by reason', async () => {
    const cases: Array<{ what: string; run: (s: ReturnType<typeof setup>) => Promise<unknown>; want: { status: number; code: string; reason: string } }> = [
      {
        what: 'shutting down',
        run: async (s) => {
          s.state.shuttingDown = true;
          return s.auth.authenticate('client', `Bearer ${await token('client', 'alice')}`);
        },
        want: { status: 503, code: GatewayErrorCode.SHUTTING_DOWN, reason: GatewayErrorCode.SHUTTING_DOWN },
      },
      {
        what: 'no configuration yet',
        run: async (s) => {
          s.state.config = undefined;
          return s.auth.authenticate('client', `Bearer ${await token('client', 'alice')}`);
        },
        want: { status: 503, code: GatewayErrorCode.NOT_READY, reason: GatewayErrorCode.NOT_READY },
      },
      {
        what: 'no bearer token',
        run: async (s) => s.auth.authenticate('client', 'Basic abc'),
        want: { status: 401, code: GatewayErrorCode.AUTH_MISSING_TOKEN, reason: GatewayErrorCode.AUTH_MISSING_TOKEN },
      },
      {
        what: 'an agent token on the client endpoint',
        run: async (s) => s.auth.authenticate('client', `Bearer ${await token('agent', 'web')}`),
        want: { status: 403, code: GatewayErrorCode.AUTH_WRONG_ENDPOINT, reason: ErrorCode.TOKEN_WRONG_TYPE },
      },
      {
        what: 'a bad signature',
        run: async (s) => s.auth.authenticate('client', `Bearer ${(await token('client', 'alice')).slice(0, -4)}AAAA`),
        want: { status: 401, code: GatewayErrorCode.AUTH_INVALID_TOKEN, reason: ErrorCode.TOKEN_BAD_SIGNATURE },
      },
      {
        what: 'a token past exp but within the verifier\'s skew',
        run: async (s) => {
          s.state.now = T0 + 610_000;
          return s.auth.authenticate('client', `Bearer ${await token('client', 'alice')}`);
        },
        want: { status: 401, code: GatewayErrorCode.AUTH_INVALID_TOKEN, reason: ErrorCode.TOKEN_EXPIRED },
      },
      {
        what: 'an agent token for an agent not in the configuration',
        run: async (s) => s.auth.authenticate('agent', `Bearer ${await token('agent', 'ghost')}`),
        want: { status: 403, code: GatewayErrorCode.AUTH_UNKNOWN_AGENT, reason: GatewayErrorCode.AUTH_UNKNOWN_AGENT },
      },
      {
        what: 'a ServiceAccount token without a TokenReviewer',
        run: async (s) => s.auth.authenticate('agent', 'Bearer sa-orders', 'shop/orders'),
        want: { status: 401, code: GatewayErrorCode.AUTH_INVALID_TOKEN, reason: GatewayAuthReason.TOKEN_REVIEW_UNAVAILABLE },
      },
    ];
    for (const c of cases) {
      const s = setup();
      assert.deepEqual(await refusal(() => c.run(s)), c.want, c.what);
      assert.deepEqual(s.failures, [c.want.reason], `${c.what}: counted once by reason`);
    }
  });

  test('an agent token by bare name is accepted as is (the session normalizes it)', async () => {
    const { auth } = setup();
    assert.equal((await auth.authenticate('agent', `Bearer ${await token('agent', 'web')}`)).sub, 'web');
  });

  test('ServiceAccount tokens through the TokenReview: attach as namespace/name, or the reason why not', async () => {
    const { auth, failures } = setup({ reviewer });
    assert.deepEqual(await auth.authenticate('agent', 'Bearer sa-orders', 'shop/orders'), {
      sub: 'shop/orders',
      groups: [],
      typ: 'agent',
      expiresAtMs: SA_EXPIRY,
      viaServiceAccount: true,
    });
    assert.deepEqual(await refusal(() => auth.authenticate('agent', 'Bearer sa-broken', 'shop/orders')), {
      status: 503,
      code: GatewayErrorCode.NOT_READY,
      reason: GatewayAuthReason.TOKEN_REVIEW_UNAVAILABLE,
    });
    assert.deepEqual(await refusal(() => auth.authenticate('agent', 'Bearer sa-nobody', 'shop/orders')), {
      status: 401,
      code: GatewayErrorCode.AUTH_INVALID_TOKEN,
      reason: GatewayAuthReason.TOKEN_REVIEW_REJECTED,
    });
    assert.deepEqual(await refusal(() => auth.authenticate('agent', 'Bearer sa-user', 'shop/orders')), {
      status: 401,
      code: GatewayErrorCode.AUTH_INVALID_TOKEN,
      reason: GatewayAuthReason.TOKEN_NOT_SERVICE_ACCOUNT,
    });
    assert.deepEqual(await refusal(() => auth.authenticate('agent', 'Bearer sa-default', 'shop/orders')), {
      status: 403,
      code: GatewayErrorCode.AUTH_SERVICE_ACCOUNT_NOT_ALLOWED,
      reason: GatewayErrorCode.AUTH_SERVICE_ACCOUNT_NOT_ALLOWED,
    });
    assert.deepEqual(await refusal(() => auth.authenticate('agent', 'Bearer sa-orders', 'shop/ghost')), {
      status: 403,
      code: GatewayErrorCode.AUTH_UNKNOWN_AGENT,
      reason: GatewayErrorCode.AUTH_UNKNOWN_AGENT,
    });
    assert.deepEqual(failures, [
      GatewayAuthReason.TOKEN_REVIEW_UNAVAILABLE,
      GatewayAuthReason.TOKEN_REVIEW_REJECTED,
      GatewayAuthReason.TOKEN_NOT_SERVICE_ACCOUNT,
      GatewayErrorCode.AUTH_SERVICE_ACCOUNT_NOT_ALLOWED,
      GatewayErrorCode.AUTH_UNKNOWN_AGENT,
    ]);
  });

  test('anything unexpected is a masked 500', async () => {
    const auth = new Authenticator({
      config: () => {
        throw new Error('boom');
      },
      shuttingDown: () => false,
      now: () => T0,
      authFailures: { inc: () => undefined },
    });
    try {
      await auth.authenticate('client', 'Bearer x');
      assert.fail('authenticated');
    } catch (error) {
      assert.ok(error instanceof GatewayError);
      assert.equal(error.statusCode, 500);
      assert.deepEqual(error.toJSON(), { code: GatewayErrorCode.INTERNAL, message: 'internal gateway error' });
    }
  });
});

describe('Authenticator.reauthenticate', () => {
  const alice: SessionIdentity = { sub: 'alice', groups: [], typ: 'client', expiresAtMs: T0 + 60_000 };

  test('a fresh token for the same subject renews, with its expiry and groups', async () => {
    const { auth, state } = setup();
    state.now = T0 + 30_000;
    const outcome = await auth.reauthenticate('client', alice, await token('client', 'alice', { nowMs: state.now, groups: ['admins'], jti: 'j-2' }));
    assert.deepEqual(outcome, { result: 'renewed', identity: { sub: 'alice', groups: ['admins'], typ: 'client', expiresAtMs: T0 + 630_000, jti: 'j-2' } });
  });

  test('another subject is refused with AUTH_IDENTITY_CHANGED (not counted as an upgrade failure)', async () => {
    const { auth, failures } = setup();
    const outcome = await auth.reauthenticate('client', alice, await token('client', 'mallory'));
    assert.equal(outcome.result, 'refused');
    assert.equal(outcome.error.code, GatewayErrorCode.AUTH_INVALID_TOKEN);
    assert.equal(outcome.error.reason, GatewayAuthReason.AUTH_IDENTITY_CHANGED);
    assert.equal(outcome.error.statusCode, 401);
    assert.deepEqual(failures, []);
  });

  test('a bad token is refused with its reason', async () => {
    const { auth } = setup();
    const outcome = await auth.reauthenticate('client', alice, await token('agent', 'web'));
    assert.equal(outcome.result, 'refused');
    assert.equal(outcome.error.reason, ErrorCode.TOKEN_WRONG_TYPE);
  });

  test('a ServiceAccount agent goes through the TokenReview again; a 503 defers while the credential is good, refuses after', async () => {
    const orders: SessionIdentity = { sub: 'shop/orders', groups: [], typ: 'agent', expiresAtMs: T0 + 60_000, viaServiceAccount: true };
    const { auth, state } = setup({ reviewer });
    assert.deepEqual(await auth.reauthenticate('agent', orders, 'sa-orders'), {
      result: 'renewed',
      identity: { sub: 'shop/orders', groups: [], typ: 'agent', expiresAtMs: SA_EXPIRY, viaServiceAccount: true },
    });
    const deferred = await auth.reauthenticate('agent', orders, 'sa-broken');
    assert.equal(deferred.result, 'deferred');
    assert.equal(deferred.error.reason, GatewayAuthReason.TOKEN_REVIEW_UNAVAILABLE);
    state.now = orders.expiresAtMs;
    const refused = await auth.reauthenticate('agent', orders, 'sa-broken');
    assert.equal(refused.result, 'refused');
    assert.equal(refused.error.statusCode, 503);
  });

  test('a draining gateway defers a reauth while the credential is good', async () => {
    const { auth, state } = setup();
    state.shuttingDown = true;
    const outcome = await auth.reauthenticate('client', alice, await token('client', 'alice'));
    assert.equal(outcome.result, 'deferred');
    assert.equal(outcome.error.code, GatewayErrorCode.SHUTTING_DOWN);
  });
});

const DAY = 24 * 3600;

/** `config` with a `tokens` section. */
function withTokens(tokens: unknown): GatewayConfig {
  return validateGatewayConfig({ ...config, tokens });
}

describe('maximum token lifetime (exp - iat)', () => {
  test('defaults: client tokens up to 30 days, agent tokens up to 90 days; one second more is TOKEN_LIFETIME_TOO_LONG, counted', async () => {
    const { auth, failures } = setup();
    assert.equal(DEFAULT_MAX_TOKEN_LIFETIME_SECONDS.client, 30 * DAY);
    assert.equal(DEFAULT_MAX_TOKEN_LIFETIME_SECONDS.agent, 90 * DAY);
    await auth.authenticate('client', `Bearer ${await token('client', 'alice', { ttlSeconds: 30 * DAY })}`);
    await auth.authenticate('agent', `Bearer ${await token('agent', 'web', { ttlSeconds: 90 * DAY })}`);
    assert.deepEqual(await refusal(async () => auth.authenticate('client', `Bearer ${await token('client', 'alice', { ttlSeconds: 30 * DAY + 1 })}`)), {
      status: 401,
      code: GatewayErrorCode.AUTH_INVALID_TOKEN,
      reason: ErrorCode.TOKEN_LIFETIME_TOO_LONG,
    });
    assert.equal((await refusal(async () => auth.authenticate('agent', `Bearer ${await token('agent', 'web', { ttlSeconds: 90 * DAY + 1 })}`))).reason, ErrorCode.TOKEN_LIFETIME_TOO_LONG);
    assert.deepEqual(failures, [ErrorCode.TOKEN_LIFETIME_TOO_LONG, ErrorCode.TOKEN_LIFETIME_TOO_LONG]);
  });

  test('tokens.maxLifetimeSeconds sets it per type and takes effect with the configuration in force', async () => {
    const s = setup({ config: withTokens({ maxLifetimeSeconds: { client: 3600 } }) });
    const twoHours = await token('client', 'alice', { ttlSeconds: 7200 });
    assert.equal((await refusal(() => s.auth.authenticate('client', `Bearer ${twoHours}`))).reason, ErrorCode.TOKEN_LIFETIME_TOO_LONG);
    await s.auth.authenticate('client', `Bearer ${await token('client', 'alice', { ttlSeconds: 3600 })}`);
    // The agent limit keeps its default.
    await s.auth.authenticate('agent', `Bearer ${await token('agent', 'web', { ttlSeconds: 90 * DAY })}`);
    s.state.config = withTokens({ maxLifetimeSeconds: { client: 7200 } });
    await s.auth.authenticate('client', `Bearer ${twoHours}`);
  });

  test('a reauth with a token that lives too long is refused with its reason', async () => {
    const { auth } = setup({ config: withTokens({ maxLifetimeSeconds: { client: 3600 } }) });
    const alice: SessionIdentity = { sub: 'alice', groups: [], typ: 'client', expiresAtMs: T0 + 60_000 };
    const outcome = await auth.reauthenticate('client', alice, await token('client', 'alice', { ttlSeconds: 3601 }));
    assert.equal(outcome.result, 'refused');
    assert.equal(outcome.error.reason, ErrorCode.TOKEN_LIFETIME_TOO_LONG);
  });

  test('ServiceAccount tokens are not subject to it (the TokenReview speaks for them)', async () => {
    const { auth } = setup({ reviewer, config: withTokens({ maxLifetimeSeconds: { agent: 60 } }) });
    assert.equal((await auth.authenticate('agent', 'Bearer sa-orders', 'shop/orders')).sub, 'shop/orders');
  });

  test('the schema bounds the setting', () => {
    assert.throws(() => withTokens({ maxLifetimeSeconds: { client: 0 } }), { code: ErrorCode.CONFIG_INVALID });
    assert.throws(() => withTokens({ maxLifetimeSeconds: { user: 60 } }), { code: ErrorCode.CONFIG_INVALID });
  });
});

describe('token denylist (tokens.deny)', () => {
  test('a denied jti or subject is refused at authentication with TOKEN_REVOKED, after the signature checked', async () => {
    const { auth, failures } = setup({ config: withTokens({ deny: { jti: ['leaked-1'], sub: ['mallory', 'default/web'] } }) });
    const want = { status: 401, code: GatewayErrorCode.AUTH_INVALID_TOKEN, reason: ErrorCode.TOKEN_REVOKED };
    assert.deepEqual(await refusal(async () => auth.authenticate('client', `Bearer ${await token('client', 'alice', { jti: 'leaked-1' })}`)), want);
    assert.deepEqual(await refusal(async () => auth.authenticate('client', `Bearer ${await token('client', 'mallory')}`)), want);
    assert.deepEqual(await refusal(async () => auth.authenticate('agent', `Bearer ${await token('agent', 'default/web')}`)), want);
    // Another token of alice's still works.
    assert.equal((await auth.authenticate('client', `Bearer ${await token('client', 'alice', { jti: 'fresh-2' })}`)).jti, 'fresh-2');
    // A forged token naming a denied jti is a bad signature, not a revocation.
    const other = await generateSigningKeyPair();
    const forged = await signToken(other.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 600, nowMs: T0, jti: 'leaked-1' });
    assert.equal((await refusal(() => auth.authenticate('client', `Bearer ${forged}`))).reason, ErrorCode.TOKEN_BAD_SIGNATURE);
    assert.deepEqual(failures, [ErrorCode.TOKEN_REVOKED, ErrorCode.TOKEN_REVOKED, ErrorCode.TOKEN_REVOKED, ErrorCode.TOKEN_BAD_SIGNATURE]);
  });

  test('a ServiceAccount agent is denied by its namespace/name', async () => {
    const { auth } = setup({ reviewer, config: withTokens({ deny: { sub: ['shop/orders'] } }) });
    assert.equal((await refusal(() => auth.authenticate('agent', 'Bearer sa-orders', 'shop/orders'))).reason, ErrorCode.TOKEN_REVOKED);
  });

  test('a reauth with a denied token, or by a denied subject, is refused', async () => {
    const { auth } = setup({ config: withTokens({ deny: { jti: ['leaked-1'] } }) });
    const alice: SessionIdentity = { sub: 'alice', groups: [], typ: 'client', expiresAtMs: T0 + 60_000, jti: 'a-1' };
    const outcome = await auth.reauthenticate('client', alice, await token('client', 'alice', { jti: 'leaked-1' }));
    assert.equal(outcome.result, 'refused');
    assert.equal(outcome.error.reason, ErrorCode.TOKEN_REVOKED);
  });

  test('a reload that denies a live session’s token or subject closes that session (4401, TOKEN_REVOKED) and no other', async () => {
    const metrics = createMetrics({ defaultMetrics: false });
    const gateway = new Gateway({ log: pino({ level: 'silent' }), metrics, now: () => T0 });
    try {
      gateway.applyConfig(config);
      const attach = async (sub: string, jti: string): Promise<FakeSocket> => {
        const ws = new FakeSocket();
        const identity = await gateway.authenticate('client', `Bearer ${await token('client', sub, { jti })}`);
        gateway.attach('client', identity, ws as unknown as WebSocket);
        return ws;
      };
      const alice = await attach('alice', 'a-1');
      const bob = await attach('bob', 'b-1');
      const carol = await attach('carol', 'c-1');
      // A reload that denies nothing live closes nothing.
      gateway.applyConfig(withTokens({ deny: { jti: ['unrelated'] } }));
      assert.deepEqual([alice.closes, bob.closes, carol.closes], [[], [], []]);
      gateway.applyConfig(withTokens({ deny: { jti: ['a-1'], sub: ['carol'] } }));
      for (const ws of [alice, carol]) {
        assert.deepEqual(ws.closes, [{ code: 4401, reason: ErrorCode.TOKEN_REVOKED }]);
        assert.deepEqual(
          ws.controls().map((m) => (m.type === 'error' ? m.code : m.type)),
          [ErrorCode.TOKEN_REVOKED],
        );
      }
      assert.deepEqual(bob.closes, []);
      assert.equal((await metrics.sessionsRevoked.get()).values[0]?.value, 2);
      // A further reload does not close them twice.
      gateway.applyConfig(withTokens({ deny: { jti: ['a-1'], sub: ['carol'] } }));
      assert.equal(alice.closes.length, 1);
    } finally {
      await gateway.shutdown(0);
    }
  });
});

/** A WebSocket stand-in: records frames sent and closes (PeerSession needs nothing else here). */
class FakeSocket extends EventEmitter {
  readonly sent: Buffer[] = [];
  readonly closes: { code: number; reason: string }[] = [];
  send(bytes: Buffer, _options?: unknown, flushed?: () => void): void {
    this.sent.push(bytes);
    flushed?.();
  }
  pause(): void {}
  resume(): void {}
  close(code: number, reason: string): void {
    this.closes.push({ code, reason });
    this.emit('close');
  }
  terminate(): void {
    this.emit('close');
  }
  controls(): ControlMessage[] {
    return this.sent.flatMap((b) => {
      const frame = decodeFrame(b);
      return frame.type === 'control' ? [frame.message] : [];
    });
  }
}

describe('key-bound tokens (cnf.jkt) in the Authenticator', () => {
  const key = generateProofKey();
  const htu = 'wss://gw.example.com/v1/client';
  const bound = (nowMs = T0): Promise<string> => signToken(keys.privateKeyPem, { typ: 'client', sub: 'alice', ttlSeconds: 600, nowMs, cnf: { jkt: jwkThumbprint(key.x) } });

  test('without a proof context (a caller that passes none) a key-bound token is refused PROOF_MISSING, and counted', async () => {
    const { auth, failures } = setup();
    const refused = await refusal(async () => auth.authenticate('client', `Bearer ${await bound()}`));
    assert.deepEqual(refused, { status: 401, code: GatewayErrorCode.AUTH_INVALID_TOKEN, reason: ErrorCode.TOKEN_PROOF_MISSING });
    assert.deepEqual(failures, [ErrorCode.TOKEN_PROOF_MISSING]);
  });

  test('when the URL cannot be told (no Host header) no proof matches', async () => {
    const { auth } = setup();
    const t = await bound();
    const proof = await createProof(key.privateKey, { token: t, htm: 'GET', htu, nowMs: T0 });
    const refused = await refusal(() => auth.authenticate('client', `Bearer ${t}`, undefined, { proof, htm: 'GET', htu: undefined }));
    assert.equal(refused.reason, ErrorCode.TOKEN_PROOF_INVALID);
    assert.deepEqual(await auth.authenticate('client', `Bearer ${t}`, undefined, { proof: await createProof(key.privateKey, { token: t, htm: 'GET', htu, nowMs: T0 }), htm: 'GET', htu }), {
      sub: 'alice',
      groups: [],
      typ: 'client',
      expiresAtMs: T0 + 600_000,
      jti: (await verifyToken(t, { publicKeysPem: [keys.publicKeyPem], expectedType: 'client', nowMs: T0 })).jti,
    });
  });

  test('proofMaxAgeSeconds narrows (or widens) the iat window', async () => {
    const failures: string[] = [];
    const auth = new Authenticator({ config: () => config, shuttingDown: () => false, now: () => T0, authFailures: { inc: (labels) => void failures.push(String((labels as { reason: string }).reason)) }, proofMaxAgeSeconds: 5 });
    const t = await bound();
    const tenSecondsOld = await createProof(key.privateKey, { token: t, htm: 'GET', htu, nowMs: T0 - 10_000 });
    assert.equal((await refusal(() => auth.authenticate('client', `Bearer ${t}`, undefined, { proof: tenSecondsOld, htm: 'GET', htu }))).reason, ErrorCode.TOKEN_PROOF_STALE);
    const fresh = await createProof(key.privateKey, { token: t, htm: 'GET', htu, nowMs: T0 - 4000 });
    assert.equal((await auth.authenticate('client', `Bearer ${t}`, undefined, { proof: fresh, htm: 'GET', htu })).sub, 'alice');
    assert.deepEqual(failures, [ErrorCode.TOKEN_PROOF_STALE]);
  });

  test('reauth keeps the session binding: same key renews; the proof must be REAUTH for the upgrade URL', async () => {
    const { auth } = setup();
    const first = await bound();
    const identity = await auth.authenticate('client', `Bearer ${first}`, undefined, { proof: await createProof(key.privateKey, { token: first, htm: 'GET', htu, nowMs: T0 }), htm: 'GET', htu });
    const next = await bound(T0 + 1000);
    const wrongUrl = await createProof(key.privateKey, { token: next, htm: REAUTH_PROOF_METHOD, htu: 'wss://other.example/v1/client', nowMs: T0 });
    const outcome1 = await auth.reauthenticate('client', identity, next, wrongUrl);
    assert.equal(outcome1.result === 'refused' && outcome1.error.reason, ErrorCode.TOKEN_PROOF_INVALID);
    const good = await createProof(key.privateKey, { token: next, htm: REAUTH_PROOF_METHOD, htu, nowMs: T0 });
    const outcome2 = await auth.reauthenticate('client', identity, next, good);
    assert.equal(outcome2.result, 'renewed');
    assert.equal(outcome2.result === 'renewed' && outcome2.identity.expiresAtMs, T0 + 601_000);
  });
});
