// Shared test helpers: RSA keys and their JWKs, test tokens signed every way an
// attacker might try, and real HTTP servers on 127.0.0.1 port 0 (an OpenID
// issuer whose behaviour each test switches, and a recorder that counts and
// keeps whatever it receives). Every server has close(). Nothing here mocks
// node:http or node:crypto: the code under test talks to real sockets.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { constants, createHash, createHmac, generateKeyPair, sign, type KeyObject } from 'node:crypto';
import { createServer, request, type Agent, type ClientRequest, type IncomingHttpHeaders, type IncomingMessage, type RequestOptions, type Server, type ServerResponse } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

// ---------------------------------------------------------------- keys

export interface RsaJwk {
  readonly kty: string;
  readonly n: string;
  readonly e: string;
  readonly kid?: string;
  readonly [member: string]: unknown;
}

export interface TestKey {
  readonly kid: string;
  readonly bits: number;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** The public key as an issuer publishes it: kty, n, e, kid, use "sig", alg "RS256". */
  readonly jwk: RsaJwk;
  /** SPKI PEM of the public key, e.g. to key an HS256 algorithm-confusion token. */
  readonly publicPem: string;
}

const generateKeyPairAsync = promisify(generateKeyPair);

/** Generates an RSA key pair (slow: call once per test file, in parallel with Promise.all). */
export async function generateRsaKey(kid: string, bits = 2048): Promise<TestKey> {
  const { publicKey, privateKey } = await generateKeyPairAsync('rsa', { modulusLength: bits });
  return {
    kid,
    bits,
    privateKey,
    publicKey,
    jwk: rsaJwk(publicKey, kid),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

/**
 * The public JWK of an RSA key with a kid. `extra` is merged last: a member set
 * to undefined disappears once the JWK is served as JSON.
 */
export function rsaJwk(publicKey: KeyObject, kid: string, extra: Record<string, unknown> = {}): RsaJwk {
  const { n, e } = publicKey.export({ format: 'jwk' });
  if (typeof n !== 'string' || typeof e !== 'string') throw new TypeError('rsaJwk: not an RSA public key');
  return { kty: 'RSA', n, e, kid, use: 'sig', alg: 'RS256', ...extra };
}

// ---------------------------------------------------------------- tokens

/** What signToken computes the third segment with; the header says whatever the test wrote. */
export type SigningAlg = 'RS256' | 'RS384' | 'RS512' | 'PS256' | 'HS256' | 'none';

/** Any key signToken can sign with: an RSA private KeyObject, or an HMAC secret. */
export type SigningKey = KeyObject | string | Buffer;

/** base64url of the JSON text of a value. */
export function encodeSegment(value: unknown): string {
  return encodeText(JSON.stringify(value));
}

/** base64url of raw text, for segments that are not (or not quite) JSON. */
export function encodeText(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64url');
}

/** Decodes a segment leniently (test side only), for building tampered tokens. */
export function decodeSegment(segment: string): unknown {
  return JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
}

/**
 * A compact JWS. header and payload are objects (serialised with
 * JSON.stringify) or strings taken as raw JSON text, so a test can send arrays,
 * numbers, duplicate names or 100,000-deep nesting. The header is used exactly
 * as given, so it may lie about alg. opts.alg (default RS256) picks how the
 * signature is computed: 'none' gives an empty third segment; HS256 takes any
 * secret (such as the issuer's public key PEM or JWK JSON).
 */
export function signToken(
  header: object | string,
  payload: object | string,
  key: SigningKey | null,
  opts: { readonly alg?: SigningAlg } = {},
): string {
  const input = `${segmentOf(header)}.${segmentOf(payload)}`;
  return remember(`${input}.${signatureFor(opts.alg ?? 'RS256', input, key).toString('base64url')}`);
}

// Every token signToken returned in this process, kept for the scan each
// startGateway runs on its log at close(): the signature segment, or the whole
// token when its signature is too short to tell from ordinary text ('none').
// Needles are looked up by their first NEEDLE_KEY characters, so the scan costs
// one Map lookup per character of token-like text, however many tokens exist.
const NEEDLE_MIN = 20;
const NEEDLE_KEY = 16;
const signedNeedles = new Map<string, Set<string>>();

function remember(token: string): string {
  const signature = token.slice(token.lastIndexOf('.') + 1);
  const needle = signature.length >= NEEDLE_MIN ? signature : token;
  if (needle.length >= NEEDLE_MIN) {
    const key = needle.slice(0, NEEDLE_KEY);
    const bucket = signedNeedles.get(key) ?? new Set();
    signedNeedles.set(key, bucket.add(needle));
  }
  return token;
}

/** The first token signed in this process (or its signature) that occurs in `text`, if any. */
export function signedTokenIn(text: string): string | undefined {
  // A whole token (dots included) or a signature lies inside one run of base64url text.
  for (const [run] of text.matchAll(/[A-Za-z0-9_.-]{20,}/g)) {
    for (let i = 0; i + NEEDLE_MIN <= run.length; i++) {
      const bucket = signedNeedles.get(run.slice(i, i + NEEDLE_KEY));
      if (bucket) for (const needle of bucket) if (run.startsWith(needle, i)) return needle;
    }
  }
  return undefined;
}

/** A token as GitHub's issuer would sign it for octo-org/octo-repo on main, valid for an hour; `claims` override. */
export function workflowToken(iss: string, key: TestKey, aud: string, claims: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const payload = { iss, aud, sub: 'repo:octo-org/octo-repo:ref:refs/heads/main', repository: 'octo-org/octo-repo', ref: 'refs/heads/main' };
  return signToken({ alg: 'RS256', typ: 'JWT', kid: key.kid }, { ...payload, iat: now, nbf: now, exp: now + 3600, ...claims }, key.privateKey);
}

/** The raw signature bytes of a signing input under one algorithm. */
export function signatureFor(alg: SigningAlg, signingInput: string, key: SigningKey | null): Buffer {
  const data = Buffer.from(signingInput, 'latin1');
  if (alg === 'none') return Buffer.alloc(0);
  if (key === null) throw new TypeError(`signatureFor: ${alg} needs a key`);
  if (alg === 'HS256') return createHmac('sha256', key).update(data).digest();
  if (typeof key === 'string' || Buffer.isBuffer(key)) throw new TypeError(`signatureFor: ${alg} needs a KeyObject`);
  switch (alg) {
    case 'RS256':
      return sign('sha256', data, key);
    case 'RS384':
      return sign('sha384', data, key);
    case 'RS512':
      return sign('sha512', data, key);
    case 'PS256':
      return sign('sha256', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
  }
}

// DER of the SHA-256 AlgorithmIdentifier in a PKCS#1 v1.5 DigestInfo (RFC 8017 §9.2, note 1).
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');

/**
 * A "signature" that verifies under the public exponent 1 for any modulus of
 * `modulusBytes` octets: with e = 1, s^e mod n = s, so the signature is simply
 * the PKCS#1 v1.5 encoded digest. Anyone can compute it; no private key needed.
 */
export function forgeForExponentOne(signingInput: string, modulusBytes = 256): Buffer {
  const digest = createHash('sha256').update(Buffer.from(signingInput, 'latin1')).digest();
  const t = Buffer.concat([SHA256_DIGEST_INFO, digest]);
  return Buffer.concat([Buffer.from([0, 1]), Buffer.alloc(modulusBytes - 3 - t.length, 0xff), Buffer.from([0]), t]);
}

function segmentOf(part: object | string): string {
  return typeof part === 'string' ? encodeText(part) : encodeSegment(part);
}

// ---------------------------------------------------------------- time, fetch, logs

export interface TestClock {
  /** Milliseconds since the epoch, as Date.now. Pass as the `now` option. */
  readonly now: () => number;
  /** The current time in whole seconds, for JWT time claims. */
  seconds(): number;
  set(ms: number): void;
  advance(ms: number): void;
}

/** A clock that only moves when told to, so no test sleeps for a cooldown. */
export function testClock(start = Date.UTC(2025, 0, 1)): TestClock {
  let t = start;
  return {
    now: () => t,
    seconds: () => Math.floor(t / 1000),
    set: (ms) => {
      t = ms;
    },
    advance: (ms) => {
      t += ms;
    },
  };
}

export interface FetchCounter {
  /** Pass as the `fetch` option: the real fetch, counted. */
  readonly fetch: typeof globalThis.fetch;
  /** Every URL asked for, in order. */
  readonly calls: string[];
  /** Calls whose response head has not arrived (or failed) yet. */
  pending(): number;
}

/** Wraps the real fetch (not a fake) to count calls and see which are still in flight. */
export function countingFetch(inner: typeof globalThis.fetch = globalThis.fetch): FetchCounter {
  const calls: string[] = [];
  let pending = 0;
  const counted = async (input: Parameters<typeof fetch>[0], init?: Parameters<typeof fetch>[1]): Promise<Response> => {
    calls.push(input instanceof Request ? input.url : String(input));
    pending++;
    try {
      return await inner(input, init);
    } finally {
      pending--;
    }
  };
  return { fetch: counted as typeof globalThis.fetch, calls, pending: () => pending };
}

export interface LogCollector {
  readonly log: (line: Record<string, unknown>) => void;
  readonly lines: Record<string, unknown>[];
}

/** Collects structured log lines, for the `log` option. */
export function logCollector(): LogCollector {
  const lines: Record<string, unknown>[] = [];
  return { lines, log: (line) => void lines.push(line) };
}

/** A small seeded PRNG (mulberry32): the same junk on every run. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---------------------------------------------------------------- servers

export interface TestServer {
  readonly server: Server;
  readonly port: number;
  /** http://127.0.0.1:<port>, no trailing slash. */
  readonly url: string;
  /** TCP connections accepted so far (a request that never arrives still shows here). */
  connections(): number;
  /** Stops listening and drops every connection, idle or not. Safe to call twice. */
  close(): Promise<void>;
}

export type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/** A plain node:http server on 127.0.0.1, port 0. */
export async function startServer(handler: Handler): Promise<TestServer> {
  const server = createServer(handler);
  let connections = 0;
  server.on('connection', () => {
    connections++;
  });
  await listen(server, 0);
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    connections: () => connections,
    close: () => closeServer(server),
  };
}

/** Closes a server without waiting for keep-alive sockets to time out. */
export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      server.closeAllConnections();
      resolve();
      return;
    }
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

