// Proxy mode: CONNECT tunnels and absolute-form (plain-HTTP) forward proxying, both admitted by the `tunnels` rules.
// A destination needs an entry whose `to` names it AND one of that entry's allow rules admitting the token.
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { beginExchange, identityOf, type Exchange, type Log } from './audit.js';
import type { GatewayConfig, TunnelConfig } from './config.js';
import { compileDestinations, parseAuthority, resolveDestination, type Destination, type DestinationMatcher } from './destination.js';
import { inspectHead, type InboundHead, type UpstreamHeadOptions } from './headers.js';
import type { Verification } from './jwt.js';
import { compilePolicy, evaluate, type Policy } from './policy.js';
import { createAgent, type ForwardOptions } from './proxy.js';
import { openTunnel, type Tunnel } from './tunnel.js';

/** What a client may send after CONNECT before its 200, held until the tunnel opens. */
const EARLY_BYTES = 64 * 1024;

/** Where an admitted request goes, whether it came by route or as an absolute-form request. */
export interface Admitted extends Pick<ForwardOptions, 'upstream' | 'agent' | 'path'>, Pick<UpstreamHeadOptions, 'claims' | 'forwardClaims'> {
  /** An absolute-form request's authority: with such a target the Host header is ignored, also for X-Forwarded-Host (RFC 9112 §3.2.2). */
  readonly authority?: string;
}

export type CompiledTunnel = TunnelConfig & { readonly destinations: DestinationMatcher; readonly policy: Policy };

/** What proxy mode needs of the config in force when a request arrived. */
export interface ProxyPlan {
  readonly config: GatewayConfig;
  readonly tunnels: readonly CompiledTunnel[];
  /** Verifies a request's token, noting its SHA-256 in the exchange's audit entry. */
  readonly authenticate: (ex: Exchange, token: string | undefined) => Promise<Verification>;
}

export function compileTunnels(config: GatewayConfig): CompiledTunnel[] {
  return config.tunnels.map((t) => ({ ...t, destinations: compileDestinations(t.to), policy: compilePolicy(t.allow) }));
}

