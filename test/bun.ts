// The Bun pass of `npm test`: the end-to-end files again, with the gateway
// process running `bun dist/main.js`. Bun comes from PATH, or else from the
// npm registry through npx (a CI tool, not a project dependency).
import { execFileSync, spawnSync } from 'node:child_process';

const BUN_VERSION = '1.4.5';
const E2E_FILES = ['test/gateway.test.ts', 'test/streaming.test.ts', 'test/cli.test.ts', 'test/limits.test.ts', 'test/tunnel.test.ts', 'test/forwardauth.test.ts', 'test/explain.test.ts', 'test/lifecycle.test.ts', 'test/observability.test.ts', 'test/faults.test.ts', 'test/instances.test.ts', 'test/locked.test.ts', 'test/fuzz.test.ts', 'test/host.test.ts'];

function findBun(): string | undefined {
  const probe = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 120_000 }).trim();
    } catch {
      return undefined;
    }
  };
  const script = 'console.log(process.execPath + " " + Bun.version)';
  const found = probe('bun', ['-e', script]) ?? probe('npx', ['--yes', `bun@${BUN_VERSION}`, '-e', script]);
  if (!found) return undefined;
  const [path = '', version = '0'] = found.split('\n').at(-1)!.split(' ');
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return major > 1 || (major === 1 && minor >= 4) ? path : undefined;
}

const bun = findBun();
if (!bun) {
  const why = `Bun >= 1.4 was not found on PATH and could not be fetched with npx bun@${BUN_VERSION}`;
  if (process.env.CI) {
    console.error(`bun pass: ${why}; CI requires it.`);
    process.exit(1);
  }
  console.log(`bun pass: skipped: ${why}.`);
  process.exit(0);
}
console.log(`bun pass: running the end-to-end tests against ${bun} dist/main.js`);
const run = spawnSync(process.execPath, ['--import', 'tsx', '--test', ...E2E_FILES], {
  stdio: 'inherit',
  env: { ...process.env, GATEWAY_RUNTIME: bun },
});
process.exit(run.status ?? 1);
