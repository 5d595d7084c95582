// The two listeners, public and admin, with the limits that protect them.
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
  /** Stops accepting, lets in-flight exchanges finish for up to `drainMs`, then cuts the rest. */
  close(drainMs: number): Promise<void>;
}

export function createListeners(gateway: Gateway, config: GatewayConfig): Listeners {
  const publicServer = http.createServer({
    maxHeaderSize: MAX_HEADER_BYTES,
    // No whole-request deadline: it would cut a long upload. Slow heads are
    // cut by headersTimeout, silent sockets by the idle timeout below.
    requestTimeout: 0,
    headersTimeout: config.timeouts.clientHeadersMs,
    connectionsCheckingInterval: Math.min(1_000, config.timeouts.clientHeadersMs),
  });
  publicServer.headersTimeout = config.timeouts.clientHeadersMs;
  publicServer.requestTimeout = 0;
  publicServer.timeout = config.timeouts.idleMs;
  publicServer.on('request', (req, res) => gateway.handle(req, res));
  publicServer.on('checkContinue', (req, res) => gateway.handle(req, res, true));
  publicServer.on('connect', (req, socket, head) => gateway.connect(req, socket, head));
  // A malformed head never reaches a handler: answer 400 and close.
  publicServer.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (!socket.writable) return void socket.destroy();
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"error":"bad_request","id":""}`);
  });

  const adminServer = http.createServer({ maxHeaderSize: MAX_HEADER_BYTES, headersTimeout: 5_000, requestTimeout: 10_000 });
  adminServer.on('request', (req, res) => gateway.admin(req, res));

  const bind = (server: Server, host: string, port: number) =>
    new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve((server.address() as AddressInfo).port);
      });
    });

  return {
    publicServer,
    adminServer,
    async listen() {
      const port = await bind(publicServer, config.listen.host, config.listen.port);
      const adminPort = await bind(adminServer, config.admin.host, config.admin.port);
      gateway.listening([port, adminPort]);
      return { port, adminPort };
    },
    async close(drainMs) {
      const closed = Promise.all([publicServer, adminServer].map((s) => new Promise((resolve) => s.close(resolve))));
      // server.close() waits for keep-alive sockets: close the idle ones as in-flight exchanges end.
      const sweep = setInterval(() => publicServer.closeIdleConnections(), 100);
      const deadline = setTimeout(() => {
        // CONNECT sockets are not the HTTP server's to close: the gateway ends its tunnels.
        void gateway.stop();
        publicServer.closeAllConnections();
        adminServer.closeAllConnections();
      }, drainMs);
      publicServer.closeIdleConnections();
      adminServer.closeIdleConnections();
      await closed;
      clearInterval(sweep);
      clearTimeout(deadline);
    },
  };
}
