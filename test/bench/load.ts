// The built-in load generator, run as its own process (forked by run.ts, driven over IPC) so that it
// never shares an event loop with the servers it measures. Raw keep-alive HTTP/1.1 over node:net: each
// connection writes a prebuilt request, reads the response (Content-Length or chunked, bodies counted,
// never kept) and writes the next, until the time is up. No http.Agent, no header objects: a Node client
// built on node:http would itself become the bottleneck on 2 cores.
//
// Tokens arrive once by IPC ({op: 'tokens'}) and are only ever written to sockets, never printed.
import net from 'node:net';
import { cpuTicks } from './proc.ts';

export type Job =
  | { readonly op: 'tokens'; readonly name: string; readonly values: readonly string[] }
  | ({ readonly op: 'rps'; readonly connections: number; readonly seconds: number; readonly expect: number; readonly pids: readonly number[] } & Target)
  | ({ readonly op: 'upload' | 'download' | 'refusedUpload'; readonly bytes: number } & Target)
  | { readonly op: 'tunnelsOpen'; readonly port: number; readonly to: string; readonly tokens: string; readonly count: number }
  | { readonly op: 'tunnelsPump'; readonly seconds: number; readonly messageBytes: number }
  | { readonly op: 'tunnelsClose' };

/** Where requests go and which token list (sent earlier by name) they carry, one token per request in turn. */
export interface Target {
  readonly port: number;
  readonly path: string;
  readonly header: string;
  readonly tokens: string;
}

export interface RpsResult {
  /** Responses with the expected status within the window. */
  readonly requests: number;
  /** Other statuses and broken connections within the window. */
  readonly errors: number;
  readonly statuses: Readonly<Record<string, number>>;
  /** The measured window in seconds (from the first request to the sample at the deadline). */
  readonly seconds: number;
  readonly p50: number;
  readonly p99: number;
  /** CPU ticks of each of job.pids over the window. */
  readonly ticks: readonly number[];
  /** This process's own CPU ticks over the window. */
  readonly selfTicks: number;
}

export interface TransferResult {
  readonly status: number;
  /** Whether an interim 100 Continue arrived before the final answer (uploads). */
  readonly continued: boolean;
  readonly continueMs?: number;
  readonly bytes: number;
  readonly ms: number;
}

export interface TunnelsOpened {
  readonly opened: number;
  readonly statuses: Readonly<Record<string, number>>;
}

export interface TunnelsPumped {
  readonly bytes: number;
  readonly seconds: number;
}

// ---------------------------------------------------------------- HTTP/1.1 responses off a byte stream

interface ResponseEvents {
  /** An interim (1xx) response head. */
  info?(status: number): void;
  body?(bytes: number): void;
  /** A whole response; close: it said Connection: close. */
  done(status: number, close: boolean): void;
}

/** Returns a push(chunk) that parses responses one after another, counting body bytes without keeping them. */
function responseParser(on: ResponseEvents): (chunk: Buffer) => void {
  type State = 'head' | 'body' | 'size' | 'chunk' | 'crlf' | 'trailer' | 'untilClose';
  let state: State = 'head';
  let pending: Buffer | undefined;
  let remaining = 0;
  let status = 0;
  let close = false;
  const finish = () => {
    state = 'head';
    on.done(status, close);
  };
  return (chunk) => {
    const buf = pending ? Buffer.concat([pending, chunk]) : chunk;
    pending = undefined;
    let pos = 0;
    while (pos < buf.length) {
      if (state === 'head' || state === 'size' || state === 'trailer') {
        const mark = state === 'head' ? '\r\n\r\n' : '\r\n';
        const end = buf.indexOf(mark, pos, 'latin1');
        if (end < 0) {
          pending = buf.subarray(pos);
          return;
        }
        const text = buf.toString('latin1', pos, end);
        pos = end + mark.length;
        if (state === 'size') {
          remaining = parseInt(text, 16);
          state = remaining === 0 ? 'trailer' : 'chunk';
        } else if (state === 'trailer') {
          if (text === '') finish();
        } else {
          status = Number(text.slice(9, 12));
          if (status < 200) {
            on.info?.(status);
            continue;
          }
          const head = text.toLowerCase();
          close = head.includes('\r\nconnection: close');
          const at = head.indexOf('\r\ncontent-length:');
          if (at >= 0) {
            remaining = parseInt(head.slice(at + 17), 10);
            state = 'body';
            if (remaining === 0) finish();
          } else if (head.includes('\r\ntransfer-encoding: chunked')) state = 'size';
          else if (status === 204 || status === 304) finish();
          else state = 'untilClose';
        }
        continue;
      }
      if (state === 'untilClose') {
        on.body?.(buf.length - pos);
        return;
      }
      const n = Math.min(remaining, buf.length - pos);
      remaining -= n;
      pos += n;
      if (state !== 'crlf') on.body?.(n);
      if (remaining > 0) continue;
      if (state === 'body') finish();
      else if (state === 'crlf') state = 'size';
      else {
        // A chunk's data is followed by CRLF before the next size line.
        state = 'crlf';
        remaining = 2;
      }
    }
  };
}

