// `npm run demo` end to end: the demo script itself, as a child process with
// real sockets, run in its non-interactive mode (--exit). It needs dist/, which
// `npm test` builds first.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { startProcess } from './helpers.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

test('the demo admits the allowed token, refuses the other two with their reasons, prints no token and cleans up', async () => {
  const demo = startProcess(process.execPath, ['--import', 'tsx', 'test/demo.ts', '--exit'], { cwd: ROOT });
  const timer = setTimeout(() => void demo.close(), 30_000);
  const exit = await demo.exited;
  clearTimeout(timer);
  const out = demo.stdout() + demo.stderr();

  assert.equal(exit.code, 0, `the demo exited with ${exit.code ?? exit.signal}:\n${out}`);
  assert.match(out, /status 200\b/);
  assert.match(out, /status 403\b/);
  assert.match(out, /claim_mismatch/);
  assert.match(out, /status 401\b/);
  assert.match(out, /signature_invalid/);
  assert.match(out, /All three answers were as expected/);

  const curls = [...out.matchAll(/^\$ curl -sS -H "gateway-authorization: Bearer \$\(cat (\S+\.jwt)\)" http:\/\/127\.0\.0\.1:\d+\/echo\/hello$/gm)];
  assert.equal(curls.length, 3, 'one curl line per token');
  for (const [, file] of curls) assert.ok(!existsSync(file!), `${file} was left behind`);

  assert.doesNotMatch(out, /eyJ[A-Za-z0-9_-]+\.eyJ/, 'a token was printed');
});
