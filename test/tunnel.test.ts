// End to end for proxy mode: CONNECT tunnels and absolute-form (plain-HTTP)
// forward proxying, with the gateway as its own process, driven by curl and by
// raw sockets. The destinations are real servers on 127.0.0.1 that count their
// connections: every refusal asserts its status, its reason, and that no
// destination saw a connection. Only the wire and the gateway's JSON log lines
// are observed, so the same file runs with the gateway on Bun.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import {
  JWKS_PATH, assertCleanLog, generateRsaKey, peakRssMiB, signToken, startGateway, startIssuer, startRecorder, startServer, waitUntil,
  type Issuer, type Recorder, type RunningGateway, type TestKey, type TestServer,
} from './helpers.ts';

const AUD = 'api://ActionsOIDCGateway';
const RULE = { repository: 'octo-org/octo-repo' };
const CURL = '/usr/bin/curl';
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const RSS_BUDGET_MIB = 64;
/** What the half-close test's destination answers once the client has ended its side. */
const LATE_REPLY_BYTES = 32 * MiB;

// ---------------------------------------------------------------- small tools

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** `promise`, or a rejection naming `what` after `ms`. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const literal = (port: number) => `127.0.0.1:${port}`;
const bearer = (token: string) => `Proxy-Authorization: Bearer ${token}`;
const basic = (user: string, password: string) => `Proxy-Authorization: Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

// ---------------------------------------------------------------- TCP destinations

interface Accepted {
  readonly socket: Socket;
  /** Resolves when the peer half-closes its side (FIN). */
  readonly ended: Promise<void>;
  readonly closed: Promise<void>;
}

interface TcpServer {
  readonly port: number;
  /** Every connection accepted, in order. */
  readonly accepted: readonly Accepted[];
  connections(): number;
  close(): Promise<void>;
}

/** A TCP server on 127.0.0.1 port 0 that keeps half-open sockets, so it sees a client's FIN as 'end'. */
async function startTcp(onSocket: (socket: Socket) => void): Promise<TcpServer> {
  const accepted: Accepted[] = [];
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => socket.destroy());
    accepted.push({ socket, ended: once(socket, 'end').then(() => {}, () => {}), closed: new Promise((resolve) => socket.once('close', () => resolve())) });
    onSocket(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    accepted,
    connections: () => accepted.length,
    close: () =>
      new Promise((resolve) => {
        for (const a of accepted) a.socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Sends back whatever arrives; ends its side after the client ended its own. */
const echo = (socket: Socket) => void socket.pipe(socket);

/** Counts and hashes everything it receives; once the client ends, answers "<bytes> <sha256>" and ends. */
function hashSink(socket: Socket): void {
  const hash = createHash('sha256');
  let bytes = 0;
  socket.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    bytes += chunk.length;
  });
  socket.on('end', () => socket.end(`${bytes} ${hash.digest('hex')}`));
}

/** Reads until the client ends, then answers with LATE_REPLY_BYTES of 'r' and "done:<bytes received>". */
function lateReply(socket: Socket): void {
  let bytes = 0;
  socket.on('data', (chunk: Buffer) => (bytes += chunk.length));
  socket.on('end', () => {
    socket.write(Buffer.alloc(LATE_REPLY_BYTES, 'r'));
    socket.end(`done:${bytes}`);
  });
}

/** A port on 127.0.0.1 with nothing listening on it. */
async function unusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * An echo server in a child process that can be frozen (SIGSTOP) with its
 * accept queue full: the kernel then drops SYNs to it, so a connect to it stays
 * pending until it is released (SIGCONT) and the SYN is retransmitted. This is
 * how a test tells "200 after the upstream connected" from "200 at once", and
 * provokes a connect timeout on loopback.
 */
interface StallableServer {
  readonly port: number;
  /** Connections the child accepted, as far as it has said so. */
  accepted(): number;
  /** Freezes the child and fills its accept queue; resolves with how many queued connections that took. */
  stall(): Promise<number>;
  /** Thaws the child: it accepts its queue and echoes again. */
  release(): void;
  close(): Promise<void>;
}

async function startStallable(): Promise<StallableServer> {
  const script = `
    const net = require('node:net');
    let n = 0;
    const server = net.createServer((s) => { n++; process.stdout.write('accepted ' + n + '\\n'); s.on('error', () => {}); s.pipe(s); });
    server.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => process.stdout.write('port ' + server.address().port + '\\n'));
    process.stdin.on('end', () => process.exit(0)).resume();`;
  const child: ChildProcess = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  await waitUntil(() => /port (\d+)/.test(out), 5_000);
  const port = Number(out.match(/port (\d+)/)![1]);
  const fillers: Socket[] = [];
  const accepted = () => Number(out.match(/accepted (\d+)\n(?![\s\S]*accepted)/)?.[1] ?? 0);
  return {
    port,
    accepted,
    async stall() {
      child.kill('SIGSTOP');
      for (let i = 0; i < 32; i++) {
        const s = connect(port, '127.0.0.1');
        s.on('error', () => {});
        const connected = await Promise.race([once(s, 'connect').then(() => true, () => false), sleep(250).then(() => false)]);
        if (!connected) {
          s.destroy();
          return fillers.length;
        }
        fillers.push(s);
      }
      throw new Error('the accept queue never filled');
    },
    release() {
      child.kill('SIGCONT');
    },
    async close() {
      for (const s of fillers) s.destroy();
      child.kill('SIGCONT');
      child.stdin!.end();
      child.kill('SIGTERM');
      await once(child, 'exit').catch(() => {});
    },
  };
}

// ---------------------------------------------------------------- a raw proxy client

interface Answer {
  readonly status: number;
  readonly statusLine: string;
  readonly headers: Readonly<Record<string, string>>;
  /** A refusal's body, parsed when it is JSON. */
  readonly json?: Record<string, unknown>;
}

interface ProxyConnection {
  readonly socket: Socket;
  /** The gateway's answer: at once for a 200, after the gateway closed for anything else (with its JSON body). */
  readonly answer: Promise<Answer>;
  /** Bytes that arrived after a 200 head, so far. */
  received(): Buffer;
  /** Resolves once at least `n` bytes arrived after the head; rejects if the connection closes first. */
  receivedAtLeast(n: number, timeoutMs?: number): Promise<Buffer>;
  /** Resolves when the gateway ends its side (FIN). */
  readonly ended: Promise<void>;
  readonly closed: Promise<void>;
}

/**
 * Sends `CONNECT target` with the given header lines on a fresh socket, and
 * `early` bytes in the same write as the head.
 */
function openConnect(port: number, target: string, headers: readonly string[], early?: string | Buffer): ProxyConnection {
  const socket = connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  socket.on('error', () => {});
  const head = Buffer.from(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${headers.map((h) => `${h}\r\n`).join('')}\r\n`, 'latin1');
  socket.write(early === undefined ? head : Buffer.concat([head, Buffer.from(early)]));
  return proxyConnection(socket);
}

