// The process lifecycle, end to end: SIGTERM drains (nothing in flight is lost,
// nothing new gets in, drainMs bounds it) and SIGHUP reloads the config (a bad
// one is logged and ignored; a good one changes routing without refetching the
// keys of issuers it did not touch). dist/main.js runs as its own process.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  httpRequest as request,
  httpGet as get,
  type HttpAnswer as Answer,
  DISCOVERY_PATH,
  GATEWAY_RUNTIME,
  JWKS_PATH,
  MAIN_JS,
  generateRsaKey,
  workflowToken,
  startGateway,
  startIssuer,
  startRecorder,
  startProcess,
  startServer,
  waitUntil,
  type Issuer,
  type RunningGateway,
  type TestKey,
} from './helpers.js';

const AUDIENCE = 'api://ActionsOIDCGateway';
const RULE = { repository: 'octo-org/octo-repo', ref: 'refs/heads/main' };
const [key, otherKey] = await Promise.all([generateRsaKey('life-1'), generateRsaKey('life-2')]);

const sentTokens: string[] = [];
const gateways: RunningGateway[] = [];
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  await Promise.all(cleanups.map((c) => c()));
});

function tokenFor(issuer: Issuer, signer: TestKey = key): string {
  const token = workflowToken(issuer.issuer, signer, AUDIENCE, RULE);
  sentTokens.push(token);
  return token;
}

async function gateway(config: Record<string, unknown>): Promise<RunningGateway> {
  const gw = await startGateway(config);
  gateways.push(gw);
  return gw;
}

const GET_NOWHERE = 'GET /nowhere HTTP/1.1\r\nHost: gateway\r\n\r\n';

/** A raw keep-alive connection to the gateway: what it has received so far, and when the gateway closed it (0: open). */
function rawClient(port: number) {
  const socket = connect(port, '127.0.0.1');
  cleanups.push(async () => socket.destroy());
  const seen = { text: '', closedAt: 0 };
  socket.setEncoding('latin1').on('data', (c: string) => (seen.text += c));
  socket.on('close', () => (seen.closedAt = Date.now()));
  return { socket, seen };
}

/** Rewrites the running gateway's config file (ports as startGateway bound them) and sends SIGHUP. */
function reload(gw: RunningGateway, config: Record<string, unknown> | string): void {
  const text = typeof config === 'string' ? config : JSON.stringify({ listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, ...config });
  writeFileSync(gw.configFile, text);
  gw.process.child.kill('SIGHUP');
}

/** Waits for the n-th log line (1-based) that `match` accepts, and returns it. */
async function nthLog(gw: RunningGateway, n: number, match: (l: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  await waitUntil(() => gw.logs().filter(match).length >= n, 5_000);
  return gw.logs().filter(match)[n - 1]!;
}

const isReloadError = (l: Record<string, unknown>) => l.kind === 'config' && l.result === 'error';
const isReloaded = (l: Record<string, unknown>) => l.kind === 'config' && l.reloaded === true;
const requestLines = (gw: RunningGateway) => gw.logs().filter((l) => l.kind === 'request');

function assertRefused(answer: Answer, status: number, reason: string): void {
  assert.equal(answer.status, status, `status (body ${answer.body.slice(0, 200)})`);
  assert.equal((JSON.parse(answer.body) as { error: string }).error, reason);
}

/** 'connected', or the error code of a fresh TCP connection to a port. */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.on('connect', () => (socket.destroy(), resolve('connected')));
    socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? String(err)));
  });
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- SIGTERM

