// End to end for what an operator sees: the audit log (one JSON line per
// decision, at the configured level) and the admin listener's /metrics,
// /healthz and /readyz. The gateway runs as its own process against a real
// issuer, a real upstream that records what it received and a TCP echo
// destination for tunnels. Every refusal asserts its status, its reason, and
// whether the upstream was contacted.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import {
  JWKS_PATH, generateRsaKey, rawExchange, signToken, startGateway, startIssuer, startRecorder, statusOf, waitUntil,
  type Issuer, type Recorder, type RunningGateway, type TestKey,
} from './helpers.ts';
import { jsonLines } from '../src/audit.js';

const AUD = 'api://ActionsOIDCGateway';
const RULE = { repository: 'octo-org/octo-repo', ref: ['refs/heads/main', 'refs/tags/v*'] };
const IDENTITY = {
  sub: 'repo:octo-org/octo-repo:ref:refs/heads/main', repository: 'octo-org/octo-repo', repository_id: 123, repository_owner: 'octo-org',
  ref: 'refs/heads/main', sha: 'a'.repeat(40), workflow_ref: 'octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main',
  job_workflow_ref: 'octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main', environment: 'staging', actor: 'octocat',
  run_id: 42, run_attempt: 1, jti: 'jti-1',
};
let key: TestKey;
let issuer: Issuer;
let upstream: Recorder;
let echo: Server;
let echoPort: number;
let unusedPort: number;
let gw: RunningGateway;

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
const signature = (token: string) => token.slice(token.lastIndexOf('.') + 1);

function token(extra: Record<string, unknown> = {}, kid = key.kid): string {
  const now = Math.floor(Date.now() / 1000);
  return signToken({ alg: 'RS256', typ: 'JWT', kid }, { iss: issuer.issuer, aud: AUD, iat: now, exp: now + 300, workflow: 'ci', ...IDENTITY, ...extra }, key.privateKey);
}

/** The routes every gateway here serves: /app/ to the recorder, /down/ to a port nothing listens on. */
function config(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    issuers: [{ issuer: issuer.issuer, audience: AUD }],
    routes: [
      { path: '/app/', upstream: `${upstream.url}/`, allow: [RULE, { repository_owner: 'other-org', environment: 'production' }] },
      { path: '/down/', upstream: `http://127.0.0.1:${unusedPort}/`, allow: [RULE] },
    ],
    tunnels: [{ to: [`127.0.0.1:${echoPort}`], allow: [RULE] }],
    ...extra,
  };
}

async function send(g: RunningGateway, path: string, t?: string, init: RequestInit = {}) {
  const res = await fetch(g.url + path, { ...init, headers: t === undefined ? {} : { 'gateway-authorization': `Bearer ${t}` } });
  const text = await res.text();
  return { status: res.status, text, json: text.startsWith('{') ? (JSON.parse(text) as Record<string, unknown>) : undefined };
}

/** Runs `fn`, asserting the upstream received `contacts` requests meanwhile (0: untouched). */
async function expectContacts<T>(contacts: number, fn: () => Promise<T>): Promise<T> {
  const before = upstream.hits();
  const result = await fn();
  assert.equal(upstream.hits() - before, contacts, contacts === 0 ? 'the upstream must not be contacted' : 'the upstream is contacted');
  return result;
}

/** The audit line with this request id, once written (it follows the response by a moment). */
async function lineFor(g: RunningGateway, id: unknown): Promise<Record<string, unknown>> {
  assert.equal(typeof id, 'string');
  await waitUntil(() => g.logs().some((l) => l.id === id));
  return g.logs().find((l) => l.id === id)!;
}

const pick = (line: Record<string, unknown>, keys: readonly string[]) => Object.fromEntries(keys.map((k) => [k, line[k]]));

