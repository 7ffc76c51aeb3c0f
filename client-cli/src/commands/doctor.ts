/**
 * `narrowlink doctor [AGENT]`: what stands between this machine and a working tunnel, one check at a time, in the
 * order a connection needs them: settings and token, DNS, TCP, TLS, the WebSocket upgrade, authentication, clock
 * skew, UDP to the NAT probe ports and the NAT type; with AGENT also the policy, the agent's instances and the direct
 * path. Each check prints ✓ or ✗ (– when it could not run) with what it saw and, for ✗, the fix. The exit code is
 * the class of the first ✗: 2 settings, 3 credentials, 4 gateway unreachable, 1 anything else; 0 when all passed.
 * Tokens never appear in the output.
 */
import { lookup } from 'node:dns/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { type AgentSummary, createProof, DEFAULT_CLOCK_TOLERANCE_SECONDS, ErrorCode } from '@narrowlink/protocol';
import type { ClientDirectPaths, GatewayLink, LinkNatStatus } from '@narrowlink/peer-link';
import WebSocket from 'ws';
import { CliError, CliErrorCode, ExitCode } from '../errors.ts';
import type { OutputFormat } from '../reporter.ts';
import { createLink, DIRECT_WAIT_MS, exitCodeFor, openDirectPaths } from '../session.ts';
import type { Settings } from '../settings.ts';

/** Which exit code a failed check stands for. */
export type CheckClass = 'config' | 'credentials' | 'unreachable' | 'other';

const CLASS_EXIT: Record<CheckClass, ExitCode> = {
  config: ExitCode.USAGE,
  credentials: ExitCode.AUTH,
  unreachable: ExitCode.UNREACHABLE,
  other: ExitCode.FAILURE,
};

/** One check's outcome: `ok` passed, `fail` did not (with a fix), `skip` could not run (why is in `detail`). */
export interface CheckResult {
  check: string;
  status: 'ok' | 'fail' | 'skip';
  detail: string;
  fix?: string;
  /** For `fail`: which exit code it stands for. */
  class?: CheckClass;
  /** The error code behind a failure, when there is one (NL_ERR_…, ECONNREFUSED, a TLS verification code). */
  code?: string;
}

export interface DoctorOptions {
  /** Resolves the settings as every command does (flags, environment, config file, login); may throw CliError. */
  resolveSettings: () => Settings;
  /** `doctor AGENT`: also the checks about reaching this agent. */
  agent?: string | undefined;
  output: OutputFormat;
  /** Bound of each network step, ms. */
  timeoutMs: number;
  /** `narrowlink` or `kubectl narrowlink`, for the fixes. */
  program: string;
  /** Where the report goes (default stdout). */
  out?: NodeJS.WritableStream;
  /** Wall clock (epoch ms), injected by tests. */
  now?: () => number;
}

/** A check's time budget: long enough for a slow link, short enough that a dead one is reported quickly. */
const STEP_CAP_MS = 5000;
/** How long to wait for the NAT classification after the session is up (probing itself is bounded by 2 s). */
const NAT_WAIT_MS = 4000;

function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '');
  return bare === 'localhost' || bare === '::1' || bare.startsWith('127.');
}

/** The claims of a JWT, read without verifying it (the gateway verifies; this only explains). */
export function readClaims(token: string): { sub?: string; typ?: string; groups?: string[]; exp?: number; cnf?: unknown } | undefined {
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  try {
    const claims: unknown = JSON.parse(Buffer.from(parts[1] as string, 'base64url').toString('utf8'));
    return claims !== null && typeof claims === 'object' ? (claims as ReturnType<typeof readClaims>) : undefined;
  } catch {
    return undefined;
  }
}

