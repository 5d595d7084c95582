import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { createKeySet, KEYSET_DEFAULTS, type KeySet, type KeySetOptions } from '../src/jwks.js';
import type { KeyResolver } from '../src/jwt.js';
import {
  countingFetch,
  DISCOVERY_PATH,
  generateRsaKey,
  JWKS_PATH,
  logCollector,
  rsaJwk,
  seededRandom,
  startIssuer,
  startRecorder,
  testClock,
  type FetchCounter,
  type Issuer,
  type LogCollector,
  type ResponsePlan,
  type TestClock,
  type TestKey,
} from './helpers.js';

const [k1, k2, weak] = await Promise.all([generateRsaKey('key-1'), generateRsaKey('key-2'), generateRsaKey('weak-1024', 1024)]);
const GITHUB = 'https://token.actions.githubusercontent.com';
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

interface Rig {
  readonly issuer: Issuer;
  readonly clock: TestClock;
  readonly counter: FetchCounter;
  readonly logs: LogCollector;
  readonly keySet: KeySet;
  /** When the clock started: the time of the first fetch. */
  readonly t0: number;
}

/** A real issuer and a key set reading it (through jwksUri unless discovery is asked for). */
async function rig(
  t: TestContext,
  opts: { keys?: unknown[]; discovery?: boolean; options?: Partial<KeySetOptions> } = {},
): Promise<Rig> {
  const issuer = await startIssuer({ keys: opts.keys ?? [k1.jwk] });
  t.after(() => issuer.close());
  const clock = testClock();
  const counter = countingFetch();
  const logs = logCollector();
  const keySet = createKeySet({
    issuer: issuer.issuer,
    ...(opts.discovery ? {} : { jwksUri: issuer.jwksUri }),
    fetch: counter.fetch,
    now: clock.now,
    log: logs.log,
    ...opts.options,
  });
  t.after(() => keySet.stop());
  return { issuer, clock, counter, logs, keySet, t0: clock.now() };
}

type Resolved = Awaited<ReturnType<KeyResolver>>;

function assertKey(result: Resolved, expected: TestKey, name = ''): void {
  if (typeof result === 'string') assert.fail(`${name}: expected the key ${expected.kid}, got ${result}`);
  assert.equal(result.type, 'public', name);
  assert.equal(result.export({ format: 'jwk' }).n, expected.jwk.n, name);
}

function lastError(logs: LogCollector): Record<string, unknown> | undefined {
  return logs.lines.findLast((l) => l.result === 'error');
}

function randomKids(count: number, seed: number): string[] {
  const random = seededRandom(seed);
  return Array.from({ length: count }, () => `kid-${Math.floor(random() * 2 ** 48).toString(36)}`);
}

// ---------------------------------------------------------------- sources

test('the defaults are a 5 s fetch timeout, 30 s cooldown, 10 min max age clamped to [60 s, 24 h], 24 h stale, 1 MiB body', () => {
  assert.deepEqual(KEYSET_DEFAULTS, {
    fetchTimeoutMs: 5_000,
    cooldownMs: 30_000,
    maxAgeMs: 600_000,
    minMaxAgeMs: 60_000,
    maxMaxAgeMs: 86_400_000,
    staleIfErrorMs: 86_400_000,
    maxBodyBytes: 1024 * 1024,
  });
});

test('OpenID discovery finds the key set, and the kid resolves to the published key', async (t) => {
  const { issuer, counter, keySet, t0 } = await rig(t, { discovery: true });
  assertKey(await keySet.resolveKey(k1.kid), k1);
  assert.deepEqual(counter.calls, [issuer.discoveryUri, issuer.jwksUri]);
  assert.equal(issuer.hits(DISCOVERY_PATH), 1);
  assert.equal(issuer.hits(JWKS_PATH), 1);
  assert.match(String(issuer.requests[0]!.headers.accept), /application\/json/);
  assert.deepEqual(keySet.status(), { keys: 1, usable: true, lastGoodFetch: t0 });
});

test('the jwks_uri named by the discovery document is the one fetched', async (t) => {
  const keys = await startRecorder((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [k2.jwk] }));
  });
  t.after(() => keys.close());
  const { issuer, keySet } = await rig(t, { discovery: true });
  issuer.document = { issuer: issuer.issuer, jwks_uri: `${keys.url}/elsewhere/keys.json` };
  assertKey(await keySet.resolveKey(k2.kid), k2);
  assert.equal(issuer.hits(JWKS_PATH), 0);
  assert.deepEqual(keys.requests.map((r) => r.url), ['/elsewhere/keys.json']);
});

