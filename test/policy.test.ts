import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Claims } from '../src/jwt.ts';
import { checkRule, claimText, compileGlob, compilePolicy, evaluate, matchGlob, ruleWarnings, type Rule } from '../src/policy.ts';

// Claims as the verifier hands them over: the parsed payload with its prototype set to null, frozen at every level (as jwt.ts does).
function verified(payload: Record<string, unknown>): Claims {
  const freeze = (value: unknown): void => {
    if (typeof value === 'object' && value !== null) for (const inner of Object.values(Object.freeze(value))) freeze(inner);
  };
  const claims = Object.setPrototypeOf({ ...payload }, null) as Record<string, unknown>;
  freeze(claims);
  return claims;
}

const glob = (pattern: string, value: string) => matchGlob(compileGlob(pattern), value);

const MAIN = verified({
  iss: 'https://token.actions.githubusercontent.com',
  aud: 'api://ActionsOIDCGateway',
  sub: 'repo:octo-org/octo-repo:ref:refs/heads/main',
  repository: 'octo-org/octo-repo',
  repository_owner: 'octo-org',
  repository_id: '123',
  ref: 'refs/heads/main',
  run_id: 42,
  ref_protected: true,
  workflow: '1 🚀 Dev',
});

// --- glob matching ---------------------------------------------------------

const GLOBS: [pattern: string, value: string, matches: boolean][] = [
  // exact
  ['octo-org/octo-repo', 'octo-org/octo-repo', true],
  ['octo-org/octo-repo', 'octo-org/octo-rep', false],
  ['octo-org/octo-repo', 'octo-org/octo-repo2', false],
  ['octo-org/octo-repo', 'Octo-org/octo-repo', false],
  ['', '', true],
  ['', 'a', false],
  ['a', '', false],
  // prefix*
  ['refs/tags/v*', 'refs/tags/v1.2.3', true],
  ['refs/tags/v*', 'refs/tags/v', true],
  ['refs/tags/v*', 'refs/tags/', false],
  ['refs/tags/v*', 'refs/heads/v1', false],
  // *suffix
  ['*@refs/heads/main', 'octo-org/wf/.github/workflows/deploy.yml@refs/heads/main', true],
  ['*@refs/heads/main', '@refs/heads/main', true],
  ['*@refs/heads/main', 'x@refs/heads/main2', false],
  // a*b*c
  ['a*b*c', 'abc', true],
  ['a*b*c', 'axxbyyc', true],
  ['a*b*c', 'acb', false],
  ['a*b*c', 'abcx', false],
  ['a*b*c', 'xabc', false],
  ['a*b*c', 'ab', false],
  ['a*b*c', 'abbbc', true],
  ['a*b*c', 'acbc', true],
  // multiple and adjacent stars, empty runs
  ['*', '', true],
  ['*', 'anything at all', true],
  ['**', '', true],
  ['**', 'x', true],
  ['a**b', 'ab', true],
  ['a**b', 'a--b', true],
  ['*a*', 'a', true],
  ['*a*', 'bab', true],
  ['*a*', 'bbb', false],
  ['*a*b*', 'ab', true],
  ['*a*b*', 'ba', false],
  ['a*', 'a', true],
  ['*a', 'a', true],
  ['a*a', 'a', false],
  ['a*a', 'aa', true],
  // prefix and suffix must not share characters
  ['ab*ba', 'aba', false],
  ['ab*ba', 'abba', true],
  ['ab*ba', 'abxba', true],
  ['abc*cde', 'abcde', false],
  ['abc*cde', 'abccde', true],
  ['a*b*a', 'aba', true],
  ['a*bb*a', 'abba', true],
  ['a*bb*a', 'abab', false],
  // a middle piece must fit between prefix and suffix
  ['x*ab*b', 'xab', false],
  ['x*ab*b', 'xabb', true],
  ['*ab*ab', 'ab', false],
  ['*ab*ab', 'abab', true],
  // regex metacharacters are literal
  ['a.c', 'abc', false],
  ['a.c', 'a.c', true],
  ['(a|b)+', 'a', false],
  ['(a|b)+', '(a|b)+', true],
  ['refs/heads/[main]', 'refs/heads/m', false],
  ['?', 'x', false],
  ['?', '?', true],
  ['^a$', 'a', false],
];

