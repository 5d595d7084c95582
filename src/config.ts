// The one JSON config: types, defaults, and validation that reports every problem at once as `json.path: problem`.
import { isIP } from 'node:net';
import type { LogLevel } from './audit.js';
import { checkDestinationPattern } from './destination.js';
import { isReservedHeader } from './headers.js';
import { checkKeyUrl, KEYSET_DEFAULTS, type KeySetOptions } from './jwks.js';
import { isObject, VERIFIER_DEFAULTS } from './jwt.js';
import { checkRule, ruleWarnings, type Rule } from './policy.js';

export interface IssuerConfig extends Pick<KeySetOptions, 'issuer' | 'jwksUri' | 'jwksFile'> {
  readonly audiences: readonly string[];
}

export interface RouteConfig {
  /** Normalised: no trailing slash, except "/" itself. */
  readonly path: string;
  /** Where the route forwards; none for a forward-auth route ("mode": "auth"), which answers 200 with the identity itself. */
  readonly upstream: URL | undefined;
  readonly allow: readonly Rule[];
  readonly forwardClaims: readonly string[];
  readonly methods?: readonly string[];
}

export interface TunnelConfig {
  readonly to: readonly string[];
  readonly allow: readonly Rule[];
  readonly maxLifetimeSeconds?: number;
  /** Close the tunnel when the token that opened it expires. Off by default: jobs outlive their tokens. */
  readonly endWithToken: boolean;
}

export interface GatewayConfig {
  readonly listen: { readonly host: string; readonly port: number };
  readonly admin: { readonly host: string; readonly port: number };
  readonly issuers: readonly IssuerConfig[];
  readonly token: Numbers<'token'> & { readonly header: string; readonly maxAgeSeconds?: number };
  readonly keys: Numbers<'keys'>;
  readonly timeouts: Numbers<'timeouts'>;
  readonly trustedProxies: readonly string[];
  readonly routes: readonly RouteConfig[];
  readonly tunnels: readonly TunnelConfig[];
  readonly log: { readonly level: LogLevel };
}

const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

/** Every tunable number as [default, min, max]; the token and key defaults are those of the modules that use them. */
const RANGES = {
  token: { clockSkewSeconds: [VERIFIER_DEFAULTS.clockSkewSeconds, 0, 600], maxBytes: [VERIFIER_DEFAULTS.maxTokenBytes, 1024, 65_536], cacheSize: [VERIFIER_DEFAULTS.cacheSize, 0, 100_000] },
  keys: { fetchTimeoutMs: [KEYSET_DEFAULTS.fetchTimeoutMs, 100, 60_000], cooldownMs: [KEYSET_DEFAULTS.cooldownMs, 1_000, 3_600_000], staleIfErrorMs: [KEYSET_DEFAULTS.staleIfErrorMs, 0, 604_800_000] },
  timeouts: { upstreamConnectMs: [5_000, 10, 600_000], upstreamHeadMs: [30_000, 10, 3_600_000], idleMs: [300_000, 10, 86_400_000], clientHeadersMs: [10_000, 10, 600_000], keepAliveMs: [5_000, 1_000, 3_600_000], drainGraceMs: [0, 0, 600_000], drainMs: [25_000, 0, 600_000] },
} as const;
type Section = keyof typeof RANGES;
type Numbers<S extends Section> = { readonly [K in keyof (typeof RANGES)[S]]: number };

const defaultsOf = <S extends Section>(section: S) => numbers(section, {}, () => {});

export const DEFAULTS = {
  listen: { host: '0.0.0.0', port: 8000 },
  admin: { host: '127.0.0.1', port: 9090 },
  token: { header: 'gateway-authorization', ...defaultsOf('token') },
  keys: defaultsOf('keys'),
  timeouts: defaultsOf('timeouts'),
  log: { level: 'info' as LogLevel },
};

/** A valid config may still carry warnings: rules that work today but trust what can change hands. */
export type ConfigResult = { ok: true; config: GatewayConfig; warnings: string[] } | { ok: false; problems: string[] };

