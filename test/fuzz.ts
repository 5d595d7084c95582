// Generators and oracles for test/fuzz.test.ts: seeded, so a failure is replayed from its seed and case index.
//
// Every case draws from its own PRNG, seeded from (FUZZ_SEED, stream, index), so one case can be understood (and
// replayed) without the thousands before it. The signing keys are fixed below for the same reason: with a random key
// the bytes of every signature, and so of every mutation of one, would change from run to run.
//
// The token oracle never asks the code under test: it parses what it signed itself (strict UTF-8, JSON.parse), checks
// the header, the claims and the policy in its own words, and says which outcomes each exact token may have. Any
// other string, whatever its resemblance to a signed token, may only be refused.
import { constants, createPrivateKey, createPublicKey, randomInt, sign, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { rsaJwk, seededRandom, signatureFor, signToken, type SigningAlg, type SigningKey, type TestKey } from './helpers.ts';

// ---------------------------------------------------------------- seed, scale, per-case randomness

export interface FuzzSettings {
  readonly seed: number;
  /** Multiplies every iteration count: 1 in `npm test`, 10 in `npm run fuzz`. */
  readonly scale: number;
  /** Where the seed came from, for the log line. */
  readonly origin: 'FUZZ_SEED' | 'CI default' | 'random';
}

/** A fixed seed in CI, so a red build can be replayed; a fresh one elsewhere, so local runs explore. */
export const CI_SEED = 20_250_607;

export function fuzzSettings(env: NodeJS.ProcessEnv = process.env): FuzzSettings {
  const scale = env.FUZZ_SCALE === undefined || env.FUZZ_SCALE === '' ? 1 : Number(env.FUZZ_SCALE);
  if (!(Number.isFinite(scale) && scale > 0)) throw new TypeError(`FUZZ_SCALE: expected a number > 0, got ${JSON.stringify(env.FUZZ_SCALE)}`);
  if (env.FUZZ_SEED !== undefined && env.FUZZ_SEED !== '') {
    const seed = Number(env.FUZZ_SEED);
    if (!(Number.isSafeInteger(seed) && seed >= 0 && seed <= 0xffff_ffff)) throw new TypeError(`FUZZ_SEED: expected an integer from 0 to 4294967295, got ${JSON.stringify(env.FUZZ_SEED)}`);
    return { seed, scale, origin: 'FUZZ_SEED' };
  }
  if (env.CI) return { seed: CI_SEED, scale, origin: 'CI default' };
  return { seed: randomInt(0, 2 ** 31), scale, origin: 'random' };
}

export interface Rng {
  /** [0, 1) */
  next(): number;
  /** An integer from lo to hi, both included. */
  int(lo: number, hi: number): number;
  chance(p: number): boolean;
  pick<T>(items: readonly T[]): T;
  /** `n` characters drawn from `alphabet`. */
  text(alphabet: string, n: number): string;
  bytes(n: number): Buffer;
}

/** The PRNG of one case: the same (seed, stream, index) always gives the same draws. */
export function caseRandom(seed: number, stream: string, index: number): Rng {
  // FNV-1a over the three, then mulberry32 (helpers' seededRandom) takes it from there.
  let h = 0x811c9dc5;
  for (const c of `${seed}\u0000${stream}\u0000${index}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  const next = seededRandom(h);
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
  return {
    next,
    int,
    chance: (p) => next() < p,
    pick: (items) => items[Math.floor(next() * items.length)]!,
    text: (alphabet, n) => {
      let s = '';
      for (let i = 0; i < n; i++) s += alphabet[Math.floor(next() * alphabet.length)];
      return s;
    },
    bytes: (n) => Buffer.from(Array.from({ length: n }, () => int(0, 255))),
  };
}

/** How a failing case is named in every message: enough to replay it. */
export function caseLabel(settings: FuzzSettings, stream: string, index: number): string {
  return `[seed ${settings.seed}, ${stream} case ${index}; replay: FUZZ_SEED=${settings.seed} FUZZ_SCALE=${settings.scale}]`;
}

/** A value shown in a failure message: JSON-escaped, and cut in the middle when long. */
export function shown(value: unknown, max = 400): string {
  let text: string;
  try {
    text = JSON.stringify(Buffer.isBuffer(value) ? value.toString('latin1') : value) ?? String(value);
  } catch {
    text = Object.prototype.toString.call(value);
  }
  return text.length <= max ? text : `${text.slice(0, max / 2)}...(${text.length} chars)...${text.slice(-max / 4)}`;
}

/** Resident memory of a process now (VmRSS, not the peak), in MiB, from /proc (Linux). */
export function rssMiB(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) / 1024 : NaN;
}

// ---------------------------------------------------------------- keys

export interface FuzzKeys {
  /** Both published by the issuer. */
  readonly k1: TestKey;
  readonly k2: TestKey;
}

function fixedKey(pem: string, kid: string): TestKey {
  const privateKey = createPrivateKey(pem.trim());
  const publicKey = createPublicKey(privateKey);
  return { kid, bits: 2048, privateKey, publicKey, jwk: rsaJwk(publicKey, kid), publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString() };
}

export function fuzzKeys(): FuzzKeys {
  return { k1: fixedKey(FUZZ_KEY_1, 'fuzz-1'), k2: fixedKey(FUZZ_KEY_2, 'fuzz-2') };
}

// ---------------------------------------------------------------- tokens: the policy and the oracle

export const AUDIENCE = 'api://ActionsOIDCGateway';

/** The route's allow rules, in the config's own form. The base claims pass the first rule only. */
export const POLICY_RULES: readonly Record<string, string | readonly string[]>[] = [
  { repository: 'octo-org/octo-repo', repository_id: '123456', ref: ['refs/heads/main', 'refs/tags/v*'] },
  { repository_owner_id: '42', workflow: '1 🚀*' },
];

/** What may happen to a token: let in, refused by the policy (403), or refused as a token (401). */
export type Outcome = 'accept' | 'deny' | 'refuse';

const REFUSE: ReadonlySet<Outcome> = new Set(['refuse']);

const own = (o: Record<string, unknown>, name: string): unknown => (Object.hasOwn(o, name) ? o[name] : undefined);
const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const escapeRegExp = (s: string) => s.replace(/[\\^$.*+?()[\]{}|]/g, '\\$&');

// The policy in the oracle's own words: a claim counts when it is an own string, number or boolean, compared as text;
// `*` stands for any run of characters (UTF-16 code units, as JavaScript strings compare).
const RULE_PATTERNS = POLICY_RULES.map((rule) =>
  Object.entries(rule).map(([name, p]) => [name, [p].flat().map((s) => new RegExp(`^${s.split('*').map(escapeRegExp).join('[\\s\\S]*')}$`))] as const),
);

function policyAdmits(claims: Record<string, unknown>): boolean {
  return RULE_PATTERNS.some((rule) =>
    rule.every(([name, patterns]) => {
      const v = own(claims, name);
      const text = typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined;
      return text !== undefined && patterns.some((p) => p.test(text));
    }),
  );
}

/** JSON text as RFC 8259 and RFC 7519 want it: UTF-8 (a BOM is noted), one object. */
function parseSegment(bytes: Buffer): { readonly value?: Record<string, unknown>; readonly bom: boolean } {
  const bom = bytes.length >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf;
  try {
    // fatal: invalid UTF-8 (overlong forms, surrogates, truncated sequences) is not text at all. The BOM is dropped.
    const value: unknown = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    return { value: isPlainObject(value) ? value : undefined, bom };
  } catch {
    return { bom };
  }
}

export interface Signer {
  readonly alg: SigningAlg;
  readonly key: SigningKey | null;
  /** The kid of the published key that signed with RS256, if one did. */
  readonly kid?: string;
}

export interface OracleContext {
  readonly issuer: string;
  readonly audience: string;
  readonly skew: number;
  readonly maxBytes: number;
}

/**
 * Which outcomes a token we signed may have at `nowSeconds`. Where the specs leave a verifier the choice (duplicate
 * member names, a BOM, typ "application/jwt", members a JWS does not use, an audience array with non-strings in it),
 * refusal is allowed as well.
 */
function judge(token: string, headerBytes: Buffer, payloadBytes: Buffer, signer: Signer, ctx: OracleContext, ambiguous: boolean): (nowSeconds: number) => ReadonlySet<Outcome> {
  const never = () => REFUSE;
  if (token.length > ctx.maxBytes) return never;
  if (signer.alg !== 'RS256' || signer.kid === undefined) return never;
  const h = parseSegment(headerBytes);
  const p = parseSegment(payloadBytes);
  if (!h.value || !p.value) return never;
  const header = h.value;
  const claims = p.value;
  let loose = ambiguous || h.bom || p.bom;
  if (own(header, 'alg') !== 'RS256') return never;
  if (own(header, 'kid') !== signer.kid) return never;
  // Extensions we do not implement (RFC 7515 §4.1.11, RFC 7797): refused whatever they say.
  if (Object.hasOwn(header, 'crit') || Object.hasOwn(header, 'b64')) return never;
  const typ = own(header, 'typ');
  if (typ !== undefined) {
    if (typeof typ !== 'string') return never;
    if (typ.toLowerCase() === 'application/jwt') loose = true;
    else if (typ.toLowerCase() !== 'jwt') return never;
  }
  if (['cty', 'zip', 'enc'].some((m) => Object.hasOwn(header, m))) loose = true;
  if (own(claims, 'iss') !== ctx.issuer) return never;
  const [exp, nbf, iat] = ['exp', 'nbf', 'iat'].map((n) => own(claims, n));
  if (!isTime(exp) || (nbf !== undefined && !isTime(nbf)) || (iat !== undefined && !isTime(iat))) return never;
  const aud = own(claims, 'aud');
  if (typeof aud === 'string') {
    if (aud !== ctx.audience) return never;
  } else if (Array.isArray(aud)) {
    if (!aud.includes(ctx.audience)) return never;
    // An audience array holding other than strings is not well-formed (RFC 7519 §4.1.3).
    if (!aud.every((a) => typeof a === 'string')) loose = true;
  } else {
    return never;
  }
  // Claim values nest at most 32 levels below the payload (the payload's own level counted, 33).
  if (nesting(claims) > 33) return never;
  const admitted: Outcome = policyAdmits(claims) ? 'accept' : 'deny';
  const valid: ReadonlySet<Outcome> = new Set<Outcome>(loose ? [admitted, 'refuse'] : [admitted]);
  return (now) => {
    // exp: now must be before it; nbf and iat: not after now; each with the skew (RFC 7519 §4.1.4-6).
    if (!(now < (exp as number) + ctx.skew)) return REFUSE;
    if ((nbf !== undefined && (nbf as number) > now + ctx.skew) || (iat !== undefined && (iat as number) > now + ctx.skew)) return REFUSE;
    return valid;
  };
}

/** How many levels of objects and arrays a value is: 0 for a string or number, 1 for [] or {}, 2 for [[]]. */
function nesting(v: unknown): number {
  if (typeof v !== 'object' || v === null) return 0;
  let below = 0;
  for (const child of Object.values(v)) below = Math.max(below, nesting(child));
  return 1 + below;
}

// ---------------------------------------------------------------- tokens: signed variants

export interface TokenContext extends OracleContext {
  readonly keys: FuzzKeys;
  /** The time the claims are written against, in seconds. */
  readonly nowSeconds: number;
  /** End to end: keep time claims clear of the boundaries (the real clock moves) and every character header-safe. */
  readonly wire: boolean;
  /** Where jku and x5u point: a server that must never be asked. */
  readonly trapUrl: string;
}

export interface SignedToken {
  readonly token: string;
  /** How it was made, for failure messages. */
  readonly notes: readonly string[];
  outcomes(nowSeconds: number): ReadonlySet<Outcome>;
}

/** A number written into the JSON text as is (1e400, 123456.0, -0): JSON.stringify cannot write these. */
const raw = (literal: string) => `\u0000RAW:${literal}`;
const serialize = (value: unknown, pretty: boolean) => JSON.stringify(value, null, pretty ? 2 : undefined).replace(/"\\u0000RAW:([^"]*)"/g, '$1');

/** Defines an own `__proto__` member (as JSON.parse would), which JSON.stringify then writes out. */
function setMember(o: Record<string, unknown>, name: string, value: unknown): void {
  Object.defineProperty(o, name, { value, enumerable: true, writable: true, configurable: true });
}

function nested(r: Rng, depth: number): unknown {
  let v: unknown = r.pick(['x', 1, null, {}]);
  for (let i = 0; i < depth; i++) v = r.chance(0.8) ? [v] : { a: v };
  return v;
}

const POLICY_NAMES = ['repository', 'repository_id', 'ref', 'repository_owner_id', 'workflow'] as const;

// Values a claim the policy reads might take: right, nearly right, or the wrong type.
const NEAR_MISSES: Record<(typeof POLICY_NAMES)[number], readonly unknown[]> = {
  repository: [
    'octo-org/octo-repo', 'octo-org/octo-repo ', ' octo-org/octo-repo', 'Octo-org/octo-repo', 'octo-org/octo-repo2', 'octo-org/octo-rep',
    'octo-org/octo-repo\u0000', 'octo-org/octo-repo\n', '\u043ecto-org/octo-repo', 'octo-org/octo-repo\u200b', 'octo-org\uff0focto-repo',
    'octo-org/octo-repo/..', 'octo-org/*', '*', '', 'evil/octo-repo', null, 0, true, ['octo-org/octo-repo'], { toString: 'octo-org/octo-repo' },
  ],
  repository_id: [
    '123456', 123456, raw('123456.0'), raw('1.23456e5'), raw('123456e0'), raw('0.123456e6'), raw('123456.0000000001'), '123456 ', '0123456',
    1234560, -123456, '123456\u0000', '12345', true, null, [123456], { '123456': 1 },
  ],
  ref: [
    'refs/heads/main', 'refs/tags/v', 'refs/tags/v1.2.3', 'refs/tags/V1', 'refs/tags/w1', 'refs/heads/main/x', 'refs/heads/mainx', 'refs/heads/main ',
    'refs/pull/1/merge', '/refs/tags/v1', 'refs/tags/v\ud83d\ude80', 'refs/tags/v\ud800', 'refs/heads/Main', 'refs/tags/*', ['refs/heads/main'], null, 1,
  ],
  repository_owner_id: ['42', 42, raw('42.0'), raw('4.2e1'), raw('420e-1'), '042', '42 ', 42.5, '4', 'forty-two', null, [42], true],
  workflow: ['1 🚀 Dev', '1 🚀', '1 🚀🚀', '1 ', '1 \ud83d', '1  🚀', '1 🚁 x', '2 🚀', '1 \ud83d\ude80\u0000', 'build', raw('1'), 1, ['1 🚀']],
};

/** Absolute or ill-typed values for exp, nbf and iat. */
const ODD_TIMES: readonly unknown[] = [
  raw('1e308'), raw('1e400'), raw('-1e400'), raw('-0'), 2 ** 53 + 1, 1e21, 5e-324, 0, -1, '9999999999', null, true, [9_999_999_999], {}, raw('99999999999999999999999'),
];

/** Offsets from now: exact ones around the skew boundaries in process, and only clear-cut ones end to end. */
const EXP_OFFSETS = { exact: [300, 3600, 3_153_600_000, -3600, -120, -61, -60.5, -60, -59.75, -59.7, -59, -1, 0, 0.5], wire: [300, 3600, 3_153_600_000, -3600, -300, -120] };
const NBF_OFFSETS = { exact: [-5, 0, 30, 59, 60, 60.25, 60.3, 61, 3600, -86_400], wire: [-5, 0, 10, 3600, -86_400, 600] };

function baseClaims(r: Rng, ctx: TokenContext): Record<string, unknown> {
  const now = Math.floor(ctx.nowSeconds);
  return {
    iss: ctx.issuer, aud: ctx.audience, sub: 'repo:octo-org/octo-repo:ref:refs/heads/main',
    repository: 'octo-org/octo-repo', repository_id: '123456', repository_owner: 'octo-org', repository_owner_id: '42',
    ref: 'refs/heads/main', sha: r.text('0123456789abcdef', 40), workflow: 'build',
    workflow_ref: 'octo-org/octo-repo/.github/workflows/build.yml@refs/heads/main', actor: 'octocat',
    run_id: String(r.int(1, 1e9)), run_attempt: '1', jti: r.text('0123456789abcdef', 32), iat: now - 5, nbf: now - 5, exp: now + 300,
  };
}

type Op = (r: Rng, header: Record<string, unknown>, claims: Record<string, unknown>, ctx: TokenContext) => string;

const nearMiss: Op = (r, _h, c) => {
  const name = r.pick(POLICY_NAMES);
  if (r.chance(0.1)) return (delete c[name], `delete ${name}`);
  const v = r.pick(NEAR_MISSES[name]);
  c[name] = v;
  return `${name}=${shown(v, 60)}`;
};

// The policy's claims drawn most often, so that tokens refused by the policy alone (403) are common too.
const CLAIM_OPS: readonly Op[] = [
  nearMiss, nearMiss, nearMiss, nearMiss,
  (_r, _h, c) => {
    // A workflow the second rule admits, so that rule's path is taken as well.
    c.workflow = '1 🚀 Dev';
    return 'workflow=1 🚀 Dev';
  },
  (r, _h, c) => {
    // The policy's claims moved under an own "__proto__" member: present, but not as claims.
    const inner: Record<string, unknown> = {};
    for (const name of POLICY_NAMES) if (r.chance(0.6) && Object.hasOwn(c, name)) (inner[name] = c[name], delete c[name]);
    setMember(c, '__proto__', inner);
    return `__proto__=${shown(inner, 80)}`;
  },
  (r, _h, c, ctx) => {
    const v = r.pick([ctx.issuer, `${ctx.issuer}/`, ctx.issuer.toUpperCase(), ` ${ctx.issuer}`, `${ctx.issuer}\u0000`, 'https://token.actions.githubusercontent.com', [ctx.issuer], null, 1, { iss: ctx.issuer }]);
    if (r.chance(0.1)) return (delete c.iss, 'delete iss');
    c.iss = v;
    return `iss=${shown(v, 60)}`;
  },
  (r, _h, c, ctx) => {
    const a = ctx.audience;
    const v = r.pick([a, [a], ['other', a], [a, 1], [a, null], [], 'other', [[a]], { 0: a }, null, `${a} `, a.toUpperCase(), a.slice(0, -1), [a.toLowerCase()]]);
    if (r.chance(0.1)) return (delete c.aud, 'delete aud');
    c.aud = v;
    return `aud=${shown(v, 60)}`;
  },
  (r, _h, c, ctx) => {
    const name = r.pick(['exp', 'nbf', 'iat']);
    if (r.chance(0.1)) return (delete c[name], `delete ${name}`);
    const offsets = (name === 'exp' ? EXP_OFFSETS : NBF_OFFSETS)[ctx.wire ? 'wire' : 'exact'];
    const v = r.chance(0.7) ? Math.floor(ctx.nowSeconds) + r.pick(offsets) : r.pick(ODD_TIMES);
    c[name] = v;
    return `${name}=${shown(v, 40)}`;
  },
  (r, _h, c) => {
    // Junk members: prototype names, unicode, deep nesting, big numbers, long strings.
    const name = r.pick(['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf', '🚀', '', 'x'.repeat(200), 'nested', 'environment']);
    const v = r.pick<() => unknown>([
      () => nested(r, r.int(10, 700)), () => 'y'.repeat(r.int(100, 1500)), () => raw('1e999'), () => raw('123456789012345678901234567890'), () => 1e308,
      () => ({ repository: 'octo-org/octo-repo', repository_id: '123456' }), () => '\ud800\udfff\ud83d', () => null, () => '1 🚀 Dev\u2028',
    ])();
    setMember(c, name, v);
    return `${name}=${shown(v, 60)}`;
  },
];

const HEADER_OPS: readonly Op[] = [
  (r, h) => {
    const v = r.pick(['RS256', 'rs256', 'RS256 ', 'Rs256', 'HS256', 'none', 'None', 'NONE', 'PS256', 'RS384', 'RS512', 'ES256', 'EdDSA', '', null, ['RS256'], {}, 256]);
    if (r.chance(0.1)) return (delete h.alg, 'delete alg');
    h.alg = v;
    return `alg=${shown(v, 40)}`;
  },
  (r, h, _c, ctx) => {
    const k = ctx.keys.k1.kid;
    const v = r.pick([ctx.keys.k2.kid, `${k} `, k.toUpperCase(), '', null, 1, [k], {}, '__proto__', 'constructor', 'toString', 'hasOwnProperty', '🚀', 'k'.repeat(1000), `${k}\u0000`, `unknown-${r.int(0, 9)}`]);
    if (r.chance(0.1)) return (delete h.kid, 'delete kid');
    setMember(h, 'kid', v);
    return `kid=${shown(v, 40)}`;
  },
  (r, h) => {
    const v = r.pick(['JWT', 'jwt', 'Jwt', 'application/jwt', 'APPLICATION/JWT', 'JWS', 'at+jwt', 'JOSE', '', null, 1, ['JWT'], 'JWT ']);
    if (r.chance(0.2)) return (delete h.typ, 'delete typ');
    h.typ = v;
    return `typ=${shown(v, 40)}`;
  },
  (r, h) => {
    const [name, v] = r.chance(0.5) ? ['crit', r.pick([[], ['exp'], ['b64'], 'b64', null, [1], {}])] : ['b64', r.pick([false, true, null, 'false', 0])];
    h[name as string] = v;
    return `${name}=${shown(v, 40)}`;
  },
  (r, h, _c, ctx) => {
    // Members that name or carry keys (never to be used), media types, and prototype names.
    const [name, v] = r.pick<[string, unknown]>([
      ['jku', `${ctx.trapUrl}/jwks`], ['x5u', `${ctx.trapUrl}/cert.pem`], ['jwk', ctx.keys.k2.jwk], ['x5c', ['MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA']],
      ['x5t', 'dGVzdA'], ['cty', 'JWT'], ['zip', 'DEF'], ['🚀', 1], ['__proto__', { alg: 'none', kid: 'x' }], ['constructor', {}], ['toString', 1], ['hasOwnProperty', 1],
    ]);
    setMember(h, name, v);
    return `header ${name}=${shown(v, 40)}`;
  },
];

/** How the third segment is made: the real key under its own kid or another's, other algorithms, or none. */
function signerOp(r: Rng, h: Record<string, unknown>, keys: FuzzKeys): { signer: Signer; note: string } {
  const { k1, k2 } = keys;
  switch (r.int(0, 8)) {
    case 0: return { signer: { alg: 'RS256', key: k2.privateKey, kid: k2.kid }, note: 'signed by fuzz-2' };
    case 1: return (h.kid = k2.kid), { signer: { alg: 'RS256', key: k2.privateKey, kid: k2.kid }, note: 'signed by fuzz-2 under its own kid' };
    case 2: return { signer: { alg: 'PS256', key: k1.privateKey }, note: 'PS256 signature' };
    case 3: return { signer: { alg: r.pick(['RS384', 'RS512'] as const), key: k1.privateKey }, note: 'RS384/RS512 signature' };
    case 4: return { signer: { alg: 'HS256', key: k1.publicPem }, note: 'HS256 keyed with the public PEM' };
    case 5: return (h.alg = 'HS256'), { signer: { alg: 'HS256', key: JSON.stringify(k1.jwk) }, note: 'alg HS256 keyed with the JWK JSON' };
    case 6: return (h.alg = r.pick(['HS256', 'RS256'])), { signer: { alg: 'HS256', key: k1.jwk.n }, note: 'HS256 keyed with n' };
    case 7: return (h.alg = r.pick(['none', 'RS256'])), { signer: { alg: 'none', key: null }, note: 'no signature' };
    default: return { signer: { alg: 'RS256', key: k1.privateKey, kid: k1.kid }, note: 'signed by fuzz-1' };
  }
}

/** Edits of the JSON text itself: duplicates, escapes, a BOM, trailing bytes, invalid UTF-8, control characters. */
function textOp(r: Rng, text: string, names: readonly string[]): { bytes: Buffer; note: string; ambiguous: boolean } {
  const name = names.length > 0 ? r.pick(names) : 'alg';
  const value = JSON.stringify(r.pick(['evil/x', 'none', 'fuzz-2', 0, null, 'refs/heads/dev', 1e10]));
  const at = (i: number, insert: Buffer) => Buffer.concat([Buffer.from(text.slice(0, i), 'utf8'), insert, Buffer.from(text.slice(i), 'utf8')]);
  switch (r.int(0, 8)) {
    case 0: return { bytes: Buffer.from(`{${JSON.stringify(name)}:${value},${text.slice(1)}`), note: `duplicate ${name} first`, ambiguous: true };
    case 1: return { bytes: Buffer.from(`${text.slice(0, -1)},${JSON.stringify(name)}:${value}}`), note: `duplicate ${name} last`, ambiguous: true };
    case 2: {
      const escaped = `"${[...name].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('')}":`;
      return { bytes: Buffer.from(text.replace(`"${name}":`, escaped)), note: `${name} written with \\u escapes`, ambiguous: false };
    }
    case 3: return { bytes: Buffer.from(`\ufeff${text}`), note: 'BOM', ambiguous: false };
    case 4: {
      const tail = r.pick([' ', '\n', ' x', ',', '}', '\u0000', '\t']);
      return { bytes: Buffer.from(text + tail), note: `trailing ${shown(tail)}`, ambiguous: false };
    }
    case 5: {
      const bad = r.pick([[0xff], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xe2, 0x82], [0xf4, 0x90, 0x80, 0x80]]);
      const quote = text.indexOf('"', r.int(0, text.length - 1));
      return { bytes: at(quote < 0 ? 1 : quote + 1, Buffer.from(bad)), note: `invalid UTF-8 ${Buffer.from(bad).toString('hex')}`, ambiguous: false };
    }
    case 6: {
      const quote = text.indexOf('":"');
      const c = r.pick(['\u0001', '\t', '\n', '\u001f']);
      return { bytes: at(quote < 0 ? 1 : quote + 3, Buffer.from(c)), note: `raw control ${shown(c)} in a string`, ambiguous: false };
    }
    case 7: return { bytes: Buffer.from(` \r\n${text}`), note: 'leading whitespace', ambiguous: false };
    default: {
      const v = r.pick(['[]', 'null', '"x"', '1', '', '{}', `[${text}]`]);
      return { bytes: Buffer.from(v), note: `replaced by ${shown(v, 40)}`, ambiguous: false };
    }
  }
}

const b64len = (bytes: number) => Math.floor(bytes / 3) * 4 + [0, 2, 3][bytes % 3]!;
const SIGNATURE_BYTES: Record<SigningAlg, number> = { RS256: 256, RS384: 256, RS512: 256, PS256: 256, HS256: 32, none: 0 };

/** Pads the claims (and if need be the header) so the token is exactly `target` characters long, when it can be. */
function padTo(target: number, header: Record<string, unknown>, claims: Record<string, unknown>, signer: Signer): boolean {
  const sig = b64len(SIGNATURE_BYTES[signer.alg]);
  for (const extra of [undefined, '', 'x', 'xx']) {
    const h = extra === undefined ? header : { ...header, pad: extra };
    const payloadChars = target - b64len(Buffer.byteLength(serialize(h, false))) - sig - 2;
    // base64url lengths are never 1 mod 4.
    if (payloadChars % 4 === 1) continue;
    const need = Math.floor(payloadChars / 4) * 3 + [0, 0, 1, 2][payloadChars % 4]!;
    const n = need - Buffer.byteLength(serialize({ ...claims, pad: '' }, false));
    if (n < 0) return false;
    if (extra !== undefined) header.pad = extra;
    claims.pad = 'p'.repeat(n);
    return true;
  }
  return false;
}

function encodeToken(headerBytes: Buffer, payloadBytes: Buffer, signer: Signer): string {
  const h = headerBytes.toString('utf8');
  const p = payloadBytes.toString('utf8');
  const input = `${headerBytes.toString('base64url')}.${payloadBytes.toString('base64url')}`;
  // PSS with an empty salt: deterministic (helpers' PS256 salts at random), so a seed replays the same bytes.
  if (signer.alg === 'PS256') {
    const signature = sign('sha256', Buffer.from(input), { key: signer.key as KeyObject, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 0 });
    return `${input}.${signature.toString('base64url')}`;
  }
  // Through signToken when the bytes are text, so the gateway's log scan knows this token; by hand otherwise.
  if (Buffer.from(h, 'utf8').equals(headerBytes) && Buffer.from(p, 'utf8').equals(payloadBytes)) return signToken(h, p, signer.key, { alg: signer.alg });
  return `${input}.${signatureFor(signer.alg, input, signer.key).toString('base64url')}`;
}

/** A token as GitHub issues it, padded to exactly `length` characters if given (undefined if no padding fits). */
export function issuedToken(r: Rng, ctx: TokenContext, length?: number): SignedToken | undefined {
  const header: Record<string, unknown> = { typ: 'JWT', alg: 'RS256', kid: ctx.keys.k1.kid };
  const claims = baseClaims(r, ctx);
  const signer: Signer = { alg: 'RS256', key: ctx.keys.k1.privateKey, kid: ctx.keys.k1.kid };
  if (length !== undefined && !padTo(length, header, claims, signer)) return undefined;
  const headerBytes = Buffer.from(serialize(header, false));
  const payloadBytes = Buffer.from(serialize(claims, false));
  const token = encodeToken(headerBytes, payloadBytes, signer);
  return { token, notes: [length === undefined ? 'as issued' : `as issued, padded to ${length} chars`], outcomes: judge(token, headerBytes, payloadBytes, signer, ctx, false) };
}

/** One token signed with a real or a wrong key after 0 to 3 edits of its header, claims, signer or JSON text. */
export function signedVariant(r: Rng, ctx: TokenContext): SignedToken {
  const notes: string[] = [];
  const header: Record<string, unknown> = { typ: 'JWT', alg: 'RS256', kid: ctx.keys.k1.kid };
  const claims = baseClaims(r, ctx);
  let signer: Signer = { alg: 'RS256', key: ctx.keys.k1.privateKey, kid: ctx.keys.k1.kid };
  const textEdits: ('header' | 'payload')[] = [];
  const edits = r.chance(0.3) ? 0 : r.int(1, 3);
  for (let i = 0; i < edits; i++) {
    const x = r.next();
    if (x < 0.55) notes.push(r.pick(CLAIM_OPS)(r, header, claims, ctx));
    else if (x < 0.8) notes.push(r.pick(HEADER_OPS)(r, header, claims, ctx));
    else if (x < 0.9) {
      const s = signerOp(r, header, ctx.keys);
      signer = s.signer;
      notes.push(s.note);
    } else textEdits.push(r.chance(0.7) ? 'payload' : 'header');
  }
  const size = r.next();
  if (size < 0.06) {
    const target = r.pick([ctx.maxBytes - 1, ctx.maxBytes, ctx.maxBytes + 1, r.int(ctx.maxBytes - 40, ctx.maxBytes + 40)]);
    if (padTo(target, header, claims, signer)) notes.push(`padded to ${target} chars`);
  } else if (size < 0.08) {
    claims.pad = 'p'.repeat(ctx.maxBytes);
    notes.push('padded past maxBytes');
  }
  const pretty = r.chance(0.05);
  if (pretty) notes.push('pretty JSON');
  let headerBytes: Buffer = Buffer.from(serialize(header, pretty));
  let payloadBytes: Buffer = Buffer.from(serialize(claims, pretty));
  let ambiguous = false;
  for (const part of textEdits) {
    const edit = textOp(r, part === 'header' ? headerBytes.toString('utf8') : payloadBytes.toString('utf8'), Object.keys(part === 'header' ? header : claims));
    if (part === 'header') headerBytes = edit.bytes;
    else payloadBytes = edit.bytes;
    ambiguous ||= edit.ambiguous;
    notes.push(`${part} text: ${edit.note}`);
  }
  const token = encodeToken(headerBytes, payloadBytes, signer);
  if (notes.length === 0) notes.push('as issued');
  return { token, notes, outcomes: judge(token, headerBytes, payloadBytes, signer, ctx, ambiguous) };
}

// ---------------------------------------------------------------- tokens: string mutations, junk, the case stream

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const PRINTABLE = Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)).join('');
const LATIN1 = Array.from({ length: 224 }, (_, i) => String.fromCharCode(32 + i)).join('');

/** Characters a mutation may insert; end to end only those a header value can carry (no controls, nothing past Latin-1). */
const ODD_CHARS = { exact: ['=', '+', '/', ' ', '\t', '.', '%', '\u0000', '\n', 'é', '\u00a0', '\u2028', '\ud800', '🚀', '\uff21'], wire: ['=', '+', '/', ' ', '.', '%', 'é', '\u00ff', '"', ','] };

/** Makes a string sendable as a header value: Node refuses controls and anything past Latin-1; NBSP would be trimmed. */
export const headerSafe = (s: string) => s.replace(/[^\t\x20-\x7e\x80-\x9f\xa1-\xff]/g, '?');

type Mutation = (r: Rng, token: string, wire: boolean, other: () => string) => [string, string];

function onSegment(token: string, r: Rng, edit: (seg: string) => string): string {
  const segs = token.split('.');
  const k = r.int(0, segs.length - 1);
  segs[k] = edit(segs[k]!);
  return segs.join('.');
}

const MUTATIONS: readonly Mutation[] = [
  (r, t) => {
    const segs = t.split('.');
    const k = r.int(0, segs.length - 1);
    const bytes = Buffer.from(segs[k]!, 'base64url');
    if (bytes.length === 0) return [t + r.pick([...B64URL]), 'appended a character'];
    const i = r.int(0, bytes.length - 1);
    const bit = r.int(0, 7);
    bytes[i]! ^= 1 << bit;
    segs[k] = bytes.toString('base64url');
    return [segs.join('.'), `flipped bit ${bit} of byte ${i} in segment ${k}`];
  },
  (r, t) => {
    if (t.length === 0) return ['A', 'empty became A'];
    const i = r.int(0, t.length - 1);
    const c = r.pick([...B64URL].filter((x) => x !== t[i]));
    return [t.slice(0, i) + c + t.slice(i + 1), `character ${i} became ${c}`];
  },
  (r, t, wire) => {
    const i = r.int(0, t.length);
    const c = r.pick(ODD_CHARS[wire ? 'wire' : 'exact']);
    return [t.slice(0, i) + c + t.slice(i), `inserted ${shown(c)} at ${i}`];
  },
  (r, t) => {
    const i = r.int(0, Math.max(0, t.length - 1));
    return [t.slice(0, i) + t.slice(i + 1), `deleted character ${i}`];
  },
  (r, t) => {
    // Same bytes, another spelling: the unused low bits of the last character set (RFC 4648 §3.5).
    const segs = t.split('.');
    const k = r.int(0, segs.length - 1);
    const seg = segs[k]!;
    const mask = seg.length % 4 === 2 ? 15 : seg.length % 4 === 3 ? 3 : 0;
    const v = B64URL.indexOf(seg.at(-1) ?? '');
    if (mask === 0 || v < 0) return [`${t}=`, 'appended ='];
    segs[k] = seg.slice(0, -1) + B64URL[(v & ~mask) | ((v & mask) ^ r.int(1, mask))];
    return [segs.join('.'), `non-canonical last character in segment ${k}`];
  },
  (r, t) => {
    const pad = r.pick(['=', '==', '===']);
    return [onSegment(t, r, (s) => s + pad), `segment padded with ${pad}`];
  },
  (r, t) => [onSegment(t, r, (s) => Buffer.from(s, 'base64url').toString('base64')), 'a segment in standard base64'],
  (r, t) => {
    const letters = [...t].map((c, i) => (/[a-zA-Z]/.test(c) ? i : -1)).filter((i) => i >= 0);
    if (letters.length === 0) return [`${t}a`, 'appended a'];
    const i = r.pick(letters);
    const c = t[i]!;
    return [t.slice(0, i) + (c === c.toUpperCase() ? c.toLowerCase() : c.toUpperCase()) + t.slice(i + 1), `case of character ${i} swapped`];
  },
  (r, t) => {
    const segs = t.split('.');
    const order = r.pick([[1, 0, 2], [0, 2, 1], [2, 1, 0], [1, 2, 0], [2, 0, 1]]);
    return [order.map((i) => segs[i] ?? '').join('.'), `segments reordered ${order.join('')}`];
  },
  (r, t) => {
    const segs = t.split('.');
    const k = r.int(0, segs.length - 1);
    segs.splice(k, 0, segs[k]!);
    return [segs.join('.'), `segment ${k} duplicated`];
  },
  (r, t) => {
    const segs = t.split('.');
    const k = r.int(0, segs.length - 1);
    segs.splice(k, 1);
    return [segs.join('.'), `segment ${k} dropped`];
  },
  (r, t) => {
    const n = r.int(0, t.length);
    return [t.slice(0, n), `truncated to ${n}`];
  },
  (r, t) => {
    const segs = t.split('.');
    segs[r.int(0, segs.length - 1)] = '';
    return [segs.join('.'), 'a segment emptied'];
  },
  (r, t) => {
    const v = r.pick([`.${t}`, `${t}.`, t.replace('.', '..'), `${t}.${t.split('.')[2] ?? ''}`]);
    return [v, 'extra dots'];
  },
  (r, t, _wire, other) => {
    const k = r.int(0, 2);
    const segs = t.split('.');
    segs[k] = other().split('.')[k] ?? '';
    return [segs.join('.'), `segment ${k} from another token`];
  },
  (r, t) => {
    const segs = t.split('.');
    const sig = Buffer.from(segs[2] ?? '', 'base64url');
    const how = r.int(0, 3);
    const edited = [Buffer.concat([Buffer.from([0]), sig]), sig.subarray(1), r.bytes(sig.length), Buffer.concat([sig, Buffer.from([0])])][how]!;
    segs[2] = edited.toString('base64url');
    return [segs.join('.'), ['signature with a leading zero byte', 'signature without its first byte', 'random signature of the same length', 'signature with a trailing zero byte'][how]!];
  },
  (r, t, wire) => {
    if (wire) return [`${t}${t}`, 'token twice'];
    const v = r.pick([` ${t}`, `${t}\n`, `Bearer ${t}`, `${t}\u0000`, `\ufeff${t}`]);
    return [v, `wrapped as ${shown(v.replace(t, 'T'))}`];
  },
];

/** Random text of boundary and random lengths in several alphabets, some of it shaped like a token. */
function junk(r: Rng, ctx: TokenContext): [string, string] {
  const m = ctx.maxBytes;
  const n = r.pick([0, 1, 2, 3, 4, r.int(5, 100), r.int(100, 2000), m - 1, m, m + 1, r.int(m + 2, 3 * m)]);
  const style = r.int(0, 6);
  switch (style) {
    case 0: return [r.text(B64URL, n), `${n} base64url characters`];
    case 1: {
      const s = [...r.text(B64URL, n)];
      for (let i = 0; i < 2 && s.length > 0; i++) s[r.int(0, s.length - 1)] = '.';
      return [s.join(''), `${n} base64url characters with dots`];
    }
    case 2: return [r.text(PRINTABLE, n), `${n} printable ASCII characters`];
    case 3: return [r.text(LATIN1, n), `${n} Latin-1 characters`];
    case 4:
      if (ctx.wire) return ['.'.repeat(n), `${n} dots`];
      return [Array.from({ length: n }, () => String.fromCharCode(r.int(0, 0xffff))).join(''), `${n} random UTF-16 code units`];
    case 5: {
      // JSON-shaped segments with a random signature of the right length.
      const h = Buffer.from(JSON.stringify({ alg: 'RS256', kid: r.pick([ctx.keys.k1.kid, ctx.keys.k2.kid, 'x']), typ: 'JWT' })).toString('base64url');
      const p = Buffer.from(JSON.stringify({ iss: ctx.issuer, aud: ctx.audience, exp: Math.floor(ctx.nowSeconds) + 300, repository: 'octo-org/octo-repo', repository_id: '123456', ref: 'refs/heads/main' })).toString('base64url');
      return [`${h}.${p}.${r.bytes(256).toString('base64url')}`, 'well-formed claims, random signature'];
    }
    default: return [r.text('.', r.int(0, 5)) + r.text(B64URL, n) + r.text('.', r.int(0, 5)), `${n} base64url characters between dots`];
  }
}

export interface TokenCase {
  readonly token: string;
  readonly kind: 'issued' | 'mutated' | 'junk' | 'spliced';
  readonly notes: readonly string[];
}

export interface TokenFuzzer {
  /** Every token this fuzzer signed, by its exact text. */
  readonly signed: ReadonlyMap<string, SignedToken>;
  readonly pool: readonly SignedToken[];
  /** Case `index` of the stream. */
  make(index: number): TokenCase;
  /** What may become of exactly this string at `nowSeconds`: an unknown string is only ever refused. */
  outcomes(token: string, nowSeconds: number): ReadonlySet<Outcome>;
}

/** A pool of `poolSize` signed variants, and cases that send them as issued, mutated, spliced, or junk instead. */
export function createTokenFuzzer(settings: FuzzSettings, stream: string, ctx: TokenContext, poolSize: number): TokenFuzzer {
  const signed = new Map<string, SignedToken>();
  const pool = Array.from({ length: poolSize }, (_, j) => signedVariant(caseRandom(settings.seed, `${stream}/pool`, j), ctx));
  for (const t of pool) signed.set(t.token, t);
  const fix = (s: string) => (ctx.wire ? headerSafe(s) : s);
  return {
    signed,
    pool,
    make(index) {
      const r = caseRandom(settings.seed, stream, index);
      const j = r.int(0, pool.length - 1);
      const base = pool[j]!;
      const from = `pool[${j}] (${base.notes.join('; ')})`;
      const x = r.next();
      if (x < 0.25) return { token: base.token, kind: 'issued', notes: [from] };
      if (x < 0.7) {
        let token = base.token;
        const notes = [from];
        for (let k = r.int(1, 3); k > 0; k--) {
          const [next, note] = r.pick(MUTATIONS)(r, token, ctx.wire, () => r.pick(pool).token);
          token = fix(next);
          notes.push(note);
        }
        return { token, kind: 'mutated', notes };
      }
      if (x < 0.85) {
        const [token, note] = junk(r, ctx);
        return { token: fix(token), kind: 'junk', notes: [note] };
      }
      const parts = [0, 1, 2].map(() => r.int(0, pool.length - 1));
      const token = parts.map((p, k) => pool[p]!.token.split('.')[k] ?? '').join('.');
      return { token, kind: 'spliced', notes: [`segments of pool[${parts.join('], pool[')}]`] };
    },
    outcomes(token, nowSeconds) {
      return signed.get(token)?.outcomes(nowSeconds) ?? REFUSE;
    },
  };
}

/**
 * The token a gateway reads from a header value, in the README's words: raw or after "Bearer " (any case), with the
 * optional whitespace around a header value (spaces and tabs, RFC 9110 §5.5) not part of it.
 */
export function tokenInHeader(value: string): string {
  const ows = (s: string) => s.replace(/^[ \t]+|[ \t]+$/g, '');
  const v = ows(value);
  const scheme = /^bearer(?: +|$)/i.exec(v);
  return scheme ? ows(v.slice(scheme[0].length)) : v;
}

/** The status each outcome may be answered with end to end: 431 when a huge header never reaches the handler. */
export function statusesFor(outcomes: ReadonlySet<Outcome>): number[] {
  return [...outcomes].flatMap((o) => (o === 'accept' ? [200] : o === 'deny' ? [403] : [400, 401, 431]));
}

// ---------------------------------------------------------------- request heads

export interface HeadContext {
  /** Tokens the gateway admits to every route and tunnel of the fuzz config. */
  readonly validTokens: readonly string[];
  readonly tokenHeader: string;
  readonly upstreamPort: number;
  readonly gatewayPort: number;
  readonly adminPort: number;
}

export interface HeadCase {
  /** Everything written to the socket: one or more request heads with their bodies. */
  readonly bytes: Buffer;
  /** Whether a valid token sits where the gateway reads one for this kind of request: only then may the upstream hear of it. */
  readonly admissible: boolean;
  /** Whether a second request inside it may reach the upstream too: only through a tunnel opened by a valid CONNECT. */
  readonly innerAdmissible: boolean;
  /** The x-fuzz-case value it carries; an inner (pipelined or smuggled) request carries `${marker}-inner`. */
  readonly marker: string;
  readonly notes: readonly string[];
  /** End the write side after sending. */
  readonly halfClose: boolean;
  /** Write in two pieces, split here. */
  readonly splitAt: number | undefined;
}

/** UTF-8 bytes as a Latin-1 string, so heads are built as byte strings. */
const utf8 = (s: string) => Buffer.from(s, 'utf8').toString('latin1');

const SEGMENTS = [
  'x', 'a.txt', '..', '.', '%2e%2e', '%2E', '%2f', '%5c', '%00', '%', '%zz', '%41', '%25', '%ff', '%e2%82%ac', utf8('é'), '\u0001', ' ', '\t', '\\',
  ';x', '~user', '', '\u007f', utf8('\u2028'), '%0d%0a', '\r\n', '#frag', '?q', '*', '@', ':', utf8('🚀'), '\u00ff',
];

function target(r: Rng, ctx: HeadContext, connect: boolean): string {
  if (connect) {
    return r.pick([
      `127.0.0.1:${ctx.upstreamPort}`, `127.0.0.1:${ctx.upstreamPort}`, `127.1:${ctx.upstreamPort}`, `localhost:${ctx.upstreamPort}`, `[::1]:${ctx.upstreamPort}`,
      `127.0.0.1:${ctx.adminPort}`, `127.0.0.1:${ctx.gatewayPort}`, 'evil.example:443', '169.254.169.254:80', '127.0.0.1', ':80', '127.0.0.1:0',
      '127.0.0.1:99999', `http://127.0.0.1:${ctx.upstreamPort}/`, `2130706433:${ctx.upstreamPort}`, `127.0.0.1.:${ctx.upstreamPort}`, '/', r.text(LATIN1, r.int(0, 40)),
    ]);
  }
  const prefix = r.chance(0.5)
    ? '/api/'
    : r.pick([
        '/api', '/API/', '/apix/', '/', '', '//api/', 'api/', '*', '/api/%2e%2e/', '/%61pi/', '/api%2f', '/api;x/', '/api\\', '/api/./', '/api/../',
        `http://127.0.0.1:${ctx.upstreamPort}/`, `http://127.0.0.1:${ctx.upstreamPort}`, 'http://evil.example/', `http://127.0.0.1:${ctx.adminPort}/healthz`,
        `http://[::1]:${ctx.upstreamPort}/`, 'https://x/', `HTTP://127.0.0.1:${ctx.upstreamPort}/`, `http://user:pw@127.0.0.1:${ctx.upstreamPort}/`,
      ]);
  const segments = Array.from({ length: r.int(0, 5) }, () => (r.chance(0.04) ? 'a'.repeat(r.int(100, 9000)) : r.pick(SEGMENTS)));
  const query = r.chance(0.25) ? `?${r.pick(['a=b', 'a=%zz', '?', '&&', `x=${'q'.repeat(r.int(1, 5000))}`, 'a=\u0000', '#x', `token=${r.pick(ctx.validTokens)}`])}` : '';
  return prefix + segments.join('/') + query;
}

