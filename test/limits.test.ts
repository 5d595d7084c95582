// End to end: the listener's limits (head size, slow heads) and trusted proxies.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import {
  generateRsaKey, rawExchange, signToken, startGateway, startIssuer, startRecorder, statusOf,
  type Issuer, type Recorder, type RunningGateway, type TestKey,
} from './helpers.ts';

let key: TestKey;
let issuer: Issuer;
let upstream: Recorder;
let gw: RunningGateway;

function token(): string {
  const now = Math.floor(Date.now() / 1000);
  return signToken({ alg: 'RS256', kid: 'k1' }, { iss: issuer.issuer, aud: 'aud', exp: now + 300, repository: 'octo-org/octo-repo' }, key.privateKey);
}

before(async () => {
  key = await generateRsaKey('k1');
  issuer = await startIssuer({ keys: [key.jwk] });
  upstream = await startRecorder();
  gw = await startGateway({
    issuers: [{ issuer: issuer.issuer, audience: 'aud' }],
    trustedProxies: ['127.0.0.1'],
    timeouts: { clientHeadersMs: 500 },
    routes: [{ path: '/', upstream: upstream.url, allow: [{ repository: 'octo-org/octo-repo' }] }],
  });
});

after(async () => {
  await gw?.close();
  await Promise.all([issuer?.close(), upstream?.close()]);
});

test('a request head over 16 KiB is answered 431 and never reaches the upstream', async () => {
  const before = upstream.hits();
  const raw = `GET /x HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${token()}\r\nx-padding: ${'a'.repeat(17 * 1024)}\r\n\r\n`;
  assert.equal(statusOf(await rawExchange(gw.port, raw)), 431);
  assert.equal(upstream.hits(), before);
});

test('a client that sends its head too slowly is cut off, and the upstream never hears of it', async () => {
  const before = upstream.hits();
  const started = Date.now();
  const closed = await new Promise<string>((resolve) => {
    const socket = connect(gw.port, '127.0.0.1');
    let text = '';
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => (text += d));
    socket.on('error', () => {});
    // Never the final CRLF: a slow-header client. The test's own bound, cleared so it does not hold the file open.
    const bound = setTimeout(() => socket.destroy(), 8_000);
    socket.on('close', () => (clearTimeout(bound), resolve(text)));
    socket.write(`GET /x HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${token()}\r\n`);
  });
  assert.ok(Date.now() - started < 5_000, 'closed by the headers timeout, not by the test');
  assert.ok(closed === '' || [400, 408].includes(statusOf(closed)), closed.split('\r\n')[0]);
  assert.equal(upstream.hits(), before);
});

test('X-Forwarded-For from a trusted proxy is kept and appended to', async () => {
  upstream.reset();
  const raw = `GET /x HTTP/1.1\r\nHost: gw.example\r\ngateway-authorization: ${token()}\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example\r\nConnection: close\r\n\r\n`;
  assert.equal(statusOf(await rawExchange(gw.port, raw)), 200);
  const h = upstream.requests.at(-1)!.headers;
  assert.equal(h['x-forwarded-for'], '203.0.113.7, 127.0.0.1');
  assert.equal(h['x-forwarded-proto'], 'https');
  assert.equal(h['x-forwarded-host'], 'public.example');
});

test('headers past Node\'s default count of 2,000 are still seen: a repeated token header hidden behind 1,100 others is refused (Bun refuses so many headers with 431)', async () => {
  const before = upstream.hits();
  const filler = Array.from({ length: 1_100 }, (_, i) => `x-${i}: y\r\n`).join('');
  const t = token();
  const raw = `GET /x HTTP/1.1\r\nHost: gw\r\ngateway-authorization: ${t}\r\n${filler}gateway-authorization: ${t}\r\nconnection: close\r\n\r\n`;
  const answer = await rawExchange(gw.port, raw);
  assert.ok([401, 431].includes(statusOf(answer)), answer.slice(0, 200));
  if (statusOf(answer) === 401) assert.match(answer, /"error":"token_malformed"/);
  assert.equal(upstream.hits(), before, 'the upstream was not contacted');
});
