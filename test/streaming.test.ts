// End to end, the gateway as its own process: bodies streamed both ways with
// bounded memory, Expect: 100-continue, aborts on either side, and every way an
// upstream can fail. Real issuer, real upstreams, real sockets on port 0.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import http, { type Agent, type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  assertCleanLog,
  generateRsaKey,
  peakRssMiB,
  seededRandom,
  signToken,
  startGateway,
  startIssuer,
  startRecorder,
  startServer,
  waitUntil,
  type RunningGateway,
} from './helpers.js';

const AUDIENCE = 'api://ActionsOIDCGateway';
const RULE = { repository: 'octo-org/octo-repo', ref: 'refs/heads/main' };
const MiB = 1024 * 1024;
const CHUNK = MiB;
const TOTAL = 256 * MiB;
const RSS_BUDGET_MIB = 64;

// ---------------------------------------------------------------- tokens and logs

/** Every token any test sent: none of them may ever appear in the gateway's log. */
const sentTokens: string[] = [];
/** Every gateway this file started, scanned by the last test. */
const gateways: RunningGateway[] = [];

const key = await generateRsaKey('streaming-1');
const issuer = await startIssuer({ keys: [key.jwk] });

function tokenFor(claims: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const token = signToken(
    { alg: 'RS256', typ: 'JWT', kid: key.kid },
    {
      iss: issuer.issuer,
      aud: AUDIENCE,
      sub: 'repo:octo-org/octo-repo:ref:refs/heads/main',
      repository: 'octo-org/octo-repo',
      ref: 'refs/heads/main',
      run_id: '4242',
      iat: now,
      nbf: now,
      exp: now + 3600,
      ...claims,
    },
    key.privateKey,
  );
  sentTokens.push(token);
  return token;
}

/** The same token with one signature character changed: well formed, signed by no one. */
function tampered(token: string): string {
  const at = token.lastIndexOf('.') + 20;
  const bad = `${token.slice(0, at)}${token[at] === 'A' ? 'B' : 'A'}${token.slice(at + 1)}`;
  sentTokens.push(bad);
  return bad;
}

const TOKEN = tokenFor();
const auth = (token = TOKEN): OutgoingHttpHeaders => ({ 'gateway-authorization': `Bearer ${token}` });

// ---------------------------------------------------------------- deterministic data, 1 MiB at a time

const BLOCK = (() => {
  const random = seededRandom(256);
  const block = Buffer.alloc(CHUNK);
  for (let i = 0; i < CHUNK; i += 4) block.writeUInt32LE(Math.floor(random() * 2 ** 32), i);
  return block;
})();

/** Chunk i of the test data: a fixed pseudo-random block stamped with its index. */
function chunkAt(i: number): Buffer {
  const chunk = Buffer.from(BLOCK);
  chunk.writeUInt32BE(i, 0);
  return chunk;
}

/** The test data as a stream, generated as it is read: never more than a chunk or two in memory. */
function generated(total: number): Readable {
  let i = 0;
  const count = total / CHUNK;
  return new Readable({
    read() {
      this.push(i < count ? chunkAt(i++) : null);
    },
  });
}

let expected: string | undefined;
/** SHA-256 of the 256 MiB of test data, computed here, chunk by chunk. */
function expectedDigest(): string {
  if (expected === undefined) {
    const hash = createHash('sha256');
    for (let i = 0; i < TOTAL / CHUNK; i++) hash.update(chunkAt(i));
    expected = hash.digest('hex');
  }
  return expected;
}

// ---------------------------------------------------------------- upstreams

/** Hashes whatever it receives and answers with the digest and the byte count. */
const hasher = await startServer((req, res) => {
  const hash = createHash('sha256');
  let bytes = 0;
  req.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    bytes += chunk.length;
  });
  req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ sha256: hash.digest('hex'), bytes })));
});