/** Proxy mode's sockets and pool outlive any one config: a reload leaves open tunnels as they are. */
export function createProxyMode(log: Log) {
  const agent = createAgent(new URL('http://forward.invalid'));
  // Open tunnels until their audit line is written.
  const live = new Set<Tunnel>();
  // Every CONNECT socket from arrival to close, so a shutdown can end those still being admitted.
  const sockets = new Set<Duplex>();
  let stopping = false, ownPorts: readonly number[] = [];

  /** Token, then destination, then claims, then the resolved address: the admitted entry and address, or a refusal already answered. */
  async function admit(ex: Exchange, dest: Destination, head: InboundHead, plan: ProxyPlan) {
    // Proxy-Authorization first, else the token header (as with `curl --proxy-header`).
    const token = head.proxyToken === undefined || head.token === undefined ? undefined : head.proxyToken || head.token;
    const verified = await plan.authenticate(ex, token);
    if (!verified.ok) return void ex.refuse(verified.reason);
    ex.entry.identity = identityOf(verified.claims);
    // The first claim that kept out an entry naming the destination; none if no entry names it.
    let claim: string | undefined;
    for (const t of plan.tunnels) {
      if (!t.destinations.matches(dest)) continue;
      const decision = evaluate(t.policy, verified.claims);
      if (decision.allowed) {
        const resolved = await resolveDestination(dest, t.destinations, ownPorts, plan.config.timeouts.upstreamConnectMs);
        if ('reason' in resolved) return void ex.refuse(resolved.reason);
        return { tunnel: t, claims: verified.claims, address: resolved.address };
      }
      claim ??= decision.claim;
    }
    return void (claim !== undefined ? ex.refuse('claim_mismatch', { claim }) : ex.refuse('connect_target_denied'));
  }

  return {
    /** Admits an absolute-form request (`GET http://host:port/x`): where it goes, or nothing once refused. */
    async forward(req: IncomingMessage, ex: Exchange, head: InboundHead, plan: ProxyPlan): Promise<Admitted | void> {
      const rest = req.url!.slice('http://'.length);
      const cut = rest.search(/[/?]|$/);
      const authority = rest.slice(0, cut);
      const hasPort = authority.startsWith('[') ? authority.includes(']:') : authority.includes(':');
      const dest = parseAuthority(hasPort ? authority : `${authority}:80`);
      const pathAndQuery = rest[cut] === '/' ? rest.slice(cut) : `/${rest.slice(cut)}`;
      ex.entry.kind = 'forward';
      // No path rules apply to a destination that CONNECT could reach byte for byte anyway:
      // only what would break the request line is refused.
      if (!dest || [...pathAndQuery].some((c) => c <= ' ' || c > '~')) return ex.refuse('bad_request', { detail: 'bad request target' });
      const q = pathAndQuery.indexOf('?');
      Object.assign(ex.entry, { path: q < 0 ? pathAndQuery : pathAndQuery.slice(0, q), target: `${dest.host}:${dest.port}` });
      const admitted = await admit(ex, dest, head, plan);
      if (!admitted) return;
      const host = admitted.address.includes(':') ? `[${admitted.address}]` : admitted.address;
      return { upstream: new URL(`http://${host}:${dest.port}`), agent, path: pathAndQuery, claims: admitted.claims, forwardClaims: [], authority };
    },

    async connect(req: IncomingMessage, socket: Duplex, head: Buffer, plan: ProxyPlan): Promise<void> {
      const ex = beginExchange(req, socket, log, 'tunnel');
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
      // Until a tunnel owns the socket, a client that resets must not crash us. Reading
      // (and holding, up to a bound) what it sends meanwhile is how we notice that it left.
      socket.on('error', () => socket.destroy());
      const early = [head];
      let earlyBytes = head.length;
      let left = false;
      const hold = (chunk: Buffer) => ((earlyBytes += chunk.length) > EARLY_BYTES ? socket.destroy() : early.push(chunk));
      socket.on('data', hold).once('end', () => (left = true));
      const dest = parseAuthority(req.url ?? '');
      // The raw target is not logged: a confused client may have put its token there.
      if (!dest) return ex.refuse('bad_request', { detail: 'bad CONNECT target' });
      ex.entry.target = `${dest.host}:${dest.port}`;
      const admitted = await admit(ex, dest, inspectHead(req.rawHeaders, plan.config.token.header), plan);
      if (!admitted) return;
      // Admission can take a key refetch and a DNS lookup: dial nothing for a client that has left since.
      socket.off('data', hold).pause();
      if (left || socket.destroyed || stopping) return ex.refuse(stopping ? 'gateway_stopping' : 'client_aborted');
      const t = admitted.tunnel;
      // Tunnels outlive the short-lived token unless the entry says otherwise.
      const closeAt = Math.min(Date.now() + (t.maxLifetimeSeconds ?? Infinity) * 1000, t.endWithToken ? (admitted.claims.exp as number) * 1000 : Infinity);
      const { upstreamConnectMs: connectTimeoutMs, idleMs } = plan.config.timeouts;
      const options = { address: admitted.address, port: dest.port, connectTimeoutMs, idleMs, closeAt: Number.isFinite(closeAt) ? closeAt : undefined };
      const tunnel = openTunnel(socket, Buffer.concat(early), options);
      live.add(tunnel);
      const outcome = await tunnel.done;
      live.delete(tunnel);
      const counts = { bytesUp: outcome.bytesUp, bytesDown: outcome.bytesDown, closedBy: outcome.closedBy };
      if (!outcome.established) ex.refuse(outcome.reason ?? 'upstream_unreachable', counts);
      else ex.log(200, outcome.reason, counts);
    },

    open: () => live.size,

    listening: (ports: readonly number[]) => void (ownPorts = [...ports]),

    /** Closes every open tunnel and the forward connection pool; resolves once each tunnel has written its audit line. */
    async stop(): Promise<void> {
      stopping = true;
      for (const t of live) t.close();
      // A turn for a tunnel still dialing to write its 503 before every CONNECT socket is closed.
      await new Promise((resolve) => setImmediate(resolve));
      for (const s of sockets) s.destroy();
      agent.destroy();
      // The audit line follows tunnel.done by a tick: wait for it, so a shutdown loses no record.
      while (live.size > 0) await Promise.allSettled([...live].map((t) => t.done)).then(() => new Promise((r) => setImmediate(r)));
    },
  };
}