test('SIGTERM under load loses no request: in-flight GETs and a streamed upload finish with 200, nothing new gets in, the process exits 0', { timeout: 20_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  let heads = 0;
  const slow = await startServer((req, res) => {
    heads++;
    let bytes = 0;
    req.on('data', (chunk: Buffer) => (bytes += chunk.length));
    req.on('end', () => setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end(`${req.method} ${req.url} ${bytes}`), 800));
  });
  cleanups.push(() => issuer.close(), () => slow.close());
  const gw = await gateway({ issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: `${slow.url}/`, allow: [RULE] }], timeouts: { drainMs: 5_000 } });
  const auth = { 'gateway-authorization': `Bearer ${tokenFor(issuer)}` };

  const gets = [1, 2, 3].map((n) => get(`${gw.url}/api/get${n}`, auth));
  const keepAlive = new http.Agent({ keepAlive: true });
  const kept = request(`${gw.url}/api/kept`, { headers: auth, agent: keepAlive });
  kept.req.end();
  const chunk = Buffer.alloc(64 * 1024, 'u');
  const upload = request(`${gw.url}/api/upload`, { method: 'POST', headers: { ...auth, 'content-type': 'application/octet-stream' } });
  upload.req.write(chunk);
  upload.req.write(chunk);
  await waitUntil(() => heads === 5, 5_000);

  gw.process.child.kill('SIGTERM');
  const stop = await nthLog(gw, 1, (l) => l.kind === 'stop');
  assert.equal(stop.signal, 'SIGTERM');
  assert.equal(stop.drainMs, 5_000);

  // Right after the signal: unready (the load balancer stops sending), alive, and closed to new connections.
  const readyz = await get(`${gw.adminUrl}/readyz`);
  assert.equal(readyz.status, 503, readyz.body);
  assert.equal((JSON.parse(readyz.body) as { ready: boolean }).ready, false);
  assert.equal((JSON.parse(readyz.body) as { draining: boolean }).draining, true);
  assert.equal((await get(`${gw.adminUrl}/healthz`)).status, 200);
  assert.equal(await tryConnect(gw.port), 'ECONNREFUSED');

  // The upload is still streaming after the signal.
  await pause(100);
  upload.req.write(chunk);
  upload.req.end(chunk);

  const answers = await Promise.all([...gets, kept.answer, upload.answer]);
  keepAlive.destroy();
  assert.deepEqual(answers.map((a) => a.status), [200, 200, 200, 200, 200]);
  assert.deepEqual(answers.map((a) => a.body), ['GET /get1 0', 'GET /get2 0', 'GET /get3 0', 'GET /kept 0', `POST /upload ${4 * chunk.length}`]);
  assert.deepEqual(await gw.process.exited, { code: 0, signal: null });

  const lines = requestLines(gw);
  assert.deepEqual(lines.map((l) => l.path).sort(), ['/api/get1', '/api/get2', '/api/get3', '/api/kept', '/api/upload']);
  assert.ok(lines.every((l) => l.status === 200 && l.decision === 'allow'), JSON.stringify(lines));
  assert.equal(new Set(lines.map((l) => l.id)).size, 5);
  assert.equal(heads, 5, 'nothing reached the upstream after the signal');
});

test('on SIGTERM an idle keep-alive connection is closed at once, and a keep-alive client whose response is written during the drain is told Connection: close', { timeout: 20_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  let heads = 0;
  const slow = await startServer((req, res) => {
    heads++;
    req.resume();
    setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end('late'), 500);
  });
  cleanups.push(() => issuer.close(), () => slow.close());
  const gw = await gateway({ issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: `${slow.url}/`, allow: [RULE] }], timeouts: { drainMs: 5_000 } });
  const keepAlive = new http.Agent({ keepAlive: true });
  cleanups.push(async () => keepAlive.destroy());

  const auth = { 'gateway-authorization': `Bearer ${tokenFor(issuer)}` };
  const before = request(`${gw.url}/api/before`, { headers: auth, agent: keepAlive });
  before.req.end();
  const first = await before.answer;
  assert.equal(first.status, 200);
  assert.notEqual(first.headers.connection, 'close', 'before the drain the connection is kept');

  // A second client, idle on a kept-alive connection when the signal comes.
  const idle = rawClient(gw.port);
  idle.socket.write(GET_NOWHERE);
  await waitUntil(() => idle.seen.text.includes('route_unknown'), 5_000);
  assert.match(idle.seen.text, /^HTTP\/1\.1 404 /);

  const during = request(`${gw.url}/api/during`, { headers: auth, agent: keepAlive });
  during.req.end();
  await waitUntil(() => heads === 2, 5_000);
  const signalled = Date.now();
  gw.process.child.kill('SIGTERM');
  await waitUntil(() => idle.seen.closedAt > 0, 2_000);
  assert.ok(idle.seen.closedAt - signalled < 400, `the idle connection was closed ${idle.seen.closedAt - signalled} ms after the signal, before the slow response`);
  const answer = await during.answer;
  assert.equal(answer.status, 200);
  assert.equal(answer.body, 'late');
  assert.equal(answer.headers.connection, 'close', 'a response written during the drain asks the client to close');
  assert.deepEqual(await gw.process.exited, { code: 0, signal: null });
});