function proxyConnection(socket: Socket): ProxyConnection {
  let pending = Buffer.alloc(0);
  let parsed: Omit<Answer, 'json'> | undefined;
  let body = '';
  const chunks: Buffer[] = [];
  let size = 0;
  let isClosed = false;
  const listeners = new Set<() => void>();
  const changed = () => {
    for (const l of listeners) l();
  };
  let settle!: (a: Answer) => void;
  let fail!: (e: Error) => void;
  const answer = new Promise<Answer>((resolve, reject) => ((settle = resolve), (fail = reject)));
  answer.catch(() => {});

  socket.on('data', (chunk: Buffer) => {
    if (parsed) {
      if (parsed.status === 200) (chunks.push(chunk), (size += chunk.length));
      else body += chunk.toString('latin1');
      return changed();
    }
    pending = Buffer.concat([pending, chunk]);
    const end = pending.indexOf('\r\n\r\n');
    if (end < 0) return;
    const lines = pending.subarray(0, end).toString('latin1').split('\r\n');
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    parsed = { status: Number(lines[0]!.split(' ')[1]), statusLine: lines[0]!, headers };
    const rest = pending.subarray(end + 4);
    if (parsed.status === 200) {
      if (rest.length > 0) (chunks.push(rest), (size += rest.length));
      settle(parsed);
    } else {
      body += rest.toString('latin1');
    }
    changed();
  });
  const ended = once(socket, 'end').then(() => {}, () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve())).then(() => {
    isClosed = true;
    if (!parsed) fail(new Error(`closed before an answer; got ${JSON.stringify(pending.toString('latin1'))}`));
    else if (parsed.status !== 200) settle({ ...parsed, json: body.startsWith('{') ? (JSON.parse(body) as Record<string, unknown>) : undefined });
    changed();
  });

  return {
    socket,
    answer,
    received: () => Buffer.concat(chunks),
    receivedAtLeast(n, timeoutMs = 5_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (size >= n) done(() => resolve(Buffer.concat(chunks)));
          else if (isClosed) done(() => reject(new Error(`closed after ${size} of ${n} bytes`)));
        };
        const timer = setTimeout(() => done(() => reject(new Error(`${size} of ${n} bytes within ${timeoutMs} ms`))), timeoutMs);
        const done = (f: () => void) => {
          clearTimeout(timer);
          listeners.delete(check);
          f();
        };
        listeners.add(check);
        check();
      });
    },
    ended,
    closed,
  };
}

/** Sends one absolute-form request (`GET http://host:port/x`) to the gateway as a proxy, and reads its whole answer. */
async function forwardRaw(port: number, url: string, headers: readonly string[]): Promise<Answer> {
  const fields = Object.fromEntries(headers.map((h) => [h.slice(0, h.indexOf(':')), h.slice(h.indexOf(':') + 1).trim()]));
  // Node's client sends `path` as the request target as is: here, the absolute form.
  const req = httpRequest({ host: '127.0.0.1', port, path: url, agent: false, headers: fields });
  req.end();
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  let body = '';
  for await (const chunk of res.setEncoding('utf8')) body += chunk;
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(res.headers)) out[name] = String(value);
  const json = body.startsWith('{') ? (JSON.parse(body) as Record<string, unknown>) : undefined;
  return { status: res.statusCode ?? 0, statusLine: `HTTP/1.1 ${res.statusCode} ${res.statusMessage}`, headers: out, json };
}

// ---------------------------------------------------------------- curl

interface CurlResult {
  readonly exitCode: number | null;
  readonly body: string;
  /** %{http_code}: the final response's status (0 if none). */
  readonly httpCode: number;
  /** %{http_connect}: the proxy's answer to CONNECT (0 if none was sent). */
  readonly connectCode: number;
  readonly stderr: string;
}

/** Runs curl asynchronously (the issuer and destinations live in this process), with no proxy settings from our environment. */
function curl(args: readonly string[], env: Readonly<Record<string, string>> = {}): Promise<CurlResult> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/_proxy$/i.test(k)));
  const child = spawn(CURL, ['--silent', '--show-error', '--max-time', '10', '--write-out', '\n%{http_code} %{http_connect}', ...args], {
    env: { ...clean, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  return new Promise((resolve) => {
    child.on('close', (exitCode) => {
      const cut = stdout.lastIndexOf('\n');
      const [httpCode = '0', connectCode = '0'] = stdout.slice(cut + 1).split(' ');
      resolve({ exitCode, body: stdout.slice(0, cut), httpCode: Number(httpCode), connectCode: Number(connectCode), stderr });
    });
  });
}

// ---------------------------------------------------------------- the world

let key: TestKey;
let otherKey: TestKey;
let issuer: Issuer;
/** Destinations listed in the first tunnel entry, by literal address. */
let tcpEcho: TcpServer;
let sink: TcpServer;
let replier: TcpServer;
let upstream: Recorder;
let silent: TestServer;
let refusedPort: number;
/** Listed only by the name `localhost:<port>`. */
let named: TcpServer;
/** Listed in an entry with maxLifetimeSeconds: 1. */
let shortLived: TcpServer;
/** Listed in an entry with endWithToken: true. */
let tokenBound: TcpServer;
/** Listed nowhere. */
let trap: TcpServer;
let stallable: StallableServer;
let gw: RunningGateway;
/** idleMs 500 and upstreamConnectMs 300. */
let gwQuick: RunningGateway;
let adminPort: number;
const sentTokens: string[] = [];

/** Every destination: none of them may see a connection when the gateway refuses. */
const destinations = () => [tcpEcho, sink, replier, upstream, silent, named, shortLived, tokenBound, trap];

function claims(extra: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: issuer.issuer, aud: AUD, iat: now, exp: now + 300,
    repository: 'octo-org/octo-repo', repository_owner: 'octo-org', ref: 'refs/heads/main',
    sub: 'repo:octo-org/octo-repo:ref:refs/heads/main', ...extra,
  };
}

function token(extra: Record<string, unknown> = {}, signWith: TestKey = key): string {
  const t = signToken({ alg: 'RS256', typ: 'JWT', kid: signWith.kid }, claims(extra), signWith.privateKey);
  sentTokens.push(t);
  return t;
}

/** Runs `fn` and asserts that no destination accepted a connection meanwhile (nor just after). */
async function untouched<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const before = destinations().map((d) => d.connections());
  const result = await fn();
  await sleep(20);
  assert.deepEqual(destinations().map((d) => d.connections()), before, `${what}: no destination may be contacted`);
  return result;
}

