// Fault injection, end to end (issue 7): the gateway as its own process, with a
// real issuer, real upstreams and real clients on 127.0.0.1, each made to fail
// in one way. Every test asserts the status and reason the client gets, whether
// the upstream was contacted, and that the next valid request succeeds.
//
// The key-set timers are shrunk through the config (fetchTimeoutMs 1000,
// cooldownMs 1000, its minimum). The one thing the config cannot shrink is a
// key set's max age, clamped to at least 60 s: the stale-window test runs the
// gateway under a wrapper that sets its Date.now ahead of the real clock on
// SIGUSR2 (see startClockedGateway), so the whole window fits in two seconds.
import { after, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http, { type Agent, type IncomingHttpHeaders, type Server } from 'node:http';
import { connect, createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import {
  DISCOVERY_PATH,
  generateRsaKey,
  JWKS_PATH,
  MAIN_JS,
  rsaJwk,
  seededRandom,
  startGateway,
  startIssuer,
  startRecorder,
  startServer,
  waitUntil,
  workflowToken,
  type Issuer,
  type ResponsePlan,
  type RunningGateway,
  type TestKey,
  type TestServer,
} from './helpers.js';

const AUDIENCE = 'api://ActionsOIDCGateway';
const RULE = { repository: 'octo-org/octo-repo', ref: 'refs/heads/main' };
const MiB = 1024 * 1024;
/**
 * Small key-set timers: a fetch gives up after 1 s (ten gateways start at once
 * on two cores: less would time out a healthy issuer), an unknown kid refetches
 * after 1 s, the least the config allows.
 */
const KEYS = { fetchTimeoutMs: 1_000, cooldownMs: 1_000 };

const [k1, k2, k3, weak] = await Promise.all([
  generateRsaKey('faults-1'),
  generateRsaKey('faults-2'),
  generateRsaKey('faults-3'),
  generateRsaKey('faults-weak', 1024),
]);

const gateways: RunningGateway[] = [];
const cleanups: (() => unknown)[] = [];
after(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  await Promise.all(cleanups.map((c) => c()));
});

/** Starts a gateway, closed (and its log checked) when test `t` ends, or with the file without one. */
async function gateway(t: TestContext | undefined, config: Record<string, unknown>, opts: { waitReady?: boolean } = {}): Promise<RunningGateway> {
  const gw = await startGateway(config, opts);
  if (t) t.after(() => gw.close());
  else gateways.push(gw);
  return gw;
}

function tokenFor(issuer: { readonly issuer: string }, key: TestKey = k1): string {
  return workflowToken(issuer.issuer, key, AUDIENCE, RULE);
}

const auth = (token: string) => ({ 'gateway-authorization': `Bearer ${token}` });

// ---------------------------------------------------------------- the client side

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  /** The response arrived whole (false when the connection was cut mid-body). */
  readonly complete: boolean;
}

/** One GET; a new connection unless an agent is given. Resolves on a cut response too, with complete false. */
function get(url: string, headers: Record<string, string> = {}, agent: Agent | false = false): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers, agent }, (res) => {
      let body = '';
      res.setEncoding('latin1');
      res.on('data', (chunk: string) => (body += chunk));
      const done = () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, complete: res.complete });
      res.on('end', done);
      res.on('close', done);
      res.on('error', done);
    });
    req.on('error', reject);
  });
}

/** The shared waitUntil calls `check().catch`: every check goes through async here. */
function until(check: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  return waitUntil(async () => check(), timeoutMs);
}

const requestLines = (g: RunningGateway) => g.logs().filter((l) => l.kind === 'request');

/** Waits for the gateway's log line matching `match`, and returns it. */
async function logLine(g: RunningGateway, match: (line: Record<string, unknown>) => boolean, what = 'a matching line'): Promise<Record<string, unknown>> {
  await until(() => g.logs().some(match)).catch(() => {
    throw new Error(`no log line: ${what}; last lines: ${JSON.stringify(g.logs().slice(-4))}`);
  });
  return g.logs().find(match)!;
}

/** A refusal: the status, {"error": reason, "id"} and nothing else, and the same reason and status in the audit line with that id. */
async function assertRefused(g: RunningGateway, answer: Answer, status: number, reason: string): Promise<Record<string, unknown>> {
  assert.equal(answer.status, status, `status (body ${answer.body.slice(0, 200)})`);
  assert.match(String(answer.headers['content-type']), /^application\/json/);
  const body = JSON.parse(answer.body) as Record<string, unknown>;
  assert.deepEqual(Object.keys(body).sort(), ['error', 'id']);
  assert.equal(body.error, reason);
  const line = await logLine(g, (l) => l.kind === 'request' && l.id === body.id, `request ${String(body.id)}`);
  assert.equal(line.reason, reason, 'the audit line gives the reason of the body');
  assert.equal(line.status, status);
  return line;
}

async function readyz(g: RunningGateway): Promise<number> {
  return (await get(`${g.adminUrl}/readyz`)).status;
}

// ---------------------------------------------------------------- the issuer failing at start, then again with keys cached

/** A server that must never be contacted: a redirect target, serving discovery and keys that would work if it were. */
async function startTrap(issuer: () => string): Promise<TestServer> {
  const trap: TestServer = await startServer((req, res) => {
    const body = req.url === DISCOVERY_PATH ? { issuer: issuer(), jwks_uri: `${trap.url}${JWKS_PATH}` } : { keys: [k1.jwk, k2.jwk] };
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  });
  return trap;
}

/** Every key present, every one unusable: the RSA checks the README lists, one failure each. */
const invalidJwks = (key: TestKey): unknown[] => [
  rsaJwk(weak.publicKey, key.kid),
  { ...key.jwk, e: 'Aw' },
  { ...key.jwk, alg: 'RS512' },
  { ...key.jwk, use: 'enc' },
  { ...key.jwk, key_ops: ['sign'] },
  { ...key.jwk, kty: 'EC' },
  { ...key.jwk, n: `${key.jwk.n}=` },
];

