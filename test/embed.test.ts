// A host program imports the built package by name and mounts the gateway in its own server.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { Duplex } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { generateRsaKey, httpGet, httpRequest, JWKS_PATH, signToken, startIssuer, startRecorder, waitUntil, type Issuer, type Recorder, type TestKey } from './helpers.ts';

let key: TestKey;
let issuer: Issuer;
let upstream: Recorder;
let server: http.Server;
let stop: () => void;

before(async () => {
  key = await generateRsaKey('k1');
  issuer = await startIssuer({ keys: [key.jwk] });
  upstream = await startRecorder();
  // By package name, through package.json "exports", as a host program would.
  const lib = (await import('oidc-gateway')) as typeof import('../src/index.ts');
  const parsed = lib.parseConfig({
    issuers: [{ issuer: issuer.issuer, audience: 'aud' }],
    routes: [{ path: '/svc', upstream: upstream.url, allow: [{ repository: 'octo-org/octo-repo' }] }],
  });
  assert.ok(parsed.ok);
  const gateway = lib.createGateway(parsed.config);
  await gateway.start();
  stop = () => gateway.stop();
  server = http.createServer();
  server.on('request', (req, res) => gateway.handle(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});

after(async () => {
  stop?.();
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  await Promise.all([issuer?.close(), upstream?.close()]);
});

test('a host program can mount the gateway in its own server', async () => {
  const now = Math.floor(Date.now() / 1000);
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/svc/x`;
  const claims = { iss: issuer.issuer, aud: 'aud', exp: now + 60, repository: 'octo-org/octo-repo' };
  const ok = await fetch(url, { headers: { 'gateway-authorization': signToken({ alg: 'RS256', kid: 'k1' }, claims, key.privateKey) } });
  assert.equal(ok.status, 200);
  assert.equal(upstream.requests.at(-1)?.url, '/x');
  const hits = upstream.hits();
  const denied = await fetch(url, { headers: { 'gateway-authorization': signToken({ alg: 'RS256', kid: 'k1' }, { ...claims, repository: 'octo-org/other' }, key.privateKey) } });
  assert.equal(denied.status, 403);
  assert.equal(upstream.hits(), hits);
});

test('createGateway and reload take only a config from parseConfig: a host cannot skip its refusals, such as a rule that admits everyone', async () => {
  const lib = (await import('oidc-gateway')) as typeof import('../src/index.ts');
  const parsed = lib.parseConfig({ issuers: [{ issuer: issuer.issuer, audience: 'aud' }], routes: [{ path: '/svc', upstream: upstream.url, allow: [{ repository: 'octo-org/octo-repo' }] }] });
  assert.ok(parsed.ok);
  // Built in code, or a parsed config copied and edited: neither went through the refusals (here, an empty rule).
  const open = { ...parsed.config, routes: [{ ...parsed.config.routes[0]!, allow: [{}] }] };
  assert.throws(() => lib.createGateway(open), /parseConfig/);
  const gateway = lib.createGateway(parsed.config);
  try {
    assert.throws(() => gateway.reload(open), /parseConfig/);
    assert.throws(() => gateway.reload(structuredClone(parsed.config)), /parseConfig/);
    gateway.reload(parsed.config);
  } finally {
    await gateway.stop();
  }
});

test('keys.* settings apply at restart, also to an issuer a reload adds, as the reload log line says', { timeout: 20_000 }, async () => {
  const lib = (await import('oidc-gateway')) as typeof import('../src/index.ts');
  const second = await startIssuer({ keys: [key.jwk] });
  const lines: Record<string, unknown>[] = [];
  const gateway = lib.createGateway(parsedOrThrow(lib, { fetchTimeoutMs: 5_000 }, [issuer]), { log: (line) => lines.push(line) });
  try {
    await gateway.start();
    // The reload adds an issuer whose key set answers in 400 ms, and asks for a 100 ms fetch timeout.
    second.setPlan(JWKS_PATH, { delayMs: 400 });
    gateway.reload(parsedOrThrow(lib, { fetchTimeoutMs: 100 }, [issuer, second]));
    await waitUntil(() => gateway.ready(), 5_000);
    const fetched = lines.filter((l) => l.kind === 'keys' && l.issuer === second.issuer).map((l) => l.result);
    assert.deepEqual(fetched, ['ok'], 'fetched under the 5 s timeout in force since start, not the reloaded 100 ms');
  } finally {
    await gateway.stop();
    await second.close();
  }
});

function parsedOrThrow(lib: typeof import('../src/index.ts'), keys: Record<string, number>, issuers: readonly Issuer[]) {
  const parsed = lib.parseConfig({
    issuers: issuers.map((i) => ({ issuer: i.issuer, audience: 'aud' })),
    routes: [{ path: '/svc', upstream: upstream.url, allow: issuers.map((i) => ({ iss: i.issuer, repository: 'octo-org/octo-repo' })) }],
    keys,
  });
  if (!parsed.ok) throw new Error(parsed.problems.join('; '));
  return parsed.config;
}

test('connect() takes any Duplex from its host: a destination that resets closes one that cannot be reset, and nothing throws', { timeout: 20_000 }, async () => {
  const lib = (await import('oidc-gateway')) as typeof import('../src/index.ts');
  const destination = net.createServer((s) => (s.on('error', () => {}), s.once('data', () => s.resetAndDestroy())));
  await new Promise<void>((resolve) => destination.listen(0, '127.0.0.1', resolve));
  const target = `127.0.0.1:${(destination.address() as AddressInfo).port}`;
  const parsed = lib.parseConfig({ issuers: [{ issuer: issuer.issuer, audience: 'aud' }], tunnels: [{ to: [target], allow: [{ repository: 'octo-org/octo-repo' }] }] });
  assert.ok(parsed.ok);
  const lines: Record<string, unknown>[] = [];
  const gateway = lib.createGateway(parsed.config, { log: (line) => lines.push(line) });
  // As a host on TLS would: a TLSSocket cannot be reset, and a Duplex made of a socket has no resetAndDestroy at all.
  const raw: net.Socket[] = [];
  const host = http.createServer().on('connect', (req, socket: net.Socket, head) => (raw.push(socket), gateway.connect(req, Duplex.from({ readable: socket, writable: socket }), head)));
  await new Promise<void>((resolve) => host.listen(0, '127.0.0.1', resolve));
  const client = net.connect((host.address() as AddressInfo).port, '127.0.0.1');
  try {
    await gateway.start();
    const now = Math.floor(Date.now() / 1000);
    const token = signToken({ alg: 'RS256', kid: 'k1' }, { iss: issuer.issuer, aud: 'aud', exp: now + 60, repository: 'octo-org/octo-repo' }, key.privateKey);
    client.on('error', () => {});
    const closed = new Promise((resolve) => client.once('close', resolve));
    client.write(`CONNECT ${target} HTTP/1.1\r\nhost: ${target}\r\nproxy-authorization: Bearer ${token}\r\n\r\n`);
    await new Promise((resolve) => client.once('data', resolve));
    client.write('hello');
    await closed;
    await waitUntil(() => lines.some((l) => l.kind === 'tunnel'));
    const line = lines.find((l) => l.kind === 'tunnel')!;
    assert.equal(line.closedBy, 'upstream');
    assert.equal(line.reason, 'upstream_reset');
  } finally {
    client.destroy();
    await gateway.stop();
    for (const socket of raw) socket.destroy();
    host.closeAllConnections();
    await Promise.all([new Promise((resolve) => host.close(resolve)), new Promise((resolve) => destination.close(resolve))]);
  }
});

test('responses queued behind an answer that closes the connection are let go once it closes, not held for good', async () => {
  const lib = (await import('oidc-gateway')) as typeof import('../src/index.ts');
  const parsed = lib.parseConfig({ issuers: [{ issuer: issuer.issuer, audience: 'aud' }], routes: [{ path: '/svc', upstream: upstream.url, allow: [{ repository: 'octo-org/octo-repo' }] }] });
  assert.ok(parsed.ok);
  const gateway = lib.createGateway(parsed.config);
  const held: WeakRef<http.ServerResponse>[] = [];
  const host = http.createServer((req, res) => (held.push(new WeakRef(res)), gateway.handle(req, res)));
  await new Promise<void>((resolve) => host.listen(0, '127.0.0.1', resolve));
  try {
    await gateway.start();
    // A refusal with its body unread closes the connection; Node has already queued the 20 requests behind it.
    const socket = net.connect((host.address() as AddressInfo).port, '127.0.0.1');
    socket.on('error', () => {});
    socket.resume();
    socket.write(`POST /svc/x HTTP/1.1\r\nhost: x\r\ngateway-authorization: bad\r\ncontent-length: 5\r\n\r\nhello${'GET /svc/y HTTP/1.1\r\nhost: x\r\ngateway-authorization: bad\r\n\r\n'.repeat(20)}`);
    await new Promise((resolve) => socket.once('close', resolve));
    await waitUntil(() => held.length === 21);
    await new Promise((resolve) => setTimeout(resolve, 50));
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    for (let i = 0; i < 3; i++) (gc(), await new Promise((resolve) => setImmediate(resolve)));
    assert.equal(held.filter((r) => r.deref() !== undefined).length, 0, 'every response was let go');
  } finally {
    await gateway.stop();
    host.closeAllConnections();
    await new Promise((resolve) => host.close(resolve));
  }
});

/** The gateway mounted in a host server, its one route to an upstream that answers each request only when told. */
async function mountHeld(answer: (res: http.ServerResponse) => void) {
  const lib = (await import('oidc-gateway')) as typeof import('../src/index.ts');
  const answers: (() => void)[] = [];
  const held = await startRecorder((_req, res) => answers.push(() => answer(res)));
  const parsed = lib.parseConfig({
    issuers: [{ issuer: issuer.issuer, audience: 'aud' }],
    routes: [{ path: '/held', upstream: held.url, allow: [{ repository: 'octo-org/octo-repo' }] }],
  });
  assert.ok(parsed.ok);
  const lines: Record<string, unknown>[] = [];
  const gateway = lib.createGateway(parsed.config, { log: (line) => lines.push(line) });
  await gateway.start();
  const host = http.createServer((req, res) => gateway.handle(req, res));
  await new Promise<void>((resolve) => host.listen(0, '127.0.0.1', resolve));
  const now = Math.floor(Date.now() / 1000);
  const token = signToken({ alg: 'RS256', kid: 'k1' }, { iss: issuer.issuer, aud: 'aud', exp: now + 60, repository: 'octo-org/octo-repo' }, key.privateKey);
  const url = `http://127.0.0.1:${(host.address() as AddressInfo).port}/held/x`;
  const get = () => httpGet(url, { 'gateway-authorization': token, connection: 'keep-alive' });
  const close = async () => {
    host.closeAllConnections();
    await new Promise((resolve) => host.close(resolve));
    await held.close();
  };
  return { held, answers, gateway, lines, url, token, get, close };
}

test('drain() asks a response still waiting on its upstream to close, and two overlapping stop() calls both resolve as soon as the exchange they end is logged', { timeout: 10_000 }, async () => {
  // Each answer closes its connection, so the second request is on a new upstream socket.
  const { answers, gateway, lines, get, close } = await mountHeld((res) => res.writeHead(200, { connection: 'close' }).end('late'));
  try {
    const first = get();
    await waitUntil(() => answers.length === 1);
    gateway.drain();
    answers[0]!();
    const drained = await first;
    assert.equal(drained.status, 200);
    assert.equal(drained.body, 'late');
    assert.equal(drained.headers.connection, 'close');

    const second = get();
    await waitUntil(() => answers.length === 2);
    const began = Date.now();
    // Without a waiter each, the first call would wait out the bound (the key fetch timeout plus 1 s, 6 s here).
    await Promise.all([gateway.stop(), gateway.stop()]);
    assert.ok(Date.now() - began < 3_000, `stop() took ${Date.now() - began} ms`);
    assert.equal((await second).status, 503);
    assert.deepEqual(lines.filter((l) => l.kind === 'request').map((l) => l.status), [200, 503]);
  } finally {
    await close();
  }
});

test('stop() ends a request waiting on a reused upstream connection without sending it again: 503 gateway_stopping, one upstream hit, nothing left open', { timeout: 10_000 }, async () => {
  // Keep-alive answers: the second request goes out on the pooled socket the first one used.
  const { held, answers, gateway, lines, get, close } = await mountHeld((res) => res.writeHead(200, { 'content-length': '2' }).end('ok'));
  try {
    const first = get();
    await waitUntil(() => answers.length === 1);
    answers[0]!();
    assert.equal((await first).status, 200);

    const second = get();
    await waitUntil(() => answers.length === 2);
    const began = Date.now();
    // The client's connection stays open: only stop() ends the exchange. Its cut is not an upstream's reset, so the
    // request is not sent once more on a new connection that would outlive stop().
    await gateway.stop();
    assert.ok(Date.now() - began < 3_000, `stop() took ${Date.now() - began} ms`);
    const stopped = await second;
    assert.equal(stopped.status, 503);
    assert.deepEqual(JSON.parse(stopped.body).error, 'gateway_stopping');
    assert.equal(stopped.headers['retry-after'], '5');
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(held.hits(), 2, 'the cut request was sent again');
    const open = await new Promise<number>((resolve, reject) => held.server.getConnections((err, n) => (err ? reject(err) : resolve(n))));
    assert.equal(open, 0);
    assert.deepEqual(lines.filter((l) => l.kind === 'request').map((l) => [l.status, l.reason, l.decision]), [[200, undefined, 'allow'], [503, 'gateway_stopping', 'error']]);
  } finally {
    await close();
  }
});

test('stop() cuts a response under way: the client gets a cut body, the upstream connection closes, and the line says gateway_stopping', { timeout: 10_000 }, async () => {
  // Half the body, then the upstream waits.
  const { held, answers, gateway, lines, url, token, close } = await mountHeld((res) => res.writeHead(200, { 'content-length': '8' }).write('half'));
  try {
    const { req, answer } = httpRequest(url, { headers: { 'gateway-authorization': token } });
    const head = new Promise<http.IncomingMessage>((resolve) => req.on('response', resolve));
    req.end();
    await waitUntil(() => answers.length === 1);
    answers[0]!();
    assert.equal((await head).statusCode, 200);
    await gateway.stop();
    await assert.rejects(answer, 'the cut response must not look complete');
    await waitUntil(async () => (await new Promise<number>((resolve, reject) => held.server.getConnections((err, n) => (err ? reject(err) : resolve(n))))) === 0);
    assert.equal(held.hits(), 1);
    assert.deepEqual(lines.filter((l) => l.kind === 'request').map((l) => [l.status, l.reason, l.decision]), [[200, 'gateway_stopping', 'allow']]);
  } finally {
    await close();
  }
});

/**
 * The gateway mounted in a host server with its own issuer and an upstream that never answers. `rotate()` publishes a
 * second key and makes the key set answer only after `delayMs`: a token signed with it waits on that refetch.
 */
async function mountRotating() {
  const lib = (await import('oidc-gateway')) as typeof import('../src/index.ts');
  const k2 = await generateRsaKey('k2');
  const own = await startIssuer({ keys: [key.jwk] });
  const held = await startRecorder(() => {});
  const parsed = lib.parseConfig({
    issuers: [{ issuer: own.issuer, audience: 'aud' }],
    routes: [{ path: '/held', upstream: held.url, allow: [{ repository: 'octo-org/octo-repo' }] }],
    tunnels: [{ to: [held.url.slice('http://'.length)], allow: [{ repository: 'octo-org/octo-repo' }] }],
    keys: { cooldownMs: 1_000, fetchTimeoutMs: 3_000 },
  });
  assert.ok(parsed.ok);
  const lines: Record<string, unknown>[] = [];
  const gateway = lib.createGateway(parsed.config, { log: (line) => lines.push(line) });
  await gateway.start();
  const host = http.createServer((req, res) => gateway.handle(req, res));
  host.on('connect', (req, socket, head) => gateway.connect(req, socket, head));
  await new Promise<void>((resolve) => host.listen(0, '127.0.0.1', resolve));
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: own.issuer, aud: 'aud', exp: now + 60, repository: 'octo-org/octo-repo' };
  const signed = (k: TestKey) => signToken({ alg: 'RS256', kid: k.kid }, claims, k.privateKey);
  const rotate = async (delayMs: number) => {
    await new Promise((resolve) => setTimeout(resolve, 1_100)); // past the cooldown, so an unknown kid refetches
    own.keys = [key.jwk, k2.jwk];
    own.setPlan(JWKS_PATH, { delayMs });
  };
  const close = async () => {
    host.closeAllConnections();
    await new Promise((resolve) => host.close(resolve));
    await Promise.all([held.close(), own.close()]);
  };
  const requestLines = (kind = 'request') => lines.filter((l) => l.kind === kind).map((l) => [l.status, l.reason]);
  return { own, held, host, gateway, url: `http://127.0.0.1:${(host.address() as AddressInfo).port}/held/x`, oldKey: signed(key), newKey: signed(k2), rotate, requestLines, close };
}

test('a request whose token is still verifying when stop() is called is refused 503 gateway_stopping once admitted: never forwarded, and logged before stop() resolves', { timeout: 20_000 }, async () => {
  const m = await mountRotating();
  try {
    await m.rotate(800);
    const answer = httpGet(m.url, { 'gateway-authorization': m.newKey }).then((a) => a.status);
    await waitUntil(() => m.own.hits(JWKS_PATH) === 2);
    m.gateway.drain();
    await m.gateway.stop();
    assert.deepEqual(m.requestLines(), [[503, 'gateway_stopping']]);
    assert.equal(await answer, 503);
    assert.equal(m.held.hits(), 0, 'the upstream was not contacted');
  } finally {
    await m.close();
  }
});

test('a client that leaves while its token verifies frees its slot to the next request, and stop() still ends that one: 503 gateway_stopping', { timeout: 20_000 }, async () => {
  const m = await mountRotating();
  try {
    await m.rotate(600);
    // The first request waits on the refetch; its client leaves meanwhile.
    const first = httpRequest(m.url, { headers: { 'gateway-authorization': m.newKey } });
    first.answer.catch(() => {});
    first.req.end();
    await waitUntil(() => m.own.hits(JWKS_PATH) === 2);
    first.req.destroy();
    // Time for the gateway to see the close and free the slot.
    await new Promise((resolve) => setTimeout(resolve, 50));
    // The second, with a key already held, is forwarded at once on the slot the first one left.
    const second = httpGet(m.url, { 'gateway-authorization': m.oldKey }).then((a) => a.status);
    await waitUntil(() => m.held.hits() === 1);
    // The first one's verification ends and it reaches forward(), for a client that is gone.
    await waitUntil(() => m.requestLines().length === 1, 3_000);
    assert.deepEqual(m.requestLines(), [[499, 'client_aborted']]);
    // Time for a connection the gateway might have opened in its name to reach the upstream.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(m.held.connections(), 1, 'no upstream connection was opened for the client that left');
    await m.gateway.stop();
    assert.equal(await second, 503);
    assert.deepEqual(m.requestLines(), [[499, 'client_aborted'], [503, 'gateway_stopping']]);
    assert.equal(m.held.hits(), 1);
  } finally {
    await m.close();
  }
});

test('a CONNECT whose token is still verifying when stop() is called is never dialled once admitted, and its line says gateway_stopping', { timeout: 20_000 }, async () => {
  const m = await mountRotating();
  try {
    await m.rotate(800);
    let dialled = 0;
    m.held.server.on('connection', () => dialled++);
    const socket = net.connect((m.host.address() as AddressInfo).port, '127.0.0.1');
    socket.on('error', () => {});
    socket.write(`CONNECT ${m.held.url.slice('http://'.length)} HTTP/1.1\r\nhost: x\r\nproxy-authorization: Bearer ${m.newKey}\r\n\r\n`);
    await waitUntil(() => m.own.hits(JWKS_PATH) === 2);
    await m.gateway.stop();
    assert.deepEqual(m.requestLines('tunnel'), [[503, 'gateway_stopping']]);
    assert.equal(dialled, 0, 'the destination was not dialled');
    socket.destroy();
  } finally {
    await m.close();
  }
});
