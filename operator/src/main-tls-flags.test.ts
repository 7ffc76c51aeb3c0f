/**
 * The operator's TLS and CA-distribution flags (ADR 0015) are checked before it talks to any API server: a wrong
 * combination ends at once with NL_ERR_OPERATOR_USAGE (exit 2) naming the flag.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);
const MAIN = join(import.meta.dirname, 'main.ts');

async function usageError(args: string[]): Promise<string> {
  try {
    // No kubeconfig anywhere: reaching the API client would fail differently (and later).
    await run(process.execPath, [MAIN, '--namespace', 'narrowlink-system', ...args], { timeout: 30_000, env: { ...process.env, KUBECONFIG: '/nonexistent' } });
  } catch (error) {
    const e = error as { code?: number; stderr?: string };
    assert.equal(e.code, 2, `exit code (stderr: ${e.stderr})`);
    return e.stderr ?? '';
  }
  assert.fail('the operator started');
}

describe('operator TLS and CA-distribution flags', () => {
  it('--distribute-ca-from needs --sidecar-ca-configmap', async () => {
    assert.match(await usageError(['--distribute-ca-from', 'narrowlink-gateway-tls']), /NL_ERR_OPERATOR_USAGE: --distribute-ca-from needs --sidecar-ca-configmap/);
  });

  it('--gateway-tls-extra-sans refuses an entry that is neither a DNS name nor an IP address', async () => {
    assert.match(
      await usageError(['--gateway-tls-secret', 'narrowlink-gateway-tls', '--gateway-tls-extra-sans', 'gw.example.com,not a name']),
      /NL_ERR_OPERATOR_USAGE: --gateway-tls-extra-sans: "not a name" is not a DNS name or IP address/,
    );
  });

  it('--help lists them', async () => {
    const { stdout } = await run(process.execPath, [MAIN, '--help'], { timeout: 30_000 });
    for (const flag of ['--gateway-tls-secret', '--ca-secret', '--gateway-service', '--gateway-tls-extra-sans', '--distribute-ca-from']) assert.match(stdout, new RegExp(flag));
  });
});