interface IssuerFault {
  readonly name: string;
  /** Makes the issuer fail; it should serve `keys` if it worked. */
  readonly fail: (issuer: Issuer, trap: TestServer, keys: TestKey[]) => void | Promise<void>;
  /** Makes it work again, serving `keys`. */
  readonly heal: (issuer: Issuer, keys: TestKey[]) => void | Promise<void>;
  /** The `detail` of the gateway's failed-fetch log line. */
  readonly detail: RegExp;
  /** key_skipped lines the first failed fetch writes (none unless given). */
  readonly skipped?: number;
}

const onJwks = (plan: ResponsePlan | ((trap: TestServer) => ResponsePlan)) => (issuer: Issuer, trap: TestServer, keys: TestKey[]) => {
  issuer.keys = keys.map((k) => k.jwk);
  issuer.setPlan(JWKS_PATH, typeof plan === 'function' ? plan(trap) : plan);
};
const healJwks = (issuer: Issuer) => issuer.setPlan(JWKS_PATH, {});

const ISSUER_FAULTS: IssuerFault[] = [
  {
    name: 'down (connection refused)',
    fail: async (issuer, _trap, keys) => {
      issuer.keys = keys.map((k) => k.jwk);
      await issuer.down();
    },
    heal: (issuer) => issuer.up(),
    detail: /ECONNREFUSED|Unable to connect|refused/i,
  },
  { name: 'slow (answers 3 s after the 1 s fetch timeout)', fail: onJwks({ delayMs: 3_000 }), heal: healJwks, detail: /timed out/ },
  { name: 'answering 500', fail: onJwks({ status: 500 }), heal: healJwks, detail: /answered 500/ },
  { name: 'answering an HTML login page with 200', fail: onJwks({ body: 'html' }), heal: healJwks, detail: /JSON/ },
  { name: 'answering truncated JSON', fail: onJwks({ body: 'truncated' }), heal: healJwks, detail: /JSON/ },
  { name: 'answering a 5 MiB key set with Content-Length', fail: onJwks({ body: 'huge' }), heal: healJwks, detail: /1 MiB/ },
  { name: 'answering a 5 MiB key set, chunked', fail: onJwks({ body: 'huge', chunked: true }), heal: healJwks, detail: /1 MiB/ },
  {
    name: 'redirecting the key set to another server',
    fail: onJwks((trap) => ({ status: 302, location: `${trap.url}${JWKS_PATH}` })),
    heal: healJwks,
    detail: /answered 302/,
  },
  {
    name: 'redirecting discovery to another server',
    fail: (issuer, trap, keys) => {
      issuer.keys = keys.map((k) => k.jwk);
      issuer.setPlan(DISCOVERY_PATH, { status: 301, location: `${trap.url}${DISCOVERY_PATH}` });
    },
    heal: (issuer) => issuer.setPlan(DISCOVERY_PATH, {}),
    detail: /answered 301/,
  },
  {
    name: 'serving a key set in which every key is invalid',
    fail: (issuer, _trap, keys) => {
      issuer.keys = keys.flatMap(invalidJwks);
    },
    heal: (issuer, keys) => {
      issuer.keys = keys.map((k) => k.jwk);
    },
    detail: /no usable RS256 key/,
    skipped: invalidJwks(k1).length,
  },
];

// ---------------------------------------------------------------- upstreams that misbehave on cue

/**
 * An upstream on raw TCP that reads each request head (requests here have no
 * body) and lets `answer` do anything with the socket. OK is a well-formed
 * keep-alive answer.
 */
const OK = 'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok';
interface ScriptedUpstream {
  readonly port: number;
  readonly url: string;
  answer: (socket: Socket, head: string) => void;
  connections: number;
  requests: number;
  /** The request line of every request received, with " after close" when it came on a socket this side had closed. */
  readonly received: string[];
  readonly sockets: Set<Socket>;
  close(): Promise<void>;
}

