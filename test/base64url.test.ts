import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeBase64url } from '../src/base64url.js';
import { seededRandom } from './helpers.js';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

test('canonical unpadded base64url decodes to its bytes', () => {
  const table: [string, number[]][] = [
    ['', []],
    ['AA', [0]],
    ['AAA', [0, 0]],
    ['AAAA', [0, 0, 0]],
    ['_w', [0xff]],
    ['__8', [0xff, 0xff]],
    ['____', [0xff, 0xff, 0xff]],
    ['-_-_', [0xfb, 0xff, 0xbf]],
    ['eyJhbGciOiJSUzI1NiJ9', [...Buffer.from('{"alg":"RS256"}')]],
  ];
  for (const [text, bytes] of table) {
    assert.deepEqual(decodeBase64url(text), Buffer.from(bytes), JSON.stringify(text));
  }
});

test('every byte string of length 0 to 64 round-trips through its one encoding', () => {
  const random = seededRandom(1);
  for (let length = 0; length <= 64; length++) {
    for (let round = 0; round < 8; round++) {
      const bytes = Buffer.from(Array.from({ length }, () => Math.floor(random() * 256)));
      assert.deepEqual(decodeBase64url(bytes.toString('base64url')), bytes);
    }
  }
});

test('Buffer.from itself is lenient, which is why a strict decoder is needed', () => {
  // The trap this module exists for (../shared/RUNTIME-NOTES.md): these all decode "successfully".
  assert.deepEqual(Buffer.from('AB', 'base64url'), Buffer.from('AA', 'base64url'));
  assert.deepEqual(Buffer.from('A A==', 'base64url'), Buffer.from('AA', 'base64url'));
  assert.deepEqual(Buffer.from('+/', 'base64url'), Buffer.from('-_', 'base64url'));
});

test('anything but canonical unpadded base64url is refused', () => {
  const table: [string, string][] = [
    ['a length of 1 mod 4', 'A'],
    ['a length of 5', 'AAAAA'],
    ['one padding character', 'AAA='],
    ['two padding characters', 'AA=='],
    ['padding on a full quantum', 'AAAA===='],
    ['a lone padding character', '='],
    ['the standard alphabet +', 'AA+A'],
    ['the standard alphabet /', 'AA/A'],
    ['a leading space', ' AAA'],
    ['a trailing space', 'AAA '],
    ['an inner space', 'AA AA'],
    ['a trailing newline', 'AAAA\n'],
    ['a CR LF inside', 'AA\r\nAA'],
    ['a tab', 'AA\tA'],
    ['a dot', 'AA.A'],
    ['a NUL', 'AAA\u0000'],
    ['a non-ASCII letter', 'AAé'],
    ['a full-width letter', 'AAＡ'],
    ['a lone surrogate', 'AA\ud800'],
    ['an emoji', 'A🚀'],
    ['non-zero trailing bits after one byte', 'AB'],
    ['non-zero trailing bits after one byte (high)', 'AP'],
    ['non-zero trailing bits after two bytes', 'AAB'],
    ['non-zero trailing bits after two bytes (high)', 'AAD'],
    // {"a":1} is eyJhIjoxfQ; R leaves its unused low bits non-zero.
    ['non-zero trailing bits in real data', 'eyJhIjoxfR'],
  ];
  for (const [name, text] of table) {
    assert.equal(decodeBase64url(text), undefined, name);
  }
});

test('of all 4,096 two-character strings exactly 256 decode, one per byte value', () => {
  const seen = new Set<number>();
  for (const a of ALPHABET) {
    for (const b of ALPHABET) {
      const bytes = decodeBase64url(a + b);
      if (!bytes) continue;
      assert.equal(bytes.length, 1);
      assert.ok(!seen.has(bytes[0]!), `byte ${bytes[0]} has two spellings`);
      seen.add(bytes[0]!);
      // The unused low 4 bits of the second character are zero.
      assert.equal(ALPHABET.indexOf(b) & 0x0f, 0, a + b);
    }
  }
  assert.equal(seen.size, 256);
});

test('of all 262,144 three-character strings exactly 65,536 decode, one per byte pair', () => {
  const seen = new Set<number>();
  for (const a of ALPHABET) {
    for (const b of ALPHABET) {
      for (const c of ALPHABET) {
        const bytes = decodeBase64url(a + b + c);
        if (!bytes) continue;
        const value = (bytes[0]! << 8) | bytes[1]!;
        assert.ok(!seen.has(value), `bytes ${value} have two spellings`);
        seen.add(value);
      }
    }
  }
  assert.equal(seen.size, 65_536);
});

test('random junk never throws', () => {
  const random = seededRandom(7);
  const chars = ALPHABET + '+/=. \n\t\r\u0000é🚀\ud800';
  for (let i = 0; i < 2_000; i++) {
    const length = Math.floor(random() * 40);
    let text = '';
    for (let j = 0; j < length; j++) text += chars[Math.floor(random() * chars.length)];
    const bytes = decodeBase64url(text);
    // Whatever is accepted has exactly this one spelling.
    if (bytes) assert.equal(bytes.toString('base64url'), text);
  }
});