const CHUNKED_BODIES = [
  '5\r\nhello\r\n0\r\n\r\n', 'zz\r\nhello\r\n0\r\n\r\n', 'ffffffffffffffffff\r\nx\r\n', '5\r\nhello0\r\n\r\n', '5;ext=1\r\nhello\r\n0\r\n\r\n',
  '5\nhello\n0\n\n', '-5\r\nhello\r\n', '0\r\nTrailer: x\r\n\r\n', '5\r\nhelloXX\r\n0\r\n\r\n', '0\r\n\r\n', '5 \r\nhello\r\n0\r\n\r\n',
  '0x5\r\nhello\r\n0\r\n\r\n', '5;a="\r\n"\r\nhello\r\n0\r\n\r\n', '', '1\r\n',
];

/** A complete request with no token that must never reach the upstream, to be hidden in a body or pipelined. */
const innerRequest = (marker: string) => `GET /api/inner HTTP/1.1\r\nHost: gw\r\nx-fuzz-case: ${marker}-inner\r\n\r\n`;

function framing(r: Rng, marker: string): { lines: string[]; body: string; note: string } {
  const body = r.pick(['hello', '', 'x'.repeat(r.int(1, 3000)), innerRequest(marker)]);
  const n = body.length;
  const chunked = r.chance(0.8) ? r.pick(CHUNKED_BODIES) : `${n.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
  switch (r.int(0, 11)) {
    case 0: return { lines: [`Content-Length: ${n}`], body, note: `content-length ${n}` };
    case 1: return { lines: [`Content-Length: ${n + r.int(1, 100)}`], body, note: 'content-length longer than the body' };
    case 2: return { lines: [`Content-Length: ${Math.max(0, n - r.int(1, 5))}`], body, note: 'content-length shorter than the body' };
    case 3: return { lines: [`Content-Length: ${n}`, `Content-Length: ${r.chance(0.5) ? n : n + 1}`], body, note: 'content-length twice' };
    case 4: {
      const v = r.pick(['+5', '-1', ' 5', '5 ', '5,5', '0x5', '1e2', '99999999999999999999', '', 'abc', '5\u0000', utf8('٥'), '05', '5\t']);
      return { lines: [`Content-Length: ${v}`], body: 'hello', note: `content-length ${shown(v)}` };
    }
    case 5:
    case 6: return { lines: ['Transfer-Encoding: chunked'], body: chunked, note: `chunked ${shown(chunked, 40)}` };
    case 7: {
      const v = r.pick(['chunked, chunked', 'xchunked', 'Chunked', 'chunked ', ' chunked', 'identity', 'gzip, chunked', 'chunked;q=1', 'chunked\u000b', 'chunkedx', 'gzip', '', 'chunked, identity']);
      return { lines: [`Transfer-Encoding: ${v}`], body: chunked, note: `transfer-encoding ${shown(v)}` };
    }
    case 8: return { lines: ['Transfer-Encoding: chunked', `Transfer-Encoding: ${r.pick(['chunked', 'identity', ''])}`], body: chunked, note: 'transfer-encoding twice' };
    case 9: {
      const lines = r.chance(0.5) ? [`Content-Length: ${chunked.length}`, 'Transfer-Encoding: chunked'] : ['Transfer-Encoding: chunked', `Content-Length: ${r.int(0, 10)}`];
      return { lines, body: `0\r\n\r\n${innerRequest(marker)}`, note: 'content-length and transfer-encoding, smuggling' };
    }
    case 10: return { lines: [`Content-Length: ${n}`, `Transfer-Encoding: ${r.pick(['chunked', 'xchunked'])}`], body: chunked, note: 'content-length and transfer-encoding' };
    default: return { lines: [], body: '', note: 'no body' };
  }
}

const HEADER_NAMES = [
  'x-a', 'X-OIDC-Repository', 'x-oidc-ref', 'x-forwarded-for', 'x-forwarded-host', 'forwarded', 'x-request-id', 'te', 'trailer', 'keep-alive', 'cookie',
  'transfer-encoding ', 'content-length ', 'ho st', 'x\u0000y', '\u00e9', '', 'a'.repeat(300), 'x-\u007f', '(x)', 'x-a\t', 'upgrade', 'expect', 'proxy-connection',
];

function headerValue(r: Rng): string {
  return r.pick<() => string>([
    () => 'v', () => '', () => ' ', () => '\u0000', () => 'a\u007fb', () => '\u00e9', () => utf8('🚀'), () => 'a'.repeat(r.int(1000, 20_000)), () => '\u0001\u0002',
    () => 'trailing ', () => ' leading', () => 'x\ry', () => 'a\r\n folded', () => '100-continue', () => 'websocket', () => r.text(LATIN1, r.int(0, 200)),
  ])();
}

// What a head may get wrong. Each case is sane but for 0 to 3 of these (the token is always drawn), so a case with one
// flaw gets past the parser to routing, framing and the token, rather than failing on the first of many.
const FLAWS = [
  'target', 'target', 'target', 'framing', 'framing', 'framing', 'headers', 'headers', 'method', 'version', 'line', 'host', 'connection',
  'expect', 'upgrade', 'many', 'eol', 'pipelined', 'proxy-auth', 'connect',
] as const;

/** One raw head (sometimes with a second request behind it), and what the upstream may see of it. */
export function makeHead(r: Rng, ctx: HeadContext, marker: string): HeadCase {
  const flaws = new Set<(typeof FLAWS)[number]>();
  for (let k = r.pick([0, 1, 1, 1, 2, 2, 3]); flaws.size < k; ) flaws.add(r.pick(FLAWS));
  const notes: string[] = [];
  const connect = flaws.has('connect');
  const method = connect
    ? 'CONNECT'
    : !flaws.has('method')
      ? r.pick(['GET', 'GET', 'GET', 'POST'])
      : r.pick(['PUT', 'DELETE', 'HEAD', 'OPTIONS', 'PATCH', 'TRACE', 'get', 'G ET', '', 'PRI', 'M-SEARCH', 'PROPFIND', 'A'.repeat(r.int(20, 20_000)), 'G\u00c9T', r.text('ABCDEFGHIJKLMNOPQRSTUVWXYZ', r.int(1, 12))]);
  const tgt = flaws.has('target') ? target(r, ctx, connect) : connect ? `127.0.0.1:${ctx.upstreamPort}` : `/api/${r.pick(['x', 'a/b.txt', 'x?y=1', ''])}`;
  const proxyForm = connect || /^http:\/\//.test(tgt);
  const version = !flaws.has('version') ? 'HTTP/1.1' : r.pick(['HTTP/1.0', 'HTTP/2.0', 'HTTP/1.2', 'http/1.1', 'HTTP/1', 'HTTP/1.1\u0000', 'HTTP/0.9', 'HTTP/9.9', 'HTTP/1.10']);
  let line = `${method} ${tgt} ${version}`;
  if (flaws.has('line')) line = r.pick([`${method}  ${tgt} ${version}`, `${method} ${tgt}`, `${method}\t${tgt} ${version}`, ` ${line}`, `${line} extra`, `\r\n${line}`, `${line}\u0000`]);
  notes.push(shown(line, 120));

  const lines: string[] = [];
  const hosts = flaws.has('host') ? r.pick([0, 2, 2, 1]) : 1;
  for (let i = 0; i < hosts; i++) lines.push(`Host: ${!flaws.has('host') || r.chance(0.5) ? 'gw' : r.pick(['evil.example', '', 'gw:1', utf8('gé'), 'a b', 'gw\u0000'])}`);
  if (flaws.has('host')) notes.push(`${hosts} Host headers`);

  // The token: none, junk, valid (in the header the gateway reads, or in one it must not read), or valid twice.
  let admissible = false;
  const valid = r.pick(ctx.validTokens);
  const name = r.pick([ctx.tokenHeader, ctx.tokenHeader.toUpperCase(), 'Gateway-Authorization']);
  const t = r.next();
  if (t < 0.25) {
    const junkValue = r.pick(['Bearer', 'Bearer ', 'Bearer x.y.z', r.text(B64URL, r.int(1, 400)), 'Basic dXNlcjpwYXNz', 'A'.repeat(17_000), valid.slice(0, -2), `${valid}x`, `Bearer ${valid}\u0000`, `Bearer ${valid}, Bearer ${valid}`]);
    lines.push(`${name}: ${junkValue}`);
    notes.push('junk token');
  } else if (t < 0.6) {
    lines.push(`${name}: ${r.pick(['Bearer ', 'bearer ', '', 'BEARER  '])}${valid}`);
    admissible = true;
    notes.push('valid token');
  } else if (t < 0.63) {
    lines.push(`${name}: ${valid}`, `${name}: ${valid}`);
    admissible = true;
    notes.push('valid token twice');
  } else if (t < 0.68) {
    lines.push(`Authorization: Bearer ${valid}`);
    notes.push('valid token in Authorization, which the gateway does not read');
  }
  if (flaws.has('proxy-auth') || (connect && r.chance(0.5))) {
    const credential = r.pick([`Bearer ${valid}`, `Basic ${Buffer.from(`x:${valid}`).toString('base64')}`, 'Basic !!!', `Basic ${Buffer.from('nocolon').toString('base64')}`, 'Bearer junk', `Basic ${Buffer.from(`x:${valid}`).toString('base64url')}`]);
    lines.push(`Proxy-Authorization: ${credential}`);
    // Proxy-Authorization counts for CONNECT and absolute-form requests only. Node's base64 decoder also reads the
    // base64url alphabet, so a Basic credential written that way carries the token too (harmless: it is the same token).
    const basic = credential.startsWith('Basic ') ? Buffer.from(credential.slice(6), 'base64').toString('latin1') : '';
    if (credential.includes(valid) || basic.includes(valid)) admissible ||= proxyForm;
    notes.push(`proxy-authorization ${credential.slice(0, 12)}`);
  }

  const sane = method === 'POST' ? (() => {
    const body = r.pick(['hello', '{"a":1}', 'x'.repeat(r.int(1, 2000))]);
    return { lines: [`Content-Length: ${body.length}`], body, note: `content-length ${body.length}` };
  })() : { lines: [], body: '', note: 'no body' };
  const frame = flaws.has('framing') ? framing(r, marker) : sane;
  lines.push(...frame.lines);
  notes.push(frame.note);
  if (flaws.has('connection')) {
    const v = r.pick(['close', 'keep-alive', 'content-length', 'transfer-encoding', 'host', 'upgrade', ctx.tokenHeader, 'close, te', 'Keep-Alive, Upgrade', 'x-a']);
    lines.push(`Connection: ${v}`);
    notes.push(`connection ${v}`);
  }
  if (flaws.has('expect')) {
    const v = r.pick(['100-continue', '100-Continue', '200-ok', '']);
    lines.push(`Expect: ${v}`);
    notes.push(`expect ${shown(v)}`);
  }
  if (flaws.has('upgrade')) (lines.push('Upgrade: websocket', 'Connection: Upgrade'), notes.push('upgrade websocket'));
  if (flaws.has('headers')) {
    for (let i = r.int(1, 4); i > 0; i--) {
      const l = r.chance(0.2) ? r.pick([' folded-continuation', ':novalue', 'nocolon', '\t\t', 'x-a : spaced', 'x-a:\tv', '']) : `${r.pick(HEADER_NAMES)}: ${headerValue(r)}`;
      lines.push(l);
      notes.push(`header ${shown(l, 60)}`);
    }
  }
  if (flaws.has('many')) {
    const many = r.int(50, 2500);
    if (r.chance(0.5)) {
      for (let i = 0; i < many; i++) lines.push(`x-h${i}: v`);
      notes.push(`${many} more headers`);
    } else {
      // Short ones first, past the 2,000 headers Node hands to JavaScript: what follows (token, framing) is not seen there.
      const short = r.int(1_990, 4_000);
      lines.unshift(...Array.from({ length: short }, () => 'h:'));
      notes.push(`${short} short headers first`);
    }
  }
  // First, so that whatever part of the bytes the upstream may receive as a request carries it.
  lines.unshift(`x-fuzz-case: ${marker}`);

  const eol = flaws.has('eol') ? r.pick(['\n', 'mixed', '\r']) : '\r\n';
  if (eol !== '\r\n') notes.push(`line ends ${JSON.stringify(eol)}`);
  const end = () => (eol === 'mixed' ? r.pick(['\r\n', '\n']) : eol);
  let head = line + end() + lines.map((l) => l + end()).join('');
  // Rarely: each of these waits for the gateway's head timeout.
  if (r.chance(0.985)) head += end();
  else notes.push('head never ends');
  let text = head + frame.body;
  // A second request behind the first: pipelined, or what a desynchronised parser would take for one.
  if (flaws.has('pipelined')) (text += innerRequest(marker), notes.push('pipelined request without a token'));
  const bytes = Buffer.from(text, 'latin1');
  const halfClose = r.chance(0.1);
  const splitAt = r.chance(0.1) ? r.int(1, Math.max(1, bytes.length - 1)) : undefined;
  if (halfClose) notes.push('half-closed after sending');
  if (splitAt !== undefined) notes.push(`sent in two writes, split at ${splitAt}`);
  return { bytes, admissible, innerAdmissible: connect && admissible, marker, notes, halfClose, splitAt };
}

// ---------------------------------------------------------------- config

const GITHUB = 'https://token.actions.githubusercontent.com';

/** A valid config that uses every section, both route modes, tunnels and three issuers (so every rule pins iss). */
export function baseConfig(): Record<string, unknown> {
  return {
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    issuers: [
      { issuer: GITHUB, audience: ['api://ActionsOIDCGateway', 'other'] },
      { issuer: 'http://127.0.0.1:9999', audience: 'x', jwksUri: 'http://127.0.0.1:9999/jwks' },
      { issuer: 'https://ghes.example.com/_services/token', audience: 'y', jwksFile: '/etc/oidc-gateway/keys.json' },
    ],
    token: { header: 'gateway-authorization', maxBytes: 8192, clockSkewSeconds: 60, cacheSize: 1000, maxAgeSeconds: 3600 },
    keys: { fetchTimeoutMs: 5000, cooldownMs: 30_000, staleIfErrorMs: 86_400_000 },
    timeouts: { upstreamConnectMs: 5000, upstreamHeadMs: 30_000, idleMs: 300_000, clientHeadersMs: 10_000, drainMs: 25_000 },
    trustedProxies: ['10.0.0.0/8', '::1', '192.168.1.1/32'],
    routes: [
      {
        path: '/artifacts/', upstream: 'http://127.0.0.1:8081/store/', methods: ['GET', 'HEAD'], forwardClaims: ['repository', 'run_id'],
        allow: [{ iss: GITHUB, repository: 'octo-org/octo-repo', repository_id: '123456', ref: ['refs/heads/main', 'refs/tags/v*'] }],
      },
      { path: '/auth/x', mode: 'auth', allow: [{ iss: GITHUB, repository_owner_id: '42' }] },
    ],
    tunnels: [{ to: ['db.internal:5432', '*.svc.internal:443', '10.1.2.3:22'], allow: [{ iss: GITHUB, repository: 'octo-org/*' }], maxLifetimeSeconds: 3600, endWithToken: true }],
    log: { level: 'info' },
  };
}

type Path = readonly (string | number)[];

/** Every place in a JSON value, up to a depth (deeply nested values are edited as a whole). */
function placesIn(value: unknown, at: Path = [], out: Path[] = []): Path[] {
  out.push(at);
  if (at.length >= 8) return out;
  if (Array.isArray(value)) value.forEach((v, i) => placesIn(v, [...at, i], out));
  else if (isPlainObject(value)) for (const k of Object.keys(value)) placesIn(value[k], [...at, k], out);
  return out;
}

function getAt(root: unknown, path: Path): unknown {
  let v = root;
  for (const k of path) v = (v as Record<string | number, unknown>)[k];
  return v;
}

function setAt(root: { value: unknown }, path: Path, value: unknown): void {
  if (path.length === 0) return void (root.value = value);
  const parent = getAt(root.value, path.slice(0, -1)) as Record<string | number, unknown>;
  const key = path[path.length - 1]!;
  if (typeof key === 'string') setMember(parent, key, value);
  else parent[key] = value;
}

/** Strings that are nearly right somewhere in a config: URLs, paths, header names, CIDRs, destinations, patterns. */
const NEAR_STRINGS = [
  'ftp://x/', 'http://user:pw@127.0.0.1/', 'http://127.0.0.1/?q', 'http://[::1', 'http://10.0.0.1/jwks', 'http://127.0.0.1.evil.example/', 'https://x/#f', 'file:///etc/passwd',
  'javascript:alert(1)', '/a/../b', '/a%2e', '/a//b', 'a', utf8('/é'), '/a b', '/', 'Host', 'X-Forwarded-For', 'a b', 'x-oidc-repository', 'proxy-authorization', 'cookie',
  '*:*', '127.0.0.1', '[::1]:22', '1.2.3.4.:22', 'a:99999', ':80', '*.:443', '[127.0.0.1]:80', '10.0.0.0/33', '::/129', '1.2.3.4/', '/8', '1.2.3.4/08', '0.0.0.0/0',
  'INFO', 'get', 'GET ', 'octo*', '*/*', '*', 'repo:*', 'NaN', 'Infinity', '-Infinity', '1e999', '0x10', '8192', '', ' ', '\u0000', '🚀', '\ud800', 'proxy', 'AUTH',
];

const NEW_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', '__defineGetter__', '🚀', '', ' ', 'a.b', 'a[0]', 'x'.repeat(500), '\u0000', 'Path', 'UPSTREAM', 'allow ', 'mode'];

function deep(r: Rng): unknown {
  let v: unknown = r.pick(['x', 1, null, {}, []]);
  // Around the verifier's 32-level limit, or far past it.
  const depth = r.chance(0.5) ? r.int(28, 36) : r.int(100, 3000);
  for (let i = 0; i < depth; i++) v = r.chance(0.7) ? [v] : { a: v };
  return v;
}

/** A value that should be refused wherever it lands (or, now and then, happens to fit). */
function hostile(r: Rng, current: unknown): unknown {
  const x = r.next();
  if (x < 0.3) return r.pick(NEAR_STRINGS);
  if (x < 0.45) {
    // The same content, another type.
    if (typeof current === 'string') return r.pick<unknown>([[current], Number(current), { value: current }, current.toUpperCase(), `${current} `, current.repeat(r.int(2, 50))]);
    if (typeof current === 'number') return r.pick<unknown>([String(current), [current], current + 0.5, -current, current * 1e6, current + 1]);
    if (Array.isArray(current)) return r.pick<unknown>([current[0], [], [current], Object.fromEntries(current.map((v, i) => [i, v])), [...current, ...current]]);
    if (isPlainObject(current)) return r.pick<unknown>([[current], Object.keys(current), {}, JSON.stringify(current)]);
  }
  return r.pick<() => unknown>([
    () => null, () => true, () => false, () => 0, () => -1, () => 1.5, () => -0, () => 1e308, () => -1e308, () => 5e-324, () => 2 ** 53 + 1, () => 65_536,
    () => 'a'.repeat(r.int(1000, 20_000)), () => [], () => [null], () => [[]], () => ({}), () => ({ toString: 1 }), () => ({ valueOf: 1 }),
    () => ({ toString: 'x', valueOf: 'y' }), () => ({ length: 1, 0: 'x' }), () => Array.from({ length: r.int(100, 2000) }, () => 'GET'),
    () => {
      const o: Record<string, unknown> = {};
      setMember(o, '__proto__', { polluted: true, repository: 'octo-org/octo-repo' });
      return o;
    },
    () => ({ constructor: { prototype: { polluted: true } } }), () => deep(r),
  ])();
}

/** A valid config after 1 to 4 random edits, as the JSON text a file would hold. */
export function mutatedConfig(r: Rng): { text: string; notes: string[] } {
  const root = { value: baseConfig() as unknown };
  const notes: string[] = [];
  for (let k = r.int(1, 4); k > 0; k--) {
    const places = placesIn(root.value);
    const path = r.pick(places.length > 1 ? places.slice(1) : places);
    const where = path.length === 0 ? '(root)' : path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${p}`)).join('');
    const current = getAt(root.value, path);
    const op = r.int(0, 9);
    if (op <= 1 && path.length > 0) {
      const parent = getAt(root.value, path.slice(0, -1));
      const key = path[path.length - 1]!;
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete (parent as Record<string, unknown>)[key];
      notes.push(`deleted ${where}`);
    } else if (op <= 5) {
      const v = hostile(r, current);
      setAt(root, path, v);
      notes.push(`${where} = ${shown(v, 80)}`);
    } else if (op === 6 && isPlainObject(current)) {
      const key = r.pick(NEW_KEYS);
      const v = r.chance(0.5) ? hostile(r, undefined) : r.pick(NEAR_STRINGS);
      setMember(current, key, v);
      notes.push(`${where}[${JSON.stringify(key)}] = ${shown(v, 60)}`);
    } else if (op === 7 && path.length > 0 && typeof path[path.length - 1] === 'string') {
      const parent = getAt(root.value, path.slice(0, -1)) as Record<string, unknown>;
      const key = path[path.length - 1] as string;
      const renamed = r.pick([key.toUpperCase(), `${key} `, `${key}s`, key.slice(1), `_${key}`]);
      delete parent[key];
      setMember(parent, renamed, current);
      notes.push(`renamed ${where} to ${JSON.stringify(renamed)}`);
    } else if (op === 8 && Array.isArray(current) && current.length > 0) {
      current.push(JSON.parse(JSON.stringify(r.pick(current)) ?? 'null'));
      notes.push(`duplicated an element of ${where}`);
    } else if (path.length > 0) {
      const other = r.pick(places.slice(1));
      const v = JSON.parse(JSON.stringify(getAt(root.value, other)) ?? 'null');
      setAt(root, path, v);
      notes.push(`${where} = copy of ${other.join('.')}`);
    }
  }
  return { text: JSON.stringify(root.value), notes };
}

