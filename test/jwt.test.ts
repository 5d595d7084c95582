import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, createSecretKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { TokenReason } from '../src/errors.js';
import { createKeySet } from '../src/jwks.js';
import { createTokenVerifier, VERIFIER_DEFAULTS, type Claims, type KeyResolver, type Verification, type VerifierOptions } from '../src/jwt.js';
import {
  encodeSegment,
  encodeText,
  forgeForExponentOne,
  generateRsaKey,
  logCollector,
  rsaJwk,
  seededRandom,
  signatureFor,
  signToken,
  startIssuer,
  startRecorder,
  testClock,
  waitUntil,
  type SigningAlg,
  type SigningKey,
  type TestClock,
} from './helpers.js';

// One real issuer on 127.0.0.1 for the whole file. It publishes our signing
// key and three keys that must never be usable: a 1024-bit key, a `use: enc`
// key, and an e = 1 key (with which anyone can forge a signature).
const clock = testClock();
const NOW = clock.seconds();
const AUDIENCE = 'https://gateway.example.com';
const OTHER_AUDIENCE = 'oidc-gateway-staging';
const E1_KID = 'e-is-1';

const [key, attacker, encKey, weak] = await Promise.all([
  generateRsaKey('key-1'),
  generateRsaKey('attacker'),
  generateRsaKey('enc-1'),
  generateRsaKey('weak-1024', 1024),
]);
const issuer = await startIssuer({
  keys: [
    key.jwk,
    weak.jwk,
    rsaJwk(encKey.publicKey, encKey.kid, { use: 'enc', alg: undefined }),
    { kty: 'RSA', kid: E1_KID, n: attacker.jwk.n, e: 'AQ' },
  ],
});
// Where jku and x5u point. It would serve the attacker's key, if anyone asked.
const trap = await startRecorder((_req, res) => {
  res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [attacker.jwk] }));
});
after(() => Promise.all([issuer.close(), trap.close()]));

const logs = logCollector();
const keySet = createKeySet({ issuer: issuer.issuer, jwksUri: issuer.jwksUri, now: clock.now, log: logs.log });
/** Every kid the verifier asked the key set for: parse and alg failures must never get here. */
const asked: string[] = [];
const resolveKey: KeyResolver = (kid) => {
  asked.push(kid);
  return keySet.resolveKey(kid);
};
const trusted = { issuer: issuer.issuer, audiences: [AUDIENCE, OTHER_AUDIENCE], resolveKey };
const verify = createTokenVerifier({ issuers: [trusted], now: clock.now });

type Json = Record<string, unknown>;

function headerWith(over: Json = {}): Json {
  return { alg: 'RS256', typ: 'JWT', kid: key.kid, ...over };
}

function claimsWith(over: Json = {}): Json {
  return {
    iss: issuer.issuer,
    aud: AUDIENCE,
    sub: 'repo:acme/app:ref:refs/heads/main',
    repository: 'acme/app',
    ref: 'refs/heads/main',
    iat: NOW - 10,
    nbf: NOW - 10,
    exp: NOW + 300,
    ...over,
  };
}

/** A token; by default a valid one. Members set to undefined are left out. */
function mint(over: { header?: Json; claims?: Json; key?: SigningKey; alg?: SigningAlg } = {}): string {
  return signToken(headerWith(over.header), claimsWith(over.claims), over.key ?? key.privateKey, { alg: over.alg ?? 'RS256' });
}

/** Signs two ready-made segments with our key, so only their content is wrong. */
function assemble(headerSegment: string, payloadSegment: string, signer: SigningKey = key.privateKey): string {
  const input = `${headerSegment}.${payloadSegment}`;
  return `${input}.${signatureFor('RS256', input, signer).toString('base64url')}`;
}

function split(token: string): [string, string, string] {
  const [h, p, s] = token.split('.');
  return [h!, p!, s!];
}

async function refused(token: string, reason: TokenReason, name = ''): Promise<void> {
  assert.deepEqual(await verify(token), { ok: false, reason }, name);
}

/** Refused before step 3: the key set was never asked. */
async function refusedUnasked(token: string, reason: TokenReason, name = ''): Promise<void> {
  const before = asked.length;
  await refused(token, reason, name);
  assert.equal(asked.length, before, `${name}: the key set was asked for a kid`);
}

async function accepted(token: string, name = ''): Promise<Claims> {
  const result = await verify(token);
  if (!result.ok) assert.fail(`${name}: refused as ${result.reason}`);
  return result.claims;
}

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Sets an unused trailing bit: Buffer.from decodes the same bytes, a strict decoder refuses. */
function withTrailingBits(segment: string): string {
  assert.notEqual(segment.length % 4, 0, 'precondition: a partial last quantum');
  return segment.slice(0, -1) + ALPHABET[ALPHABET.indexOf(segment.at(-1)!) | 1];
}

/** A valid token whose three segments all satisfy a condition (found by varying unused members). */
function findToken(ok: (segment: string) => boolean): string {
  for (let i = 0; i < 10_000; i++) {
    // Five "~" always hold one 3-byte group that encodes as "fn5-".
    const token = mint({ header: { x: `~~~~~${i}` }, claims: { jti: `~~~~~${i}` } });
    if (split(token).every(ok)) return token;
  }
  throw new Error('no such token');
}

// ---------------------------------------------------------------- accepted

test('a well-formed RS256 token from the trusted issuer is accepted with its claims', async () => {
  const claims = await accepted(mint());
  assert.equal(claims.sub, 'repo:acme/app:ref:refs/heads/main');
  assert.equal(claims.iss, issuer.issuer);
  assert.equal(claims.exp, NOW + 300);
  assert.equal(asked.at(-1), key.kid);
});

test('typ may be absent, or JWT in any letter case', async () => {
  for (const typ of [undefined, 'JWT', 'jwt', 'JwT']) {
    await accepted(mint({ header: { typ } }), String(typ));
  }
});

// ---------------------------------------------------------------- 1. parse

test('the empty string is token_missing', async () => {
  await refusedUnasked('', 'token_missing');
});

test('a token that is not exactly three segments is token_malformed', async () => {
  const [h, p, s] = split(mint());
  const table: [string, string][] = [
    ['one segment', h],
    ['two segments', `${h}.${p}`],
    ['header and signature only', `${h}.${s}`],
    ['four segments', `${h}.${p}.${s}.${s}`],
    ['four segments, the last empty', `${h}.${p}.${s}.`],
    ['five segments (a JWE shape)', `${h}.${p}.${p}.${p}.${s}`],
    ['only dots', '..'],
    ['three dots', '...'],
    ['an empty header segment', `.${p}.${s}`],
    ['an empty payload segment', `${h}..${s}`],
  ];
  for (const [name, token] of table) await refusedUnasked(token, 'token_malformed', name);
});

