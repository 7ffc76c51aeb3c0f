import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCode, isAuthRefusalCode, isTokenCode, StreamResetError } from './errors.ts';

describe('code families', () => {
  const cases: Array<[string | undefined, boolean, boolean]> = [
    ['NL_ERR_AUTH_INVALID_TOKEN', true, false],
    ['NL_ERR_AUTH_UNKNOWN_AGENT', true, false],
    [ErrorCode.TOKEN_EXPIRED, false, true],
    [ErrorCode.PROTOCOL_VERSION, false, false],
    ['NL_ERR_GATEWAY_NOT_READY', false, false],
    ['AUTH_INVALID_TOKEN', false, false],
    ['', false, false],
    [undefined, false, false],
  ];
  for (const [code, auth, token] of cases) {
    test(`${String(code)}: auth ${auth}, token ${token}`, () => {
      assert.equal(isAuthRefusalCode(code), auth);
      assert.equal(isTokenCode(code), token);
    });
  }
});

test('a stream reset carries the short wire code and its NL_ERR_STREAM_ form', () => {
  const error = new StreamResetError('DENIED', 'no rule allows it');
  assert.equal(error.streamCode, 'DENIED');
  assert.equal(error.code, 'NL_ERR_STREAM_DENIED');
});