for (const [pattern, value, matches] of GLOBS) {
  test(`the pattern ${JSON.stringify(pattern)} ${matches ? 'matches' : 'does not match'} ${JSON.stringify(value)}`, () => {
    assert.equal(glob(pattern, value), matches);
  });
}

// A plain dynamic-programming matcher, obviously right and too slow for the gateway.
function reference(pattern: string, value: string): boolean {
  let row = Array.from({ length: value.length + 1 }, (_, j) => j === 0);
  for (const p of pattern) {
    const next = Array.from({ length: value.length + 1 }, () => false);
    next[0] = p === '*' && row[0]!;
    for (let j = 1; j <= value.length; j++) next[j] = p === '*' ? row[j]! || next[j - 1]! : row[j - 1]! && value[j - 1] === p;
    row = next;
  }
  return row[value.length]!;
}

function* words(alphabet: string, maxLength: number): Generator<string> {
  let level = [''];
  yield '';
  for (let n = 1; n <= maxLength; n++) {
    level = level.flatMap((w) => [...alphabet].map((c) => w + c));
    yield* level;
  }
}

test('matchGlob agrees with a reference matcher on every pattern over {a, b, *} up to 5 characters and every value over {a, b} up to 6', () => {
  const values = [...words('ab', 6)];
  const disagreements: string[] = [];
  for (const pattern of words('ab*', 5)) {
    const g = compileGlob(pattern);
    for (const value of values) {
      if (matchGlob(g, value) !== reference(pattern, value)) disagreements.push(`${pattern} ~ ${value}`);
    }
  }
  assert.deepEqual(disagreements.slice(0, 10), []);
});

const PATHOLOGICAL: [pattern: string, value: string, matches: boolean][] = [
  ['*a*a*a*a*b', 'a'.repeat(8_000), false],
  ['*a*a*a*a*b', `${'a'.repeat(8_000)}b`, true],
  ['a*a*a*a*a*a*a*a*a*a*b', 'a'.repeat(8_000), false],
  [`${'*a'.repeat(50)}*b`, 'a'.repeat(8_000), false],
  [`${'*a'.repeat(50)}*b`, `${'a'.repeat(7_999)}b`, true],
  ['*aaaaaaaaab*', 'a'.repeat(8_000), false],
  ['*ab*ab*ab*c', 'ab'.repeat(4_000), false],
  ['*a*a*a*a*b*', 'a'.repeat(8_000), false],
  ['*a*a*a*a*b*', `${'a'.repeat(4_000)}b${'a'.repeat(4_000)}`, true],
  ['*'.repeat(1_000), 'a'.repeat(8_000), true],
];

for (const [pattern, value, matches] of PATHOLOGICAL) {
  test(`a pathological pattern of ${pattern.length} characters against ${value.length} attacker-chosen characters ${matches ? 'matches' : 'is refused'}`, () => {
    assert.equal(glob(pattern, value), matches);
  });
}

// --- claimText ---------------------------------------------------------------

const CLAIM_TEXT: [what: string, value: unknown, text: string | undefined][] = [
  ['a string', 'octo-org', 'octo-org'],
  ['an empty string', '', ''],
  ['an integer', 123, '123'],
  ['a fraction', 1.5, '1.5'],
  ['true', true, 'true'],
  ['false', false, 'false'],
  ['null', null, undefined],
  ['an array', ['octo-org/octo-repo'], undefined],
  ['an object', { toString: () => 'octo-org/octo-repo' }, undefined],
];

for (const [what, value, text] of CLAIM_TEXT) {
  test(`claimText reads ${what} claim as ${JSON.stringify(text)}`, () => {
    assert.equal(claimText(verified({ c: value }), 'c'), text);
  });
}

test('claimText never reads a claim through the prototype', () => {
  const inherited = Object.create({ repository: 'octo-org/octo-repo' }) as Claims;
  assert.equal(claimText(inherited, 'repository'), undefined);
  assert.equal(claimText({}, 'toString'), undefined);
  assert.equal(claimText({}, 'constructor'), undefined);
  assert.equal(claimText({}, '__proto__'), undefined);
});

// --- compilePolicy and evaluate ------------------------------------------------

