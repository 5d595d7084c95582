// Fuzzing (issue 7): tokens, raw request heads and configs, seeded and reproducible. The seed is FUZZ_SEED, else a
// fixed one in CI, else a random one (printed); FUZZ_SCALE multiplies every count (`npm run fuzz` runs 10 times as many).
// Every failure names its seed and case index, and the cases run on: a test lists up to 10 failing cases, then stops.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseConfig } from '../src/config.js';
import { createGateway } from '../src/gateway.js';
import { createKeySet } from '../src/jwks.js';
import { createTokenVerifier, VERIFIER_DEFAULTS } from '../src/jwt.js';
import { compilePolicy, evaluate } from '../src/policy.js';
import {
  AUDIENCE, POLICY_RULES, baseConfig, caseLabel, caseRandom, configResultProblems, corruptedConfigFile, createTokenFuzzer, fuzzKeys, fuzzSettings,
  headerSafe, issuedToken, makeHead, mutatedConfig, rssMiB, shown, statusesFor, tokenInHeader,
  type FuzzKeys, type HeadCase, type Outcome, type TokenContext,
} from './fuzz.ts';
import {
  GATEWAY_RUNTIME, MAIN_JS, countingFetch, signToken, startGateway, startIssuer, startProcess, startRecorder, testClock,
  type Issuer, type Recorder, type RunningGateway,
} from './helpers.ts';

const settings = fuzzSettings();
console.log(`fuzz: seed ${settings.seed} (${settings.origin}), scale ${settings.scale}; replay with FUZZ_SEED=${settings.seed} FUZZ_SCALE=${settings.scale}`);
const scaled = (n: number) => Math.ceil(n * settings.scale);
const COUNT = {
  tokensInProcess: scaled(18_000), tokenPool: scaled(1_200),
  tokensEndToEnd: scaled(2_500), wirePool: scaled(300),
  heads: scaled(3_000), configs: scaled(5_000), cli: Math.max(10, scaled(10)),
};
// The issuer's name is fixed (its keys come from the local issuer's jwksUri), so that with the fixed keys and clock the
// tokens made in process are the same bytes on every run.
const ISSUER = 'https://token.actions.githubusercontent.com';
/** The end-to-end gateway's token.maxBytes: boundary tokens are built around it. */
const WIRE_MAX_BYTES = 4096;
const MAX_FINDINGS = 10;
const TOKEN_REASONS = new Set(['token_missing', 'token_malformed', 'alg_not_allowed', 'kid_unknown', 'signature_invalid', 'token_expired', 'token_not_yet_valid', 'issuer_mismatch', 'audience_mismatch']);

// No promise may be left to reject unseen, in this process or (checked by its survival) in the gateway's.
const unhandled: unknown[] = [];
process.on('unhandledRejection', (reason) => void unhandled.push(reason));
const assertNoUnhandled = () => assert.deepEqual(unhandled.map((e) => (e instanceof Error ? e.stack : String(e))), [], 'an unhandled rejection');

function assertNoFindings(findings: readonly string[], what: string): void {
  assert.equal(findings.length, 0, `${findings.length >= MAX_FINDINGS ? `${MAX_FINDINGS}+` : findings.length} ${what}:\n${findings.join('\n')}`);
}

let keys: FuzzKeys;
let issuer: Issuer;
let trap: Recorder;
let upstream: Recorder;
let gw: RunningGateway;
/** Every request the upstream received, as its head arrived: its x-fuzz-case header and how it looked. */
const upstreamHeads: { readonly marker: string | undefined; readonly head: string }[] = [];

before(async () => {
  keys = fuzzKeys();
  [issuer, trap, upstream] = await Promise.all([startIssuer({ keys: [keys.k1.jwk, keys.k2.jwk] }), startRecorder(), startRecorder()]);
  upstream.server.on('request', (req: http.IncomingMessage) => {
    upstreamHeads.push({ marker: [req.headers['x-fuzz-case']].flat()[0], head: `${req.method} ${req.url} ${req.rawHeaders.join('\n')}` });
  });
  gw = await startGateway({
    issuers: [{ issuer: ISSUER, audience: AUDIENCE, jwksUri: issuer.jwksUri }],
    token: { maxBytes: WIRE_MAX_BYTES },
    timeouts: { clientHeadersMs: 1_000, upstreamHeadMs: 2_000, upstreamConnectMs: 1_000, idleMs: 1_500, drainMs: 1_000 },
    routes: [{ path: '/api', upstream: `${upstream.url}/up`, allow: POLICY_RULES }],
    tunnels: [{ to: [`127.0.0.1:${upstream.port}`], allow: POLICY_RULES }],
  });
});

