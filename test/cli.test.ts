// The command line and the process lifecycle, end to end: dist/main.js run by
// GATEWAY_RUNTIME, against a real local issuer and real upstreams.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import {
  httpGet as get,
  type HttpAnswer as Answer,
  assertCleanLog,
  GATEWAY_RUNTIME,
  MAIN_JS,
  generateRsaKey,
  workflowToken,
  startGateway,
  startIssuer,
  startProcess,
  startRecorder,
  startServer,
  waitUntil,
  type Issuer,
  type RunningGateway,
  type TestServer,
} from './helpers.js';

const ROOT = dirname(dirname(MAIN_JS));
const SHIPPED_CONFIG = join(ROOT, 'gateway.config.json');
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const AUDIENCE = 'api://ActionsOIDCGateway';
const GITHUB = 'https://token.actions.githubusercontent.com';
const RULE = { repository: 'octo-org/octo-repo', ref: 'refs/heads/main' };

const key = await generateRsaKey('cli-1');
const scratch = mkdtempSync(join(tmpdir(), 'oidc-gateway-cli-'));

/** Every token any test sent, and every gateway started: the last test scans their logs for the one in the other. */
const sentTokens: string[] = [];
const gateways: RunningGateway[] = [];
const cleanups: (() => Promise<unknown>)[] = [];

after(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  await Promise.all(cleanups.map((c) => c()));
  rmSync(scratch, { recursive: true, force: true });
});

function tokenFor(issuer: Issuer): string {
  const token = workflowToken(issuer.issuer, key, AUDIENCE, RULE);
  sentTokens.push(token);
  return token;
}

function writeConfig(name: string, content: unknown): string {
  const file = join(scratch, name);
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  return file;
}

/** A valid config for `--check`: nothing in it is contacted. */
function checkableConfig(path: string): Record<string, unknown> {
  return {
    issuers: [{ issuer: GITHUB, audience: AUDIENCE }],
    routes: [{ path, upstream: 'http://127.0.0.1:8081/', allow: [RULE] }],
  };
}

function gatewayConfig(issuer: Issuer, upstream: TestServer): Record<string, unknown> {
  return {
    issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }],
    routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [RULE] }],
  };
}

async function gateway(config: Record<string, unknown>, opts: { waitReady?: boolean } = {}): Promise<RunningGateway> {
  const gw = await startGateway(config, opts);
  gateways.push(gw);
  return gw;
}

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs dist/main.js to completion with the given arguments. */
async function cli(args: readonly string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<Run> {
  const env = { ...process.env, ...opts.env };
  if (opts.env?.GATEWAY_CONFIG === undefined) delete env.GATEWAY_CONFIG;
  const proc = startProcess(GATEWAY_RUNTIME, [MAIN_JS, ...args], { env, cwd: opts.cwd ?? scratch });
  const timer = setTimeout(() => void proc.close(), 10_000);
  const exit = await proc.exited;
  clearTimeout(timer);
  return { code: exit.code, stdout: proc.stdout(), stderr: proc.stderr() };
}

function assertRefused(answer: Answer, status: number, reason: string): void {
  assert.equal(answer.status, status, `status (body ${answer.body.slice(0, 200)})`);
  const body = JSON.parse(answer.body) as Record<string, unknown>;
  assert.deepEqual(Object.keys(body).sort(), ['error', 'id']);
  assert.equal(body.error, reason);
  assert.equal(typeof body.id, 'string');
}

/** The shared waitUntil calls `check().catch`, so checks are always async here. */
function until(check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  return waitUntil(check, timeoutMs);
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

// ---------------------------------------------------------------- the command line

test('--help exits 0 and prints the usage', async () => {
  const run = await cli(['--help']);
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /usage/i);
  for (const option of ['--config', '--check', '--help', '--version']) assert.ok(run.stdout.includes(option), `usage names ${option}`);
});

test('--version prints the version in package.json and exits 0', async () => {
  const run = await cli(['--version']);
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stdout.trim(), VERSION);
});

