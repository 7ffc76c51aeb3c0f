/**
 * `promtool check metrics` (Prometheus's own linter: HELP and TYPE present, counters end in _total and only
 * counters do, base units, snake_case) on the exposition of a real gateway process that carried traffic, and on
 * the operator's registry with its series moved. Skipped with the reason printed when promtool is not installed
 * (.ci/run unpacks it from Debian's prometheus package); the k8s tier runs the same check on a running operator.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createOperatorMetrics } from '@narrowlink/operator';
import { findPromtool, type GatewayWithTraffic, parseExposition, promtoolCheckMetrics, startGatewayWithTraffic } from './metrics-fixtures.ts';

describe('promtool check metrics', async () => {
  const promtool = await findPromtool();
  const skip = 'reason' in promtool ? promtool.reason : undefined;
  if (skip) console.log(`promtool: SKIPPED (${skip})`);
  const bin = 'path' in promtool ? promtool.path : '';

  test('flags what it should: a gauge named _total, a counter without _total, a missing HELP (the check is not vacuous)', { skip }, async () => {
    const bad = [
      '# HELP x_open_total Open things.',
      '# TYPE x_open_total gauge',
      'x_open_total 1',
      '# HELP x_requests Requests.',
      '# TYPE x_requests counter',
      'x_requests 2',
      '# TYPE x_nohelp_seconds gauge',
      'x_nohelp_seconds 3',
      '',
    ].join('\n');
    const result = await promtoolCheckMetrics(bin, bad);
    assert.equal(result.ok, false);
    assert.match(result.findings, /x_open_total non-counter metrics should not have "_total" suffix/);
    assert.match(result.findings, /x_requests counter metrics should have "_total" suffix/);
    assert.match(result.findings, /x_nohelp_seconds no help text/);
  });

  describe('a running gateway', () => {
    let gateway: GatewayWithTraffic | undefined;
    before(async () => {
      if (!skip) gateway = await startGatewayWithTraffic();
    });
    after(async () => {
      await gateway?.stop();
    });

    test('its /metrics passes with no finding', { skip }, async () => {
      const text = await (gateway as GatewayWithTraffic).scrape();
      const exposition = parseExposition(text);
      // What is checked: the gateway's own families, the build info and the standard process/Node metrics.
      for (const name of ['narrowlink_gateway_relay_bytes_total', 'narrowlink_gateway_stream_open_seconds_bucket', 'narrowlink_build_info', 'process_cpu_seconds_total', 'nodejs_heap_size_used_bytes']) {
        assert.ok(exposition.samples.has(name), `${name} is exposed`);
      }
      const result = await promtoolCheckMetrics(bin, text);
      assert.equal(result.findings, '');
      assert.ok(result.ok);
    });
  });

  test("the operator's registry, with every metric moved, passes with no finding", { skip }, async () => {
    const metrics = createOperatorMetrics();
    metrics.leader.set(1);
    metrics.reconciles.inc({ kind: 'agent', result: 'ok' });
    metrics.reconcileSeconds.observe({ kind: 'agent' }, 0.012);
    metrics.loginRequests.inc({ outcome: 'issued' });
    metrics.loginReviews.inc({ outcome: 'stamped' });
    const text = await metrics.registry.metrics();
    assert.ok(parseExposition(text).samples.has('process_resident_memory_bytes'));
    const result = await promtoolCheckMetrics(bin, text);
    assert.equal(result.findings, '');
    assert.ok(result.ok);
  });
});