async function startScripted(answer: ScriptedUpstream['answer'] = (s) => s.write(OK)): Promise<ScriptedUpstream> {
  const sockets = new Set<Socket>();
  const server = createTcpServer((socket) => {
    up.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buffered = '';
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      for (let end = buffered.indexOf('\r\n\r\n'); end >= 0 && !socket.destroyed; end = buffered.indexOf('\r\n\r\n')) {
        const head = buffered.slice(0, end);
        buffered = buffered.slice(end + 4);
        up.requests++;
        // A request that arrives after this side was closed is marked: it can never be answered.
        up.received.push(`${head.slice(0, head.indexOf('\r\n'))}${socket.writableEnded ? ' after close' : ''}`);
        up.answer(socket, head);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const up: ScriptedUpstream = {
    port,
    url: `http://127.0.0.1:${port}`,
    answer,
    connections: 0,
    requests: 0,
    received: [],
    sockets,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  return up;
}

/** A port that was just listening and no longer is. */
async function deadPort(): Promise<number> {
  const s = await startServer((_req, res) => res.end());
  await s.close();
  return s.port;
}

// Every server the file needs up front is started here, before the first test is declared.
const upstreamIssuer = await startIssuer({ keys: [k1.jwk] });
const scripted = await startScripted();
const refusedPort = await deadPort();
/** An upstream that answers 200 "ok" at once, and counts the requests it got. */
let fastRequests = 0;
const fast = await startServer((req, res) => {
  fastRequests++;
  req.resume();
  res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
});
cleanups.push(() => upstreamIssuer.close(), () => scripted.close(), () => fast.close());

// Five at a time: ten gateway processes starting at once on 2 cores can take longer than the 1 s fetch timeout to
// send their first key fetch, which then fails as "timed out" rather than with the fault under test.
describe('issuer faults', { concurrency: 5 }, () => {
  for (const fault of ISSUER_FAULTS) {
    test(`an issuer ${fault.name}: unready and 503 jwks_unavailable at start with the upstream untouched, 200 once it heals; later, with keys cached, a new kid is 401 kid_unknown and the cached key still passes`, { timeout: 20_000 }, async (t) => {
      const issuer = await startIssuer({ keys: [k1.jwk] });
      const trap = await startTrap(() => issuer.issuer);
      const upstream = await startRecorder();
      cleanups.push(() => issuer.close(), () => trap.close(), () => upstream.close());
      await fault.fail(issuer, trap, [k1]);
      const gw = await gateway(
        t,
        { issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], keys: KEYS, routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [RULE] }] },
        { waitReady: false },
      );
      const url = `${gw.url}/api/x`;

      // At start: nothing usable. The request waits at most for the fetch in flight.
      const started = Date.now();
      const refused = await get(url, auth(tokenFor(issuer)));
      const waited = Date.now() - started;
      await assertRefused(gw, refused, 503, 'jwks_unavailable');
      assert.equal(refused.headers['retry-after'], '5');
      assert.ok(waited < KEYS.fetchTimeoutMs + 1_000, `answered after ${waited} ms`);
      const failed = await logLine(gw, (l) => l.kind === 'keys' && l.result === 'error', 'a failed key fetch');
      assert.match(String(failed.detail), fault.detail);
      assert.equal(failed.stale, false);
      assert.equal(gw.logs().filter((l) => l.kind === 'keys' && l.result === 'key_skipped').length, fault.skipped ?? 0, 'key_skipped lines');
      assert.equal(await readyz(gw), 503);
      assert.equal(upstream.connections(), 0, 'the upstream was contacted');

      // The issuer heals: the gateway retries on its own (1 s back-off) and the next request passes.
      await fault.heal(issuer, [k1]);
      await until(async () => (await readyz(gw)) === 200, 5_000);
      const admitted = await get(url, auth(tokenFor(issuer)));
      assert.equal(admitted.status, 200, admitted.body);
      assert.equal(upstream.hits(), 1);

      // The same fault again while a rotation publishes k2: the refetch for k2 fails, the cached k1 keeps serving.
      await fault.fail(issuer, trap, [k1, k2]);
      const errors = gw.logs().filter((l) => l.kind === 'keys' && l.result === 'error').length;
      await sleep(KEYS.cooldownMs + 100);
      const unknown = await get(url, auth(tokenFor(issuer, k2)));
      await assertRefused(gw, unknown, 401, 'kid_unknown');
      assert.equal(upstream.hits(), 1, 'the upstream was contacted for a refused token');
      const stale = await logLine(gw, (l) => l.kind === 'keys' && l.result === 'error' && l.stale === true, 'a failed refetch with stale keys');
      assert.match(String(stale.detail), fault.detail);
      assert.equal(gw.logs().filter((l) => l.kind === 'keys' && l.result === 'error').length, errors + 1);
      const cached = await get(url, auth(tokenFor(issuer)));
      assert.equal(cached.status, 200, cached.body);
      assert.equal(upstream.hits(), 2);
      assert.equal(await readyz(gw), 200);

      if (fault.name.startsWith('redirecting')) assert.equal(trap.connections(), 0, 'a redirect was followed');
      // Healed once more, k2 is found by the next refetch.
      await fault.heal(issuer, [k1, k2]);
      await sleep(KEYS.cooldownMs + 100);
      const rotated = await get(url, auth(tokenFor(issuer, k2)));
      assert.equal(rotated.status, 200, rotated.body);
      assert.equal(upstream.hits(), 3);
    });
  }
});

// ---------------------------------------------------------------- keys rotating under load

test('keys rotating while requests flow: every request signed with a published key passes, and the dropped kid is refused as 401 kid_unknown', { timeout: 20_000 }, async (t) => {
  const issuer = await startIssuer({ keys: [k1.jwk] });
  let upstreamRequests = 0;
  const upstream = await startServer((req, res) => {
    upstreamRequests++;
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
  });
  cleanups.push(() => issuer.close(), () => upstream.close());
  const gw = await gateway(t, { issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], keys: KEYS, routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [RULE] }] });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  cleanups.push(() => agent.destroy());

  // A few distinct tokens per key, so both full verification and the verified-token cache are exercised.
  const pool = new Map([k1, k2, k3].map((k) => [k.kid, Array.from({ length: 8 }, () => tokenFor(issuer, k))]));
  let signing: TestKey[] = [k1];
  let stop = false;
  const failures: string[] = [];
  const sent = new Map<string, number>();
  const worker = async (w: number) => {
    for (let i = w; !stop; i += 8) {
      const key = signing[i % signing.length]!;
      const answer = await get(`${gw.url}/api/${i}`, auth(pool.get(key.kid)![i % 8]!), agent);
      sent.set(key.kid, (sent.get(key.kid) ?? 0) + 1);
      if (answer.status !== 200) failures.push(`${key.kid}: ${answer.status} ${answer.body}`);
    }
  };
  const workers = Array.from({ length: 8 }, (_, w) => worker(w));

  await sleep(300);
  // k2 is published; tokens signed with it come once a refetch is allowed (GitHub publishes keys before using them).
  issuer.keys = [k1.jwk, k2.jwk];
  await sleep(KEYS.cooldownMs + 100);
  signing = [k1, k2];
  await sleep(500);
  // k1 is dropped and k3 published; tokens move to k2 and k3.
  issuer.keys = [k2.jwk, k3.jwk];
  signing = [k2];
  await sleep(KEYS.cooldownMs + 100);
  signing = [k2, k3];
  await sleep(500);
  stop = true;
  await Promise.all(workers);

  assert.deepEqual(failures.slice(0, 5), [], `${failures.length} requests failed`);
  for (const kid of [k1.kid, k2.kid, k3.kid]) assert.ok((sent.get(kid) ?? 0) >= 20, `only ${sent.get(kid)} requests with ${kid}`);
  // One fetch at start, one for k2, one for k3, however many requests asked at once.
  assert.equal(issuer.hits(JWKS_PATH), 3);

  const passed = [...sent.values()].reduce((a, b) => a + b, 0) - failures.length;
  assert.equal(upstreamRequests, passed, 'every request that passed, and only those, reached the upstream');
  const dropped = await get(`${gw.url}/api/old`, auth(pool.get(k1.kid)![0]!));
  await assertRefused(gw, dropped, 401, 'kid_unknown');
  assert.equal(upstreamRequests, passed, 'the upstream was contacted for the dropped kid');
  assert.equal(requestLines(gw).filter((l) => l.path === '/api/old').length, 1);
  const next = await get(`${gw.url}/api/new`, auth(tokenFor(issuer, k3)));
  assert.equal(next.status, 200, next.body);
});