test('every claim of a rule must match (AND): one mismatch keeps the rule out and is named', () => {
  const policy = compilePolicy([{ repository: 'octo-org/octo-repo', ref: 'refs/heads/main' }]);
  assert.deepEqual(evaluate(policy, MAIN), { allowed: true, rule: 0 });
  assert.deepEqual(evaluate(policy, verified({ repository: 'octo-org/octo-repo', ref: 'refs/heads/dev' })), { allowed: false, claim: 'ref' });
  assert.deepEqual(evaluate(policy, verified({ repository: 'octo-org/other', ref: 'refs/heads/main' })), { allowed: false, claim: 'repository' });
});

test('any rule may admit (OR), and the decision names the first rule that did', () => {
  const policy = compilePolicy([
    { repository: 'octo-org/other' },
    { repository: 'octo-org/octo-repo', ref: 'refs/heads/main' },
    { repository: 'octo-org/*' },
  ]);
  assert.deepEqual(evaluate(policy, MAIN), { allowed: true, rule: 1 });
  assert.deepEqual(evaluate(policy, verified({ repository: 'octo-org/octo-repo', ref: 'refs/heads/dev' })), { allowed: true, rule: 2 });
  assert.deepEqual(evaluate(policy, verified({ repository: 'octo-org/other' })), { allowed: true, rule: 0 });
  assert.deepEqual(evaluate(policy, verified({ repository: 'evil-org/octo-repo' })), { allowed: false, claim: 'repository' });
});

test('an array of patterns is a set of alternatives for one claim', () => {
  const policy = compilePolicy([{ repository: 'octo-org/octo-repo', ref: ['refs/heads/main', 'refs/tags/v*'] }]);
  const table: [ref: string, allowed: boolean][] = [
    ['refs/heads/main', true],
    ['refs/tags/v1.0.0', true],
    ['refs/tags/v', true],
    ['refs/tags/1.0.0', false],
    ['refs/heads/main2', false],
    ['refs/heads/dev', false],
  ];
  for (const [ref, allowed] of table) {
    assert.equal(evaluate(policy, verified({ repository: 'octo-org/octo-repo', ref })).allowed, allowed, ref);
  }
});

test('when no rule admits, the first failing claim of the first rule is reported', () => {
  const policy = compilePolicy([
    { repository: 'octo-org/octo-repo', ref: 'refs/heads/main', environment: 'prod' },
    { repository_id: '999' },
  ]);
  assert.deepEqual(evaluate(policy, verified({ repository: 'octo-org/octo-repo', ref: 'refs/heads/dev' })), { allowed: false, claim: 'ref' });
  assert.deepEqual(evaluate(policy, verified({ repository: 'octo-org/octo-repo', ref: 'refs/heads/main' })), { allowed: false, claim: 'environment' });
  assert.deepEqual(evaluate(policy, verified({})), { allowed: false, claim: 'repository' });
});

test('a claim that many rules name is read once per evaluation, not once per rule', () => {
  let reads = 0;
  const claims = Object.freeze(Object.defineProperty(Object.create(null), 'repository', { get: () => (reads++, 'octo-org/octo-repo'), enumerable: true })) as Claims;
  const policy = compilePolicy([...Array.from({ length: 100 }, (_, i) => ({ repository: `octo-org/repo-${i}` })), { repository: 'octo-org/octo-repo' }]);
  assert.deepEqual(evaluate(policy, claims), { allowed: true, rule: 100 });
  assert.equal(reads, 1);
});

test('with 1,000 rules the rule the config lists first wins, whether or not it requires an exact value of the keyed claim', () => {
  const many = Array.from({ length: 998 }, (_, i) => ({ repository: `octo-org/repo-${i}`, ref: 'refs/heads/main' }));
  const policy = compilePolicy([{ repository: 'octo-org/*', ref: 'refs/heads/release' }, ...many, { repository: 'octo-org/octo-repo' }, { repository: 'octo-org/*' }]);
  // Keyed by repository, the claim with the most distinct exact values (ref has two).
  assert.equal(policy.names[policy.keyAt], 'repository');
  assert.deepEqual(evaluate(policy, verified({ repository: 'octo-org/octo-repo', ref: 'refs/heads/release' })), { allowed: true, rule: 0 });
  assert.deepEqual(evaluate(policy, MAIN), { allowed: true, rule: 999 });
  assert.deepEqual(evaluate(policy, verified({ repository: 'octo-org/repo-7', ref: 'refs/heads/main' })), { allowed: true, rule: 8 });
  assert.deepEqual(evaluate(policy, verified({ repository: 'octo-org/repo-7', ref: 'refs/heads/dev' })), { allowed: true, rule: 1_000 });
  assert.deepEqual(evaluate(policy, verified({ repository: 'evil-org/repo-7', ref: 'refs/heads/main' })), { allowed: false, claim: 'repository' });
  assert.deepEqual(evaluate(policy, verified({ ref: 'refs/heads/main' })), { allowed: false, claim: 'repository' });
});

