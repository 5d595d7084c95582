// One client exchange from its first byte to its audit line: the request id,
// the fields gathered for the log as the request moves on, and the only way
// a refusal is answered (status, reason, id; never a claim value or the token).
import { randomUUID } from 'node:crypto';
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import { isIPv4 } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Log } from './audit.js';
import { STATUS, type Reason } from './errors.js';
import type { ForwardOutcome } from './proxy.js';

export interface Exchange {
  readonly id: string;
  readonly client: string;
  /** The audit line's fields, filled in step by step; `kind` says what the client asked for. */
  readonly entry: Record<string, unknown>;
  /** Whether an unread request body follows, so a refusal must close the connection. */
  bodyPending: boolean;
  refuse(reason: Reason, extra?: Record<string, unknown>): void;
  /** Logs a finished exchange, answering first if the upstream failed before its head. */
  settle(outcome: ForwardOutcome): void;
  log(status: number, reason?: Reason, extra?: Record<string, unknown>): void;
}

export function beginExchange(req: IncomingMessage, out: ServerResponse | Duplex, log: Log, kind: string): Exchange {
  const id = randomUUID();
  const started = performance.now();
  const a = req.socket.remoteAddress ?? '';
  const client = a.startsWith('::ffff:') && isIPv4(a.slice(7)) ? a.slice(7) : a;
  const ex: Exchange = {
    id,
    client,
    entry: { kind, id, method: req.method, client },
    bodyPending: false,
    log(status, reason, extra) {
      const ms = Math.round((performance.now() - started) * 10) / 10;
      log({ ...ex.entry, status, decision: decisionOf(status, reason), reason, ...extra, ms });
    },
    refuse(reason, extra) {
      // Proxy clients (forward and CONNECT) get 407 and a Basic challenge when they sent no credentials.
      const status = ex.entry.kind !== 'request' && reason === 'token_missing' ? 407 : STATUS[reason];
      if ('writeHead' in out) reply(out, status, reason, id, ex.bodyPending);
      else socketReply(out, status, reason, id);
      ex.log(status, reason, extra);
    },
    settle(o) {
      const counts = { upstreamStatus: o.upstreamStatus, bytesIn: o.bytesIn, bytesOut: o.bytesOut };
      if (o.reason && !o.headSent) return ex.refuse(o.reason, counts);
      // After the head was sent a failure can only be logged: the client saw the upstream's status.
      ex.log(o.upstreamStatus ?? 502, o.reason, counts);
    },
  };
  return ex;
}

/** allow: admitted (even if the upstream failed later); error: we could not serve it; deny: refused. */
function decisionOf(status: number, reason: Reason | undefined): 'allow' | 'deny' | 'error' {
  if (status < 400 || reason === undefined) return 'allow';
  return status >= 499 ? 'error' : 'deny';
}

function errorHeaders(status: number, reason: Reason): Record<string, string> {
  const headers: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store' };
  // RFC 6750 §3.1: no error code when no credentials were sent at all.
  if (status === 401) headers['www-authenticate'] = reason === 'token_missing' ? 'Bearer realm="oidc-gateway"' : 'Bearer realm="oidc-gateway", error="invalid_token"';
  if (status === 407) headers['proxy-authenticate'] = 'Basic realm="oidc-gateway"';
  if (status === 503) headers['retry-after'] = '5';
  return headers;
}

function reply(res: ServerResponse, status: number, reason: Reason, id: string, bodyPending: boolean): void {
  if (res.headersSent) return void res.destroy();
  const headers = errorHeaders(status, reason);
  // A refused body is not read: close the connection instead of draining it.
  if (bodyPending) headers.connection = 'close';
  res.writeHead(status, headers);
  res.end(JSON.stringify({ error: reason, id }));
}

/** The same answer on a CONNECT socket, which has no ServerResponse. */
function socketReply(socket: Duplex, status: number, reason: Reason, id: string): void {
  if (!socket.writable) return void socket.destroy();
  // Nothing reads a refused CONNECT socket and no server timer watches it any more:
  // discard what the client still sends, and cut it if it does not close in time.
  socket.resume();
  setTimeout(() => socket.destroy(), 2_000).unref();
  const body = JSON.stringify({ error: reason, id });
  const headers = { ...errorHeaders(status, reason), 'content-length': String(body.length), connection: 'close' };
  const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  // node:http names every status a refusal can have but nginx's 499.
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Client Closed Request'}\r\n${lines}\r\n${body}`);
}
