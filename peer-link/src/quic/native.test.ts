import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DirectError, DirectErrorCode } from './errors.ts';
import { quicheBinding, quicUnavailableReason } from './native.ts';

const prebuilt = ['linux-x64', 'darwin-x64', 'darwin-arm64', 'win32-x64'].includes(`${process.platform}-${process.arch}`);

test('the binding loads lazily where a prebuilt binary exists, else a typed error with the reason', () => {
  const reason = quicUnavailableReason();
  if (prebuilt) {
    assert.equal(reason, undefined);
    const binding = quicheBinding();
    assert.equal(typeof binding.Config.withBoringSslCtx, 'function');
    assert.equal(typeof binding.versionIsSupported(binding.PROTOCOL_VERSION), 'boolean');
  } else {
    assert.match(reason ?? '', /native QUIC binding/);
    assert.throws(() => quicheBinding(), (error: unknown) => error instanceof DirectError && error.code === DirectErrorCode.NATIVE_UNAVAILABLE);
  }
});