type Json = Record<string, unknown>;
type Report = (path: string, problem: string) => void;

/** Configs parseConfig returned: the gateway takes no other, so a host program cannot skip the refusals below. */
export const accepted = new WeakSet<GatewayConfig>();

/** Validates parsed JSON into a GatewayConfig, or lists every problem with its path. */
export function parseConfig(input: unknown): ConfigResult {
  const problems: string[] = [];
  const warnings: string[] = [];
  const p = (path: string, problem: string) => problems.push(`${path}: ${problem}`);
  const w = (path: string, warning: string) => warnings.push(`${path}: ${warning}`);
  const root = object(input, '(root)', ['listen', 'admin', 'issuers', 'token', 'keys', 'timeouts', 'trustedProxies', 'routes', 'tunnels', 'log'], p);

  const endpoint = (name: 'listen' | 'admin') => {
    const o = object(or(root[name], {}), name, ['host', 'port'], p);
    const host = or(o.host, DEFAULTS[name].host);
    if (typeof host !== 'string' || host === '') p(`${name}.host`, 'expected a host name or address');
    return { host: text(host), port: num(o, 'port', DEFAULTS[name].port, 0, 65535, name, p) };
  };
  const [listen, admin] = (['listen', 'admin'] as const).map(endpoint);
  const wildcard = (h: string) => h === '0.0.0.0' || h === '::';
  if (listen.port !== 0 && listen.port === admin.port && (listen.host === admin.host || wildcard(listen.host) || wildcard(admin.host)))
    p('admin', 'must not share the public listener');

  const issuerList = array(root.issuers, 'issuers', p);
  if (issuerList.length === 0) p('issuers', root.issuers === undefined ? 'required' : 'expected at least one issuer');
  const issuers = issuerList.map((raw, i): IssuerConfig => {
    const at = `issuers[${i}]`;
    const o = object(raw, at, ['issuer', 'audience', 'jwksUri', 'jwksFile'], p);
    for (const key of o.jwksUri === undefined ? ['issuer'] : ['issuer', 'jwksUri']) {
      const problem = typeof o[key] === 'string' ? checkKeyUrl(o[key] as string) : 'expected a URL string';
      if (problem) p(`${at}.${key}`, problem);
    }
    const audiences = strings(o.audience, `${at}.audience`, p);
    if (audiences.length === 0 || audiences.includes('')) p(`${at}.audience`, 'expected a non-empty string or array of them');
    if (o.jwksFile !== undefined && (typeof o.jwksFile !== 'string' || o.jwksFile === '')) p(`${at}.jwksFile`, 'expected a file path');
    if (o.jwksUri !== undefined && o.jwksFile !== undefined) p(at, 'give jwksUri or jwksFile, not both');
    return { issuer: text(o.issuer), audiences, jwksUri: o.jwksUri as string | undefined, jwksFile: o.jwksFile as string | undefined };
  });
  const names = issuers.map((i) => i.issuer);
  names.forEach((n, i) => names.indexOf(n) !== i && p(`issuers[${i}].issuer`, 'duplicate issuer'));

  const tok = object(or(root.token, {}), 'token', ['header', 'maxAgeSeconds', ...Object.keys(RANGES.token)], p);
  const header = or(tok.header, DEFAULTS.token.header);
  if (typeof header !== 'string' || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/.test(header)) p('token.header', 'expected an HTTP header name');
  if (typeof header === 'string' && isReservedHeader(header.toLowerCase().replaceAll('_', '-'))) p('token.header', 'must not be a header the gateway reads or sets itself');
  const maxAgeSeconds = tok.maxAgeSeconds === undefined ? undefined : num(tok, 'maxAgeSeconds', 0, 1, 86_400, 'token', p);
  const token = { header: text(header).toLowerCase(), ...numbers('token', tok, p), maxAgeSeconds };
  const keys = numbers('keys', object(or(root.keys, {}), 'keys', Object.keys(RANGES.keys), p), p);
  const timeouts = numbers('timeouts', object(or(root.timeouts, {}), 'timeouts', Object.keys(RANGES.timeouts), p), p);

  const log = { level: or(object(or(root.log, {}), 'log', ['level'], p).level, DEFAULTS.log.level) as LogLevel };
  if (!LOG_LEVELS.includes(log.level)) p('log.level', `expected one of ${LOG_LEVELS.join(', ')}`);

  const trustedProxies = strings(or(root.trustedProxies, []), 'trustedProxies', p);
  trustedProxies.forEach((c, i) => cidrProblem(c) && p(`trustedProxies[${i}]`, cidrProblem(c)!));

  const routeList = array(root.routes, 'routes', p);
  const tunnelList = array(root.tunnels, 'tunnels', p);
  if (routeList.length === 0 && tunnelList.length === 0) p('routes', 'expected at least one route or tunnel');
  const routes = routeList.map((raw, i) => route(raw, `routes[${i}]`, issuers.length > 1, p, w));
  const paths = routes.map((r) => r.path.toLowerCase());
  paths.forEach((path, i) => paths.indexOf(path) !== i && p(`routes[${i}].path`, `duplicate of routes[${paths.indexOf(path)}].path`));

  const tunnels = tunnelList.map((raw, i): TunnelConfig => {
    const at = `tunnels[${i}]`;
    const o = object(raw, at, ['to', 'allow', 'maxLifetimeSeconds', 'endWithToken'], p);
    const to = strings(o.to, `${at}.to`, p);
    if (to.length === 0) p(`${at}.to`, 'expected at least one host:port');
    to.forEach((d, j) => checkDestinationPattern(d) && p(`${at}.to[${j}]`, checkDestinationPattern(d)!));
    if (o.endWithToken !== undefined && typeof o.endWithToken !== 'boolean') p(`${at}.endWithToken`, 'expected true or false');
    const maxLifetimeSeconds = o.maxLifetimeSeconds === undefined ? undefined : num(o, 'maxLifetimeSeconds', 0, 1, 86_400, at, p);
    return { to, allow: rules(o.allow, at, issuers.length > 1, p, w), maxLifetimeSeconds, endWithToken: o.endWithToken === true };
  });

  if (problems.length > 0) return { ok: false, problems };
  const config = { listen, admin, issuers, token, keys, timeouts, trustedProxies, routes, tunnels, log };
  return (accepted.add(config), { ok: true, config, warnings });
}

