/**
 * `narrowlink-gateway token create` as a user runs it: the real binary (main.ts) in a child process, its stdout
 * checked with verifyToken against the public half of the key it was given.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ErrorCode, generateProofKey, generateSigningKeyPair, jwkThumbprint, verifyToken } from '@narrowlink/protocol';
import { GatewayErrorCode } from './errors.ts';
import { parseDurationSeconds, runTokenCommand } from './token-command.ts';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), 'main.ts');
const dir = mkdtempSync(join(tmpdir(), 'nl-token-command-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const keys = await generateSigningKeyPair();
const keyFile = join(dir, 'signing.key');
writeFileSync(keyFile, keys.privateKeyPem, { mode: 0o600 });
const publicKeyFile = join(dir, 'signing.pub');
writeFileSync(publicKeyFile, keys.publicKeyPem);

/** Runs `narrowlink-gateway token ARGS…` and collects exit code, stdout and stderr. */
function cli(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, 'token', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs the command in this process (the same code main.ts dispatches to, without a process start per case). */
async function inProcess(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await runTokenCommand(args, {
    stdout: (t) => {
      stdout += t;
    },
    stderr: (t) => {
      stderr += t;
    },
  });
  return { code, stdout, stderr };
}

/** The one line on stdout must be the token, and nothing else. */
function onlyToken(stdout: string): string {
  const lines = stdout.split('\n');
  assert.equal(lines.length, 2, `one line on stdout, got ${JSON.stringify(stdout.slice(0, 200))}`);
  assert.equal(lines[1], '');
  assert.match(lines[0] as string, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
  return lines[0] as string;
}

describe('narrowlink-gateway token create', () => {
  test('--user with groups and --ttl 8h prints a client token the gateway verifies', async () => {
    const before = Math.floor(Date.now() / 1000);
    const run = await cli('create', '--key', keyFile, '--user', 'alice', '--group', 'dev', '--group', 'ops', '--ttl', '8h');
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stderr, '');
    const claims = await verifyToken(onlyToken(run.stdout), { publicKeysPem: [keys.publicKeyPem], expectedType: 'client' });
    assert.equal(claims.sub, 'alice');
    assert.deepEqual(claims.groups, ['dev', 'ops']);
    assert.equal(claims.exp - claims.iat, 8 * 3600);
    assert.ok(claims.iat >= before && claims.iat <= before + 30);
    assert.equal(claims.cnf, undefined);
  });

  test('--agent NS/NAME prints an agent token (refused on the client endpoint); --audience is honoured', async () => {
    const run = await cli('create', '--key', keyFile, '--agent', 'shop/orders', '--ttl', '90d', '--audience', 'staging');
    assert.equal(run.code, 0, run.stderr);
    const token = onlyToken(run.stdout);
    const claims = await verifyToken(token, { publicKeysPem: [keys.publicKeyPem], expectedType: 'agent', audience: 'staging' });
    assert.equal(claims.sub, 'shop/orders');
    assert.equal(claims.exp - claims.iat, 90 * 86_400);
    await assert.rejects(verifyToken(token, { publicKeysPem: [keys.publicKeyPem], expectedType: 'client', audience: 'staging' }), { code: ErrorCode.TOKEN_WRONG_TYPE });
  });

  test('--bind-key-x binds the token to that key (cnf.jkt = its RFC 7638 thumbprint)', async () => {
    const key = generateProofKey();
    const run = await cli('create', '--key', keyFile, '--user', 'ci-robot', '--ttl', '3600', '--bind-key-x', key.x);
    assert.equal(run.code, 0, run.stderr);
    const claims = await verifyToken(onlyToken(run.stdout), { publicKeysPem: [keys.publicKeyPem], expectedType: 'client' });
    assert.deepEqual(claims.cnf, { jkt: jwkThumbprint(key.x) });
  });

  test('a lifetime beyond the gateway default is minted with a warning on stderr only', async () => {
    const run = await inProcess('create', '--key', keyFile, '--user', 'alice', '--ttl', '31d');
    assert.equal(run.code, 0);
    onlyToken(run.stdout);
    assert.match(run.stderr, /maxLifetimeSeconds/);
  });

  test('the real binary: a bad command line exits 2 with NL_ERR_GATEWAY_USAGE on stderr and nothing on stdout', async () => {
    const run = await cli('create', '--key', keyFile, '--user', 'alice', '--ttl', 'forever');
    assert.equal(run.code, 2);
    assert.equal(run.stdout, '');
    assert.ok(run.stderr.startsWith(`narrowlink-gateway: ${GatewayErrorCode.USAGE}: `), run.stderr);
  });

  test('bad command lines: code 2, NL_ERR_GATEWAY_USAGE on stderr, nothing on stdout', async () => {
    const x = generateProofKey().x;
    const cases: string[][] = [
      ['create', '--user', 'alice', '--ttl', '8h'],
      ['create', '--key', keyFile, '--ttl', '8h'],
      ['create', '--key', keyFile, '--user', 'alice', '--agent', 'shop/orders', '--ttl', '8h'],
      ['create', '--key', keyFile, '--user', 'alice'],
      ['create', '--key', keyFile, '--user', 'alice', '--ttl', '8 hours'],
      ['create', '--key', keyFile, '--user', 'alice', '--ttl', '0'],
      ['create', '--key', keyFile, '--user', 'alice', '--ttl', '-5m'],
      ['create', '--key', keyFile, '--user', 'alice', '--ttl', '8h', '--bind-key-x', 'not-a-key'],
      ['create', '--key', keyFile, '--agent', 'orders', '--ttl', '8h'],
      ['create', '--key', keyFile, '--agent', 'Shop/orders', '--ttl', '8h'],
      ['create', '--key', keyFile, '--agent', 'shop/orders', '--group', 'g', '--ttl', '8h'],
      ['create', '--key', keyFile, '--agent', 'shop/orders', '--ttl', '8h', '--bind-key-x', x],
      ['create', '--key', keyFile, '--user', 'alice', '--ttl', '8h', '--nope'],
      ['create', '--key', keyFile, '--user', 'alice', '--ttl', '8h', 'extra'],
      ['revoke'],
    ];
    for (const args of cases) {
      const run = await inProcess(...args);
      assert.equal(run.code, 2, args.join(' '));
      assert.equal(run.stdout, '', args.join(' '));
      assert.ok(run.stderr.startsWith(`narrowlink-gateway: ${GatewayErrorCode.USAGE}: `), `${args.join(' ')}: ${run.stderr}`);
    }
  });

  test('a missing or unsuitable key file exits 1 with NL_ERR_CONFIG_INVALID, and never prints the key', async () => {
    const runs = [
      await cli('create', '--key', join(dir, 'absent.key'), '--user', 'alice', '--ttl', '8h'),
      await inProcess('create', '--key', publicKeyFile, '--user', 'alice', '--ttl', '8h'),
    ];
    for (const run of runs) {
      assert.equal(run.code, 1, run.stderr);
      assert.equal(run.stdout, '');
      assert.ok(run.stderr.startsWith(`narrowlink-gateway: ${ErrorCode.CONFIG_INVALID}: `), run.stderr);
      assert.ok(!run.stderr.includes('BEGIN'), 'no key material in the message');
    }
  });

  test('--help prints the usage on stdout and exits 0; no subcommand prints it on stderr and exits 2', async () => {
    const help = await inProcess('create', '--help');
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--bind-key-x/);
    const none = await cli();
    assert.equal(none.code, 2);
    assert.equal(none.stdout, '');
    assert.match(none.stderr, /token create/);
  });
});

describe('parseDurationSeconds', () => {
  test('N, Ns, Nm, Nh, Nd; nothing else', () => {
    assert.equal(parseDurationSeconds('90'), 90);
    assert.equal(parseDurationSeconds('90s'), 90);
    assert.equal(parseDurationSeconds('15m'), 900);
    assert.equal(parseDurationSeconds('8h'), 28_800);
    assert.equal(parseDurationSeconds('2d'), 172_800);
    for (const bad of ['', '0', '08h', '1.5h', '8H', '8w', 'h', ' 8h', '99999999999']) assert.equal(parseDurationSeconds(bad), undefined, bad);
  });
});