function listen(server: Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
}

export interface RecordedRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: readonly string[];
  readonly body: Buffer;
  readonly remoteAddress: string | undefined;
}

/** How a recorder answers; it gets the request with its whole body. */
export type RecorderReply = (req: RecordedRequest, res: ServerResponse) => void;

export interface Recorder extends TestServer {
  /** Every complete request received, in order. */
  readonly requests: readonly RecordedRequest[];
  /** Requests whose head arrived, counted before their body is read. */
  hits(): number;
  reset(): void;
  /** Replaceable at any time. */
  reply: RecorderReply;
}

const defaultReply: RecorderReply = (_req, res) => {
  res.writeHead(200, { 'content-type': 'application/json' }).end('{"recorded":true}');
};

/**
 * A server that counts and keeps whatever it receives: a trap that must never
 * be contacted (jku, x5u, redirect targets), or a real upstream that asserts
 * what a proxy sent it.
 */
export async function startRecorder(reply: RecorderReply = defaultReply): Promise<Recorder> {
  const requests: RecordedRequest[] = [];
  let hits = 0;
  const base = await startServer((req, res) => {
    hits++;
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const recorded: RecordedRequest = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        body: Buffer.concat(chunks),
        remoteAddress: req.socket.remoteAddress,
      };
      requests.push(recorded);
      recorder.reply(recorded, res);
    });
  });
  const recorder: Recorder = {
    ...base,
    requests,
    hits: () => hits,
    reset: () => {
      hits = 0;
      requests.length = 0;
    },
    reply,
  };
  return recorder;
}

