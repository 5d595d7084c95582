// Forward-auth routes end to end: the gateway as its own process answering
// the subrequests of nginx auth_request, Traefik ForwardAuth and Envoy
// ext_authz. An auth route has no upstream: the verdict is the answer. The
// same config has a proxy route to a recorder, and no request to an auth
// route may ever reach it: every test asserts the recorder saw nothing.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  assertCleanLog, generateRsaKey, rawExchange, signToken, startGateway, startIssuer, startRecorder, statusOf, waitUntil,
  type Issuer, type Recorder, type RunningGateway, type TestKey,
} from './helpers.ts';

const AUD = 'api://ActionsOIDCGateway';
const IDENTITY = ['iss', 'sub', 'repository', 'repository_id', 'repository_owner', 'ref', 'sha', 'workflow_ref', 'job_workflow_ref', 'environment', 'actor', 'run_id', 'run_attempt', 'jti'];
let key: TestKey;
let otherKey: TestKey;
let issuer: Issuer;
let upstream: Recorder;
let gw: RunningGateway;
const sentTokens: string[] = [];

/** A token with every identity claim GitHub sends, and a few that are not identity claims. */
function claims(extra: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: issuer.issuer, aud: AUD, iat: now, nbf: now, exp: now + 300,
    sub: 'repo:octo-org/octo-repo:environment:production', repository: 'octo-org/octo-repo', repository_id: '123',
    repository_owner: 'octo-org', repository_owner_id: '456', ref: 'refs/heads/main', sha: 'a'.repeat(40),
    workflow_ref: 'octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main',
    job_workflow_ref: 'octo-org/wf/.github/workflows/deploy.yml@refs/heads/main',
    environment: 'production', actor: 'octocat', run_id: 42, run_attempt: '1', jti: 'j-1',
    workflow: '1 🚀 Dev', event_name: 'push', ...extra,
  };
}

function token(extra: Record<string, unknown> = {}, signWith: TestKey = key, header: Record<string, unknown> = {}): string {
  const t = signToken({ alg: 'RS256', typ: 'JWT', kid: signWith.kid, ...header }, claims(extra), signWith.privateKey);
  sentTokens.push(t);
  return t;
}

const bearer = (t: string) => ({ 'gateway-authorization': `Bearer ${t}` });

async function send(path: string, headers: Record<string, string> = {}, init: RequestInit = {}) {
  const res = await fetch(gw.url + path, { ...init, headers });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: text.startsWith('{') ? (JSON.parse(text) as Record<string, unknown>) : undefined };
}

/** The x-oidc-* headers of an answer, as an object. */
function identityHeaders(headers: Headers): Record<string, string> {
  return Object.fromEntries([...headers].filter(([name]) => name.startsWith('x-oidc-')));
}

/** Runs `fn` and asserts the recorder behind the proxy route got no connection and no request meanwhile. */
async function untouched<T>(fn: () => Promise<T>): Promise<T> {
  const [hits, connections] = [upstream.hits(), upstream.connections()];
  const result = await fn();
  assert.equal(upstream.hits(), hits, 'the upstream must not be contacted');
  assert.equal(upstream.connections(), connections, 'no connection to the upstream');
  return result;
}

/** The audit line of one exchange, which the gateway may write just after answering. */
async function auditOf(id: string): Promise<Record<string, unknown>> {
  const find = () => gw.logs().find((l) => l.kind === 'request' && l.id === id);
  await waitUntil(() => find() !== undefined, 2_000);
  return find()!;
}

before(async () => {
  [key, otherKey] = await Promise.all([generateRsaKey('k1'), generateRsaKey('k-other')]);
  issuer = await startIssuer({ keys: [key.jwk] });
  upstream = await startRecorder();
  gw = await startGateway({
    issuers: [{ issuer: issuer.issuer, audience: AUD }],
    routes: [
      { path: '/api', upstream: `${upstream.url}/`, allow: [{ repository: 'octo-org/*' }] },
      { path: '/auth', mode: 'auth', allow: [{ repository_owner: 'octo-org' }] },
      { path: '/auth/ci', mode: 'auth', allow: [{ repository: 'octo-org/octo-repo', ref: 'refs/heads/main' }], forwardClaims: ['repository', 'run_id', 'workflow', 'ref'] },
      { path: '/auth/ci/deploy', mode: 'auth', allow: [{ repository: 'octo-org/octo-repo', environment: 'production' }] },
      { path: '/auth/ci/proxied', upstream: `${upstream.url}/inner/`, allow: [{ repository: 'octo-org/octo-repo' }] },
      { path: '/auth/read', mode: 'auth', allow: [{ repository_owner: 'octo-org' }] },
    ],
  });
});

