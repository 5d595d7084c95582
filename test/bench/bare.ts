// The ceiling: a pass-through proxy with nothing a gateway adds (no auth, no header hygiene, no log),
// node:http with a keep-alive Agent, streaming both ways, and CONNECT piped to any target. Run as its
// own process, on Node (`node --import tsx bare.ts PORT`) or Bun (`bun bare.ts PORT`), so its CPU and
// memory can be read from /proc like the gateway's. Prints {"port":N} once listening; exits when its
// stdin closes, so it never outlives the bench that started it. With SPIN_US it first spins that many
// microseconds per request (no allocation, no system call): what a gateway's added CPU alone costs.
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';

const upstreamPort = Number(process.argv[2]);
const spinMs = Number(process.argv[3] ?? 0) / 1000;
if (!(upstreamPort > 0) || !(spinMs >= 0)) {
  process.stderr.write('usage: bare.ts UPSTREAM_PORT [SPIN_US]\n');
  process.exit(2);
}

const agent = new http.Agent({ keepAlive: true, maxFreeSockets: 256 });

const server = http.createServer((req, res) => {
  for (const from = performance.now(); spinMs > 0 && performance.now() - from < spinMs; );
  const out = http.request({ host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers, agent }, (up) => {
    res.writeHead(up.statusCode ?? 502, up.headers);
    up.pipe(res);
    up.on('error', () => res.destroy());
  });
  out.on('error', () => res.destroy());
  req.on('error', () => out.destroy());
  res.on('close', () => {
    if (!res.writableFinished) out.destroy();
  });
  req.pipe(out);
});

server.on('connect', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
  const target = req.url ?? '';
  const colon = target.lastIndexOf(':');
  const upstream = net.connect(Number(target.slice(colon + 1)), target.slice(0, colon), () => {
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    if (head.length > 0) upstream.write(head);
    upstream.pipe(socket);
    socket.pipe(upstream);
  });
  upstream.on('error', () => socket.destroy());
  socket.on('error', () => upstream.destroy());
  upstream.on('close', () => socket.destroy());
  socket.on('close', () => upstream.destroy());
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
});

process.stdin.on('end', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0)); // an orderly exit, so that --cpu-prof writes its profile
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();
