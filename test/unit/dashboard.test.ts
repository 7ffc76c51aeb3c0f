/**
 * The Grafana dashboard the chart ships (charts/narrowlink/dashboards/narrowlink.json): its shape, and that every
 * metric and label its PromQL queries exists in what a real gateway process (with traffic through it) and the
 * operator's registry expose — histograms' _bucket/_sum/_count included, so a renamed metric or label cannot
 * leave a panel silently empty. The chart renders it (and the ServiceMonitors) only when asked.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { createOperatorMetrics } from '@narrowlink/operator';
import { ROOT } from '../helpers/paths.ts';
import { helmPath, toolsUnavailableReason } from '../k8s/tools.ts';
import {
  DASHBOARD_FILE,
  dashboardQueries,
  type Exposition,
  findPromtool,
  type GatewayWithTraffic,
  parseExposition,
  promqlNames,
  promtoolCheckExpressions,
  readDashboard,
  startGatewayWithTraffic,
  TARGET_LABELS,
} from './metrics-fixtures.ts';

const run = promisify(execFile);

// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable syntax, not a template literal.
const DATASOURCE_VARIABLE = '${datasource}';

/** A rendered chart object, as far as these tests read it. */
interface Rendered {
  kind: string;
  apiVersion: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec: {
    type?: string;
    ports?: Array<{ name: string }>;
    selector?: { matchLabels: Record<string, string> };
    namespaceSelector?: unknown;
    endpoints?: Array<{ port: string } & Record<string, unknown>>;
  };
  data?: Record<string, string>;
}

describe('the PromQL reader the dashboard checks rely on', () => {
  test('names metrics, not functions, keywords, numbers, durations or Grafana variables', () => {
    assert.deepEqual(
      promqlNames('histogram_quantile(0.99, sum by (le, kind) (rate(a_seconds_bucket{namespace=~"$namespace", x!="y|z"}[$__rate_interval]))) / on (job) group_left (component) b_info > 1e3'),
      { metrics: ['a_seconds_bucket', 'b_info'], labels: ['namespace', 'x', 'le', 'kind', 'job', 'component'] },
    );
    assert.deepEqual(promqlNames('time() - process_start_time_seconds offset 5m and bool up'), { metrics: ['process_start_time_seconds', 'up'], labels: [] });
    assert.deepEqual(promqlNames('sum without (instance) (rate(x_total{a="sum(b)"}[5m]))'), { metrics: ['x_total'], labels: ['a', 'instance'] });
  });
});