export const DISCOVERY_PATH = '/.well-known/openid-configuration';
export const JWKS_PATH = '/jwks';
export const FIVE_MIB = 5 * 1024 * 1024;

/** How the issuer answers one path. Every field is optional; {} is a normal 200 JSON answer. */
export interface ResponsePlan {
  /** Default 200. */
  readonly status?: number;
  /** Wait this long before sending the response head. */
  readonly delayMs?: number;
  /**
   * json: the discovery document or the key set (default); html: a login page;
   * truncated: the first half of the JSON, complete at the HTTP level;
   * cut: the head promises the whole JSON, half is sent, then the socket is destroyed;
   * huge: valid JSON padded to hugeBytes (default 5 MiB); empty: no body;
   * raw: exactly `raw`.
   */
  readonly body?: 'json' | 'html' | 'truncated' | 'cut' | 'huge' | 'empty' | 'raw';
  readonly raw?: string;
  readonly hugeBytes?: number;
  /** Send without Content-Length (chunked), so only a streaming cap can stop it. */
  readonly chunked?: boolean;
  /** A Location header, for 3xx plans. */
  readonly location?: string;
  readonly cacheControl?: string;
  readonly contentType?: string;
}

export interface IssuerRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
}

export interface Issuer extends TestServer {
  /** The issuer identifier: the server's URL, no trailing slash. */
  readonly issuer: string;
  readonly discoveryUri: string;
  readonly jwksUri: string;
  /** The JWKs served at /jwks as {"keys": [...]}. Replace at will (key rotation). */
  keys: unknown[];
  /** The discovery document; undefined serves {issuer, jwks_uri} for this server. */
  document: unknown;
  /** Sets how one path answers from now on (replacing its previous plan). */
  setPlan(path: string, plan: ResponsePlan): void;
  /** Requests received for one path, or for all paths. */
  hits(path?: string): number;
  readonly requests: readonly IssuerRequest[];
  /** Forgets the requests counted so far. */
  resetHits(): void;
  /** Closes the listening socket and every connection: fetches now fail with ECONNREFUSED. */
  down(): Promise<void>;
  /** Listens again on the same port. */
  up(): Promise<void>;
}

