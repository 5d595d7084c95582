// Verifies a compact JWS carrying a JWT (RFC 7515, 7519, 8725) in a fixed order, each step only if the one before passed:
//   1. parse:     size cap, three canonical base64url segments, JSON objects
//   2. alg:       exactly RS256; typ JWT if present; no crit, no b64
//   3. key:       the unverified iss only picks which trusted issuer's key set to ask, the kid the key in it;
//                 keys named or carried by the token (jku, x5u, jwk, x5c) are never looked at
//   4. signature: RSASSA-PKCS1-v1_5 with SHA-256 through node:crypto
//   5. claims:    iss, aud, exp, nbf, iat (and max age), with clock skew; then frozen, at most 32 levels deep
import { verify, type KeyObject } from 'node:crypto';
import { decodeBase64url } from './base64url.js';
import type { TokenReason } from './errors.js';

/** Finds the verification key for a kid in one issuer's key set. Never throws. */
export type KeyResolver = (kid: string) => Promise<KeyObject | 'kid_unknown' | 'jwks_unavailable'>;

export interface TrustedIssuer {
  readonly issuer: string;
  readonly audiences: readonly string[];
  readonly resolveKey: KeyResolver;
}

/** Verified claims: frozen, null-prototype, own properties only. */
export type Claims = Readonly<Record<string, unknown>>;

export type Verification = { readonly ok: true; readonly claims: Claims } | { readonly ok: false; readonly reason: TokenReason };

export interface VerifierOptions {
  readonly issuers: readonly TrustedIssuer[];
  readonly clockSkewSeconds?: number;
  /** Refuse tokens issued longer ago than this (needs iat). Off by default. */
  readonly maxAgeSeconds?: number;
  readonly maxTokenBytes?: number;
  /** Milliseconds since the epoch; injectable so tests never sleep. */
  readonly now?: () => number;
  /** How many verified tokens to remember (0: none), and who is told of each hit or miss. */
  readonly cacheSize?: number;
  readonly onCache?: (hit: boolean) => void;
}

export const VERIFIER_DEFAULTS = { clockSkewSeconds: 60, maxTokenBytes: 8 * 1024, cacheSize: 10_000 } as const;

interface Verified { readonly token: string; readonly kid: string; readonly key: KeyObject; readonly trusted: TrustedIssuer; readonly claims: Claims; placed: number }

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

const fail = (reason: TokenReason): Verification => ({ ok: false, reason });