before(async () => {
  let other: TestKey;
  [key, other] = await Promise.all([generateRsaKey('k1'), generateRsaKey('k2')]);
  issuer = await startIssuer({ keys: [key.jwk, other.jwk] });
  upstream = await startRecorder((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ url: req.url, bodyBytes: req.body.length }));
  });
  echo = createServer((s) => s.on('error', () => s.destroy()).pipe(s));
  const spare = createServer();
  await Promise.all([echo, spare].map((s) => new Promise<void>((r) => s.listen(0, '127.0.0.1', r))));
  echoPort = (echo.address() as AddressInfo).port;
  unusedPort = (spare.address() as AddressInfo).port;
  await new Promise((r) => spare.close(r));
  gw = await startGateway(config());
});

after(async () => {
  await gw?.close();
  echo?.close();
  await Promise.all([issuer?.close(), upstream?.close()]);
});

// ---------------------------------------------------------------- the audit log

test('an allowed request writes one info line with the identity, the token hash, the upstream status, bytes and duration', async () => {
  const t = token();
  const res = await expectContacts(1, () => send(gw, '/app/things?secret=1', t, { method: 'POST', body: 'hello world' }));
  assert.equal(res.status, 200);
  const { time: _time, ms, ...line } = await lineFor(gw, upstream.requests.at(-1)!.headers['x-request-id']);
  assert.ok(typeof ms === 'number' && ms >= 0);
  assert.deepEqual(line, {
    level: 'info', kind: 'request', id: line.id, method: 'POST', client: '127.0.0.1', path: '/app/things', route: '/app', status: 200,
    decision: 'allow', identity: { iss: issuer.issuer, ...Object.fromEntries(Object.entries(IDENTITY).map(([k, v]) => [k, String(v)])) },
    tokenSha256: sha256(t), upstreamStatus: 200, bytesIn: 11, bytesOut: Buffer.byteLength(res.text), rule: 0,
  });
});

test('a 403 names the failing claim in the log, and the response carries no claim value', async () => {
  const t = token({ ref: 'refs/heads/secret-branch' });
  const res = await expectContacts(0, () => send(gw, '/app/x', t));
  assert.equal(res.status, 403);
  assert.deepEqual(res.json, { error: 'claim_mismatch', id: res.json?.id });
  const line = await lineFor(gw, res.json?.id);
  assert.deepEqual(pick(line, ['level', 'status', 'decision', 'reason', 'claim', 'tokenSha256', 'rules']), {
    level: 'info', status: 403, decision: 'deny', reason: 'claim_mismatch', claim: 'ref', tokenSha256: sha256(t), rules: undefined,
  });
  assert.equal((line.identity as Record<string, unknown>).ref, 'refs/heads/secret-branch');
});

test('a 401 identifies a refused JWT by its SHA-256 only, and what is no JWT (which may be a password) not at all: the token is nowhere in stdout or stderr', async () => {
  const now = Math.floor(Date.now() / 1000);
  const cases: [string, string | undefined, string, boolean][] = [
    ['expired', token({ exp: now - 3600, iat: now - 7200 }), 'token_expired', true],
    ['junk', 'not-a.jwt.at-all', 'token_malformed', false],
    ['none', undefined, 'token_missing', false],
  ];
  for (const [name, t, reason, hashed] of cases) {
    const res = await expectContacts(0, () => send(gw, '/app/x', t));
    assert.deepEqual([res.status, res.json?.error], [401, reason], name);
    assert.deepEqual(pick(await lineFor(gw, res.json?.id), ['level', 'decision', 'reason', 'identity', 'tokenSha256']), {
      level: 'info', decision: 'deny', reason, identity: undefined, tokenSha256: hashed ? sha256(t!) : undefined,
    }, name);
    for (const out of [gw.process.stdout(), gw.process.stderr()]) assert.ok(t === undefined || (!out.includes(t) && !out.includes(signature(t))), name);
  }
});