after(async () => {
  await gw?.close();
  await Promise.all([issuer?.close(), upstream?.close()]);
});

test('an admitted token gets 200 with an empty body, no-store, a request id and the identity claims as x-oidc headers', async () => {
  const res = await untouched(() => send('/auth', bearer(token())));
  assert.equal(res.status, 200, res.text);
  assert.equal(res.text, '');
  assert.equal(res.headers.get('cache-control'), 'no-store');
  const id = res.headers.get('x-request-id') ?? '';
  assert.match(id, /^[0-9a-f-]{36}$/);
  const expected = Object.fromEntries(IDENTITY.map((c) => [`x-oidc-${c.replaceAll('_', '-')}`, String(claims()[c])]));
  assert.deepEqual(identityHeaders(res.headers), expected, 'exactly the identity claims: not aud, exp, workflow or event_name');

  const line = await auditOf(id);
  assert.equal(line.status, 200);
  assert.equal(line.decision, 'allow');
  assert.equal(line.route, '/auth');
  assert.equal(line.upstreamStatus, undefined);
});

test('identity claims the token lacks, or holds as arrays or objects, get an empty header, so a front proxy that copies only what it gets cannot pass on a client\'s own', async () => {
  const res = await untouched(() => send('/auth', bearer(token({ environment: undefined, jti: undefined, actor: ['octocat'], sha: { a: 1 } }))));
  assert.equal(res.status, 200, res.text);
  const headers = identityHeaders(res.headers);
  for (const empty of ['x-oidc-environment', 'x-oidc-jti', 'x-oidc-actor', 'x-oidc-sha']) assert.equal(headers[empty], '', empty);
  assert.equal(Object.keys(headers).length, IDENTITY.length);
});

test('a route with forwardClaims answers with exactly those claims, numbers as text, and an empty header for a claim the token lacks', async () => {
  const res = await untouched(() => send('/auth/ci', bearer(token({ ref: 'refs/heads/main' }))));
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(identityHeaders(res.headers), {
    'x-oidc-repository': 'octo-org/octo-repo',
    'x-oidc-run-id': '42',
    'x-oidc-workflow': '1 %F0%9F%9A%80 Dev',
    'x-oidc-ref': 'refs/heads/main',
  });
  const lacking = await untouched(() => send('/auth/ci', bearer(token({ ref: 'refs/heads/main', run_id: undefined }))));
  assert.equal(lacking.status, 200, lacking.text);
  assert.equal(identityHeaders(lacking.headers)['x-oidc-run-id'], '');
});

test('claim values with emoji, CR/LF, controls or % are percent-encoded and cannot inject a header', async () => {
  const t = token({ actor: 'octo 🚀\r\nx-injected: 1', jti: '100%\u0000', environment: 'prod\u00e9' });
  const raw = await untouched(() => rawExchange(gw.port, `GET /auth HTTP/1.1\r\nHost: gw\r\ngateway-authorization: Bearer ${t}\r\nconnection: close\r\n\r\n`));
  assert.equal(statusOf(raw), 200, raw);
  const head = raw.split('\r\n\r\n')[0]!;
  assert.ok(!/^x-injected:/im.test(head), head);
  assert.match(head, /^x-oidc-actor: octo %F0%9F%9A%80%0D%0Ax-injected: 1$/im);
  assert.match(head, /^x-oidc-jti: 100%25%00$/im);
  assert.match(head, /^x-oidc-environment: prod%C3%A9$/im);
});

