import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  Component,
  hasOwnerLabels,
  LABEL_OWNER_NAME,
  managedLabels,
  ownerLabels,
  ownerSelector,
} from './labels.ts';
import { boundedName, hashedName } from './names.ts';

const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

describe('owner labels', () => {
  const owner = { kind: 'NarrowlinkAgent', namespace: 'shop', name: 'web' };

  it('are the managed labels plus the owner identity', () => {
    assert.deepEqual(ownerLabels(owner, Component.Certificate), {
      ...managedLabels(Component.Certificate),
      'narrowlink.io/owner-kind': 'NarrowlinkAgent',
      'narrowlink.io/owner-namespace': 'shop',
      'narrowlink.io/owner-name': 'web',
    });
    assert.equal(
      ownerSelector(owner, Component.AgentToken),
      'app.kubernetes.io/managed-by=narrowlink-operator,app.kubernetes.io/part-of=narrowlink,app.kubernetes.io/component=agent-token,narrowlink.io/owner-kind=NarrowlinkAgent,narrowlink.io/owner-namespace=shop,narrowlink.io/owner-name=web',
    );
  });

  it('keep every value a valid label value, even for 253-character names', () => {
    const long = { ...owner, name: `${'a'.repeat(60)}.${'b'.repeat(192)}` };
    for (const value of Object.values(ownerLabels(long, Component.Certificate))) {
      assert.ok(value.length <= 63, value);
      assert.match(value, LABEL_VALUE);
    }
    assert.notEqual(
      ownerLabels(long, Component.Certificate)[LABEL_OWNER_NAME],
      ownerLabels({ ...long, name: `${long.name.slice(0, -1)}c` }, Component.Certificate)[LABEL_OWNER_NAME],
    );
  });

  const matchCases: Array<{ name: string; labels: Record<string, string> | undefined; want: boolean }> = [
    { name: 'exact owner labels', labels: ownerLabels(owner, Component.Certificate), want: true },
    { name: 'plus extra labels', labels: { ...ownerLabels(owner, Component.Certificate), extra: 'x' }, want: true },
    { name: 'no labels', labels: undefined, want: false },
    { name: 'another owner', labels: ownerLabels({ ...owner, name: 'api' }, Component.Certificate), want: false },
    { name: 'another component', labels: ownerLabels(owner, Component.AgentToken), want: false },
  ];
  for (const c of matchCases) {
    it(`hasOwnerLabels: ${c.name}`, () => assert.equal(hasOwnerLabels(c.labels, owner, Component.Certificate), c.want));
  }
});

describe('names', () => {
  const cases: Array<{ fn: string; got: string; max: number; hashed: boolean }> = [
    { fn: 'boundedName short', got: boundedName('web', 63), max: 63, hashed: false },
    { fn: 'boundedName long', got: boundedName('x'.repeat(100), 63), max: 63, hashed: true },
    { fn: 'boundedName cut on a dot', got: boundedName(`${'x'.repeat(53)}.yyyyyyyyyyyy`, 63), max: 63, hashed: true },
    { fn: 'hashedName short', got: hashedName('web', 63, 'web'), max: 63, hashed: true },
  ];
  for (const c of cases) {
    it(c.fn, () => {
      assert.ok(c.got.length <= c.max);
      assert.match(c.got, /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/);
      assert.equal(/-[0-9a-f]{8}$/.test(c.got), c.hashed, c.got);
    });
  }
});