test('evaluate agrees with trying every rule in turn on 20,000 random policies and claims (exact values, globs, alternatives, numbers, missing claims)', () => {
  let seed = 7;
  // The high bits: the low bits of this generator repeat with short periods.
  const random = (n: number) => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31), Math.floor((seed / 2 ** 31) * n));
  const pick = <T>(list: readonly T[]): T => list[random(list.length)]!;
  // Names and values that an object, unlike a Map, would read through its prototype; built as own properties (fromEntries).
  const NAMES = ['a', 'b', '__proto__', 'constructor'], VALUES = ['x', 'y', 'xy', '1', 'true', '__proto__', 'constructor'], PATTERNS = [...VALUES, 'x*', '*y', '*'];
  const inTurn = (rules: readonly Rule[], claims: Claims) => {
    const admits = (rule: Rule) => Object.keys(rule).every((n) => [rule[n]!].flat().some((p) => claimText(claims, n) !== undefined && glob(p, claimText(claims, n)!)));
    const rule = rules.findIndex(admits);
    if (rule >= 0) return { allowed: true, rule };
    const first = rules[0];
    return { allowed: false, claim: first ? Object.keys(first).find((n) => !admits({ [n]: first[n]! }))! : '' };
  };
  const disagreements: string[] = [];
  for (let i = 0; i < 20_000; i++) {
    const rules = Array.from({ length: random(6) }, (): Rule => {
      const entries = NAMES.filter(() => random(3) > 0).map((n) => [n, random(3) === 0 ? [pick(PATTERNS), pick(PATTERNS)] : pick(PATTERNS)]);
      return Object.fromEntries(entries.length > 0 ? entries : [['a', pick(PATTERNS)]]) as Rule;
    });
    const claims = Object.fromEntries(NAMES.filter(() => random(5) > 0).map((n) => [n, pick([...VALUES, 1, true, null])]));
    const got = evaluate(compilePolicy(rules), verified(claims));
    const want = inTurn(rules, verified(claims));
    if (JSON.stringify(got) !== JSON.stringify(want)) disagreements.push(`${JSON.stringify(rules)} ${JSON.stringify(claims)}: ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
  assert.deepEqual(disagreements.slice(0, 5), []);
});

test('a policy with no rules admits no one', () => {
  assert.equal(evaluate(compilePolicy([]), MAIN).allowed, false);
});

const VALUE_KINDS: [what: string, claims: Claims, rule: Rule, allowed: boolean][] = [
  ['a number is compared as its text', verified({ repository_id: 123 }), { repository_id: '123' }, true],
  ['a number matches a glob on its text', verified({ repository_id: 12345 }), { repository_id: '123*' }, true],
  ['a number does not match different text', verified({ repository_id: 1234 }), { repository_id: '123' }, false],
  ['a boolean is compared as its text', verified({ repository_id: '1', ref_protected: true }), { repository_id: '1', ref_protected: 'true' }, true],
  ['false is compared as "false"', verified({ repository_id: '1', ref_protected: false }), { repository_id: '1', ref_protected: 'true' }, false],
  ['an array claim never matches, even "*"', verified({ repository: ['octo-org/octo-repo'] }), { repository: '*' }, false],
  ['an array claim never matches its own text', verified({ repository: ['octo-org/octo-repo'] }), { repository: 'octo-org/octo-repo' }, false],
  ['an object claim never matches', verified({ repository: { name: 'octo-org/octo-repo' } }), { repository: '*' }, false],
  ['an object claim never matches its text', verified({ repository: {} }), { repository: '[object Object]' }, false],
  ['a null claim never matches', verified({ repository: null }), { repository: '*' }, false],
  ['a null claim never matches "null"', verified({ repository: null }), { repository: 'null' }, false],
  ['a missing claim never matches, even "*"', verified({}), { repository: '*' }, false],
  ['a missing claim never matches "undefined"', verified({}), { repository: 'undefined' }, false],
  ['an empty-string claim matches "*"', verified({ repository: '' }), { repository: '*' }, true],
];

for (const [what, claims, rule, allowed] of VALUE_KINDS) {
  test(`evaluate: ${what}`, () => {
    assert.equal(evaluate(compilePolicy([rule]), claims).allowed, allowed);
  });
}

for (const name of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
  test(`a rule on "${name}" never matches through the prototype of verified claims or of a plain object`, () => {
    const rule = JSON.parse(`{${JSON.stringify(name)}: "*"}`) as Rule;
    const policy = compilePolicy([rule]);
    assert.deepEqual(evaluate(policy, MAIN), { allowed: false, claim: name });
    assert.deepEqual(evaluate(policy, { repository: 'octo-org/octo-repo' }), { allowed: false, claim: name });
    assert.deepEqual(evaluate(policy, JSON.parse('{"repository":"octo-org/octo-repo"}') as Claims), { allowed: false, claim: name });
  });
}

test('claims parsed from JSON with "__proto__" keep it an ordinary own claim: its object never lends the claims a repository', () => {
  const claims = JSON.parse('{"__proto__": {"repository": "octo-org/octo-repo", "ref": "refs/heads/main"}, "sub": "x"}') as Claims;
  assert.deepEqual(evaluate(compilePolicy([{ repository: 'octo-org/octo-repo' }]), claims), { allowed: false, claim: 'repository' });
  assert.deepEqual(evaluate(compilePolicy([{ ref: '*' }]), claims), { allowed: false, claim: 'ref' });
  // The own "__proto__" holds an object, and objects never match.
  assert.deepEqual(evaluate(compilePolicy([JSON.parse('{"__proto__": "*"}') as Rule]), claims), { allowed: false, claim: '__proto__' });
  assert.deepEqual(evaluate(compilePolicy([JSON.parse('{"__proto__": "*"}') as Rule]), verified(claims)), { allowed: false, claim: '__proto__' });
});

test('an own string claim named "__proto__" is compared like any other claim', () => {
  const claims = verified(JSON.parse('{"__proto__": "octo", "repository_id": "1"}') as Record<string, unknown>);
  const policy = compilePolicy([JSON.parse('{"repository_id": "1", "__proto__": "octo"}') as Rule]);
  assert.deepEqual(evaluate(policy, claims), { allowed: true, rule: 0 });
  const other = compilePolicy([JSON.parse('{"repository_id": "1", "__proto__": "evil"}') as Rule]);
  assert.deepEqual(evaluate(other, claims), { allowed: false, claim: '__proto__' });
});

test('an attacker-chosen branch name full of stars and regex syntax is only ever text', () => {
  const policy = compilePolicy([{ repository: 'octo-org/octo-repo', ref: 'refs/heads/main' }]);
  for (const ref of ['*', 'refs/heads/*', '.*', 'refs/heads/main|.*', 'refs/heads/main\n']) {
    assert.equal(evaluate(policy, verified({ repository: 'octo-org/octo-repo', ref })).allowed, false, ref);
  }
});

// --- checkRule -------------------------------------------------------------------

const PIN = /^does not pin who may come in: constrain one of /;

test('checkRule refuses a rule that is not an object', () => {
  for (const rule of [null, undefined, 'octo-org/octo-repo', 42, true, [], [{ repository: 'octo-org/octo-repo' }]]) {
    assert.deepEqual(checkRule(rule, false), [['', 'expected an object of claim name to pattern(s)']], JSON.stringify(rule));
  }
});

test('checkRule refuses an empty rule', () => {
  assert.deepEqual(checkRule({}, false), [['', 'expected at least one claim']]);
});

const BAD_VALUES: [what: string, value: unknown][] = [
  ['a number', 123],
  ['a boolean', true],
  ['null', null],
  ['an object', { pattern: 'octo-org/*' }],
  ['an empty array', []],
  ['an array holding a number', ['octo-org/octo-repo', 1]],
  ['an array holding null', [null]],
  ['a nested array', [['octo-org/octo-repo']]],
];

for (const [what, value] of BAD_VALUES) {
  test(`checkRule refuses ${what} as a claim's pattern, naming the claim`, () => {
    assert.deepEqual(checkRule({ repository: value }, false), [['repository', 'expected a string or an array of strings']]);
  });
}

