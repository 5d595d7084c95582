// `oidc-gateway explain`, end to end: dist/main.js run by GATEWAY_RUNTIME
// against a real local issuer. Each case asserts the lines printed, the exit
// code, and that the token never appears in the output.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GATEWAY_RUNTIME, JWKS_PATH, MAIN_JS, generateRsaKey, signToken, startIssuer } from './helpers.js';

const AUDIENCE = 'api://ActionsOIDCGateway';
const RULE = { repository: 'octo-org/octo-repo', ref: 'refs/heads/main' };
const key = await generateRsaKey('explain-1');
// The issuer the tokens name, and a trap for the usage errors, which must contact no issuer at all.
const [issuer, trap] = await Promise.all([startIssuer({ keys: [key.jwk] }), startIssuer({ keys: [key.jwk] })]);
const scratch = mkdtempSync(join(tmpdir(), 'oidc-gateway-explain-'));
after(() => Promise.all([issuer.close(), trap.close(), rmSync(scratch, { recursive: true, force: true })]));

function file(name: string, content: unknown): string {
  const path = join(scratch, name);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
}

const configFor = (iss: string) => ({
  issuers: [{ issuer: iss, audience: AUDIENCE }],
  routes: [
    { path: '/api', upstream: 'http://127.0.0.1:9/', methods: ['GET', 'HEAD'], allow: [RULE] },
    { path: '/deploy', upstream: 'http://127.0.0.1:9/', allow: [{ repository: 'octo-org/octo-repo', environment: ['production', 'staging'] }, { repository: 'octo-org/other', ref: 'refs/tags/v*' }] },
  ],
  tunnels: [
    { to: ['db.internal:5432', '*.svc.internal:443'], allow: [RULE] },
    { to: ['vault.internal:8200'], allow: [{ repository: 'octo-org/octo-repo', environment: 'production' }] },
  ],
});
const CONFIG = file('gateway.config.json', configFor(issuer.issuer));
const TRAP_CONFIG = file('trap.config.json', configFor(trap.issuer));

const now = Math.floor(Date.now() / 1000);
const CLAIMS = { iss: issuer.issuer, aud: AUDIENCE, sub: 'repo:octo-org/octo-repo:ref:refs/heads/main', ...RULE, sha: 'abc123', run_id: 42, iat: now, nbf: now, exp: now + 3600 };
const IDENTITY = `identity: iss=${issuer.issuer} sub=repo:octo-org/octo-repo:ref:refs/heads/main repository=octo-org/octo-repo ref=refs/heads/main sha=abc123 run_id=42`;
const REPORT = [
  'route /api [GET, HEAD]: allowed by rule 0',
  '  rule 0: admits',
  'route /deploy: refused',
  '  rule 0: environment is not in the token, needs "production" or "staging"',
  '  rule 1: repository "octo-org/octo-repo", needs "octo-org/other"',
  'tunnel to db.internal:5432, *.svc.internal:443: allowed by rule 0',
  '  rule 0: admits',
  'tunnel to vault.internal:8200: refused',
  '  rule 0: environment is not in the token, needs "production"',
];

const sign = (claims: object) => signToken({ alg: 'RS256', typ: 'JWT', kid: key.kid }, claims, key.privateKey);
const TOKEN = sign(CLAIMS);
const TOKEN_FILE = file('token', `${TOKEN}\n`);
const EXPIRED_CLAIMS = { ...CLAIMS, iat: now - 7200, nbf: now - 7200, exp: now - 3600 };
const [header, , signature] = TOKEN.split('.');
const TAMPERED = `${header}.${Buffer.from(JSON.stringify({ ...CLAIMS, repository: 'octo-org/octo-repo-fork' })).toString('base64url')}.${signature}`;
const tokens = [TOKEN, TAMPERED, sign(EXPIRED_CLAIMS)];

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly lines: string[];
}