/** The first log line after `since` that matches, waiting for it. */
async function logLine(g: RunningGateway, since: number, match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  let found: Record<string, unknown> | undefined;
  await waitUntil(() => (found = g.logs().slice(since).find(match)) !== undefined, 5_000);
  return found!;
}

/** Asserts a refusal's status and its body, exactly {error, id}. */
function assertRefused(a: Answer, status: number, reason: string, what: string): void {
  assert.equal(a.status, status, `${what}: ${a.statusLine}`);
  assert.equal(a.json?.error, reason, what);
  assert.deepEqual(Object.keys(a.json ?? {}).sort(), ['error', 'id'], what);
}

before(async () => {
  [key, otherKey] = await Promise.all([generateRsaKey('k1'), generateRsaKey('k-other')]);
  issuer = await startIssuer({ keys: [key.jwk] });
  [tcpEcho, sink, replier, named, shortLived, tokenBound, trap] = await Promise.all([
    startTcp(echo), startTcp(hashSink), startTcp(lateReply), startTcp(echo), startTcp(echo), startTcp(echo), startTcp(echo),
  ]);
  upstream = await startRecorder((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' }).end(`hello from ${req.url}`);
  });
  silent = await startServer(() => {});
  refusedPort = await unusedPort();
  stallable = await startStallable();
  // The admin port is chosen here so that a tunnel entry can name it.
  adminPort = await unusedPort();
  const issuers = [{ issuer: issuer.issuer, audience: AUD }];
  [gw, gwQuick] = await Promise.all([
    startGateway({
      issuers,
      admin: { host: '127.0.0.1', port: adminPort },
      timeouts: { upstreamHeadMs: 300 },
      tunnels: [
        { to: [tcpEcho, sink, replier, upstream, silent, stallable].map((s) => literal(s.port)).concat(literal(refusedPort)), allow: [RULE] },
        { to: [`localhost:${named.port}`], allow: [RULE] },
        { to: [literal(shortLived.port)], allow: [RULE], maxLifetimeSeconds: 1 },
        { to: [literal(tokenBound.port)], allow: [RULE], endWithToken: true },
        // Loopback listed literally for one port, and a name (here resolving to loopback) on the admin port.
        { to: [literal(tcpEcho.port), `localhost:${adminPort}`], allow: [RULE] },
      ],
    }),
    startGateway({
      issuers,
      timeouts: { idleMs: 500, upstreamConnectMs: 300 },
      tunnels: [{ to: [literal(tcpEcho.port), literal(stallable.port)], allow: [RULE] }],
    }),
  ]);
  assert.equal(Number(new URL(gw.adminUrl).port), adminPort);
});

after(async () => {
  await Promise.all([gw?.close(), gwQuick?.close()]);
  await Promise.all([issuer, upstream, silent, ...[tcpEcho, sink, replier, named, shortLived, tokenBound, trap], stallable].map((s) => s?.close()));
});

// ---------------------------------------------------------------- standard clients

test('curl -p with Basic proxy credentials tunnels an HTTP request to a local server', async () => {
  const before = upstream.requests.length;
  const r = await curl(['-p', '-x', `http://x:${token()}@127.0.0.1:${gw.port}`, `${upstream.url}/through/the/tunnel`]);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.connectCode, 200);
  assert.equal(r.httpCode, 200);
  assert.equal(r.body, 'hello from /through/the/tunnel');
  const seen = upstream.requests.slice(before);
  assert.equal(seen.length, 1);
  assert.equal(seen[0]!.headers.host, literal(upstream.port));
});

test('curl -x forwards a plain-HTTP request: the destination gets the requested Host and never the credentials', async () => {
  const t = token();
  const before = upstream.requests.length;
  const r = await curl(['-x', `http://x:${t}@127.0.0.1:${gw.port}`, `${upstream.url}/plain/path?q=1`]);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.connectCode, 0, 'forward proxying, not a tunnel');
  assert.equal(r.httpCode, 200);
  assert.equal(r.body, 'hello from /plain/path?q=1');
  const seen = upstream.requests.slice(before);
  assert.equal(seen.length, 1);
  const h = seen[0]!.headers;
  assert.equal(seen[0]!.url, '/plain/path?q=1', 'origin-form upstream, not the absolute form');
  assert.equal(h.host, literal(upstream.port));
  assert.equal(h['proxy-authorization'], undefined);
  assert.equal(h['gateway-authorization'], undefined);
  assert.equal(h['proxy-connection'], undefined);
  assert.ok(!seen[0]!.rawHeaders.join('\n').includes(t.split('.')[2]!), 'the token appears nowhere upstream');
});

test('curl works with the token in the gateway-authorization header, the http_proxy variable, and after a 407 challenge', async () => {
  const cases: [string, string[], Record<string, string>, string][] = [
    ['--proxy-header, forwarded', ['--proxy-header', `gateway-authorization: Bearer ${token()}`, '-x', `http://127.0.0.1:${gw.port}`], {}, '/header/forward'],
    ['--proxy-header, tunnelled', ['-p', '--proxy-header', `gateway-authorization: Bearer ${token()}`, '-x', `http://127.0.0.1:${gw.port}`], {}, '/header/tunnel'],
    ['http_proxy in the environment', [], { http_proxy: `http://x:${token()}@127.0.0.1:${gw.port}` }, '/env/forward'],
    ['--proxy-anyauth, which sends credentials only after a challenge', ['--proxy-anyauth', '-x', `http://x:${token()}@127.0.0.1:${gw.port}`], {}, '/challenged'],
  ];
  for (const [name, args, env, path] of cases) {
    const before = upstream.requests.length;
    const r = await curl([...args, `${upstream.url}${path}`], env);
    assert.equal(r.exitCode, 0, `${name}: ${r.stderr}`);
    assert.equal(r.httpCode, 200, name);
    assert.equal(r.body, `hello from ${path}`, name);
    const seen = upstream.requests.slice(before);
    assert.deepEqual(seen.map((s) => s.url), [path], name);
    assert.equal(seen[0]!.headers['gateway-authorization'], undefined, name);
    assert.equal(seen[0]!.headers['proxy-authorization'], undefined, name);
  }
  const challenged = () => gw.logs().filter((l) => l.path === '/challenged');
  await waitUntil(() => challenged().length === 2);
  assert.deepEqual(challenged().map((l) => l.status), [407, 200], 'the first try was challenged, the second admitted');
});