test('padding on any segment is token_malformed', async () => {
  const token = mint();
  for (let i = 0; i < 3; i++) {
    for (const pad of ['=', '==', '===']) {
      const parts = split(token);
      parts[i] += pad;
      await refusedUnasked(parts.join('.'), 'token_malformed', `segment ${i} + ${pad}`);
    }
    // The same bytes as standard padded base64.
    const parts = split(token);
    parts[i] = Buffer.from(parts[i]!, 'base64url').toString('base64').replace(/\+/g, '-').replace(/\//g, '_');
    if (parts[i]!.endsWith('=')) await refusedUnasked(parts.join('.'), 'token_malformed', `segment ${i} padded base64`);
  }
});

test('the standard base64 alphabet (+ and /) in any segment is token_malformed', async () => {
  const token = findToken((segment) => /[-_]/.test(segment));
  for (let i = 0; i < 3; i++) {
    const parts = split(token);
    parts[i] = parts[i]!.replace(/-/g, '+').replace(/_/g, '/');
    // Buffer.from(.., 'base64url') reads these as the very same bytes.
    assert.deepEqual(Buffer.from(parts[i]!, 'base64url'), Buffer.from(split(token)[i]!, 'base64url'));
    await refusedUnasked(parts.join('.'), 'token_malformed', `segment ${i}`);
  }
});

test('whitespace in or around the token is token_malformed', async () => {
  const token = mint();
  const [h, p, s] = split(token);
  const table: [string, string][] = [
    ['a leading space', ` ${token}`],
    ['a trailing space', `${token} `],
    ['a trailing newline', `${token}\n`],
    ['a trailing CR LF', `${token}\r\n`],
    ['a leading tab', `\t${token}`],
    ['a space inside the header', `${h.slice(0, 5)} ${h.slice(5)}.${p}.${s}`],
    ['a newline inside the payload', `${h}.${p.slice(0, 9)}\n${p.slice(9)}.${s}`],
    ['a CR LF inside the signature', `${h}.${p}.${s.slice(0, 100)}\r\n${s.slice(100)}`],
    ['a space after a dot', `${h}. ${p}.${s}`],
    ['a non-breaking space', `${h}.${p}.${s}\u00a0`],
  ];
  for (const [name, bad] of table) await refusedUnasked(bad, 'token_malformed', name);
});

test('non-zero unused trailing bits in any segment are token_malformed', async () => {
  const token = findToken((segment) => segment.length % 4 !== 0);
  for (let i = 0; i < 3; i++) {
    const parts = split(token);
    parts[i] = withTrailingBits(parts[i]!);
    assert.deepEqual(Buffer.from(parts[i]!, 'base64url'), Buffer.from(split(token)[i]!, 'base64url'));
    await refusedUnasked(parts.join('.'), 'token_malformed', `segment ${i}`);
  }
});

test('a header that is not a JSON object is token_malformed', async () => {
  const payload = encodeSegment(claimsWith());
  const table: [string, string][] = [
    ['not JSON', encodeText('not json')],
    ['an array', encodeText('["RS256"]')],
    ['an array holding the header', encodeSegment([headerWith()])],
    ['null', encodeText('null')],
    ['a number', encodeText('256')],
    ['a string', encodeText('"RS256"')],
    ['true', encodeText('true')],
    ['truncated JSON', encodeText(JSON.stringify(headerWith()).slice(0, -1))],
    ['invalid UTF-8', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]).toString('base64url')],
    ['a byte order mark', encodeText('\ufeff' + JSON.stringify(headerWith()))],
  ];
  for (const [name, header] of table) await refusedUnasked(assemble(header, payload), 'token_malformed', name);
});

test('a payload that is an array or a number is token_malformed, even under a valid signature', async () => {
  const header = encodeSegment(headerWith());
  const table: [string, string][] = [
    ['an array', encodeSegment([claimsWith()])],
    ['an empty array', encodeText('[]')],
    ['a number', encodeText(String(NOW + 300))],
    ['a string', encodeText('"repo:acme/app"')],
    ['null', encodeText('null')],
    ['false', encodeText('false')],
    ['not JSON', encodeText('exp=9999999999')],
    ['invalid UTF-8', Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x3a, 0x31, 0x7d]).toString('base64url')],
  ];
  for (const [name, payload] of table) await refusedUnasked(assemble(header, payload), 'token_malformed', name);
});

// ---------------------------------------------------------------- size cap and nesting

/** A valid token of exactly `total` characters, grown with a filler claim. */
function mintOfLength(total: number): string {
  for (let pad = 0; pad < 4; pad++) {
    const h = encodeSegment(headerWith({ x: 'x'.repeat(pad) }));
    const bytes0 = JSON.stringify(claimsWith({ filler: '' })).length;
    const estimate = Math.floor(((total - 344 - h.length) * 3) / 4) - bytes0 - 4;
    for (let f = Math.max(0, estimate); f < estimate + 12; f++) {
      const p = encodeSegment(claimsWith({ filler: 'f'.repeat(f) }));
      if (h.length + p.length + 344 === total) return assemble(h, p);
    }
  }
  throw new Error(`no token of ${total} characters`);
}

test('the default size cap is 8 KiB: a token of exactly 8,192 characters is verified', async () => {
  assert.equal(VERIFIER_DEFAULTS.maxTokenBytes, 8192);
  const token = mintOfLength(8192);
  assert.equal(token.length, 8192);
  await accepted(token);
});

test('a token over the 8 KiB cap is token_malformed before any key lookup', async () => {
  const token = mintOfLength(8193);
  assert.equal(token.length, 8193);
  await refusedUnasked(token, 'token_malformed');
  await refusedUnasked(mint({ claims: { filler: 'f'.repeat(1024 * 1024) } }), 'token_malformed', '1 MiB');
});

test('maxTokenBytes sets another cap', async () => {
  const small = createTokenVerifier({ issuers: [trusted], now: clock.now, maxTokenBytes: 500 });
  const token = mint();
  assert.ok(token.length > 500);
  assert.deepEqual(await small(token), { ok: false, reason: 'token_malformed' });
});

const DEEP = 100_000;

test('a 100,000-deep nested JSON payload is refused by the size cap', async () => {
  const token = assemble(encodeSegment(headerWith()), encodeText('['.repeat(DEEP) + ']'.repeat(DEEP)));
  await refusedUnasked(token, 'token_malformed');
});

test('with the cap raised to 1 MiB, a 100,000-deep nested payload is still token_malformed and never throws', async () => {
  const big = createTokenVerifier({ issuers: [trusted], now: clock.now, maxTokenBytes: 1024 * 1024 });
  const header = encodeSegment(headerWith());
  const table: [string, string][] = [
    ['nested arrays', '['.repeat(DEEP) + ']'.repeat(DEEP)],
    ['nested objects, unclosed', '{"a":'.repeat(DEEP)],
    ['nested arrays, unclosed', '['.repeat(DEEP)],
  ];
  for (const [name, json] of table) {
    assert.deepEqual(await big(assemble(header, encodeText(json))), { ok: false, reason: 'token_malformed' }, name);
  }
});

test('with the cap raised, a signed token carrying a 100,000-deep claim is token_malformed, never throws', async () => {
  const big = createTokenVerifier({ issuers: [trusted], now: clock.now, maxTokenBytes: 1024 * 1024 });
  const json = JSON.stringify(claimsWith()).slice(0, -1) + ',"deep":' + '{"a":'.repeat(DEEP) + '1' + '}'.repeat(DEEP) + '}';
  // V8's JSON.parse is iterative and accepts it, and the claims are then refused past 32 levels; a recursive parser
  // (JSC) may give up on the depth first. Either way the same answer.
  assert.deepEqual(await big(assemble(encodeSegment(headerWith()), encodeText(json))), { ok: false, reason: 'token_malformed' });
});

/** A signed token whose claim `deep` holds `depth` nested arrays (or objects), the payload itself being level 0. */
function nestedClaim(depth: number, kind: 'arrays' | 'objects', signer?: SigningKey): string {
  const value = kind === 'arrays' ? '['.repeat(depth) + ']'.repeat(depth) : '{"a":'.repeat(depth - 1) + '{}' + '}'.repeat(depth - 1);
  return assemble(encodeSegment(headerWith()), encodeText(JSON.stringify(claimsWith()).slice(0, -1) + ',"deep":' + value + '}'), signer);
}

