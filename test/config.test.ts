import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DEFAULTS, parseConfig, type ConfigResult } from '../src/config.ts';
import { compilePolicy, evaluate } from '../src/policy.ts';

const GITHUB = 'https://token.actions.githubusercontent.com';
const GHES = 'https://ghes.example.com/_services/token';
const PIN = 'does not pin who may come in: constrain one of repository, sub, workflow_ref, job_workflow_ref, repository_id, repository_owner, repository_owner_id, enterprise, enterprise_id (ids and owners exactly, the others with the owner spelled out, such as "octo-org/*")';
const PATH = 'expected an absolute path of plain segments, such as "/artifacts/"';
const ISS = 'with more than one issuer, every rule must name its issuer exactly';
const NO_RULE = 'expected at least one rule: with no rule no one may pass, so it is refused';
const NO_ROUTES = 'routes: expected at least one route or tunnel';

type Json = Record<string, any>;

/** The smallest config that passes: one issuer, one route, one rule. */
function minimal(): Json {
  return {
    issuers: [{ issuer: GITHUB, audience: 'api://ActionsOIDCGateway' }],
    routes: [{ path: '/artifacts/', upstream: 'http://127.0.0.1:8081/', allow: [{ repository: 'octo-org/octo-repo' }] }],
  };
}

function problemsOf(result: ConfigResult): string[] {
  assert.equal(result.ok, false, 'expected the config to be refused');
  return result.ok ? [] : result.problems;
}

// --- valid configs ------------------------------------------------------------------

test('the shipped gateway.config.json is valid and admits only octo-org/octo-repo on refs/heads/main', () => {
  const file = fileURLToPath(new URL('../gateway.config.json', import.meta.url));
  const result = parseConfig(JSON.parse(readFileSync(file, 'utf8')));
  assert.ok(result.ok, result.ok ? '' : result.problems.join('\n'));
  const { config } = result;
  assert.deepEqual(config.issuers.map((i) => [i.issuer, i.audiences]), [[GITHUB, ['api://ActionsOIDCGateway']]]);
  assert.equal(config.routes.length, 1);
  const route = config.routes[0]!;
  assert.equal(route.upstream.hostname, '127.0.0.1');
  const policy = compilePolicy(route.allow);
  const ids: Record<string, string> = { 'octo-org/octo-repo': '123456789' };
  const claims = (repository: string, ref: string) => ({ iss: GITHUB, repository, repository_id: ids[repository] ?? '1', repository_owner: repository.split('/')[0], ref });
  assert.equal(evaluate(policy, claims('octo-org/octo-repo', 'refs/heads/main')).allowed, true);
  assert.equal(evaluate(policy, claims('octo-org/octo-repo', 'refs/heads/dev')).allowed, false);
  assert.equal(evaluate(policy, claims('octo-org/other-repo', 'refs/heads/main')).allowed, false);
  assert.equal(evaluate(policy, claims('evil-org/octo-repo', 'refs/heads/main')).allowed, false);
});

test('a minimal config is valid, with every default filled in and the route path normalised', () => {
  const result = parseConfig(minimal());
  assert.ok(result.ok, result.ok ? '' : result.problems.join('\n'));
  const { config } = result;
  assert.deepEqual(config.listen, DEFAULTS.listen);
  assert.deepEqual(config.admin, DEFAULTS.admin);
  assert.equal(config.token.header, 'gateway-authorization');
  assert.equal(config.token.clockSkewSeconds, 60);
  assert.deepEqual(config.keys, DEFAULTS.keys);
  assert.deepEqual(config.timeouts, DEFAULTS.timeouts);
  assert.deepEqual(config.trustedProxies, []);
  assert.deepEqual(config.issuers, [{ issuer: GITHUB, audiences: ['api://ActionsOIDCGateway'], jwksUri: undefined, jwksFile: undefined }]);
  const route = config.routes[0]!;
  assert.equal(route.path, '/artifacts');
  assert.ok(route.upstream instanceof URL);
  assert.equal(route.upstream.href, 'http://127.0.0.1:8081/');
  assert.deepEqual(route.allow, [{ repository: 'octo-org/octo-repo' }]);
  assert.deepEqual(route.forwardClaims, []);
  assert.equal(route.methods, undefined);
});

test('a full config with every optional field is valid and read as written', () => {
  const input = {
    listen: { host: '0.0.0.0', port: 8443 },
    admin: { host: '127.0.0.1', port: 9091 },
    issuers: [
      { issuer: GITHUB, audience: ['api://ActionsOIDCGateway', 'api://Other'] },
      { issuer: 'http://127.0.0.1:5556', audience: 'local', jwksFile: '/etc/gateway/jwks.json' },
      { issuer: GHES, audience: 'ghes', jwksUri: 'https://ghes.example.com/_services/token/.well-known/jwks' },
    ],
    token: { header: 'X-Gateway-Token', clockSkewSeconds: 0, maxAgeSeconds: 600, maxBytes: 4096, cacheSize: 500 },
    keys: { fetchTimeoutMs: 2_000, cooldownMs: 1_000, staleIfErrorMs: 0 },
    timeouts: { upstreamConnectMs: 1_000, upstreamHeadMs: 2_000, idleMs: 3_000, clientHeadersMs: 4_000 },
    trustedProxies: ['10.0.0.0/8', '192.168.1.1', 'fd00::/8', '::1'],
    routes: [
      { path: '/', upstream: 'https://root.internal/', allow: [{ iss: GITHUB, repository_id: '123' }] },
      {
        path: '/artifacts',
        upstream: 'http://artifacts.internal:8081/v1',
        allow: [
          { iss: GITHUB, repository: 'octo-org/octo-repo', ref: ['refs/heads/main', 'refs/tags/v*'] },
          { iss: [GHES, 'http://127.0.0.1:5556'], repository_owner: 'octo-org' },
        ],
        forwardClaims: ['repository', 'run_id', 'job_workflow_ref'],
        methods: ['GET', 'PUT'],
      },
    ],
  };
  const result = parseConfig(input);
  assert.ok(result.ok, result.ok ? '' : result.problems.join('\n'));
  const { config } = result;
  assert.equal(config.token.header, 'x-gateway-token');
  assert.equal(config.token.maxAgeSeconds, 600);
  assert.equal(config.token.cacheSize, 500);
  assert.deepEqual(config.issuers.map((i) => i.audiences.length), [2, 1, 1]);
  assert.deepEqual(config.routes.map((r) => r.path), ['/', '/artifacts']);
  assert.equal(config.routes[1]!.upstream.pathname, '/v1');
  assert.deepEqual(config.routes[1]!.methods, ['GET', 'PUT']);
  assert.deepEqual(config.trustedProxies, input.trustedProxies);
});