function route(raw: unknown, at: string, pinIssuer: boolean, p: Report, w: Report): RouteConfig {
  const o = object(raw, at, ['path', 'mode', 'upstream', 'allow', 'forwardClaims', 'methods'], p);
  const mode = or(o.mode, 'proxy');
  if (mode !== 'proxy' && mode !== 'auth') p(`${at}.mode`, 'expected "proxy" or "auth"');
  let path = typeof o.path === 'string' ? o.path : '';
  if (!path.startsWith('/') || path.includes('//') || path.includes('\\') || path.split('/').some((s) => s === '.' || s === '..' || s.includes('%')) || [...path].some((c) => c < '!' || c > '~'))
    p(`${at}.path`, 'expected an absolute path of plain segments, such as "/artifacts/"');
  if (path.length > 1 && path.endsWith('/')) path = path.slice(0, -1);
  if (mode === 'auth' && o.upstream !== undefined) p(`${at}.upstream`, 'an auth route answers itself: leave the upstream out');
  // Traefik asks with GET whatever the client's method: the auth request's method says nothing.
  if (mode === 'auth' && o.methods !== undefined) p(`${at}.methods`, "an auth route sees the auth request's method, not the client's: leave it out");
  const upstream = mode === 'auth' ? undefined : upstreamUrl(o.upstream, `${at}.upstream`, p);
  const allow = rules(o.allow, at, pinIssuer, p, w);
  const forwardClaims = strings(or(o.forwardClaims, []), `${at}.forwardClaims`, p);
  forwardClaims.forEach((c, j) => /^[A-Za-z0-9_]{1,64}$/.test(c) || p(`${at}.forwardClaims[${j}]`, 'expected a claim name of letters, digits and _'));
  const methods = o.methods === undefined ? undefined : strings(o.methods, `${at}.methods`, p);
  if (Array.isArray(o.methods) && o.methods.length === 0) p(`${at}.methods`, 'expected at least one method (leave it out to allow any)');
  methods?.forEach((m, j) => /^[A-Z]{1,16}$/.test(m) || p(`${at}.methods[${j}]`, 'expected an upper-case method name'));
  return { path, upstream, allow, forwardClaims, methods };
}