after(async () => {
  await gw?.close();
  await Promise.all([issuer?.close(), trap?.close(), upstream?.close()]);
});

const tally = (outcomes: Iterable<string>) => Object.entries([...outcomes].reduce<Record<string, number>>((t, o) => ((t[o] = (t[o] ?? 0) + 1), t), {})).map(([k, v]) => `${k} ${v}`).join(', ');

/** A token the fuzz route admits, valid for ten minutes. */
function validToken(): string {
  const now = Math.floor(Date.now() / 1000);
  return signToken({ alg: 'RS256', typ: 'JWT', kid: keys.k1.kid }, {
    iss: ISSUER, aud: AUDIENCE, iat: now, exp: now + 600, repository: 'octo-org/octo-repo', repository_id: '123456', ref: 'refs/heads/main', jti: String(Math.random()),
  }, keys.k1.privateKey);
}

/** Runs `count` jobs with at most `width` at a time, in index order. */
async function inParallel(count: number, width: number, job: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < count) await job(next++);
  }));
}

async function assertGatewayAlive(): Promise<void> {
  assert.equal(gw.process.child.exitCode, null, `the gateway exited; stderr: ${gw.process.stderr().slice(-2000)}`);
  assert.equal((await fetch(`${gw.adminUrl}/healthz`)).status, 200);
}

test(`tokens in process: ${COUNT.tokensInProcess} issued, mutated, spliced and junk tokens get exactly the verdict the oracle computes from what it signed`, async (t) => {
  const clock = testClock(Date.UTC(2025, 5, 1, 12) + 250);
  // Counted, to see that only the issuer's key set is ever fetched (never a jku or x5u a token names).
  const fetches = countingFetch();
  const keySet = createKeySet({ issuer: ISSUER, jwksUri: issuer.jwksUri, fetch: fetches.fetch });
  assert.equal(await keySet.start(), true, 'the key set loads');
  const verify = createTokenVerifier({ issuers: [{ issuer: ISSUER, audiences: [AUDIENCE], resolveKey: keySet.resolveKey }], now: clock.now });
  const policy = compilePolicy(POLICY_RULES);
  const ctx: TokenContext = {
    issuer: ISSUER, audience: AUDIENCE, skew: VERIFIER_DEFAULTS.clockSkewSeconds, maxBytes: VERIFIER_DEFAULTS.maxTokenBytes,
    keys, nowSeconds: clock.now() / 1000, wire: false, trapUrl: 'https://attacker.example',
  };
  const started = Date.now();
  const fuzzer = createTokenFuzzer(settings, 'tokens', ctx, COUNT.tokenPool);
  const signedMs = Date.now() - started;
  const base = clock.now();
  const findings: string[] = [];
  const seen: Outcome[] = [];
  const kinds: string[] = [];
  try {
    for (let i = 0; i < COUNT.tokensInProcess && findings.length < MAX_FINDINGS; i++) {
      const c = fuzzer.make(i);
      // Most cases at the time the claims were written against (exact skew boundaries), some hours either side.
      const r = caseRandom(settings.seed, 'tokens/clock', i);
      clock.set(r.chance(0.7) ? base : base + r.int(-7_200_000, 7_200_000));
      const v = await verify(c.token);
      const observed: Outcome = !v.ok ? 'refuse' : evaluate(policy, v.claims).allowed ? 'accept' : 'deny';
      const expected = fuzzer.outcomes(c.token, clock.now() / 1000);
      seen.push(observed);
      kinds.push(c.kind);
      if (!expected.has(observed) || (!v.ok && !TOKEN_REASONS.has(v.reason))) {
        findings.push(`${caseLabel(settings, 'tokens', i)} ${c.kind}: ${c.notes.join(' | ')}\n  at ${clock.now() / 1000}: expected ${[...expected].join(' or ')}, got ${observed}${v.ok ? '' : ` (${v.reason})`}\n  token ${shown(c.token, 600)}`);
      }
    }
  } finally {
    keySet.stop();
  }
  t.diagnostic(`${seen.length} tokens (${tally(kinds)}) in ${Date.now() - started} ms, ${signedMs} ms of it signing ${COUNT.tokenPool}: ${tally(seen)}`);
  assertNoFindings(findings, 'tokens judged otherwise than the oracle expects');
  assert.deepEqual([...new Set(fetches.calls)], [issuer.jwksUri], 'only the key set is fetched, never a URL a token names');
  assertNoUnhandled();
});

