import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { localTimestamp, moveMsgField, prettyDestination, prettyLogLine, processLoggerOptions, wantsPretty } from './log-format.ts';

const at = new Date(2026, 11, 7, 9, 5, 3, 42).getTime();

describe('prettyLogLine', () => {
  test('local time, level name, component, message, then the other fields as key=value', () => {
    const line = JSON.stringify({ level: 40, time: at, service: 'gateway', component: 'session', session: 'abc', sub: 'alice smith', n: 3, msg: 'peer broke the protocol' });
    assert.equal(prettyLogLine(line), '2026-12-07 09:05:03.042 WARN  [session] peer broke the protocol  session=abc sub="alice smith" n=3\n');
    assert.equal(localTimestamp(at), '2026-12-07 09:05:03.042');
  });

  test('every pino level has its name; objects are JSON; an error shows its message, and its stack at error level', () => {
    const names = [10, 20, 30, 40, 50, 60].map((level) => prettyLogLine(JSON.stringify({ level, time: at, msg: 'm' })).split(' ')[2]);
    assert.deepEqual(names, ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL']);
    const withObject = prettyLogLine(JSON.stringify({ level: 30, time: at, msg: 'x', expose: ['http=127.0.0.1:80'] }));
    assert.ok(withObject.endsWith('expose=["http=127.0.0.1:80"]\n'), withObject);
    const err = { type: 'Error', message: 'boom', stack: 'Error: boom\n    at f (x.ts:1:1)' };
    const error = prettyLogLine(JSON.stringify({ level: 50, time: at, msg: 'failed', err }));
    assert.ok(error.includes('err=boom'));
    assert.ok(error.includes('\n    Error: boom\n        at f'), error);
    assert.ok(!prettyLogLine(JSON.stringify({ level: 40, time: at, msg: 'failed', err })).includes('at f'));
  });

  test('colours the level only when asked; a line that is not a JSON object passes unchanged', () => {
    assert.ok(prettyLogLine(JSON.stringify({ level: 50, time: at, msg: 'x' }), { color: true }).includes('\u001b[31mERROR\u001b[0m'));
    assert.equal(prettyLogLine('plain text'), 'plain text\n');
    assert.equal(prettyLogLine('[1,2]\n'), '[1,2]\n');
  });
});

test('wantsPretty: auto follows the stream being a terminal; json and pretty are forced', () => {
  assert.equal(wantsPretty('auto', { isTTY: true }), true);
  assert.equal(wantsPretty('auto', {}), false);
  assert.equal(wantsPretty('json', { isTTY: true }), false);
  assert.equal(wantsPretty('pretty', {}), true);
});

test('prettyDestination writes one human line per record; colour on a terminal unless NO_COLOR', () => {
  const written: string[] = [];
  const tty = { isTTY: true, write: (text: string) => written.push(text) };
  const record = `${JSON.stringify({ level: 30, time: at, msg: 'a' })}\n`;
  prettyDestination(tty, {}).write(record + record);
  assert.equal(written.length, 2);
  assert.ok(written[0]?.includes('\u001b[32mINFO'));
  prettyDestination(tty, { NO_COLOR: '1' }).write(record);
  assert.ok(written[2]?.includes(' INFO  a'), written[2]);
});

describe('moveMsgField / processLoggerOptions', () => {
  test("an object's msg next to a message string becomes detail; alone it stays the message", () => {
    const args: unknown[] = [{ code: 'X', msg: 'inner' }, 'outer'];
    moveMsgField(args);
    assert.deepEqual(args, [{ code: 'X', detail: 'inner' }, 'outer']);
    const alone: unknown[] = [{ msg: 'only' }];
    moveMsgField(alone);
    assert.deepEqual(alone, [{ msg: 'only' }]);
    const text: unknown[] = ['just text'];
    moveMsgField(text);
    assert.deepEqual(text, ['just text']);
  });

  test('the options name the service at the root and pass every call through the hook', () => {
    const options = processLoggerOptions({ service: 'agent', level: 'debug', redactPaths: ['token'] });
    assert.deepEqual(options.base, { service: 'agent' });
    assert.equal(options.level, 'debug');
    assert.deepEqual(options.redact, { paths: ['token'], censor: '[redacted]' });
    const calls: unknown[][] = [];
    options.hooks.logMethod.call(undefined, [{ msg: 'm' }, 's'], (...args: unknown[]) => calls.push(args));
    assert.deepEqual(calls, [[{ detail: 'm' }, 's']]);
  });
});