/** Runs `dist/main.js explain --config CONFIG ...args` to completion, with `stdin` piped in. */
function explain(args: readonly string[], opts: { stdin?: string; config?: string | null } = {}): Promise<Run> {
  const config = opts.config === null ? [] : ['--config', opts.config ?? CONFIG];
  const child = spawn(GATEWAY_RUNTIME, [MAIN_JS, 'explain', ...config, ...args], { cwd: scratch, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  child.stdin.on('error', () => {});
  child.stdin.end(opts.stdin ?? '');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  return new Promise((resolve) => {
    child.on('close', (code) => {
      clearTimeout(timer);
      for (const t of tokens) {
        for (const part of [t, t.slice(t.lastIndexOf('.') + 1)]) {
          assert.ok(!stdout.includes(part) && !stderr.includes(part), `a token in the output:\n${stdout}${stderr}`);
        }
      }
      resolve({ code, stdout, stderr, lines: stdout.split('\n').filter((l) => l !== '') });
    });
  });
}

// ---------------------------------------------------------------- a verified token

test('a verified token allowed on --path prints every route and tunnel with each rule, then "allowed (route /api)", exits 0, and fetches the keys once', async () => {
  issuer.resetHits();
  const run = await explain(['--token', TOKEN_FILE, '--path', '/api/builds?x=1']);
  assert.equal(run.code, 0, run.stdout + run.stderr);
  assert.deepEqual(run.lines, ['token: verified', IDENTITY, ...REPORT, 'path /api/builds?x=1: allowed (route /api)']);
  assert.equal(issuer.hits(JWKS_PATH), 1);
  assert.equal(issuer.hits(), 2, 'one discovery, one JWKS fetch');
});

test('a token refused on --path names each rule\'s failing claim, its value and the patterns, and exits 1', async () => {
  const run = await explain(['--token', TOKEN_FILE, '--path', '/deploy/now']);
  assert.equal(run.code, 1, run.stdout + run.stderr);
  assert.ok(run.lines.includes('  rule 1: repository "octo-org/octo-repo", needs "octo-org/other"'), run.stdout);
  assert.ok(run.lines.includes('  rule 0: environment is not in the token, needs "production" or "staging"'), run.stdout);
  assert.equal(run.lines.at(-1), 'path /deploy/now: refused: claim_mismatch (route /deploy)');
});

// Verdicts only: these run side by side (none of them counts the issuer's requests).
describe('verdicts on --path and --connect', { concurrency: true }, () => {
  for (const [path, verdict] of [
    ['/nowhere', 'refused: route_unknown'],
    ['/api/../deploy', 'refused: bad_request'],
    ['/%61pi/x', 'refused: bad_request'],
    ['/api;x/y', 'refused: bad_request'],
    ['//evil.example/api', 'refused: bad_request'],
    ['/api#x', 'refused: bad_request'],
    ['/API/x', 'refused: bad_request'],
  ] as const) {
    test(`--path ${path} ends with "${verdict}" and exits 1`, async () => {
      const run = await explain(['--token', TOKEN_FILE, '--path', path]);
      assert.equal(run.code, 1, run.stdout + run.stderr);
      assert.equal(run.lines.at(-1), `path ${path}: ${verdict}`);
    });
  }

  for (const [target, verdict, code] of [
    ['db.internal:5432', 'allowed', 0],
    ['api.svc.internal:443', 'allowed', 0],
    ['db.internal:5433', 'refused: connect_target_denied', 1],
    ['other.internal:22', 'refused: connect_target_denied', 1],
    ['vault.internal:8200', 'refused: claim_mismatch', 1],
    ['db.internal', 'refused: bad_request', 1],
  ] as const) {
    test(`--connect ${target} says ${verdict} and exits ${code}`, async () => {
      const run = await explain(['--token', TOKEN_FILE, '--connect', target]);
      assert.equal(run.code, code, run.stdout + run.stderr);
      const last = run.lines.at(-1)!;
      assert.ok(last === `connect ${target}: ${verdict}` || (code === 0 && last.startsWith(`connect ${target}: allowed (`)), last);
    });
  }
});

test('without --path or --connect it exits 0 when some route or tunnel admits, and 1 when none does', async () => {
  const admitted = await explain(['--token', TOKEN_FILE]);
  assert.equal(admitted.code, 0, admitted.stdout + admitted.stderr);
  assert.deepEqual(admitted.lines, ['token: verified', IDENTITY, ...REPORT]);

  const stranger = file('stranger.json', { ...CLAIMS, repository: 'octo-evil/octo-repo' });
  const refused = await explain(['--claims', stranger]);
  assert.equal(refused.code, 1, refused.stdout + refused.stderr);
  assert.ok(!refused.lines.some((l) => l.includes('allowed')), refused.stdout);
  assert.ok(refused.lines.includes('  rule 0: repository "octo-evil/octo-repo", needs "octo-org/octo-repo"'), refused.stdout);
});

test('--token - reads the token from stdin', async () => {
  const run = await explain(['--token', '-', '--path', '/api/x'], { stdin: `${TOKEN}\n` });
  assert.equal(run.code, 0, run.stdout + run.stderr);
  assert.equal(run.lines[0], 'token: verified');
  assert.equal(run.lines.at(-1), 'path /api/x: allowed (route /api)');
});

// ---------------------------------------------------------------- refused tokens, and claims taken as given

test('a tampered token is refused as signature_invalid, exits 1, and none of its claims is printed', async () => {
  const run = await explain(['--token', file('tampered', TAMPERED), '--path', '/api/x']);
  assert.equal(run.code, 1, run.stdout + run.stderr);
  assert.deepEqual(run.lines, ['token: refused: signature_invalid']);
  assert.ok(!run.stdout.includes('octo-repo-fork'));
});

test('an expired token is refused as token_expired, and its claims given with --claims are explained as given', async () => {
  const asToken = await explain(['--token', file('expired', sign(EXPIRED_CLAIMS)), '--path', '/api/x']);
  assert.equal(asToken.code, 1, asToken.stdout + asToken.stderr);
  assert.deepEqual(asToken.lines, ['token: refused: token_expired']);

  issuer.resetHits();
  const asClaims = await explain(['--claims', file('expired.json', EXPIRED_CLAIMS), '--path', '/api/x']);
  assert.equal(asClaims.code, 0, asClaims.stdout + asClaims.stderr);
  assert.deepEqual(asClaims.lines, ['claims: taken as given, not verified', IDENTITY, ...REPORT, 'path /api/x: allowed (route /api)']);
  assert.equal(issuer.hits(), 0, 'claims are not verified, so no keys are fetched');
});

test('claim values holding control characters are printed escaped: a claim cannot clear the terminal or forge a verdict line', async () => {
  const forged = { ...EXPIRED_CLAIMS, ref: 'refs/heads/dev\u001b[2J\u001b[1A\rroute /api: allowed\npath /api/x: allowed (route /api)' };
  const run = await explain(['--claims', file('forged.json', forged), '--path', '/deploy/x']);
  assert.equal(run.code, 1, run.stdout + run.stderr);
  assert.ok(!/[\u0000-\u0008\u000b-\u001f\u007f]/.test(run.stdout), `no raw control character: ${JSON.stringify(run.stdout)}`);
  assert.equal(run.lines.filter((l) => l.startsWith('path ')).length, 1, 'one verdict line');
  assert.equal(run.lines.at(-1), 'path /deploy/x: refused: claim_mismatch (route /deploy)');
  assert.ok(run.lines.some((l) => l.includes('ref=refs/heads/dev\\u001b[2J\\u001b[1A\\rroute /api: allowed\\npath')), run.stdout);
});

test('with the issuer down, --token prints "token: refused: jwks_unavailable" and exits 2: keys that cannot be had are no refusal', async () => {
  const down = await startIssuer({ keys: [key.jwk] });
  await down.down();
  const token = sign({ ...CLAIMS, iss: down.issuer });
  tokens.push(token);
  const run = await explain(['--token', file('down-token', token), '--path', '/api/x'], { config: file('down.config.json', configFor(down.issuer)) }).finally(() => down.close());
  assert.equal(run.code, 2, run.stdout + run.stderr);
  assert.deepEqual(run.lines, ['token: refused: jwks_unavailable']);
});

// ---------------------------------------------------------------- usage errors

const CLAIMS_FILE = file('claims.json', CLAIMS);
describe('usage errors', { concurrency: true }, () => {
  for (const [what, args, opts] of [
    ['both --token and --claims', () => ['--token', TOKEN_FILE, '--claims', CLAIMS_FILE], {}],
    ['neither --token nor --claims', () => ['--path', '/api/x'], {}],
    ['both --path and --connect', () => ['--token', TOKEN_FILE, '--path', '/api/x', '--connect', 'db.internal:5432'], {}],
    ['an unknown argument', () => ['--token', TOKEN_FILE, '--frobnicate'], {}],
    ['--check, which explain does not take', () => ['--claims', CLAIMS_FILE, '--check'], {}],
    ['--path without a value', () => ['--claims', CLAIMS_FILE, '--path'], {}],
    ['a token file that does not exist', () => ['--token', join(scratch, 'missing-token')], {}],
    ['a claims file that does not exist', () => ['--claims', join(scratch, 'missing.json')], {}],
    ['claims that are not JSON', () => ['--claims', file('broken.json', '{"repository": ')], {}],
    ['claims that are JSON but not an object', () => ['--claims', file('array.json', [CLAIMS])], {}],
    ['an invalid config', () => ['--claims', CLAIMS_FILE], { config: file('invalid-config.json', { issuers: [{ issuer: trap.issuer, audience: AUDIENCE }], routes: [{ path: '/api', upstream: 'http://127.0.0.1:9/', allow: [{ ref: 'refs/heads/main' }] }] }) }],
    ['a config file that does not exist', () => ['--claims', CLAIMS_FILE], { config: join(scratch, 'no-config.json') }],
  ] as const) {
    test(`explain with ${what} exits 2, says why, and contacts no issuer`, async () => {
      const run = await explain(args(), { config: TRAP_CONFIG, ...opts });
      assert.equal(run.code, 2, run.stdout + run.stderr);
      assert.ok((run.stdout + run.stderr).trim() !== '', 'says why');
      assert.ok(!/^(token|path|connect|route|tunnel)/m.test(run.stdout), `no verdict printed:\n${run.stdout}`);
      assert.equal(trap.hits(), 0);
    });
  }
});
