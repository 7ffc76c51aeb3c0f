#!/usr/bin/env node
/**
 * Login benchmark: `narrowlink login` as a real process, 20 tries, against a real kube-apiserver 1.20
 * (test/k8s/cluster.ts) with the operator's webhook and control loop running in this process
 * (test/k8s/login-fixtures.ts `startLoginBackend`, exactly what the login tests use).
 *
 *   node test/bench/login.ts [--tries N] [--cli packaged|source|FILE]   prints one JSON object
 *   measureLogin({ tries, cli })            what `npm run bench` calls
 *
 * Which CLI (`--cli`, env NARROWLINK_BENCH_CLI): `packaged` (default: what a user runs, the @narrowlink/cli package
 * built from this tree by client-cli/build/build.ts, started through its bin entry, compile cache included; the
 * warm-up try fills the cache as a user's first run does), `source` (the TypeScript sources, as `npm start` and
 * the tests run them), or the path of any narrowlink executable (an `npm install -g` prefix's bin, the single
 * executable); a `.mjs`/`.ts` path is run by this Node.
 *
 * Clock: from spawning the CLI until it exited 0 with the context's token cached (the file exists and carries a
 * token): kubeconfig load, discovery ConfigMap, Ed25519 key, ClientLoginRequest create (webhook stamps it),
 * the operator signs, the CLI's watch sees the status, deletes the request, writes the cache. Node's start-up and
 * the CLI's imports are in it, as a user sees them. The user authenticates with a client certificate (O= group).
 * The first try warms the apiserver's caches and the operator's informers and is not counted.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type ApiServer, isSkipped, startApiServer } from '../k8s/cluster.ts';
import { clientCertUser, type LoginBackend, startLoginBackend } from '../k8s/login-fixtures.ts';
import { SCRIPTS } from '../helpers/paths.ts';

const NS = 'narrowlink-system';

export interface LoginOutcome {
  login_ms_p50: number;
  login_ms_p90: number;
  login_tries: number;
  login_failures: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? Number.NaN;
}

/** The command that starts the CLI: `[file, ...leading args]`. */
async function cliCommand(cli: string): Promise<string[]> {
  if (cli === 'source') return [process.execPath, SCRIPTS.client];
  if (cli === 'packaged') {
    const { buildPackage, DIST_DIR } = await import('../../client-cli/build/build.ts');
    await buildPackage();
    return [process.execPath, join(DIST_DIR, 'bin', 'narrowlink.mjs')];
  }
  return /\.(mjs|js|ts)$/.test(cli) ? [process.execPath, cli] : [cli];
}

function runLogin(command: string[], kubeconfig: string, env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string; ms: number }> {
  const startedAt = performance.now();
  const [file = process.execPath, ...leading] = command;
  return new Promise((resolve) => {
    execFile(file, [...leading, 'login', '--kubeconfig', kubeconfig, '-n', NS, '-o', 'json'], { env, timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr, ms: performance.now() - startedAt });
    });
  });
}

/** Runs `tries` logins (plus one warm-up); skipped when this machine cannot run the apiserver tier. */
export async function measureLogin(options: { tries?: number; cli?: string; log?: (line: string) => void } = {}): Promise<LoginOutcome | { skipped: string }> {
  const tries = options.tries ?? 20;
  const command = await cliCommand(options.cli ?? process.env.NARROWLINK_BENCH_CLI ?? 'packaged');
  const started = await startApiServer();
  if (isSkipped(started)) return { skipped: started.skipped };
  const api: ApiServer = started;
  const dir = mkdtempSync(join(tmpdir(), 'nl-bench-login-'));
  let backend: LoginBackend | undefined;
  try {
    backend = await startLoginBackend(api, {
      namespace: NS,
      scratchDir: dir,
      // The bench logs in more often than a person would: no per-user rate limit here.
      login: { rateLimitPerMinute: 0 },
      chartValues: { login: { subjects: [{ kind: 'Group', name: 'devs' }], gatewayUrls: ['wss://gateway.example.test'] } },
    });
    const user = await clientCertUser(api, dir, { user: 'alice', groups: ['devs'] });
    const env: NodeJS.ProcessEnv = { ...process.env, XDG_CONFIG_HOME: join(dir, 'xdg') };
    for (const key of Object.keys(env)) if (key.startsWith('NARROWLINK_') || key === 'KUBECONFIG') delete env[key];
    const times: number[] = [];
    let failures = 0;
    for (let i = 0; i <= tries; i++) {
      const result = await runLogin(command, user.kubeconfigPath, env);
      const cacheFile = result.code === 0 ? (JSON.parse(result.stdout) as { cacheFile?: string }).cacheFile : undefined;
      const cached = cacheFile ? (JSON.parse(readFileSync(cacheFile, 'utf8')) as { token?: string }).token : undefined;
      if (result.code !== 0 || !cached) {
        failures++;
        options.log?.(`  login try ${i} failed (exit ${result.code}): ${result.stderr.trim().split('\n').at(-1) ?? ''}`);
        continue;
      }
      if (i > 0) times.push(result.ms);
    }
    times.sort((a, b) => a - b);
    return {
      login_ms_p50: Math.round(percentile(times, 0.5)),
      login_ms_p90: Math.round(percentile(times, 0.9)),
      login_tries: times.length,
      login_failures: failures,
    };
  } finally {
    await backend?.stop();
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { tries: { type: 'string' }, cli: { type: 'string' } } });
  const outcome = await measureLogin({
    tries: Number(values.tries ?? 20),
    ...(values.cli !== undefined ? { cli: values.cli } : {}),
    log: (line) => process.stderr.write(`${line}\n`),
  });
  process.stdout.write(`${JSON.stringify(outcome)}\n`);
}
