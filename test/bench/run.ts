// `npm run bench`: the gateway beside a bare pass-through proxy (the ceiling), side by side in one run, on
// loopback only, bounded in time (about 2 minutes per runtime with the defaults on 2 cores). Never run by `npm test`,
// and nothing here is asserted: the targets of issue 6 are printed as met or not, and the exit code is 0
// unless the bench itself broke (or a gateway's log held a token).
//
// What runs: a local issuer, a fast upstream (node:http, 100-byte answers) and an echo server in this
// process; the bare proxy (bare.ts) and the gateway (dist/main.js) as their own processes, on Node and,
// when found, on Bun; the load from wrk when it is on PATH (no Lua: one fixed token header), else from
// load.ts in its own process. The cells are (a) the same token on every request, (b) a fresh token on
// every request, (c) invalid tokens, (d) a big upload and download, (e) 1,000 routes and rules, 1 and
// 256 connections, and 1,000 open CONNECT tunnels. Tokens are never printed.
//
// Knobs (environment), defaults in brackets:
//   BENCH_SECONDS [2]       length of each timed run
//   BENCH_RUNS [3]          rounds: every request cell runs once per round; medians are shown
//   BENCH_WARMUP [4]        seconds of load on each new server process (and 0.5 s before each run); 0: none
//   BENCH_CONNECTIONS [64]  keep-alive connections of the request cells (besides the 1 and 256 of (e))
//   BENCH_BIG_MIB [1024]    size of (d)'s upload and download
//   BENCH_TUNNELS [1000]    (e)'s open tunnels;  BENCH_ROUTES [1000]: (e)'s routes and rules
//   BENCH_TOKENS [16384]    pre-signed fresh tokens for (b); more than the gateway's cache holds
//   BENCH_ONLY [all]        a subset: a, b, c, d, e, or e's parts routes, conns, tunnels (BENCH_ONLY=a,b);
//                           `spin`, only when named: the bare proxy spinning 5 to 33 µs per request, beside itself
//   BENCH_RUNTIMES [node,bun]  BENCH_LOAD [auto]: builtin or wrk;  GATEWAY_RUNTIME: a bun executable
//   BENCH_LOG_LEVEL [info]  the gateway's audit log level (it goes to a file)
//   BENCH_PIN [0]           1: bare proxies and gateways on CPU 0 only, the bench, upstream and load on the
//                           others (taskset): steadier rounds, for comparing builds; not how the README's runs were made
//   BENCH_PROFILE           a directory: gateways and bare proxies on Node run with --cpu-prof there, and
//                           each one's top self-time functions are printed;  BENCH_VERBOSE=1: every run's numbers
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { join, resolve } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { generateRsaKey, seededRandom, startIssuer, startServer, workflowToken, type Issuer, type TestKey, type TestServer } from '../helpers.ts';
import type { RpsResult, TransferResult, TunnelsOpened, TunnelsPumped } from './load.ts';
import { cpuModel, cpuTicks, memoryOf, resetPeak, ticksPerSecond } from './proc.ts';
import { summarize } from './profile.ts';
import { findBun, NODE, pinCpus, runWrk, startBare, startGateway, startLoad, which, wrkVersion, type GatewayProcess, type LoadGenerator, type Runtime, type ServerProcess } from './procs.ts';

// ---------------------------------------------------------------- knobs

function knob(name: string, fallback: number, min = 1): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!(Number.isFinite(value) && value >= min)) usage(`${name}: expected a number >= ${min}, got ${JSON.stringify(text)}`);
  return value;
}

function usage(problem: string): never {
  process.stderr.write(`bench: ${problem}\n`);
  process.exit(2);
}

const SECONDS = knob('BENCH_SECONDS', 2, 0.1);
const RUNS = Math.round(knob('BENCH_RUNS', 3));
const WARMUP = knob('BENCH_WARMUP', 4, 0);
// The gateway on Node takes a few thousand requests to reach its steady state (JIT tiers, the young generation
// growing): each new process gets WARMUP seconds of (a)'s load, each cell a short warm-up of its own path.
const CELL_WARMUP = WARMUP > 0 ? 0.5 : 0;
const CONNECTIONS = Math.round(knob('BENCH_CONNECTIONS', 64));
const BIG_MIB = knob('BENCH_BIG_MIB', 1024);
const TUNNELS = Math.round(knob('BENCH_TUNNELS', 1000));
const ROUTES = Math.max(3, Math.round(knob('BENCH_ROUTES', 1000)));
const TOKENS = Math.round(knob('BENCH_TOKENS', 16_384));
const LOG_LEVEL = process.env.BENCH_LOG_LEVEL || 'info';
const VERBOSE = process.env.BENCH_VERBOSE === '1';
const PROFILE_DIR = process.env.BENCH_PROFILE ? resolve(process.env.BENCH_PROFILE) : undefined;
const PIN = process.env.BENCH_PIN === '1';
const LOAD = process.env.BENCH_LOAD || 'auto';
if (!['auto', 'builtin', 'wrk'].includes(LOAD)) usage('BENCH_LOAD: expected auto, builtin or wrk');

const PARTS = ['a', 'b', 'c', 'd', 'routes', 'conns', 'tunnels'] as const;
// Not in a default run: how much throughput a given amount of added CPU costs the bare proxy (what issue 6's
// ratios allow a gateway), measured like the cells, against the unspun bare proxy in the same rounds.
const SPIN_MICROSECONDS = [5, 10, 20, 33] as const;
type Part = (typeof PARTS)[number] | 'spin';
const ONLY = new Set<Part>();
for (const word of (process.env.BENCH_ONLY || PARTS.join(',')).split(',').map((w) => w.trim().toLowerCase()).filter(Boolean)) {
  if (word === 'e') ['routes', 'conns', 'tunnels'].forEach((p) => ONLY.add(p as Part));
  else if ([...PARTS, 'spin'].includes(word)) ONLY.add(word as Part);
  else usage(`BENCH_ONLY: unknown part ${JSON.stringify(word)} (use a, b, c, d, e, routes, conns, tunnels, spin)`);
}
// 1,000 routes are compared with (a), the same request on a 1-route gateway.
if (ONLY.has('routes')) ONLY.add('a');
const only = (part: Part) => ONLY.has(part);
const RUNTIMES = new Set((process.env.BENCH_RUNTIMES || 'node,bun').split(',').map((w) => w.trim()));

