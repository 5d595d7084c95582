import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateHeaderName, validateHeaderValue } from 'node:http';
import type { Claims } from '../src/jwt.ts';
import { downstreamHeaders, headerSafe, inspectHead, upstreamHeaders, type UpstreamHeadOptions } from '../src/headers.ts';

const TOKEN_HEADER = 'gateway-authorization';

function verified(payload: Record<string, unknown>): Claims {
  const claims = Object.create(null) as Record<string, unknown>;
  for (const name of Object.keys(payload)) Object.defineProperty(claims, name, { value: payload[name], enumerable: true });
  return Object.freeze(claims);
}

const CLAIMS = verified({
  repository: 'octo-org/octo-repo',
  repository_owner: 'octo-org',
  run_id: 42,
  ref_protected: true,
  ref: 'refs/heads/main',
});

function options(over: Partial<UpstreamHeadOptions> = {}): UpstreamHeadOptions {
  return {
    tokenHeader: TOKEN_HEADER,
    upstreamHost: '127.0.0.1:8081',
    claims: CLAIMS,
    forwardClaims: ['repository', 'run_id'],
    clientIp: '203.0.113.7',
    trustedPeer: false,
    requestId: 'req-1',
    ...over,
  };
}

// A client's head as node:http gives it in req.rawHeaders.
const head = (...extra: string[]) => ['Host', 'gateway.example', 'User-Agent', 'curl/8', ...extra];

// --- inspectHead: framing --------------------------------------------------------

const FRAMING: [what: string, raw: string[], framing: string | undefined, hasBody: boolean][] = [
  ['a plain GET', head(), undefined, false],
  ['one Content-Length', head('Content-Length', '5'), undefined, true],
  ['Content-Length 0', head('Content-Length', '0'), undefined, false],
  ['Transfer-Encoding chunked', head('Transfer-Encoding', 'chunked'), undefined, true],
  ['Transfer-Encoding Chunked', head('Transfer-Encoding', 'Chunked'), undefined, true],
  ['Transfer-Encoding CHUNKED', head('transfer-encoding', 'CHUNKED'), undefined, true],
  ['two Host headers', head('Host', 'other.example'), 'repeated Host', false],
  ['two identical Host headers', head('host', 'gateway.example'), 'repeated Host', false],
  ['two equal Content-Length headers', head('Content-Length', '5', 'Content-Length', '5'), 'repeated Content-Length', true],
  ['two different Content-Length headers', head('Content-Length', '5', 'content-length', '50'), 'repeated Content-Length', true],
  ['Transfer-Encoding xchunked', head('Transfer-Encoding', 'xchunked'), 'Transfer-Encoding other than chunked', true],
  ['Transfer-Encoding "gzip, chunked"', head('Transfer-Encoding', 'gzip, chunked'), 'Transfer-Encoding other than chunked', true],
  ['Transfer-Encoding "chunked, chunked"', head('Transfer-Encoding', 'chunked, chunked'), 'Transfer-Encoding other than chunked', true],
  ['Transfer-Encoding identity', head('Transfer-Encoding', 'identity'), 'Transfer-Encoding other than chunked', true],
  ['an empty Transfer-Encoding', head('Transfer-Encoding', ''), 'Transfer-Encoding other than chunked', true],
  ['two Transfer-Encoding headers', head('Transfer-Encoding', 'chunked', 'Transfer-Encoding', 'chunked'), 'Transfer-Encoding other than chunked', true],
  ['Content-Length with Transfer-Encoding', head('Content-Length', '5', 'Transfer-Encoding', 'chunked'), 'both Content-Length and Transfer-Encoding', true],
  ['Transfer-Encoding with Content-Length', head('Transfer-Encoding', 'chunked', 'Content-Length', '0'), 'both Content-Length and Transfer-Encoding', true],
];