let hugePadding = '';

/** A real OpenID issuer on 127.0.0.1 port 0 serving discovery and a JWK Set. */
export async function startIssuer(opts: { readonly keys?: unknown[] } = {}): Promise<Issuer> {
  const plans = new Map<string, ResponsePlan>();
  const requests: IssuerRequest[] = [];
  const timers = new Set<ReturnType<typeof setTimeout>>();

  const base = await startServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    requests.push({ method: req.method ?? '', path, headers: req.headers });
    req.resume();
    const plan = plans.get(path) ?? {};
    if (!plan.delayMs) {
      answer(path, plan, res);
      return;
    }
    const timer = setTimeout(() => {
      timers.delete(timer);
      if (!res.destroyed) answer(path, plan, res);
    }, plan.delayMs);
    timers.add(timer);
    res.on('close', () => {
      clearTimeout(timer);
      timers.delete(timer);
    });
  });

  function json(path: string): string | undefined {
    if (path === DISCOVERY_PATH) return JSON.stringify(issuer.document ?? { issuer: base.url, jwks_uri: base.url + JWKS_PATH });
    if (path === JWKS_PATH) return JSON.stringify({ keys: issuer.keys });
    return undefined;
  }

  function answer(path: string, plan: ResponsePlan, res: ServerResponse): void {
    const text = json(path);
    if (text === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    let body: Buffer;
    let type = 'application/json';
    switch (plan.body ?? 'json') {
      case 'json':
      case 'cut':
        body = Buffer.from(text);
        break;
      case 'html':
        type = 'text/html; charset=utf-8';
        body = Buffer.from('<!doctype html>\n<html><head><title>Sign in</title></head><body><h1>Sign in</h1></body></html>\n');
        break;
      case 'truncated':
        body = Buffer.from(text.slice(0, Math.floor(text.length / 2)));
        break;
      case 'huge': {
        const size = plan.hugeBytes ?? FIVE_MIB;
        if (hugePadding.length < size) hugePadding = ' '.repeat(size);
        // Still valid JSON with the real keys in it: only a size cap can refuse it.
        // text without its closing brace, `,"padding":"` (12), the padding, `"}` (2).
        const pad = Math.max(0, size - (text.length - 1) - 14);
        body = Buffer.from(`${text.slice(0, -1)},"padding":"${hugePadding.slice(0, pad)}"}`);
        break;
      }
      case 'empty':
        body = Buffer.alloc(0);
        break;
      case 'raw':
        body = Buffer.from(plan.raw ?? '');
        break;
    }
    const headers: Record<string, string> = { 'content-type': plan.contentType ?? type };
    if (plan.location !== undefined) headers.location = plan.location;
    if (plan.cacheControl !== undefined) headers['cache-control'] = plan.cacheControl;
    if (!plan.chunked) headers['content-length'] = String(body.length);
    res.writeHead(plan.status ?? 200, headers);
    if (plan.body === 'cut') {
      res.write(body.subarray(0, Math.floor(body.length / 2)), () => res.socket?.destroy());
      return;
    }
    res.end(body);
  }

  const issuer: Issuer = {
    ...base,
    issuer: base.url,
    discoveryUri: base.url + DISCOVERY_PATH,
    jwksUri: base.url + JWKS_PATH,
    keys: opts.keys ?? [],
    document: undefined,
    setPlan: (path, plan) => void plans.set(path, plan),
    hits: (path) => (path === undefined ? requests.length : requests.filter((r) => r.path === path).length),
    requests,
    resetHits: () => {
      requests.length = 0;
    },
    down: () => closeServer(base.server),
    up: () => listen(base.server, base.port),
    close: () => {
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      return closeServer(base.server);
    },
  };
  return issuer;
}