// ---------------------------------------------------------------- cached keys through an outage, then the stale window ends

interface ClockedGateway {
  readonly gw: RunningGateway;
  /** Sets the gateway's Date.now to the real clock plus `ms` (timers are untouched: they keep real time). */
  setOffset(ms: number): void;
}

/**
 * Runs dist/main.js under a wrapper that replaces Date.now, before the gateway
 * loads, with the real clock plus an offset, read from a file on SIGUSR2. Only
 * the clock moves: the gateway's code, config and sockets are the real ones, so
 * the key set's max age (at least 60 s) can pass at once and its stale window
 * then runs in real time.
 */
async function startClockedGateway(t: TestContext, config: Record<string, unknown>): Promise<ClockedGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'oidc-gateway-faults-'));
  const wrapper = join(dir, 'clocked.mjs');
  const offsetFile = join(dir, 'offset');
  writeFileSync(
    wrapper,
    [
      "import { readFileSync } from 'node:fs';",
      'const realNow = Date.now;',
      'let offset = 0;',
      'Date.now = () => realNow() + offset;',
      `process.on('SIGUSR2', () => { offset = Number(readFileSync(${JSON.stringify(offsetFile)}, 'utf8')); });`,
      `await import(${JSON.stringify(pathToFileURL(MAIN_JS).href)});`,
    ].join('\n'),
  );
  const gw = await startGateway(config, { waitReady: false, entry: wrapper });
  t.after(() => gw.close().finally(() => rmSync(dir, { recursive: true, force: true })));
  return {
    gw,
    setOffset(ms) {
      writeFileSync(offsetFile, String(ms));
      gw.process.child.kill('SIGUSR2');
    },
  };
}

test('cached keys keep serving through an issuer outage past their max age for keys.staleIfErrorMs, then 503 jwks_unavailable; 200 again once the issuer is back', { timeout: 20_000 }, async (t) => {
  const STALE_MS = 2_000;
  const issuer = await startIssuer({ keys: [k1.jwk] });
  issuer.setPlan(JWKS_PATH, { cacheControl: 'max-age=60' });
  const upstream = await startRecorder();
  cleanups.push(() => issuer.close(), () => upstream.close());
  const { gw, setOffset } = await startClockedGateway(t, {
    issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }],
    keys: { ...KEYS, staleIfErrorMs: STALE_MS },
    routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [RULE] }],
  });
  await until(async () => (await readyz(gw)) === 200, 10_000);
  const token = tokenFor(issuer);
  assert.equal((await get(`${gw.url}/api/fresh`, auth(token))).status, 200);
  const status = JSON.parse((await get(`${gw.adminUrl}/readyz`)).body) as { issuers: Record<string, { lastGoodFetch: number }> };
  const lastGoodFetch = status.issuers[issuer.issuer]!.lastGoodFetch;

  await issuer.down();
  const age = async () => Number((await get(`${gw.adminUrl}/metrics`)).body.match(/^oidc_gateway_jwks_last_good_fetch_age_seconds\{[^}]*\} (\S+)$/m)?.[1]);
  const before = await age();
  assert.ok(before >= 0 && before < 5, `key set age ${before} s before the jump`);
  // The gateway's clock jumps to 100 ms past the key set's max age (60 s); its stale window then ends
  // STALE_MS after the max age on that clock, which is `endsAt` on ours.
  const offset = lastGoodFetch + 60_000 + 100 - Date.now();
  setOffset(offset);
  await until(async () => (await age()) >= 60, 2_000);
  const endsAt = lastGoodFetch + 60_000 + STALE_MS - offset;
  assert.ok(Date.now() < endsAt - 1_000, 'the jump came too late to see the window');

  // Past the max age, the issuer down: the same (remembered) token keeps passing, /readyz stays 200.
  const answers: { at: number; answer: Answer }[] = [];
  while (Date.now() < endsAt + 2_000) {
    const sentAt = Date.now();
    const answer = await get(`${gw.url}/api/stale`, auth(token));
    answers.push({ at: sentAt, answer });
    if (answer.status !== 200) break;
    if (answers.length === 1) assert.equal(await readyz(gw), 200, '/readyz while the stale keys serve');
    await sleep(100);
  }
  const served = answers.filter((a) => a.answer.status === 200);
  const first = answers.find((a) => a.answer.status !== 200);
  t.diagnostic(`${served.length} requests served from stale keys; the last ${endsAt - served.at(-1)!.at} ms before the window ended, the first refusal ${first ? first.at - endsAt : NaN} ms after`);
  assert.ok(served.length >= 5, `only ${served.length} requests were served from the stale keys`);
  assert.ok(first, 'still served after the stale window ended');
  await assertRefused(gw, first.answer, 503, 'jwks_unavailable');
  // Every answer on the right side of the window (50 ms either side for the request's own time).
  assert.ok(served.at(-1)!.at < endsAt + 50, `served ${served.at(-1)!.at - endsAt} ms after the window ended`);
  assert.ok(first.at > endsAt - 50, `refused ${endsAt - first.at} ms before the window ended`);
  assert.equal(upstream.hits(), 1 + served.length, 'the upstream was contacted for the refused request');
  assert.equal(await readyz(gw), 503);
  const failed = gw.logs().filter((l) => l.kind === 'keys' && l.result === 'error');
  assert.ok(failed.length >= 1 && failed[0]!.stale === true, JSON.stringify(failed[0]));

  // The issuer comes back: once the cooldown since the last attempt has passed, the next request refetches and passes.
  await issuer.up();
  await sleep(KEYS.cooldownMs + 100);
  const back = await get(`${gw.url}/api/back`, auth(token));
  assert.equal(back.status, 200, back.body);
  assert.equal(await readyz(gw), 200);
});

