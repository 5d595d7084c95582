// A CONNECT tunnel to a destination the caller has already admitted: dial, answer 200 only once connected,
// pipe both ways with half-close, destroy both sides on any error. This module owns the sockets and byte counts.
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Reason } from './errors.js';

export interface TunnelOptions {
  readonly address: string;
  readonly port: number;
  readonly connectTimeoutMs: number;
  /** Silence in both directions for this long closes the tunnel. */
  readonly idleMs: number;
  /** Epoch ms at which the tunnel is closed whatever it is doing (lifetime cap, token expiry), if any. */
  readonly closeAt?: number;
}

export interface TunnelOutcome {
  /** Set when the tunnel could not be opened; the caller still owes the client an answer. */
  readonly reason?: Reason;
  readonly established: boolean;
  /** Why the tunnel ended: client, upstream, idle, deadline or shutdown; refused or connect_timeout if it never opened. */
  readonly closedBy?: string;
  readonly bytesUp: number;
  readonly bytesDown: number;
}

/** `done` settles once the tunnel is over; `close()` ends it now (shutdown). */
export type Tunnel = { readonly done: Promise<TunnelOutcome>; close(): void };

const MAX_TIMER_MS = 2 ** 31 - 1;

export function openTunnel(client: Duplex, head: Buffer, o: TunnelOptions): Tunnel {
  let settle!: (outcome: TunnelOutcome) => void;
  const done = new Promise<TunnelOutcome>((resolve) => (settle = resolve));
  let established = false, finished = false;
  let bytesUp = 0, bytesDown = 0;
  let closedBy: string | undefined;
  const timers: ReturnType<typeof setTimeout>[] = [];

  const upstream: Socket = connect({ host: o.address, port: o.port, allowHalfOpen: true });
  const end = (why: string, reason?: Reason) => {
    if (finished) return;
    finished = true;
    closedBy ??= why;
    for (const t of timers) clearTimeout(t);
    // A reset is passed on as a reset: a FIN would tell the other side that what it got was complete. (A TLS socket, a
    // host's https server, or any other Duplex cannot be reset: it is closed.)
    (established && reason === 'client_aborted' ? upstream.resetAndDestroy() : upstream.destroy());
    if (established) try { (reason === 'upstream_reset' ? (client as Socket).resetAndDestroy() : client.destroy()); } catch { client.destroy(); }
    settle({ reason, established, closedBy, bytesUp, bytesDown });
  };

  // setTimeout fires at once past 2^31-1 ms (24.8 days): re-arm until the deadline is near.
  const deadline = (at: number): void => {
    const wait = at - Date.now();
    timers.push(setTimeout(() => (wait > MAX_TIMER_MS ? deadline(at) : end('deadline')), Math.max(0, Math.min(wait, MAX_TIMER_MS))));
  };
  timers.push(setTimeout(() => end('connect_timeout', 'upstream_timeout'), o.connectTimeoutMs));
  upstream.once('error', () => end(established ? 'upstream' : 'refused', established ? 'upstream_reset' : 'upstream_unreachable'));
  client.once('error', () => end('client', 'client_aborted'));
  client.once('close', () => (established ? end('client') : end('client', 'client_aborted')));

  upstream.once('connect', () => {
    clearTimeout(timers.shift());
    established = true;
    client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    bytesUp += head.length;
    if (head.length > 0) upstream.write(head);
    client.on('data', (chunk: Buffer) => (bytesUp += chunk.length));
    upstream.on('data', (chunk: Buffer) => (bytesDown += chunk.length));
    // pipe() carries backpressure and, with allowHalfOpen, one side's FIN to the other.
    client.pipe(upstream);
    upstream.pipe(client);
    client.once('end', () => (closedBy ??= 'client'));
    upstream.once('end', () => (closedBy ??= 'upstream'));
    // Once the upstream is gone, let what it sent drain to the (already ended) client; one that never reads is cut at idleMs.
    upstream.once('close', () => {
      if (finished || client.writableFinished) return end(closedBy ?? 'upstream');
      client.end();
      client.once('finish', () => end(closedBy ?? 'upstream'));
      timers.push(setTimeout(() => end(closedBy ?? 'upstream'), o.idleMs));
    });
    upstream.setTimeout(o.idleMs, () => end('idle'));
    if (o.closeAt !== undefined) deadline(o.closeAt);
  });

  return { done, close: () => end('shutdown', 'gateway_stopping') };
}