// ---------------------------------------------------------------- processes

export interface ProcessExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface TestProcess {
  readonly child: ChildProcess;
  /** Everything the process wrote so far. */
  stdout(): string;
  stderr(): string;
  /**
   * The first match of `pattern` in stdout or stderr, whether it was already
   * written or comes later; rejects if the process exits first or on timeout.
   */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  readonly exited: Promise<ProcessExit>;
  /** SIGTERM, then SIGKILL after graceMs; resolves once it has exited. Safe to call twice. */
  close(graceMs?: number): Promise<ProcessExit>;
}

/**
 * Spawns a process (such as the gateway: `startProcess(process.execPath,
 * ['--import', 'tsx', 'src/main.ts', ...])`) and collects its output.
 */
export function startProcess(
  command: string,
  args: readonly string[],
  opts: { readonly env?: NodeJS.ProcessEnv; readonly cwd?: string } = {},
): TestProcess {
  const child = spawn(command, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const listeners = new Set<() => void>();
  const changed = () => {
    for (const listener of listeners) listener();
  };
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk;
    changed();
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    err += chunk;
    changed();
  });
  let done: ProcessExit | undefined;
  const exited = new Promise<ProcessExit>((resolve) => {
    child.once('close', (code, signal) => {
      done = { code, signal };
      changed();
      resolve(done);
    });
    child.once('error', (error) => {
      err += String(error);
      done = { code: null, signal: null };
      changed();
      resolve(done);
    });
  });

  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitFor(pattern, timeoutMs = 5_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const match = out.match(pattern) ?? err.match(pattern);
          if (match) finish(() => resolve(match));
          else if (done) finish(() => reject(new Error(`exited (${done!.code ?? done!.signal}) before ${pattern}; stderr: ${err.slice(-2000)}`)));
        };
        const timer = setTimeout(() => finish(() => reject(new Error(`no ${pattern} within ${timeoutMs} ms; stderr: ${err.slice(-2000)}`))), timeoutMs);
        const finish = (settle: () => void) => {
          clearTimeout(timer);
          listeners.delete(check);
          settle();
        };
        listeners.add(check);
        check();
      });
    },
    async close(graceMs = 2_000) {
      if (done) return done;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const exit = await exited;
      clearTimeout(timer);
      return exit;
    },
  };
}

// ---------------------------------------------------------------- the gateway as its own process

/**
 * The runtime that runs dist/main.js in end-to-end tests: node by default, or
 * the executable named by GATEWAY_RUNTIME (test/bun.ts sets it to Bun).
 */
export const GATEWAY_RUNTIME = process.env.GATEWAY_RUNTIME || process.execPath;
export const MAIN_JS = fileURLToPath(new URL('../dist/main.js', import.meta.url));

export interface RunningGateway {
  readonly process: TestProcess;
  readonly url: string;
  readonly port: number;
  readonly adminUrl: string;
  readonly configFile: string;
  /** The JSON lines the gateway logged so far. */
  logs(): Record<string, unknown>[];
  /**
   * Stops the process and removes its config directory; then throws if any
   * stdout line is not JSON, or stdout or stderr holds a token signToken made
   * in this process (or its signature). Safe to call twice.
   */
  close(): Promise<ProcessExit>;
}

/** Throws, naming the line (truncated), unless every line of `stdout` is JSON and holds no token signed in this process. */
export function assertLogClean(stdout: string): void {
  for (const line of stdout.split('\n')) {
    if (line === '') continue;
    const shown = line.length > 200 ? `${line.slice(0, 200)}...` : line;
    try {
      JSON.parse(line);
    } catch {
      throw new assert.AssertionError({ message: `a gateway log line is not JSON: ${shown}` });
    }
    const found = signedTokenIn(line);
    if (found !== undefined) throw new assert.AssertionError({ message: `a signed token (${found.slice(0, 12)}...) in a gateway log line: ${shown}` });
  }
}