for (const [how, args, cwd] of [
  ['named with --config', ['--config', SHIPPED_CONFIG, '--check'], scratch],
  ['found as ./gateway.config.json', ['--check'], ROOT],
] as const) {
  test(`--check on the shipped gateway.config.json ${how} exits 0 and prints the issuer, the route and its allow rule`, async () => {
    const run = await cli(args, { cwd });
    assert.equal(run.code, 0, run.stderr);
    for (const text of [GITHUB, AUDIENCE, '/artifacts', 'http://127.0.0.1:8081/', 'octo-org/octo-repo', 'refs/heads/main']) {
      assert.ok(run.stdout.includes(text), `the summary mentions ${text}:\n${run.stdout}`);
    }
    const ruleLine = run.stdout.split('\n').find((l) => l.includes('octo-org/octo-repo'))!;
    assert.ok(ruleLine.includes('refs/heads/main'), `the rule's two claims are shown together: ${ruleLine}`);
  });
}

// Each row: where the problem is, and the config piece that causes it.
const PROBLEMS: readonly (readonly [path: string, cause: string])[] = [
  ['colour', 'an unknown top-level key'],
  ['listen.port', 'a port out of range'],
  ['token.clockSkewSeconds', 'a number given as a string'],
  ['routes[0].allow', 'a route with an empty allow'],
  ['routes[1].allow[0]', 'a rule on ref alone, which pins nothing'],
  ['routes[2].allow[0]', 'a rule whose repository is just *'],
  ['routes[3].upstream', 'an ftp upstream'],
  ['routes[4].upstream', 'an upstream that is not a URL'],
  ['routes[5].allow[0].ref', 'a claim pattern that is a number'],
  ['routes[6].methodz', 'an unknown route key'],
];

test('--check prints each tunnel entry with its destinations and allow rules', async () => {
  const file = writeConfig('tunnels.json', {
    issuers: [{ issuer: 'https://token.actions.githubusercontent.com', audience: 'api://ActionsOIDCGateway' }],
    tunnels: [{ to: ['db.internal:5432', '*.svc.internal:443'], allow: [{ repository: 'octo-org/octo-repo', ref: 'refs/heads/main' }] }],
  });
  const run = await cli(['--check', '--config', file]);
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /tunnel to db\.internal:5432, \*\.svc\.internal:443\n  allow repository=octo-org\/octo-repo and ref=refs\/heads\/main/);
});

test('--check on a config with many problems exits 2 and prints every problem with its JSON path', async () => {
  const upstream = 'http://127.0.0.1:8081/';
  const file = writeConfig('broken.json', {
    listen: { host: '127.0.0.1', port: 70_000 },
    issuers: [{ issuer: GITHUB, audience: AUDIENCE }],
    token: { clockSkewSeconds: '60' },
    colour: 'blue',
    routes: [
      { path: '/empty', upstream, allow: [] },
      { path: '/ref-only', upstream, allow: [{ ref: 'refs/heads/main' }] },
      { path: '/anyone', upstream, allow: [{ repository: '*' }] },
      { path: '/ftp', upstream: 'ftp://files.internal/', allow: [RULE] },
      { path: '/nowhere', upstream: 'not a url', allow: [RULE] },
      { path: '/number', upstream, allow: [{ repository: 'octo-org/octo-repo', ref: 7 }] },
      { path: '/typo', upstream, allow: [RULE], methodz: ['GET'] },
    ],
  });
  const run = await cli(['--check', '--config', file]);
  assert.equal(run.code, 2, run.stdout + run.stderr);
  const output = run.stdout + run.stderr;
  for (const [path, cause] of PROBLEMS) {
    assert.match(output, new RegExp(`(^|\\s)${escape(path)}: \\S`, 'm'), `${cause} is reported as "${path}: ..." in:\n${output}`);
  }
  assert.ok(!run.stdout.includes('"kind":"start"'), 'nothing started');
});

for (const [what, args, says] of [
  ['a config that is not JSON', () => ['--check', '--config', writeConfig('not.json', '{"routes": [')], 'not.json'],
  ['a config file that does not exist', () => ['--config', join(scratch, 'missing.json')], 'missing.json'],
  ['an unknown argument', () => ['--frobnicate'], '--frobnicate'],
  ['--config without a file', () => ['--config'], '--config'],
  ['--check given an inline value', () => ['--check=false', '--config', writeConfig('inline-check.json', checkableConfig('/inline'))], '--check=false'],
] as const) {
  test(`${what} exits 2 and says what was wrong`, async () => {
    const run = await cli(args());
    assert.equal(run.code, 2, run.stdout + run.stderr);
    assert.ok((run.stdout + run.stderr).includes(says), `the output names ${says}:\n${run.stderr}`);
    assert.ok(!run.stdout.includes('"kind":"start"'), 'nothing started');
  });
}

