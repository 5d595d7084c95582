// End to end: the gateway as its own process, a real issuer and a real
// upstream that records what it received. Every refusal asserts its status,
// its reason, and that the upstream was not contacted.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import {
  assertCleanLog, generateRsaKey, rawExchange, signToken, startGateway, startIssuer, startRecorder, statusOf, waitUntil,
  type Issuer, type Recorder, type RunningGateway, type TestKey,
} from './helpers.ts';

const AUD = 'api://ActionsOIDCGateway';
let key: TestKey;
let otherKey: TestKey;
let issuer: Issuer;
let upstream: Recorder;
/** Sends its head and half its body at once, the rest when released. */
let slow: Recorder;
const releaseSlow: (() => void)[] = [];
let gw: RunningGateway;
const sentTokens: string[] = [];

function claims(extra: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: issuer.issuer, aud: AUD, iat: now, exp: now + 300,
    repository: 'octo-org/octo-repo', repository_owner: 'octo-org', ref: 'refs/heads/main',
    run_id: 42, workflow: '1 🚀 Dev', sub: 'repo:octo-org/octo-repo:ref:refs/heads/main', ...extra,
  };
}

function token(extra: Record<string, unknown> = {}, signWith: TestKey = key, header: Record<string, unknown> = {}): string {
  const t = signToken({ alg: 'RS256', typ: 'JWT', kid: signWith.kid, ...header }, claims(extra), signWith.privateKey);
  sentTokens.push(t);
  return t;
}

async function get(path: string, headers: Record<string, string> = {}, init: RequestInit = {}) {
  const res = await fetch(gw.url + path, { ...init, headers });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: text.startsWith('{') ? (JSON.parse(text) as Record<string, unknown>) : undefined };
}

/** Runs `fn` and asserts the upstream received nothing meanwhile. */
async function untouched<T>(fn: () => Promise<T>): Promise<T> {
  const before = upstream.hits();
  const result = await fn();
  assert.equal(upstream.hits(), before, 'the upstream must not be contacted');
  return result;
}

before(async () => {
  [key, otherKey] = await Promise.all([generateRsaKey('k1'), generateRsaKey('k-other')]);
  issuer = await startIssuer({ keys: [key.jwk] });
  upstream = await startRecorder((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'x-upstream': 'yes', connection: 'keep-alive, x-upstream-private', 'x-upstream-private': 'no' });
    res.end(JSON.stringify({ url: req.url, bodyBytes: req.body.length }));
  });
  slow = await startRecorder((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '20' });
    res.write('first-half|');
    releaseSlow.push(() => res.end('second-ha'));
  });
  gw = await startGateway({
    issuers: [{ issuer: issuer.issuer, audience: AUD }],
    routes: [
      {
        path: '/artifacts/',
        upstream: `${upstream.url}/store/`,
        allow: [{ repository: 'octo-org/octo-repo', ref: ['refs/heads/main', 'refs/tags/v*'] }],
        forwardClaims: ['repository', 'run_id', 'workflow', 'ref', 'missing_claim'],
      },
      { path: '/artifacts/admin', upstream: `${upstream.url}/admin`, allow: [{ repository: 'octo-org/ops', environment: 'production' }] },
      { path: '/either', upstream: upstream.url, allow: [{ repository: 'octo-org/a' }, { repository_owner: 'octo-org', workflow: '1 *' }] },
      { path: '/read-only', upstream: upstream.url, methods: ['GET', 'HEAD'], allow: [{ repository: 'octo-org/*' }] },
      { path: '/slow', upstream: slow.url, allow: [{ repository: 'octo-org/octo-repo' }] },
    ],
  });
});

after(async () => {
  await gw?.close();
  await Promise.all([issuer?.close(), upstream?.close(), slow?.close()]);
});