const AUDIENCE = 'api://ActionsOIDCGateway';
const HEADER = 'gateway-authorization';
const BODY = Buffer.alloc(100, 'x');
const MIB = 1024 * 1024;
const BIG = Math.round(BIG_MIB * MIB);
const TUNNEL_MESSAGE = 16 * 1024;
/** The gateway's verified-token cache size (issue 6: LRU, 10,000 entries by default). */
const CACHE_SIZE = 10_000;
const HZ = ticksPerSecond();

// ---------------------------------------------------------------- small things

const progress = (text: string) => process.stderr.write(`bench: ${text}\n`);
const int = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-');
const fixed = (n: number | undefined, digits = 2) => (n !== undefined && Number.isFinite(n) ? n.toFixed(digits) : '-');
const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);

function median(values: readonly number[]): number {
  const sorted = values.filter(Number.isFinite).sort((x, y) => x - y);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

const cleanups: (() => unknown)[] = [];
/** Runs `fn` at the end of the bench, however it ends (last registered, first run). */
const atEnd = (fn: () => unknown) => void cleanups.push(fn);
async function cleanUp(): Promise<void> {
  for (const fn of cleanups.splice(0).reverse()) await Promise.resolve().then(fn).catch((err: unknown) => progress(`cleanup: ${String(err)}`));
}

/** Starts a server process, closes it after `use`, whatever happens, and at the bench's end if `use` never returns. */
async function using<S extends { close(): Promise<void> } | undefined, T>(start: Promise<S>, use: (s: S) => Promise<T>): Promise<T> {
  const s = await start;
  atEnd(() => s?.close());
  try {
    return await use(s);
  } finally {
    await s?.close();
  }
}

/** What each process started with --cpu-prof is, by pid, to label its profile. */
const profiledPids = new Map<number, string>();
function profiled<S extends ServerProcess>(s: S, what: string): S {
  if (PROFILE_DIR && s.runtime.name === 'node') profiledPids.set(s.pid, `${what} (pid ${s.pid})`);
  return s;
}

// ---------------------------------------------------------------- servers in this process

/** The upstream: 100 bytes for any path, a counting sink for .../upload, N bytes for .../download?bytes=N. */
function upstreamHandler(req: IncomingMessage, res: ServerResponse): void {
  const url = req.url ?? '';
  if (url.includes('/upload')) {
    let bytes = 0;
    req.on('data', (chunk: Buffer) => (bytes += chunk.length));
    req.on('end', () => {
      const body = JSON.stringify({ bytes });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length }).end(body);
    });
    return;
  }
  req.resume();
  const wanted = url.includes('/download') ? Number(url.match(/[?&]bytes=(\d+)/)?.[1] ?? 0) : -1;
  if (wanted < 0) return void res.writeHead(200, { 'content-type': 'text/plain', 'content-length': BODY.length }).end(BODY);
  const chunk = Buffer.alloc(256 * 1024, 'd');
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': wanted });
  let left = wanted;
  const pump = () => {
    while (left > 0 && !res.destroyed) {
      const n = Math.min(left, chunk.length);
      left -= n;
      if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return void res.once('drain', pump);
    }
    res.end();
  };
  pump();
}

/** A TCP echo server: what a tunnel sends comes back. */
async function startEcho(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => socket.destroy()).on('close', () => sockets.delete(socket));
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

// ---------------------------------------------------------------- tokens

/** A token shaped like GitHub's (the same claims, about 1.6 KB), for octo-org/octo-repo on main. */
function githubToken(issuer: Issuer, key: TestKey, jti: string): string {
  const sha = 'd6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7';
  const workflow = 'octo-org/octo-repo/.github/workflows/build.yml@refs/heads/main';
  return workflowToken(issuer.issuer, key, AUDIENCE, {
    jti, sha, repository_id: '690123456', repository_owner: 'octo-org', repository_owner_id: '7654321', repository_visibility: 'private',
    run_id: '9876543210', run_number: '42', run_attempt: '1', actor: 'octocat', actor_id: '583231', workflow: 'build',
    head_ref: '', base_ref: '', event_name: 'push', ref_type: 'branch', ref_protected: 'true', workflow_ref: workflow,
    workflow_sha: sha, job_workflow_ref: workflow, job_workflow_sha: sha, runner_environment: 'github-hosted',
  });
}

// ---------------------------------------------------------------- cells

interface Cell {
  readonly key: string;
  readonly label: string;
  readonly runtime: string;
  readonly connections: number;
  readonly generator: 'wrk' | 'built-in';
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly cpuMsPerRequest: number;
  /** The load generator's CPU, % of one core (built-in only). */
  readonly loadCpu: number;
  readonly errors: number;
  /** New upstream connections per run (median). */
  readonly dials: number;
  /** The cell this one is compared with, and the median of the per-round ratios to it. */
  readonly versus?: string;
  readonly ratio: number;
}

interface Spec {
  readonly key: string;
  readonly label: string;
  readonly tokens: 'same' | 'fresh' | 'junk' | 'badsig';
  readonly expect: number;
  readonly connections?: number;
  /** Default /svc/x. */
  readonly path?: string;
  readonly versus?: string;
  readonly builtinOnly?: boolean;
}

