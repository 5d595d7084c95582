// Locked-down hosts (issue 7): the gateway under Node's permission model, with
// read access to its config file and dist/ and nothing else:
//   node --experimental-permission --allow-fs-read=<config> --allow-fs-read=<dist> dist/main.js --config <config>
// It must start, fetch keys from a real issuer over loopback HTTP (the model
// restricts files and child processes, not the network), admit and refuse,
// reload on SIGHUP, drain on SIGTERM and exit 0. And the model must bite: a
// config file or a jwksFile outside the allowed paths cannot be read, which
// the gateway reports cleanly. Bun ignores the flag, so these tests are
// Node-only; the static check of src/ at the end runs everywhere.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  httpGet as get,
  DISCOVERY_PATH,
  GATEWAY_RUNTIME,
  JWKS_PATH,
  MAIN_JS,
  assertLogClean,
  generateRsaKey,
  startIssuer,
  startProcess,
  startServer,
  waitUntil,
  workflowToken,
  type TestProcess,
} from './helpers.js';

const AUDIENCE = 'api://ActionsOIDCGateway';
const RULE = { repository: 'octo-org/octo-repo', repository_id: '123456789', ref: 'refs/heads/main' };
const DIST = dirname(MAIN_JS);
const SRC = fileURLToPath(new URL('../src/', import.meta.url));

// Bun accepts and ignores --experimental-permission: nothing would be restricted, so nothing would be shown.
const onBun = /bun/i.test(basename(GATEWAY_RUNTIME)) || process.versions.bun !== undefined;
const BUN_SKIP = onBun ? `Node's permission model only: ${GATEWAY_RUNTIME} is Bun, which ignores --experimental-permission` : false;
if (onBun) console.log(`locked.test.ts: skipping the permission-model tests: ${BUN_SKIP}`);
// Node 20 spells it --experimental-permission; later releases renamed it --permission.
const PERMISSION_FLAG = process.allowedNodeEnvironmentFlags.has('--permission') ? '--permission' : '--experimental-permission';

const key = onBun ? undefined : await generateRsaKey('locked-1');

const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
});

/** A temp dir holding one config file (loopback ports picked by the OS); removed after the file's tests. */
function writeConfig(config: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'oidc-gateway-locked-'));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'gateway.config.json');
  writeFileSync(file, JSON.stringify({ listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, ...config }));
  return file;
}

/** `node --experimental-permission --allow-fs-read=<each> dist/main.js --config <file>`: the flag repeated, one path each. */
function startLocked(configFile: string, allowRead: readonly string[], extra: readonly string[] = [], nodeFlags: readonly string[] = []): TestProcess {
  const args = [PERMISSION_FLAG, ...allowRead.map((p) => `--allow-fs-read=${p}`), ...nodeFlags, MAIN_JS, '--config', configFile, ...extra];
  // No NODE_OPTIONS: an inherited --import (tsx) would need node_modules, which is not allowed.
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const proc = startProcess(GATEWAY_RUNTIME, args, { env });
  cleanups.push(() => proc.close());
  return proc;
}