test('an unknown route is 404 route_unknown with no route in the line and no identity', async () => {
  const res = await expectContacts(0, () => send(gw, '/nowhere/x?q=1', token()));
  assert.deepEqual([res.status, res.json?.error], [404, 'route_unknown']);
  assert.deepEqual(pick(await lineFor(gw, res.json?.id), ['path', 'route', 'status', 'decision', 'reason', 'identity']), {
    path: '/nowhere/x', route: undefined, status: 404, decision: 'deny', reason: 'route_unknown', identity: undefined,
  });
});

test('a request refused before token work (404, 400) leaves its token untouched: no hash, no identity', async () => {
  const t = token();
  for (const [path, status] of [['/nowhere/y', 404], ['/app/a;b', 400]] as const) {
    const res = await expectContacts(0, () => send(gw, path, t));
    assert.equal(res.status, status, path);
    assert.deepEqual(pick(await lineFor(gw, res.json?.id), ['tokenSha256', 'identity']), { tokenSha256: undefined, identity: undefined }, path);
  }
});

test('an unreachable upstream is 502 upstream_unreachable, logged at warn as an error decision', async () => {
  const t = token();
  const res = await expectContacts(0, () => send(gw, '/down/x', t));
  assert.deepEqual([res.status, res.json?.error], [502, 'upstream_unreachable']);
  assert.deepEqual(pick(await lineFor(gw, res.json?.id), ['level', 'route', 'decision', 'reason', 'upstreamStatus', 'tokenSha256']), {
    level: 'warn', route: '/down', decision: 'error', reason: 'upstream_unreachable', upstreamStatus: undefined, tokenSha256: sha256(t),
  });
});

test('the start, config and keys lines are written at start, each with a time and a level', () => {
  const lines = gw.logs();
  assert.ok(lines.every((l) => ['debug', 'info', 'warn', 'error'].includes(String(l.level)) && !Number.isNaN(Date.parse(String(l.time)))));
  assert.ok(lines.some((l) => l.kind === 'start'));
  const cfg = lines.find((l) => l.kind === 'config');
  assert.deepEqual(pick(cfg ?? {}, ['result', 'file']), { result: 'ok', file: gw.configFile });
  assert.ok(Array.isArray(cfg?.warnings));
  assert.ok(lines.some((l) => l.kind === 'keys' && l.result === 'ok' && l.issuer === issuer.issuer && l.level === 'info'));
});

test('each line is one JSON object led by time and level, then the line\'s own fields in order, whatever fields it has', async () => {
  const texts: string[] = [];
  const log = jsonLines((text) => texts.push(text), () => 'info');
  const table: [string, Record<string, unknown>, Record<string, unknown>][] = [
    ['a request line', { kind: 'request', id: 'x', identity: { sub: 'repo:a/b' }, reason: undefined, ms: 1.5 }, { level: 'info', kind: 'request', id: 'x', identity: { sub: 'repo:a/b' }, ms: 1.5 }],
    ['an error decision', { kind: 'request', decision: 'error' }, { level: 'warn', kind: 'request', decision: 'error' }],
    ['a level of its own', { kind: 'error', level: 'error', detail: 'd' }, { level: 'error', kind: 'error', detail: 'd' }],
    ['a time of its own', { time: 'then', kind: 'keys' }, { time: 'then', level: 'info', kind: 'keys' }],
    ['no fields', {}, { level: 'info' }],
    ['below the minimum, but start', { kind: 'start', level: 'debug' }, { level: 'debug', kind: 'start' }],
  ];
  for (const [name, line, expected] of table) {
    const before = Date.now();
    log(line);
    const text = texts.pop()!;
    assert.ok(text.endsWith('}\n') && !text.slice(0, -1).includes('\n'), name);
    // JSON.parse keeps the last of two equal keys: count them in the text.
    assert.deepEqual([text.split('"time":').length, text.split('"level":').length], [2, 2], `${name}: ${text}`);
    const parsed = JSON.parse(text) as Record<string, unknown>;
    assert.deepEqual(Object.keys(parsed), [...new Set(['time', 'level', ...Object.keys(expected)])], `${name}: each key once, time and level first`);
    if (expected.time === undefined) assert.ok(Date.parse(String(parsed.time)) >= Math.floor(before / 1000) * 1000 && String(parsed.time).endsWith('Z'), name);
    assert.deepEqual({ ...parsed, time: expected.time ?? parsed.time }, { time: expected.time ?? parsed.time, ...expected }, name);
  }
  log({ kind: 'request', level: 'debug' });
  assert.equal(texts.length, 0, 'a line below the minimum is not written');
  // Lines in the same millisecond share a timestamp; a later line gets its own.
  const last = Date.now();
  await new Promise((resolve) => setTimeout(resolve, 5));
  log({ kind: 'request' });
  assert.ok(Date.parse(String(JSON.parse(texts.pop()!).time)) > last);
});