interface Context {
  readonly load: LoadGenerator;
  readonly wrk: string | undefined;
  readonly tokens: Record<Spec['tokens'], readonly string[] | undefined>;
  /** TCP connections the upstream has accepted so far: a proxy whose pool is too small for the load opens new ones. */
  readonly upstreamConnections: () => number;
}

interface Run {
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly cpu: number;
  readonly loadCpu: number;
  readonly errors: number;
  /** New upstream connections during the run. */
  readonly dials: number;
}

/** One timed run of one cell. */
async function runOnce(ctx: Context, target: ServerProcess, spec: Spec, seconds: number): Promise<Run> {
  const dialled = ctx.upstreamConnections();
  const run = await runLoad(ctx, target, spec, seconds);
  return { ...run, dials: ctx.upstreamConnections() - dialled };
}

async function runLoad(ctx: Context, target: ServerProcess, spec: Spec, seconds: number): Promise<Omit<Run, 'dials'>> {
  const connections = spec.connections ?? CONNECTIONS;
  const path = spec.path ?? '/svc/x';
  if (usesWrk(ctx, spec)) {
    const token = ctx.tokens[spec.tokens]![0]!;
    const before = cpuTicks(target.pid);
    const w = await runWrk(ctx.wrk!, { url: `http://127.0.0.1:${target.port}${path}`, header: `${HEADER}: Bearer ${token}`, connections, seconds, expect200: spec.expect === 200 });
    const ticks = cpuTicks(target.pid) - before;
    return { rps: w.requests / w.seconds, p50: w.p50, p99: w.p99, cpu: ((ticks / HZ) * 1000) / w.requests, loadCpu: NaN, errors: w.errors };
  }
  const job = { op: 'rps', port: target.port, path, header: HEADER, tokens: spec.tokens, connections, seconds, expect: spec.expect, pids: [target.pid] } as const;
  const r = await ctx.load.call<RpsResult>(job);
  return { rps: r.requests / r.seconds, p50: r.p50, p99: r.p99, cpu: ((r.ticks[0]! / HZ) * 1000) / r.requests, loadCpu: (r.selfTicks / HZ / r.seconds) * 100, errors: r.errors };
}

const usesWrk = (ctx: Context, spec: Spec) => ctx.wrk !== undefined && !spec.builtinOnly && spec.tokens !== 'fresh';

/**
 * RUNS rounds, each running every cell once, back to back (after a short warm-up of its own path), so that a
 * slow spell of a shared 2-core machine falls on a cell and the cell it is compared with alike. Each column is
 * the median over the rounds; the ratio is the median of the ratios within each round.
 */
async function measureRounds(ctx: Context, rt: Runtime, entries: readonly (readonly [ServerProcess, Spec])[]): Promise<Cell[]> {
  const runs = entries.map(() => [] as Run[]);
  for (let round = 0; round < RUNS; round++) {
    for (const [i, [target, spec]] of entries.entries()) {
      if (CELL_WARMUP > 0) await runOnce(ctx, target, spec, CELL_WARMUP);
      const run = await runOnce(ctx, target, spec, SECONDS);
      runs[i]!.push(run);
      if (VERBOSE) progress(`${rt.name}: ${spec.label}: round ${round + 1}: ${int(run.rps)} req/s, p50 ${fixed(run.p50)} ms, p99 ${fixed(run.p99)} ms, ${fixed(run.cpu, 3)} CPU ms/req, load CPU ${fixed(run.loadCpu, 0)} %`);
    }
    progress(`${rt.name}: round ${round + 1} of ${RUNS} done`);
  }
  return entries.map(([, spec], i) => {
    const mine = runs[i]!;
    const col = (pick: (r: Run) => number) => median(mine.map(pick));
    const versus = entries.findIndex(([, s]) => s.key === spec.versus);
    const cell: Cell = {
      key: spec.key,
      label: spec.label,
      runtime: rt.name,
      connections: spec.connections ?? CONNECTIONS,
      generator: usesWrk(ctx, spec) ? 'wrk' : 'built-in',
      rps: col((r) => r.rps),
      p50: col((r) => r.p50),
      p99: col((r) => r.p99),
      cpuMsPerRequest: col((r) => r.cpu),
      loadCpu: col((r) => r.loadCpu),
      errors: mine.reduce((sum, r) => sum + r.errors, 0),
      dials: col((r) => r.dials),
      versus: spec.versus,
      ratio: versus < 0 ? (spec.versus ? NaN : 1) : median(mine.map((r, round) => r.rps / runs[versus]![round]!.rps)),
    };
    progress(`${rt.name}: ${spec.label}: ${int(cell.rps)} req/s, p50 ${fixed(cell.p50)} ms, ${fixed(cell.cpuMsPerRequest, 3)} CPU ms/req, ratio ${fixed(cell.ratio)}${cell.errors ? `, ${cell.errors} errors` : ''}`);
    return cell;
  });
}

interface Transfer {
  readonly direction: 'upload' | 'download';
  readonly proxy: 'bare' | 'gateway';
  readonly runtime: string;
  readonly mbps: number;
  readonly rssGrowth: number;
  /** Whether VmHWM could be reset before the transfer (else the growth is measured against the lifetime peak). */
  readonly peakReset: boolean;
  readonly cpuSeconds: number;
  readonly status: number;
  readonly continued: boolean;
  readonly continueMs?: number;
}

/** Warms a proxy's upload and download paths (JIT, pools) on a smaller body. */
async function warmTransfers(ctx: Context, proxy: ServerProcess): Promise<void> {
  for (const op of ['upload', 'download'] as const) await ctx.load.call(transferJob(proxy, op, Math.min(BIG, 64 * MIB)));
}

const transferJob = (proxy: ServerProcess, op: 'upload' | 'download', bytes: number) => ({ op, port: proxy.port, path: `/svc/${op}`, header: HEADER, tokens: 'same', bytes }) as const;