test('claims nested 32 levels deep are accepted with their structure intact and frozen at every level; 33 levels are token_malformed', async () => {
  for (const kind of ['arrays', 'objects'] as const) {
    const claims = await accepted(nestedClaim(32, kind));
    let levels = 0;
    // Frozen at every level: the walk that freezes nested values reaches the bottom.
    for (let v = claims.deep; typeof v === 'object' && v !== null; v = kind === 'arrays' ? (v as unknown[])[0] : (v as Json).a) levels += Object.isFrozen(v) ? 1 : 0;
    assert.equal(levels, 32, kind);
    assert.deepEqual(await verify(nestedClaim(33, kind)), { ok: false, reason: 'token_malformed' }, kind);
    assert.deepEqual(await verify(nestedClaim(500, kind)), { ok: false, reason: 'token_malformed' }, kind);
  }
});

test('nesting is looked at only once the signature verified: a deep payload under a bad signature is signature_invalid', async () => {
  assert.deepEqual(await verify(nestedClaim(2_500, 'arrays', attacker.privateKey)), { ok: false, reason: 'signature_invalid' });
});

// ---------------------------------------------------------------- 2. alg and header

test('alg none, None and NONE with an empty signature (an unsecured JWS) are alg_not_allowed', async () => {
  for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
    const token = mint({ header: { alg }, alg: 'none' });
    assert.ok(token.endsWith('.'), 'precondition: the unsecured form header.payload.');
    await refusedUnasked(token, 'alg_not_allowed', alg);
  }
});

test('alg none carrying real RS256 signature bytes is alg_not_allowed', async () => {
  for (const alg of ['none', 'None', 'NONE']) {
    await refusedUnasked(mint({ header: { alg }, alg: 'RS256' }), 'alg_not_allowed', alg);
  }
});

test('any alg but exactly RS256 is alg_not_allowed, even over a valid RS256 signature', async () => {
  const table: unknown[] = [
    undefined,
    '',
    'rs256',
    'Rs256',
    'RS256 ',
    ' RS256',
    'RS256\u0000',
    'RS384',
    'RS512',
    'PS256',
    'HS256',
    'ES256',
    'EdDSA',
    'RSA-OAEP',
    null,
    256,
    ['RS256'],
    { name: 'RS256' },
  ];
  for (const alg of table) await refusedUnasked(mint({ header: { alg } }), 'alg_not_allowed', JSON.stringify(alg));
});

test('HS256 keyed with the issuer\'s RSA public key (PEM or JWK form) is alg_not_allowed', async () => {
  const table: [string, SigningKey][] = [
    ['the SPKI PEM', key.publicPem],
    ['the JWK JSON', JSON.stringify(key.jwk)],
    ['the JWK JSON with only kty, n and e', JSON.stringify({ kty: 'RSA', n: key.jwk.n, e: key.jwk.e })],
    ['the SPKI DER', key.publicKey.export({ type: 'spki', format: 'der' })],
    ['the modulus n', key.jwk.n],
  ];
  for (const [name, secret] of table) {
    await refusedUnasked(mint({ header: { alg: 'HS256' }, key: secret, alg: 'HS256' }), 'alg_not_allowed', name);
  }
});

test('HMAC bytes keyed with the public key under an RS256 header are signature_invalid', async () => {
  for (const secret of [key.publicPem, JSON.stringify(key.jwk)]) {
    await refused(mint({ key: secret, alg: 'HS256' }), 'signature_invalid');
  }
});

test('RS512 and PS256 tokens signed with the right key are alg_not_allowed', async () => {
  for (const alg of ['RS512', 'PS256'] as const) {
    await refusedUnasked(mint({ header: { alg }, alg }), 'alg_not_allowed', alg);
  }
});

test('RS512 and PS256 signature bytes under an RS256 header are signature_invalid', async () => {
  for (const alg of ['RS384', 'RS512', 'PS256'] as const) {
    await refused(mint({ alg }), 'signature_invalid', alg);
  }
});

test('a typ other than JWT is token_malformed', async () => {
  for (const typ of ['at+jwt', 'JWS', 'JOSE', 'JWT ', '', 1, null, ['JWT']]) {
    await refusedUnasked(mint({ header: { typ } }), 'token_malformed', JSON.stringify(typ));
  }
});

test('crit in any form is token_malformed', async () => {
  const table: Json[] = [
    { crit: ['exp'] },
    { crit: ['http://example.com/ext'], 'http://example.com/ext': true },
    { crit: [] },
    { crit: 'exp' },
    { crit: null },
    { crit: ['b64'], b64: false },
  ];
  for (const header of table) await refusedUnasked(mint({ header }), 'token_malformed', JSON.stringify(header));
});

test('b64: false (an unencoded payload, RFC 7797) is token_malformed', async () => {
  await refusedUnasked(mint({ header: { b64: false } }), 'token_malformed');
  // The RFC 7797 form proper: the payload segment is the raw JSON text.
  const header = encodeSegment(headerWith({ b64: false, crit: ['b64'] }));
  const raw = JSON.stringify(claimsWith());
  const input = `${header}.${raw}`;
  await refusedUnasked(`${input}.${signatureFor('RS256', input, key.privateKey).toString('base64url')}`, 'token_malformed');
});

test('a missing, empty or non-string kid is token_malformed', async () => {
  for (const kid of [undefined, '', 1, 0, null, true, ['key-1'], { kid: 'key-1' }]) {
    await refusedUnasked(mint({ header: { kid } }), 'token_malformed', JSON.stringify(kid));
  }
});

// ---------------------------------------------------------------- 3. key

test('a kid the issuer never published is kid_unknown', async () => {
  const table = ['nope', attacker.kid, 'KEY-1', 'key-1 ', ' key-1', 'key-1\u0000', '__proto__', 'constructor', 'toString', 'hasOwnProperty'];
  for (const kid of table) await refused(mint({ header: { kid } }), 'kid_unknown', kid);
});

test('keys the issuer publishes but must not be used (1024-bit, use enc, e = 1) are kid_unknown', async () => {
  const forgedHeader = encodeSegment(headerWith({ kid: E1_KID }));
  const forgedPayload = encodeSegment(claimsWith({ sub: 'repo:attacker/anything:ref:refs/heads/main' }));
  const forgedInput = `${forgedHeader}.${forgedPayload}`;
  const table: [string, string][] = [
    ['a 1024-bit key, signed with it', mint({ header: { kid: weak.kid }, key: weak.privateKey })],
    ['a use: enc key, signed with it', mint({ header: { kid: encKey.kid }, key: encKey.privateKey })],
    ['an e = 1 key and a signature forged without any private key', `${forgedInput}.${forgeForExponentOne(forgedInput).toString('base64url')}`],
  ];
  for (const [name, token] of table) await refused(token, 'kid_unknown', name);
  // Each was skipped, with a log line naming it, when the set was loaded.
  for (const kid of [weak.kid, encKey.kid, E1_KID]) {
    assert.ok(
      logs.lines.some((l) => l.result === 'key_skipped' && String(l.detail).includes(JSON.stringify(kid))),
      `no key_skipped line for ${kid}`,
    );
  }
});

test('a key embedded in the header (jwk) is never trusted', async () => {
  await refused(mint({ header: { kid: attacker.kid, jwk: attacker.jwk }, key: attacker.privateKey }), 'kid_unknown', 'its own kid');
  await refused(
    mint({ header: { jwk: { ...attacker.jwk, kid: key.kid } }, key: attacker.privateKey }),
    'signature_invalid',
    'under our kid',
  );
});