// ---------------------------------------------------------------- sockets

function dial(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
  });
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The first of `promise` and a timeout; the timer does not outlive the race. */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), ms)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- requests per second

const lists = new Map<string, readonly string[]>();
// Prebuilt requests per token list and target, with a cursor that carries on from run to run: a fresh-token
// pool walked in a cycle longer than the gateway's cache (10,000 entries, LRU) misses it on every request.
const pools = new Map<string, { readonly requests: readonly Buffer[]; cursor: number }>();

function tokensOf(name: string): readonly string[] {
  const tokens = lists.get(name);
  if (!tokens || tokens.length === 0) throw new Error(`no token list named ${name}`);
  return tokens;
}

function poolFor(t: Target) {
  const key = `${t.tokens} ${t.port} ${t.path} ${t.header}`;
  let pool = pools.get(key);
  if (!pool) {
    const head = `GET ${t.path} HTTP/1.1\r\nhost: 127.0.0.1:${t.port}\r\n`;
    pool = { requests: tokensOf(t.tokens).map((token) => Buffer.from(`${head}${t.header}: Bearer ${token}\r\n\r\n`, 'latin1')), cursor: 0 };
    pools.set(key, pool);
  }
  return pool;
}

async function rps(job: Extract<Job, { op: 'rps' }>): Promise<RpsResult> {
  const pool = poolFor(job);
  const next = () => pool.requests[pool.cursor++ % pool.requests.length]!;
  const latencies: number[] = [];
  const statuses: Record<string, number> = {};
  const sockets = new Set<net.Socket>();
  let errors = 0;
  let started = false;
  let counting = true;
  let stopped = false;

  /** One keep-alive connection: send, read the answer, send again; reconnect when the server closes. */
  const connection = (first: net.Socket) =>
    new Promise<void>((finished) => {
      let inFlight = false;
      let sentAt = 0;
      let done = false;
      const finish = (socket?: net.Socket) => {
        if (done) return;
        done = true;
        socket?.end();
        finished();
      };
      const send = (socket: net.Socket) => {
        if (stopped) return finish(socket);
        inFlight = true;
        sentAt = performance.now();
        socket.write(next());
      };
      const reconnect = (delayMs: number) => {
        if (stopped) return finish();
        setTimeout(() => dial(job.port).then(use, () => {
          if (counting) errors++;
          reconnect(Math.min(delayMs * 2 + 10, 500));
        }), delayMs);
      };
      const use = (socket: net.Socket) => {
        sockets.add(socket);
        let replaced = false;
        const replace = (delayMs: number) => {
          if (replaced) return;
          replaced = true;
          socket.destroy();
          reconnect(delayMs);
        };
        socket.on('data', responseParser({
          done(status, close) {
            inFlight = false;
            if (counting) {
              statuses[status] = (statuses[status] ?? 0) + 1;
              if (status === job.expect) latencies.push(performance.now() - sentAt);
              else errors++;
            }
            if (close) replace(0);
            else send(socket);
          },
        }));
        socket.on('error', () => {});
        socket.on('close', () => {
          sockets.delete(socket);
          if (done || replaced) return;
          if (inFlight && counting) errors++;
          inFlight = false;
          replace(10);
        });
        if (started) send(socket);
        else void kickoff.then(() => socket.destroyed || send(socket));
      };
      use(first);
    });

  let go!: () => void;
  const kickoff = new Promise<void>((resolve) => (go = resolve));
  const conns = (await Promise.all(Array.from({ length: job.connections }, () => dial(job.port)))).map(connection);

  const ticks0 = job.pids.map(cpuTicks);
  const self0 = cpuTicks('self');
  const t0 = performance.now();
  started = true;
  go();
  await sleep(job.seconds * 1000);
  const seconds = (performance.now() - t0) / 1000;
  const ticks = job.pids.map((pid, i) => cpuTicks(pid) - ticks0[i]!);
  const selfTicks = cpuTicks('self') - self0;
  counting = false;
  stopped = true;
  // Each connection ends after its answer in flight; a server that never answers is cut.
  if ((await within(Promise.all(conns), 2_000)) === 'timeout') for (const s of sockets) s.destroy();

  const sorted = Float64Array.from(latencies).sort();
  const at = (q: number) => (sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))]!);
  return { requests: latencies.length, errors, statuses, seconds, p50: at(0.5), p99: at(0.99), ticks, selfTicks };
}

