// The audit trail: one exchange per client request from its first byte to its one JSON line, with the request
// id, the fields gathered on the way, and the only way a refusal is answered (status, reason, id; never a claim
// value). Redaction lives here: the token is never passed in, and of the claims only the identity is written.
import { randomUUID } from 'node:crypto';
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import { isIPv4 } from 'node:net';
import type { Duplex } from 'node:stream';
import { STATUS, type Reason } from './errors.js';
import type { Claims } from './jwt.js';
import { claimText } from './policy.js';
import type { ForwardOutcome } from './proxy.js';

/** The claims that say who came in (GitHub's OIDC token claims). */
export const IDENTITY_CLAIMS = ['iss', 'sub', 'repository', 'repository_id', 'repository_owner', 'ref', 'sha', 'workflow_ref',
  'job_workflow_ref', 'environment', 'actor', 'run_id', 'run_attempt', 'jti'] as const;

export type Log = (line: Record<string, unknown>) => void;

// Verified claims are frozen and a cached token's are shared by all its requests: its identity is built once.
const identities = new WeakMap<Claims, Readonly<Record<string, string>>>();

export function identityOf(claims: Claims): Readonly<Record<string, string>> {
  const known = identities.get(claims);
  if (known) return known;
  const identity = Object.freeze(Object.fromEntries(IDENTITY_CLAIMS.map((n) => [n, claimText(claims, n)]).filter(([, v]) => v !== undefined)));
  identities.set(claims, identity);
  return identity;
}

const RANK = { debug: 0, info: 1, warn: 2, error: 3 } as const;
export type LogLevel = keyof typeof RANK;

/** A line's level: its own, else warn for what went wrong on our side or the issuer's, else info. */
function levelOf(line: Record<string, unknown>): LogLevel {
  if (typeof line.level === 'string' && Object.hasOwn(RANK, line.level)) return line.level as LogLevel;
  return line.decision === 'error' || line.result === 'error' || line.result === 'key_skipped' ? 'warn' : 'info';
}

/** A log that writes each line at or above `minimum()` as JSON to `write`, stamped with the time and level. */
export function jsonLines(write: (text: string) => void, minimum: () => LogLevel = () => 'info'): Log {
  let stampedAt = -1, stamp = ''; // a busy gateway writes several lines per millisecond: one timestamp for them all
  return (line) => {
    const level = levelOf(line);
    // start and stop are always written: they say which process and ports a log belongs to.
    if (RANK[level] < RANK[minimum()] && line.kind !== 'start' && line.kind !== 'stop') return;
    const now = Date.now();
    if (now !== stampedAt) stamp = new Date((stampedAt = now)).toISOString();
    // Time and level are spliced in front of the line's JSON: copying a 20-field line to put them first cost as much as the JSON.
    // A line with a time or level of its own, or no fields, is copied instead, so that no key is written twice.
    const json = Object.hasOwn(line, 'level') || Object.hasOwn(line, 'time') ? '' : JSON.stringify(line);
    write(json.length > 2 ? `{"time":"${stamp}","level":"${level}",${json.slice(1)}\n` : `${JSON.stringify(Object.assign({ time: stamp, level }, line))}\n`);
  };
}

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
      // Not `{ ...entry, status, ... }`: on Node 20 such a literal leaves a third of what it allocates surviving young-generation GCs.
      log(Object.assign({}, ex.entry, { status, decision: decisionOf(status, reason), reason }, extra, { ms }));
    },
    refuse(reason, extra) {
      // Proxy clients (forward and CONNECT) get 407 and a Basic challenge when they sent no credentials.
      const status = ex.entry.kind !== 'request' && reason === 'token_missing' ? 407 : STATUS[reason];
      reply(out, status, reason, id, ex.bodyPending);
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
const decisionOf = (status: number, reason: Reason | undefined) => (status < 400 || reason === undefined ? 'allow' : status >= 499 ? 'error' : 'deny');

/** A refusal on the wire, through the ServerResponse or, on a CONNECT socket, which has none, written by hand. */
function reply(out: ServerResponse | Duplex, status: number, reason: Reason, id: string, bodyPending: boolean): void {
  const body = JSON.stringify({ error: reason, id });
  const headers: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store' };
  // RFC 6750 §3.1: no error code when no credentials were sent at all.
  if (status === 401) headers['www-authenticate'] = reason === 'token_missing' ? 'Bearer realm="oidc-gateway"' : 'Bearer realm="oidc-gateway", error="invalid_token"';
  if (status === 407) headers['proxy-authenticate'] = 'Basic realm="oidc-gateway"';
  if (status === 503) headers['retry-after'] = '5';
  if ('writeHead' in out) {
    if (out.headersSent) return void out.destroy();
    // A refused body is not read: close the connection instead of draining it.
    if (bodyPending) headers.connection = 'close';
    return void out.writeHead(status, headers).end(body);
  }
  if (!out.writable) return void out.destroy();
  // Nothing reads a refused CONNECT socket and no server timer watches it any more:
  // discard what the client still sends, and cut it if it does not close in time.
  out.resume();
  setTimeout(() => out.destroy(), 2_000).unref();
  const lines = Object.entries({ ...headers, 'content-length': String(body.length), connection: 'close' }).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  // node:http names every status a refusal can have but nginx's 499.
  out.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Client Closed Request'}\r\n${lines}\r\n${body}`);
}
