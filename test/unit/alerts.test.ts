/**
 * The chart's opt-in PrometheusRule (charts/narrowlink/templates/prometheusrule.yaml): rendered only when asked
 * and when the cluster serves the CRD; its rules are valid (promtool check rules), query only metrics and labels
 * the gateway and operator registries expose, and each alert fires on the series that should trip it and stays
 * quiet on the ones that should not (promtool test rules: Prometheus's own rule evaluator on synthetic series).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { parseAllDocuments, stringify } from 'yaml';
import { createMetrics } from '@narrowlink/gateway';
import { createOperatorMetrics } from '@narrowlink/operator';
import { ROOT } from '../helpers/paths.ts';
import { helmPath, toolsUnavailableReason } from '../k8s/tools.ts';
import { type Exposition, findPromtool, parseExposition, promqlNames, TARGET_LABELS } from './metrics-fixtures.ts';

const run = promisify(execFile);
const NS = 'narrowlink-system';

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}
interface RuleObject {
  kind: string;
  metadata: { name: string; namespace: string; labels: Record<string, string> };
  spec: { groups: Array<{ name: string; rules: Rule[] }> };
}

async function render(args: string[]): Promise<RuleObject[]> {
  const { stdout } = await run(helmPath(), ['template', 'nl', path.join(ROOT, 'charts/narrowlink'), '--namespace', NS, '--set', 'certManager.enabled=false', ...args], {
    maxBuffer: 32 * 1024 * 1024,
    timeout: 120_000,
  });
  return parseAllDocuments(stdout)
    .map((d) => d.toJSON() as RuleObject | null)
    .filter((o): o is RuleObject => o !== null && o.kind === 'PrometheusRule');
}

/** An alert's annotations as Prometheus expands them for `labels` (the templates use only `$labels.NAME`). */
function expand(annotations: Record<string, string>, labels: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(annotations).map(([k, v]) => [k, v.replace(/\{\{\s*\$labels\.([a-z_]+)\s*\}\}/g, (_, name: string) => labels[name] ?? '')]));
}