// ---------------------------------------------------------------- big bodies

const CHUNK = Buffer.alloc(256 * 1024, 'u');

async function writeBody(socket: net.Socket, bytes: number): Promise<void> {
  for (let left = bytes; left > 0 && !socket.destroyed; ) {
    const n = Math.min(left, CHUNK.length);
    left -= n;
    if (!socket.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
      await new Promise<void>((resolve) => {
        const go = () => (socket.off('drain', go).off('close', go), resolve());
        socket.on('drain', go).on('close', go);
      });
    }
  }
}

/**
 * One exchange on a fresh connection, the way curl sends a big upload: the head with Expect: 100-continue,
 * the body only after 100 Continue (or, like curl, after a second without an answer), then the final answer.
 */
async function transfer(job: Extract<Job, { op: 'upload' | 'download' | 'refusedUpload' }>): Promise<TransferResult> {
  const token = tokensOf(job.tokens)[0]!;
  const socket = await dial(job.port);
  try {
    let interim!: (status: number) => void;
    let final!: (status: number) => void;
    const continued = new Promise<number>((resolve) => (interim = resolve));
    const answered = new Promise<number>((resolve) => (final = resolve));
    const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(0)));
    let received = 0;
    socket.on('error', () => {});
    socket.on('data', responseParser({ info: interim, body: (n) => (received += n), done: (status) => final(status) }));
    const auth = `${job.header}: Bearer ${token}\r\n`;
    const t0 = performance.now();
    if (job.op === 'download') {
      socket.write(`GET ${job.path}?bytes=${job.bytes} HTTP/1.1\r\nhost: 127.0.0.1:${job.port}\r\n${auth}\r\n`);
      const status = await Promise.race([answered, closed]);
      return { status, continued: false, bytes: received, ms: performance.now() - t0 };
    }
    socket.write(`POST ${job.path} HTTP/1.1\r\nhost: 127.0.0.1:${job.port}\r\n${auth}content-type: application/octet-stream\r\ncontent-length: ${job.bytes}\r\nexpect: 100-continue\r\n\r\n`);
    const first = await within(Promise.race([continued.then(() => 'continue' as const), answered.then(() => 'final' as const), closed.then(() => 'closed' as const)]), 1_000);
    const continueMs = first === 'continue' ? performance.now() - t0 : undefined;
    if (first === 'final' || first === 'closed') return { status: await Promise.race([answered, closed]), continued: false, bytes: 0, ms: 0 };
    if (job.op === 'refusedUpload') return { status: first === 'continue' ? 100 : 0, continued: first === 'continue', continueMs, bytes: 0, ms: 0 };
    const t1 = performance.now();
    await writeBody(socket, job.bytes);
    const status = await Promise.race([answered, closed]);
    return { status, continued: first === 'continue', continueMs, bytes: job.bytes, ms: performance.now() - t1 };
  } finally {
    socket.destroy();
  }
}

