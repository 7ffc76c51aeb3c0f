import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CliError, ExitCode } from '../errors.ts';
import type { CachedLogin } from './cache.ts';
import { RENEW_RETRY_MS, TokenRenewer } from './renewal.ts';

const HOUR_MS = 3_600_000;
const T0 = Date.parse('2030-01-01T00:00:00Z');

function entry(token: string, issuedAtMs: number, lifetimeMs = 8 * HOUR_MS): CachedLogin {
  return {
    version: 1,
    context: 'ctx',
    cluster: 'c',
    server: 'https://k',
    kubeconfig: null,
    namespace: 'narrowlink',
    loginNamespace: 'narrowlink',
    username: 'alice',
    groups: [],
    token,
    issuedAt: new Date(issuedAtMs).toISOString(),
    expiresAt: new Date(issuedAtMs + lifetimeMs).toISOString(),
    gatewayUrls: ['wss://g'],
    caPem: '',
    natProbePorts: [],
    proofKeyPem: 'x',
  };
}

/** A renewer on a hand-driven clock whose renew() hands out token-1, token-2, … or fails while `failing`. */
function harness() {
  const clock = { now: T0 };
  const events: Array<{ event: string; fields: Record<string, unknown> }> = [];
  const state = { failing: false, calls: 0 };
  const renewer = new TokenRenewer({
    entry: entry('token-0', T0),
    now: () => clock.now,
    reporter: { event: (event, fields) => events.push({ event, fields }) },
    renew: async () => {
      state.calls++;
      if (state.failing) throw new CliError('NL_ERR_CLI_KUBE_UNAUTHORIZED', 'credential expired', ExitCode.AUTH);
      return entry(`token-${state.calls}`, clock.now);
    },
  });
  return { clock, events, state, renewer };
}

describe('TokenRenewer', () => {
  test('hands out the cached token until 70 % of its lifetime, then renews once and hands out the new one', async () => {
    const h = harness();
    h.clock.now = T0 + 5 * HOUR_MS; // 62.5 %
    assert.equal(await h.renewer.token(), 'token-0');
    assert.equal(h.state.calls, 0);
    h.clock.now = T0 + 5.7 * HOUR_MS; // 71 %: the link's 80 % reauth comes after this for any session
    const [a, b] = await Promise.all([h.renewer.token(), h.renewer.token()]);
    assert.deepEqual([a, b, h.state.calls], ['token-1', 'token-1', 1], 'concurrent askers share one renewal');
    assert.equal(await h.renewer.token(), 'token-1', 'the new token is fresh: no renewal');
    assert.equal(h.state.calls, 1);
    assert.deepEqual(h.events.map((e) => e.event), ['token-renewed']);
  });

  test('a failing renewal is reported, the old token is kept, and the next attempt waits RENEW_RETRY_MS', async () => {
    const h = harness();
    h.state.failing = true;
    h.clock.now = T0 + 6 * HOUR_MS;
    assert.equal(await h.renewer.token(), 'token-0', 'keeps working with the old token');
    assert.equal(await h.renewer.token(), 'token-0');
    assert.equal(h.state.calls, 1, 'no second attempt inside the retry delay');
    assert.equal(h.events[0]?.event, 'token-renewal-failed');
    assert.equal(h.events[0]?.fields.code, 'NL_ERR_CLI_KUBE_UNAUTHORIZED');
    assert.ok(!JSON.stringify(h.events).includes('token-0'), 'the token is never reported');
    h.clock.now += RENEW_RETRY_MS;
    h.state.failing = false;
    assert.equal(await h.renewer.token(), 'token-2');
  });

  test('usableToken: an expired token is renewed at once, or refused with NL_ERR_CLI_LOGIN_EXPIRED (exit 3)', async () => {
    const h = harness();
    h.clock.now = T0 + 9 * HOUR_MS;
    assert.equal(await h.renewer.usableToken(), 'token-1');
    const g = harness();
    g.state.failing = true;
    g.clock.now = T0 + 9 * HOUR_MS;
    await assert.rejects(g.renewer.usableToken(), (error: unknown) => error instanceof CliError && error.code === 'NL_ERR_CLI_LOGIN_EXPIRED' && error.exitCode === ExitCode.AUTH);
  });
});