// --- invalid configs ---------------------------------------------------------------------

// Each row changes a minimal config and lists exactly the problems it must produce.
const INVALID: [what: string, change: (c: Json) => void, problems: string[]][] = [
  // unknown keys, at each level
  ['an unknown top-level key', (c) => (c.extra = 1), ['extra: unknown key']],
  ['an unknown key in listen', (c) => (c.listen = { port: 8000, extra: 1 }), ['listen.extra: unknown key']],
  ['an unknown key in admin', (c) => (c.admin = { extra: 1 }), ['admin.extra: unknown key']],
  ['an unknown key in an issuer', (c) => (c.issuers[0].jwks_uri = 'https://x/'), ['issuers[0].jwks_uri: unknown key']],
  ['an unknown key in token', (c) => (c.token = { header: 'x-token', skew: 1 }), ['token.skew: unknown key']],
  ['an unknown key in keys', (c) => (c.keys = { ttl: 1 }), ['keys.ttl: unknown key']],
  ['an unknown key in timeouts', (c) => (c.timeouts = { upstreamMs: 1 }), ['timeouts.upstreamMs: unknown key']],
  ['an unknown key in a route', (c) => (c.routes[0].upstreams = []), ['routes[0].upstreams: unknown key']],
  ['a misspelt audience', (c) => ((c.issuers[0].audiences = c.issuers[0].audience), delete c.issuers[0].audience), [
    'issuers[0].audiences: unknown key',
    'issuers[0].audience: expected a string or an array of strings',
    'issuers[0].audience: expected a non-empty string or array of them',
  ]],

  // wrong types
  ['listen as a number', (c) => (c.listen = 8000), ['listen: expected an object']],
  ['admin as an array', (c) => (c.admin = []), ['admin: expected an object']],
  ['token as a string', (c) => (c.token = 'gateway-authorization'), ['token: expected an object']],
  ['timeouts as an array', (c) => (c.timeouts = [1]), ['timeouts: expected an object']],
  ['listen.port as a string', (c) => (c.listen = { port: '8000' }), ['listen.port: expected a whole number from 0 to 65535']],
  ['listen.port as a fraction', (c) => (c.listen = { port: 80.5 }), ['listen.port: expected a whole number from 0 to 65535']],
  ['listen.port 65536', (c) => (c.listen = { port: 65536 }), ['listen.port: expected a whole number from 0 to 65535']],
  ['listen.port -1', (c) => (c.listen = { port: -1 }), ['listen.port: expected a whole number from 0 to 65535']],
  ['admin.port true', (c) => (c.admin = { port: true }), ['admin.port: expected a whole number from 0 to 65535']],
  ['an empty listen.host', (c) => (c.listen = { host: '' }), ['listen.host: expected a host name or address']],
  ['admin.host as a number', (c) => (c.admin = { host: 127 }), ['admin.host: expected a host name or address']],
  ['issuers as an object', (c) => (c.issuers = c.issuers[0]), ['issuers: expected an array', 'issuers: expected at least one issuer']],
  ['no issuers', (c) => delete c.issuers, ['issuers: required']],
  ['an empty issuers list', (c) => (c.issuers = []), ['issuers: expected at least one issuer']],
  ['an issuer that is a string', (c) => (c.issuers = [GITHUB]), [
    'issuers[0]: expected an object',
    'issuers[0].issuer: expected a URL string',
    'issuers[0].audience: expected a string or an array of strings',
    'issuers[0].audience: expected a non-empty string or array of them',
  ]],
  ['an issuer URL as a number', (c) => (c.issuers[0].issuer = 1), ['issuers[0].issuer: expected a URL string']],
  ['an audience as a number', (c) => (c.issuers[0].audience = 1), ['issuers[0].audience: expected a string or an array of strings', 'issuers[0].audience: expected a non-empty string or array of them']],
  ['an empty audience list', (c) => (c.issuers[0].audience = []), ['issuers[0].audience: expected a non-empty string or array of them']],
  ['an empty audience', (c) => (c.issuers[0].audience = ['api://x', '']), ['issuers[0].audience: expected a non-empty string or array of them']],
  ['token.header as a number', (c) => (c.token = { header: 1 }), ['token.header: expected an HTTP header name']],
  ['token.header with a space', (c) => (c.token = { header: 'gateway authorization' }), ['token.header: expected an HTTP header name']],
  ['token.header with a colon', (c) => (c.token = { header: 'x-token:' }), ['token.header: expected an HTTP header name']],
  // WSGI and Rack read underscores as dashes: X_Forwarded_For is X-Forwarded-For to them.
  ['token.header one of ours spelled with underscores', (c) => (c.token = { header: 'X_Forwarded_For' }), ['token.header: must not be a header the gateway reads or sets itself']],
  ['an empty token.header', (c) => (c.token = { header: '' }), ['token.header: expected an HTTP header name']],
  ['token.clockSkewSeconds as a string', (c) => (c.token = { clockSkewSeconds: '60' }), ['token.clockSkewSeconds: expected a whole number from 0 to 600']],
  ['token.clockSkewSeconds -1', (c) => (c.token = { clockSkewSeconds: -1 }), ['token.clockSkewSeconds: expected a whole number from 0 to 600']],
  ['token.maxAgeSeconds 0', (c) => (c.token = { maxAgeSeconds: 0 }), ['token.maxAgeSeconds: expected a whole number from 1 to 86400']],
  ['token.maxBytes 100', (c) => (c.token = { maxBytes: 100 }), ['token.maxBytes: expected a whole number from 1024 to 65536']],
  ['keys.fetchTimeoutMs 0', (c) => (c.keys = { fetchTimeoutMs: 0 }), ['keys.fetchTimeoutMs: expected a whole number from 100 to 60000']],
  // AbortSignal.timeout(5000.5) throws on Node: every key fetch would fail.
  ['keys.fetchTimeoutMs 5000.5', (c) => (c.keys = { fetchTimeoutMs: 5000.5 }), ['keys.fetchTimeoutMs: expected a whole number from 100 to 60000']],
  ['timeouts.drainMs 0.5', (c) => (c.timeouts = { drainMs: 0.5 }), ['timeouts.drainMs: expected a whole number from 0 to 600000']],
  ['keys.cooldownMs as a string', (c) => (c.keys = { cooldownMs: '30s' }), ['keys.cooldownMs: expected a whole number from 1000 to 3600000']],
  ['timeouts.upstreamHeadMs as a string', (c) => (c.timeouts = { upstreamHeadMs: '30s' }), ['timeouts.upstreamHeadMs: expected a whole number from 10 to 3600000']],
  ['timeouts.idleMs 0', (c) => (c.timeouts = { idleMs: 0 }), ['timeouts.idleMs: expected a whole number from 10 to 86400000']],
  ['trustedProxies as a number', (c) => (c.trustedProxies = 10), ['trustedProxies: expected a string or an array of strings']],
  ['trustedProxies holding a number', (c) => (c.trustedProxies = ['10.0.0.0/8', 10]), ['trustedProxies: expected a string or an array of strings']],
  ['routes as an object', (c) => (c.routes = c.routes[0]), ['routes: expected an array', NO_ROUTES]],
  ['no routes', (c) => delete c.routes, [NO_ROUTES]],
  ['an empty routes list', (c) => (c.routes = []), [NO_ROUTES]],
  ['a route that is a string', (c) => (c.routes = ['/artifacts']), [
    'routes[0]: expected an object',
    `routes[0].path: ${PATH}`,
    'routes[0].upstream: expected an absolute http or https URL',
    `routes[0].allow: ${NO_RULE}`,
  ]],

  // upstreams
  ['an ftp upstream', (c) => (c.routes[0].upstream = 'ftp://files.internal/'), ['routes[0].upstream: expected an http or https URL']],
  ['a file upstream', (c) => (c.routes[0].upstream = 'file:///etc/passwd'), ['routes[0].upstream: expected an http or https URL']],
  ['a ws upstream', (c) => (c.routes[0].upstream = 'ws://127.0.0.1:8081/'), ['routes[0].upstream: expected an http or https URL']],
  ['an upstream with credentials', (c) => (c.routes[0].upstream = 'http://user:pw@127.0.0.1:8081/'), ['routes[0].upstream: must not carry credentials, a query or a fragment']],
  ['an upstream with a user name only', (c) => (c.routes[0].upstream = 'http://user@127.0.0.1:8081/'), ['routes[0].upstream: must not carry credentials, a query or a fragment']],
  ['an upstream with a query', (c) => (c.routes[0].upstream = 'http://127.0.0.1:8081/?key=secret'), ['routes[0].upstream: must not carry credentials, a query or a fragment']],
  ['an upstream with a fragment', (c) => (c.routes[0].upstream = 'http://127.0.0.1:8081/#x'), ['routes[0].upstream: must not carry credentials, a query or a fragment']],
  ['a relative upstream', (c) => (c.routes[0].upstream = '/internal'), ['routes[0].upstream: expected an absolute http or https URL']],
  ['an upstream that is not a URL', (c) => (c.routes[0].upstream = 'artifacts.internal:8081'), ['routes[0].upstream: expected an http or https URL']],
  ['no upstream', (c) => delete c.routes[0].upstream, ['routes[0].upstream: expected an absolute http or https URL']],
  ['an upstream as a number', (c) => (c.routes[0].upstream = 8081), ['routes[0].upstream: expected an absolute http or https URL']],

  // route paths
  ...['a', '', 'artifacts/', '/a/../b', '/a/./b', '/..', '/a//b', '//a', '/a%2f', '/a%2e%2e', '/a b', '/a\\b', '/caf\u00e9', '/a\nb'].map(
    (path): [string, (c: Json) => void, string[]] => [`the route path ${JSON.stringify(path)}`, (c) => (c.routes[0].path = path), [`routes[0].path: ${PATH}`]],
  ),
  ['no route path', (c) => delete c.routes[0].path, [`routes[0].path: ${PATH}`]],
  ['a route path as a number', (c) => (c.routes[0].path = 1), [`routes[0].path: ${PATH}`]],
  ['duplicate route paths', (c) => c.routes.push({ ...c.routes[0] }), ['routes[1].path: duplicate of routes[0].path']],
  ['route paths "/a" and "/a/"', (c) => c.routes.push({ ...c.routes[0], path: '/a' }, { ...c.routes[0], path: '/a/' }), ['routes[2].path: duplicate of routes[1].path']],
  ['route paths "/" and "/"', (c) => c.routes.push({ ...c.routes[0], path: '/' }, { ...c.routes[0], path: '/' }), ['routes[2].path: duplicate of routes[1].path']],
  ['route paths differing only in case', (c) => c.routes.push({ ...c.routes[0], path: '/Files' }, { ...c.routes[0], path: '/files/' }), ['routes[2].path: duplicate of routes[1].path']],

  // allow rules
  ['an empty allow', (c) => (c.routes[0].allow = []), [`routes[0].allow: ${NO_RULE}`]],
  ['no allow', (c) => delete c.routes[0].allow, [`routes[0].allow: ${NO_RULE}`]],
  ['allow as an object', (c) => (c.routes[0].allow = { repository: 'octo-org/octo-repo' }), [
    'routes[0].allow: expected an array',
    `routes[0].allow: ${NO_RULE}`,
  ]],
  ['an allow rule on ref alone', (c) => (c.routes[0].allow = [{ ref: 'refs/heads/main' }]), [`routes[0].allow[0]: ${PIN}`]],
  ['an allow rule on aud alone', (c) => (c.routes[0].allow = [{ aud: 'api://ActionsOIDCGateway' }]), [`routes[0].allow[0]: ${PIN}`]],
  ['an allow rule on repository "*"', (c) => (c.routes[0].allow = [{ repository: '*', ref: 'refs/heads/main' }]), [`routes[0].allow[0]: ${PIN}`]],
  ['an allow rule on repository "octo*"', (c) => (c.routes[0].allow = [{ repository: 'octo*' }]), [`routes[0].allow[0]: ${PIN}`]],
  ['an allow rule on repository_owner "octo-*"', (c) => (c.routes[0].allow = [{ repository_owner: 'octo-*' }]), [`routes[0].allow[0]: ${PIN}`]],
  ['a second allow rule that pins nothing', (c) => c.routes[0].allow.push({ ref: 'refs/heads/main' }), [`routes[0].allow[1]: ${PIN}`]],
  ['an empty allow rule', (c) => (c.routes[0].allow = [{}]), ['routes[0].allow[0]: expected at least one claim']],
  ['an allow rule that is a string', (c) => (c.routes[0].allow = ['octo-org/octo-repo']), ['routes[0].allow[0]: expected an object of claim name to pattern(s)']],
  ['an allow rule that is null', (c) => (c.routes[0].allow = [null]), ['routes[0].allow[0]: expected an object of claim name to pattern(s)']],
  ['a claim pattern list holding a number, on the second route', (c) => c.routes.push({ ...c.routes[0], path: '/b', allow: [{ repository: 'octo-org/octo-repo', ref: ['refs/heads/main', 1] }] }), [
    'routes[1].allow[0].ref: expected a string or an array of strings',
  ]],
  ['an empty claim pattern', (c) => (c.routes[0].allow = [{ repository: 'octo-org/octo-repo', ref: '' }]), ['routes[0].allow[0].ref: expected non-empty patterns']],

  // several issuers
  ['two issuers and a rule without iss', (c) => c.issuers.push({ issuer: GHES, audience: 'x' }), [`routes[0].allow[0].iss: ${ISS}`]],
  ['two issuers and a rule with iss "*"', (c) => (c.issuers.push({ issuer: GHES, audience: 'x' }), (c.routes[0].allow[0].iss = '*')), [`routes[0].allow[0].iss: ${ISS}`]],
  ['two issuers and a rule with iss "https://*"', (c) => (c.issuers.push({ issuer: GHES, audience: 'x' }), (c.routes[0].allow[0].iss = 'https://*')), [`routes[0].allow[0].iss: ${ISS}`]],
  ['a duplicate issuer', (c) => (c.issuers.push({ ...c.issuers[0] }), (c.routes[0].allow[0].iss = GITHUB)), ['issuers[1].issuer: duplicate issuer']],

  // issuer URLs and key sources
  ['an http issuer on a public host', (c) => (c.issuers[0].issuer = 'http://token.actions.githubusercontent.com'), ['issuers[0].issuer: expected https (plain http only to a loopback host)']],
  ['an http issuer on a host named like loopback', (c) => (c.issuers[0].issuer = 'http://127.attacker.example'), ['issuers[0].issuer: expected https (plain http only to a loopback host)']],
  ['an issuer that is not a URL', (c) => (c.issuers[0].issuer = 'token.actions.githubusercontent.com'), ['issuers[0].issuer: expected an absolute URL']],
  ['an issuer with credentials', (c) => (c.issuers[0].issuer = 'https://u:p@token.actions.githubusercontent.com'), ['issuers[0].issuer: must not carry credentials']],
  ['both jwksUri and jwksFile', (c) => Object.assign(c.issuers[0], { jwksUri: `${GITHUB}/.well-known/jwks`, jwksFile: '/etc/jwks.json' }), ['issuers[0]: give jwksUri or jwksFile, not both']],
  ['an http jwksUri on a public host', (c) => (c.issuers[0].jwksUri = 'http://keys.example.com/jwks'), ['issuers[0].jwksUri: expected https (plain http only to a loopback host)']],
  ['a jwksUri as a number', (c) => (c.issuers[0].jwksUri = 1), ['issuers[0].jwksUri: expected a URL string']],
  ['an empty jwksFile', (c) => (c.issuers[0].jwksFile = ''), ['issuers[0].jwksFile: expected a file path']],

  // listeners
  ['admin on the public host and port', (c) => ((c.listen = { host: '127.0.0.1', port: 9090 }), (c.admin = { host: '127.0.0.1', port: 9090 })), ['admin: must not share the public listener']],
  ['admin on the default public listener', (c) => (c.admin = { host: '0.0.0.0', port: 8000 }), ['admin: must not share the public listener']],
  ['the public listener on the default admin address', (c) => (c.listen = { host: '127.0.0.1', port: 9090 }), ['admin: must not share the public listener']],

  // trusted proxies
  ['a trusted proxy that is a name', (c) => (c.trustedProxies = ['proxy.internal']), ['trustedProxies[0]: expected an address or CIDR such as 10.0.0.0/8']],
  ['an IPv4 prefix over 32', (c) => (c.trustedProxies = ['10.0.0.0/33']), ['trustedProxies[0]: expected a prefix length from 0 to 32']],
  ['an IPv6 prefix over 128', (c) => (c.trustedProxies = ['fd00::/129']), ['trustedProxies[0]: expected a prefix length from 0 to 128']],
  ['an empty prefix', (c) => (c.trustedProxies = ['10.0.0.0/']), ['trustedProxies[0]: expected a prefix length from 0 to 32']],
  ['a negative prefix', (c) => (c.trustedProxies = ['10.0.0.0/-1']), ['trustedProxies[0]: expected a prefix length from 0 to 32']],
  ['two slashes', (c) => (c.trustedProxies = ['10.0.0.0/8/8']), ['trustedProxies[0]: expected an address or CIDR such as 10.0.0.0/8']],
  ['a short IPv4 address', (c) => (c.trustedProxies = ['10.0.0/8']), ['trustedProxies[0]: expected an address or CIDR such as 10.0.0.0/8']],
  ['a bad second trusted proxy', (c) => (c.trustedProxies = ['10.0.0.0/8', '300.0.0.1']), ['trustedProxies[1]: expected an address or CIDR such as 10.0.0.0/8']],

  // forwardClaims and methods
  ['a forwardClaims name with a dash', (c) => (c.routes[0].forwardClaims = ['repository', 'run-id']), ['routes[0].forwardClaims[1]: expected a claim name of letters, digits and _']],
  ['an empty forwardClaims name', (c) => (c.routes[0].forwardClaims = ['']), ['routes[0].forwardClaims[0]: expected a claim name of letters, digits and _']],
  ['a forwardClaims name with CR/LF', (c) => (c.routes[0].forwardClaims = ['a\r\nx']), ['routes[0].forwardClaims[0]: expected a claim name of letters, digits and _']],
  ['a forwardClaims name of 65 characters', (c) => (c.routes[0].forwardClaims = ['a'.repeat(65)]), ['routes[0].forwardClaims[0]: expected a claim name of letters, digits and _']],
  ['forwardClaims as an object', (c) => (c.routes[0].forwardClaims = { repository: true }), ['routes[0].forwardClaims: expected a string or an array of strings']],
  ['a lower-case method', (c) => (c.routes[0].methods = ['get']), ['routes[0].methods[0]: expected an upper-case method name']],
  ['a method with a digit', (c) => (c.routes[0].methods = ['GET', 'P0ST']), ['routes[0].methods[1]: expected an upper-case method name']],
  ['an empty method', (c) => (c.routes[0].methods = ['']), ['routes[0].methods[0]: expected an upper-case method name']],
  ['a method with a space', (c) => (c.routes[0].methods = ['GET ']), ['routes[0].methods[0]: expected an upper-case method name']],
  ['methods as a number', (c) => (c.routes[0].methods = 1), ['routes[0].methods: expected a string or an array of strings']],

  // the token header
  ...['host', 'Host', 'HOST', 'content-length', 'transfer-encoding', 'connection'].map(
    (header): [string, (c: Json) => void, string[]] => [`token.header "${header}"`, (c) => (c.token = { header }), ['token.header: must not be a header the gateway reads or sets itself']],
  ),
];