// ---------------------------------------------------------------- log levels

test('at log level warn only warn lines are written (an unreachable upstream, a failed key fetch), and metrics still count every decision', async () => {
  const g = await startGateway(config({ keys: { cooldownMs: 1_000 } }));
  try {
    // A gateway started at warn writes no start line to learn its ports from: switch a running one, with
    // an auth route added as the sign that the reloaded config is in force.
    const file = JSON.parse(readFileSync(g.configFile, 'utf8')) as { routes: unknown[] };
    writeFileSync(g.configFile, JSON.stringify({ ...file, log: { level: 'warn' }, routes: [...file.routes, { path: '/marker', mode: 'auth', allow: [RULE] }] }));
    g.process.child.kill('SIGHUP');
    await waitUntil(async () => (await send(g, '/marker', token())).status === 200);
    const since = g.process.stdout().length;
    const allow = { kind: 'request', route: '/app', decision: 'allow', reason: '' };
    const allowBefore = series(await scrape(g), 'oidc_gateway_requests_total', allow);
    for (const [t, status] of [[token(), 200], [token({ ref: 'refs/heads/dev' }), 403], ['junk', 401]] as const) {
      assert.equal((await expectContacts(status === 200 ? 1 : 0, () => send(g, '/app/x', t))).status, status);
    }
    // An unknown kid refetches the key set once the cooldown allows, and that fetch fails.
    issuer.setPlan(JWKS_PATH, { status: 500 });
    const rotated = token({}, 'k-rotated');
    await waitUntil(async () => (await expectContacts(0, () => send(g, '/app/x', rotated)), g.logs().some((l) => l.kind === 'keys' && l.result === 'error')));
    issuer.setPlan(JWKS_PATH, {});
    const down = await send(g, '/down/x', token());
    assert.equal(down.status, 502);
    await waitUntil(() => g.logs().some((l) => l.id === down.json?.id));
    const lines = g.process.stdout().slice(since).split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(lines.every((l) => l.level === 'warn'), lines.map((l) => `${l.level} ${l.kind}`).join(', '));
    assert.ok(lines.some((l) => l.kind === 'keys' && l.result === 'error' && l.issuer === issuer.issuer));
    assert.deepEqual(lines.filter((l) => l.kind === 'request').map((l) => l.reason), ['upstream_unreachable']);
    await waitUntil(async () => series(await scrape(g), 'oidc_gateway_requests_total', allow) === allowBefore + 1);
    assert.ok(series(await scrape(g), 'oidc_gateway_jwks_fetches_total', { issuer: issuer.issuer, result: 'error' }) >= 1);
  } finally {
    issuer.setPlan(JWKS_PATH, {});
    await g.close();
  }
});

