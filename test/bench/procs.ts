// The processes a bench run starts: the bare proxy and the gateway on each runtime, the built-in load
// generator, and wrk when installed. Every child is tracked from the moment it is spawned and killed when
// the bench exits, however it exits; close() is the orderly way, and is safe to call twice.
import { execFileSync, fork, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { accessSync, closeSync, constants, fstatSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { assertLogClean, MAIN_JS, waitUntil } from '../helpers.ts';
import type { Job } from './load.ts';

const BARE_TS = fileURLToPath(new URL('./bare.ts', import.meta.url));
const LOAD_TS = fileURLToPath(new URL('./load.ts', import.meta.url));

// ---------------------------------------------------------------- every child, accounted for

const children = new Set<ChildProcess>();

/** Kills what is still running when the bench process exits, whatever the reason. */
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

function tracked(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

const running = (child: ChildProcess) => child.exitCode === null && child.signalCode === null;

/** SIGTERM, then SIGKILL after graceMs; resolves once the child has exited. */
export async function stopChild(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (!running(child)) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Rejects if the child exits first, or when timeoutMs pass; resolves with `promise` otherwise. */
function beforeExit<T>(child: ChildProcess, promise: Promise<T>, what: string, stderr: () => string, timeoutMs = 15_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const failed = new Promise<never>((_, reject) => {
    child.once('exit', (code, signal) => reject(new Error(`${what} exited (${code ?? signal}) before it was ready: ${stderr().slice(-1_000)}`)));
    timer = setTimeout(() => reject(new Error(`${what} not ready within ${timeoutMs} ms: ${stderr().slice(-1_000)}`)), timeoutMs);
  });
  return Promise.race([promise, failed]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------- pinning (BENCH_PIN)

let serverCpus: string | undefined;

/** From now on every bare proxy and gateway runs on the `server` CPUs only, and this process and all else it starts on `rest`. */
export function pinCpus(server: string, rest: string): void {
  execFileSync('taskset', ['-apc', rest, String(process.pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  serverCpus = server;
}

/** Moves a server process, all its threads, to the server CPUs (when pinning); threads it starts later inherit them. */
const pinServer = (pid: number) => void (serverCpus && execFileSync('taskset', ['-apc', serverCpus, String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] }));

// ---------------------------------------------------------------- runtimes

export interface Runtime {
  readonly name: 'node' | 'bun';
  readonly exec: string;
  readonly version: string;
  /** What the runtime needs in front of a .ts file. */
  readonly tsArgs: readonly string[];
}

/** The absolute path of an executable on PATH, if any. */
export function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    const file = join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      if (statSync(file).isFile()) return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

export const NODE: Runtime = { name: 'node', exec: process.execPath, version: process.versions.node, tsArgs: ['--import', 'tsx'] };

/** Bun from GATEWAY_RUNTIME (when it names a bun) or PATH, or why there is none to use. */
export function findBun(): Runtime | { readonly skipped: string } {
  const fromEnv = process.env.GATEWAY_RUNTIME;
  const exec = fromEnv && /bun[^/]*$/.test(fromEnv) ? fromEnv : which('bun');
  if (!exec) return { skipped: 'no bun on PATH, and GATEWAY_RUNTIME names none' };
  let version: string;
  try {
    version = execFileSync(exec, ['--version'], { encoding: 'utf8', timeout: 10_000 }).trim();
  } catch (err) {
    return { skipped: `${exec} --version failed: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}` };
  }
  const [major = 0, minor = 0] = version.split('.').map(Number);
  // The gateway refuses to start on anything older (README: Bun 1.4 or later).
  if (major < 1 || (major === 1 && minor < 4)) return { skipped: `bun ${version} is older than 1.4, which the gateway requires` };
  return { name: 'bun', exec, version, tsArgs: [] };
}

// ---------------------------------------------------------------- servers under test

export interface ServerProcess {
  readonly pid: number;
  readonly port: number;
  readonly runtime: Runtime;
  close(): Promise<void>;
}

/** test/bench/bare.ts on `runtime`, in front of the upstream at `upstreamPort`. */
export async function startBare(runtime: Runtime, upstreamPort: number, spinMicroseconds = 0, runtimeArgs: readonly string[] = []): Promise<ServerProcess> {
  const child = tracked(spawn(runtime.exec, [...runtimeArgs, ...runtime.tsArgs, BARE_TS, String(upstreamPort), String(spinMicroseconds)], { stdio: ['pipe', 'pipe', 'pipe'] }));
  let out = '';
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
  const port = await beforeExit(child, new Promise<number>((resolve) => {
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      const line = out.match(/^\{"port":(\d+)\}$/m);
      if (line) resolve(Number(line[1]));
    });
  }), `bare proxy on ${runtime.name}`, () => err).catch(async (error: unknown) => {
    await stopChild(child);
    throw error;
  });
  pinServer(child.pid!);
  return {
    pid: child.pid!,
    port,
    runtime,
    // Closing its stdin is enough (bare.ts exits on it); SIGTERM and SIGKILL if not.
    close: async () => {
      child.stdin!.end();
      await stopChild(child);
    },
  };
}

export interface GatewayProcess extends ServerProcess {
  /** Stops the gateway (waiting for its drain), checks a sample of its log, removes its files. Problems are returned, not thrown. */
  close(): Promise<void>;
  /** What the log check found wrong, after close(); never the offending text (it may hold a token). */
  readonly problems: string[];
}

const LOG_SAMPLE = 1024 * 1024;

/**
 * dist/main.js on `runtime` with `config` (listen and admin on port 0 added), like helpers.startGateway,
 * but for either runtime in one run and with its audit log going to a file rather than into this
 * process's memory: a few minutes of load is a few hundred MB of JSON lines.
 */
export async function startGateway(runtime: Runtime, config: Record<string, unknown>, runtimeArgs: readonly string[] = []): Promise<GatewayProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'oidc-gateway-bench-'));
  const configFile = join(dir, 'gateway.config.json');
  const logFile = join(dir, 'audit.log');
  writeFileSync(configFile, JSON.stringify({ listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, ...config }));
  const logFd = openSync(logFile, 'w');
  const child = tracked(spawn(runtime.exec, [...runtimeArgs, MAIN_JS, '--config', configFile], { stdio: ['ignore', logFd, 'pipe'] }));
  closeSync(logFd);
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
  const cleanUp = () => rmSync(dir, { recursive: true, force: true });

  let ports: RegExpMatchArray | null = null;
  try {
    const started = waitUntil(() => (ports = readFileSync(logFile, 'utf8').match(/"kind":"start".*"port":(\d+),"adminPort":(\d+)/)) !== null, 15_000);
    await beforeExit(child, started, `gateway on ${runtime.name}`, () => err);
    const ready = waitUntil(async () => (await fetch(`http://127.0.0.1:${ports![2]}/readyz`)).status === 200, 10_000);
    await beforeExit(child, ready, `gateway on ${runtime.name}`, () => err);
  } catch (error) {
    await stopChild(child);
    cleanUp();
    throw error;
  }

  pinServer(child.pid!);
  const problems: string[] = [];
  let closing: Promise<void> | undefined;
  return {
    pid: child.pid!,
    port: Number(ports![1]),
    runtime,
    problems,
    close: () =>
      (closing ??= (async () => {
        await stopChild(child, 10_000);
        try {
          checkLog(logFile);
        } catch {
          // The message quotes the line, which may hold a token: say only what kind of problem it is.
          problems.push('a sampled audit log line is not JSON or holds a token this bench signed');
        }
        if (/\S/.test(err)) problems.push(`stderr was not empty (${err.length} bytes)`);
        cleanUp();
      })()),
  };
}

/** helpers.assertLogClean over the log's first and last MiB (whole lines only): the full log can be hundreds of MB. */
function checkLog(file: string): void {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const read = (at: number, length: number) => {
      const buf = Buffer.alloc(length);
      return buf.toString('utf8', 0, readSync(fd, buf, 0, length, at));
    };
    if (size <= 2 * LOG_SAMPLE) return assertLogClean(read(0, size));
    const head = read(0, LOG_SAMPLE);
    const tail = read(size - LOG_SAMPLE, LOG_SAMPLE);
    assertLogClean(head.slice(0, head.lastIndexOf('\n') + 1));
    assertLogClean(tail.slice(tail.indexOf('\n') + 1));
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------- the built-in load generator

export interface LoadGenerator {
  readonly pid: number;
  call<T>(job: Job): Promise<T>;
  close(): Promise<void>;
}

/** Forks test/bench/load.ts (through tsx) and talks to it by IPC, one job at a time. */
export async function startLoad(): Promise<LoadGenerator> {
  const child = tracked(fork(LOAD_TS, [], { execArgv: NODE.tsArgs as string[], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  const waiting = new Map<number, { resolve: (value: unknown) => void; reject: (err: Error) => void }>();
  let nextId = 0;
  child.on('message', (m: { id: number; ok: boolean; result?: unknown; error?: string }) => {
    const w = waiting.get(m.id);
    waiting.delete(m.id);
    if (m.ok) w?.resolve(m.result);
    else w?.reject(new Error(`load generator: ${m.error}`));
  });
  child.once('exit', (code, signal) => {
    for (const w of waiting.values()) w.reject(new Error(`load generator exited (${code ?? signal})`));
    waiting.clear();
  });
  const load: LoadGenerator = {
    pid: child.pid!,
    call: <T>(job: Job) =>
      new Promise<T>((resolve, reject) => {
        if (!running(child)) return reject(new Error('load generator is not running'));
        const id = nextId++;
        waiting.set(id, { resolve: resolve as (value: unknown) => void, reject });
        child.send({ id, job });
      }),
    close: async () => {
      if (child.connected) child.disconnect();
      await stopChild(child);
    },
  };
  await load.call({ op: 'tokens', name: 'ping', values: ['-'] });
  return load;
}

// ---------------------------------------------------------------- wrk, when installed

export interface WrkResult {
  readonly requests: number;
  readonly seconds: number;
  readonly p50: number;
  readonly p99: number;
  /** Socket errors and timeouts; with expect200, non-2xx/3xx answers too (wrk without Lua cannot tell 401 from 500). */
  readonly errors: number;
}

const firstWords = (text: string) => text.split('\n')[0]!.replace(/\s*Copyright.*$/, '').trim() || 'wrk';

/** wrk's version ("wrk 4.1.0 [epoll]"). */
export function wrkVersion(exec: string): string {
  // `wrk -v` prints its version and usage, and exits 1.
  try {
    return firstWords(execFileSync(exec, ['-v'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }));
  } catch (err) {
    return firstWords((err as { stdout?: string }).stdout || (err as { stderr?: string }).stderr || '');
  }
}

const toMs = (value: string, unit: string) => Number(value) * (unit === 'us' ? 0.001 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : 1);

/** One wrk run without Lua: a fixed header (the token goes in by -H, in argv, never printed). */
export async function runWrk(exec: string, o: { url: string; header: string; connections: number; seconds: number; expect200: boolean }): Promise<WrkResult> {
  const threads = Math.max(1, Math.min(2, o.connections));
  // wrk takes whole seconds only ("0.5s" is a usage error); the rate comes from the span it reports.
  const args = ['-t', String(threads), '-c', String(o.connections), '-d', `${Math.max(1, Math.round(o.seconds))}s`, '--latency', '-H', o.header, o.url];
  const child = tracked(spawn(exec, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  const [code] = (await once(child, 'exit')) as [number | null];
  const num = (re: RegExp) => Number(out.match(re)?.[1] ?? NaN);
  const latency = (pct: string) => {
    const m = out.match(new RegExp(`^\\s*${pct}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm'));
    return m ? toMs(m[1]!, m[2]!) : NaN;
  };
  const total = num(/(\d+) requests in ([\d.]+)(us|ms|s|m)/);
  const span = out.match(/\d+ requests in ([\d.]+)(us|ms|s|m)/);
  if (code !== 0 || !Number.isFinite(total) || !span) throw new Error(`wrk failed (exit ${code}): ${out.split('\n').find((l) => /error|unable/i.test(l)) ?? 'no summary'}`);
  const socketErrors = (out.match(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/) ?? []).slice(1).reduce((a, b) => a + Number(b), 0);
  const non2xx = o.expect200 ? num(/Non-2xx or 3xx responses: (\d+)/) || 0 : 0;
  const errors = socketErrors + non2xx;
  return { requests: total - non2xx, seconds: toMs(span[1]!, span[2]!) / 1000, p50: latency('50'), p99: latency('99'), errors };
}