test('an admitted request reaches the upstream with the prefix rewritten and the query kept', async () => {
  const res = await get('/artifacts/builds/1.tgz?x=1&y=%2F', { 'gateway-authorization': `Bearer ${token()}` });
  assert.equal(res.status, 200);
  assert.deepEqual(res.json, { url: '/store/builds/1.tgz?x=1&y=%2F', bodyBytes: 0 });
  assert.equal(res.headers.get('x-upstream'), 'yes');
  assert.equal(res.headers.get('x-upstream-private'), null, 'headers the upstream named in Connection stay on its hop');
});

test('the route prefix matches at a segment boundary and the longest prefix wins', async () => {
  const t = token();
  assert.equal((await get('/artifacts', { 'gateway-authorization': t })).json?.url, '/store/');
  const admin = await untouched(() => get('/artifacts/admin/x', { 'gateway-authorization': t }));
  assert.equal(admin.status, 403, 'the longer /artifacts/admin route applies, and its rule does not admit this repository');
  const other = await untouched(() => get('/artifactsx', { 'gateway-authorization': t }));
  assert.equal(other.status, 404);
  assert.equal(other.json?.error, 'route_unknown');
});

test('glob, array and OR policies admit exactly the workflows they name', async () => {
  const cases: [string, Record<string, unknown>, number][] = [
    ['/artifacts/x', { ref: 'refs/tags/v1.2.3' }, 200],
    ['/artifacts/x', { ref: 'refs/heads/dev' }, 403],
    ['/artifacts/x', { ref: 'refs/tags/w1' }, 403],
    ['/artifacts/x', { repository: 'octo-org/octo-repo-fork' }, 403],
    ['/artifacts/x', { repository: 'OCTO-ORG/octo-repo' }, 403],
    ['/artifacts/x', { ref: ['refs/heads/main'] }, 403],
    ['/either', { repository: 'octo-org/a' }, 200],
    ['/either', { repository: 'evil/a', repository_owner: 'octo-org' }, 200],
    ['/either', { repository: 'evil/a', repository_owner: 'evil' }, 403],
    ['/either', { repository: 'evil/a', workflow: '2 nope' }, 403],
  ];
  for (const [path, extra, status] of cases) {
    const before = upstream.hits();
    const res = await get(path, { 'gateway-authorization': token(extra) });
    assert.equal(res.status, status, `${path} ${JSON.stringify(extra)}`);
    if (status === 403) {
      assert.deepEqual(Object.keys(res.json ?? {}).sort(), ['error', 'id']);
      assert.equal(res.json?.error, 'claim_mismatch');
      assert.equal(upstream.hits(), before, 'a refused request never reaches the upstream');
    }
  }
  const denied = gw.logs().filter((l) => l.reason === 'claim_mismatch');
  assert.ok(denied.some((l) => l.claim === 'ref'), 'the audit line names the claim that failed');
});

test('a method outside the route\'s methods is 405 with Allow', async () => {
  const res = await untouched(() => get('/read-only/x', { 'gateway-authorization': token() }, { method: 'DELETE' }));
  assert.equal(res.status, 405);
  assert.equal(res.json?.error, 'method_not_allowed');
  assert.equal(res.headers.get('allow'), 'GET, HEAD');
  assert.equal((await get('/read-only/x', { 'gateway-authorization': token() })).status, 200);
});