async function bigTransfer(ctx: Context, rt: Runtime, proxy: ServerProcess, kind: Transfer['proxy'], direction: 'upload' | 'download'): Promise<Transfer> {
  const peakReset = resetPeak(proxy.pid);
  const before = memoryOf(proxy.pid).rss;
  const cpu0 = cpuTicks(proxy.pid);
  const r = await ctx.load.call<TransferResult>(transferJob(proxy, direction, BIG));
  const cpuSeconds = (cpuTicks(proxy.pid) - cpu0) / HZ;
  const rssGrowth = Math.max(0, memoryOf(proxy.pid).hwm - before);
  const ok = r.status === 200 && (direction === 'upload' || r.bytes === BIG);
  const row: Transfer = { direction, proxy: kind, runtime: rt.name, mbps: ok ? mbps(BIG, r.ms) : NaN, rssGrowth, peakReset, cpuSeconds, status: r.status, continued: r.continued, continueMs: r.continueMs };
  progress(`${rt.name}: (d) ${direction} through the ${kind} proxy: ${ok ? `${fixed(row.mbps, 0)} MB/s` : `failed (status ${r.status}, ${r.bytes} bytes)`}, RSS +${fixed(rssGrowth, 1)} MiB`);
  return row;
}

interface Tunnels {
  readonly proxy: 'bare' | 'gateway';
  readonly runtime: string;
  readonly opened: number;
  readonly statuses: Readonly<Record<string, number>>;
  readonly openPerSecond: number;
  readonly rssBefore: number;
  readonly rssOpen: number;
  readonly rssPeak: number;
  readonly mbps: number;
}

async function tunnels(ctx: Context, rt: Runtime, proxy: ServerProcess, kind: Tunnels['proxy'], echoPort: number): Promise<Tunnels> {
  resetPeak(proxy.pid);
  const rssBefore = memoryOf(proxy.pid).rss;
  const t0 = performance.now();
  try {
    const opened = await ctx.load.call<TunnelsOpened>({ op: 'tunnelsOpen', port: proxy.port, to: `127.0.0.1:${echoPort}`, tokens: 'same', count: TUNNELS });
    const openPerSecond = opened.opened / ((performance.now() - t0) / 1000);
    await new Promise((r) => setTimeout(r, 250));
    const rssOpen = memoryOf(proxy.pid).rss;
    const pumped = await ctx.load.call<TunnelsPumped>({ op: 'tunnelsPump', seconds: SECONDS, messageBytes: TUNNEL_MESSAGE });
    const row: Tunnels = {
      proxy: kind, runtime: rt.name, opened: opened.opened, statuses: opened.statuses, openPerSecond, rssBefore, rssOpen,
      rssPeak: memoryOf(proxy.pid).hwm, mbps: opened.opened > 0 ? pumped.bytes / 1e6 / pumped.seconds : NaN,
    };
    progress(`${rt.name}: (e) ${opened.opened} tunnels through the ${kind} proxy: RSS ${fixed(rssOpen, 1)} MiB open, ${fixed(row.mbps, 0)} MB/s`);
    return row;
  } finally {
    await ctx.load.call({ op: 'tunnelsClose' });
  }
}

// ---------------------------------------------------------------- one runtime

interface RuntimeResults {
  readonly rt: Runtime;
  readonly cells: Cell[];
  readonly transfers: Transfer[];
  readonly tunnels: Tunnels[];
  /** An upload with Expect: 100-continue and a bad token: what came first (401 expected, never 100). */
  refusedContinue?: number;
  readonly gateways: GatewayProcess[];
}

interface Setup {
  readonly issuer: Issuer;
  readonly upstream: TestServer;
  readonly echoPort: number;
}

