import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AgentError } from './errors.ts';
import { AllowList, parseExpose, parseExposeList } from './expose.ts';

function assertBadExpose(fn: () => unknown, input: string): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof AgentError, `${input}: AgentError`);
    assert.equal(error.code, 'NL_ERR_AGENT_BAD_EXPOSE', input);
    return true;
  });
}

describe('parseExpose', () => {
  test('NAME=PORT defaults the host to 127.0.0.1', () => {
    assert.deepEqual(parseExpose('http=8080'), { name: 'http', host: '127.0.0.1', port: 8080 });
    assert.deepEqual(parseExpose(' pg = 5432 '), { name: 'pg', host: '127.0.0.1', port: 5432 });
    assert.deepEqual(parseExpose('a=1'), { name: 'a', host: '127.0.0.1', port: 1 });
    assert.deepEqual(parseExpose('max=65535'), { name: 'max', host: '127.0.0.1', port: 65535 });
  });

  test('NAME=HOST:PORT with IPv4, a host name, and bracketed IPv6', () => {
    assert.deepEqual(parseExpose('db=10.0.0.5:5432'), { name: 'db', host: '10.0.0.5', port: 5432 });
    assert.deepEqual(parseExpose('api=orders.svc.cluster.local:9000'), { name: 'api', host: 'orders.svc.cluster.local', port: 9000 });
    assert.deepEqual(parseExpose('v6=[::1]:9000'), { name: 'v6', host: '::1', port: 9000 });
    assert.deepEqual(parseExpose('v6b=[fd00::1]:22'), { name: 'v6b', host: 'fd00::1', port: 22 });
  });

  test('rejects bad names, ports and shapes with NL_ERR_AGENT_BAD_EXPOSE', () => {
    for (const input of [
      '8080',
      '=8080',
      'HTTP=8080',
      'my_port=80',
      '-x=80',
      'x-=80',
      `${'a'.repeat(64)}=80`,
      'http=',
      'http=0',
      'http=65536',
      'http=123456',
      'http=port',
      'http=host:',
      'http=host:port',
      'http=::1:80',
      'http=1.2.3.4:5:6',
      'http=[::1]',
      'http=-1',
    ]) {
      assertBadExpose(() => parseExpose(input), input);
    }
  });
});

describe('parseExposeList', () => {
  test('accepts repeated flags and comma-separated values, skipping empty pieces', () => {
    assert.deepEqual(
      parseExposeList(['http=8080,metrics=9090', 'db=10.0.0.5:5432', ' , ']).map((e) => `${e.name}=${e.host}:${e.port}`),
      ['http=127.0.0.1:8080', 'metrics=127.0.0.1:9090', 'db=10.0.0.5:5432'],
    );
    assert.deepEqual(parseExposeList([]), []);
  });

  test('rejects a name given twice', () => {
    assertBadExpose(() => parseExposeList(['http=8080', 'http=8081']), 'duplicate name');
  });

  test('rejects a target given twice, also when the default host is spelled out', () => {
    assertBadExpose(() => parseExposeList(['a=8080,b=127.0.0.1:8080']), 'duplicate target');
  });

  test('one bad entry fails the whole list', () => {
    assertBadExpose(() => parseExposeList(['http=8080,bad']), 'bad entry');
  });
});

describe('AllowList', () => {
  const list = new AllowList(parseExposeList(['http=8080', 'db=DB.internal:5432', 'v6=[::1]:9000']));

  test('allows exactly the exposed host and port pairs', () => {
    assert.ok(list.allows('127.0.0.1', 8080));
    assert.ok(list.allows('db.internal', 5432), 'host match is case-insensitive');
    assert.ok(list.allows('DB.INTERNAL', 5432));
    assert.ok(list.allows('::1', 9000));
  });

  test('refuses other ports, other hosts, and the same port on another host', () => {
    assert.ok(!list.allows('127.0.0.1', 8081));
    assert.ok(!list.allows('127.0.0.1', 5432));
    assert.ok(!list.allows('localhost', 8080), 'no name resolution: localhost is not 127.0.0.1');
    assert.ok(!list.allows('10.0.0.1', 8080));
    assert.ok(!list.allows('db.internal', 8080));
  });

  test('keeps the entries it was built from', () => {
    assert.deepEqual(
      list.entries.map((e) => e.name),
      ['http', 'db', 'v6'],
    );
    assert.ok(!new AllowList([]).allows('127.0.0.1', 80));
  });
});