test('at log level debug a claim_mismatch line carries each rule\'s first failing claim, value and patterns, and never the token', async () => {
  const g = await startGateway(config({ log: { level: 'debug' } }));
  try {
    const t = token({ ref: 'refs/heads/dev' });
    const res = await expectContacts(0, () => send(g, '/app/x', t));
    assert.equal(res.status, 403);
    assert.ok(!res.text.includes('refs/heads/dev'));
    const line = await lineFor(g, res.json?.id);
    assert.equal(line.claim, 'ref');
    assert.deepEqual(line.rules, [
      { claim: 'ref', value: 'refs/heads/dev', patterns: ['refs/heads/main', 'refs/tags/v*'] },
      { claim: 'repository_owner', value: 'octo-org', patterns: ['other-org'] },
    ]);
    assert.equal((await expectContacts(1, () => send(g, '/app/x', token()))).status, 200);
    await waitUntil(() => g.logs().filter((l) => l.kind === 'request').length === 2);
    assert.equal(g.logs().filter((l) => l.kind === 'request')[1]!.rules, undefined, 'an allowed line has no rules');
    for (const stream of [g.process.stdout(), g.process.stderr()]) assert.ok(!stream.includes(t) && !stream.includes(signature(t)));
  } finally {
    await g.close();
  }
});

test('closing a gateway fails, with the line shortened, when a token signed in this process reached its log', async () => {
  const g = await startGateway(config());
  const leaked = token();
  // A claim is logged as given: a token carried in `ref` lands in the identity.
  assert.equal((await send(g, '/app/x', token({ ref: leaked }))).status, 403);
  await waitUntil(() => g.logs().some((l) => l.reason === 'claim_mismatch'));
  await assert.rejects(g.close(), (err: Error) => /signed token .* in a gateway log line: \{/.test(err.message) && err.message.length < 400);
});

// ---------------------------------------------------------------- the admin listener

type Labels = Record<string, string>;
interface Sample { readonly name: string; readonly labels: Labels; readonly value: number }

const PAIR = String.raw`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"`;
const LABELS = new RegExp(String.raw`^\{(?:${PAIR}(?:,${PAIR})*)?\}$`);
const VALUE = /^(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Inf)|NaN)$/;

/** A strict reader of the Prometheus text format 0.0.4: throws on anything malformed, ambiguous or out of place. */
function parseMetrics(text: string): Sample[] {
  assert.ok(text.endsWith('\n'), 'the exposition ends with a newline');
  const types = new Map<string, string>();
  const seen = new Set<string>(); // HELP and TYPE lines, series, and families already left behind
  const samples: Sample[] = [];
  let current = '';
  const enter = (family: string, line: string) => {
    if (family === current) return;
    assert.ok(!seen.has(`family ${family}`), `the lines of ${family} are not together: ${line}`);
    seen.add(`family ${current}`);
    current = family;
  };
  for (const line of text.slice(0, -1).split('\n')) {
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (meta) {
      const [, what = '', name = '', rest = ''] = meta;
      enter(name, line);
      assert.ok(!seen.has(`${what} ${name}`), `a second ${what}: ${line}`);
      seen.add(`${what} ${name}`);
      if (what === 'HELP') assert.ok(!rest.replace(/\\[\\n]/g, '').includes('\\'), `HELP escapes only backslash and newline: ${line}`);
      else types.set(name, rest);
      assert.match(what === 'HELP' ? 'counter' : rest, /^(counter|gauge|histogram|summary|untyped)$/, line);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)(?: -?\d+)?$/.exec(line);
    assert.ok(m, `not "name{labels} value": ${JSON.stringify(line)}`);
    const [, name = '', labelText = '', value = ''] = m;
    const labels = parseLabels(labelText, line);
    assert.match(value, VALUE, line);
    const base = name.replace(/_(bucket|sum|count)$/, '');
    const family = types.get(base) === 'histogram' ? base : name;
    assert.ok(types.has(family), `a sample with no TYPE before it: ${line}`);
    assert.equal(name.endsWith('_bucket') && family !== name, Object.hasOwn(labels, 'le'), `le on histogram buckets only: ${line}`);
    assert.ok(types.get(family) !== 'counter' || Number(value) >= 0, `a negative counter: ${line}`);
    enter(family, line);
    const id = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    assert.ok(!seen.has(id), `a duplicate series: ${line}`);
    seen.add(id);
    samples.push({ name, labels, value: Number(value.replace(/Inf$/, 'Infinity')) });
  }
  return samples;
}

