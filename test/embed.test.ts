// A host program imports the built package by name and mounts the gateway in its own server.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { generateRsaKey, signToken, startIssuer, startRecorder, type Issuer, type Recorder, type TestKey } from './helpers.ts';

let key: TestKey;
let issuer: Issuer;
let upstream: Recorder;
let server: http.Server;
let stop: () => void;

before(async () => {
  key = await generateRsaKey('k1');
  issuer = await startIssuer({ keys: [key.jwk] });
  upstream = await startRecorder();
  // By package name, through package.json "exports", as a host program would.
  const lib = (await import('oidc-gateway')) as typeof import('../src/index.ts');
  const parsed = lib.parseConfig({
    issuers: [{ issuer: issuer.issuer, audience: 'aud' }],
    routes: [{ path: '/svc', upstream: upstream.url, allow: [{ repository: 'octo-org/octo-repo' }] }],
  });
  assert.ok(parsed.ok);
  const gateway = lib.createGateway(parsed.config);
  await gateway.start();
  stop = () => gateway.stop();
  server = http.createServer();
  server.on('request', (req, res) => gateway.handle(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});

after(async () => {
  stop?.();
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  await Promise.all([issuer?.close(), upstream?.close()]);
});

test('a host program can mount the gateway in its own server', async () => {
  const now = Math.floor(Date.now() / 1000);
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/svc/x`;
  const claims = { iss: issuer.issuer, aud: 'aud', exp: now + 60, repository: 'octo-org/octo-repo' };
  const ok = await fetch(url, { headers: { 'gateway-authorization': signToken({ alg: 'RS256', kid: 'k1' }, claims, key.privateKey) } });
  assert.equal(ok.status, 200);
  assert.equal(upstream.requests.at(-1)?.url, '/x');
  const hits = upstream.hits();
  const denied = await fetch(url, { headers: { 'gateway-authorization': signToken({ alg: 'RS256', kid: 'k1' }, { ...claims, repository: 'octo-org/other' }, key.privateKey) } });
  assert.equal(denied.status, 403);
  assert.equal(upstream.hits(), hits);
});