/** `3 h 12 min`, `45 s`: a duration for people. */
export function humanDuration(ms: number): string {
  const s = Math.round(Math.abs(ms) / 1000);
  if (s < 120) return `${s} s`;
  const min = Math.round(s / 60);
  if (min < 120) return `${min} min`;
  const h = Math.floor(min / 60);
  if (h < 48) return `${h} h ${min % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function withTimeout<T>(what: string, timeoutMs: number, work: (signal: { cancelled: boolean }) => Promise<T>): Promise<T> {
  const signal = { cancelled: false };
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.cancelled = true;
      reject(Object.assign(new Error(`${what}: no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    work(signal).then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

/** What the TLS step saw of the gateway's certificate. */
interface CertificateSeen {
  names: string[];
  issuer: string;
  validTo: string;
  /** Why it is not trusted (a Node/OpenSSL verification code), or undefined when it is. */
  problem?: { code: string; message: string };
}

function certificateNames(cert: tls.PeerCertificate): string[] {
  const alt = cert.subjectaltname
    ?.split(',')
    .map((entry) => entry.trim().replace(/^(DNS|IP Address):/, ''))
    .filter((name) => name.length > 0);
  if (alt && alt.length > 0) return alt;
  const cn = cert.subject?.CN;
  return cn ? [String(cn)] : [];
}

function tlsHandshake(host: string, port: number, servername: string | undefined, caPem: string | undefined, timeoutMs: number): Promise<CertificateSeen> {
  return withTimeout(
    'TLS handshake',
    timeoutMs,
    () =>
      new Promise<CertificateSeen>((resolve, reject) => {
        // Not rejecting here: the handshake finishes so that the certificate can be shown, then it is judged.
        const socket = tls.connect({ host, port, ...(servername ? { servername } : {}), ...(caPem ? { ca: caPem } : {}), rejectUnauthorized: false });
        socket.once('secureConnect', () => {
          const cert = socket.getPeerCertificate();
          const seen: CertificateSeen = {
            names: certificateNames(cert),
            issuer: String(cert.issuer?.CN ?? cert.issuer?.O ?? 'unknown issuer'),
            validTo: cert.valid_to ?? '',
          };
          if (!socket.authorized) {
            const error = socket.authorizationError as unknown as Error & { code?: string };
            seen.problem = { code: error?.code ?? String(error), message: error?.message ?? String(error) };
          } else {
            const mismatch = tls.checkServerIdentity(servername ?? host, cert) as (Error & { code?: string }) | undefined;
            if (mismatch) seen.problem = { code: mismatch.code ?? 'ERR_TLS_CERT_ALTNAME_INVALID', message: mismatch.message };
          }
          socket.destroy();
          resolve(seen);
        });
        socket.once('error', reject);
      }),
  );
}

/** The outcome of one WebSocket upgrade with the token (the gateway checks the token before it switches protocols). */
type UpgradeOutcome = { kind: 'switched' } | { kind: 'refused'; status: number; code?: string; message?: string } | { kind: 'error'; error: Error & { code?: string } };

async function tryUpgrade(settings: Settings, endpoint: URL, token: string, timeoutMs: number): Promise<UpgradeOutcome> {
  const proof = settings.proofKey ? await createProof(settings.proofKey, { token, htm: 'GET', htu: endpoint.href }) : undefined;
  return await new Promise<UpgradeOutcome>((resolve) => {
    const ws = new WebSocket(endpoint, {
      headers: { authorization: `Bearer ${token}`, ...(proof ? { dpop: proof } : {}) },
      perMessageDeflate: false,
      handshakeTimeout: timeoutMs,
      ...(settings.caPem ? { ca: settings.caPem } : {}),
    });
    let settled = false;
    const settle = (outcome: UpgradeOutcome): void => {
      if (settled) return;
      settled = true;
      resolve(outcome);
    };
    ws.once('upgrade', () => {
      settle({ kind: 'switched' });
      // Said nothing: the gateway drops a session without hello; close it at once instead.
      ws.terminate();
    });
    ws.once('unexpected-response', (_request, response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        let body: { code?: string; message?: string } = {};
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof body;
        } catch {
          // not JSON: not a Narrowlink gateway, or a proxy's page
        }
        settle({ kind: 'refused', status: response.statusCode ?? 0, ...(body.code ? { code: body.code } : {}), ...(body.message ? { message: body.message } : {}) });
        // Only now: terminating earlier aborts the response before its body (the gateway's code) is read.
        ws.terminate();
      });
    });
    ws.once('error', (error) => settle({ kind: 'error', error }));
  });
}

