import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Certificate as CertificateModel } from '@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate';
import { DNS1123_LABEL_PATTERN } from '../../crds/common.ts';
import { LABEL_COMPONENT, LABEL_OWNER_NAME, LABEL_OWNER_NAMESPACE } from '../../labels.ts';
import type { Certificate, Secret } from '../../objects.ts';
import { domainOwners } from '../domains.ts';
import { makeAgent } from '../test-fixtures.ts';
import {
  CERTIFICATE_NAME_MAX,
  certificateName,
  certificatesToDelete,
  desiredCertificates,
  tlsSecretsToDelete,
} from './desired.ts';

const DEFAULT_ISSUER = { name: 'letsencrypt', kind: 'ClusterIssuer', group: 'cert-manager.io' };
const DNS_LABEL = new RegExp(DNS1123_LABEL_PATTERN);

/** Every emitted Certificate must be one cert-manager accepts. */
function assertValidCertificates(certs: readonly Certificate[]): void {
  for (const c of certs) new CertificateModel(structuredClone(c) as never).validate();
}

describe('certificateName', () => {
  const cases: Array<{ agent: string; domain: string; prefix: string }> = [
    { agent: 'web', domain: 'shop.example.com', prefix: 'web-shop-example-com-' },
    { agent: 'a'.repeat(63), domain: 'x.example.com', prefix: `${'a'.repeat(54)}-` },
    { agent: 'web', domain: `${'sub.'.repeat(20)}example.com`, prefix: 'web-sub-sub-' },
    // A cut that lands on '-' must not leave "--<hash>" ambiguity or a trailing dash before the hash.
    { agent: 'w', domain: `${'a'.repeat(51)}.b.example.com`, prefix: `w-${'a'.repeat(51)}-` },
  ];
  for (const c of cases) {
    it(`${c.agent.slice(0, 10)} + ${c.domain.slice(0, 20)}`, () => {
      const name = certificateName(c.agent, c.domain);
      assert.ok(name.length <= CERTIFICATE_NAME_MAX, name);
      assert.match(name, DNS_LABEL);
      assert.ok(name.startsWith(c.prefix), name);
      assert.match(name, /-[0-9a-f]{8}$/);
      assert.equal(certificateName(c.agent, c.domain), name, 'deterministic');
    });
  }

  it('does not collide when dots and dashes flatten alike', () => {
    assert.notEqual(certificateName('web', 'a-b.example.com'), certificateName('web-a', 'b.example.com'));
    assert.notEqual(certificateName('web', 'a-b.example.com'), certificateName('web', 'a.b.example.com'));
  });
});