test('x5c certificates in the header are ignored', async () => {
  const x5c = ['MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA'];
  await refused(mint({ header: { kid: attacker.kid, x5c }, key: attacker.privateKey }), 'kid_unknown');
  await accepted(mint({ header: { x5c } }));
});

test('jku and x5u pointing at a local server are never contacted', async () => {
  const table: [string, Json, SigningKey, TokenReason | 'accepted'][] = [
    ['jku, attacker key and kid', { jku: `${trap.url}/jwks`, kid: attacker.kid }, attacker.privateKey, 'kid_unknown'],
    ['x5u, attacker key and kid', { x5u: `${trap.url}/cert.pem`, kid: attacker.kid }, attacker.privateKey, 'kid_unknown'],
    ['jku, attacker key under our kid', { jku: `${trap.url}/jwks` }, attacker.privateKey, 'signature_invalid'],
    ['x5u, attacker key under our kid', { x5u: `${trap.url}/cert.pem` }, attacker.privateKey, 'signature_invalid'],
    ['jku and x5u on a token otherwise valid', { jku: `${trap.url}/jwks`, x5u: `${trap.url}/c` }, key.privateKey, 'accepted'],
  ];
  for (const [name, header, signer, expected] of table) {
    const token = mint({ header, key: signer });
    if (expected === 'accepted') await accepted(token, name);
    else await refused(token, expected, name);
  }
  // Give any fire-and-forget request time to arrive before counting.
  await delay(50);
  assert.equal(trap.connections(), 0);
  assert.equal(trap.hits(), 0);
});

// ---------------------------------------------------------------- 4. signature

test('a single flipped signature bit is signature_invalid', async () => {
  const [h, p, s] = split(mint());
  const signature = Buffer.from(s, 'base64url');
  for (const [byte, bit] of [[0, 7], [0, 0], [128, 3], [255, 0], [255, 7]] as const) {
    const flipped = Buffer.from(signature);
    flipped[byte] = flipped[byte]! ^ (1 << bit);
    await refused(`${h}.${p}.${flipped.toString('base64url')}`, 'signature_invalid', `byte ${byte} bit ${bit}`);
  }
});

test('a payload swapped under a valid signature is signature_invalid', async () => {
  const [h, , s] = split(mint());
  const table: [string, string][] = [
    ['another repository', encodeSegment(claimsWith({ sub: 'repo:acme/prod:ref:refs/heads/main', repository: 'acme/prod' }))],
    ['a later exp', encodeSegment(claimsWith({ exp: NOW + 86_400 }))],
    ['the same claims serialised with spaces', encodeText(JSON.stringify(claimsWith(), null, 1))],
    ['the payload of another valid token', split(mint({ claims: { jti: 'other' } }))[1]],
  ];
  for (const [name, payload] of table) await refused(`${h}.${payload}.${s}`, 'signature_invalid', name);
});

test('a header changed under a valid signature is signature_invalid', async () => {
  const [, p, s] = split(mint());
  await refused(`${encodeSegment(headerWith({ typ: undefined }))}.${p}.${s}`, 'signature_invalid');
});

test('a token signed by another key under our kid is signature_invalid', async () => {
  await refused(mint({ key: attacker.privateKey }), 'signature_invalid');
  await refused(mint({ key: weak.privateKey }), 'signature_invalid', '1024-bit');
});

test('a signature one octet short or long is signature_invalid', async () => {
  const [h, p, s] = split(mint());
  const signature = Buffer.from(s, 'base64url');
  await refused(`${h}.${p}.${signature.subarray(1).toString('base64url')}`, 'signature_invalid', 'short');
  await refused(`${h}.${p}.${Buffer.concat([Buffer.from([0]), signature]).toString('base64url')}`, 'signature_invalid', 'long');
});

// ---------------------------------------------------------------- 5. claims

test('exp is required and must be a number', async () => {
  const table: [string, Json][] = [
    ['missing', { exp: undefined }],
    ['a numeric string', { exp: String(NOW + 300) }],
    ['null', { exp: null }],
    ['true', { exp: true }],
    ['an array', { exp: [NOW + 300] }],
  ];
  for (const [name, claims] of table) await refused(mint({ claims }), 'token_malformed', name);
  // 1e400 is valid JSON that parses to Infinity.
  const json = JSON.stringify(claimsWith({ exp: undefined })).slice(0, -1) + ',"exp":1e400}';
  await refused(assemble(encodeSegment(headerWith()), encodeText(json)), 'token_malformed', 'Infinity');
});

test('exp past by more than the 60 s skew is token_expired; within the skew it is accepted', async () => {
  assert.equal(VERIFIER_DEFAULTS.clockSkewSeconds, 60);
  const table: [number, TokenReason | 'accepted'][] = [
    [NOW - 86_400, 'token_expired'],
    [NOW - 61, 'token_expired'],
    [NOW - 60, 'token_expired'],
    [NOW - 59, 'accepted'],
    [NOW - 1, 'accepted'],
    [NOW, 'accepted'],
  ];
  for (const [exp, expected] of table) {
    const token = mint({ claims: { exp } });
    if (expected === 'accepted') await accepted(token, `exp now${exp - NOW}`);
    else await refused(token, expected, `exp now${exp - NOW}`);
  }
});

test('nbf and iat further in the future than the skew are token_not_yet_valid', async () => {
  const table: [string, Json, TokenReason | 'accepted'][] = [
    ['nbf now+61', { nbf: NOW + 61 }, 'token_not_yet_valid'],
    ['nbf now+3600', { nbf: NOW + 3600 }, 'token_not_yet_valid'],
    ['nbf now+60', { nbf: NOW + 60 }, 'accepted'],
    ['nbf now+59', { nbf: NOW + 59 }, 'accepted'],
    ['nbf absent', { nbf: undefined }, 'accepted'],
    ['iat now+61', { iat: NOW + 61 }, 'token_not_yet_valid'],
    ['iat now+3600', { iat: NOW + 3600 }, 'token_not_yet_valid'],
    ['iat now+59', { iat: NOW + 59 }, 'accepted'],
    ['iat absent', { iat: undefined }, 'accepted'],
    ['nbf a string', { nbf: String(NOW) }, 'token_malformed'],
    ['nbf null', { nbf: null }, 'token_malformed'],
    ['iat a string', { iat: String(NOW) }, 'token_malformed'],
    ['iat an object', { iat: {} }, 'token_malformed'],
  ];
  for (const [name, claims, expected] of table) {
    const token = mint({ claims });
    if (expected === 'accepted') await accepted(token, name);
    else await refused(token, expected, name);
  }
});

test('clockSkewSeconds 0 leaves no slack', async () => {
  const strict = createTokenVerifier({ issuers: [trusted], now: clock.now, clockSkewSeconds: 0 });
  const table: [string, Json, TokenReason | 'accepted'][] = [
    ['exp now', { exp: NOW }, 'token_expired'],
    ['exp now+1', { exp: NOW + 1 }, 'accepted'],
    ['nbf now+1', { nbf: NOW + 1 }, 'token_not_yet_valid'],
    ['iat now+1', { iat: NOW + 1 }, 'token_not_yet_valid'],
  ];
  for (const [name, claims, expected] of table) {
    const result = await strict(mint({ claims }));
    assert.deepEqual(result.ok ? 'accepted' : result.reason, expected, name);
  }
});