/** Streams the 256 MiB of test data, generated as the client reads it. */
const generator = await startServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(TOTAL) });
  pipeline(generated(TOTAL), res).catch(() => {});
});

/** Streams 1 KiB every 20 ms for ever, and notes when its response is closed. */
const endless = { started: 0, closedAt: undefined as number | undefined };
const endlessServer = await startServer((_req, res) => {
  endless.started++;
  res.writeHead(200, { 'content-type': 'application/octet-stream' });
  const timer = setInterval(() => res.write(Buffer.alloc(1024, 0x61)), 20);
  res.on('close', () => {
    clearInterval(timer);
    endless.closedAt = Date.now();
  });
});

/** Reads a request body slowly enough to be interrupted, and notes how the request ended. */
interface Sink {
  bytes: number;
  ended: boolean;
  /** 'aborted' or 'close' came before 'end'. */
  cutShort: boolean;
}
const sinks: Sink[] = [];
const sinkServer = await startServer((req, res) => {
  const sink: Sink = { bytes: 0, ended: false, cutShort: false };
  sinks.push(sink);
  req.on('data', (chunk: Buffer) => (sink.bytes += chunk.length));
  req.on('end', () => {
    sink.ended = true;
    res.writeHead(200).end('received');
  });
  req.on('aborted', () => (sink.cutShort ||= !sink.ended));
  req.on('close', () => (sink.cutShort ||= !sink.ended));
});

/** First writes a head promising 1 MiB, sends 64 KiB and destroys the socket; 'ok' once healed. */
const reset = { healed: false };
const resetServer = await startServer((req, res) => {
  req.resume();
  if (reset.healed) return void res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(MiB) });
  res.write(Buffer.alloc(64 * 1024, 0x62), () => setTimeout(() => res.socket?.destroy(), 20));
});

/** Answers with 64 KiB of headers, four times the gateway's limit. */
const bigHeadersServer = await startServer((req, res) => {
  req.resume();
  for (let i = 0; i < 64; i++) res.setHeader(`x-filler-${i}`, 'f'.repeat(1000));
  res.writeHead(200).end('too much head');
});

/** Accepts connections, reads, never answers. */
const hangSockets = new Set<Socket>();
const hangServer = createTcpServer((socket) => {
  hangSockets.add(socket);
  socket.on('error', () => {});
  socket.on('close', () => hangSockets.delete(socket));
  socket.resume();
});
await new Promise<void>((resolve) => hangServer.listen(0, '127.0.0.1', resolve));
let hangConnections = 0;
hangServer.on('connection', () => hangConnections++);
const hangPort = (hangServer.address() as AddressInfo).port;

/** A port that was just listening and no longer is. */
const deadPort = await (async () => {
  const s = await startServer((_req, res) => res.end());
  await s.close();
  return s.port;
})();

const recorder = await startRecorder();

const route = (path: string, upstream: string) => ({ path, upstream, allow: [RULE], forwardClaims: ['repository', 'run_id'] });

const gw = await startGateway({
  issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }],
  routes: [
    route('/upload', `${hasher.url}/`),
    route('/download', `${generator.url}/`),
    route('/endless', `${endlessServer.url}/`),
    route('/sink', `${sinkServer.url}/`),
    route('/reset', `${resetServer.url}/`),
    route('/big-headers', `${bigHeadersServer.url}/`),
    route('/down', `http://127.0.0.1:${deadPort}/`),
    route('/echo', `${recorder.url}/`),
  ],
});
gateways.push(gw);

// A second gateway whose only difference is a short wait for the upstream's head.
const impatient = await startGateway({
  issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }],
  timeouts: { upstreamHeadMs: 300 },
  routes: [route('/hang', `http://127.0.0.1:${hangPort}/`)],
});
gateways.push(impatient);

after(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  for (const socket of hangSockets) socket.destroy();
  await Promise.all([
    issuer.close(),
    hasher.close(),
    generator.close(),
    endlessServer.close(),
    sinkServer.close(),
    resetServer.close(),
    bigHeadersServer.close(),
    recorder.close(),
    new Promise((resolve) => hangServer.close(resolve)),
  ]);
});