for (const [what, change, problems] of INVALID) {
  const verdict = problems.length ? `refuses ${what} with ${problems.map((x) => JSON.stringify(x)).join(' and ')}` : `accepts ${what}, reading it as the defaults`;
  test(`parseConfig ${verdict}`, () => {
    const input = minimal();
    change(input);
    const result = parseConfig(input);
    if (problems.length === 0) {
      assert.ok(result.ok, result.ok ? '' : result.problems.join('\n'));
      return;
    }
    assert.deepEqual([...problemsOf(result)].sort(), [...problems].sort());
  });
}

// An admin listener on the public port under a wildcard public host is the same
// socket: on Linux the second bind fails with EADDRINUSE, so `--check` would pass
// a config the gateway cannot start with.
for (const host of ['0.0.0.0', '::']) {
  test(`parseConfig refuses an admin listener on the port of a public listener bound to the wildcard ${host}`, () => {
    const input = minimal();
    input.listen = { host, port: 9090 };
    input.admin = { host: '127.0.0.1', port: 9090 };
    assert.deepEqual(problemsOf(parseConfig(input)), ['admin: must not share the public listener']);
  });
}

test('parseConfig accepts listen and admin on port 0, where the system picks two different ports', () => {
  const input = minimal();
  input.listen = { host: '127.0.0.1', port: 0 };
  input.admin = { host: '127.0.0.1', port: 0 };
  assert.equal(parseConfig(input).ok, true);
});

