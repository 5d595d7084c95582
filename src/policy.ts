// Who may come in: allow rules over verified claims. Pure functions, no I/O.
// A rule maps claim names to a pattern or to alternatives; all of a rule's
// claims must match (AND), any rule may match (OR). A pattern is literal text
// in which `*` stands for any run of characters. Claim values are chosen by
// whoever pushes a branch, so patterns are never turned into a RegExp: each
// literal piece is searched once, left to right, with no backtracking.
import { isObject, own, type Claims } from './jwt.js';

export type Rule = Readonly<Record<string, string | readonly string[]>>;

/** A pattern split on `*`: one piece means an exact match. */
type Glob = readonly string[];

/** A rule compiled: each of its claims with the globs it may match. */
type CompiledRule = readonly { readonly name: string; readonly alternatives: readonly Glob[] }[];
export type Policy = readonly CompiledRule[];

export type Decision = { readonly allowed: true; readonly rule: number } | { readonly allowed: false; readonly claim: string };

// A rule must say whose workflows may come in: a rule on aud or ref alone
// would admit every workflow on GitHub. Ids and owner names must be exact;
// the path-like claims must fix the owner ("octo-org/..."), so a pattern such
// as "*/repo" or "octo*" (which admits octo-evil) does not count as pinning.
const EXACT_PINS = ['repository_id', 'repository_owner', 'repository_owner_id', 'enterprise', 'enterprise_id'];
const OWNER_PINS = ['repository', 'sub', 'workflow_ref', 'job_workflow_ref'];

export function compileGlob(pattern: string): Glob {
  return pattern.split('*');
}

/** Whether `value` matches the glob. Linear in the value's length for a fixed pattern. */
export function matchGlob(glob: Glob, value: string): boolean {
  const first = glob[0]!;
  if (glob.length === 1) return value === first;
  const last = glob[glob.length - 1]!;
  if (value.length < first.length + last.length || !value.startsWith(first) || !value.endsWith(last)) return false;
  let from = first.length;
  const end = value.length - last.length;
  for (let i = 1; i < glob.length - 1; i++) {
    const piece = glob[i]!;
    const at = value.indexOf(piece, from);
    if (at < 0 || at + piece.length > end) return false;
    from = at + piece.length;
  }
  return true;
}

export function compilePolicy(rules: readonly Rule[]): Policy {
  return rules.map((rule) => Object.keys(rule).map((name) => ({ name, alternatives: patternsOf(rule[name]!).map(compileGlob) })));
}

/** The first rule that admits the claims, or the first claim that kept the first rule out. */
export function evaluate(policy: Policy, claims: Claims): Decision {
  let failed: string | undefined;
  for (let r = 0; r < policy.length; r++) {
    const miss = firstMismatch(policy[r]!, claims);
    if (miss === undefined) return { allowed: true, rule: r };
    failed ??= miss;
  }
  return { allowed: false, claim: failed ?? '' };
}

function firstMismatch(rule: CompiledRule, claims: Claims): string | undefined {
  for (const { name, alternatives } of rule) {
    const value = claimText(claims, name);
    if (value === undefined || !alternatives.some((g) => matchGlob(g, value))) return name;
  }
  return undefined;
}

/** Own string, number or boolean claims, as text; anything else never matches. */
export function claimText(claims: Claims, name: string): string | undefined {
  const v = own(claims, name);
  return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined;
}

/** Problems with one allow rule from the config, as [claim name or '', problem]. */
export function checkRule(r: unknown, pinIssuer: boolean): [string, string][] {
  if (!isObject(r)) return [['', 'expected an object of claim name to pattern(s)']];
  const problems: [string, string][] = [];
  for (const name of Object.keys(r)) {
    const v = r[name];
    const ok = typeof v === 'string' || (Array.isArray(v) && v.length > 0 && v.every((s) => typeof s === 'string'));
    if (!ok) problems.push([name, 'expected a string or an array of strings']);
    else if (patternsOf(v as string | string[]).some((s) => s === '')) problems.push([name, 'expected non-empty patterns']);
  }
  if (problems.length > 0) return problems;
  if (Object.keys(r).length === 0) return [['', 'expected at least one claim']];
  const pinned = (name: string, test: (s: string) => boolean) => Object.hasOwn(r, name) && patternsOf(r[name] as string).every(test);
  const pins = EXACT_PINS.some((n) => pinned(n, (s) => !s.includes('*'))) || OWNER_PINS.some((n) => pinned(n, (s) => ownerFixed(s, n)));
  if (!pins) {
    problems.push(['', `does not pin who may come in: constrain one of ${[...OWNER_PINS, ...EXACT_PINS].join(', ')} (ids and owners exactly, the others with the owner spelled out, such as "octo-org/*")`]);
  }
  if (pinIssuer && !pinned('iss', (s) => !s.includes('*'))) problems.push(['iss', 'with more than one issuer, every rule must name its issuer exactly']);
  return problems;
}

// The text before the first `*` must reach past the owner: "octo-org/...". A
// sub must also start "repo:", since an owner may customise its subject format.
function ownerFixed(pattern: string, claim: string): boolean {
  const star = pattern.indexOf('*');
  let literal = star < 0 ? pattern : pattern.slice(0, star);
  if (claim === 'sub') {
    if (!literal.startsWith('repo:')) return false;
    literal = literal.slice(5);
  }
  return literal.indexOf('/') > 0;
}

function patternsOf(v: string | readonly string[]): readonly string[] {
  return typeof v === 'string' ? [v] : v;
}