test('an explicit jwksUri is fetched directly, without discovery', async (t) => {
  const { issuer, counter, keySet } = await rig(t);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  assert.deepEqual(counter.calls, [issuer.jwksUri]);
  assert.equal(issuer.hits(DISCOVERY_PATH), 0);
});

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'oidc-gateway-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('a jwksFile is read from disk and nothing is fetched', async (t) => {
  const file = join(await tempDir(t), 'jwks.json');
  await writeFile(file, JSON.stringify({ keys: [k1.jwk, k2.jwk] }));
  const counter = countingFetch();
  const keySet = createKeySet({ issuer: GITHUB, jwksFile: file, fetch: counter.fetch, now: testClock().now });
  assertKey(await keySet.resolveKey(k1.kid), k1);
  assertKey(await keySet.resolveKey(k2.kid), k2);
  assert.equal(await keySet.resolveKey('nope'), 'kid_unknown');
  assert.deepEqual(counter.calls, []);
});

test('a jwksFile that is missing, not a JWK Set or over 1 MiB leaves the resolver jwks_unavailable', async (t) => {
  const dir = await tempDir(t);
  const table: [string, string | undefined, RegExp][] = [
    ['a missing file', undefined, /ENOENT/],
    ['not JSON', 'keys: []', /JSON/],
    ['an array', JSON.stringify([k1.jwk]), /keys/],
    ['keys not an array', JSON.stringify({ keys: k1.jwk }), /keys/],
    ['no usable key', JSON.stringify({ keys: [weak.jwk] }), /no usable/],
    ['over 1 MiB', JSON.stringify({ keys: [k1.jwk], padding: ' '.repeat(1024 * 1024) }), /1 MiB/],
  ];
  for (const [i, [name, content, detail]] of table.entries()) {
    const file = join(dir, `jwks-${i}.json`);
    if (content !== undefined) await writeFile(file, content);
    const logs = logCollector();
    const keySet = createKeySet({ issuer: GITHUB, jwksFile: file, now: testClock().now, log: logs.log });
    assert.equal(await keySet.resolveKey(k1.kid), 'jwks_unavailable', name);
    assert.match(String(lastError(logs)?.detail), detail, name);
  }
});

// ---------------------------------------------------------------- construction

test('issuer and key URLs must be https, or http to a loopback host, checked at construction', () => {
  const table: [string, Partial<KeySetOptions>, RegExp][] = [
    ['http to a public host', { issuer: 'http://token.actions.githubusercontent.com' }, /^issuer: /],
    ['http to a private address', { issuer: 'http://10.0.0.1' }, /^issuer: /],
    ['http to localhost as a subdomain', { issuer: 'http://localhost.example.com' }, /^issuer: /],
    ['http to an IPv6 address other than ::1', { issuer: 'http://[::2]:8080' }, /^issuer: /],
    ['ftp to loopback', { issuer: 'ftp://127.0.0.1' }, /^issuer: /],
    ['a file URL', { issuer: 'file:///etc/passwd' }, /^issuer: /],
    ['a bare host name', { issuer: 'token.actions.githubusercontent.com' }, /^issuer: /],
    ['credentials in the URL', { issuer: 'https://user:secret@token.example.com' }, /^issuer: /],
    ['a jwksUri over http to a public host', { jwksUri: 'http://keys.example.com/jwks' }, /^jwksUri: /],
    ['a jwksUri that is not absolute', { jwksUri: '/jwks' }, /^jwksUri: /],
    ['both jwksUri and jwksFile', { jwksUri: `${GITHUB}/jwks`, jwksFile: '/etc/jwks.json' }, /jwksUri and jwksFile/],
  ];
  for (const [name, options, message] of table) {
    assert.throws(() => createKeySet({ issuer: GITHUB, ...options }), { name: 'TypeError', message }, name);
  }
});