for (const [what, raw, framing, hasBody] of FRAMING) {
  test(`inspectHead ${framing ? `refuses ${what} as "${framing}"` : `accepts ${what}`}`, () => {
    const result = inspectHead(raw, TOKEN_HEADER);
    assert.equal(result.framing, framing);
    if (framing === undefined) assert.equal(result.hasBody, hasBody);
  });
}

// --- inspectHead: token ------------------------------------------------------------

const TOKENS: [what: string, raw: string[], token: string | undefined][] = [
  ['a raw token', head('Gateway-Authorization', 'eyJ.a.b'), 'eyJ.a.b'],
  ['a "Bearer " token', head('Gateway-Authorization', 'Bearer eyJ.a.b'), 'eyJ.a.b'],
  ['a "bearer " token', head('gateway-authorization', 'bearer eyJ.a.b'), 'eyJ.a.b'],
  ['a "BEARER " token', head('GATEWAY-AUTHORIZATION', 'BEARER eyJ.a.b'), 'eyJ.a.b'],
  ['a "bEaReR " token', head('Gateway-Authorization', 'bEaReR eyJ.a.b'), 'eyJ.a.b'],
  ['a token with surrounding spaces', head('Gateway-Authorization', '  Bearer   eyJ.a.b  '), 'eyJ.a.b'],
  ['no token header', head(), ''],
  ['only the client Authorization header', head('Authorization', 'Bearer client-secret'), ''],
  ['a token header beside Authorization', head('Authorization', 'Basic dXNlcjpwdw==', 'Gateway-Authorization', 'Bearer eyJ.a.b'), 'eyJ.a.b'],
  ['a repeated token header', head('Gateway-Authorization', 'Bearer eyJ.a.b', 'Gateway-Authorization', 'Bearer eyJ.c.d'), undefined],
  ['a repeated identical token header', head('Gateway-Authorization', 'eyJ.a.b', 'gateway-authorization', 'eyJ.a.b'), undefined],
  ['a repeated token header with one empty', head('Gateway-Authorization', '', 'Gateway-Authorization', 'eyJ.a.b'), undefined],
];

for (const [what, raw, token] of TOKENS) {
  test(`inspectHead reads ${what} as ${token === undefined ? 'undefined' : JSON.stringify(token)}`, () => {
    assert.equal(inspectHead(raw, TOKEN_HEADER).token, token);
  });
}

test('inspectHead refuses a chunked body in HTTP/1.0, which has no chunked coding, and takes it in HTTP/1.1', () => {
  const raw = ['Host', 'gw', 'Transfer-Encoding', 'chunked'];
  assert.equal(inspectHead(raw, TOKEN_HEADER, '1.0').framing, 'chunked in HTTP/1.0');
  assert.equal(inspectHead(raw, TOKEN_HEADER, '1.1').framing, undefined);
  assert.equal(inspectHead(['Host', 'gw', 'Content-Length', '5'], TOKEN_HEADER, '1.0').framing, undefined);
});

test('inspectHead reads the token from Authorization when that is the configured header', () => {
  assert.equal(inspectHead(head('Authorization', 'Bearer eyJ.a.b'), 'authorization').token, 'eyJ.a.b');
  assert.equal(inspectHead(head('Gateway-Authorization', 'Bearer eyJ.a.b'), 'authorization').token, '');
});

// --- upstreamHeaders -------------------------------------------------------------------

test('upstreamHeaders removes every hop-by-hop header', () => {
  const raw = head(
    'Connection', 'keep-alive, Upgrade',
    'Keep-Alive', 'timeout=5',
    'Proxy-Connection', 'keep-alive',
    'Proxy-Authorization', 'Basic cHJveHk6cHc=',
    'Proxy-Authenticate', 'Basic',
    'TE', 'trailers',
    'Trailer', 'x-checksum',
    'Transfer-Encoding', 'chunked',
    'Upgrade', 'websocket',
    'Content-Type', 'application/octet-stream',
  );
  const out = upstreamHeaders(raw, options());
  for (const name of ['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate', 'te', 'trailer', 'transfer-encoding', 'upgrade']) {
    assert.equal(out[name], undefined, name);
  }
  assert.equal(out['content-type'], 'application/octet-stream');
  assert.equal(out['user-agent'], 'curl/8');
});