test('curl without credentials gets 407 and the Basic challenge, tunnelled or forwarded, and reaches nothing', async () => {
  await untouched('curl', async () => {
    const tunnelled = await curl(['-p', '-x', `http://127.0.0.1:${gw.port}`, `${upstream.url}/no/creds`]);
    assert.equal(tunnelled.connectCode, 407);
    assert.notEqual(tunnelled.exitCode, 0);
    const forwarded = await curl(['-x', `http://127.0.0.1:${gw.port}`, '--include', `${upstream.url}/no/creds`]);
    assert.equal(forwarded.httpCode, 407);
    assert.match(forwarded.body, /^proxy-authenticate: Basic realm="oidc-gateway"\r$/im);
    assert.match(forwarded.body, /\{"error":"token_missing","id":"[0-9a-f-]{36}"\}$/);
  });
});

// ---------------------------------------------------------------- CONNECT on the wire

test('a CONNECT with Proxy-Authorization: Bearer carries bytes both ways, including bytes sent with the head', async () => {
  const since = gw.logs().length;
  const before = tcpEcho.connections();
  const c = openConnect(gw.port, literal(tcpEcho.port), [bearer(token())], 'sent-with-the-head|');
  const a = await c.answer;
  assert.equal(a.statusLine, 'HTTP/1.1 200 Connection Established');
  assert.equal((await c.receivedAtLeast(19)).toString(), 'sent-with-the-head|', 'bytes that came with the head reached the destination');
  c.socket.write('and-after');
  assert.equal((await c.receivedAtLeast(28)).toString(), 'sent-with-the-head|and-after');
  assert.equal(tcpEcho.connections(), before + 1);
  c.socket.end();
  await within(c.closed, 3_000, 'the tunnel closing');
  const line = await logLine(gw, since, (l) => l.kind === 'tunnel' && l.target === literal(tcpEcho.port));
  assert.equal(line.status, 200);
  assert.equal(line.decision, 'allow');
  assert.equal(line.bytesUp, 28);
  assert.equal(line.bytesDown, 28);
  assert.equal((line.identity as Record<string, unknown>).repository, 'octo-org/octo-repo');
});

test('a CONNECT is answered only once the destination accepted the connection: 504 upstream_timeout if it does not in time, 200 when it does', { timeout: 20_000 }, async () => {
  const acceptedBefore = stallable.accepted();
  const fillers = await stallable.stall();
  // gwQuick gives up after upstreamConnectMs (300 ms).
  const timedOut = await within(openConnect(gwQuick.port, literal(stallable.port), [bearer(token())]).answer, 5_000, 'the 504');
  assertRefused(timedOut, 504, 'upstream_timeout', 'a connect that never completes');
  // gw waits the default 5 s: no answer while the SYN goes unanswered, 200 once it is.
  const c = openConnect(gw.port, literal(stallable.port), [bearer(token())]);
  let answered = false;
  void c.answer.then(() => (answered = true), () => (answered = true));
  await sleep(600);
  assert.equal(answered, false, 'no answer while the destination has not accepted the TCP connection');
  stallable.release();
  const a = await within(c.answer, 5_000, 'the 200 after the destination accepted');
  assert.equal(a.status, 200);
  c.socket.write('ping');
  assert.equal((await c.receivedAtLeast(4)).toString(), 'ping');
  await waitUntil(() => stallable.accepted() === acceptedBefore + fillers + 1);
  c.socket.destroy();
  assert.equal(stallable.accepted(), acceptedBefore + fillers + 1, 'the timed-out attempt never reached the destination');
});

test('half-close: the client ends its side, the destination sees the end, and its whole late reply still reaches the client', async () => {
  const since = gw.logs().length;
  const before = replier.connections();
  const c = openConnect(gw.port, literal(replier.port), [bearer(token())]);
  assert.equal((await c.answer).status, 200);
  c.socket.end('request');
  await waitUntil(() => replier.connections() === before + 1);
  await within(replier.accepted.at(-1)!.ended, 3_000, "the destination's 'end'");
  await within(c.ended, 10_000, 'the end of the reply');
  const reply = c.received();
  assert.equal(reply.length, LATE_REPLY_BYTES + 'done:7'.length, 'the reply arrived whole');
  assert.equal(reply.subarray(-6).toString(), 'done:7');
  const line = await logLine(gw, since, (l) => l.kind === 'tunnel' && l.target === literal(replier.port));
  assert.equal(line.bytesUp, 7);
  assert.equal(line.bytesDown, LATE_REPLY_BYTES + 6);
  assert.equal(line.closedBy, 'client', 'the client closed first');
});

test('1 GiB crosses a tunnel intact, and the gateway peak RSS grows by less than 64 MiB', { timeout: 60_000 }, async (t) => {
  const pid = gw.process.child.pid!;
  const before = peakRssMiB(pid);
  const started = performance.now();
  const c = openConnect(gw.port, literal(sink.port), [bearer(token())]);
  assert.equal((await c.answer).status, 200);
  const block = Buffer.alloc(MiB);
  for (let i = 0; i < MiB; i++) block[i] = (i * 131 + (i >> 10)) & 0xff;
  const sent = createHash('sha256');
  for (let i = 0; i < GiB / MiB; i++) {
    const chunk = Buffer.from(block);
    chunk.writeUInt32BE(i, 0);
    sent.update(chunk);
    if (!c.socket.write(chunk)) await once(c.socket, 'drain');
  }
  c.socket.end();
  await within(c.ended, 30_000, 'the sink answering');
  assert.equal(c.received().toString(), `${GiB} ${sent.digest('hex')}`);
  const grew = peakRssMiB(pid) - before;
  t.diagnostic(`1 GiB in ${((performance.now() - started) / 1000).toFixed(1)} s; gateway peak RSS ${before.toFixed(1)} MiB before, +${grew.toFixed(1)} MiB`);
  assert.ok(grew < RSS_BUDGET_MIB, `peak RSS grew by ${grew.toFixed(1)} MiB (from ${before.toFixed(1)} MiB)`);
});