/** Returns a function that verifies one token and never throws. */
export function createTokenVerifier(opts: VerifierOptions): (token: string) => Promise<Verification> {
  const skew = opts.clockSkewSeconds ?? VERIFIER_DEFAULTS.clockSkewSeconds;
  const maxBytes = Math.floor(opts.maxTokenBytes ?? VERIFIER_DEFAULTS.maxTokenBytes);
  const maxAge = opts.maxAgeSeconds;
  const now = opts.now ?? Date.now;
  if (!(Number.isFinite(skew) && skew >= 0)) throw new TypeError('clockSkewSeconds: expected a number >= 0');
  if (!(Number.isInteger(maxBytes) && maxBytes > 0)) throw new TypeError('maxTokenBytes: expected a number >= 1');
  if (maxAge !== undefined && !(Number.isFinite(maxAge) && maxAge > 0)) throw new TypeError('maxAgeSeconds: expected a number > 0');
  if (opts.issuers.length === 0) throw new TypeError('issuers: expected at least one trusted issuer');
  const cacheSize = Math.floor(opts.cacheSize ?? VERIFIER_DEFAULTS.cacheSize);
  if (!(Number.isFinite(cacheSize) && cacheSize >= 0)) throw new TypeError('cacheSize: expected a number >= 0');
  const byIssuer = new Map(opts.issuers.map((t) => [t.issuer, t]));
  // A resolver that throws anyway, even synchronously, counts as an unavailable key set.
  const resolve = (t: TrustedIssuer, kid: string) => Promise.resolve().then(() => t.resolveKey(kid)).catch(() => 'jwks_unavailable' as const);
  // Tokens that verified, in placement order, roughly least recently used first (a job reuses its token for minutes). A hit skips
  // only the signature, the same bytes having verified under this key: the key set is asked again (rotated, dropped, stale: full path).
  // Found by the signature's last 12 characters (68 bits; hashing all of a 1.6 KB token cost more than the rest of a hit), matched whole.
  const cache = new Map<string, Verified>();
  // The slots of tokens verified once: a token is cached when verified again (or at once if it was cached when this verification
  // began, or its slot is now), so one-shot tokens (anyone's workflow can mint them) push out no token in use, and their claims are
  // not promoted to the old generation only to be dropped unused. V8 and JSC copy a substring shorter than 13 characters, so a slot keeps no token alive.
  const seen = new Set<string>();
  let placed = 0; // entries put at the recently used end so far: the clock of that order
  const kept = cacheSize - Math.floor(cacheSize / 100); // evicting 1% at a time: each eviction walks the deleted entries at the front
  const bound = (m: Set<string> | Map<string, Verified>) => { if (m.size > cacheSize) for (const old of m.keys()) if (m.delete(old) && m.size <= kept) break; };

  return async function verifyToken(token: string): Promise<Verification> {
    const slot = typeof token === 'string' ? token.slice(-12) : '', found = cache.get(slot);
    const hit = found?.token === token ? found : undefined;
    const same = hit !== undefined && (await resolve(hit.trusted, hit.kid)) === hit.key;
    // If still this entry after the wait: dropped unless the key set still gives the key that verified it, and moved to the recently used
    // end only once placed cacheSize / 2 ago: a moved Map entry leaves a deleted one in its bucket, walked by its lookups until a rehash.
    if (hit && (!same || placed - hit.placed >= cacheSize / 2) && cache.get(slot) === hit && cache.delete(slot) && same) cache.set(slot, Object.assign(hit, { placed: ++placed }));
    if (hit && same) {
      opts.onCache?.(true);
      const reason = checkClaims(hit.claims, hit.trusted, now() / 1000, skew, maxAge);
      if (reason && cache.get(slot) === hit) cache.delete(slot);
      return reason ? fail(reason) : { ok: true, claims: hit.claims };
    }
    if (cacheSize > 0) opts.onCache?.(false);

    // 1. parse
    if (token === '') return fail('token_missing');
    if (typeof token !== 'string' || token.length > maxBytes) return fail('token_malformed');
    const parts = token.split('.');
    if (parts.length !== 3) return fail('token_malformed');
    const [header, payload] = [parts[0]!, parts[1]!].map(parseObject);
    const signature = decodeBase64url(parts[2]!);
    // An empty signature (an unsecured JWS) gets past parsing so it is refused as alg_not_allowed.
    if (!header || !payload || !signature) return fail('token_malformed');

    // 2. alg and the other header members that change how to verify
    if (own(header, 'alg') !== 'RS256') return fail('alg_not_allowed');
    const typ = own(header, 'typ');
    if (typ !== undefined && (typeof typ !== 'string' || typ.toUpperCase() !== 'JWT')) return fail('token_malformed');
    // crit names extensions we do not understand (RFC 7515 §4.1.11); b64 is one (RFC 7797).
    if (Object.hasOwn(header, 'crit') || Object.hasOwn(header, 'b64')) return fail('token_malformed');
    const kid = own(header, 'kid');
    if (typeof kid !== 'string' || kid === '') return fail('token_malformed');

    // 3. key: a token from an issuer we do not trust never reaches a key set.
    const iss = own(payload, 'iss');
    const trusted = typeof iss === 'string' ? byIssuer.get(iss) : undefined;
    if (!trusted) return fail('issuer_mismatch');
    const key = await resolve(trusted, kid);
    if (typeof key === 'string') return fail(key);

    // 4. signature over the exact bytes received (a key or signature that node:crypto throws on is a bad signature too)
    let valid = false;
    try { valid = verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`, 'latin1'), key, signature); } catch {}
    if (!valid) return fail('signature_invalid');

    // 5. claims, now that they are known to come from the issuer
    const reason = checkClaims(payload, trusted, now() / 1000, skew, maxAge) ?? (freezeClaims(payload) ? undefined : 'token_malformed');
    if (reason) return fail(reason);
    if (cacheSize > 0 && !hit && !cache.has(slot) && !seen.has(slot)) bound(seen.add(slot));
    else if (cacheSize > 0) {
      seen.delete(slot);
      cache.delete(slot); // set() would keep an existing key where it is: deleted first, the entry goes to the recently used end
      bound(cache.set(slot, { token, kid, key, trusted, claims: payload, placed: ++placed }));
    }
    return { ok: true, claims: payload };
  };
}

function checkClaims(p: Record<string, unknown>, trusted: TrustedIssuer, nowSeconds: number, skew: number, maxAge: number | undefined): TokenReason | undefined {
  if (own(p, 'iss') !== trusted.issuer) return 'issuer_mismatch';
  const [exp, nbf, iat] = ['exp', 'nbf', 'iat'].map((name) => own(p, name));
  if (!isTime(exp) || (nbf !== undefined && !isTime(nbf)) || (iat !== undefined && !isTime(iat))) return 'token_malformed';
  if (maxAge !== undefined && iat === undefined) return 'token_malformed';
  const aud = own(p, 'aud');
  const audiences = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
  if (!audiences.some((a) => typeof a === 'string' && trusted.audiences.includes(a))) return 'audience_mismatch';
  if (!(nowSeconds < exp + skew)) return 'token_expired';
  if ((nbf !== undefined && nbf > nowSeconds + skew) || (iat !== undefined && iat > nowSeconds + skew)) return 'token_not_yet_valid';
  if (maxAge !== undefined && nowSeconds - (iat as number) > maxAge + skew) return 'token_expired';
  return undefined;
}

const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

// A cached token's claims are shared by its requests, so all of them are frozen: once signed (unsigned input costs no more
// than its parse), level by level (no depth exhausts the stack), and refused past 32 levels (GitHub's claims are flat).
function freezeClaims(payload: object): boolean {
  let level = [payload];
  for (let depth = 0; level.length > 0 && depth <= 32; depth++) level = level.flatMap((o) => Object.values(Object.freeze(o)).filter((v): v is object => typeof v === 'object' && v !== null));
  return level.length === 0;
}

/** Decodes one segment to a null-prototype JSON object, or undefined for anything else. */
function parseObject(segment: string): Record<string, unknown> | undefined {
  const bytes = decodeBase64url(segment);
  if (!bytes || bytes.length === 0) return undefined;
  try {
    const value: unknown = JSON.parse(utf8.decode(bytes));
    // JSON.parse makes "__proto__" an own property: with no prototype it stays a harmless claim name.
    return isObject(value) ? (Object.setPrototypeOf(value, null) as Record<string, unknown>) : undefined;
  } catch {
    return undefined; // invalid UTF-8 or invalid JSON
  }
}

export const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** An own member, or undefined: nothing inherited (such as `constructor`) is ever read as a claim or a key member. */
export const own = (o: Readonly<Record<string, unknown>>, name: string): unknown => (Object.hasOwn(o, name) ? o[name] : undefined);