// ---------------------------------------------------------------- upstream faults

const TOKEN = tokenFor(upstreamIssuer);
const route = (path: string, upstream: string) => ({ path, upstream, allow: [RULE] });
let upstreamGw: RunningGateway | undefined;
/** One gateway for the upstream faults, with a 300 ms wait for an upstream's head. */
async function upstreamGateway(): Promise<RunningGateway> {
  upstreamGw ??= await gateway(undefined, {
    issuers: [{ issuer: upstreamIssuer.issuer, audience: AUDIENCE }],
    timeouts: { upstreamHeadMs: 300, upstreamConnectMs: 1_000 },
    routes: [route('/refused', `http://127.0.0.1:${refusedPort}/`), route('/scripted', `${scripted.url}/`)],
  });
  return upstreamGw;
}

/** Sends one request through `/scripted` with the upstream answering `answer`, then one with it answering OK. */
let faultCount = 0;
async function scriptedFault(answer: ScriptedUpstream['answer']): Promise<{ gw: RunningGateway; failed: Answer; path: string; requests: number }> {
  const gw = await upstreamGateway();
  scripted.answer = answer;
  const before = scripted.requests;
  const path = `/scripted/fault-${++faultCount}`;
  const failed = await get(`${gw.url}${path}`, auth(TOKEN));
  const requests = scripted.requests - before;
  scripted.answer = (s) => s.write(OK);
  const next = await get(`${gw.url}/scripted/next`, auth(TOKEN));
  assert.equal(next.status, 200, `the next request: ${next.status} ${next.body}`);
  assert.equal(next.body, 'ok');
  return { gw, failed, path, requests };
}

test('an upstream that refuses connections is 502 upstream_unreachable; once it listens again the next request passes', async () => {
  const gw = await upstreamGateway();
  const refused = await get(`${gw.url}/refused/x`, auth(TOKEN));
  const line = await assertRefused(gw, refused, 502, 'upstream_unreachable');
  assert.equal(line.decision, 'error');
  assert.equal(line.upstreamStatus, undefined);

  const revived = await new Promise<Server>((resolve) => {
    const server = http.createServer((req, res) => (req.resume(), res.end('back')));
    server.listen(refusedPort, '127.0.0.1', () => resolve(server));
  });
  cleanups.push(() => new Promise((resolve) => (revived.closeAllConnections(), revived.close(resolve))));
  const next = await get(`${gw.url}/refused/x`, auth(TOKEN));
  assert.equal(next.status, 200, next.body);
  assert.equal(next.body, 'back');
});

test('an upstream that resets the connection before its head is 502 upstream_unreachable, and the next request passes', async () => {
  const { gw, failed, requests } = await scriptedFault((s) => s.resetAndDestroy());
  assert.equal(requests, 1, 'the upstream received the request');
  await assertRefused(gw, failed, 502, 'upstream_unreachable');
});

test('an upstream that resets mid-response cuts the client response after its 200 head, logged as upstream_reset, and the next request passes', async () => {
  const { gw, failed, path, requests } = await scriptedFault((s) => {
    s.write(`HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: ${MiB}\r\n\r\n`);
    s.write(Buffer.alloc(64 * 1024, 0x62), () => setTimeout(() => s.resetAndDestroy(), 20));
  });
  assert.equal(requests, 1);
  assert.equal(failed.status, 200, 'the head was already sent');
  assert.equal(failed.complete, false, 'the cut response must not look complete');
  assert.ok(failed.body.length < MiB, `received ${failed.body.length} bytes`);
  const line = await logLine(gw, (l) => l.kind === 'request' && l.path === path, 'the cut response');
  assert.equal(line.reason, 'upstream_reset');
  assert.equal(line.status, 200);
  assert.equal(line.decision, 'allow');
});

test('an upstream that accepts the request and never answers is 504 upstream_timeout after upstreamHeadMs, is not sent the request again, and the next request passes', async () => {
  // A pooled connection for the GET to go out on: giving up on a reused socket must not look like the upstream's reset.
  assert.equal((await get(`${(await upstreamGateway()).url}/scripted/warm`, auth(TOKEN))).status, 200);
  const started = Date.now();
  const { gw, failed, path, requests } = await scriptedFault(() => {});
  const waited = Date.now() - started;
  assert.equal(requests, 1);
  await assertRefused(gw, failed, 504, 'upstream_timeout');
  assert.ok(waited >= 290 && waited < 3_000, `answered after ${waited} ms with upstreamHeadMs 300`);
  await sleep(300);
  assert.equal(scripted.received.filter((l) => l.startsWith(`GET ${path.slice('/scripted'.length)} `)).length, 1, 'sent again after the 504');
});

