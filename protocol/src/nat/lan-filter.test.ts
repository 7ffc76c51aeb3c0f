import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  filterLanCandidates,
  hasLoopback,
  type LanCandidateDropReason,
  type LanFilterOptions,
  lanAddressClass,
  lanCandidateVerdict,
  type LocalSubnet,
  subnetsFromInterfaces,
} from './lan-filter.ts';

/** An agent on 10.1.0.3/24 (the NAT lab's h1b), a 100.64 pod network, IPv6 ULA and link-local, and loopback. */
const AGENT: LocalSubnet[] = [
  { address: '127.0.0.1', prefixLength: 8 },
  { address: '10.1.0.3', prefixLength: 24 },
  { address: '100.64.12.7', prefixLength: 16 },
  { address: '172.20.0.2', prefixLength: 31 },
  { address: '169.254.3.1', prefixLength: 16 },
  { address: '::1', prefixLength: 128 },
  { address: 'fd00:1:2::3', prefixLength: 64 },
  { address: 'fe80::1c2:3ff:fe04:506', prefixLength: 64 },
];

describe('lanCandidateVerdict: addresses × the agent subnets', () => {
  const rows: Array<[address: string, options: LanFilterOptions, expected: LanCandidateDropReason | undefined]> = [
    // IPv4, on-link and private.
    ['10.1.0.2', {}, undefined],
    ['10.1.0.3', {}, undefined],
    ['10.1.0.254', {}, undefined],
    ['100.64.200.1', {}, undefined],
    ['172.20.0.3', {}, undefined],
    ['172.20.0.2', {}, undefined],
    ['169.254.9.9', {}, undefined],
    // IPv4, private but not on one of the agent's links.
    ['10.1.1.2', {}, 'NotOnLink'],
    ['10.2.0.2', {}, 'NotOnLink'],
    ['192.168.1.10', {}, 'NotOnLink'],
    ['172.16.0.1', {}, 'NotOnLink'],
    ['100.65.0.1', {}, 'NotOnLink'],
    // IPv4 network and broadcast addresses of an on-link subnet.
    ['10.1.0.0', {}, 'Broadcast'],
    ['10.1.0.255', {}, 'Broadcast'],
    ['100.64.255.255', {}, 'Broadcast'],
    // IPv4, public and special-purpose addresses: never.
    ['8.8.8.8', {}, 'NotPrivate'],
    ['198.51.100.2', {}, 'NotPrivate'],
    ['172.32.0.1', {}, 'NotPrivate'],
    ['100.128.0.1', {}, 'NotPrivate'],
    ['11.0.0.1', {}, 'NotPrivate'],
    ['224.0.0.1', {}, 'NotPrivate'],
    ['255.255.255.255', {}, 'NotPrivate'],
    ['0.0.0.0', {}, 'NotPrivate'],
    // Loopback only for a peer on loopback.
    ['127.0.0.1', {}, 'Loopback'],
    ['127.0.0.1', { allowLoopback: true }, undefined],
    ['127.0.0.53', { allowLoopback: true }, undefined],
    ['::1', {}, 'Loopback'],
    ['::1', { allowLoopback: true }, undefined],
    // IPv4-mapped IPv6 is IPv4.
    ['::ffff:10.1.0.2', {}, undefined],
    ['::ffff:8.8.8.8', {}, 'NotPrivate'],
    // IPv6.
    ['fd00:1:2::99', {}, undefined],
    ['fd00:1:3::99', {}, 'NotOnLink'],
    ['fc00::1', {}, 'NotOnLink'],
    ['fe80::42', {}, undefined],
    ['febf::1', {}, 'NotOnLink'],
    ['fec0::1', {}, 'NotPrivate'],
    ['2001:db8::1', {}, 'NotPrivate'],
    ['2606:4700::1111', {}, 'NotPrivate'],
    ['ff02::1', {}, 'NotPrivate'],
    ['::', {}, 'NotPrivate'],
    // Not an address.
    ['example.com', {}, 'Invalid'],
    ['10.1.0.2%eth0', {}, 'Invalid'],
    ['', {}, 'Invalid'],
  ];
  for (const [address, options, expected] of rows) {
    test(`${address || '(empty)'}${options.allowLoopback ? ' (peer on loopback)' : ''} → ${expected ?? 'kept'}`, () => {
      assert.equal(lanCandidateVerdict(address, AGENT, options), expected);
    });
  }

  test('an agent without interfaces (or only of the other family) keeps nothing', () => {
    assert.equal(lanCandidateVerdict('10.1.0.2', []), 'NotOnLink');
    assert.equal(lanCandidateVerdict('fd00:1:2::99', [{ address: '10.1.0.3', prefixLength: 24 }]), 'NotOnLink');
    // A malformed subnet matches nothing instead of everything.
    assert.equal(lanCandidateVerdict('10.1.0.2', [{ address: '10.1.0.3', prefixLength: 33 }, { address: 'nope', prefixLength: 8 }]), 'NotOnLink');
  });

  test('address classes', () => {
    assert.equal(lanAddressClass('192.168.0.1'), 'private');
    assert.equal(lanAddressClass('169.254.169.254'), 'link-local');
    assert.equal(lanAddressClass('127.1.2.3'), 'loopback');
    assert.equal(lanAddressClass('1.1.1.1'), 'public');
    assert.equal(lanAddressClass('fdff::1'), 'private');
    assert.equal(lanAddressClass('x'), undefined);
    assert.equal(hasLoopback([{ address: '10.0.0.1' }, { address: '127.0.0.1' }]), true);
    assert.equal(hasLoopback([{ address: '10.0.0.1' }]), false);
  });
});

describe('filterLanCandidates', () => {
  test('drops the lan candidates the verdict refuses, keeps every other kind in order', () => {
    const candidates = [
      { address: '8.8.8.8', port: 53, kind: 'lan' },
      { address: '10.1.0.2', port: 50_000, kind: 'lan' },
      { address: '10.9.9.9', port: 22, kind: 'lan' },
      { address: '127.0.0.1', port: 6379, kind: 'lan' },
      { address: '198.51.100.2', port: 50_001, kind: 'public' },
    ];
    const { kept, dropped } = filterLanCandidates(candidates, AGENT);
    assert.deepEqual(kept.map((c) => `${c.kind} ${c.address}`), ['lan 10.1.0.2', 'public 198.51.100.2']);
    assert.deepEqual(dropped.map((d) => `${d.candidate.address} ${d.reason}`), ['8.8.8.8 NotPrivate', '10.9.9.9 NotOnLink', '127.0.0.1 Loopback']);
  });
});

describe('subnetsFromInterfaces', () => {
  test('reads the CIDR of each entry (os.networkInterfaces() shape), skips entries without one', () => {
    const subnets = subnetsFromInterfaces({
      lo: [{ address: '127.0.0.1', cidr: '127.0.0.1/8' }, { address: '::1', cidr: '::1/128' }],
      eth0: [{ address: '10.1.0.3', cidr: '10.1.0.3/24' }, { address: 'fe80::1', cidr: 'fe80::1/64' }, { address: '10.9.0.1', cidr: null }],
      tun0: undefined,
    });
    assert.deepEqual(subnets, [
      { address: '127.0.0.1', prefixLength: 8 },
      { address: '::1', prefixLength: 128 },
      { address: '10.1.0.3', prefixLength: 24 },
      { address: 'fe80::1', prefixLength: 64 },
    ]);
  });
});