test('every token failure is a 401 with its reason and a Bearer challenge, and never reaches the upstream', async () => {
  const now = Math.floor(Date.now() / 1000);
  const good = token();
  const [h, p] = good.split('.');
  const cases: [string, Record<string, string>, string][] = [
    ['no token header', {}, 'token_missing'],
    ['an empty token header', { 'gateway-authorization': '' }, 'token_missing'],
    ['junk', { 'gateway-authorization': 'Bearer not.a.jwt' }, 'token_malformed'],
    ['two segments', { 'gateway-authorization': `${h}.${p}` }, 'token_malformed'],
    ['alg none', { 'gateway-authorization': signToken({ alg: 'none', kid: 'k1' }, claims(), null, { alg: 'none' }) }, 'alg_not_allowed'],
    ['HS256 keyed with the public key', { 'gateway-authorization': signToken({ alg: 'HS256', kid: 'k1' }, claims(), key.publicPem, { alg: 'HS256' }) }, 'alg_not_allowed'],
    ['an unknown kid', { 'gateway-authorization': token({}, otherKey) }, 'kid_unknown'],
    ['a key we do not trust under our kid', { 'gateway-authorization': token({}, otherKey, { kid: 'k1' }) }, 'signature_invalid'],
    ['a payload swapped under a valid signature', { 'gateway-authorization': `${h}.${token({ repository: 'x/y' }).split('.')[1]}.${good.split('.')[2]}` }, 'signature_invalid'],
    ['expired', { 'gateway-authorization': token({ exp: now - 3600 }) }, 'token_expired'],
    ['not yet valid', { 'gateway-authorization': token({ nbf: now + 3600 }) }, 'token_not_yet_valid'],
    ['another issuer', { 'gateway-authorization': token({ iss: `${issuer.issuer}/` }) }, 'issuer_mismatch'],
    ['another audience', { 'gateway-authorization': token({ aud: 'api://Other' }) }, 'audience_mismatch'],
  ];
  for (const [name, headers, reason] of cases) {
    const res = await untouched(() => get('/artifacts/x', headers));
    assert.equal(res.status, 401, name);
    assert.equal(res.json?.error, reason, name);
    assert.match(String(res.json?.id), /^[0-9a-f-]{36}$/, name);
    const challenge = res.headers.get('www-authenticate') ?? '';
    assert.match(challenge, /^Bearer realm="oidc-gateway"/, name);
    assert.equal(challenge.includes('error="invalid_token"'), reason !== 'token_missing', name);
  }
});

test('a repeated token header is malformed, not a choice between two tokens', async () => {
  const t = token();
  const raw = `GET /artifacts/x HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${t}\r\ngateway-authorization: ${t}\r\nconnection: close\r\n\r\n`;
  const answer = await untouched(() => rawExchange(gw.port, raw));
  assert.equal(statusOf(answer), 401);
  assert.match(answer, /"error":"token_malformed"/);
});

test('the upstream gets our identity headers, never the token, and no header a client tried to plant', async () => {
  upstream.reset();
  const t = token();
  const res = await get('/artifacts/h', {
    'gateway-authorization': `Bearer ${t}`,
    authorization: 'Basic dXNlcjpwYXNz',
    'proxy-authorization': 'Bearer leaked',
    'x-oidc-repository': 'evil/spoof',
    'x-oidc-environment': 'production',
    'x-forwarded-for': '6.6.6.6',
    'x-forwarded-host': 'evil.example',
    forwarded: 'for=6.6.6.6',
    'x-request-id': 'client-chosen',
    // CGI-style servers (WSGI, Rack) read underscores as dashes: X_Oidc_Environment would be our X-Oidc-Environment.
    X_Oidc_Environment: 'production',
    x_oidc_repository: 'evil/spoof',
    X_Forwarded_For: '6.6.6.6',
    X_Request_Id: 'client-chosen',
    gateway_authorization: `Bearer ${t}`,
    // Headers some frameworks honour to re-state the client's address, method or path.
    'x-real-ip': '6.6.6.6',
    'true-client-ip': '6.6.6.6',
    'x-http-method-override': 'DELETE',
    'x-http-method': 'DELETE',
    'x-method-override': 'DELETE',
    'x-original-url': '/admin',
    'x-rewrite-url': '/admin',
    'x-custom_header': 'kept',
  });
  assert.equal(res.status, 200);
  const seen = upstream.requests.at(-1)!;
  const h = seen.headers;
  assert.equal(h['gateway-authorization'], undefined);
  assert.ok(!seen.rawHeaders.join('\n').includes(t), 'the token appears nowhere upstream');
  assert.equal(h.authorization, 'Basic dXNlcjpwYXNz', "the client's own Authorization passes untouched");
  assert.equal(h['proxy-authorization'], undefined);
  assert.equal(h['x-oidc-repository'], 'octo-org/octo-repo');
  assert.equal(h['x-oidc-environment'], undefined, 'an x-oidc header we did not set never passes');
  assert.equal(h['x-oidc-run-id'], '42');
  assert.equal(h['x-oidc-workflow'], '1 %F0%9F%9A%80 Dev');
  assert.equal(h['x-oidc-missing-claim'], undefined);
  assert.equal(h['x-forwarded-for'], '127.0.0.1', 'an untrusted peer cannot extend X-Forwarded-For');
  assert.equal(h['x-forwarded-host'], new URL(gw.url).host);
  assert.equal(h['x-forwarded-proto'], 'http');
  assert.equal(h.forwarded, undefined);
  const planted = ['x_oidc_environment', 'x_oidc_repository', 'x_forwarded_for', 'x_request_id', 'gateway_authorization', 'x-real-ip', 'true-client-ip', 'x-http-method-override', 'x-http-method', 'x-method-override', 'x-original-url', 'x-rewrite-url'];
  for (const name of planted) assert.equal(h[name], undefined, `${name} never passes`);
  assert.equal(h['x-custom_header'], 'kept', 'other names with an underscore pass');
  assert.equal(h.host, new URL(upstream.url).host);
  assert.match(String(h['x-request-id']), /^[0-9a-f-]{36}$/);
});