test('a host name that merely starts with "127." is not loopback, so http to it is refused', () => {
  // 127.attacker.example is a DNS name anyone can point anywhere; only the
  // 127.0.0.0/8 addresses themselves are loopback.
  const table: [string, Partial<KeySetOptions>, RegExp][] = [
    ['issuer http://127.attacker.example', { issuer: 'http://127.attacker.example' }, /^issuer: /],
    ['issuer http://127.0.0.1.nip.io', { issuer: 'http://127.0.0.1.nip.io:8080' }, /^issuer: /],
    ['jwksUri http://127.attacker.example/jwks', { jwksUri: 'http://127.attacker.example/jwks' }, /^jwksUri: /],
  ];
  for (const [name, options, message] of table) {
    assert.throws(() => createKeySet({ issuer: GITHUB, ...options }), { name: 'TypeError', message }, name);
  }
});

test('https anywhere and http to 127.0.0.0/8, localhost and [::1] are accepted at construction', () => {
  const table: Partial<KeySetOptions>[] = [
    { issuer: GITHUB },
    { issuer: GITHUB, jwksUri: `${GITHUB}/.well-known/jwks` },
    { issuer: 'http://127.0.0.1:8080' },
    { issuer: 'http://127.1.2.3' },
    { issuer: 'http://127.1:9' },
    { issuer: 'http://localhost:9' },
    { issuer: 'http://LOCALHOST:9' },
    { issuer: 'http://[::1]:9' },
    { issuer: GITHUB, jwksUri: 'http://127.0.0.1:9/jwks' },
    { issuer: GITHUB, jwksFile: '/etc/oidc-gateway/jwks.json' },
  ];
  for (const options of table) {
    assert.doesNotThrow(() => createKeySet({ issuer: GITHUB, ...options }), JSON.stringify(options));
  }
});

// ---------------------------------------------------------------- the key set's content

test('a bad key inside a good set is skipped with a log line while the rest load', async (t) => {
  const keys = [
    k1.jwk,
    weak.jwk,
    { kty: 'RSA', kid: 'e-is-1', n: k2.jwk.n, e: 'AQ' },
    rsaJwk(k2.publicKey, 'enc-1', { use: 'enc', alg: undefined }),
    { kty: 'EC', kid: 'ec-1', crv: 'P-256', x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU', y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0' },
    { ...k2.jwk, kid: 'rs512-1', alg: 'RS512' },
    { ...k2.jwk, kid: 'padded-1', n: `${k2.jwk.n}==` },
    { ...k2.jwk, kid: undefined },
    'not a key',
    null,
    k2.jwk,
    { ...k1.jwk, n: k2.jwk.n },
  ];
  const { keySet, logs } = await rig(t, { keys });
  assertKey(await keySet.resolveKey(k1.kid), k1, 'the first key-1 wins over its duplicate');
  assertKey(await keySet.resolveKey(k2.kid), k2);
  for (const kid of [weak.kid, 'e-is-1', 'enc-1', 'ec-1', 'rs512-1', 'padded-1']) {
    assert.equal(await keySet.resolveKey(kid), 'kid_unknown', kid);
    assert.ok(
      logs.lines.some((l) => l.result === 'key_skipped' && String(l.detail).includes(JSON.stringify(kid))),
      `no key_skipped line names ${kid}`,
    );
  }
  assert.equal(logs.lines.filter((l) => l.result === 'key_skipped').length, 10);
  assert.ok(logs.lines.some((l) => l.result === 'ok' && l.keys === 2));
  assert.equal(keySet.status().keys, 2);
});

test('a set with no usable key is an error, and the answer is jwks_unavailable', async (t) => {
  const { keySet, logs } = await rig(t, { keys: [weak.jwk, { ...k1.jwk, use: 'enc' }] });
  assert.equal(await keySet.resolveKey(k1.kid), 'jwks_unavailable');
  assert.match(String(lastError(logs)?.detail), /no usable/);
  assert.deepEqual(keySet.status(), { keys: 0, usable: false, lastGoodFetch: undefined });
});

test('keys are imported once per fetch: every request gets the same KeyObject', async (t) => {
  const { keySet } = await rig(t);
  const first = await keySet.resolveKey(k1.kid);
  assertKey(first, k1);
  for (let i = 0; i < 5; i++) assert.equal(await keySet.resolveKey(k1.kid), first);
});