/** `{a="x",b="y\"z"}`: each label once; values escape only backslash, double quote and newline. */
function parseLabels(text: string, line: string): Labels {
  const labels: Labels = {};
  if (text === '') return labels;
  assert.match(text, LABELS, `malformed labels: ${line}`);
  for (const [, name = '', raw = ''] of text.matchAll(new RegExp(PAIR, 'g'))) {
    assert.ok(!Object.hasOwn(labels, name), `label ${name} twice: ${line}`);
    labels[name] = raw.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
  }
  return labels;
}

async function scrape(g: RunningGateway): Promise<Sample[]> {
  const res = await fetch(`${g.adminUrl}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4(;|$)/);
  return parseMetrics(await res.text());
}

/** The value of the one series with exactly these labels, or 0 when it does not exist yet. */
function series(samples: readonly Sample[], name: string, labels: Labels = {}): number {
  const found = samples.filter((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === JSON.stringify(Object.entries(labels).sort()));
  assert.ok(found.length <= 1);
  return found[0]?.value ?? 0;
}

/** Each route's histogram: cumulative buckets ending at +Inf == _count == that route's requests (tunnels are not timed). */
function assertHistograms(samples: readonly Sample[]): Set<string> {
  const routes = new Set(samples.filter((s) => s.name === 'oidc_gateway_request_duration_seconds_count').map((s) => s.labels.route!));
  for (const route of routes) {
    const count = series(samples, 'oidc_gateway_request_duration_seconds_count', { route });
    const requests = samples.filter((s) => s.name === 'oidc_gateway_requests_total' && s.labels.route === route && s.labels.kind !== 'tunnel');
    assert.equal(count, requests.reduce((n, s) => n + s.value, 0), `route ${JSON.stringify(route)}`);
    const buckets = samples.filter((s) => s.name === 'oidc_gateway_request_duration_seconds_bucket' && s.labels.route === route);
    const bounds = buckets.map((b) => Number(b.labels.le!.replace('+Inf', 'Infinity')));
    assert.deepEqual(bounds, [...bounds].sort((a, b) => a - b), 'buckets in order of le');
    assert.equal(buckets.at(-1)!.labels.le, '+Inf');
    assert.equal(buckets.at(-1)!.value, count);
    buckets.forEach((b, i) => assert.ok(i === 0 || b.value >= buckets[i - 1]!.value, `buckets are cumulative on ${route}`));
    assert.ok(series(samples, 'oidc_gateway_request_duration_seconds_sum', { route }) >= 0);
  }
  return routes;
}

test('the label reader accepts escapes and refuses what the format does not allow', () => {
  assert.deepEqual(parseMetrics('# TYPE a counter\na{x="q\\"\\\\\\n",y=""} 1\n')[0]!.labels, { x: 'q"\\\n', y: '' });
  const cases = ['a{x="\\t"} 1', 'a{x="1" } 1', 'a{x="1",x="2"} 1', 'a 1 2 3', 'a{x=1} 1', 'b 1', 'a one', 'a 1\na 1', '# HELP a x\\y', '# note', '', 'a 1\n# TYPE b gauge\nb 1\na{x="2"} 1'];
  for (const bad of cases) {
    assert.throws(() => parseMetrics(`# TYPE a counter\n${bad}\n`), assert.AssertionError, JSON.stringify(bad));
  }
});

test('/healthz and /readyz answer on the admin listener, and /metrics is not served on the public one', async () => {
  assert.deepEqual(await (await fetch(`${gw.adminUrl}/healthz`)).json(), { status: 'ok' });
  const ready = (await (await fetch(`${gw.adminUrl}/readyz`)).json()) as Record<string, unknown>;
  assert.deepEqual(pick(ready, ['ready', 'draining']), { ready: true, draining: false });
  assert.deepEqual(Object.keys(ready.issuers as object), [issuer.issuer]);
  const res = await expectContacts(0, () => send(gw, '/metrics'));
  assert.deepEqual([res.status, res.json?.error], [404, 'route_unknown']);
});