// ---------------------------------------------------------------- client side

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

interface SendOptions {
  readonly method?: string;
  readonly headers?: OutgoingHttpHeaders;
  readonly body?: Buffer | Readable;
  readonly agent?: Agent | false;
}

/** One request through node:http; a new connection unless an agent is given. */
function send(url: string, opts: SendOptions = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers, agent: opts.agent ?? false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (opts.body instanceof Readable) opts.body.pipe(req);
    else req.end(opts.body);
  });
}

/**
 * Polls a check until it holds. The shared waitUntil calls `check().catch`, so a
 * synchronous check makes it reject at once: every check goes through async here.
 */
function until(check: () => boolean, timeoutMs = 5_000): Promise<void> {
  return waitUntil(async () => check(), timeoutMs);
}

function requestLines(g: RunningGateway): Record<string, unknown>[] {
  return g.logs().filter((line) => line.kind === 'request');
}

/** Waits for the gateway's request log line matching `match`, and returns it. */
async function logLine(g: RunningGateway, match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  await until(() => requestLines(g).some(match)).catch(() => {
    throw new Error(`no matching request line; request lines: ${JSON.stringify(requestLines(g).slice(-5))}`);
  });
  return requestLines(g).find(match)!;
}

/** A refusal: the status, {"error": reason, "id": ...} and nothing else, and the same reason in the log under that id. */
async function assertRefused(g: RunningGateway, answer: Answer, status: number, reason: string): Promise<void> {
  assert.equal(answer.status, status, `status (body ${answer.body.toString().slice(0, 200)})`);
  assert.match(String(answer.headers['content-type']), /^application\/json/);
  const body = JSON.parse(answer.body.toString()) as Record<string, unknown>;
  assert.deepEqual(Object.keys(body).sort(), ['error', 'id']);
  assert.equal(body.error, reason);
  assert.equal(typeof body.id, 'string');
  assert.notEqual(body.id, '');
  const line = await logLine(g, (l) => l.id === body.id);
  assert.equal(line.reason, reason, 'the log gives the same reason as the body');
  assert.equal(line.status, status);
}

// ---------------------------------------------------------------- 256 MiB both ways

test('a 256 MiB upload streams through a route intact, and the gateway peak RSS grows by less than 64 MiB', { timeout: 60_000 }, async (t) => {
  const pid = gw.process.child.pid!;
  const digest = expectedDigest();
  const before = peakRssMiB(pid);
  const answer = await send(`${gw.url}/upload/blob`, {
    method: 'PUT',
    headers: { ...auth(), 'content-type': 'application/octet-stream', 'content-length': String(TOTAL) },
    body: generated(TOTAL),
  });
  const grew = peakRssMiB(pid) - before;
  assert.equal(answer.status, 200, answer.body.toString());
  const received = JSON.parse(answer.body.toString()) as { sha256: string; bytes: number };
  assert.equal(received.bytes, TOTAL);
  assert.equal(received.sha256, digest);
  t.diagnostic(`gateway peak RSS ${before.toFixed(1)} MiB before, +${grew.toFixed(1)} MiB during the upload`);
  assert.ok(grew < RSS_BUDGET_MIB, `peak RSS grew by ${grew.toFixed(1)} MiB during the upload (from ${before.toFixed(1)} MiB)`);
});

