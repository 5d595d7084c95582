// `npm run bench`: the gateway against a bare node:http pass-through proxy,
// side by side in one run, on loopback only, bounded in time. Prints a table
// of requests/s, latency and the ratio to the bare proxy. Never run by `npm test`.
import http from 'node:http';
import os from 'node:os';
import type { AddressInfo } from 'node:net';
import { GATEWAY_RUNTIME, generateRsaKey, signToken, startGateway, startIssuer, startServer, type RunningGateway } from '../helpers.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 64);
const BODY = Buffer.alloc(100, 'x');

interface Result { name: string; rps: number; p50: number; p99: number; errors: number }

/** A keep-alive load loop: CONNECTIONS requests in flight until SECONDS have passed. */
async function drive(name: string, port: number, headersFor: (i: number) => Record<string, string>, expect: number): Promise<Result> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONNECTIONS });
  const latencies: number[] = [];
  let errors = 0;
  let i = 0;
  const deadline = performance.now() + SECONDS * 1000;
  const one = () => new Promise<void>((resolve) => {
    const started = performance.now();
    const req = http.request({ host: '127.0.0.1', port, path: '/svc/x', agent, headers: headersFor(i++) }, (res) => {
      res.resume();
      res.on('end', () => {
        if (res.statusCode === expect) latencies.push(performance.now() - started);
        else errors++;
        resolve();
      });
    });
    req.on('error', () => (errors++, resolve()));
    req.end();
  });
  await Promise.all(Array.from({ length: CONNECTIONS }, async () => {
    while (performance.now() < deadline) await one();
  }));
  agent.destroy();
  latencies.sort((a, b) => a - b);
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * q))] ?? NaN;
  return { name, rps: latencies.length / SECONDS, p50: at(0.5), p99: at(0.99), errors };
}

function bareProxy(upstreamPort: number): Promise<http.Server> {
  const agent = new http.Agent({ keepAlive: true });
  const server = http.createServer((req, res) => {
    const out = http.request({ host: '127.0.0.1', port: upstreamPort, path: req.url, method: req.method, headers: req.headers, agent }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const key = await generateRsaKey('bench');
const issuer = await startIssuer({ keys: [key.jwk] });
const upstream = await startServer((_req, res) => res.writeHead(200, { 'content-length': BODY.length }).end(BODY));
const bare = await bareProxy(upstream.port);
const gw: RunningGateway = await startGateway({
  issuers: [{ issuer: issuer.issuer, audience: 'bench' }],
  routes: [{ path: '/svc', upstream: upstream.url, allow: [{ repository: 'octo-org/octo-repo' }] }],
});
const now = Math.floor(Date.now() / 1000);
const mint = (n: number) => signToken({ alg: 'RS256', kid: 'bench' }, { iss: issuer.issuer, aud: 'bench', exp: now + 600, repository: 'octo-org/octo-repo', jti: String(n) }, key.privateKey);
const same = mint(0);
const fresh = Array.from({ length: 20_000 }, (_, n) => mint(n + 1));
const junk = `${same.slice(0, -8)}AAAAAAAA`;

const results: Result[] = [];
results.push(await drive('bare node:http proxy, no auth', (bare.address() as AddressInfo).port, () => ({}), 200));
results.push(await drive('(a) gateway, same token each request', gw.port, () => ({ 'gateway-authorization': same }), 200));
results.push(await drive('(b) gateway, fresh token each request', gw.port, (i) => ({ 'gateway-authorization': fresh[i % fresh.length]! }), 200));
results.push(await drive('(c) gateway, invalid signature', gw.port, () => ({ 'gateway-authorization': junk }), 401));

const base = results[0]!.rps;
console.log(`\noidc-gateway bench: ${os.cpus().length} cores, load from node ${process.versions.node} (built-in keep-alive client), gateway on ${GATEWAY_RUNTIME.includes('bun') ? 'bun' : `node ${process.versions.node}`}`);
console.log(`${CONNECTIONS} connections, ${SECONDS} s each, ${BODY.length}-byte responses\n`);
console.log('| contender | req/s | ratio | p50 ms | p99 ms | errors |');
console.log('|---|---:|---:|---:|---:|---:|');
for (const r of results) console.log(`| ${r.name} | ${r.rps.toFixed(0)} | ${(r.rps / base).toFixed(2)} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} | ${r.errors} |`);

await gw.close();
bare.close();
bare.closeAllConnections();
await Promise.all([issuer.close(), upstream.close()]);