test('parseConfig accepts plain http issuers and key URLs on loopback, and http and https upstreams', () => {
  for (const issuer of ['http://127.0.0.1:5556', 'http://localhost:5556/issuer', 'http://[::1]:5556']) {
    const input = minimal();
    input.issuers[0].issuer = issuer;
    input.issuers[0].jwksUri = `${issuer}/jwks`;
    input.routes[0].upstream = 'https://artifacts.internal/';
    assert.ok(parseConfig(input).ok, issuer);
  }
});

test('parseConfig reports several problems at once, each with its own path', () => {
  const input = {
    listen: { host: '', port: 70000, extra: true },
    issuers: [
      { issuer: 'http://issuer.example', audience: [] },
      { issuer: GHES, audience: 'x', jwksUri: `${GHES}/jwks`, jwksFile: '/k.json' },
    ],
    token: { header: 'Host' },
    trustedProxies: ['10.0.0.0/99'],
    routes: [
      { path: 'a', upstream: 'ftp://x/', allow: [] },
      { path: '/b/', upstream: 'http://u:p@b/', allow: [{ ref: 'refs/heads/main' }], forwardClaims: ['a-b'], methods: ['get'] },
      { path: '/b', upstream: 'http://b/', allow: [{ repository: 'octo-org/octo-repo' }] },
    ],
    extra: 1,
  };
  const expected = [
    'extra: unknown key',
    'listen.extra: unknown key',
    'listen.host: expected a host name or address',
    'listen.port: expected a whole number from 0 to 65535',
    'issuers[0].issuer: expected https (plain http only to a loopback host)',
    'issuers[0].audience: expected a non-empty string or array of them',
    'issuers[1]: give jwksUri or jwksFile, not both',
    'token.header: must not be a header the gateway reads or sets itself',
    'trustedProxies[0]: expected a prefix length from 0 to 32',
    `routes[0].path: ${PATH}`,
    'routes[0].upstream: expected an http or https URL',
    `routes[0].allow: ${NO_RULE}`,
    'routes[1].upstream: must not carry credentials, a query or a fragment',
    `routes[1].allow[0]: ${PIN}`,
    `routes[1].allow[0].iss: ${ISS}`,
    'routes[1].forwardClaims[0]: expected a claim name of letters, digits and _',
    'routes[1].methods[0]: expected an upper-case method name',
    `routes[2].allow[0].iss: ${ISS}`,
    'routes[2].path: duplicate of routes[1].path',
  ];
  assert.deepEqual([...problemsOf(parseConfig(input))].sort(), [...expected].sort());
});