test('a 256 MiB download streams through a route intact, and the gateway peak RSS grows by less than 64 MiB', { timeout: 60_000 }, async (t) => {
  const pid = gw.process.child.pid!;
  const digest = expectedDigest();
  const before = peakRssMiB(pid);
  const req = http.get(`${gw.url}/download/blob`, { headers: auth(), agent: false });
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  assert.equal(res.statusCode, 200);
  assert.equal(res.headers['content-length'], String(TOTAL));
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  const grew = peakRssMiB(pid) - before;
  assert.equal(bytes, TOTAL);
  assert.equal(hash.digest('hex'), digest);
  t.diagnostic(`gateway peak RSS ${before.toFixed(1)} MiB before, +${grew.toFixed(1)} MiB during the download`);
  assert.ok(grew < RSS_BUDGET_MIB, `peak RSS grew by ${grew.toFixed(1)} MiB during the download (from ${before.toFixed(1)} MiB)`);
});

// ---------------------------------------------------------------- Expect: 100-continue

interface ContinueExchange {
  readonly continued: boolean;
  readonly answer: Answer;
}

/** Sends the head with Expect: 100-continue, and the body only once (and if) 100 Continue arrives. */
async function expectContinue(url: string, headers: OutgoingHttpHeaders, body: Buffer): Promise<ContinueExchange> {
  let continued = false;
  const req = http.request(url, {
    method: 'POST',
    headers: { ...headers, expect: '100-continue', 'content-type': 'text/plain', 'content-length': String(body.length) },
    agent: false,
  });
  req.on('error', () => {});
  req.on('continue', () => {
    continued = true;
    req.end(body);
  });
  req.flushHeaders();
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  const chunks: Buffer[] = [];
  for await (const chunk of res as AsyncIterable<Buffer>) chunks.push(chunk);
  req.destroy();
  return { continued, answer: { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) } };
}

test('an admitted POST with Expect: 100-continue receives 100 Continue, and its body then reaches the upstream', async () => {
  recorder.reset();
  const body = Buffer.from('sent only after 100 Continue');
  const { continued, answer } = await expectContinue(`${gw.url}/echo/continue`, auth(), body);
  assert.equal(continued, true, 'the client saw 100 Continue');
  assert.equal(answer.status, 200, answer.body.toString());
  assert.equal(recorder.requests.length, 1);
  assert.equal(recorder.requests[0]!.url, '/continue');
  assert.deepEqual(recorder.requests[0]!.body, body);
});

test('a request with a bad token and Expect: 100-continue gets 401 signature_invalid without any 100 Continue, and the upstream is not contacted', async () => {
  recorder.reset();
  const connections = recorder.connections();
  const { continued, answer } = await expectContinue(`${gw.url}/echo/continue`, auth(tampered(TOKEN)), Buffer.from('never sent'));
  assert.equal(continued, false, 'no 100 Continue before a refusal');
  await assertRefused(gw, answer, 401, 'signature_invalid');
  assert.match(String(answer.headers['www-authenticate']), /^Bearer /);
  assert.equal(recorder.hits(), 0);
  assert.equal(recorder.connections(), connections);
});

// ---------------------------------------------------------------- client aborts

test('a client that hangs up mid-download closes the upstream response within seconds, logged as client_aborted', async () => {
  endless.closedAt = undefined;
  const req = http.get(`${gw.url}/endless/stream`, { headers: auth(), agent: false });
  req.on('error', () => {});
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  res.on('error', () => {});
  assert.equal(res.statusCode, 200);
  let received = 0;
  await new Promise<void>((resolve) => res.on('data', (chunk: Buffer) => (received += chunk.length) >= 8 * 1024 && resolve()));
  const abortedAt = Date.now();
  req.destroy();
  await until(() => endless.closedAt !== undefined, 5_000);
  assert.ok(endless.closedAt! - abortedAt < 5_000);
  const line = await logLine(gw, (l) => l.path === '/endless/stream');
  assert.equal(line.reason, 'client_aborted');
});