test('/metrics parses strictly, and its counters, histogram and gauges follow the requests', async () => {
  const allow = { kind: 'request', route: '/app', decision: 'allow', reason: '' };
  const deny = { kind: 'request', route: '/app', decision: 'deny', reason: 'claim_mismatch' };
  const before = await scrape(gw);
  let out = 0;
  for (const init of [{}, {}, { method: 'POST', body: Buffer.alloc(1000, 'x') }]) {
    const res = await expectContacts(1, () => send(gw, '/app/m', token(), init));
    assert.equal(res.status, 200);
    out += Buffer.byteLength(res.text);
  }
  assert.equal((await expectContacts(0, () => send(gw, '/app/m', token({ ref: 'refs/heads/dev' })))).status, 403);
  assert.equal((await send(gw, '/down/m', token())).status, 502);
  let after: Sample[] = [];
  await waitUntil(async () => series((after = await scrape(gw)), 'oidc_gateway_upstream_errors_total', { reason: 'upstream_unreachable' }) > series(before, 'oidc_gateway_upstream_errors_total', { reason: 'upstream_unreachable' }));
  const delta = (name: string, labels: Labels = {}) => series(after, name, labels) - series(before, name, labels);
  assert.deepEqual(
    [delta('oidc_gateway_requests_total', allow), delta('oidc_gateway_requests_total', deny), delta('oidc_gateway_upstream_errors_total', { reason: 'upstream_unreachable' })],
    [3, 1, 1], 'requests allowed, denied for claim_mismatch, failed upstream',
  );
  assert.deepEqual([delta('oidc_gateway_bytes_total', { direction: 'in' }), delta('oidc_gateway_bytes_total', { direction: 'out' })], [1000, out]);
  assert.ok(series(after, 'oidc_gateway_requests_total', { kind: 'request', route: '', decision: 'deny', reason: 'route_unknown' }) >= 1, 'no route is the label ""');
  assert.ok(series(after, 'oidc_gateway_jwks_fetches_total', { issuer: issuer.issuer, result: 'ok' }) >= 1);
  assert.equal(series(after, 'oidc_gateway_jwks_keys', { issuer: issuer.issuer }), issuer.keys.length);
  const age = series(after, 'oidc_gateway_jwks_last_good_fetch_age_seconds', { issuer: issuer.issuer });
  assert.ok(age >= 0 && age < 600, `age ${age}`);
  assert.equal(series(after, 'oidc_gateway_ready'), 1);
  assert.equal(series(after, 'oidc_gateway_tunnels_open'), 0);
  const routes = assertHistograms(after);
  assert.ok(routes.has('/app') && routes.has('/down'));
  assert.equal(delta('oidc_gateway_request_duration_seconds_count', { route: '/app' }), 4);
});