test('drainGraceMs: on SIGTERM /readyz turns 503 at once, yet for the grace the gateway still accepts and serves, each answer with Connection: close (a connection idle since before the signal too); then it refuses connections and exits 0', { timeout: 20_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  let heads = 0;
  let lastHeadAt = 0;
  const upstream = await startServer((req, res) => (heads++, (lastHeadAt = Date.now()), req.resume(), res.writeHead(200, { 'content-type': 'text/plain' }).end('ok')));
  cleanups.push(() => issuer.close(), () => upstream.close());
  const GRACE = 1_200;
  const gw = await gateway({ issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [RULE] }], timeouts: { drainGraceMs: GRACE, drainMs: 2_000 } });
  const auth = { 'gateway-authorization': `Bearer ${tokenFor(issuer)}` };
  const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });
  cleanups.push(async () => keepAlive.destroy());
  const before = await get(`${gw.url}/api/before`, auth, keepAlive);
  assert.equal(before.status, 200);
  assert.notEqual(before.headers.connection, 'close');

  const signalled = Date.now();
  gw.process.child.kill('SIGTERM');
  await waitUntil(async () => (await get(`${gw.adminUrl}/readyz`)).status === 503, 1_000);
  // A new connection, and the kept-alive one that was idle when the signal came: both served, both told to close.
  const fresh = await get(`${gw.url}/api/fresh`, auth);
  const kept = await get(`${gw.url}/api/kept`, auth, keepAlive);
  assert.ok(Date.now() - signalled < GRACE, 'still within the grace');
  for (const answer of [fresh, kept]) {
    assert.equal(answer.status, 200);
    assert.equal(answer.headers.connection, 'close');
  }
  assert.equal(heads, 3);

  // Served (each on a new connection) until the grace ends; then the listener is closed and connections are refused.
  // (waitUntil treats a throw as "not yet", so the answers are checked after the loop, not inside it.)
  const late: Answer[] = [];
  await waitUntil(async () => !(await get(`${gw.url}/api/late`, auth).then((a) => (late.push(a), true), () => false)), 3_000);
  assert.ok(late.length > 0 && late.every((a) => a.status === 200 && a.headers.connection === 'close'), JSON.stringify(late.map((a) => [a.status, a.headers.connection])));
  assert.ok(Date.now() - signalled >= GRACE, `refused ${Date.now() - signalled} ms after the signal, before the grace of ${GRACE} ms ended`);
  assert.ok(lastHeadAt - signalled < GRACE + 200, `the upstream was reached ${lastHeadAt - signalled} ms after the signal`);
  const served = heads;
  assert.equal((await get(`${gw.url}/api/later`, auth).then(() => 'served', (err: NodeJS.ErrnoException) => err.code)), 'ECONNREFUSED');
  assert.equal(heads, served, 'nothing reached the upstream once connections were refused');
  assert.deepEqual(await gw.process.exited, { code: 0, signal: null });
  const stop = gw.logs().find((l) => l.kind === 'stop')!;
  assert.deepEqual([stop.drainGraceMs, stop.drainMs], [GRACE, 2_000]);
});