test('GATEWAY_CONFIG names the config file when --config is absent, and --config wins over it', async () => {
  const fromEnv = writeConfig('from-env.json', checkableConfig('/from-env'));
  const fromFlag = writeConfig('from-flag.json', checkableConfig('/from-flag'));
  // The working directory has no gateway.config.json: only the variable can lead to a file.
  const viaEnv = await cli(['--check'], { env: { GATEWAY_CONFIG: fromEnv } });
  assert.equal(viaEnv.code, 0, viaEnv.stderr);
  assert.ok(viaEnv.stdout.includes('/from-env'), viaEnv.stdout);

  const viaFlag = await cli(['--check', '--config', fromFlag], { env: { GATEWAY_CONFIG: fromEnv } });
  assert.equal(viaFlag.code, 0, viaFlag.stderr);
  assert.ok(viaFlag.stdout.includes('/from-flag') && !viaFlag.stdout.includes('/from-env'), viaFlag.stdout);
});

// ---------------------------------------------------------------- lifecycle

test('with the issuer down the gateway starts unready and answers 503 jwks_unavailable, then becomes ready within 10 s of the issuer coming up', { timeout: 30_000 }, async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  const upstream = await startRecorder();
  cleanups.push(() => issuer.close(), () => upstream.close());
  await issuer.down();
  const gw = await gateway(gatewayConfig(issuer, upstream), { waitReady: false });
  const token = tokenFor(issuer);

  assert.equal((await get(`${gw.adminUrl}/healthz`)).status, 200);
  assert.equal((await get(`${gw.adminUrl}/readyz`)).status, 503);
  const refused = await get(`${gw.url}/api/x`, { 'gateway-authorization': `Bearer ${token}` });
  assertRefused(refused, 503, 'jwks_unavailable');
  assert.match(String(refused.headers['retry-after']), /^\d+$/);
  assert.equal(upstream.hits(), 0);
  assert.equal(upstream.connections(), 0);

  await issuer.up();
  const upAt = Date.now();
  await until(async () => (await get(`${gw.adminUrl}/readyz`)).status === 200, 10_000);
  assert.ok(Date.now() - upAt < 10_000);
  const admitted = await get(`${gw.url}/api/x`, { 'gateway-authorization': `Bearer ${token}` });
  assert.equal(admitted.status, 200, admitted.body);
  assert.equal(upstream.hits(), 1);
  assert.equal(upstream.requests[0]!.url, '/x');
});

test('the admin endpoints are not served on the public port', async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  const upstream = await startRecorder();
  cleanups.push(() => issuer.close(), () => upstream.close());
  const gw = await gateway(gatewayConfig(issuer, upstream));
  assert.notEqual(gw.adminUrl, gw.url);
  for (const path of ['/healthz', '/readyz']) {
    assertRefused(await get(gw.url + path), 404, 'route_unknown');
    assert.equal((await get(gw.adminUrl + path)).status, 200, `${path} on the admin port`);
  }
  assert.equal(upstream.hits(), 0);
});

// SIGTERM, the drain and SIGHUP are covered in lifecycle.test.ts.

// ---------------------------------------------------------------- the log

test('every line the gateways wrote to stdout is JSON, and none holds a token that was sent', async () => {
  await Promise.all(gateways.map((g) => g.close()));
  assert.ok(gateways.length >= 2 && sentTokens.length >= 1);
  for (const g of gateways) {
    assertCleanLog(g.process.stdout(), sentTokens);
  }
});

// ---------------------------------------------------------------- warnings