test('tokens in process: a valid token of maxBytes - 1 or maxBytes characters passes, one of maxBytes + 1 is refused', async () => {
  // The boundary the fuzzer reaches by chance, made certain (and the oracle checked against it).
  const now = Math.floor(Date.now() / 1000);
  const max = VERIFIER_DEFAULTS.maxTokenBytes;
  const ctx: TokenContext = { issuer: ISSUER, audience: AUDIENCE, skew: 60, maxBytes: max, keys, nowSeconds: now, wire: false, trapUrl: trap.url };
  const verify = createTokenVerifier({ issuers: [{ issuer: ISSUER, audiences: [AUDIENCE], resolveKey: async (kid) => (kid === keys.k1.kid ? keys.k1.publicKey : 'kid_unknown') }], now: () => now * 1000 });
  for (const length of [max - 1, max, max + 1]) {
    const issued = issuedToken(caseRandom(settings.seed, 'boundary', length), ctx, length)!;
    assert.equal(issued.token.length, length);
    const expected = length <= max ? 'accept' : 'refuse';
    assert.deepEqual([...issued.outcomes(now)], [expected], `the oracle on a token of ${length} characters`);
    const v = await verify(issued.token);
    assert.equal(v.ok, length <= max, `a token of ${length} characters: ${v.ok ? 'passed' : v.reason}`);
  }
});

/** GET `path` with one header, on a keep-alive agent; the status, or 0 on timeout and -1 on a connection error. */
function send(agent: http.Agent, path: string, headers: http.OutgoingHttpHeaders, timeoutMs = 10_000, retry = true): Promise<number> {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port: gw.port, path, headers, agent }, (res) => {
      res.on('error', () => resolve(-1)).on('end', () => resolve(res.statusCode ?? -1)).resume();
    });
    req.setTimeout(timeoutMs, () => (req.destroy(), resolve(0)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      // The one race of keep-alive: the server closed an idle socket just as the agent reused it. Not an answer.
      if (retry && req.reusedSocket && err.code === 'ECONNRESET') void send(agent, path, headers, timeoutMs, false).then(resolve);
      else resolve(-1);
    });
    req.end();
  });
}