test('a claim holding CR/LF or a non-Latin-1 character never breaks or injects a header', async () => {
  upstream.reset();
  const res = await get('/artifacts/crlf', { 'gateway-authorization': token({ workflow: 'w\r\nx-injected: 1\u2028é' }) });
  assert.equal(res.status, 200);
  const h = upstream.requests.at(-1)!.headers;
  assert.equal(h['x-injected'], undefined);
  assert.equal(h['x-oidc-workflow'], 'w%0D%0Ax-injected: 1%E2%80%A8%C3%A9');
});

test('Connection cannot be used to strip the identity headers we add', async () => {
  upstream.reset();
  const raw = `GET /artifacts/c HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${token()}\r\nConnection: close, x-oidc-repository, x-forwarded-for, x-request-id, x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: keep-alive\r\n\r\n`;
  const answer = await rawExchange(gw.port, raw);
  assert.equal(statusOf(answer), 200);
  const h = upstream.requests.at(-1)!.headers;
  assert.equal(h['x-oidc-repository'], 'octo-org/octo-repo');
  assert.equal(h['x-forwarded-for'], '127.0.0.1');
  assert.match(String(h['x-request-id']), /^[0-9a-f-]{36}$/);
  for (const hop of ['x-secret', 'keep-alive', 'te', 'upgrade', 'proxy-connection']) assert.equal(h[hop], undefined, `${hop} is hop-by-hop`);
});