test('a second SIGTERM during a long drainGraceMs ends the grace at once: the process drains and exits 0 long before the grace would have ended', { timeout: 20_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  cleanups.push(() => issuer.close());
  const gw = await gateway({ issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: 'http://127.0.0.1:9/', allow: [RULE] }], timeouts: { drainGraceMs: 60_000 } });
  gw.process.child.kill('SIGTERM');
  await waitUntil(async () => (await get(`${gw.adminUrl}/readyz`)).status === 503, 2_000);
  // Within the grace: still accepting.
  assert.equal((await get(`${gw.url}/nowhere`)).status, 404);
  const second = Date.now();
  gw.process.child.kill('SIGTERM');
  assert.deepEqual(await gw.process.exited, { code: 0, signal: null });
  assert.ok(Date.now() - second < 3_000, `exited ${Date.now() - second} ms after the second signal, with a grace of 60 s`);
  assert.equal(gw.logs().filter((l) => l.kind === 'stop').length, 1, 'one stop line: the second signal only shortens the stop under way');
});

test('keepAliveMs: an idle client connection is closed by the gateway after it (and Keep-Alive says so); before it, the connection is reused', { timeout: 20_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  cleanups.push(() => issuer.close());
  const gw = await gateway({ issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: 'http://127.0.0.1:9/', allow: [RULE] }], timeouts: { keepAliveMs: 1_000 } });
  const { socket, seen } = rawClient(gw.port);
  socket.write(GET_NOWHERE);
  await waitUntil(() => seen.text.split('route_unknown').length === 2, 2_000);
  await new Promise((r) => setTimeout(r, 500));
  socket.write(GET_NOWHERE);
  await waitUntil(() => seen.text.split('route_unknown').length === 3, 2_000);
  const idleFrom = Date.now();
  assert.equal(seen.closedAt, 0, 'reused within keepAliveMs');
  assert.match(seen.text, /\r\nkeep-alive: timeout=1\r\n/i);
  await waitUntil(() => seen.closedAt > 0, 5_000);
  const idle = seen.closedAt - idleFrom;
  assert.ok(idle >= 900 && idle < 3_000, `closed after ${idle} ms idle with keepAliveMs 1000`);
});

test('drainMs is honoured: a request stuck on an upstream that never answers is answered 503 gateway_stopping when it runs out, the upstream request is cut, and the process exits 0', { timeout: 20_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  let heads = 0;
  let upstreamClosed = false;
  const stuck = await startServer((req) => {
    heads++;
    req.resume();
    req.socket.on('close', () => (upstreamClosed = true));
  });
  cleanups.push(() => issuer.close(), () => stuck.close());
  const gw = await gateway({ issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: `${stuck.url}/`, allow: [RULE] }], timeouts: { drainMs: 500 } });

  const pending = get(`${gw.url}/api/forever`, { 'gateway-authorization': `Bearer ${tokenFor(issuer)}` }).then(
    (a) => `answered ${a.status}`,
    (err: NodeJS.ErrnoException) => `cut: ${err.code ?? err.message}`,
  );
  await waitUntil(() => heads === 1, 5_000);
  const signalled = Date.now();
  gw.process.child.kill('SIGTERM');
  assert.deepEqual(await gw.process.exited, { code: 0, signal: null });
  const took = Date.now() - signalled;
  assert.ok(took >= 450 && took < 3_000, `exited ${took} ms after SIGTERM with drainMs 500`);

  assert.equal(await pending, 'answered 503', 'the stuck request is answered before its connection closes');
  await waitUntil(() => upstreamClosed, 2_000);
  assert.equal(heads, 1, 'the cut request was not sent again');
  const lines = requestLines(gw);
  assert.equal(lines.length, 1, `one audit line for the cut request: ${JSON.stringify(gw.logs())}`);
  assert.equal(lines[0]!.path, '/api/forever');
  // Our cut, not the client's nor the upstream's.
  assert.equal(lines[0]!.reason, 'gateway_stopping');
  assert.equal(lines[0]!.decision, 'error');
});

