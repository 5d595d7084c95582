// Wires one request through the steps, in one direction only:
//   target → route → token → verify (keys) → policy → proxy → one audit line.
// Nothing reaches the upstream before every step has said yes.
import { randomUUID } from 'node:crypto';
import type { Agent, IncomingMessage, ServerResponse } from 'node:http';
import { BlockList, isIPv4 } from 'node:net';
import { identityOf, type Log } from './audit.js';
import type { GatewayConfig, RouteConfig } from './config.js';
import { STATUS, type Reason } from './errors.js';
import { inspectHead, upstreamHeaders } from './headers.js';
import { createKeySet, type KeySet } from './jwks.js';
import { createTokenVerifier } from './jwt.js';
import { compilePolicy, evaluate, type Policy } from './policy.js';
import { createAgent, forward, type ProxyTimeouts } from './proxy.js';
import { createRouter, parseTarget } from './router.js';

export interface GatewayOptions {
  readonly log?: Log;
  readonly fetch?: typeof globalThis.fetch;
  readonly now?: () => number;
}

export interface Gateway {
  /** Serves one request. Mount on 'request'; on 'checkContinue' pass `true` so 100 Continue waits for the verdict. */
  handle(req: IncomingMessage, res: ServerResponse, expectsContinue?: boolean): void;
  /** Serves /healthz and /readyz, for the admin listener. */
  admin(req: IncomingMessage, res: ServerResponse): void;
  /** Fetches every issuer's keys and keeps them fresh. Resolves when each has tried once. */
  start(): Promise<void>;
  stop(): void;
  ready(): boolean;
}

interface LiveRoute extends RouteConfig {
  readonly upstreamPath: string;
  readonly policy: Policy;
  readonly agent: Agent;
}

