// Destinations for proxy mode: authority parsing, `to` patterns, and the
// addresses a DNS answer must never turn an allowed name into.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { addressAllowed, checkDestinationPattern, compileDestinations, parseAuthority } from '../src/destination.ts';

const PARSED: [string, { host: string; port: number; isIp: boolean }][] = [
  ['db.internal:5432', { host: 'db.internal', port: 5432, isIp: false }],
  ['DB.Internal.:5432', { host: 'db.internal', port: 5432, isIp: false }],
  ['127.0.0.1:80', { host: '127.0.0.1', port: 80, isIp: true }],
  ['[::1]:443', { host: '::1', port: 443, isIp: true }],
  ['svc_a.internal:65535', { host: 'svc_a.internal', port: 65535, isIp: false }],
];
for (const [text, expected] of PARSED) {
  test(`parseAuthority reads ${JSON.stringify(text)}`, () => assert.deepEqual(parseAuthority(text), expected));
}

const MALFORMED = ['host', 'host:', ':80', 'host:0', 'host:99999', 'host:080', 'host:80x', '[::1', '[::1]', '[::1]80', 'user@host:80',
  'host:80@evil:80', 'http://host:80', 'ho st:80', 'host/x:80', '[127.0.0.1]:80', '[fe80::1%eth0]:80', `${'a'.repeat(64)}.x:80`, ''];
for (const text of MALFORMED) {
  test(`parseAuthority refuses ${JSON.stringify(text)}`, () => assert.equal(parseAuthority(text), undefined));
}

test('names match case-insensitively without a trailing dot; IP literals only exactly as listed', () => {
  const m = compileDestinations(['db.internal.:5432', '*.svc.internal:443', '127.0.0.1:8080', '[::1]:8443']);
  const ok = (t: string) => m.matches(parseAuthority(t)!);
  assert.ok(ok('db.internal:5432'));
  assert.ok(ok('DB.INTERNAL.:5432'));
  assert.ok(!ok('db.internal:5433'), 'another port');
  assert.ok(ok('api.svc.internal:443'));
  assert.ok(ok('a.b.svc.internal:443'));
  assert.ok(!ok('svc.internal:443'), '"*." needs a label in front');
  assert.ok(!ok('evilsvc.internal:443'));
  assert.ok(ok('127.0.0.1:8080'));
  assert.ok(ok('[::1]:8443'));
  for (const shorthand of ['127.1:8080', '2130706433:8080', '[::ffff:127.0.0.1]:8080']) {
    const d = parseAuthority(shorthand);
    assert.ok(!d || !m.matches(d), shorthand);
  }
  assert.ok(m.listsAddress('127.0.0.1', 8080));
  assert.ok(!m.listsAddress('127.0.0.1', 9090), 'a literal listing unlocks only its own port');
});

const PATTERNS: [string, boolean][] = [
  ['db.internal:5432', true], ['*.svc.internal:443', true], ['10.0.0.5:22', true], ['[fd00::5]:22', true], ['localhost:8080', true],
  ['db.internal', false], ['db.internal:0', false], ['db.internal:70000', false], ['*:443', false], ['*.com:443', false],
  ['db*:5432', false], ['*.*.internal:443', false], ['svc.*.internal:443', false], ['*.10.0.0.5:22', false], ['*.10.0.0.5.:22', false], ['[10.0.0.5]:22', false], ['user@db:5432', false],
];
for (const [pattern, valid] of PATTERNS) {
  test(`the to pattern ${JSON.stringify(pattern)} is ${valid ? 'accepted' : 'refused'}`, () => {
    assert.equal(checkDestinationPattern(pattern) === undefined, valid, checkDestinationPattern(pattern));
  });
}

test('loopback, link-local, metadata and unspecified addresses are never dialled unless listed', () => {
  const never = ['127.0.0.1', '127.9.9.9', '0.0.0.0', '0.1.2.3', '169.254.169.254', '100.100.100.200', '168.63.129.16', '192.0.0.192',
    '::1', '::', '::127.0.0.1', '::ffff:169.254.169.254', 'fe80::1', 'fd00:ec2::254'];
  for (const address of never) {
    assert.equal(addressAllowed(address, 80, [], false), false, address);
    assert.equal(addressAllowed(address, 80, [], true), true, `${address} when listed`);
  }
  for (const address of ['10.0.0.5', '192.168.1.10', 'fd00::5', '203.0.113.9']) assert.equal(addressAllowed(address, 80, [], false), true, address);
});

test("the gateway's own ports on a local interface address are never dialled unless listed", () => {
  assert.equal(addressAllowed('10.255.255.254', 8000, [8000, 9090], false), true, 'not a local address');
  // 127.0.0.1 is loopback anyway; the own-port rule matters for this host's other addresses.
  assert.equal(addressAllowed('127.0.0.1', 9090, [8000, 9090], false), false);
});