test('kids named like Object.prototype members are simply unknown', async (t) => {
  const { keySet } = await rig(t);
  for (const kid of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
    assert.equal(await keySet.resolveKey(kid), 'kid_unknown', kid);
  }
});

// ---------------------------------------------------------------- rotation and cooldown

test('key rotation: a newly published kid is found once the 30 s cooldown has passed', async (t) => {
  const { issuer, clock, keySet, t0 } = await rig(t);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  issuer.keys = [k1.jwk, k2.jwk];

  clock.set(t0 + 1_000);
  assert.equal(await keySet.resolveKey(k2.kid), 'kid_unknown');
  clock.set(t0 + 29_999);
  assert.equal(await keySet.resolveKey(k2.kid), 'kid_unknown');
  assert.equal(issuer.hits(JWKS_PATH), 1);

  clock.set(t0 + 30_000);
  assertKey(await keySet.resolveKey(k2.kid), k2);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  assert.equal(issuer.hits(JWKS_PATH), 2);

  // key-1 is retired: gone after the next fetch.
  issuer.keys = [k2.jwk];
  clock.set(t0 + 60_000);
  assert.equal(await keySet.resolveKey('key-3'), 'kid_unknown');
  assert.equal(issuer.hits(JWKS_PATH), 3);
  assert.equal(await keySet.resolveKey(k1.kid), 'kid_unknown');
  assertKey(await keySet.resolveKey(k2.kid), k2);
  assert.equal(issuer.hits(JWKS_PATH), 3);
});

test('200 concurrent unknown kids on a cold start share one discovery and one key-set fetch', async (t) => {
  const { issuer, counter, keySet } = await rig(t, { discovery: true });
  const results = await Promise.all(randomKids(200, 1).map((kid) => keySet.resolveKey(kid)));
  assert.deepEqual(new Set(results), new Set(['kid_unknown']));
  assert.equal(counter.calls.length, 2);
  assert.equal(issuer.hits(DISCOVERY_PATH), 1);
  assert.equal(issuer.hits(JWKS_PATH), 1);
});

test('200 concurrent unknown kids after the cooldown cause exactly one fetch', async (t) => {
  const { issuer, clock, keySet, t0 } = await rig(t);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  issuer.keys = [k1.jwk, k2.jwk];
  clock.set(t0 + 31_000);
  const kids = [...randomKids(199, 2), k2.kid];
  const results = await Promise.all(kids.map((kid) => keySet.resolveKey(kid)));
  assert.equal(issuer.hits(JWKS_PATH), 2);
  assert.equal(results.filter((r) => r === 'kid_unknown').length, 199);
  assertKey(results.at(-1)!, k2, 'the kid that did appear is found by the shared fetch');
});

test('a flood of unknown kids within the cooldown causes no fetch', async (t) => {
  const { issuer, clock, counter, keySet, t0 } = await rig(t);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  clock.set(t0 + 1_000);
  const results = await Promise.all(randomKids(10_000, 3).map((kid) => keySet.resolveKey(kid)));
  assert.ok(results.every((r) => r === 'kid_unknown'));
  assert.equal(counter.calls.length, 1);
  assert.equal(issuer.hits(), 1);
});

test('a steady stream of random kids for 5 minutes causes at most one fetch per cooldown', async (t) => {
  const { issuer, clock, keySet, t0 } = await rig(t);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  const kids = randomKids(3_000, 4);
  for (let second = 1; second <= 300; second++) {
    clock.set(t0 + second * 1_000);
    for (const kid of kids.slice((second - 1) * 10, second * 10)) {
      assert.equal(await keySet.resolveKey(kid), 'kid_unknown');
    }
  }
  // At t0, then every 30 s up to t0 + 300 s.
  assert.equal(issuer.hits(JWKS_PATH), 11);
});

test('concurrent refresh() calls share one fetch', async (t) => {
  const { issuer, keySet } = await rig(t);
  assert.deepEqual(await Promise.all([keySet.refresh(), keySet.refresh(), keySet.refresh()]), [true, true, true]);
  assert.equal(issuer.hits(JWKS_PATH), 1);
});

// ---------------------------------------------------------------- the issuer misbehaving