test(`tokens end to end: ${COUNT.tokensEndToEnd} tokens through the gateway process: 200 only for what the oracle admits, else 400/401/403/431, the upstream hears of nothing else, memory returns`, async (t) => {
  const ctx: TokenContext = {
    issuer: ISSUER, audience: AUDIENCE, skew: 60, maxBytes: WIRE_MAX_BYTES, keys, nowSeconds: Date.now() / 1000, wire: true, trapUrl: trap.url,
  };
  const fuzzer = createTokenFuzzer(settings, 'wire-tokens', ctx, COUNT.wirePool);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  try {
    // maxBytes - 1 and maxBytes pass, maxBytes + 1 is refused, also end to end.
    for (const length of [WIRE_MAX_BYTES - 1, WIRE_MAX_BYTES, WIRE_MAX_BYTES + 1]) {
      const issued = issuedToken(caseRandom(settings.seed, 'wire-boundary', length), ctx, length)!;
      assert.equal(await send(agent, '/api/boundary', { 'gateway-authorization': `Bearer ${issued.token}` }), length <= WIRE_MAX_BYTES ? 200 : 401, `a valid token of ${length} characters`);
    }
    upstream.reset();
    const started = Date.now();
    const findings: string[] = [];
    const answered = new Map<number, number>();
    let mustPass = 0;
    let mayPass = 0;
    const runCase = async (i: number) => {
      if (findings.length >= MAX_FINDINGS) return;
      const c = fuzzer.make(i);
      const r = caseRandom(settings.seed, 'wire-tokens/header', i);
      const value = r.chance(0.01) ? undefined : headerSafe(r.pick(['Bearer ', 'Bearer ', 'bearer ', '', '', 'BEARER   ', 'Bearer\t', 'Basic ', 'Bearer']) + c.token);
      const status = await send(agent, `/api/fuzz/${i}`, value === undefined ? {} : { 'gateway-authorization': value });
      const expected = fuzzer.outcomes(value === undefined ? '' : tokenInHeader(value), Date.now() / 1000);
      answered.set(i, status);
      if (expected.has('accept')) (mayPass++, expected.size === 1 && mustPass++);
      // A head past the 16 KiB limit may be cut off while it is still being sent: a reset, not an answer, is fine then.
      const cutOff = status === -1 && (value ?? '').length > 16 * 1024 && !expected.has('accept');
      if (!statusesFor(expected).includes(status) && !cutOff) {
        const what = status === 0 ? 'no answer within 10 s' : status === -1 ? 'the connection failed' : `status ${status}`;
        findings.push(`${caseLabel(settings, 'wire-tokens', i)} ${c.kind}: ${c.notes.join(' | ')}\n  expected ${[...expected].join(' or ')} (${statusesFor(expected).join('/')}), got ${what}\n  header ${shown(value ?? '(none)', 600)}`);
      }
    };
    // The first fifth warms the gateway up on the same mix (JIT, heap, token cache); memory is measured from there on.
    const warm = Math.floor(COUNT.tokensEndToEnd / 5);
    await inParallel(warm, 8, runCase);
    await sleep(500);
    const rssBefore = rssMiB(gw.process.child.pid!);
    await inParallel(COUNT.tokensEndToEnd - warm, 8, (i) => runCase(warm + i));
    await sleep(200);
    const statuses = [...answered.values()];
    const passed = [...answered].filter(([, s]) => s === 200).map(([i]) => i);
    // The upstream saw exactly the requests that were answered 200, each once.
    const reached = upstream.requests.map((req) => Number(/^\/up\/fuzz\/(\d+)$/.exec(req.url)?.[1] ?? NaN));
    for (const i of reached) if (answered.get(i) !== 200) findings.push(`${caseLabel(settings, 'wire-tokens', i)} reached the upstream but was answered ${answered.get(i)} (${reached.length} requests reached it)`);
    assert.equal(upstream.hits(), passed.length, `the upstream was contacted ${upstream.hits()} times for ${passed.length} admitted tokens\n${findings.join('\n')}`);
    assert.ok(mustPass <= passed.length && passed.length <= mayPass, `${passed.length} tokens passed; the oracle expected ${mustPass} (up to ${mayPass})\n${findings.join('\n')}`);
    assertNoFindings(findings, 'end-to-end token answers outside what the oracle allows');
    await sleep(1_000);
    const rssAfter = rssMiB(gw.process.child.pid!);
    t.diagnostic(`${answered.size} requests in ${Date.now() - started} ms: ${tally(statuses.map(String))} (${mustPass} expected to pass, ${mayPass - mustPass} more allowed to); gateway RSS ${rssBefore.toFixed(1)} -> ${rssAfter.toFixed(1)} MiB`);
    assert.ok(rssAfter - rssBefore < 64, `gateway RSS grew from ${rssBefore.toFixed(1)} to ${rssAfter.toFixed(1)} MiB`);
    await assertGatewayAlive();
    assert.equal(trap.hits(), 0, 'a key URL named by a token (jku, x5u) was fetched');
    assertNoUnhandled();
  } finally {
    agent.destroy();
  }
});

interface HeadAnswer {
  readonly kind: 'answered' | 'closed' | 'timeout' | 'garbage';
  readonly first: string;
}

const STATUS_LINE = /^HTTP\/1\.[01] \d{3}[^\r\n]*\r?\n/;

/** Sends one case on a fresh socket; done at the first status line, at close, or after `timeoutMs`. */
function exchange(port: number, c: HeadCase, timeoutMs: number): Promise<HeadAnswer> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let text = '';
    let settled = false;
    const finish = (kind: HeadAnswer['kind']) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ kind, first: text.split('\n')[0]!.slice(0, 100) });
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (STATUS_LINE.test(text)) finish('answered');
      else if (text.length >= 12 && !/^HTTP\/1\.[01] \d{3}/.test(text)) finish('garbage');
    });
    socket.on('error', () => finish(text === '' ? 'closed' : 'garbage'));
    socket.on('close', () => finish(text === '' ? 'closed' : 'garbage'));
    socket.on('connect', () => {
      const first = c.splitAt === undefined ? c.bytes : c.bytes.subarray(0, c.splitAt);
      socket.write(first);
      const rest = () => {
        if (c.splitAt !== undefined && !socket.destroyed) socket.write(c.bytes.subarray(c.splitAt));
        if (c.halfClose && !socket.destroyed) socket.end();
      };
      if (c.splitAt === undefined) rest();
      else setTimeout(rest, 5);
    });
  });
}