test('an upstream that sends 64 KiB of headers is 502 upstream_unreachable, and the next request passes', async () => {
  const headers = Array.from({ length: 64 }, (_, i) => `x-filler-${i}: ${'f'.repeat(1000)}\r\n`).join('');
  const { gw, failed, requests } = await scriptedFault((s) => s.write(`HTTP/1.1 200 OK\r\n${headers}content-length: 2\r\n\r\nok`));
  assert.equal(requests, 1);
  await assertRefused(gw, failed, 502, 'upstream_unreachable');
});

const MALFORMED: [string, string][] = [
  ['no HTTP at all', 'HELLO WORLD\r\n\r\n'],
  ['a status line and then the socket closed', 'HTTP/1.1 200 OK\r\n'],
  ['a four-digit status', 'HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok'],
  ['a header line without a colon', 'HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 2\r\n\r\nok'],
  ['a space inside a header name', 'HTTP/1.1 200 OK\r\nbad name: v\r\ncontent-length: 2\r\n\r\nok'],
  ['a NUL in a header value', 'HTTP/1.1 200 OK\r\nx-bad: a\0b\r\ncontent-length: 2\r\n\r\nok'],
  ['two different Content-Length headers', 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 30\r\n\r\nok'],
  ['Content-Length together with chunked', 'HTTP/1.1 200 OK\r\ncontent-length: 30\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n'],
  ['a 1xx as the final answer, then the socket closed', 'HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n'],
];

for (const [what, bytes] of MALFORMED) {
  test(`an upstream that answers with ${what} is 502 upstream_unreachable, and the next request passes`, async () => {
    const { gw, failed, requests } = await scriptedFault((s) => s.end(bytes));
    assert.equal(requests, 1);
    await assertRefused(gw, failed, 502, 'upstream_unreachable');
  });
}

test('an upstream whose chunked body turns malformed after a good head cuts the client response, logged as upstream_reset, and the next request passes', async () => {
  const { gw, failed, path } = await scriptedFault((s) => s.end('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nnot a chunk\r\n'));
  assert.equal(failed.status, 200);
  assert.equal(failed.complete, false, `a response cut by the upstream looks complete: ${JSON.stringify(failed.body)}`);
  const line = await logLine(gw, (l) => l.kind === 'request' && l.path === path, 'the cut response');
  assert.equal(line.reason, 'upstream_reset');
  assert.equal(line.status, 200);
});

// ---------------------------------------------------------------- upstreams closing keep-alive sockets

interface CloseRun {
  /** One line per request that did not pass: its index, the pause before it, status, reason, and whether the upstream saw it. */
  readonly failures: string[];
  readonly connections: number;
}

/**
 * `count` requests in sequence, each `pause()` ms after the previous answer, over
 * one keep-alive client connection, through a fresh gateway to an upstream that
 * closes its sockets its own way.
 */
async function keepAliveRun(t: TestContext, answer: ScriptedUpstream['answer'], count: number, pause: () => number): Promise<CloseRun> {
  const upstream = await startScripted(answer);
  cleanups.push(() => upstream.close());
  const gw = await gateway(t, { issuers: [{ issuer: upstreamIssuer.issuer, audience: AUDIENCE }], routes: [route('/ka', `${upstream.url}/`)] });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  cleanups.push(() => agent.destroy());
  const failed: { i: number; paused: number; answer: Answer }[] = [];
  let paused = 0;
  for (let i = 0; i < count; i++) {
    const answer = await get(`${gw.url}/ka/${i}`, auth(TOKEN), agent);
    if (answer.status !== 200) failed.push({ i, paused, answer });
    paused = pause();
    if (paused > 0) await sleep(paused);
  }
  await until(() => requestLines(gw).length >= count);
  const failures = failed.map(({ i, paused, answer }) => {
    const line = requestLines(gw).find((l) => l.path === `/ka/${i}`);
    const seen = upstream.received.find((r) => r.startsWith(`GET /${i} HTTP/1.1`));
    const fate = seen === undefined ? 'never reached the upstream' : seen.endsWith('after close') ? 'reached the upstream after it had closed that connection' : 'was received by the upstream';
    return `request ${i}, ${paused} ms after the previous answer: ${answer.status} ${String(line?.reason)}, ${fate}`;
  });
  return { failures, connections: upstream.connections };
}

test('an upstream that closes each connection right after its answer, without Connection: close: 300 sequential requests all pass', async (t) => {
  const random = seededRandom(7);
  const run = await keepAliveRun(t, (s) => s.end(OK), 300, () => Math.floor(random() * 3));
  t.diagnostic(`${run.failures.length} of 300 answered 502, over ${run.connections} upstream connections`);
  assert.deepEqual(run.failures.slice(0, 5), [], `${run.failures.length} of 300 requests failed: the gateway sent them on pooled sockets the upstream had already closed`);
  assert.ok(run.connections >= 290, `${run.connections} connections for 300 requests`);
});

test('an upstream that closes each keep-alive socket once idle for 15 ms: 100 requests sent 12 to 18 ms apart all pass', async (t) => {
  const random = seededRandom(15);
  const run = await keepAliveRun(t, (s) => {
    s.write(OK);
    // A keep-alive timeout shorter than the gateway keeps pooled sockets: close once idle for 15 ms.
    const socket = s as Socket & { idleTimer?: ReturnType<typeof setTimeout> };
    clearTimeout(socket.idleTimer);
    socket.idleTimer = setTimeout(() => s.end(), 15);
  }, 100, () => 12 + Math.floor(random() * 7));
  t.diagnostic(`${run.failures.length} of 100 answered 502, over ${run.connections} upstream connections`);
  assert.deepEqual(run.failures.slice(0, 5), [], `${run.failures.length} of 100 requests failed: the gateway sent them on pooled sockets the upstream had already closed`);
});

// ---------------------------------------------------------------- clients


interface OpenSocket {
  readonly socket: Socket;
  readonly openedAt: number;
  /** When the connection closed, if it has. */
  closedAt(): number | undefined;
  /** What the gateway sent on it, as latin1 text (the first 200 bytes). */
  received(): string;
}

/** Opens a TCP connection to the gateway, reads whatever comes (so a close is seen), and notes when it closes. */
function openSocket(port: number): Promise<OpenSocket> {
  return new Promise((resolve, reject) => {
    let closedAt: number | undefined;
    let text = '';
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => {});
    socket.on('close', () => (closedAt = Date.now()));
    socket.once('connect', () => {
      socket.on('data', (data: Buffer) => (text.length < 200 ? (text += data.toString('latin1')) : undefined));
      resolve({ socket, openedAt: Date.now(), closedAt: () => closedAt, received: () => text });
    });
    socket.once('error', reject);
  });
}