// Each row: what, method, path, headers, status, reason.
const REFUSALS: [what: string, method: string, path: string, headers: () => Record<string, string>, status: number, reason: string][] = [
  ['no token', 'GET', '/auth/ci', () => ({}), 401, 'token_missing'],
  ['an empty token header', 'GET', '/auth/ci', () => ({ 'gateway-authorization': '' }), 401, 'token_missing'],
  ['a token under Authorization instead of the token header', 'GET', '/auth/ci', () => ({ authorization: `Bearer ${token()}` }), 401, 'token_missing'],
  ['junk', 'GET', '/auth/ci', () => bearer('not.a.jwt'), 401, 'token_malformed'],
  ['a key we do not trust under our kid', 'GET', '/auth/ci', () => bearer(token({}, otherKey, { kid: 'k1' })), 401, 'signature_invalid'],
  ['a payload swapped under a valid signature', 'GET', '/auth/ci', () => {
    const [h, , s] = token().split('.');
    return bearer(`${h}.${token({ repository: 'evil/octo-repo' }).split('.')[1]}.${s}`);
  }, 401, 'signature_invalid'],
  ['an expired token', 'GET', '/auth/ci', () => bearer(token({ exp: Math.floor(Date.now() / 1000) - 3600 })), 401, 'token_expired'],
  ['another audience', 'GET', '/auth/ci', () => bearer(token({ aud: 'api://Other' })), 401, 'audience_mismatch'],
  ['another branch', 'GET', '/auth/ci', () => bearer(token({ ref: 'refs/heads/dev' })), 403, 'claim_mismatch'],
  ['another repository of the same owner', 'GET', '/auth/ci/x', () => bearer(token({ repository: 'octo-org/other' })), 403, 'claim_mismatch'],
  ['another owner on the owner-wide route', 'GET', '/auth', () => bearer(token({ repository: 'evil/octo-repo', repository_owner: 'evil' })), 403, 'claim_mismatch'],
  ['a path next to the auth prefix', 'GET', '/authx', () => bearer(token()), 404, 'route_unknown'],
  ['a path parameter', 'GET', '/auth/ci;x/y', () => bearer(token()), 400, 'bad_request'],
];

for (const [what, method, path, headers, status, reason] of REFUSALS) {
  test(`an auth route answers ${what} with ${status} ${reason}, no identity headers, and contacts nothing`, async () => {
    const res = await untouched(() => send(path, headers(), { method }));
    assert.equal(res.status, status, res.text);
    assert.deepEqual(Object.keys(res.json ?? {}).sort(), ['error', 'id']);
    assert.equal(res.json?.error, reason);
    assert.deepEqual(identityHeaders(res.headers), {}, 'a refusal never carries identity headers');
    const challenge = res.headers.get('www-authenticate');
    if (status === 401) {
      assert.match(challenge ?? '', /^Bearer realm="oidc-gateway"/);
      assert.equal(challenge!.includes('error="invalid_token"'), reason !== 'token_missing');
    } else {
      assert.equal(challenge, null);
    }
    const line = await auditOf(String(res.json?.id));
    assert.equal(line.status, status);
    assert.equal(line.decision, 'deny');
    assert.equal(line.reason, reason);
    if (reason === 'claim_mismatch') assert.ok(typeof line.claim === 'string' && line.claim !== '', 'the audit line names the claim');
  });
}

// Each row: the path asked for, and the route that must answer it.
const PREFIXES: [path: string, route: string][] = [
  ['/auth', '/auth'],
  ['/auth/', '/auth'],
  ['/auth/other/x', '/auth'],
  ['/auth/cix', '/auth'],
  ['/auth/ci', '/auth/ci'],
  ['/auth/ci?rd=https%3A%2F%2Fapp.example%2F', '/auth/ci'],
  ['/auth/ci/anything/deeper', '/auth/ci'],
  ['/auth/ci/deploy', '/auth/ci/deploy'],
  ['/auth/ci/deploy/prod/x', '/auth/ci/deploy'],
];

test('the longest auth route prefix answers, at segment boundaries, with its own claim set', async () => {
  for (const [path, route] of PREFIXES) {
    const res = await untouched(() => send(path, bearer(token())));
    assert.equal(res.status, 200, `${path}: ${res.text}`);
    assert.equal((await auditOf(res.headers.get('x-request-id')!)).route, route, path);
    const forwarded = Object.keys(identityHeaders(res.headers)).length;
    assert.equal(forwarded, route === '/auth/ci' ? 4 : IDENTITY.length, `${path} gets the claim set of ${route}`);
  }
  const deploy = await untouched(() => send('/auth/ci/deploy/x', bearer(token({ environment: 'staging' }))));
  assert.equal(deploy.status, 403, 'the longer /auth/ci/deploy route applies its own rule');
  assert.equal(deploy.json?.error, 'claim_mismatch');
});

test('a proxy route nested under an auth route wins by longest prefix and does reach its upstream, so the recorder is live', async () => {
  upstream.reset();
  const res = await send('/auth/ci/proxied/x?y=1', bearer(token()));
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(JSON.parse(res.text), { recorded: true });
  assert.equal(upstream.requests.length, 1);
  assert.equal(upstream.requests[0]!.url, '/inner/x?y=1');
  const api = await send('/api/z', bearer(token()));
  assert.equal(api.status, 200, api.text);
  assert.equal(upstream.requests.length, 2);
});

