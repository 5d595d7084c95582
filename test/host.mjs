// A host program that embeds the built package as the README's Embedding section shows, in plain JavaScript so that
// node and bun run it as it is (host.test.ts runs it on GATEWAY_RUNTIME). argv[2] is the config as JSON. It writes
// each audit line as JSON to stdout, then {"kind":"host","port":N} once listening; SIGTERM stops the gateway at once.
import http from 'node:http';
import { createGateway, parseConfig } from 'oidc-gateway';

const parsed = parseConfig(JSON.parse(process.argv[2] ?? '{}'));
if (!parsed.ok) {
  process.stderr.write(`${parsed.problems.join('\n')}\n`);
  process.exit(2);
}
const gateway = createGateway(parsed.config, { log: (line) => process.stdout.write(`${JSON.stringify(line)}\n`) });
await gateway.start();
const server = http.createServer();
server.on('request', (req, res) => gateway.handle(req, res));
server.on('checkContinue', (req, res) => gateway.handle(req, res, true));
server.on('connect', (req, socket, head) => gateway.connect(req, socket, head));
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  gateway.listening([port]);
  process.stdout.write(`${JSON.stringify({ kind: 'host', port })}\n`);
});
process.on('SIGTERM', () => {
  gateway.drain();
  server.close();
  void gateway.stop().then(() => process.exit(0));
});