/** Whole-file corruptions for the CLI: what JSON.parse meets before parseConfig does. */
export function corruptedConfigFile(r: Rng): { bytes: Buffer; note: string } {
  const text = JSON.stringify(baseConfig());
  return r.pick<() => { bytes: Buffer; note: string }>([
    () => ({ bytes: Buffer.from(text.slice(0, r.int(0, text.length - 1))), note: 'truncated' }),
    () => ({ bytes: Buffer.alloc(0), note: 'empty' }),
    () => ({ bytes: Buffer.from(`\ufeff${text}`), note: 'BOM' }),
    () => ({ bytes: Buffer.concat([Buffer.from(text.slice(0, 40)), Buffer.from([0xff, 0xfe, 0xc0]), Buffer.from(text.slice(40))]), note: 'invalid UTF-8' }),
    () => ({ bytes: Buffer.from('[]'), note: 'an array' }),
    () => ({ bytes: Buffer.from('null'), note: 'null' }),
    () => ({ bytes: Buffer.from('['.repeat(200_000)), note: 'unclosed nesting, 200,000 deep' }),
    () => ({ bytes: Buffer.from(`${'['.repeat(50_000)}${']'.repeat(50_000)}`), note: 'nesting 50,000 deep' }),
    () => ({ bytes: Buffer.from(`${text}\n{}`), note: 'two documents' }),
    () => ({ bytes: Buffer.from(text.replace('"listen"', '"__proto__":{"listen":1},"listen"')), note: '__proto__ member' }),
  ])();
}