test('maxAgeSeconds refuses tokens issued too long ago, and then requires iat', async () => {
  const young = createTokenVerifier({ issuers: [trusted], now: clock.now, maxAgeSeconds: 600 });
  const table: [string, Json, TokenReason | 'accepted'][] = [
    ['iat now-300', { iat: NOW - 300 }, 'accepted'],
    ['iat now-660 (max age plus skew)', { iat: NOW - 660 }, 'accepted'],
    ['iat now-661', { iat: NOW - 661 }, 'token_expired'],
    ['iat now-86400', { iat: NOW - 86_400 }, 'token_expired'],
    ['iat absent', { iat: undefined }, 'token_malformed'],
  ];
  for (const [name, claims, expected] of table) {
    const result = await young(mint({ claims }));
    assert.deepEqual(result.ok ? 'accepted' : result.reason, expected, name);
  }
});

test('the issuer must match exactly, and an untrusted issuer never reaches a key set', async () => {
  const url = new URL(issuer.issuer);
  const table: [string, unknown][] = [
    ['a trailing slash', `${issuer.issuer}/`],
    ['upper-case scheme', issuer.issuer.replace('http:', 'HTTP:')],
    ['localhost for 127.0.0.1', `http://localhost:${url.port}`],
    ['https for http', issuer.issuer.replace('http:', 'https:')],
    ['a path appended', `${issuer.issuer}/x`],
    ['GitHub\'s issuer', 'https://token.actions.githubusercontent.com'],
    ['missing', undefined],
    ['empty', ''],
    ['an array holding ours', [issuer.issuer]],
    ['a number', 1],
  ];
  for (const [name, iss] of table) await refusedUnasked(mint({ claims: { iss } }), 'issuer_mismatch', name);
});

test('aud, a string or an array, must contain one of our audiences', async () => {
  const table: [string, unknown, TokenReason | 'accepted'][] = [
    ['our audience as a string', AUDIENCE, 'accepted'],
    ['our second audience', OTHER_AUDIENCE, 'accepted'],
    ['an array holding ours', [AUDIENCE], 'accepted'],
    ['an array holding ours among others', ['https://other.example', AUDIENCE], 'accepted'],
    ['missing', undefined, 'audience_mismatch'],
    ['an empty string', '', 'audience_mismatch'],
    ['an empty array', [], 'audience_mismatch'],
    ['an array of an empty string', [''], 'audience_mismatch'],
    ['a prefix of ours', AUDIENCE.slice(0, -1), 'audience_mismatch'],
    ['ours as a prefix of theirs', `${AUDIENCE}.evil.example`, 'audience_mismatch'],
    ['ours with a trailing slash', `${AUDIENCE}/`, 'audience_mismatch'],
    ['ours in upper case', AUDIENCE.toUpperCase(), 'audience_mismatch'],
    ['ours with a trailing space', `${AUDIENCE} `, 'audience_mismatch'],
    ['ours nested in an array', [[AUDIENCE]], 'audience_mismatch'],
    ['an object keyed by ours', { [AUDIENCE]: true }, 'audience_mismatch'],
    ['an array-like object', { 0: AUDIENCE, length: 1 }, 'audience_mismatch'],
    ['a comma-joined string', `https://other.example,${AUDIENCE}`, 'audience_mismatch'],
    ['null', null, 'audience_mismatch'],
    ['a number', 1, 'audience_mismatch'],
  ];
  for (const [name, aud, expected] of table) {
    const token = mint({ claims: { aud } });
    if (expected === 'accepted') await accepted(token, name);
    else await refused(token, expected, name);
  }
});

test('claims are only looked at once the signature holds', async () => {
  const table: [string, Parameters<typeof mint>[0], TokenReason][] = [
    ['expired, foreign signature', { claims: { exp: NOW - 3600 }, key: attacker.privateKey }, 'signature_invalid'],
    ['wrong audience, foreign signature', { claims: { aud: 'someone-else' }, key: attacker.privateKey }, 'signature_invalid'],
    ['not yet valid, foreign signature', { claims: { nbf: NOW + 3600 }, key: attacker.privateKey }, 'signature_invalid'],
    ['exp a string, foreign signature', { claims: { exp: 'soon' }, key: attacker.privateKey }, 'signature_invalid'],
    ['expired, unknown kid', { header: { kid: 'nope' }, claims: { exp: NOW - 3600 } }, 'kid_unknown'],
    ['expired, alg HS256', { header: { alg: 'HS256' }, claims: { exp: NOW - 3600 } }, 'alg_not_allowed'],
    ['expired, kid missing', { header: { kid: undefined }, claims: { exp: NOW - 3600 } }, 'token_malformed'],
  ];
  for (const [name, over, reason] of table) await refused(mint(over), reason, name);
});

test('__proto__ in the payload stays an ordinary own claim of a frozen, null-prototype object', async () => {
  const json = JSON.stringify(claimsWith()).slice(0, -1) + ',"__proto__":{"admin":true,"repository":"acme/prod"},"constructor":{"prototype":{"admin":true}}}';
  const claims = await accepted(assemble(encodeSegment(headerWith()), encodeText(json)));
  assert.equal(Object.getPrototypeOf(claims), null);
  assert.ok(Object.isFrozen(claims));
  assert.ok(Object.hasOwn(claims, '__proto__'));
  assert.deepEqual(claims['__proto__'], { admin: true, repository: 'acme/prod' });
  assert.equal(claims.admin, undefined);
  assert.equal(claims.repository, 'acme/app');
  assert.deepEqual(claims.constructor, { prototype: { admin: true } });
  assert.equal(({} as Json).admin, undefined, 'Object.prototype was polluted');
});

test('verified claims are a frozen, null-prototype object with nothing inherited', async () => {
  const claims = await accepted(mint());
  assert.equal(Object.getPrototypeOf(claims), null);
  assert.ok(Object.isFrozen(claims));
  for (const name of ['constructor', 'toString', 'hasOwnProperty', 'valueOf', '__proto__']) {
    assert.equal(name in claims, false, name);
  }
  assert.throws(() => {
    (claims as Json).sub = 'repo:acme/prod:ref:refs/heads/main';
  }, TypeError);
  assert.equal(claims.sub, 'repo:acme/app:ref:refs/heads/main');
});

// ---------------------------------------------------------------- the key resolver's answers

test('a key resolver that throws is jwks_unavailable, not an exception', async () => {
  const throwing = createTokenVerifier({
    issuers: [{ issuer: issuer.issuer, audiences: [AUDIENCE], resolveKey: () => Promise.reject(new Error('boom')) }],
    now: clock.now,
  });
  assert.deepEqual(await throwing(mint()), { ok: false, reason: 'jwks_unavailable' });
});

test('a key node:crypto refuses to verify with is signature_invalid, never an acceptance or an exception', async () => {
  // Only a host's own resolver can hand over such a key (the key sets import RSA keys alone); verify() throws on each of these.
  const table: [string, unknown][] = [
    ['an Ed25519 public key', generateKeyPairSync('ed25519').publicKey],
    ['a secret key', createSecretKey(Buffer.alloc(32, 1))],
    ['undefined', undefined],
  ];
  for (const [name, odd] of table) {
    const resolveKey = async () => odd as KeyObject;
    const withOdd = createTokenVerifier({ issuers: [{ issuer: issuer.issuer, audiences: [AUDIENCE], resolveKey }], now: clock.now });
    assert.deepEqual(await withOdd(mint()), { ok: false, reason: 'signature_invalid' }, name);
  }
});

test('with the issuer down and no keys, the answer is jwks_unavailable', async () => {
  const gone = await startIssuer({ keys: [key.jwk] });
  await gone.close();
  const goneKeys = createKeySet({ issuer: gone.issuer, now: clock.now });
  const goneVerify = createTokenVerifier({
    issuers: [{ issuer: gone.issuer, audiences: [AUDIENCE], resolveKey: goneKeys.resolveKey }],
    now: clock.now,
  });
  assert.deepEqual(await goneVerify(mint({ claims: { iss: gone.issuer } })), { ok: false, reason: 'jwks_unavailable' });
});