test('1,000 idle connections and 200 slow-header connections held open while valid traffic flows: every request passes, slow heads are cut after clientHeadersMs, silent sockets within idleMs', { timeout: 30_000 }, async (t) => {
  const HEADERS_MS = 1_000;
  const IDLE_MS = 2_000;
  const upstream = await startRecorder((_req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('ok'));
  cleanups.push(() => upstream.close());
  const gw = await gateway(t, {
    issuers: [{ issuer: upstreamIssuer.issuer, audience: AUDIENCE }],
    timeouts: { clientHeadersMs: HEADERS_MS, idleMs: IDLE_MS },
    routes: [route('/api', `${upstream.url}/`)],
  });
  const idle: OpenSocket[] = [];
  for (let batch = 0; batch < 10; batch++) idle.push(...(await Promise.all(Array.from({ length: 100 }, () => openSocket(gw.port)))));
  const slow = await Promise.all(Array.from({ length: 200 }, () => openSocket(gw.port)));
  const slowStarted = Date.now();
  // Never the blank line that ends the head: one more header line every 200 ms.
  for (const { socket } of slow) socket.write(`GET /api/slow HTTP/1.1\r\nhost: gw\r\ngateway-authorization: ${TOKEN}\r\n`);
  const drip = setInterval(() => {
    for (const { socket, closedAt } of slow) if (closedAt() === undefined) socket.write(`x-drip: ${Date.now()}\r\n`);
  }, 200);
  cleanups.push(() => clearInterval(drip));

  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  cleanups.push(() => agent.destroy());
  const failures: string[] = [];
  let passed = 0;
  // Valid traffic for as long as any of them is held open (at most idleMs and a check later).
  const held = () => [...slow, ...idle].some((s) => s.closedAt() === undefined);
  const traffic = async () => {
    while (held() && Date.now() - slowStarted < IDLE_MS + 2_000) {
      const answer = await get(`${gw.url}/api/valid`, auth(TOKEN), agent);
      if (answer.status === 200) passed++;
      else failures.push(`${answer.status} ${answer.body}`);
      await sleep(5);
    }
  };
  await Promise.all([traffic(), traffic(), traffic(), traffic()]);
  clearInterval(drip);

  const range = (list: OpenSocket[], from: (s: OpenSocket) => number) => {
    const after = list.map((s) => (s.closedAt() ?? NaN) - from(s));
    return `${Math.min(...after)} to ${Math.max(...after)} ms`;
  };
  t.diagnostic(`${passed} valid requests passed; slow heads cut ${range(slow, () => slowStarted)} after their first line, idle sockets ${range(idle, (s) => s.openedAt)} after opening`);
  assert.deepEqual(failures, []);
  assert.ok(passed >= 100, `only ${passed} valid requests while the connections were held`);
  assert.equal(upstream.requests.length, passed, 'a slow or idle connection reached the upstream');
  const slowClosed = slow.map((s) => s.closedAt());
  assert.ok(slowClosed.every((t) => t !== undefined), `${slowClosed.filter((t) => t === undefined).length} slow-header connections still open`);
  const slowAfter = slowClosed.map((t) => t! - slowStarted);
  assert.ok(Math.min(...slowAfter) >= HEADERS_MS - 100, `a slow-header connection was cut after ${Math.min(...slowAfter)} ms`);
  // The server checks heads once a second: cut between clientHeadersMs and a check later (and some slack).
  assert.ok(Math.max(...slowAfter) <= HEADERS_MS + 2_000, `a slow-header connection was cut after ${Math.max(...slowAfter)} ms`);
  const answered = (s: OpenSocket) => /^(HTTP\/1\.1 (400|408) |$)/.test(s.received());
  assert.deepEqual(slow.filter((s) => !answered(s)).map((s) => s.received().slice(0, 40)), [], 'a slow-header connection got something other than 400 or 408');

  // Silent sockets, never written to: cut after clientHeadersMs (Node) or idleMs (Bun), and never before clientHeadersMs.
  const open = idle.filter((s) => s.closedAt() === undefined).length;
  assert.equal(open, 0, `${open} of 1,000 idle connections still open ${Date.now() - idle[0]!.openedAt} ms after the first was opened`);
  const idleAfter = idle.map((s) => s.closedAt()! - s.openedAt);
  assert.ok(Math.min(...idleAfter) >= HEADERS_MS - 100, `an idle connection was cut after ${Math.min(...idleAfter)} ms`);
  assert.ok(Math.max(...idleAfter) <= IDLE_MS + 2_000, `an idle connection was cut after ${Math.max(...idleAfter)} ms`);
  assert.deepEqual(idle.filter((s) => !answered(s)).map((s) => s.received().slice(0, 40)), [], 'an idle connection got something other than 400 or 408');
  const next = await get(`${gw.url}/api/next`, auth(TOKEN));
  assert.equal(next.status, 200, next.body);
});

test('a client that stops reading a large download: the gateway holds the upstream back, and its RSS stays flat, within 48 MiB of where it was; the next request passes', { timeout: 20_000 }, async (t) => {
  let produced = 0;
  let closed = false;
  const chunk = Buffer.alloc(256 * 1024, 0x61);
  const endless = await startServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    // Writes until the socket pushes back, then waits for 'drain': what a well-behaved upstream does.
    const pump = () => {
      while (!res.destroyed) {
        produced += chunk.length;
        if (!res.write(chunk)) return;
      }
    };
    res.on('drain', pump);
    res.on('close', () => (closed = true));
    pump();
  });
  cleanups.push(() => endless.close());
  const gw = await gateway(t, { issuers: [{ issuer: upstreamIssuer.issuer, audience: AUDIENCE }], routes: [route('/big', `${endless.url}/`), route('/api', `${fast.url}/`)] });
  const pid = gw.process.child.pid!;
  const rss = () => Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/)![1]) / 1024;
  // Warm up the path the download takes, so what is measured is the stall.
  assert.equal((await get(`${gw.url}/api/warm`, auth(TOKEN))).status, 200);
  const baseline = rss();

  const client = await openSocket(gw.port);
  let received = 0;
  client.socket.on('data', (data: Buffer) => {
    received += data.length;
    if (received >= MiB) client.socket.pause();
  });
  client.socket.write(`GET /big/stream HTTP/1.1\r\nhost: gw\r\ngateway-authorization: ${TOKEN}\r\n\r\n`);
  await until(() => received >= MiB, 5_000);

  // The buffers between the two fill up (the kernel's on both hops, the gateway's stream buffers), then the upstream
  // is held back: it stops writing. From then on, 2 s of a client reading nothing.
  let last = -1;
  await until(async () => {
    const now = produced;
    await sleep(200);
    return produced === now && now === (last = now);
  }, 5_000).catch(() => {
    throw new Error(`the upstream never stopped writing: ${(produced / MiB).toFixed(1)} MiB for a client that read ${(received / MiB).toFixed(1)} MiB`);
  });
  const samples: number[] = [];
  for (let i = 0; i < 20; i++) {
    samples.push(rss());
    await sleep(100);
  }
  const peak = Math.max(...samples);
  const filled = Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+) kB/)![1]) / 1024;
  t.diagnostic(`gateway RSS ${baseline.toFixed(1)} MiB before, ${Math.min(...samples).toFixed(1)} to ${peak.toFixed(1)} MiB while stalled (VmHWM since start ${filled.toFixed(1)} MiB); the upstream wrote ${(produced / MiB).toFixed(1)} MiB, the client read ${(received / MiB).toFixed(1)} MiB`);
  assert.ok(peak - baseline < 48, `gateway RSS ${baseline.toFixed(1)} MiB before, ${peak.toFixed(1)} MiB at most while stalled`);
  // Flat, not still: a runtime's collector and JIT move RSS by a few MiB on their own (Bun drifted ~5 MiB in CI);
  // that the upstream was held back is asserted exactly below.
  assert.ok(peak - Math.min(...samples) < 16, `gateway RSS moved from ${Math.min(...samples).toFixed(1)} to ${peak.toFixed(1)} MiB while nothing moved`);
  assert.equal(produced, last, 'the upstream wrote more while the client read nothing');
  assert.ok(produced < 64 * MiB, `the upstream wrote ${(produced / MiB).toFixed(1)} MiB for a client that read ${(received / MiB).toFixed(1)} MiB`);

  client.socket.destroy();
  await until(() => closed, 5_000);
  const line = await logLine(gw, (l) => l.kind === 'request' && l.path === '/big/stream', 'the download');
  assert.equal(line.reason, 'client_aborted');
  const next = await get(`${gw.url}/api/next`, auth(TOKEN));
  assert.equal(next.status, 200);
});