// ---------------------------------------------------------------- refusals

test('a CONNECT without credentials is 407 with a Basic challenge and {error: "token_missing", id}', async () => {
  const cases: [string, string[]][] = [
    ['no header at all', []],
    ['Basic with an empty password', [basic('x', '')]],
    ['a lone "Bearer"', ['Proxy-Authorization: Bearer']],
  ];
  for (const [name, headers] of cases) {
    const a = await untouched(name, () => openConnect(gw.port, literal(tcpEcho.port), headers).answer);
    assertRefused(a, 407, 'token_missing', name);
    assert.equal(a.headers['proxy-authenticate'], 'Basic realm="oidc-gateway"', name);
    assert.match(String(a.json?.id), /^[0-9a-f-]{36}$/, name);
  }
});

test('a CONNECT with a bad token is 401 with its reason, and one outside the policy is 403 claim_mismatch', async () => {
  const now = Math.floor(Date.now() / 1000);
  const good = token();
  const cases: [string, string[], number, string][] = [
    ['junk as Bearer', [bearer('not.a.jwt')], 401, 'token_malformed'],
    ['junk as the Basic password', [basic('x', 'not.a.jwt')], 401, 'token_malformed'],
    ['two Proxy-Authorization headers', [bearer(good), bearer(good)], 401, 'token_malformed'],
    ['an expired token', [bearer(token({ exp: now - 3600 }))], 401, 'token_expired'],
    ['another audience', [bearer(token({ aud: 'api://Other' }))], 401, 'audience_mismatch'],
    ['a key the issuer does not publish', [bearer(token({}, otherKey))], 401, 'kid_unknown'],
    ['a bad token in the token header', ['gateway-authorization: Bearer not.a.jwt'], 401, 'token_malformed'],
    ['another repository', [bearer(token({ repository: 'evil-org/octo-repo' }))], 403, 'claim_mismatch'],
    ['another repository, in Basic', [basic('x', token({ repository: 'octo-org/other' }))], 403, 'claim_mismatch'],
  ];
  const since = gw.logs().length;
  for (const [name, headers, status, reason] of cases) {
    const a = await untouched(name, () => openConnect(gw.port, literal(tcpEcho.port), headers).answer);
    assertRefused(a, status, reason, name);
  }
  const mismatch = gw.logs().slice(since).filter((l) => l.reason === 'claim_mismatch');
  assert.equal(mismatch.length, 2);
  assert.ok(mismatch.every((l) => l.claim === 'repository' && l.kind === 'tunnel'), 'the audit line names the claim');
});

test('destinations outside `to` are 403 connect_target_denied and never contacted', async () => {
  const t = token();
  const cases: [string, string][] = [
    ['another port on the same host', literal(trap.port)],
    ['the cloud metadata service', '169.254.169.254:80'],
    ['localhost when only 127.0.0.1 is listed', `localhost:${tcpEcho.port}`],
    ['127.1, which resolves to 127.0.0.1', `127.1:${tcpEcho.port}`],
    ['127.0.0.1 as one decimal number', `2130706433:${tcpEcho.port}`],
    ['127.0.0.1 in hex', `0x7f.0.0.1:${tcpEcho.port}`],
    ['127.0.0.1 as an IPv4-mapped IPv6 address', `[::ffff:127.0.0.1]:${tcpEcho.port}`],
    ['the gateway admin port', literal(adminPort)],
    ['the gateway public port', literal(gw.port)],
    ['a destination of another entry, on a listed port', `localhost:${shortLived.port}`],
  ];
  for (const [name, target] of cases) {
    const a = await untouched(name, () => openConnect(gw.port, target, [bearer(t)]).answer);
    assertRefused(a, 403, 'connect_target_denied', name);
  }
});

test('a host name listed in `to` that resolves to loopback is refused; loopback is reachable only as a listed literal address', async () => {
  const t = token();
  for (const target of [`localhost:${named.port}`, `LocalHost.:${named.port}`]) {
    const a = await untouched(target, () => openConnect(gw.port, target, [bearer(t)]).answer);
    assertRefused(a, 403, 'connect_target_denied', target);
  }
  assert.equal(named.connections(), 0);
  const c = openConnect(gw.port, literal(tcpEcho.port), [bearer(t)], 'literal');
  assert.equal((await c.answer).status, 200);
  assert.equal((await c.receivedAtLeast(7)).toString(), 'literal');
  c.socket.destroy();
});

test('a listed name that resolves to the gateway admin port is refused, even when its entry lists 127.0.0.1 for another port', async () => {
  const c = openConnect(gw.port, `localhost:${adminPort}`, [bearer(token())]);
  const a = await c.answer;
  let leaked = '';
  if (a.status === 200) {
    c.socket.write('GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n');
    await within(c.closed, 3_000, 'the admin answer').catch(() => c.socket.destroy());
    leaked = c.received().toString().split('\r\n')[0]!;
  }
  assert.equal(a.status, 403, `a tunnel to the admin listener was opened; through it: ${leaked}`);
  assert.equal(a.json?.error, 'connect_target_denied');
});

test('malformed CONNECT targets are 400 bad_request and never contacted', async () => {
  const t = token();
  const p = tcpEcho.port;
  const cases: [string, string][] = [
    ['no port', '127.0.0.1'],
    ['port 0', '127.0.0.1:0'],
    ['port 99999', '127.0.0.1:99999'],
    ['an unclosed IPv6 bracket', '[::1'],
    ['userinfo', `user@127.0.0.1:${p}`],
    ['a port with junk after it', `127.0.0.1:${p}x`],
    ['no host', `:${p}`],
    ['a URL', `http://127.0.0.1:${p}`],
  ];
  for (const [name, target] of cases) {
    const a = await untouched(name, () => openConnect(gw.port, target, [bearer(t)]).answer);
    assert.equal(a.status, 400, `${name}: ${a.statusLine}`);
    assert.equal(a.json?.error, 'bad_request', name);
  }
});