test('unsafe targets and ambiguous framing are 400 before any token work, and never reach the upstream', async () => {
  const t = token();
  const head = (target: string, extra = '') => `GET ${target} HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${t}\r\n${extra}connection: close\r\n\r\n`;
  const post = (extra: string, body: string) => `POST /artifacts/x HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${t}\r\n${extra}connection: close\r\n\r\n${body}`;
  const cases: [string, string][] = [
    ['an absolute-form target', head(`${upstream.url}/store/x`)],
    ['an absolute-form target to another host', head('http://169.254.169.254/latest/meta-data/')],
    ['a scheme-relative target', head('//evil.example/x')],
    ['a dot-dot segment', head('/artifacts/../admin')],
    ['a dot segment', head('/artifacts/./x')],
    ['an encoded dot-dot', head('/artifacts/%2e%2e/admin')],
    ['an upper-case encoded dot-dot', head('/artifacts/%2E%2E/admin')],
    ['an encoded slash', head('/artifacts/a%2fb')],
    ['an encoded backslash', head('/artifacts/a%5cb')],
    ['a backslash', head('/artifacts\\..\\admin')],
    ['an encoded NUL', head('/artifacts/a%00b')],
    ['an empty inner segment', head('/artifacts//x')],
    ['a bad percent escape', head('/artifacts/%zz')],
    ['the asterisk form', head('*')],
    ['two Host headers', head('/artifacts/x', 'Host: other\r\n')],
    ['Content-Length with Transfer-Encoding', post('Content-Length: 5\r\nTransfer-Encoding: chunked\r\n', '0\r\n\r\n')],
    ['two Content-Length headers', post('Content-Length: 5\r\nContent-Length: 5\r\n', 'hello')],
    ['Transfer-Encoding xchunked', post('Transfer-Encoding: xchunked\r\n', '5\r\nhello\r\n0\r\n\r\n')],
    ['Transfer-Encoding gzip, chunked', post('Transfer-Encoding: gzip, chunked\r\n', '5\r\nhello\r\n0\r\n\r\n')],
    ['Transfer-Encoding in HTTP/1.0', post('Transfer-Encoding: chunked\r\n', '5\r\nhello\r\n0\r\n\r\n').replace('HTTP/1.1', 'HTTP/1.0')],
  ];
  for (const [name, raw] of cases) {
    const answer = await untouched(() => rawExchange(gw.port, raw));
    assert.equal(statusOf(answer), 400, `${name}: ${answer.split('\r\n')[0]}`);
  }
  const logged = gw.logs().filter((l) => l.reason === 'bad_request');
  assert.ok(logged.length > 0 && logged.every((l) => l.identity === undefined), 'refused before any token work');
});

test('a refused framing closes the connection: what follows on it is never parsed as a request', async () => {
  const t = token();
  const next = `GET /artifacts/after HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${t}\r\n\r\n`;
  const heads = [
    `POST /artifacts/x HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${t}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello`,
    `POST /artifacts/x HTTP/1.1\r\nHost: gw\r\nHost: other\r\ngateway-authorization: ${t}\r\n\r\n`,
    `POST /artifacts/x HTTP/1.0\r\nHost: gw\r\ngateway-authorization: ${t}\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n0\r\n\r\n`,
  ];
  for (const head of heads) {
    const before = upstream.hits();
    const answer = await rawExchange(gw.port, head + next);
    assert.equal(upstream.hits(), before, `the upstream must not be contacted: ${JSON.stringify(answer)} ${JSON.stringify(upstream.requests.map((r) => r.url))} ${head.split("\r\n")[0]}`);
    assert.equal(statusOf(answer), 400, head.split('\r\n')[0]);
    assert.equal(answer.match(/HTTP\/1\.[01] \d{3}/g)?.length, 1, `one answer, then the connection closed: ${JSON.stringify(answer)}`);
  }
});

test('garbage behind a request whose response is under way cuts the connection, and never lands a 400 inside that response', async () => {
  const socket = connect(gw.port, '127.0.0.1');
  let text = '';
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => (text += chunk));
  socket.on('error', () => {});
  const closed = once(socket, 'close');
  socket.write(`GET /slow/x HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${token()}\r\n\r\n`);
  await waitUntil(() => text.includes('first-half|'));
  socket.write('NOT HTTP AT ALL\r\n\r\n');
  await closed;
  releaseSlow.splice(0).forEach((release) => release());
  assert.equal(statusOf(text), 200);
  assert.equal(text.match(/HTTP\/1\.1 \d{3}/g)?.length, 1, `one response only: ${JSON.stringify(text)}`);
  assert.ok(!text.includes('bad_request'), 'no 400 inside the body');
});

test('a request smuggled behind an admitted one never reaches the upstream', async () => {
  upstream.reset();
  const t = token();
  const smuggled = 'GET /admin HTTP/1.1\r\nHost: upstream\r\n\r\n';
  const raw = `POST /artifacts/x HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${t}\r\nContent-Length: ${smuggled.length}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`;
  const answer = await rawExchange(gw.port, raw);
  assert.equal(statusOf(answer), 400);
  assert.equal(upstream.requests.length, 0);
});

