// One trusted issuer's key set (RFC 7517 §5), from OpenID discovery, a jwks_uri or a file: cached, refreshed
// in the background, refetched for an unknown kid at most once per cooldown, served stale for a bounded time if the issuer is down.
import { readFile, stat } from 'node:fs/promises';
import type { KeyObject } from 'node:crypto';
import { isIPv4 } from 'node:net';
import { importRsaJwk } from './jwk.js';
import { isObject, type KeyResolver } from './jwt.js';

export const KEYSET_DEFAULTS = { fetchTimeoutMs: 5_000, cooldownMs: 30_000, maxAgeMs: 600_000, minMaxAgeMs: 60_000, maxMaxAgeMs: 86_400_000,
  staleIfErrorMs: 86_400_000, maxBodyBytes: 1024 * 1024 } as const;

const TIMERS = ['fetchTimeoutMs', 'cooldownMs', 'staleIfErrorMs'] as const;

export interface KeySetOptions extends Partial<Record<(typeof TIMERS)[number], number>> {
  readonly issuer: string;
  /** At most one of these; with neither, OpenID discovery finds the key set. */
  readonly jwksUri?: string;
  readonly jwksFile?: string;
  readonly fetch?: typeof globalThis.fetch;
  readonly now?: () => number;
  readonly log?: (line: Record<string, unknown>) => void;
}

export interface KeySet {
  readonly resolveKey: KeyResolver;
  /** Fetches now, sharing any fetch already in flight. Never throws. */
  refresh(): Promise<boolean>;
  status(): { readonly keys: number; readonly usable: boolean; readonly lastGoodFetch: number | undefined };
  /** Fetches at once, then keeps the set fresh (and retries while it has none) on unref'd timers. */
  start(): Promise<boolean>;
  stop(): void;
}

export type KeySetStatus = ReturnType<KeySet['status']>;

/** https, or plain http to a loopback host (tests and sidecars). Returns a problem or undefined. */
export function checkKeyUrl(text: string): string | undefined {
  if (!URL.canParse(text)) return 'expected an absolute URL';
  const url = new URL(text);
  if (url.username || url.password) return 'must not carry credentials';
  if (url.protocol === 'https:') return undefined;
  // Loopback by address, not by name: "127.attacker.example" is anyone's.
  const loopback = url.hostname === 'localhost' || url.hostname === '[::1]' || (isIPv4(url.hostname) && url.hostname.startsWith('127.'));
  return url.protocol === 'http:' && loopback ? undefined : 'expected https (plain http only to a loopback host)';
}

