/**
 * What the dashboard and promtool tests share: the shipped Grafana dashboard's PromQL, a small PromQL reader that
 * names the metrics and labels an expression uses, a Prometheus text-format reader, promtool (found or skipped
 * with a reason), and a real gateway with traffic through it whose /metrics the tests read.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import WebSocket from 'ws';
import { type Stack, startStack } from '../e2e/stack.ts';
import { ROOT } from '../helpers/paths.ts';
import { freeUdpPortPair } from '../helpers/ports.ts';
import { startEchoServer, type TestServer } from '../helpers/tcp-fixtures.ts';

const run = promisify(execFile);

/** The dashboard the chart ships. */
export const DASHBOARD_FILE = path.join(ROOT, 'charts/narrowlink/dashboards/narrowlink.json');

/** One PromQL query of the dashboard, with where it sits (for messages). */
export interface DashboardQuery {
  panel: string;
  refId: string;
  expr: string;
}

/** A Grafana panel as far as the tests read it. */
export interface Panel {
  id: number;
  type: string;
  title: string;
  description?: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type: string; uid: string };
  targets?: Array<{ expr: string; refId: string; legendFormat?: string; datasource?: { type: string; uid: string } }>;
  panels?: Panel[];
}

/** The dashboard JSON (parsed) and its panels, rows' nested panels included. */
export function readDashboard(): { dashboard: Record<string, unknown> & { panels: Panel[] }; panels: Panel[] } {
  const dashboard = JSON.parse(readFileSync(DASHBOARD_FILE, 'utf8')) as Record<string, unknown> & { panels: Panel[] };
  const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
  return { dashboard, panels };
}

/** Every PromQL expression of the dashboard (panel targets and the template variables' queries). */
export function dashboardQueries(): DashboardQuery[] {
  const { dashboard, panels } = readDashboard();
  const queries: DashboardQuery[] = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, refId: t.refId, expr: t.expr })));
  const variables = (dashboard.templating as { list: Array<{ name: string; type: string; query?: { query?: string } | string }> }).list;
  for (const variable of variables) {
    if (variable.type !== 'query') continue;
    const text = typeof variable.query === 'string' ? variable.query : (variable.query?.query ?? '');
    // label_values(METRIC, LABEL): the metric is what must exist.
    const match = /^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$/.exec(text);
    if (!match) throw new Error(`variable ${variable.name}: only label_values(metric, label) is supported, got ${text}`);
    queries.push({ panel: `variable $${variable.name}`, refId: variable.name, expr: `count by (${match[2]}) (${match[1]})` });
  }
  return queries;
}

/**
 * Grafana's variables replaced by what Grafana sends Prometheus (a valid duration, a regex), so the expression
 * is plain PromQL.
 */
export function expandGrafanaVariables(expr: string): string {
  return expr
    .replaceAll('$__rate_interval', '1m')
    .replaceAll('$__interval', '30s')
    .replaceAll('$__range', '6h')
    .replace(/\$\{?namespace\}?/g, '.*');
}

/** Labels every scrape adds (Prometheus and the Prometheus Operator), which no exposition carries. */
export const TARGET_LABELS: ReadonlySet<string> = new Set(['job', 'instance', 'namespace', 'pod', 'service', 'endpoint', 'container']);

const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'inf', 'nan', 'atan2']);

/**
 * The metric names and label names a PromQL expression uses. Enough PromQL for the dashboard: selectors with
 * matchers, ranges, function calls, aggregations with by/without, binary operators with on/ignoring/group_*.
 * Label names come from matchers and from the grouping and matching clauses.
 */
