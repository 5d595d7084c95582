// Streams one admitted request to its upstream and the answer back, with backpressure and nothing buffered whole.
// The caller builds the outgoing head; this module owns sockets, timeouts and the failure reasons.
import http, { type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { GatewayConfig } from './config.js';
import type { Reason } from './errors.js';
import { downstreamHeaders } from './headers.js';

export interface ForwardOptions {
  readonly upstream: URL;
  readonly agent: http.Agent;
  readonly path: string;
  readonly headers: OutgoingHttpHeaders;
  readonly timeouts: GatewayConfig['timeouts'];
  /** Without a body the upstream request ends at once. */
  readonly hasBody: boolean;
  /** Receives what ends this exchange as `gateway_stopping`, for a shutdown: answered 503 if no head was sent yet, else cut. */
  readonly onStoppable?: (stop: () => void) => void;
}

export interface ForwardOutcome {
  /** Set when the exchange failed; if `headSent` is false the caller still owes the client an answer. */
  readonly reason?: Reason;
  readonly headSent: boolean;
  readonly upstreamStatus?: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
}

export function createAgent(upstream: URL): http.Agent {
  // Idle pooled sockets close after 4 s, before common upstream keep-alive timeouts (Node's 5 s) close them under us.
  const options = { keepAlive: true, maxFreeSockets: 1_024, scheduling: 'lifo' as const, timeout: 4_000 };
  return upstream.protocol === 'https:' ? new https.Agent(options) : new http.Agent(options);
}

/** Forwards `req` and streams the answer into `res`. Resolves once both sides are done; never rejects. */
export function forward(req: IncomingMessage, res: ServerResponse, o: ForwardOptions): Promise<ForwardOutcome> {
  return new Promise((resolve) => {
    let bytesIn = 0, bytesOut = 0, headSent = false, settled = false;
    let upstreamStatus: number | undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;

    // Only the first outcome counts: resolve ignores later calls, and a settled exchange is never sent again (below).
    const settle = (reason?: Reason) => {
      settled = true;
      clearTimeout(timer);
      resolve({ reason, headSent, upstreamStatus, bytesIn, bytesOut });
    };
    // Our own timeouts destroy the request with a reason, so the error path knows 504 from 502.
    const giveUp = (reason: Reason) => () => (out.destroy(), settle(reason));

    // A request without a body, of an idempotent method (RFC 9110 §9.2.2), that fails on a pooled socket before any
    // answer is sent once more on a new connection: the upstream may have closed the socket as we reused it.
    const retriable = !o.hasBody && ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'].includes(req.method ?? '');
    let out: http.ClientRequest;
    let readBefore = 0;
    const send = (agent: http.Agent | false) => {
      out = (o.upstream.protocol === 'https:' ? https : http).request({
        protocol: o.upstream.protocol,
        hostname: o.upstream.hostname.startsWith('[') ? o.upstream.hostname.slice(1, -1) : o.upstream.hostname,
        port: o.upstream.port || (o.upstream.protocol === 'https:' ? 443 : 80),
        method: req.method,
        path: o.path,
        headers: o.headers,
        agent,
      });
      out.on('socket', (socket) => {
        readBefore = socket.bytesRead;
        if (!socket.connecting) return;
        timer = setTimeout(giveUp('upstream_timeout'), o.timeouts.upstreamConnectMs);
        socket.once('connect', () => clearTimeout(timer));
      });
      out.setTimeout(o.timeouts.idleMs, giveUp('upstream_timeout'));
      // From the request fully sent to the response head, like Go's ResponseHeaderTimeout.
      out.on('finish', () => { if (upstreamStatus === undefined) timer = setTimeout(giveUp('upstream_timeout'), o.timeouts.upstreamHeadMs); });
      out.on('error', (err: NodeJS.ErrnoException) => {
        const unanswered = out.socket?.bytesRead === readBefore && (err.code === 'ECONNRESET' || err.code === 'EPIPE');
        // Not once settled: destroying the request ourselves (a timeout) looks the same on Bun, and the client has its answer.
        if (retriable && !settled && agent && out.reusedSocket && unanswered && !res.destroyed) return (clearTimeout(timer), send(false));
        settle(headSent ? 'upstream_reset' : 'upstream_unreachable');
      });
      // We strip Upgrade, so an unsolicited 101 is a broken or hostile upstream (Node reports it here, not as a response).
      out.on('upgrade', (_res, socket) => (socket.destroy(), settle('upstream_unreachable')));
      out.on('response', (upstreamRes) => answer(upstreamRes));
      if (o.hasBody) req.pipe(out);
      else out.end();
    };

    // A client that left while its token was being verified is not forwarded: not even a connection is opened.
    if (res.destroyed) return settle('client_aborted');
    // The client going away cancels the upstream exchange at any stage.
    res.on('close', () => { if (!res.writableFinished) giveUp('client_aborted')(); });
    o.onStoppable?.(() => (giveUp('gateway_stopping')(), headSent && res.destroy()));
    req.on('data', (chunk: Buffer) => (bytesIn += chunk.length));
    req.on('error', () => out.destroy());
    send(o.agent);

    const answer = (upstreamRes: IncomingMessage) => {
      clearTimeout(timer);
      upstreamStatus = upstreamRes.statusCode ?? 502;
      try {
        // We strip Upgrade, so a 1xx as the final answer is a broken or hostile upstream (as is a head writeHead refuses).
        if (upstreamStatus < 200) throw new RangeError('1xx as the final answer');
        res.writeHead(upstreamStatus, downstreamHeaders(upstreamRes.rawHeaders));
        headSent = true;
      } catch {
        upstreamRes.destroy();
        return settle('upstream_unreachable');
      }
      upstreamRes.on('data', (chunk: Buffer) => (bytesOut += chunk.length));
      // Mid-body failure: the head is out, so cut the response rather than pretend (a client that left first is already settled).
      for (const event of ['error', 'aborted']) upstreamRes.on(event, () => (res.destroy(), settle('upstream_reset')));
      // pipe() with the listeners above, not pipeline(): that builds and aborts an AbortController per response.
      res.once('finish', () => settle());
      upstreamRes.pipe(res);
    };
  });
}