test(`request heads: ${COUNT.heads} raw heads (methods, targets, header names and values, framing) are answered or closed, the upstream hears only of valid tokens, valid requests keep working`, async (t) => {
  const validTokens = Array.from({ length: 5 }, validToken);
  const ctx = { validTokens, tokenHeader: 'gateway-authorization', upstreamPort: upstream.port, gatewayPort: gw.port, adminPort: Number(new URL(gw.adminUrl).port) };
  upstreamHeads.length = 0;
  const cases: HeadCase[] = [];
  const answers: string[] = [];
  const findings: string[] = [];
  const started = Date.now();
  let checks = 0;
  let slow = 0;
  await inParallel(COUNT.heads, 48, async (i) => {
    if (findings.length >= MAX_FINDINGS) return;
    const c = makeHead(caseRandom(settings.seed, 'heads', i), ctx, `h${i}`);
    cases[i] = c;
    const sent = Date.now();
    const answer = await exchange(gw.port, c, 8_000);
    if (Date.now() - sent > 500) slow++;
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(answer.first)?.[1] ?? 0);
    answers.push(answer.kind === 'answered' ? String(status) : answer.kind);
    const label = () => `${caseLabel(settings, 'heads', i)} ${c.notes.join(' | ')}\n  bytes ${shown(c.bytes, 600)}`;
    if (answer.kind === 'timeout') findings.push(`${label()}\n  neither answered nor closed within 8 s`);
    if (answer.kind === 'garbage') findings.push(`${label()}\n  answered with something other than a status line: ${shown(answer.first)}`);
    // Without a valid token nothing upstream is involved, so nothing can fail there.
    if (answer.kind === 'answered' && status >= 500 && !c.admissible) findings.push(`${label()}\n  answered ${answer.first} without a valid token`);
    if (i % 100 === 99) {
      // Meanwhile a valid request still gets through.
      const check = `check-${checks++}`;
      const res = await fetch(`${gw.url}/api/check`, { headers: { 'gateway-authorization': `Bearer ${validTokens[0]}`, 'x-fuzz-case': check } }).catch((err: Error) => err);
      if (res instanceof Error || res.status !== 200) findings.push(`${caseLabel(settings, 'heads', i)} after this case a valid request failed: ${res instanceof Error ? res.message : res.status}`);
      if (!(res instanceof Error)) await res.arrayBuffer();
    }
  });
  await sleep(500);
  // Every request the upstream heard of came with a valid token, or through a tunnel a valid CONNECT opened; no head
  // twice (a tunnel may carry several inner requests).
  const markers = upstreamHeads.map((h) => h.marker).filter((m) => m !== undefined && !m.endsWith('-inner'));
  for (const marker of new Set(markers.filter((m, i) => markers.indexOf(m) !== i))) findings.push(`the upstream received the request marked ${marker} more than once`);
  for (const { marker, head } of upstreamHeads) {
    const m = /^(?:h(\d+)(-inner)?|check-\d+)$/.exec(marker ?? '');
    const c = m?.[1] === undefined ? undefined : cases[Number(m[1])];
    if (!m) findings.push(`the upstream received a request that carries no case marker (${shown(marker)}): a request the gateway made up or one smuggled past it\n  ${shown(head, 800)}`);
    else if (c && !(m[2] ? c.innerAdmissible : c.admissible)) {
      findings.push(`${caseLabel(settings, 'heads', Number(m[1]))} ${c.notes.join(' | ')}\n  the upstream received ${m[2] ? 'the inner request' : 'this request'} without a valid token\n  bytes ${shown(c.bytes, 600)}`);
    }
  }
  t.diagnostic(`${answers.length} heads in ${Date.now() - started} ms: ${tally(answers)}; ${cases.filter((c) => c?.admissible).length} with a valid token, ${upstreamHeads.length} upstream requests (${checks} checks); ${slow} took over 0.5 s`);
  assertNoFindings(findings, 'request heads the gateway mishandled');
  await assertGatewayAlive();
  assertNoUnhandled();
});