/** Writes `config` to a temporary file and runs `dist/main.js --config` on it, on ports picked by the OS. */
export async function startGateway(config: Record<string, unknown>, opts: { readonly waitReady?: boolean; readonly entry?: string } = {}): Promise<RunningGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'oidc-gateway-'));
  const configFile = join(dir, 'gateway.config.json');
  writeFileSync(configFile, JSON.stringify({ listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, ...config }));
  // `entry`: a script that loads dist/main.js itself (such as one that moves the clock).
  const proc = startProcess(GATEWAY_RUNTIME, [opts.entry ?? MAIN_JS, '--config', configFile]);
  let closing: Promise<ProcessExit> | undefined;
  const started = await proc.waitFor(/"kind":"start".*"port":(\d+),"adminPort":(\d+)/, 15_000).catch(async (err: unknown) => {
    await proc.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  });
  const port = Number(started[1]);
  const gateway: RunningGateway = {
    process: proc,
    url: `http://127.0.0.1:${port}`,
    port,
    adminUrl: `http://127.0.0.1:${started[2]}`,
    configFile,
    logs: () => proc.stdout().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>),
    close: () =>
      (closing ??= proc.close().then((exit) => {
        rmSync(dir, { recursive: true, force: true });
        assertLogClean(proc.stdout());
        const inStderr = signedTokenIn(proc.stderr());
        if (inStderr !== undefined) throw new assert.AssertionError({ message: `a signed token (${inStderr.slice(0, 12)}...) in the gateway's stderr` });
        return exit;
      })),
  };
  if (opts.waitReady !== false) {
    await waitUntil(async () => (await fetch(`${gateway.adminUrl}/readyz`)).status === 200, 10_000).catch(async (err: unknown) => {
      await gateway.close().catch(() => {});
      throw err;
    });
  }
  return gateway;
}

/** Polls `check` every 25 ms until it is true; rejects after `timeoutMs`. */
export async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await Promise.resolve().then(check).catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Sends raw bytes on a fresh socket and collects everything until the peer closes or `idleMs` passes in silence. */
export function rawExchange(port: number, bytes: string | Buffer, idleMs = 1_000): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let text = '';
    socket.setEncoding('latin1');
    socket.setTimeout(idleMs, () => socket.destroy());
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('error', () => socket.destroy());
    socket.on('close', () => resolve(text));
    socket.write(bytes);
  });
}

/** The status code of the first response in a raw HTTP/1.1 exchange, or 0 if there was none. */
export function statusOf(raw: string): number {
  const m = raw.match(/^HTTP\/1\.1 (\d{3})/);
  return m ? Number(m[1]) : 0;
}

/** Peak resident memory of a process in MiB, from /proc (Linux). */
export function peakRssMiB(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+) kB/);
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Asserts every line a gateway wrote to stdout is JSON and none holds a token (or a token's signature) that was sent. */
export function assertCleanLog(stdout: string, tokens: readonly string[]): void {
  const lines = stdout.split('\n').filter((l) => l !== '');
  assert.ok(lines.length > 0, 'the gateway logged nothing');
  for (const line of lines) {
    assert.doesNotThrow(() => JSON.parse(line), `not JSON: ${line.slice(0, 200)}`);
    for (const token of tokens) {
      assert.ok(!line.includes(token), `a token in the log: ${line.slice(0, 200)}`);
      assert.ok(!line.includes(token.slice(token.lastIndexOf('.') + 1)), `a token signature in the log: ${line.slice(0, 200)}`);
    }
  }
}

// ---------------------------------------------------------------- plain HTTP clients

export interface HttpAnswer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}

/** Starts a request (the caller writes and ends it) and collects its answer; a fresh connection unless `opts.agent` gives a pool. */
export function httpRequest(url: string, opts: RequestOptions = {}): { req: ClientRequest; answer: Promise<HttpAnswer> } {
  const req = request(url, { agent: false, ...opts });
  const answer = new Promise<HttpAnswer>((resolve, reject) => {
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  return { req, answer };
}

/** A GET and its whole answer. */
export function httpGet(url: string, headers: Record<string, string> = {}, agent: Agent | false = false): Promise<HttpAnswer> {
  const { req, answer } = httpRequest(url, { headers, agent });
  req.end();
  return answer;
}