const PROBLEM = /^[^:]+: .+/;

/** What is wrong with a parseConfig result: anything but ok, or problems each named by their JSON path. */
export function configResultProblems(result: unknown): string[] {
  if (!isPlainObject(result)) return [`not an object: ${shown(result)}`];
  if (result.ok === true) {
    const c = result.config as Record<string, unknown> | undefined;
    return isPlainObject(c) && Array.isArray(result.warnings) ? acceptedConfigProblems(c) : ['ok without a config and warnings'];
  }
  if (result.ok !== false || !Array.isArray(result.problems) || result.problems.length === 0) return [`neither ok nor a list of problems: ${shown(JSON.stringify(result))}`];
  return result.problems.filter((p: unknown) => typeof p !== 'string' || !PROBLEM.test(p)).map((p: unknown) => `a problem not named by its path: ${shown(p)}`);
}

/** A config that was accepted must at least hold what every later step takes for granted. */
function acceptedConfigProblems(c: Record<string, unknown>): string[] {
  const out: string[] = [];
  const list = (v: unknown) => (Array.isArray(v) ? v : []);
  const rules = [...list(c.routes), ...list(c.tunnels)].flatMap((x) => (isPlainObject(x) ? [x] : []));
  if (rules.length === 0) out.push('accepted with no route and no tunnel');
  const issuers = list(c.issuers);
  if (issuers.length === 0) out.push('accepted with no issuer');
  for (const r of rules) {
    const allow = list(r.allow);
    if (allow.length === 0) out.push(`accepted an entry with no rule: ${shown(JSON.stringify(r))}`);
    for (const rule of allow) {
      const entries = isPlainObject(rule) ? Object.entries(rule) : [];
      const patterns = entries.flatMap(([, v]) => [v].flat());
      if (entries.length === 0 || patterns.some((p) => typeof p !== 'string' || p === '')) out.push(`accepted a rule that is not claim -> non-empty pattern(s): ${shown(JSON.stringify(rule))}`);
      const iss = isPlainObject(rule) && Object.hasOwn(rule, 'iss') ? [rule.iss].flat() : [];
      if (issuers.length > 1 && !(iss.length > 0 && iss.every((p) => typeof p === 'string' && !p.includes('*')))) out.push(`accepted a rule without an exact iss among several issuers: ${shown(JSON.stringify(rule))}`);
    }
  }
  for (const section of ['token', 'keys', 'timeouts']) {
    const s = c[section];
    if (!isPlainObject(s)) out.push(`accepted without ${section}`);
    else for (const [k, v] of Object.entries(s)) if (typeof v === 'number' && !Number.isFinite(v)) out.push(`accepted ${section}.${k} = ${v}`);
  }
  return out;
}

