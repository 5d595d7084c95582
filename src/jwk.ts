// One RSA signing key from a JWK Set (RFC 7517 §4, RFC 7518 §6.3.1). node:crypto imports lenient JWKs and verifies
// under tiny moduli and exponent 1 (anyone can forge with it), so every member is checked here first.
import { createPublicKey, type KeyObject } from 'node:crypto';
import { decodeBase64url } from './base64url.js';
import { isObject, own } from './jwt.js';

export const MIN_MODULUS_BITS = 2048;

export type ImportedKey = { kid: string; key: KeyObject } | { skipped: string };

/** Imports a JWK as an RS256 verification key, or says why it cannot be one. */
export function importRsaJwk(jwk: unknown): ImportedKey {
  if (!isObject(jwk)) return { skipped: 'not an object' };
  const kid = own(jwk, 'kid');
  if (typeof kid !== 'string' || kid === '') return { skipped: 'kid missing' };
  const why = unusable(jwk);
  if (why) return { skipped: `kid ${JSON.stringify(kid)}: ${why}` };
  try {
    // Only the public members are handed over: a key set that leaks "d" must never make us hold a private key.
    return { kid, key: createPublicKey({ key: { kty: 'RSA', n: jwk.n as string, e: jwk.e as string }, format: 'jwk' }) };
  } catch {
    return { skipped: `kid ${JSON.stringify(kid)}: rejected by node:crypto` };
  }
}

function unusable(m: Record<string, unknown>): string | undefined {
  if (own(m, 'kty') !== 'RSA') return 'kty is not RSA';
  const use = own(m, 'use');
  if (use !== undefined && use !== 'sig') return 'use is not sig';
  const alg = own(m, 'alg');
  if (alg !== undefined && alg !== 'RS256') return 'alg is not RS256';
  const ops = own(m, 'key_ops');
  if (ops !== undefined && !(Array.isArray(ops) && ops.includes('verify'))) return 'key_ops lacks verify';
  const [modulus, exponent] = [own(m, 'n'), own(m, 'e')].map((v) => (typeof v === 'string' ? decodeBase64url(v) : undefined));
  if (!modulus || modulus.length === 0) return 'n is not strict base64url';
  if (!exponent) return 'e is not strict base64url';
  // 65537 in its minimal big-endian form ("AQAB"); anything else is refused.
  if (exponent.length !== 3 || exponent[0] !== 1 || exponent[1] !== 0 || exponent[2] !== 1) return 'e is not 65537';
  if (BigInt(`0x${modulus.toString('hex')}`).toString(2).length < MIN_MODULUS_BITS) return `modulus under ${MIN_MODULUS_BITS} bits`;
  return undefined;
}