/**
 * A gateway whose request waits on a key refetch (its token's kid is new) that the issuer answers slowly, as per
 * `delays`; SIGTERM then, with `drainMs`. Resolves, once the process has exited 0, with the request's one audit line.
 */
async function lineOfRequestWaitingOnKeys(o: { publish: boolean; delays: [path: string, ms: number][]; keys: object; drainMs: number }) {
  const issuer = await startIssuer({ keys: [key.jwk] });
  const upstream = await startRecorder();
  cleanups.push(() => issuer.close(), () => upstream.close());
  const gw = await gateway({ issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [RULE] }], keys: { cooldownMs: 1_000, ...o.keys }, timeouts: { drainMs: o.drainMs } });
  if (o.publish) issuer.keys = [key.jwk, otherKey.jwk];
  for (const [path, delayMs] of o.delays) issuer.setPlan(path, { delayMs });
  await pause(1_100); // past the cooldown, so an unknown kid refetches
  const pending = get(`${gw.url}/api/rotated`, { 'gateway-authorization': `Bearer ${tokenFor(issuer, otherKey)}` }).then((a) => a.status, () => 'cut');
  await waitUntil(() => issuer.hits(o.delays[0]![0]) === 2, 5_000);
  gw.process.child.kill('SIGTERM');
  assert.deepEqual(await gw.process.exited, { code: 0, signal: null });
  await pending;
  const lines = requestLines(gw);
  assert.equal(lines.length, 1, `one audit line for the request: ${JSON.stringify(gw.logs())}`);
  assert.equal(lines[0]!.path, '/api/rotated');
  assert.equal(upstream.hits(), 0, 'the upstream was not contacted');
  return lines[0]!;
}

test('a request cut at the drain deadline while it waits on a slow key refetch that does not bring its key still writes its audit line (401 kid_unknown), and the process exits 0', { timeout: 20_000 }, async () => {
  // The refetch hangs, and the key it brings back is not the token's.
  const line = await lineOfRequestWaitingOnKeys({ publish: false, delays: [[JWKS_PATH, 1_500]], keys: {}, drainMs: 200 });
  assert.deepEqual([line.status, line.reason, line.decision], [401, 'kid_unknown', 'deny']);
});

test('a request whose key refetch (discovery, then the key set) outlasts the drain deadline and one fetch timeout is still logged, as gateway_stopping, before the process exits 0', { timeout: 30_000 }, async () => {
  // Each fetch within its timeout, both together past it: 5 s in all; then the token is valid, but the gateway has stopped.
  const line = await lineOfRequestWaitingOnKeys({ publish: true, delays: [[DISCOVERY_PATH, 2_500], [JWKS_PATH, 2_500]], keys: { fetchTimeoutMs: 3_000 }, drainMs: 100 });
  assert.deepEqual([line.reason, line.decision], ['gateway_stopping', 'error']);
});

// ---------------------------------------------------------------- SIGHUP