// How each forward-auth client asks: the token header passed along with the
// client's other headers, and the original request described in headers
// (nginx, Traefik) or in the path itself (Envoy ext_authz with a path prefix).
const SUBREQUESTS: [client: string, method: string, path: string, headers: Record<string, string>][] = [
  ['an nginx auth_request', 'GET', '/auth/ci', {
    'x-original-uri': '/artifacts/builds/1.tgz?x=1', 'x-original-method': 'PUT', 'x-original-remote-addr': '10.0.0.7',
    'x-real-ip': '10.0.0.7', 'x-forwarded-for': '10.0.0.7', host: 'app.example.com', cookie: 'session=abc',
    authorization: 'Basic dXNlcjpwYXNz', 'x-oidc-repository': 'evil/spoof', 'content-length': '0',
  }],
  ['a Traefik ForwardAuth', 'GET', '/auth/ci', {
    'x-forwarded-method': 'POST', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'app.example.com',
    'x-forwarded-uri': '/artifacts/builds/1.tgz', 'x-forwarded-for': '10.0.0.7', 'x-oidc-run-id': '1',
  }],
  ['an Envoy ext_authz (path_prefix /auth/ci)', 'POST', '/auth/ci/artifacts/builds/1.tgz?x=1', {
    'x-envoy-internal': 'true', 'x-forwarded-proto': 'https', 'x-request-id': 'envoy-chosen', 'content-length': '0',
  }],
];

for (const [client, method, path, headers] of SUBREQUESTS) {
  test(`${client} subrequest is judged on the token alone: the original request's headers are ignored`, async () => {
    const res = await untouched(() => send(path, { ...headers, ...bearer(token()) }, { method }));
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(identityHeaders(res.headers), {
      'x-oidc-repository': 'octo-org/octo-repo', 'x-oidc-run-id': '42', 'x-oidc-workflow': '1 %F0%9F%9A%80 Dev', 'x-oidc-ref': 'refs/heads/main',
    }, 'the claims come from the token, never from a header the client sent');
    assert.match(res.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/, 'our own request id, not the one sent');
    assert.equal((await auditOf(res.headers.get('x-request-id')!)).route, '/auth/ci');
  });
}

// A body is never read: a 200 closes the connection, so whatever follows
// (even bytes shaped like a second request) is never parsed as a request.
const SMUGGLED = 'GET /auth/read HTTP/1.1\r\nHost: gw\r\nx-smuggled: yes\r\n\r\n';
const BODIES: [what: string, head: string, body: string][] = [
  ['a Content-Length body', `content-length: ${SMUGGLED.length}\r\n`, SMUGGLED],
  ['a chunked body', 'transfer-encoding: chunked\r\n', `5\r\nhello\r\n0\r\n\r\nGET /authx HTTP/1.1\r\nHost: gw\r\n\r\n`],
  ['Expect: 100-continue and a body never sent', 'content-length: 1000\r\nexpect: 100-continue\r\n', ''],
];

for (const [what, head, body] of BODIES) {
  test(`a POST with ${what} gets one 200 with connection: close, and the body is never read as a request`, async () => {
    const request = `POST /auth/ci HTTP/1.1\r\nHost: gw\r\ngateway-authorization: Bearer ${token()}\r\n${head}\r\n${body}`;
    const started = Date.now();
    const raw = await untouched(() => rawExchange(gw.port, request, 5_000));
    assert.ok(Date.now() - started < 4_000, 'the gateway closed the connection, not the idle timer');
    assert.equal(statusOf(raw), 200, raw);
    assert.match(raw, /\r\nconnection: close\r\n/i);
    assert.match(raw, /\r\nx-oidc-repository: octo-org\/octo-repo\r\n/i);
    assert.equal(raw.match(/HTTP\/1\.1 \d{3}/g)?.length, 1, `exactly one response (no 100 Continue, nothing for the body): ${raw}`);
  });
}

test('a GET without a body keeps its connection open for the next request', async () => {
  const t = token();
  const one = `GET /auth/ci HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${t}\r\n\r\n`;
  const raw = await untouched(() => rawExchange(gw.port, one + one.replace('\r\n\r\n', '\r\nconnection: close\r\n\r\n')));
  assert.deepEqual(raw.match(/HTTP\/1\.1 \d{3}/g), ['HTTP/1.1 200', 'HTTP/1.1 200']);
});

test('no log line carries a token, and every line is JSON', () => {
  assert.ok(sentTokens.length > 20);
  assertCleanLog(gw.process.stdout(), sentTokens);
});