test('tunnels_open is 1 while a CONNECT tunnel is open and 0 once it closed, and the tunnel is counted but not timed', async () => {
  const socket = connect(gw.port, '127.0.0.1');
  let received = '';
  socket.setEncoding('latin1').on('data', (chunk: string) => (received += chunk));
  const closed = new Promise((r) => socket.on('close', r));
  socket.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\nProxy-Authorization: Bearer ${token()}\r\n\r\n`);
  await waitUntil(() => received.includes('\r\n\r\n'));
  assert.match(received, /^HTTP\/1\.1 200 /);
  socket.write('ping');
  await waitUntil(() => received.endsWith('ping'));
  assert.equal(series(await scrape(gw), 'oidc_gateway_tunnels_open'), 1);
  socket.end();
  await closed;
  await waitUntil(async () => series(await scrape(gw), 'oidc_gateway_tunnels_open') === 0);
  await waitUntil(() => gw.logs().some((l) => l.kind === 'tunnel'));
  const line = gw.logs().find((l) => l.kind === 'tunnel')!;
  assert.deepEqual(pick(line, ['decision', 'target', 'bytesUp', 'bytesDown']), { decision: 'allow', target: `127.0.0.1:${echoPort}`, bytesUp: 4, bytesDown: 4 });
  assert.equal(typeof line.closedBy, 'string');
  assert.match(String(line.tokenSha256), /^[0-9a-f]{64}$/);
  const samples = await scrape(gw);
  assert.equal(series(samples, 'oidc_gateway_requests_total', { kind: 'tunnel', route: '', decision: 'allow', reason: '' }), 1);
  assertHistograms(samples);
});

test('a CONNECT whose Basic password is no JWT is 401 token_malformed and logged without a tokenSha256 (the password and its hash are nowhere in stdout); an expired JWT there still gets its hash', async () => {
  let dialled = 0;
  const count = () => void dialled++;
  echo.on('connection', count);
  try {
    const now = Math.floor(Date.now() / 1000);
    const expired = token({ exp: now - 3600, iat: now - 7200 });
    for (const [user, password, reason, hashed] of [['alice', 'hunter2', 'token_malformed', false], ['x', expired, 'token_expired', true]] as const) {
      const credentials = Buffer.from(`${user}:${password}`).toString('base64');
      const raw = await expectContacts(0, () => rawExchange(gw.port, `CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\nProxy-Authorization: Basic ${credentials}\r\n\r\n`));
      assert.equal(statusOf(raw), 401, raw);
      const body = JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)) as Record<string, unknown>;
      assert.equal(body.error, reason);
      assert.deepEqual(pick(await lineFor(gw, body.id), ['kind', 'status', 'decision', 'reason', 'tokenSha256']), {
        kind: 'tunnel', status: 401, decision: 'deny', reason, tokenSha256: hashed ? sha256(password) : undefined,
      }, user);
    }
    const stdout = gw.process.stdout();
    assert.ok(!stdout.includes(sha256('hunter2')) && !stdout.includes('hunter2'), 'the password and its hash are not logged');
    assert.equal(dialled, 0, 'the destination was not dialled');
  } finally {
    echo.off('connection', count);
  }
});

// ---------------------------------------------------------------- the verified-token cache

const cacheCounters = (samples: readonly Sample[]) => [series(samples, 'oidc_gateway_token_cache_hits_total'), series(samples, 'oidc_gateway_token_cache_misses_total')];

test('the token cache counters follow verification: one token sent four times is two misses (cached from its second) then two hits, and junk is a miss', async () => {
  const t = token({ jti: 'token-cache-counters' });
  const [hits, misses] = cacheCounters(await scrape(gw));
  for (let i = 0; i < 4; i++) assert.equal((await expectContacts(1, () => send(gw, '/app/cached', t))).status, 200);
  assert.deepEqual(cacheCounters(await scrape(gw)), [hits! + 2, misses! + 2], 'after the same token four times');
  const junk = await expectContacts(0, () => send(gw, '/app/cached', 'junk'));
  assert.deepEqual([junk.status, junk.json?.error], [401, 'token_malformed']);
  assert.deepEqual(cacheCounters(await scrape(gw)), [hits! + 2, misses! + 3], 'after junk');
});

test('with token.cacheSize 0 every token is verified in full and the cache counters stay at 0', async () => {
  const g = await startGateway(config({ token: { cacheSize: 0 } }));
  try {
    const t = token({ jti: 'token-cache-off' });
    for (let i = 0; i < 2; i++) assert.equal((await expectContacts(1, () => send(g, '/app/cached', t))).status, 200);
    assert.deepEqual(cacheCounters(await scrape(g)), [0, 0]);
  } finally {
    await g.close();
  }
});