test('upstreamHeaders removes the headers named in Connection, yet still sends its own x-oidc-repository', () => {
  const raw = head(
    'Connection', 'x-oidc-repository, x-secret',
    'X-OIDC-Repository', 'evil-org/evil-repo',
    'X-Secret', 'hop-only',
    'X-Kept', 'yes',
  );
  const out = upstreamHeaders(raw, options());
  assert.equal(out['x-secret'], undefined);
  assert.equal(out['x-oidc-repository'], 'octo-org/octo-repo');
  assert.equal(out['x-kept'], 'yes');
});

test('upstreamHeaders honours every Connection header, whatever the case and spacing of the names', () => {
  const raw = head(
    'Connection', ' X-One ,,x-TWO',
    'connection', 'x-three',
    'x-one', '1', 'X-Two', '2', 'X-THREE', '3', 'x-four', '4',
  );
  const out = upstreamHeaders(raw, options());
  assert.deepEqual([out['x-one'], out['x-two'], out['x-three'], out['x-four']], [undefined, undefined, undefined, '4']);
});

test('upstreamHeaders removes the token header, in any case, and passes the client Authorization untouched', () => {
  const raw = head('GATEWAY-AUTHORIZATION', 'Bearer eyJ.secret.token', 'Authorization', 'Bearer client-own-token');
  const out = upstreamHeaders(raw, options());
  assert.equal(out['gateway-authorization'], undefined);
  assert.equal(out.authorization, 'Bearer client-own-token');
  assert.ok(!JSON.stringify(out).includes('eyJ.secret.token'));
});

const SPOOFED = head(
  'X-OIDC-Repository', 'evil-org/evil-repo',
  'x-oidc-run-id', '1',
  'X-Oidc-Admin', 'true',
  'X-Forwarded-For', '10.0.0.1',
  'X-Forwarded-Proto', 'https',
  'X-Forwarded-Host', 'internal.example',
  'X-Forwarded-Port', '443',
  'Forwarded', 'for=10.0.0.1;proto=https',
);

test('from an untrusted peer, spoofed x-oidc-*, x-forwarded-* and forwarded headers are removed and replaced with ours', () => {
  const out = upstreamHeaders(SPOOFED, options({ trustedPeer: false }));
  assert.equal(out['x-oidc-repository'], 'octo-org/octo-repo');
  assert.equal(out['x-oidc-run-id'], '42');
  assert.equal(out['x-oidc-admin'], undefined);
  assert.equal(out['x-forwarded-for'], '203.0.113.7');
  assert.equal(out['x-forwarded-proto'], 'http');
  assert.equal(out['x-forwarded-host'], 'gateway.example');
  assert.equal(out['x-forwarded-port'], undefined);
  assert.equal(out.forwarded, undefined);
});

test('a token header named with underscores is dropped in either spelling, and ours can be planted in neither', () => {
  const raw = head('X_Gateway_Token', 'Bearer secret-1', 'x-gateway-token', 'Bearer secret-2', 'X_Oidc_Repository', 'evil/spoof', 'x_request_id', 'chosen', 'X_Keep_Me', 'kept');
  const out = upstreamHeaders(raw, options({ tokenHeader: 'x_gateway_token' }));
  assert.ok(!JSON.stringify(out).includes('secret'), JSON.stringify(out));
  assert.equal(out.x_oidc_repository, undefined);
  assert.equal(out['x-oidc-repository'], 'octo-org/octo-repo');
  assert.equal(out.x_request_id, undefined);
  assert.equal(out.x_keep_me, 'kept');
});