test('a client that hangs up mid-upload cuts the upstream request short, before its end', async () => {
  sinks.length = 0;
  const req = http.request(`${gw.url}/sink/upload`, {
    method: 'POST',
    headers: { ...auth(), 'content-type': 'application/octet-stream', 'content-length': String(64 * MiB) },
    agent: false,
  });
  req.on('error', () => {});
  req.write(chunkAt(0));
  req.write(chunkAt(1));
  await until(() => (sinks[0]?.bytes ?? 0) > 0, 5_000);
  req.destroy();
  await until(() => sinks[0]!.cutShort, 5_000);
  assert.equal(sinks[0]!.ended, false);
  assert.ok(sinks[0]!.bytes < 64 * MiB);
  const line = await logLine(gw, (l) => l.path === '/sink/upload');
  assert.equal(line.reason, 'client_aborted');
});

// ---------------------------------------------------------------- upstream failures

test('an upstream port with nothing listening is refused as 502 upstream_unreachable', async () => {
  const answer = await send(`${gw.url}/down/x`, { headers: auth() });
  await assertRefused(gw, answer, 502, 'upstream_unreachable');
});

test('an upstream that accepts and never answers is refused as 504 upstream_timeout after upstreamHeadMs', async () => {
  const connections = hangConnections;
  const started = Date.now();
  const answer = await send(`${impatient.url}/hang/x`, { headers: auth() });
  const waited = Date.now() - started;
  await assertRefused(impatient, answer, 504, 'upstream_timeout');
  assert.equal(hangConnections, connections + 1, 'the gateway did reach the upstream');
  assert.ok(waited >= 250 && waited < 5_000, `answered after ${waited} ms with upstreamHeadMs 300`);
});

test('an upstream that resets mid-body ends the client response short, is logged as upstream_reset, and the next request succeeds', async () => {
  reset.healed = false;
  const req = http.get(`${gw.url}/reset/first`, { headers: auth(), agent: false });
  req.on('error', () => {});
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  assert.equal(res.statusCode, 200);
  let received = 0;
  const ending = await new Promise<string>((resolve) => {
    res.on('data', (chunk: Buffer) => (received += chunk.length));
    res.on('error', () => resolve('error'));
    res.on('aborted', () => resolve('aborted'));
    res.on('end', () => resolve('end'));
    res.on('close', () => resolve('close'));
  });
  assert.ok(received < MiB, `received ${received} of the ${MiB} bytes promised (${ending})`);
  assert.equal(res.complete, false, `the response must not look complete (${ending})`);
  const line = await logLine(gw, (l) => l.path === '/reset/first');
  assert.equal(line.reason, 'upstream_reset');

  reset.healed = true;
  const next = await send(`${gw.url}/reset/second`, { headers: auth() });
  assert.equal(next.status, 200);
  assert.equal(next.body.toString(), 'ok');
});

test('an upstream that answers with 64 KiB of headers is refused as 502 upstream_unreachable', async () => {
  const answer = await send(`${gw.url}/big-headers/x`, { headers: auth() });
  await assertRefused(gw, answer, 502, 'upstream_unreachable');
});

// ---------------------------------------------------------------- keep-alive

test('200 sequential requests over one keep-alive agent all succeed and reach the upstream over fewer than 10 connections', async () => {
  recorder.reset();
  const connections = recorder.connections();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    for (let i = 0; i < 200; i++) {
      const answer = await send(`${gw.url}/echo/ka/${i}`, { headers: auth(), agent });
      assert.equal(answer.status, 200, `request ${i}: ${answer.body.toString()}`);
    }
  } finally {
    agent.destroy();
  }
  assert.equal(recorder.requests.length, 200);
  assert.deepEqual(recorder.requests.map((r) => r.url).slice(0, 3), ['/ka/0', '/ka/1', '/ka/2']);
  const used = recorder.connections() - connections;
  assert.ok(used < 10, `the upstream saw ${used} connections for 200 requests`);
});

// ---------------------------------------------------------------- the log

test('every line the gateways wrote to stdout is JSON, and none holds a token that was sent', async () => {
  await Promise.all(gateways.map((g) => g.close()));
  assert.ok(sentTokens.length >= 2);
  for (const g of gateways) {
    assertCleanLog(g.process.stdout(), sentTokens);
  }
});