// --- garbage in, problems out ---------------------------------------------------------------

const GARBAGE: unknown[] = [
  null, undefined, 42, 0, -1, NaN, 'x', '', true, false, [], [[]], [{}], {},
  { issuers: null, routes: null },
  { issuers: [null], routes: [null] },
  { issuers: [[]], routes: [[]] },
  { issuers: [{}], routes: [{}] },
  { issuers: 'https://x', routes: '/a' },
  { listen: [], admin: 'x', token: [], keys: 0, timeouts: true, trustedProxies: {} },
  { listen: { host: {}, port: {} }, admin: { host: [], port: [] } },
  { token: { header: {}, clockSkewSeconds: {}, maxAgeSeconds: [], maxBytes: null } },
  { issuers: [{ issuer: {}, audience: {}, jwksUri: {}, jwksFile: {} }] },
  { issuers: [{ issuer: [], audience: [[]], jwksUri: [], jwksFile: [] }] },
  { routes: [{ path: {}, upstream: {}, allow: {}, forwardClaims: {}, methods: {} }] },
  { routes: [{ path: [], upstream: [], allow: [null, [], 'x', 1, {}, { a: {} }, { a: [[]] }], forwardClaims: [{}], methods: [[]] }] },
  { routes: [{ path: '/', upstream: 'http://[::1', allow: [{ repository: [null] }] }] },
  { trustedProxies: [{}, [], null, '', '/', '::/', '1.2.3.4/x'] },
  JSON.parse('{"__proto__": {"issuers": []}}'),
  JSON.parse('{"issuers": [{"__proto__": {"issuer": "https://x"}}], "routes": [{"__proto__": {"path": "/"}, "allow": [{"__proto__": "x"}]}]}'),
  JSON.parse('{"listen": {"__proto__": {"port": 1}}, "token": {"__proto__": null, "constructor": 1, "toString": 2}}'),
  JSON.parse('{"constructor": {}, "hasOwnProperty": 1, "toString": "x", "valueOf": []}'),
  JSON.parse(`${'['.repeat(500)}${']'.repeat(500)}`),
  { routes: JSON.parse(`${'['.repeat(200)}${']'.repeat(200)}`) },
];