test('with two trusted issuers, the token\'s iss picks which key set is asked', async () => {
  const otherAsked: string[] = [];
  const ourAsked: string[] = [];
  const two = createTokenVerifier({
    issuers: [
      { issuer: issuer.issuer, audiences: [AUDIENCE], resolveKey: (kid) => (ourAsked.push(kid), keySet.resolveKey(kid)) },
      { issuer: 'https://other-issuer.example', audiences: [AUDIENCE], resolveKey: async (kid) => (otherAsked.push(kid), 'kid_unknown' as const) },
    ],
    now: clock.now,
  });
  assert.deepEqual(await two(mint({ claims: { iss: 'https://other-issuer.example' } })), { ok: false, reason: 'kid_unknown' });
  assert.deepEqual([otherAsked, ourAsked], [[key.kid], []]);
  assert.equal((await two(mint())).ok, true);
  assert.deepEqual([otherAsked, ourAsked], [[key.kid], [key.kid]]);
});

// ---------------------------------------------------------------- options and junk

test('verifier options are checked when it is created, naming the option', () => {
  const table: [Partial<VerifierOptions>, RegExp][] = [
    [{ issuers: [] }, /^issuers:/],
    [{ clockSkewSeconds: -1 }, /^clockSkewSeconds:/],
    [{ clockSkewSeconds: Number.NaN }, /^clockSkewSeconds:/],
    [{ maxTokenBytes: 0 }, /^maxTokenBytes:/],
    [{ maxTokenBytes: 0.5 }, /^maxTokenBytes:/], // floored, as a config's 8192.5 is
    [{ maxAgeSeconds: 0 }, /^maxAgeSeconds:/],
    [{ maxAgeSeconds: Number.POSITIVE_INFINITY }, /^maxAgeSeconds:/],
  ];
  for (const [bad, message] of table) {
    assert.throws(() => createTokenVerifier({ issuers: [trusted], ...bad }), { name: 'TypeError', message }, JSON.stringify(bad));
  }
});

test('the verifier never throws for garbage input', async () => {
  const valid = mint();
  const table = [
    '.',
    '..',
    '...',
    'null',
    'undefined',
    '[object Object]',
    'Bearer',
    `Bearer ${valid}`,
    `${valid},${valid}`,
    '\u0000',
    '\u0000.\u0000.\u0000',
    '🚀.🚀.🚀',
    '\ud800.\udfff.x',
    'eyJhbGciOiJSUzI1NiJ9.e30.AA',
    'eyJhbGciOiJSUzI1NiJ9.eyJhbGciOiJSUzI1NiJ9.eyJhbGciOiJSUzI1NiJ9',
    'A.B.C',
    '=.=.=',
    '%2e.%2e.%2e',
    '<script>alert(1)</script>',
    ' '.repeat(9000),
    '.'.repeat(9000),
  ];
  const random = seededRandom(42);
  const chars = `${ALPHABET}.=+/ \n\u0000é🚀{}"`;
  for (let i = 0; i < 300; i++) {
    const length = Math.floor(random() * 120);
    let text = '';
    for (let j = 0; j < length; j++) text += chars[Math.floor(random() * chars.length)];
    if (text !== '') table.push(text);
  }
  for (const junk of table) await refusedUnasked(junk, 'token_malformed', JSON.stringify(junk.slice(0, 60)));
  // Junk that happens to parse is refused at the first rule it breaks.
  await refusedUnasked('e30.e30.e30', 'alg_not_allowed', '{}.{}.{}');
  await refusedUnasked('eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIn0.e30.e30', 'issuer_mismatch', 'RS256 header, {} payload');
});

// ---------------------------------------------------------------- the verified-token cache

interface Cached {
  readonly verify: (token: string) => Promise<Verification>;
  /** The key set: kid to key or to what the resolver answers; change it between verifications. */
  readonly keys: Map<string, KeyObject | 'jwks_unavailable'>;
  /** Every kid asked, and every onCache call, in order. */
  readonly kids: string[];
  readonly events: boolean[];
  readonly time: TestClock;
  /** While true, the key set's answers wait in `held` until called. */
  hold: boolean;
  readonly held: (() => void)[];
}

/** A verifier over an in-memory key set holding our key, on a clock of its own. */
function cachedVerifier(opts: Partial<VerifierOptions> = {}): Cached {
  const c: Cached = { verify: (t) => verify(t), keys: new Map([[key.kid, key.publicKey]]), kids: [], events: [], time: testClock(clock.now()), hold: false, held: [] };
  const resolveKey: KeyResolver = (kid) => {
    c.kids.push(kid);
    return new Promise((resolve) => {
      const answer = () => resolve(c.keys.get(kid) ?? 'kid_unknown');
      if (c.hold) c.held.push(answer);
      else answer();
    });
  };
  const verify = createTokenVerifier({ issuers: [{ issuer: issuer.issuer, audiences: [AUDIENCE], resolveKey }], now: c.time.now, onCache: (hit) => c.events.push(hit), ...opts });
  return c;
}

/** One verification: 'accepted' or the reason, and what onCache was told meanwhile. */
async function outcome(c: Cached, token: string): Promise<[string, boolean[]]> {
  const from = c.events.length;
  const result = await c.verify(token);
  return [result.ok ? 'accepted' : result.reason, c.events.slice(from)];
}

const [tokenA, tokenB, tokenC] = ['a', 'b', 'c'].map((jti) => mint({ claims: { jti } })) as [string, string, string];

/** Verifies each token twice, so each is cached (placed in this order); onCache's record starts afresh after. */
async function prime(c: Cached, tokens: readonly string[]): Promise<void> {
  for (const t of tokens) for (let i = 0; i < 2; i++) assert.equal((await c.verify(t)).ok, true);
  c.events.length = 0;
}

test('a token is cached from its second verification: the third is a hit, with the same frozen claims, and the key set asked again', async () => {
  assert.equal(VERIFIER_DEFAULTS.cacheSize, 10_000);
  const c = cachedVerifier();
  const [first, second, third] = [await c.verify(tokenA), await c.verify(tokenA), await c.verify(tokenA)];
  assert.ok(first.ok && second.ok && third.ok);
  assert.notEqual(second.claims, first.claims, 'the second verification went the full way');
  assert.equal(third.claims, second.claims);
  assert.ok(Object.isFrozen(third.claims));
  assert.deepEqual(c.events, [false, false, true]);
  assert.deepEqual(c.kids, [key.kid, key.kid, key.kid]);
});

test('the cache holds tokens verified twice, keyed by the exact token, and drops the least recently placed first', async () => {
  const table: [string, number, string[], string[], boolean[]][] = [
    ['tokens verified once are never cached', 10, [], [tokenA, tokenB, tokenC, tokenA], [false, false, false, false]],
    ['one-shot tokens push out no cached token', 1, [tokenA], [tokenB, tokenC, tokenA], [false, false, true]],
    ['room for 2: placing C drops A, the oldest; A must then be seen twice again', 2, [tokenA, tokenB], [tokenC, tokenC, tokenA, tokenB, tokenC, tokenA], [false, false, false, true, true, false]],
    ['room for 1', 1, [tokenA], [tokenA, tokenB, tokenB, tokenA], [true, false, false, false]],
    // Unfloored, A hit placed 1 ago would not move (1 < 2.5 / 2), and placing C would drop A instead of B.
    ['cacheSize 2.5 is floored to 2', 2.5, [tokenA, tokenB], [tokenA, tokenC, tokenC, tokenA], [true, false, false, true]],
  ];
  for (const [name, cacheSize, primed, tokens, hits] of table) {
    const c = cachedVerifier({ cacheSize });
    await prime(c, primed);
    for (const t of tokens) assert.deepEqual((await outcome(c, t))[0], 'accepted', name);
    assert.deepEqual(c.events, hits, name);
  }
});