export function createKeySet(opts: KeySetOptions): KeySet {
  if (opts.jwksUri !== undefined && opts.jwksFile !== undefined) throw new TypeError('jwksUri and jwksFile: give at most one');
  const [fetchTimeoutMs, cooldownMs, staleIfErrorMs] = TIMERS.map((name) => {
    const ms = opts[name] ?? KEYSET_DEFAULTS[name];
    if (!(Number.isInteger(ms) && ms >= 0)) throw new TypeError(`${name}: expected a whole number >= 0`);
    return ms;
  });
  const doFetch = opts.fetch ?? globalThis.fetch;
  const now = opts.now ?? Date.now;
  const { issuer, log } = opts;
  for (const [name, url] of [['issuer', issuer], ['jwksUri', opts.jwksUri]] as const) {
    const problem = url === undefined ? undefined : checkKeyUrl(url);
    if (problem) throw new TypeError(`${name}: ${problem}`);
  }

  let keys = new Map<string, KeyObject>();
  let lastGoodFetch: number | undefined, expiresAt = 0;
  // Refresh once 80% of the max age has passed, so no request waits on it.
  let refreshAt = Infinity;
  let lastAttempt = -Infinity, stopped = false;
  let inflight: Promise<boolean> | undefined, timer: ReturnType<typeof setTimeout> | undefined;

  const usable = (t: number) => keys.size > 0 && t < expiresAt + staleIfErrorMs;

  async function load(): Promise<{ body: unknown; maxAgeMs: number }> {
    if (opts.jwksFile !== undefined) {
      if ((await stat(opts.jwksFile)).size > KEYSET_DEFAULTS.maxBodyBytes) throw new Error('key file over 1 MiB');
      return { body: JSON.parse(await readFile(opts.jwksFile, 'utf8')), maxAgeMs: KEYSET_DEFAULTS.maxAgeMs };
    }
    if (opts.jwksUri !== undefined) return getJson(opts.jwksUri);
    const { body } = await getJson(`${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`);
    const doc = isObject(body) ? body : {};
    if (doc.issuer !== issuer) throw new Error('discovery document names another issuer');
    let problem = typeof doc.jwks_uri === 'string' ? checkKeyUrl(doc.jwks_uri) : 'missing';
    // An https issuer's document may not send us to plain http, loopback or not.
    if (!problem && issuer.startsWith('https:') && !String(doc.jwks_uri).startsWith('https:')) problem = 'expected https';
    if (problem) throw new Error(`discovery jwks_uri: ${problem}`);
    return getJson(doc.jwks_uri as string);
  }

  async function getJson(url: string): Promise<{ body: unknown; maxAgeMs: number }> {
    const res = await doFetch(url, { redirect: 'manual', headers: { accept: 'application/json' }, signal: AbortSignal.timeout(fetchTimeoutMs) });
    // A declared length over the cap is refused before any read, like a bad status.
    if (res.status !== 200 || Number(res.headers.get('content-length') ?? 0) > KEYSET_DEFAULTS.maxBodyBytes) {
      await res.body?.cancel().catch(() => {});
      throw new Error(res.status !== 200 ? `${url} answered ${res.status}` : 'body over 1 MiB');
    }
    return { body: JSON.parse(await readCapped(res)), maxAgeMs: maxAgeOf(res.headers.get('cache-control')) };
  }

  async function fetchKeys(): Promise<boolean> {
    lastAttempt = now();
    try {
      const { body, maxAgeMs } = await load();
      const list = isObject(body) && Array.isArray(body.keys) ? body.keys : undefined;
      if (!list) throw new Error('not a JWK Set: no "keys" array');
      const next = new Map<string, KeyObject>();
      for (const jwk of list) {
        const imported = importRsaJwk(jwk);
        if ('skipped' in imported) log?.({ kind: 'keys', issuer, result: 'key_skipped', detail: imported.skipped });
        else if (next.has(imported.kid)) log?.({ kind: 'keys', issuer, result: 'key_skipped', detail: `kid ${JSON.stringify(imported.kid)}: duplicate` });
        else next.set(imported.kid, imported.key);
      }
      if (next.size === 0) throw new Error('no usable RS256 key in the set');
      keys = next;
      lastGoodFetch = now();
      expiresAt = lastGoodFetch + maxAgeMs;
      refreshAt = lastGoodFetch + maxAgeMs * 0.8;
      log?.({ kind: 'keys', issuer, result: 'ok', keys: next.size });
      return true;
    } catch (err) {
      log?.({ kind: 'keys', issuer, result: 'error', detail: describe(err), keys: keys.size, stale: keys.size > 0 });
      return false;
    }
  }

  const refresh = (): Promise<boolean> => (inflight ??= fetchKeys().finally(() => (inflight = undefined)));

  async function resolveKey(kid: string): Promise<KeyObject | 'kid_unknown' | 'jwks_unavailable'> {
    const t = now();
    const mayFetch = inflight !== undefined || t - lastAttempt >= cooldownMs;
    if (!usable(t)) {
      if (mayFetch) await refresh();
      return usable(now()) ? (keys.get(kid) ?? 'kid_unknown') : 'jwks_unavailable';
    }
    if (t >= refreshAt && mayFetch) void refresh();
    // An unknown kid may be a rotation: look again, at most once per cooldown.
    if (!keys.has(kid) && mayFetch) await refresh();
    return keys.get(kid) ?? 'kid_unknown';
  }

  // `failures` in a row: back off 1 s, 2 s, 4 s ... up to the cooldown, whether or not stale keys still serve.
  function schedule(failures: number): void {
    if (stopped) return;
    const delay = failures === 0 ? Math.max(1_000, refreshAt - now()) : Math.min(1_000 * 2 ** (failures - 1), Math.max(cooldownMs, 1_000));
    timer = setTimeout(() => void refresh().then((ok) => schedule(ok ? 0 : failures + 1)), delay);
    timer.unref?.();
  }

  return {
    resolveKey,
    refresh,
    status: () => ({ keys: keys.size, usable: usable(now()), lastGoodFetch }),
    async start() {
      stopped = false;
      const ok = await refresh();
      clearTimeout(timer);
      schedule(ok ? 0 : 1);
      return ok;
    },
    stop: () => void ((stopped = true), clearTimeout(timer)),
  };
}

/** Cache-Control max-age, clamped to [60 s, 24 h]; 10 min when absent. */
function maxAgeOf(cacheControl: string | null): number {
  let ms: number = KEYSET_DEFAULTS.maxAgeMs;
  for (const part of (cacheControl ?? '').split(',')) {
    const [name, value] = part.trim().toLowerCase().split('=');
    if (name === 'max-age' && value !== undefined && /^\d{1,9}$/.test(value)) ms = Number(value) * 1000;
    if (name === 'no-cache' || name === 'no-store') ms = 0;
  }
  return Math.min(Math.max(ms, KEYSET_DEFAULTS.minMaxAgeMs), KEYSET_DEFAULTS.maxMaxAgeMs);
}

// Counts the streamed bytes rather than trusting Content-Length; leaving the loop early cancels the body.
async function readCapped(res: Response): Promise<string> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of (res.body ?? []) as AsyncIterable<Uint8Array>) {
    total += chunk.byteLength;
    if (total > KEYSET_DEFAULTS.maxBodyBytes) throw new Error('body over 1 MiB');
    chunks.push(chunk);
  }
  return new TextDecoder('utf-8', { fatal: true }).decode(Buffer.concat(chunks));
}

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  if (err.name === 'TimeoutError') return 'timed out';
  // fetch puts the socket error on err.cause.code on Node, on err.code on Bun.
  const code = (err as { code?: unknown }).code ?? (err.cause as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? `${err.message} (${code})` : err.message;
}