test('parseConfig never throws on garbage, and answers with path: problem lines', () => {
  for (const input of GARBAGE) {
    let result: ConfigResult | undefined;
    assert.doesNotThrow(() => (result = parseConfig(input)), JSON.stringify(input));
    assert.equal(result!.ok, false, JSON.stringify(input));
    for (const line of result!.ok ? [] : result!.problems) assert.match(line, /^\S+: \S/, JSON.stringify(input));
  }
});

// Every node of a full, valid config replaced in turn by every kind of JSON value.
const REPLACEMENTS: unknown[] = [null, 0, -1, 1.5, 1e308, '', 'x', '*', true, [], [null], [[]], {}, { x: 1 }, JSON.parse('{"__proto__": {"x": 1}}')];

function full(): Json {
  return {
    listen: { host: '0.0.0.0', port: 8000 },
    admin: { host: '127.0.0.1', port: 9090 },
    issuers: [
      { issuer: GITHUB, audience: ['api://ActionsOIDCGateway'] },
      { issuer: GHES, audience: 'x', jwksUri: `${GHES}/jwks` },
    ],
    token: { header: 'gateway-authorization', clockSkewSeconds: 60, maxAgeSeconds: 600, maxBytes: 8192, cacheSize: 10000 },
    keys: { fetchTimeoutMs: 5000, cooldownMs: 30000, staleIfErrorMs: 1000 },
    timeouts: { upstreamConnectMs: 5000, upstreamHeadMs: 30000, idleMs: 300000, clientHeadersMs: 10000 },
    trustedProxies: ['10.0.0.0/8'],
    routes: [
      {
        path: '/artifacts/',
        upstream: 'http://127.0.0.1:8081/',
        allow: [{ iss: GITHUB, repository: 'octo-org/octo-repo', ref: ['refs/heads/main', 'refs/tags/v*'] }],
        forwardClaims: ['repository'],
        methods: ['GET'],
      },
    ],
  };
}

function* paths(node: unknown, at: (string | number)[] = []): Generator<(string | number)[]> {
  if (at.length > 0) yield at;
  if (node !== null && typeof node === 'object') {
    for (const key of Object.keys(node)) yield* paths((node as Json)[key], [...at, Array.isArray(node) ? Number(key) : key]);
  }
}

test('parseConfig never throws when any node of a valid config is replaced by any JSON value', () => {
  assert.ok(parseConfig(full()).ok);
  let cases = 0;
  for (const path of paths(full())) {
    for (const replacement of REPLACEMENTS) {
      const input = full();
      let parent: Json = input;
      for (const key of path.slice(0, -1)) parent = parent[key as string];
      parent[path.at(-1) as string] = structuredClone(replacement);
      const label = `${path.join('.')} = ${JSON.stringify(replacement)}`;
      let result: ConfigResult | undefined;
      assert.doesNotThrow(() => (result = parseConfig(input)), label);
      if (!result!.ok) {
        assert.ok(result!.problems.length > 0, label);
        for (const line of result!.problems) assert.match(line, /^\S+: \S/, label);
      }
      cases++;
    }
  }
  assert.ok(cases > 500);
});

// --- forward-auth routes, log, drain ------------------------------------------------------

const MODE = 'expected "proxy" or "auth"';
const LEVEL = 'expected one of debug, info, warn, error';
const DRAIN = 'expected a whole number from 0 to 600000';
const AUTH_UPSTREAM = 'an auth route answers itself: leave the upstream out';
/** The minimal config's route turned into a forward-auth route: mode auth, no upstream. */
const toAuth = (c: Json) => ((c.routes[0].mode = 'auth'), delete c.routes[0].upstream);