test('checkRule refuses empty patterns, alone or among alternatives', () => {
  assert.deepEqual(checkRule({ repository: '' }, false), [['repository', 'expected non-empty patterns']]);
  assert.deepEqual(checkRule({ repository: ['octo-org/octo-repo', ''] }, false), [['repository', 'expected non-empty patterns']]);
});

test('checkRule reports every bad claim of a rule at once', () => {
  assert.deepEqual(checkRule({ repository: 1, ref: '', sub: ['x', 2] }, false), [
    ['repository', 'expected a string or an array of strings'],
    ['ref', 'expected non-empty patterns'],
    ['sub', 'expected a string or an array of strings'],
  ]);
});

const UNPINNED: [what: string, rule: Record<string, unknown>][] = [
  ['aud alone', { aud: 'api://ActionsOIDCGateway' }],
  ['ref alone', { ref: 'refs/heads/main' }],
  ['aud and ref', { aud: 'api://ActionsOIDCGateway', ref: ['refs/heads/main'] }],
  ['workflow, event_name and environment', { workflow: 'deploy', event_name: 'push', environment: 'prod' }],
  ['repository "*"', { repository: '*' }],
  ['repository "*/*"', { repository: '*/*' }],
  ['repository "*/octo-repo"', { repository: '*/octo-repo' }],
  ['repository "octo*"', { repository: 'octo*' }],
  ['repository "octo-org*"', { repository: 'octo-org*' }],
  ['repository "octo*/octo-repo"', { repository: 'octo*/octo-repo' }],
  ['repository "/*"', { repository: '/*' }],
  ['repository with one pinned and one open alternative', { repository: ['octo-org/octo-repo', '*'] }],
  ['repository_owner "octo-*"', { repository_owner: 'octo-*' }],
  ['repository_owner "*"', { repository_owner: '*' }],
  ['repository_id "12*"', { repository_id: '12*' }],
  ['repository_owner_id "*"', { repository_owner_id: '*' }],
  ['enterprise "*"', { enterprise: '*' }],
  ['enterprise_id "1*"', { enterprise_id: '1*' }],
  ['sub "repo:*"', { sub: 'repo:*' }],
  ['sub "*"', { sub: '*' }],
  ['sub "repo:octo*"', { sub: 'repo:octo*' }],
  ['sub "repo:/*"', { sub: 'repo:/*' }],
  ['sub "*:ref:refs/heads/main"', { sub: '*:ref:refs/heads/main' }],
  ['workflow_ref "*/.github/workflows/deploy.yml@refs/heads/main"', { workflow_ref: '*/.github/workflows/deploy.yml@refs/heads/main' }],
  ['job_workflow_ref "*"', { job_workflow_ref: '*' }],
  ['iss alone', { iss: 'https://token.actions.githubusercontent.com' }],
];