describe('Grafana dashboard', () => {
  const { dashboard, panels } = readDashboard();
  const queries = dashboardQueries();

  test('is a Grafana dashboard with a fixed uid, a Prometheus data source variable and a namespace filter', () => {
    assert.equal(dashboard.uid, 'narrowlink-overview');
    assert.equal(dashboard.title, 'Narrowlink');
    assert.ok(typeof dashboard.schemaVersion === 'number' && dashboard.schemaVersion >= 36);
    const variables = (dashboard.templating as { list: Array<{ name: string; type: string; query?: unknown }> }).list;
    assert.deepEqual(
      variables.map((v) => [v.name, v.type]),
      [
        ['datasource', 'datasource'],
        ['namespace', 'query'],
      ],
    );
    assert.equal(variables[0]?.query, 'prometheus');
  });

  test('panels have unique ids, sit inside the 24-column grid without overlapping, and query the variable data source', () => {
    const ids = panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, 'unique panel ids');
    const cells = new Set<string>();
    for (const p of panels) {
      const { x, y, w, h } = p.gridPos;
      assert.ok(x >= 0 && w > 0 && x + w <= 24 && h > 0, `${p.title}: inside the grid`);
      for (let cx = x; cx < x + w; cx++) {
        for (let cy = y; cy < y + h; cy++) {
          assert.ok(!cells.has(`${cx},${cy}`), `${p.title} overlaps another panel at ${cx},${cy}`);
          cells.add(`${cx},${cy}`);
        }
      }
      if (p.type === 'row') continue;
      assert.ok((p.targets ?? []).length > 0, `${p.title}: has queries`);
      assert.ok((p.description ?? '').length > 20, `${p.title}: says what it shows`);
      for (const t of p.targets ?? []) assert.equal(t.datasource?.uid ?? p.datasource?.uid, DATASOURCE_VARIABLE, `${p.title} ${t.refId}`);
      assert.equal(new Set((p.targets ?? []).map((t) => t.refId)).size, (p.targets ?? []).length, `${p.title}: unique refIds`);
    }
  });

  test('covers what the issue asks for: sessions, streams, bytes by path, direct success by NAT type, auth failures, reconcile latency', () => {
    const used = new Set(queries.flatMap((q) => promqlNames(q.expr).metrics));
    for (const name of [
      'narrowlink_gateway_sessions',
      'narrowlink_gateway_streams_open',
      'narrowlink_gateway_streams_total',
      'narrowlink_gateway_relay_bytes_total',
      'narrowlink_gateway_direct_paths_up',
      'narrowlink_gateway_direct_paths_total',
      'narrowlink_gateway_auth_failures_total',
      'narrowlink_operator_reconcile_seconds_bucket',
      'narrowlink_build_info',
      'process_resident_memory_bytes',
    ]) {
      assert.ok(used.has(name), `the dashboard queries ${name}`);
    }
    const success = queries.find((q) => q.panel === 'Direct path success by NAT type');
    assert.ok(success, 'a direct-success-by-NAT-type panel');
    assert.deepEqual(promqlNames(success.expr).labels.filter((l) => l.endsWith('_nat')).sort(), ['agent_nat', 'client_nat']);
  });

  test('panel types are Grafana core panels, and each legend names only labels its query keeps', () => {
    for (const p of panels) assert.ok(['row', 'stat', 'timeseries', 'bargauge'].includes(p.type), `${p.title}: ${p.type}`);
    for (const p of panels) {
      for (const t of p.targets ?? []) {
        // A label survives an aggregation only when grouped by (or brought in by group_left); scrape labels too.
        const kept = new Set([...promqlNames(t.expr).labels, ...TARGET_LABELS]);
        for (const m of (t.legendFormat ?? '').matchAll(/\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}/g)) {
          assert.ok(kept.has(m[1] as string), `${p.title} ${t.refId}: legend {{${m[1]}}} is not a label of ${t.expr}`);
        }
      }
    }
  });

  test('every query filters by the namespace variable, so one dashboard serves several installations', () => {
    for (const q of queries) {
      if (q.panel.startsWith('variable ')) continue;
      assert.match(q.expr, /namespace=~"\$namespace"/, `${q.panel} ${q.refId}: ${q.expr}`);
    }
  });

  test('every query is valid PromQL (promtool check rules)', async (t) => {
    const promtool = await findPromtool();
    if ('reason' in promtool) {
      t.diagnostic(`promtool: SKIPPED (${promtool.reason})`);
      t.skip(promtool.reason);
      return;
    }
    const result = await promtoolCheckExpressions(
      promtool.path,
      queries.map((q) => q.expr),
    );
    assert.ok(result.ok, result.output);
    assert.match(result.output, new RegExp(`SUCCESS: ${queries.length} rules found`));
  });

  describe('every metric and label it queries exists in a real gateway and operator', () => {
    let gateway: GatewayWithTraffic | undefined;
    let gatewayExposition: Exposition;
    let operatorExposition: Exposition;
    before(async () => {
      gateway = await startGatewayWithTraffic();
      gatewayExposition = parseExposition(await gateway.scrape());
      // The registry operator/src/main.ts serves on /metrics (the k8s tier scrapes a running operator).
      operatorExposition = parseExposition(await createOperatorMetrics().registry.metrics());
    });
    after(async () => {
      await gateway?.stop();
    });

    /** The expositions a metric must be in: the gateway's, the operator's, or both for the shared names. */
    const expositionsFor = (metric: string): Array<[string, Exposition]> => {
      if (metric.startsWith('narrowlink_gateway_')) return [['gateway', gatewayExposition]];
      if (metric.startsWith('narrowlink_operator_')) return [['operator', operatorExposition]];
      return [
        ['gateway', gatewayExposition],
        ['operator', operatorExposition],
      ];
    };

    test('metric names (histograms as _bucket, _sum, _count) and the labels of their series', () => {
      const problems: string[] = [];
      let checked = 0;
      for (const q of queries) {
        const { metrics, labels } = promqlNames(q.expr);
        assert.ok(metrics.length > 0, `${q.panel} ${q.refId} queries a metric`);
        for (const metric of metrics) {
          for (const [component, exposition] of expositionsFor(metric)) {
            checked++;
            if (!exposition.samples.has(metric)) problems.push(`${q.panel} ${q.refId}: ${metric} is not in the ${component}'s exposition`);
          }
        }
        // A label must be on one of the expression's series, or be one the scrape adds, or a histogram's le.
        const available = new Set<string>([...TARGET_LABELS, 'le']);
        for (const metric of metrics) for (const [, exposition] of expositionsFor(metric)) for (const label of exposition.samples.get(metric) ?? []) available.add(label);
        for (const label of labels) if (!available.has(label)) problems.push(`${q.panel} ${q.refId}: label ${label} is on none of ${metrics.join(', ')}`);
      }
      assert.deepEqual(problems, []);
      assert.ok(checked >= queries.length, `${checked} metric references checked`);
    });

    test('the gateway really carried the traffic the panels show (not only zero series)', (t) => {
      const value = (name: string, labels = ''): number => {
        const line = gatewayExposition.text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
        return line === undefined ? Number.NaN : Number(line.slice(line.lastIndexOf(' ') + 1));
      };
      assert.equal(value('narrowlink_gateway_sessions', '{kind="agent"}'), 1);
      assert.equal(value('narrowlink_gateway_sessions', '{kind="client"}'), 1);
      assert.ok(value('narrowlink_gateway_relay_bytes_total', '{direction="client_to_agent"}') >= 64 * 1024);
      assert.ok(value('narrowlink_gateway_relay_bytes_total', '{direction="agent_to_client"}') >= 64 * 1024);
      assert.ok(value('narrowlink_gateway_streams_total', '{result="ok"}') >= 1);
      assert.ok(value('narrowlink_gateway_stream_open_seconds_count') >= 1);
      assert.equal(value('narrowlink_gateway_auth_failures_total', '{reason="NL_ERR_TOKEN_MALFORMED"}'), 1);
      // The QUIC binding ships prebuilt for Linux x64 (docs/adr/0013): there the direct path must come up.
      if (process.platform === 'linux' && process.arch === 'x64') assert.ok(gateway?.directUp, 'the forward brought its direct path up');
      if (gateway?.directUp) {
        // Both peers on loopback: no NAT; the path counted up under that pair, its time to ready observed.
        assert.equal(value('narrowlink_gateway_direct_paths_total', '{result="up",client_nat="no-nat",agent_nat="no-nat"}'), 1);
        assert.equal(value('narrowlink_gateway_direct_paths_up'), 1);
        assert.ok(value('narrowlink_gateway_direct_ready_seconds_count') >= 1);
        assert.ok(value('narrowlink_gateway_nat_classifications_total', '{type="no-nat"}') >= 2);
        assert.ok(value('narrowlink_gateway_direct_requests_total', '{result="planned"}') >= 1);
      } else {
        t.diagnostic(`no direct path on ${process.platform}-${process.arch} (no prebuilt QUIC binding): its counters were checked for existence only`);
      }
      const version = (JSON.parse(readFileSync(`${ROOT}/gateway/package.json`, 'utf8')) as { version: string }).version;
      const buildInfo = gatewayExposition.text.split('\n').filter((l) => l.startsWith('narrowlink_build_info{'));
      assert.equal(buildInfo.length, 1, buildInfo.join('\n'));
      assert.match(buildInfo[0] as string, new RegExp(`^narrowlink_build_info\\{version="${version.replaceAll('.', '\\.')}",commit="[0-9a-f]*",node_version="[0-9.]+",component="gateway"\\} 1$`));
    });
  });
});

