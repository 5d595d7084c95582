// A host program that embeds the built package as the README's Embedding section shows, in plain JavaScript so that
// node and bun run it as it is (host.test.ts runs it on GATEWAY_RUNTIME, through helpers.startGateway). It takes
// `--config FILE`, serves the gateway where the config's listen says and the admin endpoints where its admin says, writes
// each audit line as JSON to stdout, starting with a start line as main.js does; SIGTERM stops the gateway at once.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { createGateway, parseConfig } from 'oidc-gateway';

const parsed = parseConfig(JSON.parse(readFileSync(process.argv[process.argv.indexOf('--config') + 1], 'utf8')));
if (!parsed.ok) {
  process.stderr.write(`${parsed.problems.join('\n')}\n`);
  process.exit(2);
}
const { listen, admin } = parsed.config;
const log = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const gateway = createGateway(parsed.config, { log });
await gateway.start();
const server = http.createServer();
server.on('request', (req, res) => gateway.handle(req, res));
server.on('checkContinue', (req, res) => gateway.handle(req, res, true));
server.on('connect', (req, socket, head) => gateway.connect(req, socket, head));
const adminServer = http.createServer((req, res) => gateway.admin(req, res));
const bound = (s, at) => new Promise((resolve) => s.listen(at.port, at.host, () => resolve(s.address().port)));
const [port, adminPort] = await Promise.all([bound(server, listen), bound(adminServer, admin)]);
gateway.listening([port, adminPort]);
log({ kind: 'start', port, adminPort });
process.on('SIGTERM', () => {
  gateway.drain();
  server.close();
  adminServer.close();
  void gateway.stop().then(() => process.exit(0));
});