test('with the issuer down, cached keys keep working past their max age, and each failed refresh is logged', async (t) => {
  const { issuer, clock, counter, logs, keySet, t0 } = await rig(t);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  await issuer.down();

  const steps = [11 * MINUTE, 1 * HOUR, 12 * HOUR, 10 * MINUTE + DAY - 1];
  for (const [i, offset] of steps.entries()) {
    clock.set(t0 + offset);
    assertKey(await keySet.resolveKey(k1.kid), k1, `t0 + ${offset} ms`);
    // The request did not wait; the refresh it started failed in the background.
    assert.equal(await keySet.refresh(), false);
    assert.equal(counter.calls.length, 2 + i);
    const line = lastError(logs);
    assert.equal(line?.stale, true);
    assert.match(String(line?.detail), /ECONNREFUSED/);
    assert.equal(keySet.status().usable, true);
  }
  assert.equal(logs.lines.filter((l) => l.result === 'error').length, steps.length);
});

test('after max age plus the 24 h stale window with the issuer still down, the answer is jwks_unavailable', async (t) => {
  const { issuer, clock, keySet, t0 } = await rig(t);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  await issuer.down();
  clock.set(t0 + 10 * MINUTE + DAY - 1);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  await keySet.refresh();
  clock.set(t0 + 10 * MINUTE + DAY);
  assert.equal(await keySet.resolveKey(k1.kid), 'jwks_unavailable');
  assert.equal(keySet.status().usable, false);
});

test('staleIfErrorMs sets the stale window, and keys come back when the issuer does', async (t) => {
  const { issuer, clock, keySet, t0 } = await rig(t, { options: { staleIfErrorMs: MINUTE } });
  assertKey(await keySet.resolveKey(k1.kid), k1);
  await issuer.down();
  clock.set(t0 + 10 * MINUTE + MINUTE - 1);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  await keySet.refresh();
  clock.set(t0 + 10 * MINUTE + MINUTE);
  assert.equal(await keySet.resolveKey(k1.kid), 'jwks_unavailable');

  await issuer.up();
  clock.advance(30_000);
  assertKey(await keySet.resolveKey(k1.kid), k1);
});

test('with no keys and the issuer down, the answer is jwks_unavailable, retried only after the cooldown', async (t) => {
  const { issuer, clock, counter, logs, keySet, t0 } = await rig(t);
  await issuer.down();
  assert.equal(await keySet.resolveKey(k1.kid), 'jwks_unavailable');
  assert.equal(lastError(logs)?.stale, false);
  clock.set(t0 + 29_999);
  assert.equal(await keySet.resolveKey(k1.kid), 'jwks_unavailable');
  assert.equal(counter.calls.length, 1);
  clock.set(t0 + 30_000);
  assert.equal(await keySet.resolveKey(k1.kid), 'jwks_unavailable');
  assert.equal(counter.calls.length, 2);
});

test('an issuer slower than fetchTimeoutMs gives jwks_unavailable once the timeout passes', async (t) => {
  const { issuer, keySet, logs } = await rig(t, { options: { fetchTimeoutMs: 200 } });
  issuer.setPlan(JWKS_PATH, { delayMs: 10_000 });
  const started = performance.now();
  assert.equal(await keySet.resolveKey(k1.kid), 'jwks_unavailable');
  const elapsed = performance.now() - started;
  assert.ok(elapsed >= 150 && elapsed < 2_000, `took ${elapsed} ms`);
  assert.match(String(lastError(logs)?.detail), /timed out/);
});

test('an issuer slower than fetchTimeoutMs with keys cached does not hold up known kids', async (t) => {
  const { issuer, clock, counter, keySet, t0 } = await rig(t, { options: { fetchTimeoutMs: 200 } });
  assertKey(await keySet.resolveKey(k1.kid), k1);
  issuer.setPlan(JWKS_PATH, { delayMs: 10_000 });
  clock.set(t0 + 11 * MINUTE);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  // Answered while the refresh it started still waits for the issuer.
  assert.equal(counter.pending(), 1);
  assert.equal(await keySet.refresh(), false);
});