test('forward proxying refuses like CONNECT: 407, 401, 403 and 400, and the destination is never contacted', async () => {
  const t = token();
  const cases: [string, string, string[], number, string][] = [
    ['no credentials', `${upstream.url}/x`, [], 407, 'token_missing'],
    ['a bad token', `${upstream.url}/x`, [bearer('not.a.jwt')], 401, 'token_malformed'],
    ['another repository', `${upstream.url}/x`, [bearer(token({ repository: 'evil-org/x' }))], 403, 'claim_mismatch'],
    ['a port not listed', `http://127.0.0.1:${trap.port}/x`, [bearer(t)], 403, 'connect_target_denied'],
    ['localhost when only 127.0.0.1 is listed', `http://localhost:${upstream.port}/x`, [bearer(t)], 403, 'connect_target_denied'],
    ['the cloud metadata service', 'http://169.254.169.254/latest/meta-data/', [bearer(t)], 403, 'connect_target_denied'],
    ['the gateway admin port', `http://127.0.0.1:${adminPort}/readyz`, [bearer(t)], 403, 'connect_target_denied'],
    ['port 0', 'http://127.0.0.1:0/x', [bearer(t)], 400, 'bad_request'],
    ['userinfo', `http://user@127.0.0.1:${upstream.port}/x`, [bearer(t)], 400, 'bad_request'],
  ];
  for (const [name, url, headers, status, reason] of cases) {
    const a = await untouched(name, () => forwardRaw(gw.port, url, headers));
    assertRefused(a, status, reason, name);
    if (status === 407) assert.equal(a.headers['proxy-authenticate'], 'Basic realm="oidc-gateway"');
  }
});

// ---------------------------------------------------------------- upstream failures

test('a listed destination with nothing listening is 502 upstream_unreachable, tunnelled or forwarded', async () => {
  const t = token();
  assertRefused(await openConnect(gw.port, literal(refusedPort), [bearer(t)]).answer, 502, 'upstream_unreachable', 'CONNECT');
  assertRefused(await forwardRaw(gw.port, `http://${literal(refusedPort)}/x`, [bearer(t)]), 502, 'upstream_unreachable', 'forward');
});

test('a forwarded request to a destination that never answers is 504 upstream_timeout after upstreamHeadMs', async () => {
  const before = silent.connections();
  const started = performance.now();
  const a = await forwardRaw(gw.port, `${silent.url}/never`, [bearer(token())]);
  const ms = performance.now() - started;
  assertRefused(a, 504, 'upstream_timeout', 'a silent upstream');
  assert.equal(silent.connections(), before + 1, 'the request did reach it');
  assert.ok(ms >= 250 && ms < 3_000, `answered after ${Math.round(ms)} ms with upstreamHeadMs 300`);
});

// ---------------------------------------------------------------- how tunnels end

test('a client closing mid-tunnel closes the destination socket and logs the byte counts and closedBy', async () => {
  const cases: [string, (s: Socket) => void][] = [
    ['FIN', (s) => s.destroy()],
    ['RST', (s) => s.resetAndDestroy()],
  ];
  for (const [name, close] of cases) {
    const since = gw.logs().length;
    const c = openConnect(gw.port, literal(tcpEcho.port), [bearer(token())]);
    assert.equal((await c.answer).status, 200, name);
    c.socket.write('12345');
    await c.receivedAtLeast(5);
    const accepted = tcpEcho.accepted.at(-1)!;
    close(c.socket);
    await within(accepted.closed, 3_000, `${name}: the destination socket closing`);
    const line = await logLine(gw, since, (l) => l.kind === 'tunnel' && l.target === literal(tcpEcho.port));
    assert.equal(line.bytesUp, 5, name);
    assert.equal(line.bytesDown, 5, name);
    assert.equal(line.closedBy, 'client', name);
  }
});

const onBun = () => String(gw.logs().find((l) => l.kind === 'start')?.runtime).startsWith('bun');

test('a reset is passed on as a reset, both ways: a FIN would let the other side take a cut stream for a whole one', async () => {
  for (const from of ['client', 'upstream'] as const) {
    const since = gw.logs().length;
    const c = openConnect(gw.port, literal(tcpEcho.port), [bearer(token())]);
    assert.equal((await c.answer).status, 200, from);
    c.socket.write('12345');
    await c.receivedAtLeast(5);
    const destination = tcpEcho.accepted.at(-1)!.socket;
    const [resetting, other] = from === 'client' ? [c.socket, destination] : [destination, c.socket];
    const seen = new Promise<string>((resolve) => {
      other.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      other.once('close', () => resolve('a close without an error'));
    });
    resetting.resetAndDestroy();
    // Bun reports a client's reset on a CONNECT socket as a clean end (no 'error', no `errored`): nothing to pass on.
    const expected = from === 'client' && onBun() ? 'a close without an error' : 'ECONNRESET';
    assert.equal(await within(seen, 3_000, `${from} reset: the other side closing`), expected, `a reset by the ${from}`);
    const line = await logLine(gw, since, (l) => l.kind === 'tunnel' && l.target === literal(tcpEcho.port));
    assert.equal(line.closedBy, from, JSON.stringify(gw.logs().slice(since)));
  }
});

test('a tunnel entry with maxLifetimeSeconds: 1 is closed after about a second', async () => {
  const since = gw.logs().length;
  const c = openConnect(gw.port, literal(shortLived.port), [bearer(token())]);
  assert.equal((await c.answer).status, 200);
  const opened = performance.now();
  c.socket.write('x');
  await c.receivedAtLeast(1);
  await within(c.closed, 4_000, 'the lifetime cap');
  const ms = performance.now() - opened;
  assert.ok(ms > 800 && ms < 2_500, `closed after ${Math.round(ms)} ms`);
  await within(shortLived.accepted.at(-1)!.closed, 1_000, 'the destination socket closing');
  assert.equal((await logLine(gw, since, (l) => l.kind === 'tunnel' && l.target === literal(shortLived.port))).closedBy, 'deadline');
});