// Each row changes a minimal config and lists exactly the problems it must produce (none: valid).
const ADDITIONS: [what: string, change: (c: Json) => void, problems: string[]][] = [
  ['an auth route without an upstream', toAuth, []],
  ['an auth route with forwardClaims', (c) => (toAuth(c), (c.routes[0].forwardClaims = ['repository'])), []],
  // Traefik's ForwardAuth asks with GET whatever the client's method, so a method list on an auth route would mislead.
  ['an auth route with methods', (c) => (toAuth(c), (c.routes[0].methods = ['GET'])), ["routes[0].methods: an auth route sees the auth request's method, not the client's: leave it out"]],
  ['an explicit proxy mode', (c) => (c.routes[0].mode = 'proxy'), []],
  ['an auth route beside a proxy route', (c) => c.routes.push({ path: '/auth', mode: 'auth', allow: c.routes[0].allow }), []],
  ['an auth route with an upstream', (c) => (c.routes[0].mode = 'auth'), [`routes[0].upstream: ${AUTH_UPSTREAM}`]],
  ['an auth route with a bad upstream', (c) => ((c.routes[0].mode = 'auth'), (c.routes[0].upstream = 'ftp://x/')), [`routes[0].upstream: ${AUTH_UPSTREAM}`]],
  ['a proxy route without an upstream', (c) => ((c.routes[0].mode = 'proxy'), delete c.routes[0].upstream), ['routes[0].upstream: expected an absolute http or https URL']],
  ['an auth route that pins no one', (c) => (toAuth(c), (c.routes[0].allow = [{ ref: 'refs/heads/main' }])), [`routes[0].allow[0]: ${PIN}`]],
  ...['Auth', 'forward-auth', '', 1, true, null, ['auth'], {}].map((mode): [string, (c: Json) => void, string[]] => [`the mode ${JSON.stringify(mode)}`, (c) => (c.routes[0].mode = mode), [`routes[0].mode: ${MODE}`]]),
  ['a bad mode on the second route only', (c) => c.routes.push({ ...c.routes[0], path: '/b', mode: 'tunnel' }), [`routes[1].mode: ${MODE}`]],
  ...['debug', 'info', 'warn', 'error'].map((level): [string, (c: Json) => void, string[]] => [`log.level "${level}"`, (c) => (c.log = { level }), []]),
  ['an empty log object', (c) => (c.log = {}), []],
  ...['verbose', 'INFO', 'warning', '', 1, null, ['info']].map((level): [string, (c: Json) => void, string[]] => [`log.level ${JSON.stringify(level)}`, (c) => (c.log = { level }), [`log.level: ${LEVEL}`]]),
  ['log as a string', (c) => (c.log = 'debug'), ['log: expected an object']],
  ['log as an array', (c) => (c.log = []), ['log: expected an object']],
  ['an unknown key in log', (c) => (c.log = { level: 'info', format: 'json' }), ['log.format: unknown key']],
  ...[0, 1, 25_000, 600_000].map((ms): [string, (c: Json) => void, string[]] => [`timeouts.drainMs ${ms}`, (c) => (c.timeouts = { drainMs: ms }), []]),
  ...[-1, 600_001, '25s', null, 1e308].map((ms): [string, (c: Json) => void, string[]] => [`timeouts.drainMs ${JSON.stringify(ms)}`, (c) => (c.timeouts = { drainMs: ms }), [`timeouts.drainMs: ${DRAIN}`]]),
  ...[0, 2_000, 600_000].map((ms): [string, (c: Json) => void, string[]] => [`timeouts.drainGraceMs ${ms}`, (c) => (c.timeouts = { drainGraceMs: ms }), []]),
  ...[-1, 600_001, '2s'].map((ms): [string, (c: Json) => void, string[]] => [`timeouts.drainGraceMs ${JSON.stringify(ms)}`, (c) => (c.timeouts = { drainGraceMs: ms }), ['timeouts.drainGraceMs: expected a whole number from 0 to 600000']]),
  ...[1_000, 65_000, 3_600_000].map((ms): [string, (c: Json) => void, string[]] => [`timeouts.keepAliveMs ${ms}`, (c) => (c.timeouts = { keepAliveMs: ms }), []]),
  ...[0, 999, 3_600_001, null].map((ms): [string, (c: Json) => void, string[]] => [`timeouts.keepAliveMs ${JSON.stringify(ms)}`, (c) => (c.timeouts = { keepAliveMs: ms }), ['timeouts.keepAliveMs: expected a whole number from 1000 to 3600000']]),
];

for (const [what, change, problems] of ADDITIONS) {
  test(`parseConfig ${problems.length ? `refuses ${what} with ${problems.map((x) => JSON.stringify(x)).join(' and ')}` : `accepts ${what}`}`, () => {
    const input = minimal();
    change(input);
    const result = parseConfig(input);
    if (problems.length === 0) assert.ok(result.ok, result.ok ? '' : result.problems.join('\n'));
    else assert.deepEqual([...problemsOf(result)].sort(), [...problems].sort());
  });
}

test('DEFAULTS and a minimal config have log level info, a 25 s drain, and proxy routes (with an upstream)', () => {
  assert.equal(DEFAULTS.log.level, 'info');
  assert.equal(DEFAULTS.timeouts.drainMs, 25_000);
  // No grace by default (a stop is as quick as before); Node's own 5 s keep-alive timeout.
  assert.equal(DEFAULTS.timeouts.drainGraceMs, 0);
  assert.equal(DEFAULTS.timeouts.keepAliveMs, 5_000);
  const result = parseConfig(minimal());
  assert.ok(result.ok);
  assert.deepEqual(result.config.log, { level: 'info' });
  assert.equal(result.config.timeouts.drainMs, 25_000);
  assert.equal(result.config.routes[0]!.upstream?.href, 'http://127.0.0.1:8081/');
});

test('an auth route is read with no upstream (which is what makes it answer itself), and its log level and drain as written', () => {
  const input = minimal();
  toAuth(input);
  input.log = { level: 'debug' };
  input.timeouts = { drainMs: 0 };
  const result = parseConfig(input);
  assert.ok(result.ok, result.ok ? '' : result.problems.join('\n'));
  assert.equal(result.config.routes[0]!.upstream, undefined);
  assert.equal(result.config.log.level, 'debug');
  assert.equal(result.config.timeouts.drainMs, 0);
});

// --- warnings ----------------------------------------------------------------------------

const NAME_SUB = 'repo:octo-org/octo-repo:ref:refs/heads/main';
const ID_SUB = 'repo:octo-org@456/octo-repo@123:ref:refs/heads/main';

