import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CliError, ExitCode } from './errors.ts';
import { parseForwardFlag, parseLocal, parseTarget } from './targets.ts';

/** Every parse failure is a usage error: code NL_ERR_CLI_USAGE, exit code 2. */
function assertUsage(fn: () => unknown, input: string): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof CliError, `${input}: CliError`);
    assert.equal(error.code, 'NL_ERR_CLI_USAGE', input);
    assert.equal(error.exitCode, ExitCode.USAGE, input);
    return true;
  });
}

describe('parseTarget', () => {
  test('AGENT, AGENT:PORT, AGENT:PORT_NAME and NAMESPACE/AGENT forms', () => {
    assert.deepEqual(parseTarget('db'), { agent: 'db', port: undefined });
    assert.deepEqual(parseTarget('db:5432'), { agent: 'db', port: 5432 });
    assert.deepEqual(parseTarget('db:pg'), { agent: 'db', port: 'pg' });
    assert.deepEqual(parseTarget('team-a/orders-db:http-alt'), { agent: 'team-a/orders-db', port: 'http-alt' });
    assert.deepEqual(parseTarget('a:65535'), { agent: 'a', port: 65535 });
    assert.deepEqual(parseTarget('a:1'), { agent: 'a', port: 1 });
  });

  test('rejects bad agent names and ports', () => {
    for (const input of ['', 'DB', 'db_1', '-db', 'db-', 'a/b/c', '/db', 'db:', 'db:0', 'db:65536', 'db:123456', 'db:Pg', 'db:p_g', 'db:-x', 'db:1:2']) {
      assertUsage(() => parseTarget(input), input);
    }
  });
});

describe('parseLocal', () => {
  test('PORT, ADDR:PORT and [IPv6]:PORT', () => {
    assert.deepEqual(parseLocal('8080'), { host: '127.0.0.1', port: 8080 });
    assert.deepEqual(parseLocal('0'), { host: '127.0.0.1', port: 0 });
    assert.deepEqual(parseLocal('0.0.0.0:15432'), { host: '0.0.0.0', port: 15432 });
    assert.deepEqual(parseLocal('localhost:80'), { host: 'localhost', port: 80 });
    assert.deepEqual(parseLocal('[::1]:8080'), { host: '::1', port: 8080 });
  });

  test('rejects an empty address and bad ports', () => {
    for (const input of [':8080', 'x:', 'x:65536', 'x:port', 'abc', '-1', '[::1]:', '[::1]:99999']) {
      assertUsage(() => parseLocal(input), input);
    }
  });
});

describe('parseForwardFlag', () => {
  test('LOCAL_PORT:AGENT[:PORT]', () => {
    assert.deepEqual(parseForwardFlag('8080:db'), { localHost: '127.0.0.1', localPort: 8080, target: { agent: 'db', port: undefined } });
    assert.deepEqual(parseForwardFlag('8080:db:5432'), { localHost: '127.0.0.1', localPort: 8080, target: { agent: 'db', port: 5432 } });
    assert.deepEqual(parseForwardFlag('0:team/db:pg'), { localHost: '127.0.0.1', localPort: 0, target: { agent: 'team/db', port: 'pg' } });
  });

  test('LOCAL_ADDR:LOCAL_PORT:AGENT[:PORT], IPv4, names and bracketed IPv6', () => {
    assert.deepEqual(parseForwardFlag('0.0.0.0:8080:db:5432'), { localHost: '0.0.0.0', localPort: 8080, target: { agent: 'db', port: 5432 } });
    assert.deepEqual(parseForwardFlag('localhost:8080:db'), { localHost: 'localhost', localPort: 8080, target: { agent: 'db', port: undefined } });
    assert.deepEqual(parseForwardFlag('[::1]:8080:db:http'), { localHost: '::1', localPort: 8080, target: { agent: 'db', port: 'http' } });
  });

  test('rejects specs without an agent, with extra parts, or with bad values', () => {
    for (const input of ['8080', '', 'db', '8080:db:5432:extra', 'host:8080:db:5432:x', 'x:db:5432', '99999:db', '8080:DB', '8080:db:0', '[::1]:8080']) {
      assertUsage(() => parseForwardFlag(input), input);
    }
  });
});
