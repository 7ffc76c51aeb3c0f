import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseArgs } from 'node:util';
import { resolveWebhookConfig, WEBHOOK_CLI_OPTIONS, type WebhookFlag } from './config.ts';
import { WebhookError } from './errors.ts';

const from = (values: Partial<Record<WebhookFlag, string>>) => (flag: WebhookFlag) => values[flag];
const BASE = { 'webhook-listen': '0.0.0.0:9443', 'sidecar-image': 'ghcr.io/narrowlink/narrowlink-k8s:0.1.0' } as const;

describe('resolveWebhookConfig', () => {
  it('off unless --webhook-listen is given', () => {
    assert.equal(resolveWebhookConfig(from({}), 'ns'), undefined);
    assert.equal(resolveWebhookConfig(from({ 'webhook-listen': 'off' }), 'ns'), undefined);
    assert.equal(resolveWebhookConfig(from({ 'webhook-listen': '' }), 'ns'), undefined);
  });

  it('defaults: chart-like resources, in-cluster gateway URL, mounted cert files, not strict', () => {
    assert.deepEqual(resolveWebhookConfig(from(BASE), 'narrowlink'), {
      host: '0.0.0.0',
      port: 9443,
      certFile: '/etc/narrowlink/webhook/tls.crt',
      keyFile: '/etc/narrowlink/webhook/tls.key',
      strict: false,
      settings: {
        image: BASE['sidecar-image'],
        gatewayUrl: 'wss://narrowlink-gateway.narrowlink.svc:443',
        resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { memory: '128Mi' } },
        tokenAudience: 'narrowlink',
        tokenExpirationSeconds: 600,
      },
    });
  });

  it('every flag', () => {
    const config = resolveWebhookConfig(
      from({
        ...BASE,
        'webhook-listen': '[::]:8443',
        'webhook-cert-file': '/c',
        'webhook-key-file': '/k',
        'webhook-strict': 'true',
        'sidecar-image-pull-policy': 'Always',
        'sidecar-gateway-url': 'wss://gw.example.com',
        'sidecar-ca-configmap': 'gw-ca',
        'sidecar-cpu-request': '',
        'sidecar-memory-request': '32Mi',
        'sidecar-cpu-limit': '1',
        'sidecar-memory-limit': '',
        'sidecar-token-expiration-seconds': '3600',
      }),
      'ns',
    );
    assert.ok(config);
    assert.equal(config.host, '::');
    assert.equal(config.port, 8443);
    assert.equal(config.strict, true);
    assert.deepEqual([config.certFile, config.keyFile], ['/c', '/k']);
    assert.deepEqual(config.settings, {
      image: BASE['sidecar-image'],
      imagePullPolicy: 'Always',
      gatewayUrl: 'wss://gw.example.com',
      resources: { requests: { memory: '32Mi' }, limits: { cpu: '1' } },
      caConfigMap: 'gw-ca',
      tokenAudience: 'narrowlink',
      tokenExpirationSeconds: 3600,
    });
  });

  const bad: Array<[string, Partial<Record<WebhookFlag, string>>, RegExp]> = [
    ['listen without port', { 'webhook-listen': '9443' }, /--webhook-listen/],
    ['listen with a bad port', { 'webhook-listen': '0.0.0.0:http' }, /--webhook-listen/],
    ['no image', { 'sidecar-image': '' }, /--sidecar-image is required/],
    ['strict not a bool', { 'webhook-strict': 'yes' }, /--webhook-strict/],
    ['pull policy', { 'sidecar-image-pull-policy': 'Sometimes' }, /pull-policy/],
    ['short token', { 'sidecar-token-expiration-seconds': '60' }, />= 600/],
    ['bad quantity', { 'sidecar-memory-limit': 'lots' }, /limits\.memory/],
    ['request above limit', { 'sidecar-memory-request': '1Gi' }, /above/],
    ['both CAs', { 'sidecar-ca-configmap': 'a', 'sidecar-ca-file': '/b' }, /not both/],
    ['http gateway', { 'sidecar-gateway-url': 'http://gw' }, /ws:\/\//],
  ];
  for (const [name, over, re] of bad) {
    it(`rejects ${name} with NL_ERR_WEBHOOK_CONFIG`, () => {
      assert.throws(
        () => resolveWebhookConfig(from({ ...BASE, ...over }), 'ns'),
        (err: unknown) => err instanceof WebhookError && err.code === 'NL_ERR_WEBHOOK_CONFIG' && re.test(err.message),
      );
    });
  }

  it('the options spread into parseArgs', () => {
    const { values } = parseArgs({
      args: ['--webhook-listen', '127.0.0.1:0', '--sidecar-image', 'x'],
      options: { ...WEBHOOK_CLI_OPTIONS, namespace: { type: 'string' } },
      strict: true,
    });
    const config = resolveWebhookConfig((flag) => values[flag], 'ns');
    assert.equal(config?.port, 0);
  });
});