test('from a trusted peer, X-Forwarded-For is kept and appended to, X-Forwarded-Proto and -Host are kept', () => {
  const raw = head(
    'X-Forwarded-For', '198.51.100.1',
    'x-forwarded-for', '198.51.100.2, 198.51.100.3',
    'X-Forwarded-Proto', 'https',
    'X-Forwarded-Host', 'public.example',
  );
  const out = upstreamHeaders(raw, options({ trustedPeer: true }));
  assert.equal(out['x-forwarded-for'], '198.51.100.1, 198.51.100.2, 198.51.100.3, 203.0.113.7');
  assert.equal(out['x-forwarded-proto'], 'https');
  assert.equal(out['x-forwarded-host'], 'public.example');
});

test('from a trusted peer without forwarding headers, ours are the client address, http and the client Host', () => {
  const out = upstreamHeaders(head(), options({ trustedPeer: true }));
  assert.equal(out['x-forwarded-for'], '203.0.113.7');
  assert.equal(out['x-forwarded-proto'], 'http');
  assert.equal(out['x-forwarded-host'], 'gateway.example');
});

test('even a trusted peer cannot pre-set identity headers', () => {
  const out = upstreamHeaders(SPOOFED, options({ trustedPeer: true }));
  assert.equal(out['x-oidc-repository'], 'octo-org/octo-repo');
  assert.equal(out['x-oidc-run-id'], '42');
  assert.equal(out['x-oidc-admin'], undefined);
});

test('upstreamHeaders keeps repeated headers as arrays, in order', () => {
  const raw = head('Accept', 'text/plain', 'accept', 'application/json', 'X-Custom', '1', 'x-custom', '2', 'X-CUSTOM', '3');
  const out = upstreamHeaders(raw, options());
  assert.deepEqual(out.accept, ['text/plain', 'application/json']);
  assert.deepEqual(out['x-custom'], ['1', '2', '3']);
});

test('upstreamHeaders replaces Host with the upstream host', () => {
  const out = upstreamHeaders(head(), options({ upstreamHost: 'artifacts.internal:8081' }));
  assert.equal(out.host, 'artifacts.internal:8081');
});

test('upstreamHeaders replaces any client X-Request-Id, even a repeated one, with ours', () => {
  const out = upstreamHeaders(head('X-Request-Id', 'client-chosen', 'x-request-id', 'again'), options({ requestId: 'req-77' }));
  assert.equal(out['x-request-id'], 'req-77');
});

test('upstreamHeaders never edits the incoming head', () => {
  const raw = head('Connection', 'x-secret', 'X-Secret', 's', 'X-OIDC-Repository', 'evil', 'Gateway-Authorization', 'Bearer t');
  const copy = [...raw];
  upstreamHeaders(raw, options());
  assert.deepEqual(raw, copy);
});

test('forwardClaims become x-oidc-<claim> headers with underscores as dashes; numbers and booleans as text; missing claims skipped', () => {
  const out = upstreamHeaders(head(), options({ forwardClaims: ['repository', 'repository_owner', 'run_id', 'ref_protected', 'job_workflow_ref'] }));
  assert.equal(out['x-oidc-repository'], 'octo-org/octo-repo');
  assert.equal(out['x-oidc-repository-owner'], 'octo-org');
  assert.equal(out['x-oidc-run-id'], '42');
  assert.equal(out['x-oidc-ref-protected'], 'true');
  assert.equal(out['x-oidc-job-workflow-ref'], undefined);
  assert.deepEqual(Object.keys(out).filter((n) => n.startsWith('x-oidc-')).sort(), ['x-oidc-ref-protected', 'x-oidc-repository', 'x-oidc-repository-owner', 'x-oidc-run-id']);
});

test('forwardClaims skip arrays, objects and null, and never read through the prototype', () => {
  const claims = verified({ groups: ['a', 'b'], extra: { a: 1 }, nothing: null });
  const out = upstreamHeaders(head(), options({ claims, forwardClaims: ['groups', 'extra', 'nothing', 'toString', 'constructor'] }));
  assert.deepEqual(Object.keys(out).filter((n) => n.startsWith('x-oidc-')), []);
});