function logs(proc: TestProcess): Record<string, unknown>[] {
  return proc.stdout().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

test('under the permission model with read access to its config and dist/ only, the gateway starts, fetches keys over the network, admits and refuses, reloads, drains on SIGTERM and exits 0', { skip: BUN_SKIP, timeout: 30_000 }, async () => {
  const issuer = await startIssuer({ keys: [key!.jwk] });
  // An upstream that answers /slow late, so a request is in flight when SIGTERM comes.
  let heads = 0;
  const upstream = await startServer((req, res) => {
    heads++;
    req.resume();
    const reply = () => res.writeHead(200, { 'content-type': 'text/plain' }).end(`upstream saw ${req.url}`);
    if (req.url === '/slow') setTimeout(reply, 600);
    else reply();
  });
  cleanups.push(() => issuer.close(), () => upstream.close());
  const configFile = writeConfig({
    issuers: [{ issuer: issuer.issuer, audience: AUDIENCE }], // keys through discovery, over loopback HTTP
    routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [RULE] }],
    timeouts: { drainMs: 5_000 },
  });
  // Also refuse eval and new Function at run time (a V8 flag the README recommends with the permission model).
  const proc = startLocked(configFile, [configFile, DIST], [], ['--disallow-code-generation-from-strings']);

  const started = await proc.waitFor(/"kind":"start".*"port":(\d+),"adminPort":(\d+)/, 15_000);
  const [url, adminUrl] = [`http://127.0.0.1:${started[1]}`, `http://127.0.0.1:${started[2]}`];
  const start = logs(proc).find((l) => l.kind === 'start')!;
  assert.equal(start.runtime, `node ${process.versions.node}`, 'the start line states the runtime and its version');
  assert.match(String(start.runtime), /^node \d+\.\d+\.\d+$/);
  assert.match(proc.stderr(), /ExperimentalWarning: Permission/, 'the permission model is really on');

  // The network is not restricted: the keys come from the issuer over HTTP.
  await waitUntil(async () => (await get(`${adminUrl}/readyz`)).status === 200, 10_000);
  assert.equal(issuer.hits(DISCOVERY_PATH), 1);
  assert.equal(issuer.hits(JWKS_PATH), 1);
  assert.equal((await get(`${adminUrl}/healthz`)).status, 200);
  assert.match((await get(`${adminUrl}/metrics`)).body, /^oidc_gateway_ready 1$/m);

  const token = workflowToken(issuer.issuer, key!, AUDIENCE, RULE);
  const admitted = await get(`${url}/api/x`, { 'gateway-authorization': `Bearer ${token}` });
  assert.equal(admitted.status, 200, admitted.body);
  assert.equal(admitted.body, 'upstream saw /x');
  assert.equal(heads, 1);

  // A token whose signature does not hold (one character inside the signature changed, which keeps the
  // base64url canonical; the last one carries padding bits): 401, the upstream never asked.
  const at = token.length - 10;
  const forged = `${token.slice(0, at)}${token[at] === 'A' ? 'B' : 'A'}${token.slice(at + 1)}`;
  const refused = await get(`${url}/api/x`, { 'gateway-authorization': `Bearer ${forged}` });
  assert.equal(refused.status, 401, refused.body);
  assert.equal((JSON.parse(refused.body) as { error: string }).error, 'signature_invalid');
  const stranger = await get(`${url}/api/x`, { 'gateway-authorization': `Bearer ${workflowToken(issuer.issuer, key!, AUDIENCE, { ...RULE, repository: 'evil/repo', repository_id: '666' })}` });
  assert.equal(stranger.status, 403, stranger.body);
  assert.equal(heads, 1, 'refused requests never reached the upstream');

  // SIGHUP re-reads the (allowed) config file: what systemd's ExecReload does.
  proc.child.kill('SIGHUP');
  await waitUntil(() => logs(proc).some((l) => l.kind === 'config' && l.reloaded === true && l.result === 'ok'), 5_000);

  // SIGTERM with a request in flight: it finishes with 200, then the process exits 0.
  const slow = get(`${url}/api/slow`, { 'gateway-authorization': `Bearer ${token}` });
  await waitUntil(() => heads === 2, 5_000);
  proc.child.kill('SIGTERM');
  await proc.waitFor(/"kind":"stop","signal":"SIGTERM"/);
  assert.equal((await get(`${adminUrl}/readyz`)).status, 503, 'unready as soon as the drain begins');
  const drained = await slow;
  assert.equal(drained.status, 200, drained.body);
  assert.equal(drained.body, 'upstream saw /slow');
  assert.deepEqual(await proc.exited, { code: 0, signal: null });

  const requests = logs(proc).filter((l) => l.kind === 'request');
  assert.deepEqual(requests.map((l) => [l.path, l.status]), [['/api/x', 200], ['/api/x', 401], ['/api/x', 403], ['/api/slow', 200]]);
  assertLogClean(proc.stdout());
  assert.doesNotMatch(proc.stderr(), /ERR_ACCESS_DENIED|^\s+at /m, `nothing was denied and nothing crashed: ${proc.stderr()}`);
});