test('a tunnel outlives its token by default, and ends with it when its entry says endWithToken', async () => {
  const since = gw.logs().length;
  const exp = Math.floor(Date.now() / 1000) + 2;
  const t = token({ exp });
  const bound = openConnect(gw.port, literal(tokenBound.port), [bearer(t)]);
  const free = openConnect(gw.port, literal(tcpEcho.port), [bearer(t)]);
  assert.equal((await bound.answer).status, 200, 'the token is valid at admission');
  assert.equal((await free.answer).status, 200);
  await within(bound.closed, 4_000, 'the endWithToken tunnel closing');
  const closedAt = Date.now();
  assert.ok(closedAt >= exp * 1000 - 50 && closedAt < exp * 1000 + 2_000, `closed ${closedAt - exp * 1000} ms after exp`);
  assert.equal((await logLine(gw, since, (l) => l.kind === 'tunnel' && l.target === literal(tokenBound.port))).closedBy, 'deadline');
  await sleep(exp * 1000 + 500 - Date.now());
  free.socket.write('still here');
  assert.equal((await free.receivedAtLeast(10)).toString(), 'still here', 'the default tunnel outlived its token');
  free.socket.destroy();
});

test('timeouts.idleMs closes a silent tunnel with closedBy "idle", and not one that talks', async () => {
  const since = gwQuick.logs().length;
  const c = openConnect(gwQuick.port, literal(tcpEcho.port), [bearer(token())]);
  assert.equal((await c.answer).status, 200);
  // Talk every 150 ms for over a second, more than twice idleMs (500 ms).
  for (let i = 1; i <= 8; i++) {
    if (i > 1) await sleep(150);
    c.socket.write('.');
    await c.receivedAtLeast(i);
  }
  const silentFrom = performance.now();
  await within(c.closed, 3_000, 'the idle timeout');
  const ms = performance.now() - silentFrom;
  assert.ok(ms > 300 && ms < 2_000, `closed after ${Math.round(ms)} ms of silence`);
  const line = await logLine(gwQuick, since, (l) => l.kind === 'tunnel');
  assert.equal(line.closedBy, 'idle');
  assert.equal(line.bytesUp, 8);
});

interface DrainRun {
  readonly gateway: RunningGateway;
  readonly duringDrain: string;
  /** How a new connection to the public port fared while draining: ECONNREFUSED, or "accepted". */
  readonly newConnection: string;
  readonly exit: { code: number | null; signal: NodeJS.Signals | null };
  /** From the client ending the tunnel to the process exit. */
  readonly exitMs: number;
}

let drainRun: Promise<DrainRun> | undefined;

/** SIGTERM with one tunnel open: talk through it during the drain, then end it. Run once, asserted by two tests. */
function sigtermWithOpenTunnel(): Promise<DrainRun> {
  drainRun ??= (async () => {
    const g = await startGateway({ issuers: [{ issuer: issuer.issuer, audience: AUD }], tunnels: [{ to: [literal(tcpEcho.port)], allow: [RULE] }] });
    try {
      const c = openConnect(g.port, literal(tcpEcho.port), [bearer(token())]);
      assert.equal((await c.answer).status, 200);
      g.process.child.kill('SIGTERM');
      await g.process.waitFor(/"kind":"stop"/);
      c.socket.write('during the drain');
      const duringDrain = (await c.receivedAtLeast(16)).toString();
      const newConnection = await new Promise<string>((resolve) => {
        const s = connect(g.port, '127.0.0.1');
        s.on('connect', () => (s.destroy(), resolve('accepted')));
        s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
      });
      const closing = performance.now();
      c.socket.end();
      const exit = await within(g.process.exited, 5_000, 'the exit after the last tunnel closed');
      return { gateway: g, duringDrain, newConnection, exit, exitMs: performance.now() - closing };
    } finally {
      await g.close();
    }
  })();
  return drainRun;
}

test('on SIGTERM an open tunnel keeps working through the drain, and the gateway exits 0 once it closes', { timeout: 20_000 }, async () => {
  const run = await sigtermWithOpenTunnel();
  assert.equal(run.duringDrain, 'during the drain');
  assert.equal(run.newConnection, 'ECONNREFUSED', 'no new connections while draining');
  assert.deepEqual(run.exit, { code: 0, signal: null });
  assert.ok(run.exitMs < 3_000, `exited ${Math.round(run.exitMs)} ms after the tunnel closed`);
});

test('a tunnel that ends during the drain still gets its audit line before the gateway exits', { timeout: 20_000 }, async () => {
  const run = await sigtermWithOpenTunnel();
  const line = run.gateway.logs().find((l) => l.kind === 'tunnel' && l.status === 200);
  assert.ok(line, `no tunnel line in: ${run.gateway.process.stdout()}`);
  assert.equal(line.bytesUp, 16);
  assert.equal(line.bytesDown, 16);
  assert.equal(line.closedBy, 'client');
});

test('a tunnel still open at the drain deadline is cut, logged as gateway_stopping with closedBy "shutdown", and the gateway exits 0', { timeout: 20_000 }, async () => {
  const g = await startGateway({ issuers: [{ issuer: issuer.issuer, audience: AUD }], tunnels: [{ to: [literal(tcpEcho.port)], allow: [RULE] }], timeouts: { drainMs: 300 } });
  try {
    const c = openConnect(g.port, literal(tcpEcho.port), [bearer(token())]);
    assert.equal((await c.answer).status, 200);
    c.socket.write('ping');
    await c.receivedAtLeast(4);
    g.process.child.kill('SIGTERM');
    assert.deepEqual(await within(g.process.exited, 5_000, 'the exit at the drain deadline'), { code: 0, signal: null });
    await within(c.closed, 2_000, 'the client side closing');
    const line = g.logs().find((l) => l.kind === 'tunnel');
    assert.ok(line, `no tunnel line in: ${g.process.stdout()}`);
    assert.deepEqual([line.status, line.reason, line.closedBy, line.bytesUp, line.bytesDown], [200, 'gateway_stopping', 'shutdown', 4, 4]);
  } finally {
    await g.close();
  }
});

test('a CONNECT still dialing at the drain deadline is answered 503 gateway_stopping before its connection closes, and the gateway exits 0', { timeout: 20_000 }, async () => {
  const g = await startGateway({ issuers: [{ issuer: issuer.issuer, audience: AUD }], tunnels: [{ to: [literal(stallable.port)], allow: [RULE] }], timeouts: { drainMs: 300 } });
  await stallable.stall();
  try {
    // The destination's accept queue is full: the dial waits (upstreamConnectMs is 5 s).
    const c = openConnect(g.port, literal(stallable.port), [bearer(token())]);
    await sleep(600);
    g.process.child.kill('SIGTERM');
    assertRefused(await within(c.answer, 5_000, 'the 503'), 503, 'gateway_stopping', 'a tunnel still dialing at the deadline');
    assert.deepEqual(await within(g.process.exited, 5_000, 'the exit'), { code: 0, signal: null });
    const line = g.logs().find((l) => l.kind === 'tunnel');
    assert.deepEqual([line?.status, line?.reason, line?.closedBy], [503, 'gateway_stopping', 'shutdown']);
  } finally {
    stallable.release();
    await g.close();
  }
});