const ENCODED: [what: string, value: string, header: string][] = [
  ['printable ASCII', 'octo-org/octo-repo @ refs/heads/main ~!', 'octo-org/octo-repo @ refs/heads/main ~!'],
  ['an emoji workflow name', '1 🚀 Dev', '1 %F0%9F%9A%80 Dev'],
  ['a Latin-1 character', 'café', 'caf%C3%A9'],
  ['a CR/LF injection attempt', 'main\r\nX-OIDC-Repository: octo-org/octo-repo', 'main%0D%0AX-OIDC-Repository: octo-org/octo-repo'],
  ['a lone LF', 'a\nb', 'a%0Ab'],
  ['a NUL', 'a\u0000b', 'a%00b'],
  ['a tab', 'a\tb', 'a%09b'],
  ['a DEL', 'a\u007fb', 'a%7Fb'],
  ['a percent sign', '100%', '100%25'],
  ['a percent sign that looks encoded', 'a%0Ab', 'a%250Ab'],
  ['a percent sign beside an emoji', '%🚀', '%25%F0%9F%9A%80'],
  ['a lone surrogate', 'a\ud800b', 'a%EF%BF%BDb'],
  ['an empty string', '', ''],
];

for (const [what, value, header] of ENCODED) {
  test(`a forwarded claim holding ${what} becomes ${JSON.stringify(header)}, a value setHeader accepts`, () => {
    assert.equal(headerSafe(value), header);
    const out = upstreamHeaders(head(), options({ claims: verified({ workflow: value }), forwardClaims: ['workflow'] }));
    assert.equal(out['x-oidc-workflow'], header);
    assert.doesNotThrow(() => validateHeaderValue('x-oidc-workflow', String(out['x-oidc-workflow'])));
  });
}

test('every header upstreamHeaders builds from a hostile head is one node:http will send', () => {
  const claims = verified({ workflow: '1 🚀 Dev\r\n', ref: 'refs/heads/\u0000%', repository: 'octo-org/octo-repo' });
  const out = upstreamHeaders([...SPOOFED, 'Connection', 'x-a'], options({ claims, forwardClaims: ['workflow', 'ref', 'repository'] }));
  for (const [name, value] of Object.entries(out)) {
    assert.doesNotThrow(() => validateHeaderName(name), name);
    for (const one of [value ?? ''].flat()) assert.doesNotThrow(() => validateHeaderValue(name, String(one)), name);
  }
});

// --- downstreamHeaders -------------------------------------------------------------------

test('downstreamHeaders removes hop-by-hop headers and those named in Connection, keeping the rest', () => {
  const raw = [
    'Content-Type', 'text/plain',
    'Content-Length', '5',
    'Connection', 'keep-alive, X-Internal',
    'Keep-Alive', 'timeout=5',
    'Transfer-Encoding', 'chunked',
    'Trailer', 'x-checksum',
    'Upgrade', 'h2c',
    'Proxy-Authenticate', 'Basic',
    'Proxy-Connection', 'keep-alive',
    'TE', 'trailers',
    'X-Internal', 'secret',
    'ETag', '"abc"',
  ];
  assert.deepEqual(downstreamHeaders(raw), { 'content-type': 'text/plain', 'content-length': '5', etag: '"abc"' });
});

test('downstreamHeaders keeps repeated Set-Cookie headers as an array', () => {
  const raw = ['Set-Cookie', 'a=1; Path=/', 'set-cookie', 'b=2; Path=/', 'Set-Cookie', 'c=3'];
  assert.deepEqual(downstreamHeaders(raw), { 'set-cookie': ['a=1; Path=/', 'b=2; Path=/', 'c=3'] });
});

test('downstreamHeaders never edits the upstream head', () => {
  const raw = ['Connection', 'x-a', 'X-A', '1', 'Set-Cookie', 'a=1'];
  const copy = [...raw];
  downstreamHeaders(raw);
  assert.deepEqual(raw, copy);
});