describe('the chart PrometheusRule', { skip: toolsUnavailableReason() }, () => {
  let rules: Rule[] = [];
  let dir = '';
  before(async () => {
    const [object, ...more] = await render([
      '--api-versions',
      'monitoring.coreos.com/v1/PrometheusRule',
      '--set',
      'metrics.prometheusRule.enabled=true',
      '--set',
      'metrics.prometheusRule.labels.release=kube-prometheus-stack',
    ]);
    assert.ok(object);
    assert.equal(more.length, 0);
    assert.equal(object.metadata.labels.release, 'kube-prometheus-stack');
    rules = object.spec.groups.flatMap((g) => g.rules);
    dir = await mkdtemp(path.join(os.tmpdir(), 'nl-alerts-'));
    await writeFile(path.join(dir, 'rules.yaml'), stringify({ groups: object.spec.groups }));
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('off by default; refused with one line when the cluster lacks the CRD', async () => {
    assert.deepEqual(await render([]), []);
    await assert.rejects(render(['--set', 'metrics.prometheusRule.enabled=true']), /PrometheusRule CRD \(monitoring\.coreos\.com\/v1\)/);
  });

  test('every alert is scoped to the release namespace, has a severity and says what to do', () => {
    assert.deepEqual(rules.map((r) => r.alert).sort(), [
      'NarrowlinkAuthFailuresHigh',
      'NarrowlinkEventLoopSaturated',
      'NarrowlinkGatewayConfigInvalid',
      'NarrowlinkGatewayDown',
      'NarrowlinkOperatorNoLeader',
      'NarrowlinkReconcileErrors',
    ]);
    for (const rule of rules) {
      assert.match(rule.expr, new RegExp(`namespace="${NS}"`), rule.alert);
      assert.ok(['critical', 'warning'].includes(rule.labels.severity as string), rule.alert);
      assert.ok((rule.annotations.summary ?? '').length > 10 && (rule.annotations.description ?? '').length > 20, rule.alert);
    }
  });

  test('every metric and label the rules use is in the gateway or operator registry', async () => {
    const gateway = parseExposition(await createMetrics().registry.metrics());
    const operator = parseExposition(await createOperatorMetrics().registry.metrics());
    const holders = (metric: string): Exposition[] => [gateway, operator].filter((e) => e.samples.has(metric));
    for (const rule of rules) {
      const { metrics, labels } = promqlNames(rule.expr);
      const available = new Set<string>(TARGET_LABELS);
      for (const metric of metrics) {
        assert.ok(holders(metric).length > 0, `${rule.alert}: ${metric} is exposed`);
        for (const e of holders(metric)) for (const label of e.samples.get(metric) ?? []) available.add(label);
      }
      for (const label of labels) assert.ok(available.has(label), `${rule.alert}: label ${label}`);
    }
  });

  describe('with promtool', async () => {
    const promtool = await findPromtool();
    const skip = 'reason' in promtool ? promtool.reason : undefined;
    if (skip) console.log(`promtool: SKIPPED (${skip})`);

    test('the rules are valid', { skip }, async () => {
      const { stdout, stderr } = await run((promtool as { path: string }).path, ['check', 'rules', path.join(dir, 'rules.yaml')]);
      assert.match(`${stdout}${stderr}`, new RegExp(`SUCCESS: ${rules.length} rules found`));
    });

    test('each alert fires on the series that should trip it, and not on healthy ones', { skip }, async () => {
      const rule = (name: string): Rule => rules.find((r) => r.alert === name) as Rule;
      const at = { namespace: NS, job: 'narrowlink-gateway-admin', instance: '10.0.0.7:9090', pod: 'narrowlink-gateway-0' };
      const series = (name: string, labels: Record<string, string>, values: string) =>
        ({ series: `${name}{${Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',')}}`, values });
      const alert = (name: string, labels: Record<string, string>) => {
        const all = { ...labels, ...rule(name).labels };
        return { exp_labels: all, exp_annotations: expand(rule(name).annotations, all) };
      };
      const cases = [
        {
          // Nothing from any gateway: down after 5 minutes, not before.
          interval: '1m',
          input_series: [series('narrowlink_operator_leader', { ...at, job: 'narrowlink-operator' }, '1x20')],
          alert_rule_test: [
            { eval_time: '4m', alertname: 'NarrowlinkGatewayDown', exp_alerts: [] },
            { eval_time: '10m', alertname: 'NarrowlinkGatewayDown', exp_alerts: [alert('NarrowlinkGatewayDown', { component: 'gateway', namespace: NS })] },
            { eval_time: '10m', alertname: 'NarrowlinkOperatorNoLeader', exp_alerts: [] },
          ],
        },
        {
          // A healthy installation: nothing fires.
          interval: '1m',
          input_series: [
            series('narrowlink_build_info', { ...at, version: '0.1.0', commit: '', node_version: '24.21.0', component: 'gateway' }, '1x30'),
            series('narrowlink_operator_leader', { ...at, job: 'narrowlink-operator' }, '1x30'),
            series('narrowlink_operator_reconciles_total', { ...at, kind: 'agent', result: 'error' }, '0x30'),
            series('narrowlink_gateway_config_reloads_total', { ...at, result: 'invalid' }, '0x30'),
            series('narrowlink_gateway_auth_failures_total', { ...at, reason: 'NL_ERR_TOKEN_EXPIRED' }, '0+30x30'),
            series('nodejs_eventloop_active_seconds_total', at, '0+6x30'),
            series('nodejs_eventloop_idle_seconds_total', at, '0+54x30'),
          ],
          alert_rule_test: rules.map((r) => ({ eval_time: '25m', alertname: r.alert, exp_alerts: [] })),
        },
        {
          // Trouble: no leader, agent reconciles failing, an invalid config, 2 auth failures/s, a 95% busy loop.
          interval: '1m',
          input_series: [
            series('narrowlink_build_info', { ...at, version: '0.1.0', commit: '', node_version: '24.21.0', component: 'gateway' }, '1x30'),
            series('narrowlink_operator_leader', { ...at, job: 'narrowlink-operator' }, '0x30'),
            series('narrowlink_operator_reconciles_total', { ...at, kind: 'agent', result: 'error' }, '0+3x30'),
            series('narrowlink_gateway_config_reloads_total', { ...at, result: 'invalid' }, '0 0 0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1'),
            series('narrowlink_gateway_auth_failures_total', { ...at, reason: 'NL_ERR_TOKEN_EXPIRED' }, '0+120x30'),
            series('nodejs_eventloop_active_seconds_total', at, '0+57x30'),
            series('nodejs_eventloop_idle_seconds_total', at, '0+3x30'),
          ],
          alert_rule_test: [
            { eval_time: '20m', alertname: 'NarrowlinkOperatorNoLeader', exp_alerts: [alert('NarrowlinkOperatorNoLeader', {})] },
            { eval_time: '25m', alertname: 'NarrowlinkReconcileErrors', exp_alerts: [alert('NarrowlinkReconcileErrors', { kind: 'agent' })] },
            {
              eval_time: '8m',
              alertname: 'NarrowlinkGatewayConfigInvalid',
              exp_alerts: [alert('NarrowlinkGatewayConfigInvalid', { ...at, result: 'invalid' })],
            },
            { eval_time: '25m', alertname: 'NarrowlinkGatewayConfigInvalid', exp_alerts: [] },
            { eval_time: '25m', alertname: 'NarrowlinkAuthFailuresHigh', exp_alerts: [alert('NarrowlinkAuthFailuresHigh', {})] },
            { eval_time: '25m', alertname: 'NarrowlinkEventLoopSaturated', exp_alerts: [alert('NarrowlinkEventLoopSaturated', { ...at, component: 'gateway' })] },
            { eval_time: '25m', alertname: 'NarrowlinkGatewayDown', exp_alerts: [] },
          ],
        },
      ];
      await writeFile(path.join(dir, 'tests.yaml'), stringify({ rule_files: ['rules.yaml'], evaluation_interval: '1m', tests: cases }));
      try {
        await run((promtool as { path: string }).path, ['test', 'rules', 'tests.yaml'], { cwd: dir, timeout: 60_000 });
      } catch (error) {
        const e = error as { stdout?: string; stderr?: string };
        assert.fail(`promtool test rules:\n${e.stdout ?? ''}${e.stderr ?? ''}`);
      }
    });
  });
});