/** The gateway's clock, from the Date header of a plain GET on its public listener (which answers 404 with a date). */
function gatewayDate(endpoint: URL, caPem: string | undefined, timeoutMs: number): Promise<{ dateMs: number; midpointMs: number } | undefined> {
  const url = new URL(endpoint.href);
  url.protocol = endpoint.protocol === 'wss:' ? 'https:' : 'http:';
  return withTimeout(
    'clock check',
    timeoutMs,
    () =>
      new Promise((resolve, reject) => {
        const sentAt = Date.now();
        const request = (url.protocol === 'https:' ? https : http).get(url, { ...(caPem ? { ca: caPem } : {}), agent: false }, (response) => {
          const receivedAt = Date.now();
          response.resume();
          const header = response.headers.date;
          const dateMs = header ? Date.parse(header) : Number.NaN;
          resolve(Number.isFinite(dateMs) ? { dateMs, midpointMs: (sentAt + receivedAt) / 2 } : undefined);
        });
        request.once('error', reject);
      }),
  );
}

/**
 * The gateway's clock (`dateMs`, from a Date header: whole seconds) against ours at the request's midpoint: the skew
 * in whole seconds (positive: this clock is behind), and whether the gateway would still accept our tokens (it allows
 * DEFAULT_CLOCK_TOLERANCE_SECONDS on exp/iat; proofs have more room).
 */
export function judgeClock(dateMs: number, midpointMs: number, limitS: number = DEFAULT_CLOCK_TOLERANCE_SECONDS): { skewS: number; ok: boolean; text: string } {
  // Date has one-second resolution (truncated): a difference within 1.5 s is no skew.
  const skewMs = dateMs - midpointMs;
  const skewS = Math.abs(skewMs) < 1500 ? 0 : Math.round(skewMs / 1000);
  const text = skewS === 0 ? 'the gateway clock agrees with this one (within 1 s)' : `this clock is ${Math.abs(skewS)} s ${skewS > 0 ? 'behind' : 'ahead of'} the gateway's`;
  return Math.abs(skewS) > limitS ? { skewS, ok: false, text: `${text}: more than the ${limitS} s tokens allow` } : { skewS, ok: true, text };
}

function describeNat(nat: LinkNatStatus): string {
  const details: string[] = [];
  if (nat.portPreserving) details.push('port-preserving');
  if (nat.delta !== undefined) details.push(`port delta ${nat.delta}`);
  if (nat.reason) details.push(nat.reason);
  details.push(`filtering ${nat.filtering}`);
  const publicEndpoint = nat.publicEndpoint ? `, public ${nat.publicEndpoint.address}:${nat.publicEndpoint.port}` : '';
  return `${nat.natType} (${details.join(', ')})${publicEndpoint}`;
}

function matchAgent(agents: AgentSummary[], wanted: string): AgentSummary | undefined {
  return agents.find((a) => (wanted.includes('/') ? `${a.namespace}/${a.name}` === wanted : a.name === wanted));
}

