/**
 * What the server components with a metrics endpoint (the gateway, the operator) share in their expositions, kept
 * here so the two cannot drift apart (this package has no prom-client dependency: plain data only):
 * - what a running component is built from, for the `narrowlink_build_info` gauge (a dashboard joins any
 *   component's series on `version`);
 * - which of prom-client's default metrics are left out ({@link OMITTED_DEFAULT_METRICS});
 * - the event loop's busy and idle time ({@link EVENT_LOOP_TIME_METRICS}), which prom-client does not collect.
 *
 * The version is the workspace version (all workspaces share it). The JSON import is inlined by esbuild into the
 * server bundles (dist/server) and read by Node from the sources, so both report the same value.
 */
import { performance } from 'node:perf_hooks';
import protocolPackage from '../package.json' with { type: 'json' };

/**
 * Set by a bundler that knows the commit (esbuild `define`); absent from the sources, where the environment
 * variable `NARROWLINK_COMMIT` (e.g. an image's `ENV`) is read instead.
 */
declare const __NARROWLINK_COMMIT__: string | undefined;

/**
 * The project version every workspace carries (semver, e.g. `0.1.0`). A function rather than a constant, so a
 * bundle that never asks (the CLI) leaves the package.json out.
 */
export function narrowlinkVersion(): string {
  return protocolPackage.version;
}

/** Labels of `narrowlink_build_info` (Prometheus label names; values are short, bounded strings). */
export interface BuildInfoLabels {
  /** The project version (see {@link narrowlinkVersion}). */
  version: string;
  /** Git commit (7–40 lowercase hex digits), or `''` when the build did not record one (Prometheus: no label). */
  commit: string;
  /** `process.version` without the `v`, e.g. `24.21.0`. */
  node_version: string;
  /** The component: `gateway`, `operator`, … */
  component: string;
}

/** Label names of `narrowlink_build_info`, in exposition order. */
export const BUILD_INFO_LABEL_NAMES = ['version', 'commit', 'node_version', 'component'] as const;

/** A commit as a label value: a git object name or nothing (never free text from the environment). */
function commitLabel(raw: string | undefined): string {
  const value = raw?.trim().toLowerCase() ?? '';
  return /^[0-9a-f]{7,40}$/.test(value) ? value : '';
}

/**
 * The build facts of this process for `component`. `env` defaults to `process.env` (tests pass their own); a
 * commit that is not 7–40 hex digits is dropped rather than exported, so a stray variable cannot put arbitrary
 * text (or a secret) into a metric label.
 */
export function buildInfoLabels(component: string, env: NodeJS.ProcessEnv = process.env): BuildInfoLabels {
  const built = typeof __NARROWLINK_COMMIT__ === 'string' ? __NARROWLINK_COMMIT__ : undefined;
  return {
    version: narrowlinkVersion(),
    commit: commitLabel(built ?? env.NARROWLINK_COMMIT),
    node_version: process.version.replace(/^v/, ''),
    component,
  };
}

/**
 * prom-client's default metrics that the components unregister: gauges named `_total`, which `promtool check
 * metrics` reports ("non-counter metrics should not have _total suffix") and which a `rate()` over them would
 * get wrong. Nothing is lost: each is the sum over the `type` label of the metric of the same name without
 * `_total` (`sum(nodejs_active_handles)`).
 */
export const OMITTED_DEFAULT_METRICS: readonly string[] = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/**
 * Event loop utilisation as two counters (seconds the loop spent running callbacks, and waiting), from
 * `performance.eventLoopUtilization()`: `rate(active) / (rate(active) + rate(idle))` is the utilisation over any
 * window, the same for every scraper (a ratio computed at scrape time would depend on when the last scrape was).
 * Lag says how late callbacks run; utilisation says how close the single thread is to saturation.
 */
export const EVENT_LOOP_TIME_METRICS = {
  active: {
    name: 'nodejs_eventloop_active_seconds_total',
    help: 'Time the event loop spent running callbacks since it started (performance.eventLoopUtilization().active), seconds.',
  },
  idle: {
    name: 'nodejs_eventloop_idle_seconds_total',
    help: 'Time the event loop spent waiting for events since it started (performance.eventLoopUtilization().idle), seconds.',
  },
} as const;

/** The event loop's cumulative active and idle time, seconds (see {@link EVENT_LOOP_TIME_METRICS}). */
export function eventLoopSeconds(): { active: number; idle: number } {
  const { active, idle } = performance.eventLoopUtilization();
  return { active: active / 1000, idle: idle / 1000 };
}