test('--check prints each warning after the summary as "warning: path: text", and still exits 0', async () => {
  const file = writeConfig('warned.json', {
    issuers: [{ issuer: GITHUB, audience: AUDIENCE }],
    routes: [
      { path: '/api', upstream: 'http://127.0.0.1:8081/', allow: [RULE] },
      { path: '/auth', mode: 'auth', allow: [{ repository_owner: 'octo-org' }, { repository_id: '123', sub: 'repo:octo-org@456/octo-repo@123:*' }] },
    ],
  });
  const run = await cli(['--check', '--config', file]);
  assert.equal(run.code, 0, run.stderr);
  const lines = run.stdout.trimEnd().split('\n');
  const first = lines.findIndex((l) => l.startsWith('warning: '));
  assert.ok(first > 0 && lines.slice(0, first).some((l) => l.startsWith('route /auth')), `the summary comes first:\n${run.stdout}`);
  const warnings = lines.slice(first);
  assert.deepEqual(warnings.map((l) => l.match(/^warning: (\S+): \S/)?.[1]), ['routes[0].allow[0].repository', 'routes[1].allow[0].repository_owner', 'routes[1].allow[1].sub'], run.stdout);
  assert.match(warnings[0]!, /repository_id/);
});

test('--check prints no warning line for a config whose rules pin ids', async () => {
  const file = writeConfig('pinned.json', { ...checkableConfig('/pinned'), routes: [{ path: '/pinned', upstream: 'http://127.0.0.1:8081/', allow: [{ ...RULE, repository_id: '123' }] }] });
  const run = await cli(['--check', '--config', file]);
  assert.equal(run.code, 0, run.stderr);
  assert.ok(!run.stdout.includes('warning'), run.stdout);
});

test('at start the gateway logs the config with its warnings', async () => {
  const issuer = await startIssuer({ keys: [key.jwk] });
  const upstream = await startRecorder();
  cleanups.push(() => issuer.close(), () => upstream.close());
  const gw = await gateway(gatewayConfig(issuer, upstream), { waitReady: false });
  await gw.process.waitFor(/"kind":"config"/);
  const line = gw.logs().find((l) => l.kind === 'config')!;
  assert.equal(line.result, 'ok');
  assert.ok(Array.isArray(line.warnings) && line.warnings.length === 1, JSON.stringify(line));
  assert.match(String((line.warnings as unknown[])[0]), /^routes\[0\]\.allow\[0\]\.repository: .*repository_id/);
});

test('a listen port already in use is refused at start with exit 2 and the reason, before anything is served', async () => {
  const taken = await startServer((_req, res) => res.end());
  cleanups.push(() => taken.close());
  const file = writeConfig('taken.json', { ...checkableConfig('/api'), listen: { host: '127.0.0.1', port: Number(new URL(taken.url).port) } });
  const run = await cli(['--config', file]);
  assert.equal(run.code, 2, run.stderr);
  assert.match(run.stderr, /cannot listen: .*(EADDRINUSE|in use)/i);
  assert.ok(!run.stdout.includes('"kind":"start"'), 'nothing started');
});

test('the shipped gateway.config.json loads without a policy warning: its rule pins the repository id as well', async () => {
  const run = await cli(['--config', SHIPPED_CONFIG, '--check']);
  assert.equal(run.code, 0, run.stderr);
  assert.ok(!run.stdout.includes('warning:'), run.stdout);
});

test('Bun older than 1.4 is refused at start with exit 2 and a message saying why', { timeout: 150_000 }, async (t) => {
  // Once, in the Node pass: an old Bun comes from the npm registry through npx (a CI tool, not a dependency).
  if (process.env.GATEWAY_RUNTIME) return t.skip('runs in the Node pass only');
  let oldBun = '';
  try {
    oldBun = execFileSync('npx', ['--yes', 'bun@1.3.0', '-e', 'console.log(process.execPath)'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 120_000 }).trim().split('\n').at(-1)!;
  } catch (err) {
    return t.skip(`Bun 1.3.0 could not be fetched with npx: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`);
  }
  const proc = startProcess(oldBun, [MAIN_JS, '--config', SHIPPED_CONFIG]);
  const exit = await proc.exited;
  assert.equal(exit.code, 2, proc.stderr());
  assert.match(proc.stderr(), /Bun 1\.3\.0 is too old: Bun 1\.4 or later is required/);
  assert.ok(!proc.stdout().includes('"kind":"start"'), 'nothing started');
});