export function createGateway(config: GatewayConfig, opts: GatewayOptions = {}): Gateway {
  const log = opts.log ?? (() => {});
  const keySets = new Map<string, KeySet>(config.issuers.map((i) => [i.issuer, createKeySet({ ...i, ...config.keys, fetch: opts.fetch, now: opts.now, log })]));
  const verify = createTokenVerifier({
    issuers: config.issuers.map((i) => ({ issuer: i.issuer, audiences: i.audiences, resolveKey: keySets.get(i.issuer)!.resolveKey })),
    clockSkewSeconds: config.token.clockSkewSeconds,
    maxAgeSeconds: config.token.maxAgeSeconds,
    maxTokenBytes: config.token.maxBytes,
    now: opts.now,
  });
  const routes: LiveRoute[] = config.routes.map((r) => ({ ...r, upstreamPath: r.upstream.pathname, policy: compilePolicy(r.allow), agent: createAgent(r.upstream) }));
  const route = createRouter(routes);
  const trusted = new BlockList();
  for (const cidr of config.trustedProxies) {
    const [addr = '', bits] = cidr.split('/');
    const family = isIPv4(addr) ? 'ipv4' : 'ipv6';
    trusted.addSubnet(addr, bits === undefined ? (family === 'ipv4' ? 32 : 128) : Number(bits), family);
  }
  const timeouts: ProxyTimeouts = {
    connectMs: config.timeouts.upstreamConnectMs,
    headMs: config.timeouts.upstreamHeadMs,
    idleMs: config.timeouts.idleMs,
  };
  const tokenHeader = config.token.header;
  const ready = () => [...keySets.values()].every((k) => k.status().usable);

  async function handle(req: IncomingMessage, res: ServerResponse, expectsContinue = false): Promise<void> {
    const id = randomUUID();
    const started = performance.now();
    const client = peerAddress(req);
    const entry: Record<string, unknown> = { kind: 'request', id, method: req.method, client };
    const finish = (status: number, reason?: Reason, extra?: Record<string, unknown>) =>
      log({ ...entry, status, decision: reason ? 'deny' : 'allow', reason, ...extra, ms: Math.round((performance.now() - started) * 10) / 10 });
    const refuse = (reason: Reason, extra?: Record<string, unknown>) => {
      reply(res, id, reason, head.hasBody);
      finish(STATUS[reason], reason, extra);
    };

    const head = inspectHead(req.rawHeaders, tokenHeader);
    const target = parseTarget(req.url ?? '');
    if (!target || head.framing) return refuse('bad_request', { detail: head.framing ?? 'unsafe request target' });
    entry.path = target.path;
    const routed = route(target.path);
    if (!routed) return refuse('route_unknown');
    const r = routed.route;
    entry.route = r.path;
    if (r.methods && !r.methods.includes(req.method ?? '')) {
      res.setHeader('allow', r.methods.join(', '));
      return refuse('method_not_allowed');
    }
    if (head.token === undefined) return refuse('token_malformed', { detail: 'repeated token header' });
    if (head.token === '') return refuse('token_missing');
    const verified = await verify(head.token);
    if (!verified.ok) return refuse(verified.reason);
    entry.identity = identityOf(verified.claims);
    const decision = evaluate(r.policy, verified.claims);
    if (!decision.allowed) return refuse('claim_mismatch', { claim: decision.claim });
    entry.rule = decision.rule;

    if (expectsContinue) res.writeContinue();
    const outcome = await forward(req, res, {
      upstream: r.upstream,
      agent: r.agent,
      path: routed.upstreamPath + target.query,
      timeouts,
      headers: upstreamHeaders(req.rawHeaders, {
        tokenHeader,
        upstreamHost: r.upstream.host,
        claims: verified.claims,
        forwardClaims: r.forwardClaims,
        clientIp: client,
        trustedPeer: isTrusted(client),
        requestId: id,
      }),
    });
    const counts = { upstreamStatus: outcome.upstreamStatus, bytesIn: outcome.bytesIn, bytesOut: outcome.bytesOut };
    if (outcome.reason && !outcome.headSent) return refuse(outcome.reason, counts);
    // After the head was sent a failure can only be logged: the status the client saw is the upstream's.
    finish(outcome.upstreamStatus ?? 502, outcome.reason, counts);
  }

  function isTrusted(ip: string): boolean {
    return ip !== '' && trusted.check(ip, isIPv4(ip) ? 'ipv4' : 'ipv6');
  }

  return {
    handle(req, res, expectsContinue) {
      handle(req, res, expectsContinue).catch((err: unknown) => {
        // A bug, not a client's fault: answer 502 if we still can, and say so in the log.
        log({ kind: 'error', detail: err instanceof Error ? err.message : String(err) });
        if (!res.headersSent) reply(res, '', 'upstream_unreachable', true);
        else res.destroy();
      });
    },
    admin(req, res) {
      const path = (req.url ?? '').split('?')[0];
      const body = (status: number, value: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        res.end(JSON.stringify(value));
      };
      if (path === '/healthz') return body(200, { status: 'ok' });
      if (path !== '/readyz') return body(404, { error: 'route_unknown' });
      const issuers = Object.fromEntries([...keySets].map(([name, k]) => [name, k.status()]));
      body(ready() ? 200 : 503, { ready: ready(), issuers });
    },
    async start() {
      await Promise.all([...keySets.values()].map((k) => k.start()));
    },
    stop() {
      for (const k of keySets.values()) k.stop();
      for (const r of routes) r.agent.destroy();
    },
    ready,
  };
}

/** The peer's address, with IPv4-mapped IPv6 written as plain IPv4. */
function peerAddress(req: IncomingMessage): string {
  const a = req.socket.remoteAddress ?? '';
  return a.startsWith('::ffff:') && isIPv4(a.slice(7)) ? a.slice(7) : a;
}

/** The only error answer: status, reason and request id. Never a claim value, never the token. */
function reply(res: ServerResponse, id: string, reason: Reason, bodyPending: boolean): void {
  if (res.headersSent) return void res.destroy();
  const status = STATUS[reason];
  const headers: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store' };
  if (status === 401) {
    // RFC 6750 §3.1: no error code when no credentials were sent at all.
    headers['www-authenticate'] = reason === 'token_missing' ? 'Bearer realm="oidc-gateway"' : 'Bearer realm="oidc-gateway", error="invalid_token"';
  }
  if (status === 503) headers['retry-after'] = '5';
  // A refused body is not read: close the connection instead of draining it.
  if (bodyPending) headers.connection = 'close';
  res.writeHead(status, headers);
  res.end(JSON.stringify({ error: reason, id }));
}