test('a body on a GET, HEAD, OPTIONS or DELETE keeps its framing upstream and is never read there as a second request', async () => {
  const smuggled = 'GET /admin/secret HTTP/1.1\r\nHost: upstream\r\nx-oidc-repository: octo-org/prod\r\n\r\n';
  const chunk = `${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`;
  for (const method of ['GET', 'HEAD', 'OPTIONS', 'DELETE']) {
    upstream.reset();
    const raw = `${method} /artifacts/x HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${token()}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunk}`;
    const answer = await rawExchange(gw.port, raw);
    assert.equal(statusOf(answer), 200, method);
    assert.deepEqual(upstream.requests.map((r) => r.url), ['/store/x'], `${method}: exactly one request reached the upstream`);
    assert.equal(upstream.requests[0]!.body.toString(), smuggled, `${method}: the body arrived as a body`);
  }
});

test('a Connection header naming a framing header is refused, so no hop can lose the body framing', async () => {
  for (const named of ['content-length', 'Transfer-Encoding', 'host']) {
    const raw = `POST /artifacts/x HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${token()}\r\nContent-Length: 5\r\nConnection: keep-alive, ${named}\r\n\r\nhello`;
    const answer = await untouched(() => rawExchange(gw.port, raw));
    assert.equal(statusOf(answer), 400, named);
  }
});

test('a percent-encoded letter, a double encoding, a path parameter, a fragment or another case cannot dodge a route', async () => {
  const t = token();
  const targets = ['/artifacts/%61dmin/x', '/artifacts/%2561dmin/x', '/artifacts/admin;x/secret', '/artifacts/admin#', '/artifacts/admin#/x', '/artifacts/x?q#frag', '/artifacts/ADMIN/x', '/artifacts/Admin', '/ARTIFACTS/x'];
  for (const target of targets) {
    const answer = await untouched(() => rawExchange(gw.port, `GET ${target} HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${t}\r\nconnection: close\r\n\r\n`));
    assert.equal(statusOf(answer), 400, target);
    assert.match(answer, /"error":"bad_request"/, target);
  }
  // Case matters only where it would change the route: other paths are passed as sent.
  upstream.reset();
  const mixed = await get('/artifacts/Builds/App.TXT?Q=1', { 'gateway-authorization': t });
  assert.equal(mixed.status, 200);
  assert.equal(upstream.requests.at(-1)!.url, '/store/Builds/App.TXT?Q=1');
});

test('no log line carries a token, and every line is JSON', () => {
  assertCleanLog(gw.process.stdout(), sentTokens);
});

test('with two issuers, a rule pinned to one issuer refuses the same repository from the other', async () => {
  const second = await startIssuer({ keys: [otherKey.jwk] });
  const two = await startGateway({
    issuers: [{ issuer: issuer.issuer, audience: AUD }, { issuer: second.issuer, audience: AUD }],
    routes: [{ path: '/', upstream: upstream.url, allow: [{ iss: issuer.issuer, repository: 'octo-org/octo-repo' }] }],
  });
  try {
    const ours = await fetch(`${two.url}/x`, { headers: { 'gateway-authorization': token() } });
    assert.equal(ours.status, 200);
    const before = upstream.hits();
    const theirs = await fetch(`${two.url}/x`, { headers: { 'gateway-authorization': token({ iss: second.issuer }, otherKey) } });
    assert.equal(theirs.status, 403);
    assert.equal(((await theirs.json()) as { error: string }).error, 'claim_mismatch');
    assert.equal(upstream.hits(), before);
  } finally {
    await two.close();
    await second.close();
  }
});

test('the gateway says which runtime it runs on, so the Bun pass cannot silently run Node', () => {
  const start = gw.logs().find((l) => l.kind === 'start');
  const expected = process.env.GATEWAY_RUNTIME?.includes('bun') ? /^bun 1\.\d+/ : /^node \d+/;
  assert.match(String(start?.runtime), expected);
});