test('the model restricts files: the same command without read access to the config file fails at start with exit 2 and a reason naming the file, not a stack trace', { skip: BUN_SKIP, timeout: 20_000 }, async () => {
  const configFile = writeConfig({
    issuers: [{ issuer: 'https://token.actions.githubusercontent.com', audience: AUDIENCE }],
    routes: [{ path: '/api', upstream: 'http://127.0.0.1:9/', allow: [RULE] }],
  });
  // Proof that the file itself is fine: with access granted, --check accepts it.
  const checked = startLocked(configFile, [configFile, DIST], ['--check']);
  assert.deepEqual(await checked.exited, { code: 0, signal: null }, checked.stderr());
  assert.match(checked.stdout(), /^route \/api -> /m);

  const proc = startLocked(configFile, [DIST]);
  assert.deepEqual(await proc.exited, { code: 2, signal: null }, `stdout: ${proc.stdout()}\nstderr: ${proc.stderr()}`);
  const stderr = proc.stderr();
  const ours = stderr.split('\n').filter((l) => l.startsWith('oidc-gateway: '));
  assert.equal(ours.length, 1, stderr);
  assert.ok(ours[0]!.includes(configFile), `the message names the file: ${stderr}`);
  assert.match(stderr, /restricted|denied|permission/i, `the message says why: ${stderr}`);
  assert.ok(ours[0]!.includes(`--allow-fs-read=${configFile}`) || stderr.includes(`--allow-fs-read=${configFile}`), `the message names the flag that grants it: ${stderr}`);
  assert.doesNotMatch(stderr, /^\s+at /m, `a stack trace instead of a message: ${stderr}`);
  assert.doesNotMatch(stderr, /node:internal|Error \[ERR_/, `a crash instead of a message: ${stderr}`);
  assert.equal(proc.stdout(), '', 'no start line: it never listened');
});

test('the model restricts files: a jwksFile outside the allowed paths cannot be read (the gateway logs ERR_ACCESS_DENIED and stays unready); allowed with its own --allow-fs-read, it serves', { skip: BUN_SKIP, timeout: 20_000 }, async () => {
  const jwksDir = mkdtempSync(join(tmpdir(), 'oidc-gateway-locked-jwks-'));
  cleanups.push(async () => rmSync(jwksDir, { recursive: true, force: true }));
  const jwksFile = join(jwksDir, 'jwks.json');
  writeFileSync(jwksFile, JSON.stringify({ keys: [key!.jwk] }));
  const issuer = 'https://token.actions.githubusercontent.com';
  const upstream = await startServer((req, res) => (req.resume(), res.writeHead(200).end('ok')));
  cleanups.push(() => upstream.close());
  const configFile = writeConfig({
    issuers: [{ issuer, audience: AUDIENCE, jwksFile }],
    routes: [{ path: '/api', upstream: `${upstream.url}/`, allow: [RULE] }],
    timeouts: { drainMs: 500 },
  });

  const denied = startLocked(configFile, [configFile, DIST]);
  const startedDenied = await denied.waitFor(/"kind":"start".*"adminPort":(\d+)/, 15_000);
  const keysError = await denied.waitFor(/"kind":"keys".*"result":"error".*/, 5_000);
  assert.match(keysError[0], /ERR_ACCESS_DENIED/);
  const readyz = await get(`http://127.0.0.1:${startedDenied[1]}/readyz`);
  assert.equal(readyz.status, 503, readyz.body);
  denied.child.kill('SIGTERM');
  assert.deepEqual(await denied.exited, { code: 0, signal: null });

  const allowed = startLocked(configFile, [configFile, jwksFile, DIST]);
  const started = await allowed.waitFor(/"kind":"start".*"port":(\d+),"adminPort":(\d+)/, 15_000);
  await waitUntil(async () => (await get(`http://127.0.0.1:${started[2]}/readyz`)).status === 200, 10_000);
  const answer = await get(`http://127.0.0.1:${started[1]}/api/x`, { 'gateway-authorization': `Bearer ${workflowToken(issuer, key!, AUDIENCE, RULE)}` });
  assert.equal(answer.status, 200, answer.body);
  allowed.child.kill('SIGTERM');
  assert.deepEqual(await allowed.exited, { code: 0, signal: null });
  assertLogClean(denied.stdout());
  assertLogClean(allowed.stdout());
});

test('src/ has no dynamic code, no child processes, no regular expression built at run time, and no file writes', () => {
  const forbidden: [string, RegExp][] = [
    ['eval', /\beval\s*\(/],
    ['new Function / Function()', /\bnew\s+Function\b|(?<![.\w])Function\s*\(/],
    ['child_process', /child_process/],
    ['new RegExp / RegExp()', /\bnew\s+RegExp\b|(?<![.\w])RegExp\s*\(/],
    ['node:vm', /['"](node:)?vm['"]/],
    ['worker_threads', /worker_threads/],
    ['dynamic import()', /(?<![.\w])import\s*\(/],
    ['a string as setTimeout/setInterval code', /\bset(Timeout|Interval)\s*\(\s*['"`]/],
    ['file writes', /\b(writeFile|appendFile|createWriteStream|mkdir|rm|rmdir|unlink|rename|copyFile|symlink|truncate|chmod|chown|utimes)(Sync)?\s*\(/],
  ];
  const files = readdirSync(SRC).filter((f) => f.endsWith('.ts'));
  assert.ok(files.length > 5, `src/ holds the sources (${files.join(', ')})`);
  const found: string[] = [];
  for (const file of files) {
    // Block comments and whole-line comments may talk about these things; code may not.
    const code = readFileSync(join(SRC, file), 'utf8').replace(/\/\*[\s\S]*?\*\//g, (c) => c.replace(/[^\n]/g, ' '));
    code.split('\n').forEach((line, i) => {
      if (/^\s*\/\//.test(line)) return;
      for (const [what, pattern] of forbidden) if (pattern.test(line)) found.push(`src/${file}:${i + 1}: ${what}: ${line.trim()}`);
    });
  }
  assert.deepEqual(found, []);
});
