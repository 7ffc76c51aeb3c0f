import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CliError, CliErrorCode, ExitCode } from '../errors.ts';
import { type CheckResult, doctorExitCode, humanDuration, judgeClock, readClaims, runChecks } from './doctor.ts';

const jwt = (claims: object): string => `e30.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.sig`;

test('readClaims reads a JWT payload without verifying it; anything else is undefined', () => {
  assert.deepEqual(readClaims(jwt({ sub: 'alice', exp: 5 })), { sub: 'alice', exp: 5 });
  assert.equal(readClaims('not-a-token'), undefined);
  assert.equal(readClaims('a.%%%.c'), undefined);
  assert.equal(readClaims(`a.${Buffer.from('"text"').toString('base64url')}.c`), undefined);
});

test('humanDuration', () => {
  assert.equal(humanDuration(45_000), '45 s');
  assert.equal(humanDuration(-90_000), '90 s');
  assert.equal(humanDuration(30 * 60_000), '30 min');
  assert.equal(humanDuration((3 * 60 + 12) * 60_000), '3 h 12 min');
  assert.equal(humanDuration(50 * 3600_000), '2 d 2 h');
});

test('the exit code is the class of the first failure: 2 config, 3 credentials, 4 unreachable, 1 other; 0 when none', () => {
  const check = (status: CheckResult['status'], cls?: CheckResult['class']): CheckResult => ({ check: 'x', status, detail: '', ...(cls ? { class: cls } : {}) });
  assert.equal(doctorExitCode([check('ok'), check('skip')]), ExitCode.OK);
  assert.equal(doctorExitCode([check('ok'), check('fail', 'credentials'), check('fail', 'unreachable')]), ExitCode.AUTH);
  assert.equal(doctorExitCode([check('fail', 'config')]), ExitCode.USAGE);
  assert.equal(doctorExitCode([check('fail', 'unreachable')]), ExitCode.UNREACHABLE);
  assert.equal(doctorExitCode([check('fail', 'other')]), ExitCode.FAILURE);
});

test('settings that do not resolve: config ✗ and every other check skipped, without touching the network', async () => {
  const notLoggedIn = await runChecks({
    resolveSettings: () => {
      throw new CliError(CliErrorCode.NOT_LOGGED_IN, 'not logged in to kube context "dev"', ExitCode.AUTH);
    },
    agent: 'svc',
    output: 'json',
    timeoutMs: 1000,
    program: 'narrowlink',
  });
  assert.equal(notLoggedIn[0]?.class, 'credentials');
  assert.equal(doctorExitCode(notLoggedIn), ExitCode.AUTH);
  assert.ok(notLoggedIn.slice(1).every((c) => c.status === 'skip'));
  assert.equal(notLoggedIn.length, 13);

  const insecure = await runChecks({
    resolveSettings: () => ({ gateway: 'ws://gateway.example.com:80', token: () => 't', caPem: undefined, mode: 'auto', configPath: undefined }),
    output: 'json',
    timeoutMs: 1000,
    program: 'narrowlink',
  });
  assert.equal(insecure[0]?.status, 'fail');
  assert.equal(doctorExitCode(insecure), ExitCode.USAGE);
});

test('judgeClock: within the Date header resolution is no skew; beyond the token tolerance (30 s) fails, either way', () => {
  const at = 1_800_000_000_000;
  assert.deepEqual(judgeClock(at - 900, at), { skewS: 0, ok: true, text: 'the gateway clock agrees with this one (within 1 s)' });
  assert.equal(judgeClock(at + 12_000, at).skewS, 12);
  assert.equal(judgeClock(at + 12_000, at).ok, true);
  assert.match(judgeClock(at + 12_000, at).text, /12 s behind/);
  const ahead = judgeClock(at - 95_000, at);
  assert.deepEqual([ahead.skewS, ahead.ok], [-95, false]);
  assert.match(ahead.text, /95 s ahead of the gateway's: more than the 30 s/);
  assert.equal(judgeClock(at + 31_000, at).ok, false);
});