// ---------------------------------------------------------------- the fixed keys

// Test-only keys made for this file and trusted nowhere else: fixed, so a seed replays the very same bytes.
const FUZZ_KEY_1 = `
-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQC8rI34Km6HTZhs
0ZwMKPRJNnBfet2fUnugjUYgLacaAYJpsL7AqWdncIiWFqKWjhTO4OFICA3/QnyM
QPEqBPMenbXM2XNV1296g5DRIByfNvQwWdhjnffzqzsDXApe1O/eO5cIIhlhkLHX
yGqoZ1kUOkHxk06jhl8o1CZcjgH/LFAlgzBepeoY7VDS8EKNblom1NEiAMvb17G8
dkQ7B7aPJYFmmIWDiove3raI5ptEV0vZBH7INqR0iJ5uC/1a+2qaCkoHKtFYF2tN
8vh0BforwHFsqxtjGrDRgUyhhn9bBgv/YsEQUwdMMd9Uf56bCs+NrUtoEfHeTKtM
ljqQiLPPAgMBAAECggEAARp32e1ED6xGxJR1FQ2VpWC7s7x53Y49buy+bdJI/SjU
j9b6z9Xcjl9Yrv1AXD5ZoGsGB3x3V5EC26+VY1IFZc96OkfigUn5SagYUPx3lv/a
xkUnArK+/vlPzmK5OFdLnEias1HmMWhgVjAlDp1Ma5DTMV0ichlf9aGXEJyoJfKu
PubsGn3nN1kFy7/qP7tydFWEI+Lp8LrdfFfy42xAf1fsiBxZjx/cLpAWQrYSTyzA
pMVMPiNb9SrT0JchtbWJHAnnygWFBHnncOcbhdFCBMWK/kHgYoJr6DPL+Vp91hqk
5qjbDHDl5WfOxyCAJeL19V3WiqxtNG7MoR42Jj73PQKBgQDkd7N6rADUGYlNZE2g
AZOTDUX06TGclS7eq6K4wMmhCFaU2RJlzj9wy3NmyLyNZRHRcyFzhInYhjPUxXC/
LMNGccUM4eVm/4LAUOPWLK5ZVq0m68q7MH4a4mHqRRni3nAkWcYBEwjiLEXMVhaz
shsstxjyFwLo5Vx1izMcMtVVDQKBgQDTaTW4gQh+0x8er+ajFxdo4xBNoYLST5nb
eyY21oEIq1cp+ty9VT3MnnQJHBeYWyiEtbgHtea9jXg54C8KwL6sCHTULIprCt6o
prv5WnlDWkmt9DvxRItM/qhFTuIKoe0RPdVcI9wyvj3Mv/OWhFAnYpJAkcr2ASFx
E8c7wgutSwKBgQDObbV2Xpl1Cwm7KqjUrPf5Q2H1MwqHj2fE+9HQGylTXeRVI3lz
ERLTSJChyzhKjYq2887CwHuIb2G/mxIPOlPKf5tq02TiVnV+bNgfuUljIWTcKOqJ
jfwzMF8GPJ9yFEfBIHg+mkNJkHUUdqiWfpP9KAbbHp2bbznGXxq0HN4StQKBgEIj
nRnezGCY/hhkoXwOYlV/C/+tcrcHDjRa/6aSTwX+TKOmht54x3+3Zsfe0QbqJe/2
xd8rqkdM9frtRupPSJebgalLUfaRDP2oRBCLnHpUyc4xJXuinQ32cYBVYGRBKmCF
frV3xpDdcYoX10YUmNrpfKXUtrFlwyeUL3VjjLGnAoGBANcEYNIPzx9jq/nSc08g
rZzT8AqBvO9BQVonK3M/y+2mkeIkaArO+WK6+GaHwg5N4Igt7L+uhlSR7F37D4mU
lF+7zmBihmr10vvNf4B+IsjI7FfZ3Xsqda8nP8QN+3amnVcz8GnIZWARXHeRZm/D
718Ms3K18x7WFA7KB9DCdIjG
-----END PRIVATE KEY-----`;