/** Runs the checks (see the module comment); returns them in order. */
export async function runChecks(options: DoctorOptions, emit: (result: CheckResult) => void = () => undefined): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  const now = options.now ?? Date.now;
  const stepMs = Math.min(options.timeoutMs, STEP_CAP_MS);
  const record = (result: CheckResult): CheckResult => {
    results.push(result);
    emit(result);
    return result;
  };
  const ok = (check: string, detail: string) => record({ check, status: 'ok', detail });
  const fail = (check: string, cls: CheckClass, detail: string, fix: string, code?: string) =>
    record({ check, status: 'fail', class: cls, detail, fix, ...(code ? { code } : {}) });
  const skip = (check: string, detail: string) => record({ check, status: 'skip', detail });
  const skipRest = (checks: string[], why: string): CheckResult[] => {
    for (const check of checks) skip(check, why);
    return results;
  };
  const network = ['dns', 'tcp', 'tls', 'websocket', 'auth', 'clock', 'udp', 'nat'];
  const agentChecks = options.agent ? ['policy', 'attached', 'direct'] : [];
  const login = `${options.program} login`;

  // 1. Settings and the token.
  let settings: Settings;
  try {
    settings = options.resolveSettings();
  } catch (error) {
    const e = error as CliError;
    const credentials = e instanceof CliError && (e.code === CliErrorCode.NOT_LOGGED_IN || e.exitCode === ExitCode.AUTH);
    fail(
      'config',
      credentials ? 'credentials' : 'config',
      e.message,
      credentials ? `run ${login}, or pass --gateway URL and --token-file FILE` : 'fix the setting named above (flags, NARROWLINK_* environment, the config file)',
      e.code,
    );
    return skipRest(['token', ...network, ...agentChecks], 'needs the settings');
  }
  const endpoint = new URL('/v1/client', settings.gateway);
  const host = endpoint.hostname.replace(/^\[|\]$/g, '');
  const port = Number(endpoint.port || (endpoint.protocol === 'wss:' ? 443 : 80));
  if (endpoint.protocol === 'ws:' && !isLoopback(host)) {
    fail('config', 'config', `gateway ${settings.gateway}: cleartext ws:// to a host that is not loopback would send your token unencrypted`, `use wss://${endpoint.host}`);
    return skipRest(['token', ...network, ...agentChecks], 'needs the settings');
  }
  const source = settings.login
    ? `login of kube context "${settings.login.context}"`
    : settings.configPath
      ? `flags, environment and ${settings.configPath}`
      : 'flags and environment';
  ok('config', `gateway ${settings.gateway} (from ${source}); mode ${settings.mode}${settings.caPem ? '; extra CA certificates given' : ''}`);

  let token: string | undefined;
  let tokenUsable = false;
  try {
    token = await settings.token();
  } catch (error) {
    fail('token', 'config', `cannot read the token: ${(error as Error).message}`, 'check --token-file / NARROWLINK_TOKEN_FILE / tokenFile in the config file', (error as { code?: string }).code);
  }
  if (token !== undefined) {
    const claims = readClaims(token);
    const renew = settings.login ? `run ${login}` : `get a new client token (${login}, or narrowlink-gateway token create from an admin)`;
    if (!claims) fail('token', 'credentials', 'the token is not a JWT (three base64url parts)', `check what --token / the token file holds; ${renew}`);
    else if (claims.typ !== undefined && claims.typ !== 'client') fail('token', 'credentials', `this is a ${claims.typ} token; the CLI needs a client token`, renew);
    else if (typeof claims.exp === 'number' && claims.exp * 1000 <= now()) {
      fail('token', 'credentials', `the token expired ${humanDuration(now() - claims.exp * 1000)} ago (${new Date(claims.exp * 1000).toISOString()})`, renew, ErrorCode.TOKEN_EXPIRED);
    } else {
      tokenUsable = true;
      const expires = typeof claims.exp === 'number' ? `expires in ${humanDuration(claims.exp * 1000 - now())} (${new Date(claims.exp * 1000).toISOString()})` : 'no expiry';
      ok('token', `for ${claims.sub ?? '?'} groups=[${(claims.groups ?? []).join(', ')}], ${expires}${claims.cnf ? ', bound to this machine\'s key' : ''}`);
    }
  }

  // 2. DNS, TCP, TLS.
  let address = host;
  if (net.isIP(host)) ok('dns', `${host} is an IP address: nothing to resolve`);
  else {
    try {
      const addresses = await withTimeout('DNS lookup', stepMs, () => lookup(host, { all: true }));
      address = addresses[0]?.address ?? host;
      ok('dns', `${host} -> ${addresses.map((a) => a.address).join(', ')}`);
    } catch (error) {
      const code = (error as { code?: string }).code;
      fail('dns', 'unreachable', `${host} does not resolve (${code ?? (error as Error).message})`, 'check the gateway host name (--gateway, the config file, or run login again); on a VPN-only name, is the VPN up?', code);
      return skipRest(network.slice(1).concat(agentChecks), 'needs DNS');
    }
  }
  const tcpStarted = performance.now();
  try {
    await withTimeout(
      'TCP connect',
      stepMs,
      (signal) =>
        new Promise<void>((resolve, reject) => {
          const socket = net.connect({ host: address, port });
          socket.once('connect', () => {
            socket.destroy();
            resolve();
          });
          socket.once('error', reject);
          const poll = setInterval(() => {
            if (!signal.cancelled) return;
            clearInterval(poll);
            socket.destroy();
          }, 100);
          socket.once('close', () => clearInterval(poll));
        }),
    );
    ok('tcp', `connected to ${address}:${port} in ${Math.round(performance.now() - tcpStarted)} ms`);
  } catch (error) {
    const code = (error as { code?: string }).code;
    const why =
      code === 'ECONNREFUSED'
        ? `nothing listens on ${address}:${port} (connection refused)`
        : code === 'ETIMEDOUT'
          ? `no answer from ${address}:${port} within ${stepMs} ms (a firewall dropping the packets?)`
          : `cannot connect to ${address}:${port}: ${(error as Error).message}`;
    fail('tcp', 'unreachable', why, 'is the gateway running, and is this its address and port? (kubectl -n narrowlink-system get svc,pods)', code);
    return skipRest(network.slice(2).concat(agentChecks), 'needs a TCP connection');
  }
  if (endpoint.protocol === 'ws:') ok('tls', 'ws:// on loopback: no TLS to check');
  else {
    try {
      const seen = await tlsHandshake(address, port, net.isIP(host) ? undefined : host, settings.caPem, stepMs);
      const cert = `certificate for ${seen.names.join(', ') || '(no names)'}, issued by ${seen.issuer}, valid until ${seen.validTo}`;
      if (seen.problem) {
        const nameProblem = seen.problem.code === 'ERR_TLS_CERT_ALTNAME_INVALID';
        fail(
          'tls',
          'unreachable',
          `${cert}: not trusted here (${seen.problem.code}: ${seen.problem.message})`,
          nameProblem
            ? `connect with a name the certificate carries (${seen.names.join(', ')}), or have it reissued for ${host}`
            : settings.caPem
              ? `the --ca-file / cached CA is not the one that signed it: use the CA of issuer "${seen.issuer}" (kubectl -n narrowlink-system get configmap narrowlink-discovery -o jsonpath='{.data.ca\\.crt}'), or run ${login}`
              : `pass --ca-file with the CA of issuer "${seen.issuer}" (kubectl -n narrowlink-system get configmap narrowlink-discovery -o jsonpath='{.data.ca\\.crt}'), or run ${login}`,
          seen.problem.code,
        );
        return skipRest(network.slice(3).concat(agentChecks), 'needs a trusted TLS connection');
      }
      ok('tls', cert);
    } catch (error) {
      const e = error as Error & { code?: string };
      const plain = /wrong version number|packet length too long|unknown protocol/i.test(e.message);
      fail(
        'tls',
        'unreachable',
        plain ? `${address}:${port} does not speak TLS` : `TLS handshake failed: ${e.message}`,
        plain ? `did you mean ws://${endpoint.host} (loopback only)? Or this port is not the gateway's` : 'check that this port is the gateway and that no proxy intercepts TLS',
        plain ? 'ERR_NOT_TLS' : e.code,
      );
      return skipRest(network.slice(3).concat(agentChecks), 'needs a TLS connection');
    }
  }

  // 3. The upgrade and authentication (one dial: the gateway checks the token before switching protocols).
  if (token === undefined) return skipRest(network.slice(3).concat(agentChecks), 'needs a token');
  const upgrade = await tryUpgrade(settings, endpoint, token, stepMs);
  let authenticated = false;
  if (upgrade.kind === 'switched') {
    ok('websocket', `${endpoint.href}: switched protocols (101)`);
    ok('auth', 'the gateway accepted the token');
    authenticated = true;
  } else if (upgrade.kind === 'refused' && (upgrade.status === 401 || upgrade.status === 403)) {
    ok('websocket', `${endpoint.href}: the gateway answered the upgrade (HTTP ${upgrade.status})`);
    const renew = settings.login ? `run ${login}` : `get a new client token (${login}, or narrowlink-gateway token create from an admin)`;
    fail(
      'auth',
      'credentials',
      `refused: ${upgrade.code ?? `HTTP ${upgrade.status}`}: ${upgrade.message ?? 'no details'}`,
      tokenUsable ? `${renew} (docs/errors.md lists ${upgrade.code ?? 'the code'} with its fix)` : renew,
      upgrade.code,
    );
  } else if (upgrade.kind === 'refused') {
    const notGateway = upgrade.status === 404 && !upgrade.code;
    fail(
      'websocket',
      'unreachable',
      notGateway ? `${endpoint.href}: HTTP 404 without a Narrowlink error: not a Narrowlink gateway` : `${endpoint.href}: HTTP ${upgrade.status}${upgrade.code ? ` ${upgrade.code}` : ''}: ${upgrade.message ?? 'no details'}`,
      notGateway ? 'check the URL: host and port of the gateway, no path; a proxy in front must pass WebSocket upgrades' : 'the gateway (or a proxy in front of it) refused the upgrade; try again, or see its logs',
      upgrade.code ?? `HTTP_${upgrade.status}`,
    );
    skip('auth', 'needs the upgrade');
  } else {
    fail('websocket', 'unreachable', `upgrade failed: ${upgrade.error.message}`, 'a proxy in front of the gateway must pass WebSocket upgrades', upgrade.error.code);
    skip('auth', 'needs the upgrade');
  }

  // 4. Clock skew: tokens and proofs are judged by the gateway's clock.
  try {
    const date = await gatewayDate(endpoint, settings.caPem, stepMs);
    if (!date) skip('clock', 'the gateway sent no Date header');
    else {
      const clock = judgeClock(date.dateMs, date.midpointMs);
      if (!clock.ok) {
        fail('clock', 'other', clock.text, 'synchronise this clock (Linux: timedatectl set-ntp true; macOS: sudo sntp -sS time.apple.com; Windows: w32tm /resync)', 'CLOCK_SKEW');
      } else ok('clock', clock.text);
    }
  } catch (error) {
    skip('clock', `could not read the gateway's clock: ${(error as Error).message}`);
  }

  // 5. A session: UDP to the probe ports, the NAT type, and the agent checks.
  if (!authenticated) return skipRest(['udp', 'nat', ...agentChecks], 'needs an authenticated session');
  const direct: ClientDirectPaths | undefined = await openDirectPaths(settings);
  const link: GatewayLink = createLink(settings, undefined, { reconnect: false, direct });
  try {
    link.start();
    try {
      await link.waitOpen(options.timeoutMs);
      await link.ping(stepMs);
    } catch (error) {
      const code = (error as { code?: string }).code;
      const exit = exitCodeFor(error);
      const cls: CheckClass = exit === ExitCode.AUTH ? 'credentials' : exit === ExitCode.UNREACHABLE ? 'unreachable' : exit === ExitCode.USAGE ? 'config' : 'other';
      fail('session', cls, `no session: ${(error as Error).message}`, 'run again with -v for the dial attempts', code);
      return skipRest(['udp', 'nat', ...agentChecks], 'needs a session');
    }
    if (settings.mode === 'relay') {
      skip('udp', 'mode relay: no direct path, nothing to probe');
      skip('nat', 'mode relay');
    } else if (!direct) {
      fail('udp', 'other', 'cannot bind a UDP socket on this machine', 'the direct path needs UDP; streams use the relay (or set --mode relay to stop trying)');
      skip('nat', 'needs a UDP socket');
    } else {
      const nat = await link.waitNat(Math.min(options.timeoutMs, NAT_WAIT_MS));
      if (!nat && !link.natProbing) {
        skip('udp', 'the gateway runs no NAT probe ports (--nat-probe-port 0): direct paths cannot be planned');
        skip('nat', 'not probed');
      } else if (!nat) {
        fail('udp', 'other', `the gateway did not classify this NAT within ${NAT_WAIT_MS} ms`, 'run again; if it persists, see the gateway logs');
        skip('nat', 'not classified');
      } else if (nat.reason === 'NoResponses') {
        fail(
          'udp',
          'other',
          "no answer from the gateway's UDP probe ports: UDP between here and the gateway is blocked",
          'allow outbound UDP to the gateway\'s probe ports (natProbePorts in ConfigMap narrowlink-discovery, default 3478-3479); streams use the relay meanwhile',
          'UdpBlocked',
        );
        skip('nat', 'needs probe answers');
      } else {
        ok('udp', `the probe ports answered (probed in ${nat.measuredInMs} ms)`);
        ok('nat', describeNat(nat));
      }
    }

    // 6. The agent: policy, instances, direct path.
    if (options.agent) {
      const agents = await link.listAgents(stepMs);
      const agent = matchAgent(agents, options.agent);
      if (!agent) {
        const list = agents.map((a) => `${a.namespace}/${a.name}`).join(', ');
        fail(
          'policy',
          'other',
          `no agent "${options.agent}" that your policies let you reach (you may reach ${agents.length}${list ? `: ${list}` : ''})`,
          `check the name (${options.program} ls), or ask an admin for an AccessPolicy naming your user or group and this agent`,
          'NOT_ALLOWED',
        );
        return skipRest(['attached', 'direct'], 'needs an agent you may reach');
      }
      ok('policy', `your policies allow ${agent.namespace}/${agent.name} (ports ${agent.ports.map((p) => `${p.name}=${p.port}`).join(', ') || 'none'})`);
      if (agent.instances === 0) {
        fail('attached', 'other', `${agent.namespace}/${agent.name} has no connected instance`, 'is its workload running? (kubectl get nla -A; the sidecar logs say why it does not attach)', 'NO_AGENT');
        skip('direct', 'needs a connected instance');
        return results;
      }
      ok('attached', `${agent.instances} instance${agent.instances === 1 ? '' : 's'} connected`);
      if (settings.mode === 'relay') skip('direct', 'mode relay');
      else if (agent.mode === 'relay') skip('direct', 'the agent offers the relay only');
      else if (!direct) fail('direct', 'other', 'no UDP socket here', 'streams use the relay');
      else {
        try {
          await direct.waitUp(agent.name, Math.min(options.timeoutMs, DIRECT_WAIT_MS));
        } catch {
          // The status says why.
        }
        const path = direct.status().find((p) => p.peer === agent.name);
        if (path?.state === 'up') ok('direct', `direct path up via ${path.via} (${path.strategy}) to ${path.remote?.address}:${path.remote?.port} in ${path.readyInMs} ms`);
        else {
          fail(
            'direct',
            'other',
            `no direct path: ${path?.reason ?? 'Unknown'}: ${path?.message ?? 'no path state'}`,
            'streams still work through the relay; a direct path needs UDP both ways and at most one symmetric NAT',
            path?.reason,
          );
        }
      }
    }
    return results;
  } finally {
    await link.close();
    await direct?.close();
  }
}

