// Who may come in: allow rules over verified claims, pure functions. A rule maps claim names to a pattern or alternatives;
// all its claims must match (AND), any rule may (OR). In a pattern `*` stands for any run of characters. Claim values are
// chosen by whoever pushes a branch, so patterns never become a RegExp: each literal piece is searched once, no backtracking.
import { isObject, own, type Claims } from './jwt.js';

export type Rule = Readonly<Record<string, string | readonly string[]>>;

/** A pattern split on `*`: one piece means an exact match. */
type Glob = readonly string[];

type CompiledRule = readonly { readonly name: string; readonly at: number; readonly alternatives: readonly Glob[] }[];
/** Rules whose claims point into `names`, so a request reads each claim once however many rules name it. The rules that
 *  require exact values of claim `keyAt` are listed under those values, the others in `rest`, each list in rule order. */
export type Policy = { readonly names: readonly string[]; readonly rules: readonly CompiledRule[]; readonly keyAt: number; readonly byValue: ReadonlyMap<string, readonly number[]>; readonly rest: readonly number[] };

// A rule must say whose workflows may come in: one on aud or ref alone admits every workflow on GitHub. Ids and owners
// must be exact; path-like claims must fix the owner ("octo-org/..."), so "*/repo" or "octo*" (octo-evil) do not pin.
const EXACT_PINS = ['repository_id', 'repository_owner', 'repository_owner_id', 'enterprise', 'enterprise_id'];
const OWNER_PINS = ['repository', 'sub', 'workflow_ref', 'job_workflow_ref'];

export const compileGlob = (pattern: string): Glob => pattern.split('*');

/** Whether `value` matches the glob. Linear in the value's length for a fixed pattern. */
export function matchGlob(glob: Glob, value: string): boolean {
  const first = glob[0]!;
  if (glob.length === 1) return value === first;
  const last = glob[glob.length - 1]!;
  if (value.length < first.length + last.length || !value.startsWith(first) || !value.endsWith(last)) return false;
  let from = first.length;
  const end = value.length - last.length;
  for (const piece of glob.slice(1, -1)) {
    const at = value.indexOf(piece, from);
    if (at < 0 || at + piece.length > end) return false;
    from = at + piece.length;
  }
  return true;
}

export function compilePolicy(rules: readonly Rule[]): Policy {
  const names = [...new Set(rules.flatMap((rule) => Object.keys(rule)))];
  const indexOf = new Map(names.map((name, at) => [name, at]));
  const compiled = rules.map((rule) => Object.keys(rule).map((name) => ({ name, at: indexOf.get(name)!, alternatives: patternsOf(rule[name]!).map(compileGlob) })));
  // Keyed by the claim with the most distinct exact values (repository, say), a request checks in full only the rules its
  // value there can satisfy, and those that require no exact value there: a rule left out could not have admitted it.
  const exact = (c: CompiledRule[number]) => c.alternatives.every((g) => g.length === 1);
  const exactValues = names.map(() => new Set<string>());
  for (const c of compiled.flat()) if (exact(c)) c.alternatives.forEach(([v = '']) => exactValues[c.at]!.add(v));
  const keyAt = exactValues.reduce((best, values, at) => (values.size > (exactValues[best]?.size ?? 0) ? at : best), -1);
  const byValue = new Map<string, number[]>(), rest: number[] = [];
  compiled.forEach((rule, r) => {
    const key = rule.find((c) => c.at === keyAt && exact(c));
    if (!key) return void rest.push(r);
    for (const [value = ''] of key.alternatives) byValue.get(value)?.push(r) ?? byValue.set(value, [r]);
  });
  return { names, rules: compiled, keyAt, byValue, rest };
}

/** The first rule that admits the claims, or the first claim that kept the first rule out. */
export function evaluate(policy: Policy, claims: Claims): { allowed: true; rule: number } | { allowed: false; claim: string } {
  const values = claimValues(policy, claims);
  const key = values[policy.keyAt], keyed = key === undefined ? undefined : policy.byValue.get(key);
  const admits = (r: number) => firstMismatch(policy.rules[r]!, values) === undefined;
  // Both lists are in rule order: the rule the config lists first wins, as if every rule were tried in turn.
  const rule = Math.min(keyed?.find(admits) ?? Infinity, policy.rest.find(admits) ?? Infinity);
  if (rule !== Infinity) return { allowed: true, rule };
  return { allowed: false, claim: (policy.rules[0] && firstMismatch(policy.rules[0], values)?.name) ?? '' };
}