// ---------------------------------------------------------------- CONNECT tunnels

const tunnels: net.Socket[] = [];

/** Opens one CONNECT tunnel; resolves with the proxy's status, keeping the socket when it is 200. */
async function openTunnel(port: number, to: string, token: string): Promise<number> {
  const socket = await dial(port);
  socket.on('error', () => {});
  socket.write(`CONNECT ${to} HTTP/1.1\r\nhost: ${to}\r\nproxy-authorization: Bearer ${token}\r\n\r\n`);
  let seen = Buffer.alloc(0);
  const status = await within(new Promise<number>((resolve) => {
    const read = (chunk: Buffer) => {
      seen = Buffer.concat([seen, chunk]);
      if (seen.indexOf('\r\n\r\n') < 0) return;
      socket.off('data', read);
      resolve(Number(seen.toString('latin1', 9, 12)));
    };
    socket.on('data', read).once('close', () => resolve(0));
  }), 10_000);
  if (status !== 200) {
    socket.destroy();
    return status === 'timeout' ? 0 : status;
  }
  socket.pause();
  tunnels.push(socket);
  return 200;
}

async function tunnelsOpen(job: Extract<Job, { op: 'tunnelsOpen' }>): Promise<TunnelsOpened> {
  const token = tokensOf(job.tokens)[0]!;
  const statuses: Record<string, number> = {};
  let asked = 0;
  // A few dozen handshakes at a time: enough to be quick, few enough not to overflow a listen backlog.
  const worker = async () => {
    while (asked < job.count) {
      asked++;
      const status = await openTunnel(job.port, job.to, token).catch(() => 0);
      statuses[status] = (statuses[status] ?? 0) + 1;
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
  return { opened: tunnels.length, statuses };
}

/** Every tunnel at once sends a message to the echo server behind it and waits for it to come back, again and again. */
async function tunnelsPump(job: Extract<Job, { op: 'tunnelsPump' }>): Promise<TunnelsPumped> {
  const message = Buffer.alloc(job.messageBytes, 't');
  let bytes = 0;
  let counting = true;
  const t0 = performance.now();
  const deadline = t0 + job.seconds * 1000;
  const runs = tunnels.map((socket) => new Promise<void>((resolve) => {
    let got = 0;
    const stop = () => (socket.off('data', read).off('close', stop), socket.pause(), resolve());
    const read = (chunk: Buffer) => {
      got += chunk.length;
      if (counting) bytes += chunk.length;
      if (got < message.length) return;
      got -= message.length;
      if (performance.now() < deadline) socket.write(message);
      else stop();
    };
    socket.on('data', read).once('close', stop);
    socket.resume();
    socket.write(message);
  }));
  await sleep(job.seconds * 1000);
  counting = false;
  const seconds = (performance.now() - t0) / 1000;
  await within(Promise.all(runs), 5_000);
  return { bytes, seconds };
}

// ---------------------------------------------------------------- IPC

async function run(job: Job): Promise<unknown> {
  switch (job.op) {
    case 'tokens':
      lists.set(job.name, job.values);
      return null;
    case 'rps':
      return rps(job);
    case 'upload':
    case 'download':
    case 'refusedUpload':
      return transfer(job);
    case 'tunnelsOpen':
      return tunnelsOpen(job);
    case 'tunnelsPump':
      return tunnelsPump(job);
    case 'tunnelsClose':
      for (const socket of tunnels.splice(0)) socket.destroy();
      return null;
  }
}

process.on('message', (message: { id: number; job: Job }) => {
  run(message.job).then(
    (result) => process.send!({ id: message.id, ok: true, result }),
    // Socket errors name addresses, never what was sent: no token can reach the parent's output this way.
    (err: unknown) => process.send!({ id: message.id, ok: false, error: err instanceof Error ? err.message : String(err) }),
  );
});
// The bench that forked us is gone: so are we.
process.on('disconnect', () => process.exit(0));