const FUZZ_KEY_2 = `
-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQC0KP1tZYcJVEUJ
qTyqNDwQVkrR9bB6wYApyUqmxM1nw1suJWLOBSlYLDduoDjBPdc8nu4PFKBL+n8x
bIXMwyPZrhsnqDPErCUNvKbX/CYVTNCXYip3fdlGGFPkePELPFF2xLj3B6eqUwgo
FYaXHb/fr2NcsXpQKCA44uTnCpSrqWgY5Uxsips6VKypI7cVTV4NgDg1rTZJCl4u
LfGX6GmEXRs5RB+IYU1YDv4osiUo6B6iJ/vXhVia1GYarpPRSlveYTi81n2iSAnl
CKmbC3ioLErksGEinJGCucpd6GaKiXsQopWY3SKt7zF2RXPHcU5dYvXBSLSvMt4y
/ml+g15vAgMBAAECggEAIUfTLQLM07Xb/QFk4gI9OD1gm/GZdMvLC60SG8WONkVZ
0if43RsJ/K5KXSa+5T+xw5KOYn3KcM6o8W3dN6qytDMb9BL34TR1sdhwL8T2Gggz
Hkv1kVZPrUmwMav/xzYQzHJhwsyItgeZoaH8V20Y9U7WeZiVgjovXaLYay/CsAUP
iJoaxJjTJnMFWI35yB7v6O18h/BZwm3DHz6k4sj1l6Ay0GeSmlbxl1dGZJIyZ6dR
YhiBEDTQtDom9jz+skLP5FjEg8g8ofZlrc+b/V/XbyLlBS68xfdg6bwuuMwozMxP
ls1/l0Bp25ubbhT1yt2erhUp9T5BvUHTxVjXpqt5AQKBgQDawZ0TvL06cEOo7XkW
e+vdz20usKFcmjsZ5aOXI+EfuJr6zPbYTxbetdMVvCFMiHQOidhxzESJ2A/F5AJq
PsKeGK44gDISly3YuizM8U7rbo0ofkiYICSu6njNTrEsLuuqsERnK2/y9iA98LkP
xNegbfTDpSxVuvDEjaU14QpTAQKBgQDS1S40Vke2Cvgu7pw1nwWqJ/KXDJpjmXvY
k+iWEy9BlDv1a9FitwsEjOwJKSw0M4RKmKVojislVIygzCGIZQu1ShwpR5G6J9lm
FH2/L7Ko13+v/WFIqWZIrwEr+2pTC9z9MTjG5Jp3r9Ofp2petM6or9aR5BzQumRF
XxbuX5ZhbwKBgQCqOSD2u9Zvw+4SZH/mDBX1KzSlsVJPEcDNnREYShYjLe6DHL00
gw6jzM7tydALkt7kdUVVAAORU+yqK4vpit68US44zyCnsLY/QFgePeQQdZ0oFmR8
4/5HkjLgZ8ycOgKudq0zruxVHkrmiAwphh3YO9fL6hq+t1IlUKdvbqcvAQKBgQDF
3XBpiffvL0hQs3tDD6U/VhJkFF3oz6jdT6LfBc4526aR48g0vtjGQoNa7ZsguqCT
acMC5zoy5LC+UBXAbiSY1Z6sVxC7Bp8PIHgLL/aaYvTg9AmTKfhmimetIV1d5ypV
LRa+Atm9LfSMR5CapVG2GqBjdxRcCDIGsQFSYb8+XQKBgQCBukNZLsmy4Jw60WY1
57oNOPbKSA5AoTlPA8uiZ3V9wE5CGSmAWkrsWl6WhPis+8e+yqNcepNz0PpWgVxx
flkLf50XiRcn634e9KXtWAa9F7hmVvakkpMC7AgEozLlYwmKCYUkmwZaUW8INPEP
UvLvp6wCBRjRe+GWQJGVMyGxAQ==
-----END PRIVATE KEY-----`;