function upstreamUrl(v: unknown, at: string, p: Report): URL {
  try {
    const url = new URL(String(v));
    if (url.protocol !== 'http:' && url.protocol !== 'https:') p(at, 'expected an http or https URL');
    if (url.username || url.password || url.search || url.hash) p(at, 'must not carry credentials, a query or a fragment');
    return url;
  } catch {
    p(at, 'expected an absolute http or https URL');
    return new URL('http://invalid.invalid/');
  }
}

function rules(v: unknown, at: string, pinIssuer: boolean, p: Report, w: Report): Rule[] {
  const list = array(v, `${at}.allow`, p);
  if (list.length === 0) p(`${at}.allow`, 'expected at least one rule: with no rule no one may pass, so it is refused');
  return list.map((rule, j) => {
    const problems = checkRule(rule, pinIssuer);
    for (const [claim, problem] of problems) p(`${at}.allow[${j}]${claim ? `.${claim}` : ''}`, problem);
    if (problems.length === 0) for (const [claim, warning] of ruleWarnings(rule as Rule)) w(`${at}.allow[${j}].${claim}`, warning);
    return rule as Rule;
  });
}

/** The fallback only for a missing key: an explicit null is a wrong type, and is reported as one. */
function or(v: unknown, fallback: unknown): unknown {
  return v === undefined ? fallback : v;
}

function object(v: unknown, at: string, known: readonly string[], p: Report): Json {
  if (!isObject(v)) p(at, 'expected an object');
  else for (const key of Object.keys(v)) if (!known.includes(key)) p(at === '(root)' ? key : `${at}.${key}`, 'unknown key');
  return isObject(v) ? v : {};
}

/** Missing is an empty list; anything else but an array is a problem. */
function array(v: unknown, at: string, p: Report): unknown[] {
  if (v !== undefined && !Array.isArray(v)) p(at, 'expected an array');
  return Array.isArray(v) ? v : [];
}

function strings(v: unknown, at: string, p: Report): string[] {
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v as string[];
  p(at, 'expected a string or an array of strings');
  return [];
}

function numbers<S extends Section>(section: S, o: Json, p: Report): Numbers<S> {
  const entries = Object.entries(RANGES[section]).map(([key, [fallback, min, max]]) => [key, num(o, key, fallback, min, max, section, p)]);
  return Object.fromEntries(entries) as Numbers<S>;
}

function num(o: Json, key: string, fallback: number, min: number, max: number, at: string, p: Report): number {
  const v = or(o[key], fallback);
  // Whole numbers only: AbortSignal.timeout(5000.5) throws on Node, and would leave every key fetch failing.
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) p(`${at}.${key}`, `expected a whole number from ${min} to ${max}`);
  return typeof v === 'number' ? v : NaN;
}

/** What was reported as a problem is never used, but must not throw on the way: `{"toString": 1}` would in String(). */
const text = (v: unknown) => (typeof v === 'string' ? v : '');

function cidrProblem(cidr: string): string | undefined {
  const [addr = '', bits, extra] = cidr.split('/');
  const family = isIP(addr);
  const max = family === 4 ? 32 : 128;
  if (family === 0 || extra !== undefined) return 'expected an address or CIDR such as 10.0.0.0/8';
  if (bits !== undefined && !(/^\d{1,3}$/.test(bits) && Number(bits) <= max)) return `expected a prefix length from 0 to ${max}`;
  return undefined;
}
