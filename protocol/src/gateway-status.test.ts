import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { encodeGatewayStatus, GATEWAY_STATUS_LABELS, GATEWAY_STATUS_SELECTOR, parseGatewayStatus } from './gateway-status.ts';

describe('gateway-status contract', () => {
  test('the selector matches the labels every status ConfigMap carries', () => {
    const [key, value] = GATEWAY_STATUS_SELECTOR.split('=');
    assert.equal(GATEWAY_STATUS_LABELS[key as keyof typeof GATEWAY_STATUS_LABELS], value);
  });

  test('round-trips a report', () => {
    const report = { 'default/db': { instances: 2, nat: 'endpoint-independent', directPaths: 3 }, 'team/api': { instances: 1 } };
    assert.deepEqual(parseGatewayStatus(encodeGatewayStatus(report)), report);
  });

  const cases: Array<[string, string | undefined, Record<string, object>]> = [
    ['missing annotation', undefined, {}],
    ['not JSON', '{', {}],
    ['JSON null', 'null', {}],
    ['an array', '[1]', {}],
    ['a string', '"x"', {}],
    ['an entry that is not an object', '{"a/b": 3}', { 'a/b': {} }],
    ['wrongly typed fields are dropped one by one', '{"a/b": {"instances": "2", "nat": 5, "directPaths": 1}}', { 'a/b': { directPaths: 1 } }],
    ['unknown fields are ignored', '{"a/b": {"instances": 1, "future": true}}', { 'a/b': { instances: 1 } }],
  ];
  for (const [name, text, expected] of cases) {
    test(`parse: ${name}`, () => assert.deepEqual(parseGatewayStatus(text), expected));
  }
});