for (const [what, rule] of UNPINNED) {
  test(`checkRule refuses a rule on ${what}: it does not pin who may come in`, () => {
    const problems = checkRule(rule, false);
    assert.equal(problems.length, 1, JSON.stringify(problems));
    assert.equal(problems[0]![0], '');
    assert.match(problems[0]![1], PIN);
  });
}

const PINNED: [what: string, rule: Record<string, unknown>][] = [
  ['repository "octo-org/octo-repo"', { repository: 'octo-org/octo-repo' }],
  ['repository "octo-org/*"', { repository: 'octo-org/*' }],
  ['repository "octo-org/octo-*"', { repository: 'octo-org/octo-*' }],
  ['repository alternatives each spelling out the owner', { repository: ['octo-org/a', 'other-org/*'] }],
  ['repository_id "123"', { repository_id: '123' }],
  ['repository_owner "octo-org"', { repository_owner: 'octo-org' }],
  ['repository_owner_id "456"', { repository_owner_id: '456' }],
  ['enterprise "octo-ent"', { enterprise: 'octo-ent' }],
  ['enterprise_id "7"', { enterprise_id: '7' }],
  ['sub "repo:octo-org/octo-repo:ref:refs/heads/main"', { sub: 'repo:octo-org/octo-repo:ref:refs/heads/main' }],
  ['sub "repo:octo-org/*"', { sub: 'repo:octo-org/*' }],
  ['workflow_ref "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main"', { workflow_ref: 'octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main' }],
  ['job_workflow_ref "octo-org/wf/.github/workflows/deploy.yml@*"', { job_workflow_ref: 'octo-org/wf/.github/workflows/deploy.yml@*' }],
  ['aud and ref with repository "octo-org/octo-repo"', { aud: '*', ref: 'refs/*', repository: 'octo-org/octo-repo' }],
  ['an open repository and an exact repository_id', { repository: '*', repository_id: '123' }],
];

