// Wires one request through the steps, in one direction only:
//   target → route or destination → token → verify (keys) → policy → proxy or
//   tunnel → one audit line. Nothing is contacted before every step said yes.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BlockList, isIPv4 } from 'node:net';
import type { Duplex } from 'node:stream';
import { identityOf, type Log } from './audit.js';
import type { GatewayConfig } from './config.js';
import { beginExchange, type Exchange } from './exchange.js';
import { inspectHead, upstreamHeaders, type InboundHead } from './headers.js';
import { createKeySet, type KeySet } from './jwks.js';
import { createTokenVerifier, type Verification } from './jwt.js';
import { compilePolicy, evaluate } from './policy.js';
import { createAgent, forward } from './proxy.js';
import { createProxyMode, type Admitted } from './proxymode.js';
import { createRouter, parseTarget } from './router.js';

export interface GatewayOptions {
  readonly log?: Log;
  readonly fetch?: typeof globalThis.fetch;
  readonly now?: () => number;
}

export interface Gateway {
  /** Serves one request. Mount on 'request'; on 'checkContinue' pass `true` so 100 Continue waits for the verdict. */
  handle(req: IncomingMessage, res: ServerResponse, expectsContinue?: boolean): void;
  /** Serves one CONNECT request (mount on 'connect'). */
  connect(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** Tells the gateway its own bound ports, which no tunnel may reach. */
  listening(ports: readonly number[]): void;
  /** Serves /healthz and /readyz, for the admin listener. */
  admin(req: IncomingMessage, res: ServerResponse): void;
  /** Fetches every issuer's keys and keeps them fresh. Resolves when each has tried once. */
  start(): Promise<void>;
  /** Stops key refreshes, closes open tunnels and upstream connection pools; resolves once every tunnel is logged. */
  stop(): Promise<void>;
  ready(): boolean;
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
  const routes = config.routes.map((r) => ({ ...r, upstreamPath: r.upstream.pathname, policy: compilePolicy(r.allow), agent: createAgent(r.upstream) }));
  const route = createRouter(routes);
  const trusted = new BlockList();
  for (const cidr of config.trustedProxies) {
    const [addr = '', bits] = cidr.split('/');
    const family = isIPv4(addr) ? 'ipv4' : 'ipv6';
    trusted.addSubnet(addr, bits === undefined ? (family === 'ipv4' ? 32 : 128) : Number(bits), family);
  }
  const tokenHeader = config.token.header;
  const ready = () => [...keySets.values()].every((k) => k.status().usable);
  const proxyMode = createProxyMode(config, log, authenticate);

  async function authenticate(token: string | undefined): Promise<Verification> {
    if (token === undefined) return { ok: false, reason: 'token_malformed' };
    return token === '' ? { ok: false, reason: 'token_missing' } : verify(token);
  }

  async function handle(req: IncomingMessage, res: ServerResponse, expectsContinue = false): Promise<void> {
    const ex = beginExchange(req, res, log, 'request');
    const head = inspectHead(req.rawHeaders, tokenHeader);
    ex.bodyPending = head.hasBody;
    if (head.framing) return ex.refuse('bad_request', { detail: head.framing });
    const absoluteForm = config.tunnels.length > 0 && req.url?.startsWith('http://');
    const to = absoluteForm ? await proxyMode.forward(req, ex, head) : await admitRoute(req, res, ex, head);
    if (!to) return;

    if (expectsContinue) res.writeContinue();
    ex.settle(await forward(req, res, {
      upstream: to.upstream,
      agent: to.agent,
      path: to.path,
      timeouts: config.timeouts,
      headers: upstreamHeaders(req.rawHeaders, {
        tokenHeader,
        upstreamHost: to.authority ?? to.upstream.host,
        requestedHost: to.authority,
        claims: to.claims,
        forwardClaims: to.forwardClaims,
        clientIp: ex.client,
        trustedPeer: isTrusted(ex.client),
        requestId: ex.id,
        bodyFraming: head.bodyFraming,
      }),
      hasBody: head.hasBody,
    }));
  }

  /** Target, route, method, token, claims: where the request goes, or nothing once it was refused. */
  async function admitRoute(req: IncomingMessage, res: ServerResponse, ex: Exchange, head: InboundHead): Promise<Admitted | void> {
    const { entry, refuse } = ex;
    const target = parseTarget(req.url ?? '');
    if (!target) return refuse('bad_request', { detail: 'unsafe request target' });
    entry.path = target.path;
    const routed = route(target.path);
    if (!routed) return refuse('route_unknown');
    const r = routed.route;
    entry.route = r.path;
    if (r.methods && !r.methods.includes(req.method ?? '')) {
      res.setHeader('allow', r.methods.join(', '));
      return refuse('method_not_allowed');
    }
    const verified = await authenticate(head.token);
    if (!verified.ok) return refuse(verified.reason);
    entry.identity = identityOf(verified.claims);
    const decision = evaluate(r.policy, verified.claims);
    if (!decision.allowed) return refuse('claim_mismatch', { claim: decision.claim });
    entry.rule = decision.rule;
    return { upstream: r.upstream, agent: r.agent, path: routed.upstreamPath + target.query, claims: verified.claims, forwardClaims: r.forwardClaims };
  }

  function isTrusted(ip: string): boolean {
    return ip !== '' && trusted.check(ip, isIPv4(ip) ? 'ipv4' : 'ipv6');
  }

  return {
    handle(req, res, expectsContinue) {
      handle(req, res, expectsContinue).catch((err: unknown) => {
        // A bug, not a client's fault: answer 502 if we still can, and say so in the log.
        log({ kind: 'error', detail: err instanceof Error ? err.message : String(err) });
        if (res.headersSent) res.destroy();
        else res.writeHead(502, { 'content-type': 'application/json', connection: 'close' }).end('{"error":"upstream_unreachable","id":""}');
      });
    },
    connect(req, socket, head) {
      proxyMode.connect(req, socket, head).catch((err: unknown) => {
        log({ kind: 'error', detail: err instanceof Error ? err.message : String(err) });
        socket.destroy();
      });
    },
    listening: (ports) => proxyMode.listening(ports),
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
    async stop() {
      for (const k of keySets.values()) k.stop();
      for (const r of routes) r.agent.destroy();
      await proxyMode.stop();
    },
    ready,
  };
}
