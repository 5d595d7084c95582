// `npm run demo`: the gateway end to end on this machine, with no internet.
// A local OpenID issuer stands in for GitHub, an echo server for the private
// upstream, and the real gateway (dist/main.js) runs as its own process. Three
// tokens are sent, the answers and audit lines printed, and the demo checks
// them itself (exit 1 if one is wrong). Tokens go to files, never to output.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import {
  decodeSegment, encodeSegment, generateRsaKey, signToken, startGateway, startIssuer, startServer, waitUntil,
  type Issuer, type RunningGateway, type TestKey,
} from './helpers.ts';

const AUD = 'api://ActionsOIDCGateway';
const say = (text = '') => console.log(text);
const indent = (text: string) => text.replace(/^/gm, '    ');

interface Case {
  readonly name: string;
  readonly about: string;
  readonly token: string;
  /** The status, and the reason code of a refusal. */
  readonly expect: string;
  readonly why: string;
}

// Everything started is stopped in reverse order: on success, on failure, on Ctrl-C.
const cleanups: (() => unknown)[] = [];
async function stop(): Promise<void> {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
}

try {
  say('oidc-gateway demo: everything runs on 127.0.0.1, nothing leaves this machine.\n');
  const { key, issuer, gw } = await startAll();
  const dir = mkdtempSync(join(tmpdir(), 'oidc-gateway-demo-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const failures = await sendAll(gw, dir, mintTokens(key, issuer));
  if (failures.length > 0) throw new Error(`not as expected:\n${failures.map((f) => `  - ${f}`).join('\n')}`);
  say('All three answers were as expected.');
} catch (error) {
  say(`\nThe demo failed: ${error instanceof Error ? error.message : String(error)}`);
  await stop();
  process.exit(1);
}

if (process.stdout.isTTY && !process.env.CI && !process.argv.includes('--exit')) {
  say('\nEverything is still running: paste the curl lines above into another terminal.');
  say('The tokens are valid for one hour. Press Ctrl-C to stop');
  const onSignal = () => void stopped().then(() => process.exit(0));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
} else {
  await stopped();
}

async function stopped(): Promise<void> {
  await stop();
  say('\nStopped the gateway, issuer and upstream; removed the token files.');
}

/** 1. The issuer, the upstream and the gateway, each on a port the OS picks. */
async function startAll(): Promise<{ key: TestKey; issuer: Issuer; gw: RunningGateway }> {
  const key = await generateRsaKey('demo-key');
  const issuer = await startIssuer({ keys: [key.jwk] });
  cleanups.push(() => issuer.close());
  say(`Issuer    ${issuer.issuer}  (stands in for https://token.actions.githubusercontent.com)`);
  say(`          serves ${issuer.discoveryUri} and ${issuer.jwksUri}`);

  const echo = await startServer((req, res) => {
    const shown = Object.entries(req.headers).filter(([name]) => /^(x-oidc-|x-forwarded-|x-request-id$)/.test(name));
    req.resume();
    const body = { method: req.method, path: req.url, headers: Object.fromEntries(shown) };
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body, null, 2));
  });
  cleanups.push(() => echo.close());
  say(`Upstream  ${echo.url}  (a private service; it echoes what the gateway told it)`);

  const config = {
    issuers: [{ issuer: issuer.issuer, audience: AUD }],
    routes: [
      {
        path: '/echo/',
        upstream: `${echo.url}/`,
        allow: [{ repository: 'octo-org/octo-repo', repository_id: '100001', ref: 'refs/heads/main' }],
        forwardClaims: ['repository', 'ref', 'run_id'],
      },
    ],
  };
  const gw = await startGateway(config);
  cleanups.push(() => rmSync(dirname(gw.configFile), { recursive: true, force: true }), () => gw.close());
  say(`Gateway   ${gw.url}  (node dist/main.js --config ${gw.configFile})`);
  say(`          ready: ${gw.adminUrl}/readyz answers 200 once it holds the issuer's keys`);
  say('\nIts config (listen and admin ports are 0, so the OS picks free ones):');
  say(indent(JSON.stringify(config, null, 2)));
  say('Only workflows of octo-org/octo-repo running on refs/heads/main may reach /echo/.');
  say('repository_id is pinned too, so someone who re-registers a deleted name does not pass.\n');
  return { key, issuer, gw };
}

