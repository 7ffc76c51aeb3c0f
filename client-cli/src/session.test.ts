import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LinkError, LinkErrorCode } from '@narrowlink/peer-link';
import { CliError, CliErrorCode, ExitCode } from './errors.ts';
import { createLink, credentialHint, exitCodeFor } from './session.ts';
import type { Settings } from './settings.ts';

describe('exitCodeFor: how a failure maps to the exit code scripts rely on', () => {
  const link = (code: LinkErrorCode, options: { status?: number; gatewayCode?: string } = {}): LinkError => new LinkError(code, 'x', { retryable: false, ...options });
  const cases: Array<[string, unknown, ExitCode]> = [
    ['a usage error keeps its own exit code', new CliError(CliErrorCode.USAGE, 'bad flag'), ExitCode.USAGE],
    ['a listen error with an explicit exit code', new CliError(CliErrorCode.LISTEN, 'in use', ExitCode.FAILURE), ExitCode.FAILURE],
    ['HTTP 401 on the upgrade', link(LinkErrorCode.REFUSED, { status: 401 }), ExitCode.AUTH],
    ['HTTP 403 on the upgrade', link(LinkErrorCode.REFUSED, { status: 403 }), ExitCode.AUTH],
    ['an auth refusal in the handshake', link(LinkErrorCode.HANDSHAKE, { gatewayCode: 'NL_ERR_AUTH_UNKNOWN_AGENT' }), ExitCode.AUTH],
    ['a token problem in the handshake', link(LinkErrorCode.HANDSHAKE, { gatewayCode: 'NL_ERR_TOKEN_EXPIRED' }), ExitCode.AUTH],
    ['a protocol version mismatch', link(LinkErrorCode.HANDSHAKE, { gatewayCode: 'NL_ERR_PROTOCOL_VERSION' }), ExitCode.UNREACHABLE],
    ['HTTP 503 (gateway not ready)', link(LinkErrorCode.REFUSED, { status: 503, gatewayCode: 'NL_ERR_GATEWAY_NOT_READY' }), ExitCode.UNREACHABLE],
    ['the gateway cannot be reached', link(LinkErrorCode.UNREACHABLE), ExitCode.UNREACHABLE],
    ['connection refused', link(LinkErrorCode.CONNECTION_REFUSED), ExitCode.UNREACHABLE],
    ['no such host', link(LinkErrorCode.DNS), ExitCode.UNREACHABLE],
    ['TLS verification', link(LinkErrorCode.TLS), ExitCode.UNREACHABLE],
    ['HTTP 404 from something else', link(LinkErrorCode.NOT_GATEWAY, { status: 404 }), ExitCode.UNREACHABLE],
    ['a cleartext ws:// URL off loopback (configuration)', link(LinkErrorCode.INSECURE_URL), ExitCode.USAGE],
    ['no session in time', link(LinkErrorCode.TIMEOUT), ExitCode.UNREACHABLE],
    ['a request over the gateway rate limit', link(LinkErrorCode.RATE_LIMITED), ExitCode.FAILURE],
    ['anything else (a stream failure)', new Error('reset'), ExitCode.FAILURE],
    ['a thrown non-error', 'boom', ExitCode.FAILURE],
  ];
  for (const [name, error, expected] of cases) {
    test(name, () => assert.equal(exitCodeFor(error), expected));
  }
});

describe('createLink: which refusals a command survives', () => {
  const base: Settings = { gateway: 'ws://127.0.0.1:1', token: () => 't', caPem: undefined, mode: 'relay', configPath: undefined };
  const login = { context: 'ctx' } as unknown as NonNullable<Settings['login']>;

  test('a refusal is final for explicit tokens, one-shot commands, and a login that never had a session', () => {
    const explicit = createLink(base, undefined, { reconnect: true, keepListening: true });
    explicit.emit('open');
    assert.equal(explicit.options.retryAuthFailures, false, 'explicit token');
    const oneShot = createLink({ ...base, login }, undefined, { reconnect: true });
    oneShot.emit('open');
    assert.equal(oneShot.options.retryAuthFailures, false, 'one-shot command');
    assert.equal(createLink({ ...base, login }, undefined, { reconnect: true, keepListening: true }).options.retryAuthFailures, false, 'never open');
  });

  test('forward/socks on a login whose session was open keep listening through a refusal (the renewer keeps trying)', () => {
    const link = createLink({ ...base, login }, undefined, { reconnect: true, keepListening: true });
    link.emit('open');
    assert.equal(link.options.retryAuthFailures, true);
  });
});

describe('credentialHint: the next step after a credential refusal', () => {
  test('401 and 403 get one; other failures carry their fix in their own message', () => {
    const refused = (status: number): LinkError => new LinkError(LinkErrorCode.REFUSED, 'x', { status, retryable: false });
    assert.match(credentialHint(refused(401)) ?? '', /narrowlink login/);
    assert.ok(credentialHint(refused(403)));
    assert.equal(credentialHint(new LinkError(LinkErrorCode.CONNECTION_REFUSED, 'x', { retryable: false })), undefined);
    assert.equal(credentialHint(new Error('x')), undefined);
  });
});