test('anything but a 200 JSON JWK Set of at most 1 MiB is a failed fetch: jwks_unavailable', async (t) => {
  const trap = await startRecorder();
  t.after(() => trap.close());
  const table: [string, ResponsePlan, RegExp][] = [
    ['500', { status: 500 }, /answered 500/],
    ['503', { status: 503, body: 'html' }, /answered 503/],
    ['404', { status: 404 }, /answered 404/],
    ['201 with the keys', { status: 201 }, /answered 201/],
    ['204', { status: 204, body: 'empty' }, /answered 204/],
    ['an HTML page', { body: 'html' }, /JSON/],
    ['truncated JSON', { body: 'truncated' }, /JSON/],
    ['an empty body', { body: 'empty' }, /JSON/],
    ['a connection cut mid-body', { body: 'cut' }, /terminated|closed|socket/i],
    ['a 5 MiB body with Content-Length', { body: 'huge' }, /1 MiB/],
    ['a 5 MiB body, chunked', { body: 'huge', chunked: true }, /1 MiB/],
    ['1 MiB + 1 byte with Content-Length', { body: 'huge', hugeBytes: 1024 * 1024 + 1 }, /1 MiB/],
    ['1 MiB + 1 byte, chunked', { body: 'huge', hugeBytes: 1024 * 1024 + 1, chunked: true }, /1 MiB/],
    ['a 302 redirect', { status: 302, location: `${trap.url}/jwks` }, /answered 302/],
    ['a 301 redirect', { status: 301, location: `${trap.url}/jwks` }, /answered 301/],
    ['a 307 redirect', { status: 307, location: `${trap.url}/jwks` }, /answered 307/],
    ['a 308 redirect', { status: 308, location: `${trap.url}/jwks` }, /answered 308/],
    ['a JSON array', { body: 'raw', raw: '[]' }, /keys/],
    ['null', { body: 'raw', raw: 'null' }, /keys/],
    ['keys as an object', { body: 'raw', raw: '{"keys":{}}' }, /keys/],
    ['an empty key set', { body: 'raw', raw: '{"keys":[]}' }, /no usable/],
  ];
  for (const [name, plan, detail] of table) {
    const issuer = await startIssuer({ keys: [k1.jwk] });
    t.after(() => issuer.close());
    issuer.setPlan(JWKS_PATH, plan);
    const logs = logCollector();
    const keySet = createKeySet({ issuer: issuer.issuer, jwksUri: issuer.jwksUri, now: testClock().now, log: logs.log });
    assert.equal(await keySet.resolveKey(k1.kid), 'jwks_unavailable', name);
    assert.match(String(lastError(logs)?.detail), detail, name);
  }
  // Give a followed redirect time to arrive before counting.
  await delay(50);
  assert.equal(trap.connections(), 0, 'a redirect target was contacted');
});

test('a key set of exactly 1 MiB is accepted', async (t) => {
  for (const chunked of [false, true]) {
    const { issuer, keySet } = await rig(t);
    issuer.setPlan(JWKS_PATH, { body: 'huge', hugeBytes: 1024 * 1024, chunked });
    assertKey(await keySet.resolveKey(k1.kid), k1, chunked ? 'chunked' : 'with Content-Length');
  }
});

test('a discovery document that fails, or names another issuer or an unsafe jwks_uri, gives jwks_unavailable', async (t) => {
  const trap = await startRecorder();
  t.after(() => trap.close());
  const table: [string, (issuer: Issuer) => void, RegExp][] = [
    ['discovery answers 500', (i) => i.setPlan(DISCOVERY_PATH, { status: 500 }), /answered 500/],
    ['discovery redirects', (i) => i.setPlan(DISCOVERY_PATH, { status: 302, location: `${trap.url}${DISCOVERY_PATH}` }), /answered 302/],
    ['discovery is an HTML page', (i) => i.setPlan(DISCOVERY_PATH, { body: 'html' }), /JSON/],
    ['another issuer', (i) => void (i.document = { issuer: 'https://evil.example', jwks_uri: i.jwksUri }), /another issuer/],
    ['our issuer with a trailing slash', (i) => void (i.document = { issuer: `${i.issuer}/`, jwks_uri: i.jwksUri }), /another issuer/],
    ['no issuer', (i) => void (i.document = { jwks_uri: i.jwksUri }), /another issuer/],
    ['an array', (i) => void (i.document = [{ issuer: i.issuer, jwks_uri: i.jwksUri }]), /another issuer/],
    ['no jwks_uri', (i) => void (i.document = { issuer: i.issuer }), /jwks_uri/],
    ['jwks_uri over http to a public host', (i) => void (i.document = { issuer: i.issuer, jwks_uri: 'http://keys.example.com/jwks' }), /jwks_uri/],
    ['jwks_uri not a URL', (i) => void (i.document = { issuer: i.issuer, jwks_uri: '/jwks' }), /jwks_uri/],
    ['jwks_uri a number', (i) => void (i.document = { issuer: i.issuer, jwks_uri: 1 }), /jwks_uri/],
  ];
  for (const [name, arrange, detail] of table) {
    const issuer = await startIssuer({ keys: [k1.jwk] });
    t.after(() => issuer.close());
    arrange(issuer);
    const counter = countingFetch();
    const logs = logCollector();
    const keySet = createKeySet({ issuer: issuer.issuer, fetch: counter.fetch, now: testClock().now, log: logs.log });
    assert.equal(await keySet.resolveKey(k1.kid), 'jwks_unavailable', name);
    assert.match(String(lastError(logs)?.detail), detail, name);
    assert.deepEqual(counter.calls, [issuer.discoveryUri], `${name}: fetched more than the discovery document`);
    assert.equal(issuer.hits(JWKS_PATH), 0, name);
  }
  await delay(50);
  assert.equal(trap.connections(), 0, 'a redirect target was contacted');
});