describe('the chart renders the dashboard and the ServiceMonitors only when asked', () => {
  const chart = `${ROOT}/charts/narrowlink`;
  const template = async (args: string[]): Promise<Rendered[]> => {
    const { stdout } = await run(helmPath(), ['template', 'nl', chart, '--namespace', 'narrowlink-system', '--set', 'certManager.enabled=false', ...args], {
      maxBuffer: 32 * 1024 * 1024,
      timeout: 120_000,
    });
    return parseAllDocuments(stdout)
      .map((d) => d.toJSON() as Rendered | null)
      .filter((o): o is Rendered => o !== null);
  };
  const skipReason = toolsUnavailableReason();

  test('off by default: no ServiceMonitor, no dashboard ConfigMap', { skip: skipReason }, async () => {
    const objects = await template([]);
    assert.ok(objects.length > 5);
    assert.deepEqual(
      objects.filter((o) => o.kind === 'ServiceMonitor' || o.metadata?.name === 'narrowlink-dashboard'),
      [],
    );
  });

  test('metrics.dashboard.enabled: a ConfigMap with the labelled dashboard JSON, byte for byte', { skip: skipReason }, async () => {
    const objects = await template(['--set', 'metrics.dashboard.enabled=true', '--set', 'metrics.dashboard.namespace=monitoring', '--set', 'metrics.dashboard.annotations.grafana_folder=Narrowlink']);
    const cm = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'narrowlink-dashboard');
    assert.ok(cm, 'the ConfigMap is rendered');
    assert.equal(cm.metadata.namespace, 'monitoring');
    assert.equal(cm.metadata.labels?.grafana_dashboard, '1');
    assert.equal(cm.metadata.annotations?.grafana_folder, 'Narrowlink');
    assert.deepEqual(JSON.parse(cm.data?.['narrowlink.json'] ?? ''), JSON.parse(readFileSync(DASHBOARD_FILE, 'utf8')));
  });

  test('metrics.serviceMonitor.enabled: one per component, on the admin and metrics ports only; refused without the CRD', { skip: skipReason }, async () => {
    await assert.rejects(template(['--set', 'metrics.serviceMonitor.enabled=true']), /ServiceMonitor CRD \(monitoring\.coreos\.com\/v1\)/);
    const objects = await template([
      '--api-versions',
      'monitoring.coreos.com/v1/ServiceMonitor',
      '--set',
      'metrics.serviceMonitor.enabled=true',
      '--set',
      'metrics.serviceMonitor.interval=30s',
      '--set',
      'metrics.serviceMonitor.labels.release=kube-prometheus-stack',
    ]);
    const monitors = objects.filter((o) => o.kind === 'ServiceMonitor');
    assert.deepEqual(monitors.map((m) => m.metadata.name).sort(), ['narrowlink-gateway', 'narrowlink-operator']);
    const services = objects.filter((o) => o.kind === 'Service');
    for (const monitor of monitors) {
      assert.equal(monitor.apiVersion, 'monitoring.coreos.com/v1');
      assert.equal(monitor.metadata.labels?.release, 'kube-prometheus-stack');
      assert.deepEqual(monitor.spec.namespaceSelector, { matchNames: ['narrowlink-system'] });
      const [endpoint, ...more] = monitor.spec.endpoints ?? [];
      assert.ok(endpoint);
      assert.equal(more.length, 0);
      assert.deepEqual(endpoint, { port: monitor.metadata.name === 'narrowlink-gateway' ? 'admin' : 'metrics', path: '/metrics', scheme: 'http', interval: '30s' });
      // The Services it selects, and the ports it would scrape there: exactly one, never the public wss port.
      const selected = services.filter((s) => Object.entries(monitor.spec.selector?.matchLabels ?? {}).every(([k, v]) => s.metadata.labels?.[k] === v));
      const scraped = selected.flatMap((s) => (s.spec.ports ?? []).filter((p) => p.name === endpoint.port).map((p) => `${s.metadata.name}:${p.name}`));
      assert.deepEqual(scraped, [monitor.metadata.name === 'narrowlink-gateway' ? 'narrowlink-gateway-admin:admin' : 'narrowlink-operator:metrics']);
      for (const s of selected) assert.equal(s.spec.type === 'LoadBalancer' && (s.spec.ports ?? []).some((p) => p.name === endpoint.port), false);
    }
  });

  test('the values schema refuses a malformed interval', { skip: skipReason }, async () => {
    await assert.rejects(template(['--set', 'metrics.serviceMonitor.interval=soon']), /interval/);
  });
});