for (const [what, rule] of PINNED) {
  test(`checkRule accepts a rule on ${what}`, () => {
    assert.deepEqual(checkRule(rule, false), []);
  });
}

const ISSUER_PINS: [what: string, rule: Record<string, unknown>, problems: [string, string][]][] = [
  ['without iss', { repository: 'octo-org/octo-repo' }, [['iss', 'with more than one issuer, every rule must name its issuer exactly']]],
  ['with iss "*"', { iss: '*', repository: 'octo-org/octo-repo' }, [['iss', 'with more than one issuer, every rule must name its issuer exactly']]],
  ['with iss "https://*"', { iss: 'https://*', repository: 'octo-org/octo-repo' }, [['iss', 'with more than one issuer, every rule must name its issuer exactly']]],
  ['with iss "https://token.actions.githubusercontent.com*"', { iss: 'https://token.actions.githubusercontent.com*', repository: 'octo-org/octo-repo' }, [['iss', 'with more than one issuer, every rule must name its issuer exactly']]],
  ['with one exact and one open iss', { iss: ['https://token.actions.githubusercontent.com', '*'], repository: 'octo-org/octo-repo' }, [['iss', 'with more than one issuer, every rule must name its issuer exactly']]],
  ['with an exact iss', { iss: 'https://token.actions.githubusercontent.com', repository: 'octo-org/octo-repo' }, []],
  ['with exact iss alternatives', { iss: ['https://token.actions.githubusercontent.com', 'https://ghes.example.com/_services/token'], repository: 'octo-org/octo-repo' }, []],
];

for (const [what, rule, problems] of ISSUER_PINS) {
  test(`with more than one issuer, checkRule ${problems.length ? 'refuses' : 'accepts'} a rule ${what}`, () => {
    assert.deepEqual(checkRule(rule, true), problems);
  });
}

test('with one issuer, a rule need not name iss', () => {
  assert.deepEqual(checkRule({ repository: 'octo-org/octo-repo' }, false), []);
});

test('with more than one issuer, a rule naming only its issuer still pins no one, and a rule naming neither gets both problems', () => {
  const problems = checkRule({ iss: 'https://token.actions.githubusercontent.com' }, true);
  assert.equal(problems.length, 1);
  assert.match(problems[0]![1], PIN);
  const open = checkRule({ ref: 'refs/heads/main' }, true);
  assert.deepEqual(open.map(([claim]) => claim), ['', 'iss']);
});

// --- warnings: valid rules that trust what can change hands -----------------

const NAME_SUB = 'repo:octo-org/octo-repo:ref:refs/heads/main';
const ID_SUB = 'repo:octo-org@456/octo-repo@123:ref:refs/heads/main';
const JOB = 'octo-org/wf/.github/workflows/deploy.yml@refs/heads/main';

