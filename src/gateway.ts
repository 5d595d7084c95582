// Wires one request through the steps, in one direction only: target → route or destination → token → verify (keys) →
// policy → proxy or tunnel → one audit line. Nothing is contacted before every step said yes.
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Agent, IncomingMessage, ServerResponse } from 'node:http';
import { BlockList, isIPv4 } from 'node:net';
import type { Duplex } from 'node:stream';
import { beginExchange, IDENTITY_CLAIMS, identityOf, type Exchange, type Log } from './audit.js';
import { accepted, type GatewayConfig, type IssuerConfig, type RouteConfig } from './config.js';
import { claimHeaders, inspectHead, upstreamHeaders, type InboundHead } from './headers.js';
import { createKeySet, type KeySet, type KeySetOptions } from './jwks.js';
import { createTokenVerifier, type Claims, type KeyResolver, type VerifierOptions } from './jwt.js';
import { createMetrics } from './metrics.js';
import { compilePolicy, evaluate, explainPolicy, type Policy } from './policy.js';
import { createAgent, forward } from './proxy.js';
import { compileTunnels, createProxyMode, type Admitted, type ProxyPlan } from './proxymode.js';
import { createRouter, parseTarget, type Routed } from './router.js';

/** The audit log's sink, and the key sets' fetch and clock (injectable for tests). */
export type GatewayOptions = Pick<KeySetOptions, 'log' | 'fetch' | 'now'>;