test('a token verified once leaves only its 12-character slot behind, not the token text', async () => {
  // V8 (and JSC) copy a substring shorter than 13 characters; a longer one shares its token's memory, and would keep every
  // one-shot token alive while its slot is remembered. Each token text here is made for its call and dropped after.
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const heapUsed = () => (gc(), gc(), process.memoryUsage().heapUsed);
  const c = cachedVerifier();
  // Tokens of 6 KB, so that one kept alive stands out from what else a verification leaves behind (under 1 KB).
  const parts = Array.from({ length: 400 }, (_, i) => split(mint({ claims: { jti: `one-shot-${i}`, filler: 'f'.repeat(4_000) } })));
  const verifyOnce = async (batch: typeof parts) => {
    for (const segments of batch) assert.equal((await c.verify(segments.join('.'))).ok, true);
  };
  await verifyOnce(parts.slice(0, 100)); // compiled and warm, so the heap grows by what is kept alone
  const before = heapUsed();
  await verifyOnce(parts.slice(100));
  const perToken = (heapUsed() - before) / 300;
  const tokenLength = parts[0]!.join('.').length;
  assert.ok(perToken < tokenLength / 4, `${Math.round(perToken)} bytes kept per token verified once (a token is ${tokenLength})`);
});

test('the slots of tokens verified once are bounded like the cache, oldest first, and a cached token\'s slot leaves them', async () => {
  // Room for 2: A, B and C seen once; C's slot pushes out A's, so A verified again is only seen again, while C is cached.
  const c = cachedVerifier({ cacheSize: 2 });
  for (const t of [tokenA, tokenB, tokenC, tokenA, tokenC, tokenA, tokenC]) await c.verify(t);
  assert.deepEqual(c.events, [false, false, false, false, false, false, true]);
  // X seen once, A cached, Y seen once: A's slot left when A was cached, so X's is still there and X is cached when verified again.
  const d = cachedVerifier({ cacheSize: 2 });
  const [x, y] = ['x', 'y'].map((jti) => mint({ claims: { jti } })) as [string, string];
  await d.verify(x);
  await prime(d, [tokenA]);
  for (const t of [y, x, x]) await d.verify(t);
  assert.deepEqual(d.events, [false, false, true]);
});

test('a cached token is found by its signature but served only to the very same token text', async () => {
  // The cache looks tokens up by their last 12 characters: anything else ending the same way is verified in full, and refused
  // here, and the cached token is still served after it.
  const c = cachedVerifier();
  await prime(c, [tokenA]);
  const [h, p, sig] = split(tokenA);
  const [, otherPayload] = split(mint({ claims: { repository: 'octo-org/other-repo' } }));
  const table: [string, string, TokenReason][] = [
    ['another payload under the cached signature', `${h}.${otherPayload}.${sig}`, 'signature_invalid'],
    ['another header under the cached signature', `${encodeSegment(headerWith({ typ: 'jwt' }))}.${p}.${sig}`, 'signature_invalid'],
    ['the cached signature cut to its last 12 characters', `${h}.${p}.${sig.slice(-12)}`, 'signature_invalid'],
    ['the cached token with a character in front', `x${tokenA}`, 'token_malformed'],
    ['the cached token with the last 12 characters alone', tokenA.slice(-12), 'token_malformed'],
  ];
  for (const [name, token, reason] of table) {
    assert.equal(token.slice(-12), tokenA.slice(-12), name);
    assert.deepEqual(await outcome(c, token), [reason, [false]], name);
    assert.deepEqual(await outcome(c, tokenA), ['accepted', [true]], `${name}: the cached token is still served`);
  }
  // A host calling from plain JavaScript may pass anything: what is not the cached string itself is refused, never thrown on.
  for (const odd of [undefined, null, 42, new String(tokenA), { toString: () => tokenA }]) {
    assert.deepEqual(await outcome(c, odd as unknown as string), ['token_malformed', [false]], String(odd).slice(0, 20));
  }
});

test('a full cache of 100 or more drops its oldest 1% at once, in placement order', async () => {
  // Finding the oldest Map entry walks the deleted ones before it: dropping 1% at a time walks them once per 1%.
  const c = cachedVerifier({ cacheSize: 200 });
  const tokens = Array.from({ length: 201 }, (_, i) => mint({ claims: { jti: `t${i}` } }));
  await prime(c, tokens);
  const from = c.events.length;
  // The 201st token took the cache over 200: down to 198, so the first three are gone and the rest are all there.
  for (const t of [...tokens].reverse()) assert.equal((await c.verify(t)).ok, true);
  assert.deepEqual(c.events.slice(from), [...Array<boolean>(198).fill(true), false, false, false]);
});

test('a hit moves a token to the recently used end only from the older half: a token is kept for cacheSize / 2 placements after its last use', async () => {
  // Moving a Map entry leaves a deleted one in its bucket until the table is rehashed; a hot token moved on every hit would
  // make its own lookups walk thousands of them. So with room for 4: A B C D placed, D and C hit (recent half, not moved),
  // E, F, G placed: A, B, then C are dropped in placement order, though D was used before C. A, hit from the older half, moves.
  // A token verified a second time is placed: e, f and g are each verified twice below.
  const [a, b, c, d, e, f, g] = ['a', 'b', 'c', 'd', 'e', 'f', 'g'].map((jti) => mint({ claims: { jti } })) as [string, string, string, string, string, string, string];
  const table: [string, string[], boolean[]][] = [
    ['recent hits keep placement order', [d, c, e, e, f, f, g, g, d, c], [true, true, false, false, false, false, false, false, true, false]],
    ['a hit from the older half moves', [a, e, e, a, b], [true, false, false, true, false]],
    ['a hit placed exactly cacheSize / 2 ago moves', [b, e, e, f, f, g, g, b], [true, false, false, false, false, false, false, true]],
  ];
  for (const [name, tokens, hits] of table) {
    const cached = cachedVerifier({ cacheSize: 4 });
    await prime(cached, [a, b, c, d]);
    for (const t of tokens) assert.deepEqual((await outcome(cached, t))[0], 'accepted', name);
    assert.deepEqual(cached.events, hits, name);
  }
});

test('a failed verification is never cached: every attempt goes the full way', async () => {
  const table: [string, string, TokenReason][] = [
    ['a foreign signature', mint({ key: attacker.privateKey }), 'signature_invalid'],
    ['expired', mint({ claims: { exp: NOW - 3600 } }), 'token_expired'],
    ['another audience', mint({ claims: { aud: 'someone-else' } }), 'audience_mismatch'],
    ['an unknown kid', mint({ header: { kid: 'nope' } }), 'kid_unknown'],
    ['junk', 'not-a.jwt.at-all', 'token_malformed'],
  ];
  for (const [name, token, reason] of table) {
    const c = cachedVerifier();
    for (let i = 0; i < 3; i++) assert.deepEqual(await outcome(c, token), [reason, [false]], `${name}, attempt ${i + 1}`);
  }
});