test(`configs in process: ${COUNT.configs} mutations of a valid config are accepted or refused with path-named problems, never a throw`, async (t) => {
  const base = parseConfig(baseConfig());
  assert.ok(base.ok, `the base config is valid: ${base.ok ? '' : base.problems.join('; ')}`);
  const findings: string[] = [];
  let accepted = 0;
  for (let i = 0; i < COUNT.configs && findings.length < MAX_FINDINGS; i++) {
    const { text, notes } = (() => {
      try {
        return mutatedConfig(caseRandom(settings.seed, 'configs', i));
      } catch (err) {
        throw new Error(`${caseLabel(settings, 'configs', i)} the generator failed`, { cause: err });
      }
    })();
    const label = `${caseLabel(settings, 'configs', i)} ${notes.join(' | ')}`;
    let result: ReturnType<typeof parseConfig>;
    try {
      result = parseConfig(JSON.parse(text));
    } catch (err) {
      findings.push(`${label}\n  parseConfig threw ${err instanceof Error ? err.stack : String(err)}\n  config ${shown(text, 600)}`);
      continue;
    }
    for (const problem of configResultProblems(result)) findings.push(`${label}\n  ${problem}\n  config ${shown(text, 600)}`);
    if (!result.ok) continue;
    accepted++;
    // What was accepted must also start: the gateway compiles it (without fetching keys or listening).
    try {
      await createGateway(result.config).stop();
    } catch (err) {
      findings.push(`${label}\n  accepted, then createGateway threw ${err instanceof Error ? err.stack : String(err)}\n  config ${shown(text, 600)}`);
    }
  }
  t.diagnostic(`${COUNT.configs} configs: ${accepted} accepted, ${COUNT.configs - accepted} refused`);
  assertNoFindings(findings, 'config mutations mishandled');
  assertNoUnhandled();
});

// Found by this file (FUZZ_SEED=20250607 FUZZ_SCALE=10, configs case 41869): parseConfig checked token.maxBytes against
// its range only, so 8192.5 passed `--check`, and then createTokenVerifier threw "maxTokenBytes: expected an integer > 0":
// at start a stack trace and exit 1, on SIGHUP the death of a gateway that was serving.
test('regression: a config with token.maxBytes 8192.5 is refused with a path-named problem, or the gateway can be built from it', async () => {
  const config = { ...baseConfig(), token: { maxBytes: 8192.5 } };
  const result = parseConfig(config);
  if (!result.ok) {
    assert.ok(result.problems.some((p) => p.startsWith('token.maxBytes: ')), result.problems.join('; '));
    return;
  }
  await createGateway(result.config).stop();
});

test(`configs through the CLI: ${COUNT.cli} mutated or corrupted files make \`--check\` exit 0 or 2, never with a stack trace`, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oidc-gateway-fuzz-'));
  const findings: string[] = [];
  const exits: string[] = [];
  try {
    await inParallel(COUNT.cli, 3, async (i) => {
      const r = caseRandom(settings.seed, 'cli', i);
      // Case 0 is the valid config itself, so the harness is seen to tell 0 from 2.
      const { bytes, note } = i === 0 ? { bytes: Buffer.from(JSON.stringify(baseConfig())), note: 'valid' } : i % 2 === 0 ? { bytes: Buffer.from(mutatedConfig(r).text), note: 'mutated' } : corruptedConfigFile(r);
      const file = join(dir, `config-${i}.json`);
      writeFileSync(file, bytes);
      const proc = startProcess(GATEWAY_RUNTIME, [MAIN_JS, '--check', '--config', file]);
      const exit = await Promise.race([proc.exited, sleep(20_000, undefined, { ref: false }).then(() => proc.close())]);
      const output = proc.stdout() + proc.stderr();
      exits.push(String(exit.code ?? exit.signal));
      const label = `${caseLabel(settings, 'cli', i)} ${note}: ${shown(bytes, 300)}`;
      if (exit.code !== 0 && exit.code !== 2) findings.push(`${label}\n  exited ${exit.code ?? exit.signal}: ${shown(output, 600)}`);
      if (/^\s+at \S/m.test(output)) findings.push(`${label}\n  printed a stack trace: ${shown(output, 800)}`);
      if (i === 0 && exit.code !== 0) findings.push(`${label}\n  the valid config exited ${exit.code ?? exit.signal}: ${shown(output, 600)}`);
      if (exit.code === 2 && !/is not valid/.test(proc.stderr())) findings.push(`${label}\n  exit 2 without saying what is not valid: ${shown(output, 600)}`);
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  t.diagnostic(`${COUNT.cli} runs of ${GATEWAY_RUNTIME} --check: exits ${tally(exits)}`);
  assertNoFindings(findings, 'CLI runs mishandled');
});