const MARK: Record<CheckResult['status'], string> = { ok: '✓', fail: '✗', skip: '–' };

/** The exit code for a set of results: the class of the first failure, 0 when none failed. */
export function doctorExitCode(results: CheckResult[]): ExitCode {
  const first = results.find((r) => r.status === 'fail');
  return first ? CLASS_EXIT[first.class ?? 'other'] : ExitCode.OK;
}

/** `narrowlink doctor [AGENT]`: prints each check as it finishes (text) or all of them as one JSON document. */
export async function runDoctor(options: DoctorOptions): Promise<ExitCode> {
  const out = options.out ?? process.stdout;
  const width = 10;
  const results = await runChecks(options, (result) => {
    if (options.output !== 'text') return;
    out.write(`${MARK[result.status]} ${result.check.padEnd(width)}${result.detail}\n`);
    if (result.status === 'fail' && result.fix) out.write(`  ${''.padEnd(width)}fix: ${result.fix}\n`);
  });
  const exitCode = doctorExitCode(results);
  if (options.output === 'json') out.write(`${JSON.stringify({ ok: exitCode === ExitCode.OK, exitCode, checks: results }, null, 2)}\n`);
  else {
    const failed = results.filter((r) => r.status === 'fail').length;
    out.write(failed === 0 ? 'all checks passed\n' : `${failed} check${failed === 1 ? '' : 's'} failed; the first one decides the exit code (${exitCode})\n`);
  }
  return exitCode;
}
