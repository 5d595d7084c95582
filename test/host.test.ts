// A host program embedding the built package (host.mjs), run as its own process on GATEWAY_RUNTIME (node, and bun in the
// Bun pass): the library surface works on both runtimes, not only the CLI, and its stop() ends what is in flight.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { generateRsaKey, httpGet, signToken, startGateway, startIssuer, startRecorder, waitUntil, type Issuer, type Recorder, type TestKey } from './helpers.ts';

const HOST_MJS = fileURLToPath(new URL('./host.mjs', import.meta.url));

let key: TestKey;
let issuer: Issuer;
let upstream: Recorder;
let answers: (() => void)[] = [];

before(async () => {
  key = await generateRsaKey('k1');
  issuer = await startIssuer({ keys: [key.jwk] });
  // Answers /held/... only when the test says so, anything else at once.
  upstream = await startRecorder((req, res) => {
    const answer = () => res.writeHead(200, { 'content-type': 'text/plain' }).end('upstream');
    if (req.url.startsWith('/held')) answers.push(answer);
    else answer();
  });
});

after(async () => {
  await Promise.all([issuer?.close(), upstream?.close()]);
});

/** The host on GATEWAY_RUNTIME, through the gateway's own test harness: its close() checks the log for tokens. */
const startHost = () => startGateway({ issuers: [{ issuer: issuer.issuer, audience: 'aud' }], routes: [{ path: '/svc', upstream: upstream.url, allow: [{ repository: 'octo-org/octo-repo' }] }] }, { entry: HOST_MJS });

const tokenFor = (repository: string) =>
  signToken({ alg: 'RS256', kid: 'k1' }, { iss: issuer.issuer, aud: 'aud', exp: Math.floor(Date.now() / 1000) + 60, repository }, key.privateKey);

test('an embedded gateway admits by policy and refuses the rest (other repository, junk, no token) without contacting the upstream', { timeout: 30_000 }, async () => {
  const gw = await startHost();
  const url = `${gw.url}/svc`;
  try {
    const ok = await httpGet(`${url}/x`, { 'gateway-authorization': tokenFor('octo-org/octo-repo') });
    assert.equal(ok.status, 200);
    assert.equal(ok.body, 'upstream');
    assert.equal(upstream.requests.at(-1)?.url, '/x');
    assert.equal(upstream.requests.at(-1)?.headers['gateway-authorization'], undefined, 'the token went upstream');
    const hits = upstream.hits();
    const other = await httpGet(`${url}/x`, { 'gateway-authorization': tokenFor('octo-org/other') });
    assert.equal(other.status, 403);
    assert.equal(JSON.parse(other.body).error, 'claim_mismatch');
    const junk = await httpGet(`${url}/x`, { 'gateway-authorization': 'Bearer not.a.token' });
    assert.equal(junk.status, 401);
    assert.equal(JSON.parse(junk.body).error, 'token_malformed');
    const none = await httpGet(`${url}/x`);
    assert.equal(none.status, 401);
    assert.equal(JSON.parse(none.body).error, 'token_missing');
    assert.equal(upstream.hits(), hits, 'a refused request reached the upstream');
    // A line reaches the host's stdout after its answer reaches the client.
    const requests = () => gw.logs().filter((l) => l.kind === 'request');
    await waitUntil(() => requests().length >= 4);
    assert.deepEqual(requests().map((l) => [l.status, l.decision, l.reason]), [[200, 'allow', undefined], [403, 'deny', 'claim_mismatch'], [401, 'deny', 'token_malformed'], [401, 'deny', 'token_missing']]);
    // close() also fails on a token in the log.
    await gw.close();
    assert.equal(gw.process.stderr(), '');
  } finally {
    await gw.close().catch(() => {});
  }
});

test('an embedded gateway\'s stop() answers a request waiting on its upstream 503 gateway_stopping, logs it, and lets the host exit', { timeout: 30_000 }, async () => {
  const gw = await startHost();
  const url = `${gw.url}/svc`;
  try {
    answers = [];
    const hits = upstream.hits();
    const waiting = httpGet(`${url}/held/x`, { 'gateway-authorization': tokenFor('octo-org/octo-repo') });
    await waitUntil(() => answers.length === 1, 10_000);
    gw.process.child.kill('SIGTERM');
    const stopped = await waiting;
    assert.equal(stopped.status, 503);
    assert.equal(JSON.parse(stopped.body).error, 'gateway_stopping');
    assert.equal(stopped.headers['retry-after'], '5');
    assert.deepEqual(await gw.process.exited, { code: 0, signal: null });
    assert.equal(upstream.hits(), hits + 1, 'the request was sent more than once');
    const requests = gw.logs().filter((l) => l.kind === 'request');
    assert.deepEqual(requests.map((l) => [l.status, l.decision, l.reason]), [[503, 'error', 'gateway_stopping']]);
    await gw.close();
    assert.equal(gw.process.stderr(), '');
  } finally {
    for (const answer of answers.splice(0)) answer();
    await gw.close().catch(() => {});
  }
});
