// The two listeners, public and admin, with the limits that protect them.
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import http, { type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { GatewayConfig } from './config.js';
import type { Gateway } from './gateway.js';

const MAX_HEADER_BYTES = 16 * 1024;

export interface Listeners {
  readonly publicServer: Server;
  readonly adminServer: Server;
  /** Binds both; resolves with the ports actually bound (port 0 picks one). */
  listen(): Promise<{ port: number; adminPort: number }>;
  /** Applies a reloaded config's client timeouts (the addresses stay as bound). */
  configure(config: GatewayConfig): void;
  /** Turns readiness false; keeps accepting for `graceMs`, every answer asking the client to close (a second call ends the
   *  grace); then stops accepting, lets in-flight requests and tunnels finish for up to `drainMs`, and ends the rest. */
  close(drainMs: number, graceMs?: number): Promise<void>;
}

export function createListeners(gateway: Gateway, config: GatewayConfig): Listeners {
  // Timeouts set as properties work on Node and Bun alike; connectionsCheckingInterval must be an option (sub-30 s on Node).
  const publicServer = http.createServer({ maxHeaderSize: MAX_HEADER_BYTES, connectionsCheckingInterval: 1_000 });
  const configure = (c: GatewayConfig) => {
    publicServer.headersTimeout = c.timeouts.clientHeadersMs;
    // No whole-request deadline (it would cut a long upload): slow heads meet headersTimeout, silent sockets the idle one.
    publicServer.requestTimeout = 0;
    // Every header reaches us (the 16 KiB head cap bounds them): past Node's default count the parser would still frame by a header we never see.
    publicServer.maxHeadersCount = 0;
    publicServer.timeout = c.timeouts.idleMs;
    // Set it above the idle timeout of the balancer in front, so the balancer, not we, closes an idle connection.
    publicServer.keepAliveTimeout = c.timeouts.keepAliveMs;
  };
  configure(config);
  publicServer.on('request', (req, res) => gateway.handle(req, res));
  publicServer.on('checkContinue', (req, res) => gateway.handle(req, res, true));
  publicServer.on('connect', (req, socket, head) => gateway.connect(req, socket, head));
  // A malformed head never reaches a handler: answer 400 and close.
  publicServer.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    // Garbage behind a request whose response is under way: a 400 now would land inside that response's body.
    if (!socket.writable || (socket as { _httpMessage?: unknown })._httpMessage) return void socket.destroy();
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"error":"bad_request","id":""}`);
  });

  const adminServer = http.createServer({ maxHeaderSize: MAX_HEADER_BYTES, headersTimeout: 5_000, requestTimeout: 10_000 });
  adminServer.on('request', (req, res) => gateway.admin(req, res));

  let grace: AbortController | undefined;
  // once() rejects if 'error' (such as EADDRINUSE) comes first.
  const bind = async (server: Server, host: string, port: number) => {
    await once(server.listen(port, host), 'listening');
    return (server.address() as AddressInfo).port;
  };

  return {
    publicServer,
    adminServer,
    async listen() {
      const port = await bind(publicServer, config.listen.host, config.listen.port);
      const adminPort = await bind(adminServer, config.admin.host, config.admin.port);
      gateway.listening([port, adminPort]);
      return { port, adminPort };
    },
    configure,
    async close(drainMs, graceMs = 0) {
      // A second signal (Ctrl-C twice) asks to stop now: it ends the grace, the drain still bounds what follows.
      if (grace) return grace.abort();
      grace = new AbortController();
      // Readiness goes false at once; the admin listener stays up through the drain so probes can see it.
      gateway.drain();
      // Closing the listener refuses connections a balancer may already have sent a request on, and closing idle ones
      // may cut a request being written: neither is retried for a POST. A balancer that follows /readyz stops in time.
      if (graceMs > 0) await sleep(graceMs, undefined, { signal: grace.signal }).catch(() => {});
      const closed = new Promise((resolve) => publicServer.close(resolve));
      // server.close() waits for keep-alive sockets: close the idle ones as in-flight exchanges end.
      const sweep = setInterval(() => publicServer.closeIdleConnections(), 100);
      // The gateway first: a request still waiting on its upstream is answered 503 gateway_stopping, and the clients'
      // connections close a turn later, the answers written. CONNECT sockets are not the server's: the gateway ends tunnels.
      const deadline = setTimeout(() => (void gateway.stop(), setImmediate(() => publicServer.closeAllConnections())), drainMs);
      publicServer.closeIdleConnections();
      await closed;
      clearInterval(sweep);
      clearTimeout(deadline);
      adminServer.closeAllConnections();
      await new Promise((resolve) => adminServer.close(resolve));
    },
  };
}
