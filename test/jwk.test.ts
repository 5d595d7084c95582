import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { importRsaJwk, MIN_MODULUS_BITS, type ImportedKey } from '../src/jwk.js';
import { forgeForExponentOne, generateRsaKey, type RsaJwk } from './helpers.js';

const [key, weak] = await Promise.all([generateRsaKey('key-1'), generateRsaKey('weak-1024', 1024)]);

function importedKey(result: ImportedKey): KeyObject {
  if ('skipped' in result) assert.fail(`skipped: ${result.skipped}`);
  return result.key;
}

function skipped(result: ImportedKey): string {
  if (!('skipped' in result)) assert.fail(`imported kid ${result.kid}, expected it skipped`);
  return result.skipped;
}

function sameModulus(imported: KeyObject, jwk: RsaJwk): void {
  assert.equal(imported.type, 'public');
  assert.equal(imported.asymmetricKeyType, 'rsa');
  assert.equal(imported.export({ format: 'jwk' }).n, jwk.n);
}

test('the minimum modulus is 2048 bits', () => {
  assert.equal(MIN_MODULUS_BITS, 2048);
});

test('a 2048-bit RSA signing key with e = AQAB is imported as a public KeyObject under its kid', () => {
  const result = importRsaJwk(key.jwk);
  assert.equal('kid' in result && result.kid, 'key-1');
  sameModulus(importedKey(result), key.jwk);
});

test('optional members that allow RS256 signing keep the key usable', () => {
  const { use: _use, alg: _alg, ...bare } = key.jwk;
  const table: [string, Record<string, unknown>][] = [
    ['no use and no alg', bare],
    ['use sig', { ...bare, use: 'sig' }],
    ['alg RS256', { ...bare, alg: 'RS256' }],
    ['key_ops with verify', { ...bare, key_ops: ['verify'] }],
    ['x5c, x5t and other informational members', { ...key.jwk, x5c: ['MIIB'], x5t: 'abc', 'x5t#S256': 'def' }],
  ];
  for (const [name, jwk] of table) {
    const result = importRsaJwk(jwk);
    assert.ok(!('skipped' in result), `${name}: ${'skipped' in result ? result.skipped : ''}`);
    sameModulus(result.key, key.jwk);
  }
});

test('a key set that leaks the private members never makes us hold a private key', () => {
  const privateJwk = key.privateKey.export({ format: 'jwk' });
  const imported = importedKey(importRsaJwk({ ...privateJwk, kid: 'leaky' }));
  sameModulus(imported, key.jwk);
});

test('with e = 1 node:crypto itself accepts a signature anyone can compute, so the import must refuse it', () => {
  const input = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhdHRhY2tlciJ9';
  const forged = forgeForExponentOne(input);
  // The trap: node:crypto verifies this without any private key (../shared/RUNTIME-NOTES.md).
  const lenient = createPublicKey({ key: { kty: 'RSA', n: key.jwk.n, e: 'AQ' }, format: 'jwk' });
  assert.equal(verify('sha256', Buffer.from(input), lenient, forged), true);
  assert.match(skipped(importRsaJwk({ ...key.jwk, kid: 'e-is-1', e: 'AQ' })), /\be\b.*65537/);
});

test('a real 1024-bit key is refused as under 2048 bits', () => {
  assert.match(skipped(importRsaJwk(weak.jwk)), /2048/);
});