/** The rule's first condition the claims fail, or undefined when the rule admits them. */
function firstMismatch(rule: CompiledRule, values: readonly (string | undefined)[]): CompiledRule[number] | undefined {
  return rule.find(({ at, alternatives }) => {
    const value = values[at];
    return value === undefined || !alternatives.some((g) => matchGlob(g, value));
  });
}

/** The claim that kept a rule out, its value as text (undefined when the token does not carry it), and the rule's patterns for it. */
export type RuleMiss = { readonly claim: string; readonly value: string | undefined; readonly patterns: readonly string[] };

/** For each rule, the first claim that kept it out with the value and the patterns side by side; null where the rule admits. */
export function explainPolicy(policy: Policy, claims: Claims): (RuleMiss | null)[] {
  const values = claimValues(policy, claims);
  return policy.rules.map((rule) => {
    const miss = firstMismatch(rule, values);
    return miss ? { claim: miss.name, value: values[miss.at], patterns: miss.alternatives.map((g) => g.join('*')) } : null;
  });
}

const claimValues = (policy: Policy, claims: Claims) => policy.names.map((name) => claimText(claims, name));

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
  if (!pins)
    problems.push(['', `does not pin who may come in: constrain one of ${[...OWNER_PINS, ...EXACT_PINS].join(', ')} (ids and owners exactly, the others with the owner spelled out, such as "octo-org/*")`]);
  if (pinIssuer && !pinned('iss', (s) => !s.includes('*'))) problems.push(['iss', 'with more than one issuer, every rule must name its issuer exactly']);
  return problems;
}

// What a valid rule trusts that can change hands, as [claim, warning]: names can be re-registered, ids never are.
// GitHub sends `repo:OWNER@ID/REPO@ID:...` subjects for repositories created or renamed since 2026-07-15 and
// `repo:OWNER/REPO:...` for the others, so a `sub` pattern written for one format silently misses the other.
export function ruleWarnings(r: Rule): [string, string][] {
  const has = (name: string) => Object.hasOwn(r, name);
  const warnings: [string, string][] = [];
  for (const [name, id] of [['repository', 'repository_id'], ['repository_owner', 'repository_owner_id']] as const)
    if (has(name) && !has(id)) warnings.push([name, `matches a name, which can be re-registered: pin ${id} as well`]);
  if (has('job_workflow_ref') && !['repository', 'repository_id', 'repository_owner', 'repository_owner_id', 'sub'].some(has))
    warnings.push(['job_workflow_ref', 'alone admits every repository that calls this reusable workflow: pin repository_owner_id as well']);
  // A sub pattern that spells the owner out before any `*` is bound to one format; "repo:*" or a custom template is not.
  const formats = new Set(patternsOf(has('sub') ? r.sub! : []).map((s) => {
    const owner = s.split('*')[0]!.split('/');
    return owner.length < 2 || !owner[0]!.startsWith('repo:') ? 'any' : owner[0]!.includes('@') ? 'id' : 'name';
  }));
  if (formats.size === 1 && !formats.has('any'))
    warnings.push(['sub', formats.has('id') ? 'matches only "repo:OWNER@ID/REPO@ID:..." subjects: older repositories send "repo:OWNER/REPO:..."' : 'matches only "repo:OWNER/REPO:..." subjects: repositories created or renamed since 2026-07-15 send "repo:OWNER@ID/REPO@ID:..."']);
  return warnings;
}

// The text before the first `*` must reach past the owner ("octo-org/..."); a sub must also start "repo:",
// since an owner may customise its subject format.
function ownerFixed(pattern: string, claim: string): boolean {
  const literal = pattern.split('*')[0]!;
  return claim === 'sub' ? literal.startsWith('repo:') && literal.indexOf('/') > 5 : literal.indexOf('/') > 0;
}

const patternsOf = (v: string | readonly string[]): readonly string[] => (typeof v === 'string' ? [v] : v);