// ---------------------------------------------------------------- cache lifetime

const cacheTable: [string | undefined, number][] = [
  [undefined, 10 * MINUTE],
  ['max-age=300', 5 * MINUTE],
  ['public, max-age=3600, must-revalidate', HOUR],
  ['MAX-AGE=120', 2 * MINUTE],
  ['max-age=5', MINUTE],
  ['max-age=0', MINUTE],
  ['no-store', MINUTE],
  ['no-cache', MINUTE],
  ['max-age=100000000', DAY],
  ['max-age=abc', 10 * MINUTE],
  ['max-age=-5', 10 * MINUTE],
];

for (const [cacheControl, maxAgeMs] of cacheTable) {
  const label = cacheControl === undefined ? 'no Cache-Control' : `Cache-Control "${cacheControl}"`;
  test(`${label} gives a max age of ${maxAgeMs / 1000} s: the refresh starts at 80% of it`, async (t) => {
    const { issuer, clock, counter, keySet, t0 } = await rig(t);
    issuer.setPlan(JWKS_PATH, cacheControl === undefined ? {} : { cacheControl });
    assertKey(await keySet.resolveKey(k1.kid), k1);
    clock.set(t0 + maxAgeMs * 0.8 - 1);
    assertKey(await keySet.resolveKey(k1.kid), k1);
    assert.equal(counter.calls.length, 1, 'refreshed too early');
    clock.set(t0 + maxAgeMs * 0.8);
    assertKey(await keySet.resolveKey(k1.kid), k1);
    assert.equal(counter.calls.length, 2, 'no refresh at 80%');
    assert.equal(await keySet.refresh(), true);
    assert.equal(keySet.status().lastGoodFetch, t0 + maxAgeMs * 0.8);
  });
}

test('at 80% of the max age a request gets the cached key at once while the refresh runs in the background', async (t) => {
  const { issuer, clock, counter, keySet, t0 } = await rig(t);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  issuer.keys = [k1.jwk, k2.jwk];
  issuer.setPlan(JWKS_PATH, { delayMs: 300 });
  clock.set(t0 + 8 * MINUTE);
  assertKey(await keySet.resolveKey(k1.kid), k1);
  // The refresh has started and is still waiting for the issuer.
  assert.equal(counter.calls.length, 2);
  assert.equal(counter.pending(), 1);
  assert.equal(keySet.status().lastGoodFetch, t0);
  assert.equal(await keySet.refresh(), true, 'refresh() shares the fetch in flight');
  assert.equal(counter.calls.length, 2);
  assertKey(await keySet.resolveKey(k2.kid), k2);
  assert.equal(keySet.status().lastGoodFetch, t0 + 8 * MINUTE);
});

// ---------------------------------------------------------------- start and stop

test('start() fetches at once and reports whether it got keys; stop() ends the timers', async (t) => {
  const { issuer, keySet } = await rig(t);
  assert.equal(await keySet.start(), true);
  assert.equal(issuer.hits(JWKS_PATH), 1);
  keySet.stop();

  const down = await rig(t);
  await down.issuer.down();
  assert.equal(await down.keySet.start(), false);
  down.keySet.stop();
});