test('SIGHUP with a broken config keeps the old routing and logs every problem; with a good one, new routes, removed routes and changed policies take effect', { timeout: 20_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  const upstream = await startRecorder();
  cleanups.push(() => issuer.close(), () => upstream.close());
  const issuers = [{ issuer: issuer.issuer, audience: AUDIENCE }];
  const gw = await gateway({
    issuers,
    routes: [
      { path: '/api', upstream: `${upstream.url}/`, allow: [RULE] },
      { path: '/old', upstream: `${upstream.url}/`, allow: [RULE] },
    ],
  });
  const auth = { 'gateway-authorization': `Bearer ${tokenFor(issuer)}` };
  const servesTheOldRouting = async () => {
    upstream.reset();
    assert.equal((await get(`${gw.url}/api/x`, auth)).status, 200);
    assert.equal((await get(`${gw.url}/old/x`, auth)).status, 200);
    assertRefused(await get(`${gw.url}/new/x`, auth), 404, 'route_unknown');
    assert.equal(upstream.hits(), 2);
  };
  await servesTheOldRouting();

  reload(gw, '{"issuers": [');
  const notJson = await nthLog(gw, 1, isReloadError);
  assert.equal(notJson.level, 'error');
  assert.equal(notJson.detail, 'kept the config in force');
  assert.ok(Array.isArray(notJson.problems) && notJson.problems.length > 0, JSON.stringify(notJson));
  assert.equal(gw.process.child.exitCode, null, 'still running');
  await servesTheOldRouting();

  // Valid JSON, invalid config: a rule that pins nothing, and an unknown key.
  reload(gw, { issuers, routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [{ ref: 'refs/heads/main' }] }], colour: 'blue' });
  const invalid = await nthLog(gw, 2, isReloadError);
  assert.equal(invalid.detail, 'kept the config in force');
  const problems = (invalid.problems as string[]).join('\n');
  assert.match(problems, /routes\[0\]\.allow\[0\]: /);
  assert.match(problems, /colour: /);
  assert.equal(gw.process.child.exitCode, null, 'still running');
  await servesTheOldRouting();
  assert.equal(gw.logs().filter(isReloaded).length, 0);

  reload(gw, {
    issuers,
    routes: [
      { path: '/api', upstream: `${upstream.url}/`, allow: [{ repository: 'octo-org/another-repo' }] },
      { path: '/new', upstream: `${upstream.url}/fresh/`, allow: [RULE] },
    ],
  });
  const reloaded = await nthLog(gw, 1, isReloaded);
  assert.equal(reloaded.result, 'ok');
  assert.ok(Array.isArray(reloaded.warnings));
  assert.equal(reloaded.detail, undefined, 'listen and admin did not change');

  upstream.reset();
  const admitted = await get(`${gw.url}/new/x`, auth);
  assert.equal(admitted.status, 200, admitted.body);
  assert.equal(upstream.requests[0]!.url, '/fresh/x');
  assertRefused(await get(`${gw.url}/old/x`, auth), 404, 'route_unknown');
  assertRefused(await get(`${gw.url}/api/x`, auth), 403, 'claim_mismatch');
  assert.equal(upstream.hits(), 1, 'the refused requests never reached the upstream');
  const refusedLine = await nthLog(gw, 1, (l) => l.kind === 'request' && l.path === '/api/x' && l.status === 403);
  assert.equal(refusedLine.reason, 'claim_mismatch');
  assert.equal(refusedLine.claim, 'repository');
});

test('SIGHUP that moves the listen address logs that it takes effect at restart, and the bound port keeps serving', { timeout: 20_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  const upstream = await startRecorder();
  cleanups.push(() => issuer.close(), () => upstream.close());
  const config = { issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [RULE] }] };
  const gw = await gateway(config);
  reload(gw, { ...config, listen: { host: '127.0.0.1', port: 1 } });
  const reloaded = await nthLog(gw, 1, isReloaded);
  assert.match(String(reloaded.detail), /listen.*restart/);
  assert.equal((await get(`${gw.url}/api/x`, { 'gateway-authorization': `Bearer ${tokenFor(issuer)}` })).status, 200);
});