export function promqlNames(expr: string): { metrics: string[]; labels: string[] } {
  const labels = new Set<string>();
  let text = expandGrafanaVariables(expr);
  // String literals first: their content is not PromQL (a regex such as "a|b" or ".*").
  text = text.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""');
  text = text.replace(/\{([^}]*)\}/g, (_, matchers: string) => {
    for (const m of matchers.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)/g)) if (m[1] !== '__name__') labels.add(m[1] as string);
    return ' ';
  });
  text = text.replace(/\[[^\]]*\]/g, ' ');
  text = text.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g, (_, _word: string, list: string) => {
    for (const name of list.split(',').map((s) => s.trim())) if (name !== '') labels.add(name);
    return ' ';
  });
  // Offsets (a duration), then numbers (0.99, 1e3) before identifiers, so neither a unit nor an exponent is read
  // as a name; digits inside a name (lag_p99_seconds) are part of the name.
  text = text.replace(/\boffset\s+-?(?:\d+[a-z]+)+/g, ' ');
  text = text.replace(/(?<![a-zA-Z0-9_:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![a-zA-Z0-9_:])/g, ' ');
  const metrics = new Set<string>();
  for (const m of text.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const name = m[1] as string;
    if (m[2] !== undefined || KEYWORDS.has(name.toLowerCase())) continue; // a function or aggregation, or a keyword
    metrics.add(name);
  }
  return { metrics: [...metrics], labels: [...labels] };
}

/** A Prometheus text exposition read as: sample name → label names seen on it; and family name → type. */
export interface Exposition {
  samples: Map<string, Set<string>>;
  types: Map<string, string>;
  text: string;
}

/** Reads a text exposition (format 0.0.4). */
export function parseExposition(text: string): Exposition {
  const samples = new Map<string, Set<string>>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1] as string, type[2] as string);
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$/.exec(line);
    if (!match) throw new Error(`not an exposition line: ${line}`);
    const names = samples.get(match[1] as string) ?? new Set<string>();
    for (const label of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"/g)) names.add(label[1] as string);
    samples.set(match[1] as string, names);
  }
  return { samples, types, text };
}

/** Where .ci/run unpacks promtool (only the binary of Debian's prometheus package). */
export const PROMTOOL_CACHE = path.join(os.homedir(), '.cache', 'narrowlink', 'promtool', 'promtool');

/** promtool's path, or why it is not here (the tests print that and skip). */
export async function findPromtool(): Promise<{ path: string } | { reason: string }> {
  const candidates = [process.env.NARROWLINK_PROMTOOL, PROMTOOL_CACHE, 'promtool'].filter((c): c is string => c !== undefined && c !== '');
  for (const candidate of candidates) {
    if (candidate.includes('/') && !existsSync(candidate)) continue;
    try {
      await run(candidate, ['--version'], { timeout: 30_000 });
      return { path: candidate };
    } catch {
      // next candidate
    }
  }
  return { reason: `promtool not found (not on PATH, not at ${PROMTOOL_CACHE}); .ci/run unpacks it from Debian's prometheus package` };
}

/** `promtool check metrics` on an exposition: its findings (empty when clean). */
export async function promtoolCheckMetrics(promtool: string, exposition: string): Promise<{ ok: boolean; findings: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(promtool, ['check', 'metrics'], { timeout: 60_000 }, (error, stdout, stderr) => {
      const findings = `${stdout}${stderr}`.trim();
      if (error && typeof error.code !== 'number') reject(error);
      else resolve({ ok: !error, findings });
    });
    child.stdin?.end(exposition);
  });
}