// Each row changes a minimal config (whose one rule names repository alone) and
// lists the paths warned about, each with a text its warning must contain.
const WARNED: [what: string, change: (c: Json) => void, warnings: [path: string, mentions: string][]][] = [
  ['the minimal config, repository without repository_id', () => {}, [['routes[0].allow[0].repository', 'repository_id']]],
  ['repository pinned by repository_id as well', (c) => (c.routes[0].allow[0].repository_id = '123'), []],
  ['repository_id alone', (c) => (c.routes[0].allow = [{ repository_id: '123' }]), []],
  ['repository_owner without repository_owner_id', (c) => (c.routes[0].allow = [{ repository_owner: 'octo-org' }]), [['routes[0].allow[0].repository_owner', 'repository_owner_id']]],
  ['repository_owner with repository_owner_id', (c) => (c.routes[0].allow = [{ repository_owner: 'octo-org', repository_owner_id: '456' }]), []],
  ['job_workflow_ref alone', (c) => (c.routes[0].allow = [{ job_workflow_ref: 'octo-org/wf/.github/workflows/d.yml@refs/heads/main' }]), [['routes[0].allow[0].job_workflow_ref', 'repository_owner_id']]],
  ['job_workflow_ref with repository_owner_id', (c) => (c.routes[0].allow = [{ job_workflow_ref: 'octo-org/wf/.github/workflows/d.yml@*', repository_owner_id: '456' }]), []],
  ['a name-form sub', (c) => (c.routes[0].allow = [{ sub: NAME_SUB }]), [['routes[0].allow[0].sub', '2026-07-15']]],
  ['an id-form sub', (c) => (c.routes[0].allow = [{ sub: ID_SUB }]), [['routes[0].allow[0].sub', 'repo:OWNER/REPO:']]],
  ['a sub listing both formats', (c) => (c.routes[0].allow = [{ sub: [NAME_SUB, ID_SUB] }]), []],
  ['a second rule, on an auth route', (c) => (toAuth(c), c.routes[0].allow.push({ repository_id: '1' }, { repository_owner: 'x' })), [
    ['routes[0].allow[0].repository', 'repository_id'],
    ['routes[0].allow[2].repository_owner', 'repository_owner_id'],
  ]],
  ['a second route and a tunnel', (c) => {
    c.routes.push({ path: '/b', upstream: 'http://127.0.0.1:8082/', allow: [{ repository_id: '1', sub: ID_SUB }] });
    c.tunnels = [{ to: ['db.internal:5432'], allow: [{ repository_owner: 'octo-org' }] }];
  }, [
    ['routes[0].allow[0].repository', 'repository_id'],
    ['routes[1].allow[0].sub', 'repo:OWNER/REPO:'],
    ['tunnels[0].allow[0].repository_owner', 'repository_owner_id'],
  ]],
];

for (const [what, change, warned] of WARNED) {
  test(`parseConfig accepts ${what}${warned.length ? `, warning at ${warned.map(([p]) => p).join(' and ')}` : ', without a warning'}`, () => {
    const input = minimal();
    change(input);
    const result = parseConfig(input);
    assert.ok(result.ok, result.ok ? '' : result.problems.join('\n'));
    assert.deepEqual(result.warnings.map((w) => w.slice(0, w.indexOf(': '))).sort(), warned.map(([p]) => p).sort(), result.warnings.join('\n'));
    for (const [path, mentions] of warned) {
      const line = result.warnings.find((w) => w.startsWith(`${path}: `))!;
      assert.ok(line.includes(mentions), `${line} mentions ${mentions}`);
    }
  });
}

test('a refused config reports problems and no warnings, even beside a rule that would be warned about', () => {
  const input = minimal();
  input.routes.push({ path: '/b', upstream: 'ftp://x/', allow: [{ repository_owner: 'octo-org' }] });
  const result = parseConfig(input);
  assert.deepEqual(problemsOf(result), ['routes[1].upstream: expected an http or https URL']);
  assert.equal('warnings' in result, false);
});

// --- the verified-token cache ------------------------------------------------------------

const CACHE_SIZE = 'token.cacheSize: expected a whole number from 0 to 100000';

test('token.cacheSize defaults to 10,000 verified tokens, in DEFAULTS and in a parsed minimal config', () => {
  assert.equal(DEFAULTS.token.cacheSize, 10_000);
  const result = parseConfig(minimal());
  assert.ok(result.ok, result.ok ? '' : result.problems.join('\n'));
  assert.equal(result.config.token.cacheSize, 10_000);
});

const CACHE_SIZES: [value: unknown, problems: string[]][] = [
  [0, []],
  [1, []],
  [100_000, []],
  [-1, [CACHE_SIZE]],
  [100_001, [CACHE_SIZE]],
  ['big', [CACHE_SIZE]],
  ['10000', [CACHE_SIZE]],
  [null, [CACHE_SIZE]],
  [true, [CACHE_SIZE]],
  [[100], [CACHE_SIZE]],
];

for (const [cacheSize, problems] of CACHE_SIZES) {
  test(`parseConfig ${problems.length ? 'refuses' : 'accepts'} token.cacheSize ${JSON.stringify(cacheSize)}`, () => {
    const input = minimal();
    input.token = { cacheSize };
    const result = parseConfig(input);
    if (problems.length > 0) assert.deepEqual(problemsOf(result), problems);
    else assert.equal(result.ok ? result.config.token.cacheSize : result.problems.join('\n'), cacheSize);
  });
}

test('values that cannot even be turned into text ({"toString": 1}) are reported at their path, never thrown', () => {
  const hostile = { toString: 1, valueOf: 1 };
  const input = { ...minimal(), listen: { host: hostile, port: hostile }, token: { header: hostile, maxBytes: hostile } } as Record<string, unknown>;
  (input.issuers as Record<string, unknown>[])[0]!.issuer = hostile;
  const result = parseConfig(input);
  assert.ok(!result.ok);
  for (const path of ['listen.host', 'listen.port', 'issuers[0].issuer', 'token.header', 'token.maxBytes']) {
    assert.ok(result.problems.some((p) => p.startsWith(`${path}: `)), `${path} in ${result.problems.join('; ')}`);
  }
});