// Each row: the rule, and the claims warned about with a text each warning must contain.
const WARNINGS: [what: string, rule: Rule, warned: [claim: string, mentions: string][]][] = [
  ['repository without repository_id', { repository: 'octo-org/octo-repo' }, [['repository', 'repository_id']]],
  ['repository with repository_id', { repository: 'octo-org/octo-repo', repository_id: '123' }, []],
  ['repository_owner without repository_owner_id', { repository_owner: 'octo-org' }, [['repository_owner', 'repository_owner_id']]],
  ['repository_owner with repository_owner_id', { repository_owner: 'octo-org', repository_owner_id: '456' }, []],
  ['repository and repository_owner, no ids', { repository: 'octo-org/a', repository_owner: 'octo-org' }, [['repository', 'repository_id'], ['repository_owner', 'repository_owner_id']]],
  ['repository_id alone', { repository_id: '123' }, []],
  ['job_workflow_ref alone', { job_workflow_ref: JOB }, [['job_workflow_ref', 'repository_owner_id']]],
  ...['repository_id', 'repository_owner_id'].map((pin): [string, Rule, [string, string][]] => [`job_workflow_ref with ${pin}`, { job_workflow_ref: JOB, [pin]: '1' }, []]),
  ['job_workflow_ref with repository (warned for its own name only)', { job_workflow_ref: JOB, repository: 'octo-org/a' }, [['repository', 'repository_id']]],
  ['job_workflow_ref with an id-form and a name-form sub', { job_workflow_ref: JOB, sub: [NAME_SUB, ID_SUB] }, []],
  ['a name-form sub', { sub: NAME_SUB }, [['sub', '2026-07-15']]],
  ['name-form sub alternatives', { sub: ['repo:octo-org/a:*', 'repo:octo-org/b:*'] }, [['sub', 'repo:OWNER@ID/REPO@ID:']]],
  ['a name-form sub over the owner', { repository_owner_id: '456', sub: 'repo:octo-org/*' }, [['sub', '2026-07-15']]],
  ['an id-form sub', { sub: ID_SUB }, [['sub', 'repo:OWNER/REPO:']]],
  ['an id-form sub over the owner', { sub: 'repo:octo-org@456/*' }, [['sub', 'repo:OWNER/REPO:']]],
  ['a sub listing both formats', { sub: [NAME_SUB, ID_SUB] }, []],
  ['a sub listing both formats, an @ after the first /', { sub: ['repo:octo-org/octo-repo:ref:refs/heads/x@y', ID_SUB] }, []],
  // A pattern with a * before the first / (or no / at all) matches subjects of both formats.
  ['a sub of "repo:*" beside repository_id', { repository_id: '123', sub: 'repo:*' }, []],
  ['a sub open over the owner\'s spelling, beside repository_id', { repository_id: '123', sub: 'repo:octo-org*:environment:production' }, []],
  // A customised subject template (GitHub's OIDC sub customisation) is in neither "repo:" format.
  ['a customised sub of ids', { repository_id: '123', sub: 'repository_owner_id:456:repository_id:123:environment:production' }, []],
];

for (const [what, rule, warned] of WARNINGS) {
  test(`ruleWarnings ${warned.length ? `warns about ${warned.map(([c]) => c).join(' and ')} for` : 'says nothing about'} a rule on ${what}`, () => {
    assert.deepEqual(checkRule(rule, false), [], 'the rule is valid: a warning is never a problem');
    const warnings = ruleWarnings(rule);
    assert.deepEqual(warnings.map(([claim]) => claim).sort(), warned.map(([claim]) => claim).sort(), JSON.stringify(warnings));
    for (const [claim, mentions] of warned) assert.ok(warnings.find(([c]) => c === claim)![1].includes(mentions), `the ${claim} warning mentions ${mentions}`);
  });
}

test('sub patterns with a * before the first / match subjects of both formats, so "matches only one format" would be untrue of them', () => {
  for (const pattern of ['repo:*', 'repo:octo-org*:environment:production']) {
    for (const sub of ['repo:octo-org/octo-repo:environment:production', 'repo:octo-org@456/octo-repo@123:environment:production']) assert.ok(glob(pattern, sub), `${pattern} matches ${sub}`);
  }
});

test('the name-form and id-form sub warnings each name the format the rule misses, and nothing the rule itself holds', () => {
  const [[, name]] = ruleWarnings({ sub: NAME_SUB }) as [[string, string]];
  const [[, id]] = ruleWarnings({ sub: ID_SUB }) as [[string, string]];
  assert.match(name, /repo:OWNER@ID\/REPO@ID:/);
  assert.match(id, /repo:OWNER\/REPO:/);
  assert.notEqual(name, id);
  for (const text of [name, id]) assert.ok(!text.includes('octo-org'), 'no claim value in the text');
});