/** 2. Three tokens signed with the issuer's key, valid for an hour. */
function mintTokens(key: TestKey, issuer: Issuer): Case[] {
  const claims = (repository: string, repositoryId: string) => {
    const now = Math.floor(Date.now() / 1000);
    return {
      iss: issuer.issuer, aud: AUD, iat: now, nbf: now, exp: now + 3600,
      sub: `repo:${repository}:ref:refs/heads/main`, repository, repository_id: repositoryId,
      repository_owner: 'octo-org', repository_owner_id: '9001', ref: 'refs/heads/main',
      workflow: 'deploy', run_id: '4242', run_attempt: '1', actor: 'octocat',
    };
  };
  const header = { alg: 'RS256', typ: 'JWT', kid: key.kid };
  const allowed = signToken(header, claims('octo-org/octo-repo', '100001'), key.privateKey);
  const other = signToken(header, claims('octo-org/other-repo', '100002'), key.privateKey);
  // other-repo's token with its payload rewritten to claim octo-org/octo-repo, and its signature kept.
  const [h, p, s] = other.split('.');
  const edited = { ...(decodeSegment(p!) as object), repository: 'octo-org/octo-repo', repository_id: '100001' };
  const tampered = `${h}.${encodeSegment(edited)}.${s}`;
  return [
    { name: 'allowed', about: 'octo-org/octo-repo on refs/heads/main', token: allowed, expect: '200',
      why: 'admitted: the upstream got the identity as x-oidc-* headers, which no client can set itself' },
    { name: 'other-repo', about: 'octo-org/other-repo: a genuine token, but not in the policy', token: other, expect: '403 claim_mismatch',
      why: 'claim_mismatch: the signature holds, yet no allow rule admits this repository (the audit line names the claim)' },
    { name: 'tampered', about: "other-repo's token, payload edited to say octo-org/octo-repo", token: tampered, expect: '401 signature_invalid',
      why: 'signature_invalid: the edited payload no longer matches its signature, so its claims are never read' },
  ];
}

/** 3. Sends each token as the curl line shows, prints what came back, and returns what went wrong. */
async function sendAll(gw: RunningGateway, dir: string, cases: readonly Case[]): Promise<string[]> {
  const failures: string[] = [];
  const url = `${gw.url}/echo/hello`;
  const audits = () => gw.logs().filter((line) => line.kind === 'request');
  for (const [i, c] of cases.entries()) {
    const file = join(dir, `${c.name}.jwt`);
    writeFileSync(file, c.token, { mode: 0o600 });
    say(`--- ${i + 1}. ${c.name}: ${c.about}`);
    say(`$ curl -sS -H "gateway-authorization: Bearer $(cat ${file})" ${url}`);
    const res = await fetch(url, { headers: { 'gateway-authorization': `Bearer ${c.token}` } });
    const body = await res.text();
    say(`  status ${res.status}, body:`);
    say(indent(body.trimEnd()));
    // The gateway writes its audit line once the exchange is over: give it a moment.
    await waitUntil(() => audits().length > i, 2_000).catch(() => undefined);
    const audit = audits()[i];
    say(`  audit line (gateway stdout): ${audit ? JSON.stringify(audit) : '(none yet)'}`);
    const got = `${res.status} ${reasonOf(body)}`.trim();
    if (got === c.expect) say(`  => ${res.status} ${c.why}\n`);
    else {
      say(`  => UNEXPECTED: wanted ${c.expect}, got ${got}\n`);
      failures.push(`${c.name}: expected ${c.expect}, got ${got}`);
    }
  }
  return failures;
}

/** The reason code of a refusal body ({"error":"<reason>","id":...}), or '' for anything else. */
function reasonOf(body: string): string {
  try {
    const error: unknown = JSON.parse(body).error;
    return typeof error === 'string' ? error : '';
  } catch {
    return '';
  }
}
