import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { KubeObject } from '@narrowlink/kube';
import { discoveryCaPatch } from './reconcile.ts';

const PEM = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
const configMap = (data: Record<string, string>): KubeObject => ({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'narrowlink-discovery' }, data });
const secret = (data: Record<string, string>): KubeObject => ({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'narrowlink-gateway-tls' }, data });

describe('discoveryCaPatch', () => {
  it("copies the Secret's ca.crt (base64) into the ConfigMap as PEM text", () => {
    assert.deepEqual(discoveryCaPatch(configMap({ loginNamespace: 'x' }), secret({ 'ca.crt': Buffer.from(PEM).toString('base64') })), { data: { 'ca.crt': PEM } });
  });

  it('does nothing when equal, or when either object is missing', () => {
    assert.equal(discoveryCaPatch(configMap({ 'ca.crt': PEM }), secret({ 'ca.crt': Buffer.from(PEM).toString('base64') })), undefined);
    assert.equal(discoveryCaPatch(undefined, secret({})), undefined);
    assert.equal(discoveryCaPatch(configMap({}), undefined), undefined);
  });

  it('publishes an empty bundle for a Secret without ca.crt (a publicly trusted certificate)', () => {
    assert.deepEqual(discoveryCaPatch(configMap({}), secret({ 'tls.crt': 'eA==' })), { data: { 'ca.crt': '' } });
    assert.equal(discoveryCaPatch(configMap({ 'ca.crt': '' }), secret({ 'tls.crt': 'eA==' })), undefined);
  });
});