async function benchRuntime(ctx: Context, rt: Runtime, setup: Setup): Promise<RuntimeResults> {
  const out: RuntimeResults = { rt, cells: [], transfers: [], tunnels: [], gateways: [] };
  const base = { issuers: [{ issuer: setup.issuer.issuer, audience: AUDIENCE }], log: { level: LOG_LEVEL }, timeouts: { drainMs: 2_000 } };
  // The README's example route: one allow rule, two claims forwarded.
  const route = (path: string, allow: object[]) => ({ path, upstream: `${setup.upstream.url}/`, allow, forwardClaims: ['repository', 'run_id'] });
  const admit = { repository: 'octo-org/octo-repo', ref: ['refs/heads/main', 'refs/tags/v*'] };
  const profileArgs = PROFILE_DIR && rt.name === 'node' ? ['--cpu-prof', '--cpu-prof-dir', PROFILE_DIR] : [];
  const gateway = async (config: Record<string, unknown>) => {
    const gw = await startGateway(rt, { ...base, ...config }, profileArgs);
    out.gateways.push(gw);
    return profiled(gw, 'gateway');
  };
  const bareProxy = async () => profiled(await startBare(rt, setup.upstream.port, 0, profileArgs), 'bare proxy');
  /** (a)'s load for WARMUP seconds on a process that has just started. */
  const warm = async (s: ServerProcess) => {
    if (WARMUP > 0) await ctx.load.call<RpsResult>({ op: 'rps', port: s.port, path: '/svc/x', header: HEADER, tokens: 'same', connections: CONNECTIONS, seconds: WARMUP, expect: 200, pids: [] });
  };

  // The request cells: the bare proxy, the gateway and (for routes) a gateway with ROUTES routes, all alive at
  // once, so that every round runs every cell. ROUTES routes in all there, every rule distinct (other
  // repositories), so nothing is shared between routes or rules.
  const routesConfig = () => {
    const routes = [route('/svc', [admit])];
    const many = Array.from({ length: ROUTES - 1 }, (_, i) => ({ repository: `octo-org/repo-${i}`, ref: admit.ref }));
    routes.push(route('/many', [...many, admit]));
    for (let i = 0; routes.length < ROUTES; i++) routes.push(route(`/r/${i}`, [{ repository: `octo-org/app-${i}`, ref: 'refs/heads/main' }]));
    return { routes };
  };
  const none = Promise.resolve(undefined);
  const spinners = async () => {
    const list = await Promise.all(SPIN_MICROSECONDS.map((us) => startBare(rt, setup.upstream.port, us)));
    return { list, close: async () => void (await Promise.all(list.map((s) => s.close()))) };
  };
  if (only('a') || only('b') || only('c') || only('conns') || only('spin')) {
    await using(bareProxy(), (bare) =>
      using(gateway({ routes: [route('/svc', [admit])] }), (gw) =>
        using(only('routes') ? gateway(routesConfig()) : none, (many) => using(only('spin') ? spinners() : none, async (spin) => {
          for (const s of [bare, gw, many, ...(spin?.list ?? [])]) if (s) await warm(s);
          const entries: [ServerProcess, Spec][] = [];
          if (only('a') || only('b') || only('c') || only('spin')) {
            entries.push([bare, { key: 'bare', label: 'bare proxy, no auth (the ceiling)', tokens: 'same', expect: 200 }]);
            // (b) needs a token per request, which wrk without Lua cannot send: its ceiling is measured with the same generator.
            if (ctx.wrk && only('b')) entries.push([bare, { key: 'bare-builtin', label: 'bare proxy, no auth (built-in load)', tokens: 'same', expect: 200, builtinOnly: true }]);
          }
          if (only('a')) entries.push([gw, { key: 'a', label: '(a) gateway, same token every request', tokens: 'same', expect: 200, versus: 'bare' }]);
          if (only('b')) entries.push([gw, { key: 'b', label: '(b) gateway, fresh token every request', tokens: 'fresh', expect: 200, versus: ctx.wrk ? 'bare-builtin' : 'bare' }]);
          if (only('c')) {
            entries.push([gw, { key: 'c-junk', label: '(c) gateway, junk token (not a JWT)', tokens: 'junk', expect: 401, versus: 'bare' }]);
            entries.push([gw, { key: 'c-sig', label: '(c) gateway, valid shape, bad signature', tokens: 'badsig', expect: 401, versus: 'bare' }]);
          }
          if (many) {
            entries.push([many, { key: 'routes', label: `(e) gateway, ${int(ROUTES)} routes, hit one with 1 rule`, tokens: 'same', expect: 200, versus: 'a' }]);
            entries.push([many, { key: 'rules', label: `(e) gateway, ${int(ROUTES)} routes, hit one with ${int(ROUTES)} rules, the last admits`, tokens: 'same', expect: 200, path: '/many/x', versus: 'a' }]);
          }
          for (const [i, s] of (spin?.list ?? []).entries()) {
            entries.push([s, { key: `spin-${SPIN_MICROSECONDS[i]}`, label: `bare proxy spinning ${SPIN_MICROSECONDS[i]} µs per request`, tokens: 'same', expect: 200, versus: 'bare' }]);
          }
          if (only('conns')) {
            for (const connections of [1, 256]) {
              const plural = connections > 1 ? 's' : '';
              entries.push([bare, { key: `bare-${connections}`, label: `bare proxy, ${connections} connection${plural}`, tokens: 'same', expect: 200, connections }]);
              entries.push([gw, { key: `gw-${connections}`, label: `(e) gateway, same token, ${connections} connection${plural}`, tokens: 'same', expect: 200, connections, versus: `bare-${connections}` }]);
            }
          }
          out.cells.push(...(await measureRounds(ctx, rt, entries)));
        })),
      ),
    );
  }

  if (only('d')) {
    await using(bareProxy(), (bare) =>
      using(gateway({ routes: [route('/svc', [admit])] }), async (gw) => {
        for (const proxy of [bare, gw]) await warmTransfers(ctx, proxy);
        // Each direction through both proxies back to back, the upload bare proxy first and the download gateway
        // first: the same transfer's CPU drifts by a factor of 2 or more over a run on a shared VM.
        for (const [direction, order] of [['upload', [[bare, 'bare'], [gw, 'gateway']]], ['download', [[gw, 'gateway'], [bare, 'bare']]]] as const)
          for (const [proxy, kind] of order) out.transfers.push(await bigTransfer(ctx, rt, proxy, kind, direction));
        // A refused upload must be answered before its body is sent: 401 first, never 100 Continue.
        const refused = await ctx.load.call<TransferResult>({ op: 'refusedUpload', port: gw.port, path: '/svc/upload', header: HEADER, tokens: 'badsig', bytes: BIG });
        out.refusedContinue = refused.status;
      }),
    );
  }

  if (only('tunnels')) {
    await using(bareProxy(), async (bare) => void out.tunnels.push(await tunnels(ctx, rt, bare, 'bare', setup.echoPort)));
    const tunnelConfig = { tunnels: [{ to: [`127.0.0.1:${setup.echoPort}`], allow: [admit] }] };
    await using(gateway(tunnelConfig), async (gw) => void out.tunnels.push(await tunnels(ctx, rt, gw, 'gateway', setup.echoPort)));
  }
  return out;
}

// ---------------------------------------------------------------- the report

const SHORT: Record<string, string> = {
  bare: 'bare proxy',
  'bare-builtin': 'bare proxy, built-in load',
  a: '(a), 1 route',
  'bare-1': 'bare proxy, 1 connection',
  'bare-256': 'bare proxy, 256 connections',
};