// ---------------------------------------------------------------- the audit log

test('a refused CONNECT whose client never closes its side is closed by the gateway within seconds', async () => {
  const socket = connect({ port: gw.port, host: '127.0.0.1', allowHalfOpen: true });
  socket.on('error', () => {});
  let answer = '';
  socket.setEncoding('latin1').on('data', (d: string) => (answer += d));
  socket.write(`CONNECT ${literal(tcpEcho.port)} HTTP/1.1\r\nHost: x\r\n\r\n`);
  await within(once(socket, 'end'), 5_000, 'the answer');
  assert.match(answer, /^HTTP\/1\.1 407 /);
  // Past the gateway's grace period its side is gone for good: a write now is answered with a reset.
  await sleep(2_500);
  // The first write draws the reset, the second one fails on it.
  socket.write('still there?');
  await sleep(200);
  socket.write('hello?');
  await within(new Promise((resolve) => socket.once('close', resolve)), 5_000, 'a reset from a gateway that closed the refused socket');
});

test('a client that leaves while its CONNECT is being admitted gets nothing dialled in its name', { timeout: 20_000 }, async () => {
  const slow = await startGateway({
    issuers: [{ issuer: issuer.issuer, audience: AUD }],
    keys: { cooldownMs: 1_000 },
    tunnels: [{ to: [literal(trap.port)], allow: [RULE] }],
  });
  try {
    await sleep(1_100); // past the cooldown, so an unknown kid refetches the key set
    issuer.keys = [key.jwk, otherKey.jwk];
    issuer.setPlan(JWKS_PATH, { delayMs: 1_500 });
    const since = slow.logs().length;
    const before = trap.connections();
    const conn = openConnect(slow.port, literal(trap.port), [bearer(token({}, otherKey))]);
    await sleep(300);
    conn.socket.destroy();
    const line = await logLine(slow, since, (l) => l.kind === 'tunnel');
    assert.equal(line.reason, 'client_aborted');
    await sleep(100);
    assert.equal(trap.connections(), before, 'no connection was opened for a client that had left');
  } finally {
    issuer.setPlan(JWKS_PATH, {});
    issuer.keys = [key.jwk];
    await slow.close();
  }
});

test('forward proxying sets X-Forwarded-Host to the requested authority, whatever Host the client sent', async () => {
  upstream.reset();
  const a = await forwardRaw(gw.port, `${upstream.url}/xfh`, [bearer(token()), 'Host: admin.internal']);
  assert.equal(a.status, 200);
  const h = upstream.requests.at(-1)!.headers;
  assert.equal(h.host, literal(upstream.port));
  assert.equal(h['x-forwarded-host'], literal(upstream.port));
});

test('forward proxying passes legitimate paths that routes would refuse, such as npm scoped packages', async () => {
  for (const path of ['/@types%2fnode', '/files/100%25.txt', '/app;jsessionid=1', '/%7Euser']) {
    upstream.reset();
    const a = await forwardRaw(gw.port, `${upstream.url}${path}`, [bearer(token())]);
    assert.equal(a.status, 200, path);
    assert.equal(upstream.requests.at(-1)?.url, path);
  }
});

test('an upstream answering with an unsolicited 101 is a 502 at once, not a hang until the head timeout', async () => {
  const hostile = await startTcp((socket) => socket.once('data', () => socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n')));
  const g = await startGateway({ issuers: [{ issuer: issuer.issuer, audience: AUD }], routes: [{ path: '/', upstream: `http://${literal(hostile.port)}`, allow: [RULE] }] });
  try {
    const started = Date.now();
    const res = await fetch(`${g.url}/x`, { headers: { 'gateway-authorization': token() } });
    assert.equal(res.status, 502);
    assert.equal(((await res.json()) as { error: string }).error, 'upstream_unreachable');
    assert.ok(Date.now() - started < 5_000);
  } finally {
    await g.close();
    await hostile.close();
  }
});

test('a malformed CONNECT target holding a token is refused and the token is not logged', async () => {
  const t = token();
  const since = gw.logs().length;
  const a = await untouched('token in the target', () => openConnect(gw.port, `x:${t}@db:5432`, [bearer(t)]).answer);
  assertRefused(a, 400, 'bad_request', 'token in the target');
  const line = await logLine(gw, since, (l) => l.kind === 'tunnel' && l.reason === 'bad_request');
  assert.ok(!JSON.stringify(line).includes(t.split('.')[2]!));
});

test('tunnel audit lines carry target, identity, bytes and closedBy; no line carries a token; every line is JSON', () => {
  for (const g of [gw, gwQuick]) {
    const stdout = g.process.stdout();
    for (const line of stdout.split('\n').filter(Boolean)) assert.doesNotThrow(() => JSON.parse(line), line.slice(0, 200));
    assertCleanLog(stdout, sentTokens);
    for (const t of sentTokens) assert.ok(!stdout.includes(t.split('.')[1]!), 'a token payload in the log');
  }
  const tunnels = gw.logs().filter((l) => l.kind === 'tunnel' && l.status === 200);
  assert.ok(tunnels.length >= 8);
  for (const l of tunnels) {
    assert.match(String(l.target), /^[a-z0-9.]+:\d+$/, 'the requested host:port');
    assert.equal((l.identity as Record<string, unknown>).repository, 'octo-org/octo-repo');
    assert.equal(typeof l.bytesUp, 'number');
    assert.equal(typeof l.bytesDown, 'number');
    assert.equal(typeof l.closedBy, 'string');
    assert.match(String(l.id), /^[0-9a-f-]{36}$/);
  }
  const start = gw.logs().find((l) => l.kind === 'start');
  assert.match(String(start?.runtime), process.env.GATEWAY_RUNTIME?.includes('bun') ? /^bun 1\.\d+/ : /^node \d+/, 'the gateway runs on the runtime asked for');
  const forwards = gw.logs().filter((l) => l.kind === 'forward' && l.status === 200);
  assert.ok(forwards.length >= 4 && forwards.every((l) => l.target === literal(upstream.port)));
});