export interface Gateway {
  /** Serves one request. Mount on 'request'; on 'checkContinue' pass `true` so 100 Continue waits for the verdict. */
  handle(req: IncomingMessage, res: ServerResponse, expectsContinue?: boolean): void;
  /** Serves one CONNECT request (mount on 'connect'). */
  connect(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** Tells the gateway its own bound ports, which no tunnel may reach. */
  listening(ports: readonly number[]): void;
  /** Serves /healthz, /readyz and /metrics, for the admin listener. */
  admin(req: IncomingMessage, res: ServerResponse): void;
  /** Fetches every issuer's keys and keeps them fresh. Resolves when each has tried once. */
  start(): Promise<void>;
  /** Puts a new config in force for requests that arrive from now on; unchanged issuers keep their keys. */
  reload(config: GatewayConfig): void;
  /** Turns readiness false for good and asks clients to close their connections: the start of a shutdown. */
  drain(): void;
  /** For good: stops key refreshes, ends what is still forwarding (gateway_stopping), tunnels and pools; resolves once all
   *  is logged, waiting at most 2 × keys.fetchTimeoutMs + timeouts.upstreamConnectMs + 1 s for admissions under way. */
  stop(): Promise<void>;
  ready(): boolean;
}

type CompiledRoute = RouteConfig & { readonly upstreamPath: string; readonly policy: Policy; readonly agent: Agent | undefined };

/** Everything one config compiles to. A request reads the plan in force once, when it arrives. */
interface Plan extends ProxyPlan {
  readonly keySets: ReadonlyMap<string, KeySet>;
  readonly route: (path: string) => Routed<CompiledRoute> | 'ambiguous' | undefined;
  readonly trusted: BlockList;
}

/** The token verifier's options for a config, with each issuer's key resolver from `keysOf`. */
export function verifierOptions(config: GatewayConfig, keysOf: (issuer: IssuerConfig) => KeyResolver): VerifierOptions {
  const { clockSkewSeconds, maxAgeSeconds, maxBytes: maxTokenBytes, cacheSize } = config.token;
  const issuers = config.issuers.map((i) => ({ issuer: i.issuer, audiences: i.audiences, resolveKey: keysOf(i) }));
  return { issuers, clockSkewSeconds, maxAgeSeconds, maxTokenBytes, cacheSize };
}

// Claims objects are made once per verified token (a cache hit hands back the same one): its hash is computed once too,
// and kept with the token text it is of, so it is never written for another.
const tokenHashes = new WeakMap<Claims, { readonly token: string; readonly hash: string }>();
function tokenSha256(token: string, claims: Claims | undefined): string {
  const known = claims && tokenHashes.get(claims);
  if (known && known.token === token) return known.hash;
  const hash = createHash('sha256').update(token).digest('hex');
  if (claims) tokenHashes.set(claims, { token, hash });
  return hash;
}

export function createGateway(initial: GatewayConfig, opts: GatewayOptions = {}): Gateway {
  const metrics = createMetrics();
  const log: Log = (line) => (metrics.observe(line), opts.log?.(line));
  // Pools that outlive a reload: key sets by where their keys come from (keys.* settings apply at restart), agents by origin.
  const keySetPool = new Map<string, KeySet>();
  const agents = new Map<string, Agent>();
  const agentFor = (upstream: URL) => agents.get(upstream.origin) ?? agents.set(upstream.origin, createAgent(upstream)).get(upstream.origin)!;
  const proxyMode = createProxyMode(log);
  const tokenCache = { hits: 0, misses: 0 };
  let started = false, draining = false, stopping = false;
  // Responses not yet answered (a drain asks them to close) with what ends their forwarding (a stop does), and how many
  // exchanges are not yet logged (a stop waits). Not Sets or WeakMaps: under load V8 promotes whole requests through
  // what a Set's discarded tables point to, and a WeakMap entry per request cost Node 60 to 100 µs of CPU per request.
  const inflight: (ServerResponse | undefined)[] = [];
  const stops: ((() => void) | undefined)[] = [];
  const freeSlots: number[] = [];
  const waiting: (() => void)[] = [];
  let unlogged = 0;
  const track = (exchange: Promise<unknown>) => (unlogged++, void exchange.finally(() => --unlogged === 0 && waiting.splice(0).forEach((wake) => wake())));
  let plan = compile(initial);

  function compile(config: GatewayConfig): Plan {
    if (!accepted.has(config)) throw new TypeError('createGateway and reload take only a config returned by parseConfig');
    const keySets = new Map<string, KeySet>();
    for (const i of config.issuers) {
      const shape = JSON.stringify([i.issuer, i.jwksUri, i.jwksFile]);
      if (!keySetPool.has(shape)) {
        keySetPool.set(shape, createKeySet({ ...i, ...initial.keys, fetch: opts.fetch, now: opts.now, log }));
        if (started) void keySetPool.get(shape)!.start();
      }
      keySets.set(i.issuer, keySetPool.get(shape)!);
    }
    const inUse = [...keySets.values()];
    for (const [shape, keySet] of keySetPool) if (!inUse.includes(keySet)) (keySet.stop(), keySetPool.delete(shape));
    const onCache = (hit: boolean) => (hit ? tokenCache.hits++ : tokenCache.misses++);
    const verify = createTokenVerifier({ ...verifierOptions(config, (i) => keySets.get(i.issuer)!.resolveKey), now: opts.now, onCache });
    const authenticate: ProxyPlan['authenticate'] = async (ex, token) => {
      // undefined: the token header was repeated.
      if (!token) return { ok: false, reason: token === '' ? 'token_missing' : 'token_malformed' };
      const verified = await verify(token);
      // Which token it was, for matching with the workflow's own records; not for what is no JWT (such as a password).
      if (verified.ok || verified.reason !== 'token_malformed') ex.entry.tokenSha256 = tokenSha256(token, verified.ok ? verified.claims : undefined);
      return verified;
    };
    const routes = config.routes.map((r): CompiledRoute => ({ ...r, upstreamPath: r.upstream?.pathname ?? '/', policy: compilePolicy(r.allow), agent: r.upstream && agentFor(r.upstream) }));
    const trusted = new BlockList();
    for (const [addr = '', bits] of config.trustedProxies.map((cidr) => cidr.split('/')))
      trusted.addSubnet(addr, Number(bits ?? (isIPv4(addr) ? 32 : 128)), isIPv4(addr) ? 'ipv4' : 'ipv6');
    return { config, keySets, authenticate, route: createRouter(routes), tunnels: compileTunnels(config), trusted };
  }

  const ready = () => !draining && [...plan.keySets.values()].every((k) => k.status().usable);

  async function handle(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): Promise<void> {
    const p = plan;
    const ex = beginExchange(req, res, log, 'request');
    if (draining) res.setHeader('connection', 'close'); // every answer asks the client to take its next request elsewhere
    const slot = freeSlots.pop() ?? inflight.push(undefined) - 1;
    inflight[slot] = res;
    const done = () => inflight[slot] === res && ((inflight[slot] = stops[slot] = undefined), freeSlots.push(slot));
    // A response queued behind another on a connection that dies gets neither 'finish' nor 'close' on Node: its request's close frees it.
    res.once('finish', done).once('close', done);
    req.once('close', () => req.socket.destroyed && done());
    const head = inspectHead(req.rawHeaders, p.config.token.header, req.httpVersion);
    // A refused framing closes the connection: Bun would parse on.
    ex.bodyPending = head.hasBody || head.framing !== undefined;
    if (head.framing) return ex.refuse('bad_request', { detail: head.framing });
    const absoluteForm = p.config.tunnels.length > 0 && req.url?.startsWith('http://');
    const to = absoluteForm ? await proxyMode.forward(req, ex, head, p) : await admitRoute(req, res, ex, head, p);
    if (!to) return;
    // Admitted after stop() (its token waited on a key fetch): nothing would end its forwarding.
    if (stopping) return ex.refuse('gateway_stopping');
    // Node still hands us requests pipelined behind an answer that closes the connection: none of them would be answered.
    if (!req.socket.writable || (!res.socket && (req.socket as { _httpMessage?: { _last?: boolean } })._httpMessage?._last)) return ex.log(499, 'client_aborted');

    if (expectsContinue) res.writeContinue();
    const headers = upstreamHeaders(req.rawHeaders, {
      claims: to.claims, forwardClaims: to.forwardClaims, tokenHeader: p.config.token.header,
      upstreamHost: to.authority ?? to.upstream.host, requestedHost: to.authority,
      clientIp: ex.client, requestId: ex.id, bodyFraming: head.bodyFraming,
      trustedPeer: p.config.trustedProxies.length > 0 && ex.client !== '' && p.trusted.check(ex.client, isIPv4(ex.client) ? 'ipv4' : 'ipv6'),
    });
    const onStoppable = (stop: () => void) => void (inflight[slot] === res && (stops[slot] = stop));
    ex.settle(await forward(req, res, { upstream: to.upstream, agent: to.agent, path: to.path, headers, timeouts: p.config.timeouts, hasBody: head.hasBody, onStoppable }));
  }

  /** Target, route, method, token, claims: where the request goes, or nothing once it was answered. */
  async function admitRoute(req: IncomingMessage, res: ServerResponse, ex: Exchange, head: InboundHead, p: Plan): Promise<Admitted | void> {
    const { entry, refuse } = ex;
    const target = parseTarget(req.url ?? '');
    if (!target) return refuse('bad_request', { detail: 'unsafe request target' });
    entry.path = target.path;
    const routed = p.route(target.path);
    if (routed === 'ambiguous') return refuse('bad_request', { detail: "the route depends on the path's case" });
    if (!routed) return refuse('route_unknown');
    const r = routed.route;
    entry.route = r.path;
    if (r.methods && !r.methods.includes(req.method ?? '')) {
      res.setHeader('allow', r.methods.join(', '));
      return refuse('method_not_allowed');
    }
    const verified = await p.authenticate(ex, head.token);
    if (!verified.ok) return refuse(verified.reason);
    entry.identity = identityOf(verified.claims);
    const decision = evaluate(r.policy, verified.claims);
    // At debug, each rule's first failing claim with value and pattern, as `explain` prints them.
    if (!decision.allowed) return refuse('claim_mismatch', { claim: decision.claim, rules: p.config.log.level === 'debug' ? explainPolicy(r.policy, verified.claims) : undefined });
    entry.rule = decision.rule;
    if (r.upstream && r.agent) return { upstream: r.upstream, agent: r.agent, path: routed.upstreamPath + target.query, claims: verified.claims, forwardClaims: r.forwardClaims };
    // Forward-auth (nginx auth_request, Traefik ForwardAuth, Envoy ext_authz): the verdict is the answer.
    const names = r.forwardClaims.length > 0 ? r.forwardClaims : IDENTITY_CLAIMS;
    // Every named header, empty when the claim is missing, so a proxy that copies only what we send cannot pass on a client's own.
    const headers = claimHeaders(verified.claims, names, { 'x-request-id': ex.id, 'cache-control': 'no-store', 'content-length': '0' }, '');
    if (ex.bodyPending) headers.connection = 'close';
    res.writeHead(200, headers).end();
    ex.log(200);
  }

  /** A bug, not a client's fault: say so in the log (and answer 502 if we still can). */
  const bug = (err: unknown) => log({ kind: 'error', level: 'error', detail: err instanceof Error ? err.message : String(err) });

  return {
    handle(req, res, expectsContinue = false) {
      track(handle(req, res, expectsContinue).catch((err: unknown) => {
        bug(err);
        if (res.headersSent) res.destroy();
        else res.writeHead(502, { 'content-type': 'application/json', connection: 'close' }).end('{"error":"upstream_unreachable","id":""}');
      }));
    },
    connect: (req, socket, head) => track(proxyMode.connect(req, socket, head, plan).catch((err: unknown) => (bug(err), socket.destroy()))),
    listening: (ports) => proxyMode.listening(ports),
    admin(req, res) {
      const path = (req.url ?? '').split('?')[0];
      const send = (status: number, body: string, type = 'application/json') => void res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
      if (path === '/healthz') return send(200, '{"status":"ok"}');
      const issuers = new Map([...plan.keySets].map(([name, k]) => [name, k.status()]));
      const snapshot = { issuers, tunnelsOpen: proxyMode.open(), ready: ready(), now: (opts.now ?? Date.now)(), tokenCache };
      if (path === '/metrics') return send(200, metrics.render(snapshot), 'text/plain; version=0.0.4; charset=utf-8');
      if (path !== '/readyz') return send(404, '{"error":"route_unknown"}');
      send(snapshot.ready ? 200 : 503, JSON.stringify({ ready: snapshot.ready, draining, issuers: Object.fromEntries(issuers) }));
    },
    start: async () => void ((started = true), await Promise.all([...plan.keySets.values()].map((k) => k.start()))),
    // Pools of upstreams no route names any more are kept, not cut under requests still using them, until stop().
    reload: (config) => void (plan = compile(config)),
    drain() {
      draining = true;
      for (const res of inflight) if (res && !res.headersSent) res.setHeader('connection', 'close');
    },
    async stop() {
      stopping = true;
      for (const k of keySetPool.values()) k.stop();
      for (const stop of stops) stop?.();
      for (const a of agents.values()) a.destroy();
      await proxyMode.stop();
      // Exchanges still being admitted write their lines once their key fetch (discovery, then the key set) and, for a
      // CONNECT, DNS lookup end: wait for them, at most as long as those can take.
      const { fetchTimeoutMs } = initial.keys, { upstreamConnectMs } = plan.config.timeouts;
      await Promise.race([new Promise<void>((resolve) => (unlogged === 0 ? resolve() : waiting.push(resolve))), sleep(2 * fetchTimeoutMs + upstreamConnectMs + 1_000, undefined, { ref: false })]);
    },
    ready,
  };
}