test('keys that are not strictly RS256 signing keys are skipped, each with the reason', () => {
  const n = key.jwk.n;
  const nBytes = Buffer.from(n, 'base64url');
  const topBitCleared = Buffer.from(nBytes);
  topBitCleared[0] = topBitCleared[0]! & 0x7f;
  const standardN = n.replace(/-/g, '+').replace(/_/g, '/');
  assert.notEqual(standardN, n, 'precondition: n contains - or _');
  const table: [string, Record<string, unknown>, RegExp][] = [
    ['kty EC', { ...key.jwk, kty: 'EC' }, /kty/],
    ['kty oct', { ...key.jwk, kty: 'oct', k: 'c2VjcmV0' }, /kty/],
    ['kty in lower case', { ...key.jwk, kty: 'rsa' }, /kty/],
    ['kty missing', { ...key.jwk, kty: undefined }, /kty/],
    ['use enc', { ...key.jwk, use: 'enc' }, /use/],
    ['use SIG in upper case', { ...key.jwk, use: 'SIG' }, /use/],
    ['use as an array', { ...key.jwk, use: ['sig'] }, /use/],
    ['alg RS512', { ...key.jwk, alg: 'RS512' }, /alg/],
    ['alg PS256', { ...key.jwk, alg: 'PS256' }, /alg/],
    ['alg RSA-OAEP', { ...key.jwk, alg: 'RSA-OAEP' }, /alg/],
    ['alg none', { ...key.jwk, alg: 'none' }, /alg/],
    ['key_ops without verify', { ...key.jwk, key_ops: ['encrypt'] }, /key_ops/],
    ['key_ops as a string', { ...key.jwk, key_ops: 'verify' }, /key_ops/],
    ['e = 1', { ...key.jwk, e: 'AQ' }, /65537/],
    ['e = 3', { ...key.jwk, e: 'Aw' }, /65537/],
    ['e = 65537 with a leading zero octet', { ...key.jwk, e: 'AAEAAQ' }, /65537/],
    ['e = 2^32 + 1', { ...key.jwk, e: 'AQAAAAE' }, /65537/],
    ['e padded', { ...key.jwk, e: 'AQAB=' }, /\be\b/],
    ['e empty', { ...key.jwk, e: '' }, /\be\b/],
    ['e as a number', { ...key.jwk, e: 65537 }, /\be\b/],
    ['e missing', { ...key.jwk, e: undefined }, /\be\b/],
    ['n padded', { ...key.jwk, n: n + '==' }, /\bn\b/],
    ['n in the standard alphabet', { ...key.jwk, n: standardN }, /\bn\b/],
    ['n with a newline inside', { ...key.jwk, n: n.slice(0, 100) + '\n' + n.slice(100) }, /\bn\b/],
    ['n with non-zero trailing bits', { ...key.jwk, n: withTrailingBits(n) }, /\bn\b/],
    ['n empty', { ...key.jwk, n: '' }, /\bn\b/],
    ['n as an array', { ...key.jwk, n: [n] }, /\bn\b/],
    ['n missing', { ...key.jwk, n: undefined }, /\bn\b/],
    ['n of 2047 bits', { ...key.jwk, n: topBitCleared.toString('base64url') }, /2048/],
    ['n of 1024 bits', { ...key.jwk, n: weak.jwk.n }, /2048/],
    ['n all zero octets', { ...key.jwk, n: Buffer.alloc(256).toString('base64url') }, /2048/],
    ['kid missing', { ...key.jwk, kid: undefined }, /kid/],
    ['kid empty', { ...key.jwk, kid: '' }, /kid/],
    ['kid a number', { ...key.jwk, kid: 1 }, /kid/],
  ];
  for (const [name, jwk, why] of table) {
    // Members set to undefined are absent, as they would be in JSON.
    const asServed = JSON.parse(JSON.stringify(jwk)) as unknown;
    assert.match(skipped(importRsaJwk(asServed)), why, name);
  }
});

test('members are read as own properties only, never through the prototype', () => {
  const inherited = Object.create(key.jwk) as object;
  assert.match(skipped(importRsaJwk(inherited)), /kid/);
  const viaProto = JSON.parse(`{"__proto__": ${JSON.stringify(key.jwk)}}`) as unknown;
  assert.match(skipped(importRsaJwk(viaProto)), /kid/);
  const withKidOnly = Object.assign(Object.create({ kty: 'RSA', n: key.jwk.n, e: key.jwk.e }) as object, { kid: 'k' });
  assert.match(skipped(importRsaJwk(withKidOnly)), /kty/);
});

test('the import never throws, whatever it is given', () => {
  const table: unknown[] = [
    undefined,
    null,
    0,
    'RSA',
    [],
    [key.jwk],
    {},
    { kid: 'x' },
    { kid: 'x', kty: 'RSA', n: 1, e: {} },
    { kid: 'x', kty: 'RSA', n: 'AA', e: 'AQAB' },
    { kid: 'x', kty: 'RSA', n: key.jwk.n, e: 'AQAB', use: null, alg: null },
    { kid: 'x', kty: 'RSA', n: key.jwk.n, e: 'AQAB', key_ops: null },
    new Date(),
    () => key.jwk,
  ];
  for (const value of table) {
    const result = importRsaJwk(value);
    assert.ok('skipped' in result && typeof result.skipped === 'string', String(value));
  }
});

function withTrailingBits(segment: string): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const last = alphabet.indexOf(segment.at(-1)!);
  assert.notEqual(segment.length % 4, 0, 'precondition: a partial last quantum');
  return segment.slice(0, -1) + alphabet[last | 1];
}