function table(head: readonly string[], rows: readonly (readonly string[])[], right: readonly boolean[]): string {
  const lines = [`| ${head.join(' | ')} |`, `|${right.map((r) => (r ? '---:' : '---')).join('|')}|`];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

function find(results: RuntimeResults, key: string): Cell | undefined {
  return results.cells.find((c) => c.key === key);
}


interface Target {
  readonly runtime: string;
  readonly what: string;
  readonly measured: string;
  /** undefined: not measured in this run. */
  readonly met: boolean | undefined;
}

function targets(all: readonly RuntimeResults[]): Target[] {
  const list: Target[] = [];
  for (const r of all) {
    const rt = r.rt.name;
    const add = (what: string, value: number | undefined, ok: (v: number) => boolean, show: (v: number) => string) =>
      list.push({ runtime: rt, what, measured: value !== undefined && Number.isFinite(value) ? show(value) : 'not measured', met: value !== undefined && Number.isFinite(value) ? ok(value) : undefined });
    const ratio = (key: string) => {
      const c = find(r, key);
      return c?.ratio;
    };
    add('(a) same token: >= 0.95 of the bare proxy', ratio('a'), (v) => v >= 0.95, (v) => v.toFixed(2));
    const gw1 = find(r, 'gw-1');
    const bare1 = find(r, 'bare-1');
    add('(a) p50 at 1 connection: within +0.05 ms of the bare proxy', gw1 && bare1 ? gw1.p50 - bare1.p50 : undefined, (v) => v <= 0.05, (v) => `${v >= 0 ? '+' : ''}${v.toFixed(3)} ms`);
    add('(b) fresh token: >= 0.60 of the bare proxy', ratio('b'), (v) => v >= 0.6, (v) => v.toFixed(2));
    add('(c) junk token: >= 1.5 of the bare proxy', ratio('c-junk'), (v) => v >= 1.5, (v) => v.toFixed(2));
    add('(c) bad signature: >= 1.5 of the bare proxy', ratio('c-sig'), (v) => v >= 1.5, (v) => v.toFixed(2));
    for (const direction of ['upload', 'download'] as const) {
      const gw = r.transfers.find((t) => t.proxy === 'gateway' && t.direction === direction);
      const bare = r.transfers.find((t) => t.proxy === 'bare' && t.direction === direction);
      add(`(d) ${direction}: >= 0.90 of the bare proxy's MB/s`, gw && bare ? gw.mbps / bare.mbps : undefined, (v) => v >= 0.9, (v) => v.toFixed(2));
      add(`(d) ${direction}: gateway RSS grows by <= 48 MiB`, gw?.rssGrowth, (v) => v <= 48, (v) => `+${v.toFixed(1)} MiB`);
    }
    const up = r.transfers.find((t) => t.proxy === 'gateway' && t.direction === 'upload');
    list.push({
      runtime: rt,
      what: '(d) Expect: 100-continue: 100 before the body when admitted, 401 and no 100 when refused',
      measured: up ? `${up.continued ? '100 Continue' : 'no 100'}; refused: ${r.refusedContinue === 401 ? '401 first' : r.refusedContinue === 100 ? '100 first' : `status ${r.refusedContinue}`}` : 'not measured',
      met: up ? up.continued && up.status === 200 && r.refusedContinue === 401 : undefined,
    });
    add(`(e) ${int(ROUTES)} routes: >= 0.90 of 1 route`, ratio('routes'), (v) => v >= 0.9, (v) => v.toFixed(2));
    add(`(e) ${int(ROUTES)} rules on the route: >= 0.90 of 1 rule`, ratio('rules'), (v) => v >= 0.9, (v) => v.toFixed(2));
    // No target in issue 6: how the cost of a request moves from 1 to 256 connections, beside the bare proxy's.
    const [g1, g256, b1, b256] = ['gw-1', 'gw-256', 'bare-1', 'bare-256'].map((k) => find(r, k));
    if (g1 && g256 && b1 && b256) {
      const growth = (x: Cell, y: Cell) => `x${(y.cpuMsPerRequest / x.cpuMsPerRequest).toFixed(2)}`;
      list.push({ runtime: rt, what: '(e) CPU per request at 256 connections over 1 connection (no target)', measured: `gateway ${growth(g1, g256)}, bare proxy ${growth(b1, b256)}`, met: undefined });
    }
    const t = r.tunnels.find((x) => x.proxy === 'gateway');
    add(`(e) ${int(TUNNELS)} open tunnels: gateway RSS < 150 MiB (peak, open and pumping)`, t && t.opened === TUNNELS ? t.rssPeak : undefined, (v) => v < 150, (v) => `${v.toFixed(1)} MiB`);
  }
  const node = all.find((r) => r.rt.name === 'node');
  const bun = all.find((r) => r.rt.name === 'bun');
  if (node && bun) {
    const [gn, gb, bn, bb] = [find(node, 'a'), find(bun, 'a'), find(node, 'bare'), find(bun, 'bare')];
    const lead = gn && gb ? gb.rps / gn.rps : NaN;
    list.push({
      runtime: 'bun',
      what: 'the gateway on Bun keeps Bun\'s lead over Node ((a), Bun / Node)',
      measured: Number.isFinite(lead) ? `gateway ${lead.toFixed(2)}x${bn && bb ? `, bare proxy ${(bb.rps / bn.rps).toFixed(2)}x` : ''}` : 'not measured',
      met: Number.isFinite(lead) ? lead > 1 : undefined,
    });
  }
  return list;
}

function report(all: readonly RuntimeResults[], facts: readonly string[]): string {
  const out: string[] = [`## oidc-gateway bench`, '', ...facts.map((f) => `- ${f}`), ''];
  const cells = all.flatMap((r) => r.cells);
  const showLoad = cells.some((c) => c.generator === 'wrk');
  if (cells.length > 0) {
    out.push(`### Requests: 100-byte answers, ${CONNECTIONS} keep-alive connections unless stated`, '');
    const head = ['cell', 'runtime', 'conns', 'req/s', 'p50 ms', 'p99 ms', 'CPU ms/req', 'ratio', 'relative to', ...(showLoad ? ['load'] : []), 'load CPU %', 'upstream dials', 'errors'];
    const rows = cells.map((c) => [
      c.label, c.runtime, String(c.connections), int(c.rps), fixed(c.p50), fixed(c.p99), fixed(c.cpuMsPerRequest, 3),
      fixed(c.ratio), c.versus ? (SHORT[c.versus] ?? c.versus) : '-', ...(showLoad ? [c.generator] : []),
      fixed(c.loadCpu, 0), int(c.dials), String(c.errors),
    ]);
    out.push(table(head, rows, head.map((h) => !['cell', 'runtime', 'relative to', 'load'].includes(h))), '');
  }
  const transfers = all.flatMap((r) => r.transfers);
  if (transfers.length > 0) {
    out.push(`### (d) ${int(BIG_MIB)} MiB up and down through the proxy, one connection`, '');
    const head = ['transfer', 'runtime', 'proxy', 'MB/s', 'peak RSS growth MiB', 'proxy CPU s', 'ratio', 'Expect: 100-continue'];
    const rows = transfers.map((t) => {
      const bare = transfers.find((x) => x.runtime === t.runtime && x.direction === t.direction && x.proxy === 'bare');
      const cont = t.direction === 'download' ? '-' : t.continued ? `100 after ${fixed(t.continueMs)} ms` : 'no 100 within 1 s';
      return [t.direction, t.runtime, t.proxy, fixed(t.mbps, 0), `+${fixed(t.rssGrowth, 1)}${t.peakReset ? '' : ' (lifetime peak)'}`, fixed(t.cpuSeconds), bare ? fixed(t.mbps / bare.mbps) : '-', cont];
    });
    out.push(table(head, rows, [false, false, false, true, true, true, true, false]), '');
  }
  const tun = all.flatMap((r) => r.tunnels);
  if (tun.length > 0) {
    out.push(`### (e) ${int(TUNNELS)} CONNECT tunnels open at once, each echoing ${TUNNEL_MESSAGE / 1024} KiB messages for ${SECONDS} s`, '');
    const head = ['runtime', 'proxy', 'open', 'opened/s', 'RSS before MiB', 'RSS all open MiB', 'peak RSS MiB', 'MB/s across all', 'ratio'];
    const rows = tun.map((t) => {
      const bare = tun.find((x) => x.runtime === t.runtime && x.proxy === 'bare');
      const refused = Object.entries(t.statuses).filter(([s]) => s !== '200').map(([s, n]) => `${n}x ${s === '0' ? 'no answer' : s}`);
      return [t.runtime, t.proxy, `${t.opened}${refused.length ? ` (${refused.join(', ')})` : ''}`, int(t.openPerSecond), fixed(t.rssBefore, 1), fixed(t.rssOpen, 1), fixed(t.rssPeak, 1), fixed(t.mbps, 0), bare ? fixed(t.mbps / bare.mbps) : '-'];
    });
    out.push(table(head, rows, [false, false, true, true, true, true, true, true, true]), '');
  }
  out.push(
    'ratio: req/s over the row named in "relative to" (same runtime and load generator), the median of the ratios within each round (a round runs every cell once, back to back); for (d) and tunnels, MB/s over the bare proxy\'s in the same conditions.',
    'CPU ms/req: user + system CPU of the process under test (/proc/PID/stat) over the timed window, per answered request. load CPU %: the built-in generator\'s CPU (100 = one core). upstream dials: new connections the upstream accepted during a run (a keep-alive pool that fits the load opens none).',
    'p50/p99: request latency at the client. MB/s: 10^6 bytes per second. RSS growth: peak RSS (VmHWM, reset before each transfer) minus RSS before it. Tunnels: bytes echoed back per second, each crossing the proxy twice.',
    '',
  );
  const list = targets(all);
  if (list.length > 0) {
    out.push('### Targets of issue 6 (informational: never asserted)', '');
    const rows = list.map((t) => [t.what, t.runtime, t.measured, t.met === undefined ? '-' : t.met ? 'met' : '**not met**']);
    out.push(table(['target', 'runtime', 'measured', ''], rows, [false, false, true, false]), '');
  }
  return out.join('\n');
}

// ---------------------------------------------------------------- main

const JUNK_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

async function main(): Promise<void> {
  const began = performance.now();
  const profilesFrom = Date.now();
  if (PROFILE_DIR) mkdirSync(PROFILE_DIR, { recursive: true });
  const cores = os.cpus().length;
  const available = os.availableParallelism(); // before pinning narrows it
  if (PIN && (cores < 2 || !which('taskset'))) usage('BENCH_PIN=1 needs 2 or more cores and taskset (util-linux) on PATH');
  const rest = cores === 2 ? '1' : `1-${cores - 1}`;
  if (PIN) pinCpus('0', rest);
  const bun = RUNTIMES.has('bun') ? findBun() : { skipped: 'not in BENCH_RUNTIMES' };
  const runtimes: Runtime[] = [...(RUNTIMES.has('node') ? [NODE] : []), ...('name' in bun ? [bun] : [])];
  if (runtimes.length === 0) usage('BENCH_RUNTIMES: no runtime left to run (node, bun)');
  if ('skipped' in bun) progress(`Bun rows skipped: ${bun.skipped}`);
  const wrk = LOAD === 'builtin' ? undefined : which('wrk');
  if (LOAD === 'wrk' && !wrk) usage('BENCH_LOAD=wrk, but wrk is not on PATH');

  progress('starting the issuer, the upstream, the echo server and the load generator');
  const key = await generateRsaKey('bench-key');
  const issuer = await startIssuer({ keys: [key.jwk] });
  atEnd(() => issuer.close());
  const upstream = await startServer(upstreamHandler);
  atEnd(() => upstream.close());
  const echo = await startEcho();
  atEnd(() => echo.close());
  const load = await startLoad();
  atEnd(() => load.close());

  const same = githubToken(issuer, key, 'same');
  const other = githubToken(issuer, key, 'other');
  // Header and claims of a good token, the signature of another: parses, then fails at the signature check.
  const badsig = same.slice(0, same.lastIndexOf('.')) + other.slice(other.lastIndexOf('.'));
  const random = seededRandom(6);
  const junk = Array.from({ length: 300 }, () => JUNK_ALPHABET[Math.floor(random() * 64)]).join('');
  let fresh: string[] | undefined;
  if (only('b')) {
    // Signed before any timing, so signing costs nothing in the cells. Walked in a cycle longer than the gateway's cache.
    progress(`signing ${int(TOKENS)} distinct tokens for (b)`);
    fresh = Array.from({ length: TOKENS }, (_, i) => githubToken(issuer, key, `fresh-${i}`));
  }
  const tokens = { same: [same], badsig: [badsig], junk: [junk], fresh };
  for (const [name, values] of Object.entries(tokens)) if (values) await load.call({ op: 'tokens', name, values });
  const ctx: Context = { load, wrk, tokens, upstreamConnections: () => upstream.connections() };

  const results: RuntimeResults[] = [];
  for (const rt of runtimes) {
    progress(`measuring on ${rt.name} ${rt.version}`);
    results.push(await benchRuntime(ctx, rt, { issuer, upstream, echoPort: echo.port }));
  }

  const cpus = os.cpus();
  const generator = wrk
    ? `wrk (${wrkVersion(wrk)}, ${wrk}), Lua-free, the token in one -H header; (b) needs a token per request, so it and its bare baseline use the built-in generator`
    : `built-in (test/bench/load.ts: raw keep-alive HTTP/1.1 over node:net, in its own Node process)${LOAD === 'builtin' ? '' : '; wrk is not on PATH'}`;
  const facts = [
    `machine: ${cpus.length} cores (${available} available), ${cpuModel(cpus[0]?.model ?? 'unknown CPU')}, ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, ${os.type()} ${os.release()} ${os.arch()}`,
    `runtimes: node ${process.versions.node}; ${'name' in bun ? `bun ${bun.version} (${bun.exec})` : `bun: skipped (${bun.skipped})`}`,
    `load generator: ${generator}`,
    `timing: ${WARMUP} s of warm-up load on each new server process; then ${RUNS} round${RUNS > 1 ? 's' : ''}, each running every request cell once for ${SECONDS} s after ${CELL_WARMUP} s of warm-up on its own path; medians shown; loopback only`,
    `pinning: ${PIN ? `bare proxies and gateways on CPU 0 only, the bench process, upstream and load generators on CPU ${rest} (BENCH_PIN=1)` : 'none, every process on every core'}`,
    `processes: bare proxy (test/bench/bare.ts: node:http, keep-alive Agent, no auth) and gateway (dist/main.js, audit log at ${LOG_LEVEL} to a file) each on its own; issuer, upstream (node:http) and echo server in the bench process`,
    `tokens: RS256, 2048-bit key, GitHub's claim set (${same.length} bytes); (b) walks ${int(TOKENS)} pre-signed tokens in a cycle, ${TOKENS > CACHE_SIZE ? `more than the ${int(CACHE_SIZE)} the gateway's verified-token cache holds, so every request misses it` : `NOT more than the ${int(CACHE_SIZE)} the gateway's verified-token cache holds: after the first lap (b) measures cache hits`}`,
    `whole run: ${Math.round((performance.now() - began) / 1000)} s (knobs: BENCH_SECONDS=${SECONDS} BENCH_RUNS=${RUNS} BENCH_WARMUP=${WARMUP} BENCH_CONNECTIONS=${CONNECTIONS} BENCH_BIG_MIB=${BIG_MIB} BENCH_TUNNELS=${TUNNELS} BENCH_ROUTES=${ROUTES} BENCH_TOKENS=${TOKENS} BENCH_ONLY=${[...ONLY].join(',')})`,
  ];
  process.stdout.write(`${report(results, facts)}\n`);

  // Close the gateways now (they are closed already; close() is idempotent) to read their log checks.
  const problems = (await Promise.all(results.flatMap((r) => r.gateways.map(async (g) => (await g.close(), g.problems.map((p) => `gateway on ${r.rt.name}: ${p}`)))))).flat();
  if (PROFILE_DIR) {
    // CPU.<date>.<time>.<pid>.<thread>.<n>.cpuprofile; thread 1 of a bare proxy is tsx's loader, not the proxy.
    const made = readdirSync(PROFILE_DIR).filter((f) => f.endsWith('.cpuprofile') && statSync(join(PROFILE_DIR, f)).mtimeMs >= profilesFrom);
    for (const f of made.sort()) {
      const [, pid, thread] = f.split('.').slice(2, 5).map(Number);
      if (thread !== 0 || !profiledPids.has(pid!)) continue;
      process.stdout.write(`\n### CPU profile of the ${profiledPids.get(pid!)} on Node: ${join(PROFILE_DIR, f)}\n\n\`\`\`\n${summarize(join(PROFILE_DIR, f)).join('\n')}\n\`\`\`\n`);
    }
  }
  if (problems.length > 0) {
    process.stdout.write(`gateway log problems:\n${problems.map((p) => `- ${p}`).join('\n')}\n`);
    process.exitCode = 1;
  }
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    progress(`${signal}: stopping everything`);
    void cleanUp().finally(() => process.exit(130));
  });
}

try {
  await main();
} catch (err) {
  // Error messages name processes, ports and statuses, never a token.
  progress(`failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
} finally {
  await cleanUp();
}