test('a reload that only changes routes keeps the key sets: no discovery or JWKS fetch, and a token verifies at once; a new issuer gets its keys fetched', { timeout: 20_000 }, async () => {
  const [first, second] = await Promise.all([startIssuer({ keys: [key.jwk] }), startIssuer({ keys: [otherKey.jwk] })]);
  const upstream = await startRecorder();
  cleanups.push(() => first.close(), () => second.close(), () => upstream.close());
  const gw = await gateway({ issuers: [{ issuer: first.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [RULE] }] });
  const firstFetches = first.hits();
  assert.equal(first.hits(DISCOVERY_PATH), 1);
  assert.equal(first.hits(JWKS_PATH), 1);

  reload(gw, { issuers: [{ issuer: first.issuer, audience: AUDIENCE }], routes: [{ path: '/v2', upstream: `${upstream.url}/`, allow: [RULE] }] });
  await nthLog(gw, 1, isReloaded);
  const auth = { 'gateway-authorization': `Bearer ${tokenFor(first)}` };
  const admitted = await get(`${gw.url}/v2/x`, auth);
  assert.equal(admitted.status, 200, admitted.body);
  assert.equal(first.hits(), firstFetches, 'no new discovery or JWKS fetch for an unchanged issuer');
  assert.equal((await get(`${gw.adminUrl}/readyz`)).status, 200);

  // Two issuers: every rule must pin iss.
  reload(gw, {
    issuers: [{ issuer: first.issuer, audience: AUDIENCE }, { issuer: second.issuer, audience: AUDIENCE }],
    routes: [{ path: '/v2', upstream: `${upstream.url}/`, allow: [{ ...RULE, iss: first.issuer }, { ...RULE, iss: second.issuer }] }],
  });
  await nthLog(gw, 2, isReloaded);
  await waitUntil(() => second.hits(JWKS_PATH) === 1, 5_000);
  const fromSecond = await get(`${gw.url}/v2/x`, { 'gateway-authorization': `Bearer ${tokenFor(second, otherKey)}` });
  assert.equal(fromSecond.status, 200, fromSecond.body);
  assert.equal((await get(`${gw.url}/v2/x`, auth)).status, 200);
  assert.equal(first.hits(), firstFetches, 'the first issuer is still not refetched');
  assert.equal(second.hits(), 2, 'the new issuer: one discovery, one JWKS fetch');
});

test('a SIGHUP that removes a route lets a download already streaming on it finish with its whole body; the next request to the route is 404 route_unknown', { timeout: 20_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  const chunks = Array.from({ length: 15 }, (_, i) => `chunk ${i}\n`);
  let heads = 0;
  const streaming = await startServer((req, res) => {
    heads++;
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain' });
    let i = 0;
    const timer = setInterval(() => (i < chunks.length ? res.write(chunks[i++]) : (clearInterval(timer), res.end())), 100);
    res.on('close', () => clearInterval(timer));
  });
  const other = await startRecorder();
  cleanups.push(() => issuer.close(), () => streaming.close(), () => other.close());
  // /b has another origin, so nothing but the download keeps /a's connection pool in use.
  const b = { path: '/b', upstream: `${other.url}/`, allow: [RULE] };
  const config = (routes: unknown[]) => ({ issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], routes, timeouts: { drainMs: 300 } });
  const gw = await gateway(config([{ path: '/a', upstream: `${streaming.url}/`, allow: [RULE] }, b]));
  const auth = { 'gateway-authorization': `Bearer ${tokenFor(issuer)}` };

  let finished = false;
  const download = get(`${gw.url}/a/download`, auth).finally(() => (finished = true));
  await waitUntil(() => heads === 1, 5_000);
  reload(gw, config([b]));
  await nthLog(gw, 1, isReloaded);
  assert.equal(finished, false, 'the download was still streaming when the reload took effect');
  const answer = await download;
  assert.equal(answer.status, 200);
  assert.equal(answer.body, chunks.join(''));
  const line = await nthLog(gw, 1, (l) => l.kind === 'request' && l.path === '/a/download');
  assert.deepEqual([line.status, line.decision, line.reason], [200, 'allow', undefined], JSON.stringify(line));

  assertRefused(await get(`${gw.url}/a/download`, auth), 404, 'route_unknown');
  assert.equal(heads, 1, 'the removed route\'s upstream was not contacted again');
  assert.equal(other.hits(), 0);
});