/** `promtool check rules` on the expressions as recording rules: each must parse as PromQL. */
export async function promtoolCheckExpressions(promtool: string, exprs: string[]): Promise<{ ok: boolean; output: string }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'nl-promql-'));
  try {
    const rules = exprs.map((expr, i) => `      - record: narrowlink:dashboard_query_${i}\n        expr: ${JSON.stringify(expandGrafanaVariables(expr))}`);
    const file = path.join(dir, 'rules.yaml');
    await writeFile(file, `groups:\n  - name: dashboard\n    rules:\n${rules.join('\n')}\n`);
    try {
      const { stdout, stderr } = await run(promtool, ['check', 'rules', file], { timeout: 60_000 });
      return { ok: true, output: `${stdout}${stderr}` };
    } catch (error) {
      const e = error as { stdout?: string; stderr?: string; message: string };
      return { ok: false, output: `${e.stdout ?? ''}${e.stderr ?? ''}` || e.message };
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A running gateway (with an agent and a forward) that has carried traffic and refused a bad token. */
export interface GatewayWithTraffic {
  stack: Stack;
  /** Whether the forward's direct path came up (it needs the QUIC binding; relay-only platforms have none). */
  directUp: boolean;
  /** GET /metrics on the admin listener. */
  scrape(): Promise<string>;
  stop(): Promise<void>;
}

/**
 * Starts a real gateway process (the e2e stack: gateway, one agent, one `narrowlink forward`) on its own NAT probe
 * ports, sends bytes through it, lets the forward bring its direct path up, and opens one refused session, so the
 * counters and histograms the dashboard reads have moved; returns a scraper of its /metrics.
 */
export async function startGatewayWithTraffic(): Promise<GatewayWithTraffic> {
  const echo: TestServer = await startEchoServer();
  let stack: Stack | undefined;
  try {
    const probePort = await freeUdpPortPair();
    stack = await startStack({
      agents: [{ name: 'svc', expose: [{ name: 'echo', port: echo.port }] }],
      // auto: the forward also sets up the direct path (the stack's default keeps clients on the relay).
      clientMode: 'auto',
      gatewayArgs: ['--nat-probe-address', '127.0.0.1', '--nat-probe-port', String(probePort)],
    });
    await stack.startAgent('svc');
    const forward = await stack.startForward(['svc:echo']);
    await echoOnce(forward.ports[0] as number, Buffer.alloc(64 * 1024, 7));
    // The forward sets up a direct path behind the first relayed stream: its NAT probes, the plan and the path
    // coming up are what the direct-path panels count. Usually under 2 s; 20 s leaves room for a loaded machine.
    const directUp = await forward.process.waitFor((l) => l.event === 'direct-up', 20_000).then(
      () => true,
      () => false,
    );
    // One refused session (a token that is no JWT), so auth_failures_total moves.
    await refusedUpgrade(`${stack.url}/v1/client`, 'not-a-token');
    const adminUrl = stack.adminUrl;
    const started = stack;
    return {
      stack: started,
      directUp,
      scrape: async () => (await fetch(`${adminUrl}/metrics`)).text(),
      stop: async () => {
        await started.stop();
        await echo.close();
      },
    };
  } catch (error) {
    await stack?.stop();
    await echo.close();
    throw error;
  }
}

/** Opens a WebSocket with `token` and resolves with the HTTP status the gateway refused it with. */
async function refusedUpgrade(url: string, token: string): Promise<number> {
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
  return new Promise<number>((resolve, reject) => {
    ws.once('unexpected-response', (_request, response) => {
      response.resume();
      ws.terminate();
      resolve(response.statusCode ?? 0);
    });
    ws.once('open', () => {
      ws.terminate();
      reject(new Error(`${url} accepted token ${JSON.stringify(token)}`));
    });
    ws.once('error', (error) => reject(error));
  });
}

/** Sends `payload` through a forward's local port and waits for all of it to come back. */
async function echoOnce(port: number, payload: Buffer): Promise<void> {
  const socket = net.connect({ host: '127.0.0.1', port });
  const chunks: Buffer[] = [];
  let received = 0;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`echo through port ${port}: ${received} of ${payload.length} bytes after 10 s`)), 10_000);
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      received += chunk.length;
      if (received >= payload.length) {
        clearTimeout(timer);
        resolve();
      }
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.write(payload);
  });
  socket.destroy();
  if (!Buffer.concat(chunks).equals(payload)) throw new Error('the echo came back different');
}