test('10,000 requests over 16 keep-alive connections all pass, with the connections reused', { timeout: 60_000 }, async (t) => {
  const gw = await gateway(t, { issuers: [{ issuer: upstreamIssuer.issuer, audience: AUDIENCE }], routes: [route('/api', `${fast.url}/`)] });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  cleanups.push(() => agent.destroy());
  const tokens = Array.from({ length: 32 }, () => tokenFor(upstreamIssuer));
  const sockets = new Set<unknown>();
  const upstreamBefore = fast.connections();
  const requestsBefore = fastRequests;
  const failures: string[] = [];
  let next = 0;
  const started = Date.now();
  const worker = async () => {
    for (let i = next++; i < 10_000; i = next++) {
      const answer = await new Promise<Answer>((resolve, reject) => {
        const req = http.get(`${gw.url}/api/${i}`, { headers: auth(tokens[i % tokens.length]!), agent }, (res) => {
          let body = '';
          res.setEncoding('latin1');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, complete: res.complete }));
        });
        req.on('socket', (s) => sockets.add(s));
        req.on('error', reject);
      }).catch((err: Error) => ({ status: 0, headers: {}, body: err.message, complete: false }));
      if (answer.status !== 200 || answer.body !== 'ok') failures.push(`${i}: ${answer.status} ${answer.body}`);
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  const ms = Date.now() - started;
  t.diagnostic(`10,000 requests in ${ms} ms (${Math.round(10_000 / (ms / 1000))}/s), ${sockets.size} client connections, ${fast.connections() - upstreamBefore} upstream connections`);
  assert.deepEqual(failures.slice(0, 5), [], `${failures.length} requests failed`);
  assert.ok(sockets.size <= 16, `${sockets.size} client connections`);
  assert.equal(fastRequests - requestsBefore, 10_000, 'requests that reached the upstream');
  assert.ok(fast.connections() - upstreamBefore <= 64, `${fast.connections() - upstreamBefore} upstream connections for 10,000 requests`);
  await until(() => requestLines(gw).length >= 10_000, 5_000);
  assert.equal(requestLines(gw).filter((l) => l.status === 200).length, 10_000);
});