test('cacheSize 0 (or below 1) turns the cache off: onCache is never called and every token is verified in full', async () => {
  for (const cacheSize of [0, 0.9]) {
    const c = cachedVerifier({ cacheSize });
    const results = [await c.verify(tokenA), await c.verify(tokenA)];
    assert.ok(results[0]!.ok && results[1]!.ok);
    assert.notEqual(results[1].claims, results[0].claims, 'a fresh claims object: the token was verified again');
    assert.deepEqual([c.events, c.kids.length], [[], 2], String(cacheSize));
  }
});

test('the claims of a cached token are checked again on every hit, and a token refused there is not served again', async () => {
  const table: [string, Partial<VerifierOptions>, Json, number, TokenReason | 'accepted'][] = [
    ['exp passed by the 60 s skew', {}, { exp: NOW + 300 }, 360_000, 'token_expired'],
    ['exp passed, within the skew', {}, { exp: NOW + 300 }, 359_000, 'accepted'],
    ['older than maxAgeSeconds plus the skew', { maxAgeSeconds: 600 }, { iat: NOW - 10, exp: NOW + 3600 }, 651_000, 'token_expired'],
    ['the clock set back before nbf', {}, { nbf: NOW }, -61_000, 'token_not_yet_valid'],
    ['the clock set back before iat', {}, { nbf: undefined, iat: NOW }, -61_000, 'token_not_yet_valid'],
  ];
  for (const [name, opts, claims, move, expected] of table) {
    const c = cachedVerifier(opts);
    const token = mint({ claims });
    await prime(c, [token]);
    c.time.advance(move);
    assert.deepEqual(await outcome(c, token), [expected, [true]], name);
    if (expected === 'accepted') continue;
    assert.deepEqual(await outcome(c, token), [expected, [false]], `${name}: refused again, in full`);
    c.time.advance(-move);
    assert.deepEqual(await outcome(c, token), ['accepted', [false]], `${name}: back in time, verified in full`);
  }
});

test('a cached token is only served while the key set answers with the very same key', async () => {
  const table: [string, (keys: Cached['keys']) => unknown, TokenReason | 'accepted'][] = [
    ['the kid dropped from the key set', (keys) => keys.delete(key.kid), 'kid_unknown'],
    ['another key under the same kid', (keys) => keys.set(key.kid, attacker.publicKey), 'signature_invalid'],
    ['the key set unavailable', (keys) => keys.set(key.kid, 'jwks_unavailable'), 'jwks_unavailable'],
    ['the same key, imported again (a refetch)', (keys) => keys.set(key.kid, createPublicKey(key.publicPem)), 'accepted'],
  ];
  for (const [name, change, expected] of table) {
    const c = cachedVerifier();
    await prime(c, [tokenA]);
    change(c.keys);
    assert.deepEqual(await outcome(c, tokenA), [expected, [false]], `${name}: verified in full`);
    // Refused: dropped from the cache, so verified in full once the key is back (and seen once more). Accepted: cached under the new key.
    if (expected !== 'accepted') c.keys.set(key.kid, key.publicKey);
    assert.deepEqual(await outcome(c, tokenA), ['accepted', [expected === 'accepted']], `${name}: then`);
  }
});

test('onCache is told exactly once per verification, also when a cached token is refused on its hit', async () => {
  const c = cachedVerifier();
  const token = mint({ claims: { exp: NOW + 300 } });
  await prime(c, [token]);
  c.time.advance(3_600_000);
  assert.equal((await outcome(c, token))[0], 'token_expired');
  assert.deepEqual(c.events, [true], `onCache calls: ${JSON.stringify(c.events)}`);
});

test('a token verified by two requests at once is placed at the recently used end by the later one', async () => {
  // Room for 3: X, seen once, misses twice at once; the first completes, A and B are placed, then the second completes. X must
  // now count as the newest (a Map keeps an existing key where it was on set), so C then D push out A and B, not X.
  const c = cachedVerifier({ cacheSize: 3 });
  const x = mint({ claims: { jti: 'x' } });
  await c.verify(x);
  c.hold = true;
  const [first, second] = [c.verify(x), c.verify(x)];
  await waitUntil(() => c.held.length === 2);
  c.held[0]!();
  await first;
  c.hold = false;
  await prime(c, [tokenA, tokenB]);
  c.held[1]!();
  await second;
  await prime(c, [tokenC, mint({ claims: { jti: 'd' } })]);
  assert.deepEqual(await outcome(c, x), ['accepted', [true]]);
});

test('a hit that waited on its key set leaves alone an entry placed for the same token meanwhile', async () => {
  // Room for 2: A cached (entry 1); a hit of A waits on its key; meanwhile C pushes A out and A is verified twice again (entry 2).
  // The waiting hit, resumed, must neither move entry 1 back over entry 2 nor, when its claims are refused, drop entry 2.
  for (const expire of [false, true]) {
    const c = cachedVerifier({ cacheSize: 2 });
    const a = mint({ claims: { jti: `waited-${expire}`, exp: NOW + 300 } });
    await prime(c, [a, tokenB]);
    c.hold = true;
    const waiting = c.verify(a);
    await waitUntil(() => c.held.length === 1);
    c.hold = false;
    await prime(c, [tokenC]); // C placed: A, the oldest, is pushed out
    await c.verify(a); // seen again
    const second = await c.verify(a); // placed again: entry 2
    assert.ok(second.ok);
    if (expire) c.time.advance(3_600_000);
    c.events.length = 0;
    c.held[0]!();
    assert.deepEqual((await waiting).ok, !expire, `expire ${expire}: the waiting hit`);
    const next = await c.verify(a);
    if (!expire) assert.equal(next.ok && next.claims, second.claims, 'entry 2 serves the next hit');
    // Expired: entry 2 is still there, so the next verification is a hit, refused.
    assert.deepEqual(c.events, [true, true], `expire ${expire}: onCache`);
  }
});

test('a hit and a miss interleaved never leave more than cacheSize tokens in the cache', async () => {
  const c = cachedVerifier({ cacheSize: 2 });
  await prime(c, [tokenA, tokenB]);
  await c.verify(tokenC); // seen once: its next verification places it
  c.hold = true;
  const hitA = c.verify(tokenA); // A stays in the cache while its key is asked
  await waitUntil(() => c.held.length === 1);
  const missC = c.verify(tokenC);
  await waitUntil(() => c.held.length === 2);
  c.held[1]!();
  await missC; // C in beside B, A (the oldest) out
  c.held[0]!();
  await hitA; // served, but not put back
  c.hold = false;
  const from = c.events.length;
  for (const t of [tokenA, tokenB, tokenC]) assert.equal((await c.verify(t)).ok, true);
  const hits = c.events.slice(from);
  assert.ok(hits.filter(Boolean).length <= 2, `three tokens served from a cache of 2: ${JSON.stringify(hits)}`);
});

test('cacheSize is checked when the verifier is created, naming the option', () => {
  for (const cacheSize of [-1, -0.5, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
    assert.throws(() => createTokenVerifier({ issuers: [trusted], cacheSize }), { name: 'TypeError', message: /^cacheSize:/ }, String(cacheSize));
  }
});

test('claims are frozen all the way down, so a cached token hands every request the same untouchable claims', async () => {
  const token = mint({ claims: { jti: 'deep', aud: [AUDIENCE, 'other'], nested: { list: [1, { x: 2 }] } } });
  const first = await accepted(token);
  for (const v of [first, first.aud, first.nested, (first.nested as Json).list, ((first.nested as Json).list as Json[])[1]]) assert.ok(Object.isFrozen(v));
  assert.throws(() => (first.aud as string[]).push('x'), TypeError);
  const second = await accepted(token);
  assert.equal(await accepted(token), second, 'the cached verification returns the very same claims');
});