test('a reload that changes only keys.* keeps the cached keys: with the issuer down, tokens still verify, /readyz stays 200, nothing is fetched, and the config line warns that keys apply at restart', { timeout: 20_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  const upstream = await startRecorder();
  cleanups.push(() => issuer.close(), () => upstream.close());
  const config = (cooldownMs: number) => ({ issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [RULE] }], keys: { cooldownMs } });
  const gw = await gateway(config(30_000));
  const auth = { 'gateway-authorization': `Bearer ${tokenFor(issuer)}` };
  assert.equal((await get(`${gw.url}/api/x`, auth)).status, 200);
  const keyLines = () => gw.logs().filter((l) => l.kind === 'keys');
  const fetches = async () => [...(await get(`${gw.adminUrl}/metrics`)).body.matchAll(/^oidc_gateway_jwks_fetches_total\{.*\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
  const [linesBefore, fetchesBefore] = [keyLines().length, await fetches()];

  await issuer.down();
  reload(gw, config(5_000));
  const reloaded = await nthLog(gw, 1, isReloaded);
  assert.equal(reloaded.level, 'warn');
  assert.match(String(reloaded.detail), /keys.*restart/);
  for (const n of [1, 2, 3]) {
    const answer = await get(`${gw.url}/api/after-${n}`, auth);
    assert.equal(answer.status, 200, answer.body);
  }
  assert.equal((await get(`${gw.adminUrl}/readyz`)).status, 200);
  await pause(300);
  assert.deepEqual(keyLines().slice(linesBefore), [], 'no key fetch was attempted after the reload');
  assert.equal(await fetches(), fetchesBefore);
  assert.equal(upstream.hits(), 4);
});

test('a SIGHUP sent the moment the process can catch one (before it binds) does not end it: it logs its start line, serves /healthz, reloads, and exits 0 on SIGTERM', { timeout: 20_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  const dir = mkdtempSync(join(tmpdir(), 'oidc-gateway-hup-'));
  const file = join(dir, 'gateway.config.json');
  writeFileSync(file, JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 },
    issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: 'http://127.0.0.1:9/', allow: [RULE] }],
  }));
  const proc = startProcess(GATEWAY_RUNTIME, [MAIN_JS, '--config', file]);
  cleanups.push(() => proc.close(), () => issuer.close(), async () => rmSync(dir, { recursive: true, force: true }));
  // Until a handler is installed the runtime's default action for SIGHUP ends the process, and no code of
  // ours runs before the runtime has started: signal as soon as SigCgt (Linux) shows SIGHUP (bit 0) caught.
  const catchesSighup = () => {
    const mask = /^SigCgt:\s*([0-9a-f]+)$/m.exec(readFileSync(`/proc/${proc.child.pid}/status`, 'utf8'))?.[1];
    return mask !== undefined && (BigInt(`0x${mask}`) & 1n) === 1n;
  };
  while (!catchesSighup()) {
    assert.equal(proc.child.exitCode, null, proc.stderr());
    await pause(1);
  }
  proc.child.kill('SIGHUP');

  const started = await proc.waitFor(/"kind":"start".*"adminPort":(\d+)/);
  assert.equal((await get(`http://127.0.0.1:${started[1]}/healthz`)).status, 200);
  await proc.waitFor(/"kind":"config".*"reloaded":true/);
  proc.child.kill('SIGTERM');
  assert.deepEqual(await proc.exited, { code: 0, signal: null });
});

// ---------------------------------------------------------------- the log

test('every line the gateways wrote is JSON, and none holds a token (or its signature) that was sent', async () => {
  await Promise.all(gateways.map((g) => g.close()));
  const needles = sentTokens.flatMap((t) => [t, t.slice(t.lastIndexOf('.') + 1)]);
  for (const line of gateways.flatMap((g) => g.process.stdout().split('\n')).filter((l) => l !== '')) {
    assert.doesNotThrow(() => JSON.parse(line), `not JSON: ${line.slice(0, 200)}`);
    assert.ok(!needles.some((n) => line.includes(n)), `a token in the log: ${line.slice(0, 200)}`);
  }
});