describe('desiredCertificates', () => {
  const publishing = makeAgent(
    'web',
    {
      expose: [
        { name: 'http', port: 8080 },
        { name: 'tls', port: 8443 },
      ],
      publish: [
        { domain: 'shop.example.com', port: 8080 },
        { domain: 'api.example.com', port: 8080, tls: 'Terminate' },
        { domain: 'raw.example.com', port: 8443, tls: 'Passthrough' },
      ],
    },
    { namespace: 'shop' },
  );

  it('makes one valid Certificate per Terminate domain, owned and labelled', () => {
    const out = desiredCertificates({ agent: publishing, defaultIssuerRef: DEFAULT_ISSUER });
    assert.deepEqual(out.skipped, []);
    assert.deepEqual(
      out.certificates.map((c) => c.spec.dnsNames),
      [['api.example.com'], ['shop.example.com']],
    );
    assertValidCertificates(out.certificates);
    for (const c of out.certificates) {
      assert.equal(c.metadata.namespace, 'shop');
      assert.equal(c.spec.secretName, `${c.metadata.name}-tls`);
      assert.deepEqual(c.spec.issuerRef, DEFAULT_ISSUER);
      assert.deepEqual(c.metadata.ownerReferences, [
        {
          apiVersion: 'narrowlink.io/v1alpha1',
          kind: 'NarrowlinkAgent',
          name: 'web',
          uid: publishing.metadata.uid,
          controller: true,
          blockOwnerDeletion: true,
        },
      ]);
      assert.equal(c.metadata.labels?.[LABEL_COMPONENT], 'certificate');
      assert.equal(c.metadata.labels?.[LABEL_OWNER_NAMESPACE], 'shop');
      assert.equal(c.metadata.labels?.[LABEL_OWNER_NAME], 'web');
      assert.deepEqual(c.spec.secretTemplate?.labels, c.metadata.labels, 'the TLS Secret is findable by label');
    }
  });

  const issuerCases: Array<{ name: string; issuerRef?: { name: string; kind?: 'Issuer' | 'ClusterIssuer'; group?: string }; want: unknown }> = [
    { name: 'chart default when the agent sets none', want: DEFAULT_ISSUER },
    { name: 'agent Issuer with defaults applied', issuerRef: { name: 'local-ca' }, want: { name: 'local-ca', kind: 'Issuer', group: 'cert-manager.io' } },
    {
      name: 'agent ClusterIssuer with its own group',
      issuerRef: { name: 'pca', kind: 'ClusterIssuer', group: 'awspca.cert-manager.io' },
      want: { name: 'pca', kind: 'ClusterIssuer', group: 'awspca.cert-manager.io' },
    },
  ];
  for (const c of issuerCases) {
    it(`takes issuerRef from: ${c.name}`, () => {
      const agent = makeAgent('web', { publish: [{ domain: 'a.example.com', port: 8080 }], ...(c.issuerRef ? { issuerRef: c.issuerRef } : {}) });
      const out = desiredCertificates({ agent, defaultIssuerRef: DEFAULT_ISSUER });
      assert.deepEqual(out.certificates[0]?.spec.issuerRef, c.want);
      assertValidCertificates(out.certificates);
    });
  }

  it('skips domains with no issuer at all', () => {
    const out = desiredCertificates({ agent: publishing });
    assert.deepEqual(out.certificates, []);
    assert.deepEqual(
      out.skipped.map((s) => [s.domain, s.reason]),
      [
        ['shop.example.com', 'NoIssuer'],
        ['api.example.com', 'NoIssuer'],
      ],
    );
  });

  it('skips a domain owned by an older agent', () => {
    const older = makeAgent('other', { publish: [{ domain: 'shop.example.com', port: 8080 }] }, { creationTimestamp: '2024-01-01T00:00:00Z' });
    const out = desiredCertificates({ agent: publishing, defaultIssuerRef: DEFAULT_ISSUER, domainOwners: domainOwners([publishing, older]) });
    assert.deepEqual(
      out.certificates.map((c) => c.spec.dnsNames[0]),
      ['api.example.com'],
    );
    assert.deepEqual(
      out.skipped.map((s) => [s.domain, s.reason]),
      [['shop.example.com', 'DomainConflict']],
    );
  });

  it('wants nothing for an agent being deleted or publishing nothing', () => {
    const deleting = { ...publishing, metadata: { ...publishing.metadata, deletionTimestamp: '2025-01-02T00:00:00Z' } };
    assert.deepEqual(desiredCertificates({ agent: deleting, defaultIssuerRef: DEFAULT_ISSUER }), { certificates: [], skipped: [] });
    assert.deepEqual(desiredCertificates({ agent: makeAgent('web'), defaultIssuerRef: DEFAULT_ISSUER }), { certificates: [], skipped: [] });
  });

  it('throws when the agent was not read from the API (no uid for the owner reference)', () => {
    const agent = makeAgent('web', { publish: [{ domain: 'a.example.com', port: 8080 }] });
    delete agent.metadata.uid;
    assert.throws(() => desiredCertificates({ agent, defaultIssuerRef: DEFAULT_ISSUER }), TypeError);
  });
});

describe('certificatesToDelete / tlsSecretsToDelete', () => {
  const agent = makeAgent('web', { publish: [{ domain: 'keep.example.com', port: 8080 }] }, { namespace: 'shop' });
  const owner = { namespace: 'shop', name: 'web' };
  const desired = desiredCertificates({ agent, defaultIssuerRef: DEFAULT_ISSUER }).certificates;
  const stale = desiredCertificates({
    agent: makeAgent('web', { publish: [{ domain: 'old.example.com', port: 8080 }] }, { namespace: 'shop' }),
    defaultIssuerRef: DEFAULT_ISSUER,
  }).certificates;
  const otherAgents = desiredCertificates({
    agent: makeAgent('api', { publish: [{ domain: 'api.example.com', port: 8080 }] }, { namespace: 'shop' }),
    defaultIssuerRef: DEFAULT_ISSUER,
  }).certificates;
  const usersOwn: Certificate = {
    apiVersion: 'cert-manager.io/v1',
    kind: 'Certificate',
    metadata: { name: 'hand-made', namespace: 'shop' },
    spec: { secretName: 'hand-made', dnsNames: ['x.example.com'], issuerRef: DEFAULT_ISSUER },
  };
  const observed = [...desired, ...stale, ...otherAgents, usersOwn];

  it('deletes only this owner’s Certificates that are no longer desired, naming their Secrets', () => {
    assert.deepEqual(certificatesToDelete(observed, desired, owner), [
      { namespace: 'shop', name: stale[0]?.metadata.name, secretName: stale[0]?.spec.secretName },
    ]);
  });

  it('deletes everything the owner has when desired is empty (finalizer)', () => {
    assert.deepEqual(
      certificatesToDelete(observed, [], owner).map((d) => d.name),
      [...desired, ...stale].map((c) => c.metadata.name).sort(),
    );
    assert.deepEqual(certificatesToDelete([], desired, owner), []);
  });

  it('finds TLS Secrets left behind by deleted Certificates', () => {
    const secretOf = (c: Certificate): Secret => ({
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: c.spec.secretName, namespace: 'shop', labels: { ...c.spec.secretTemplate?.labels } },
      type: 'kubernetes.io/tls',
    });
    const secrets = [...desired, ...stale, ...otherAgents].map(secretOf);
    assert.deepEqual(tlsSecretsToDelete(secrets, desired, owner), [{ namespace: 'shop', name: stale[0]?.spec.secretName }]);
    assert.equal(tlsSecretsToDelete(secrets, [], owner).length, 2);
  });
});
