import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRouter, parseTarget } from '../src/router.ts';

// --- parseTarget: accepted ---------------------------------------------------

const ACCEPTED: [target: string, path: string, query: string][] = [
  ['/', '/', ''],
  ['/artifacts', '/artifacts', ''],
  ['/artifacts/', '/artifacts/', ''],
  ['/artifacts/x/y.tar.gz', '/artifacts/x/y.tar.gz', ''],
  ['/a?', '/a', '?'],
  ['/a?x=1&y=2', '/a', '?x=1&y=2'],
  ['/a?x=1?y=2', '/a', '?x=1?y=2'],
  ['/?x', '/', '?x'],
  ['/a/b?next=%2Fadmin%2F..%2F', '/a/b', '?next=%2Fadmin%2F..%2F'],
  ['/a?path=../../etc/passwd', '/a', '?path=../../etc/passwd'],
  ['/a?x=a\\b', '/a', '?x=a\\b'],
  ['/.well-known/x', '/.well-known/x', ''],
  ['/a/.b/..c/c../...', '/a/.b/..c/c../...', ''],
  ['/a%20b', '/a%20b', ''],
  ['/caf%C3%A9', '/caf%C3%A9', ''],
  ['/a/%C3%A9', '/a/%C3%A9', ''],
  ['/a-b_c~d!$&\'()*+,=:@', '/a-b_c~d!$&\'()*+,=:@', ''],
];

for (const [target, path, query] of ACCEPTED) {
  test(`parseTarget accepts ${JSON.stringify(target)} as path ${JSON.stringify(path)} and query ${JSON.stringify(query)}`, () => {
    assert.deepEqual(parseTarget(target), { path, query });
  });
}

// --- parseTarget: refused ------------------------------------------------------

const REFUSED: [why: string, target: string][] = [
  ['an absolute-form target', 'http://host/x'],
  ['an absolute-form https target', 'https://host/x'],
  ['a network-path reference', '//host/x'],
  ['a network-path reference with a query', '//host?x'],
  ['the asterisk form', '*'],
  ['an empty target', ''],
  ['an authority-form target', 'host:443'],
  ['a relative path', 'a/b'],
  ['a query alone', '?x'],
  ['a dot segment', '/a/./b'],
  ['a trailing dot segment', '/a/.'],
  ['a leading dot segment', '/./a'],
  ['a dot-dot segment', '/a/../b'],
  ['a trailing dot-dot segment', '/a/..'],
  ['a leading dot-dot segment', '/../etc/passwd'],
  ['a dot-dot segment before a query', '/a/..?x'],
  ['an encoded dot %2e', '/a/%2e%2e/b'],
  ['an encoded dot %2E', '/a/%2E%2E/b'],
  ['one encoded dot beside a plain one', '/a/.%2e/b'],
  ['an encoded dot inside a name', '/a/b%2ec'],
  ['an encoded slash %2f', '/a%2fb'],
  ['an encoded slash %2F', '/a%2Fb'],
  ['an encoded backslash %5c', '/a%5cb'],
  ['an encoded backslash %5C', '/a%5Cb'],
  ['an encoded NUL', '/a%00b'],
  ['a fragment', '/admin#'],
  ['a fragment holding a path', '/admin#/x'],
  ['a fragment after a query', '/a?x=1#y'],
  ['an encoded line feed', '/a%0ab'],
  ['an encoded carriage return', '/a%0Db'],
  ['an encoded unit separator', '/a%1fb'],
  ['an encoded DEL %7f', '/a%7fb'],
  ['an encoded DEL %7F', '/a%7Fb'],
  ['a malformed escape %zz', '/a%zz'],
  ['a malformed escape %g0', '/a%g0'],
  ['a half escape at the end', '/a%2'],
  ['a half escape before a query', '/a%2?x'],
  ['a trailing percent', '/a%'],
  ['a percent before a slash', '/a%/b'],
  ['an encoded unreserved letter, which would dodge a route', '/%61dmin/secret'],
  ['an encoded digit', '/a/%31'],
  ['an encoded tilde', '/a/%7e'],
  ['an encoded percent, which decodes twice into a dodge', '/%2561dmin'],
  ['a path parameter, which servlet containers strip', '/admin;x/secret'],
  ['a dot-dot with a path parameter', '/a/..;/b'],
  ['a backslash', '/a\\b'],
  ['a backslash climbing', '/a\\..\\b'],
  ['a leading backslash', '/\\host/x'],
  ['a raw NUL', '/a\u0000b'],
  ['a raw tab', '/a\tb'],
  ['a raw line feed', '/a\nb'],
  ['a raw carriage return', '/a\rb'],
  ['a raw control byte in the query', '/a?x=\u0001'],
  ['a raw line feed in the query', '/a?x=\r\nx-evil: 1'],
  ['a space', '/a b'],
  ['a space in the query', '/a?x=a b'],
  ['a DEL', '/a\u007fb'],
  ['a Latin-1 character', '/caf\u00e9'],
  ['a non-ASCII character in the query', '/a?x=\u00e9'],
  ['an emoji', '/\u{1f680}'],
  ['a full-width solidus', '/a\uff0fb'],
  ['an empty inner segment', '/a//b'],
  ['an empty inner segment at the end', '/a/b//'],
  ['three slashes', '///a'],
];

for (const [why, target] of REFUSED) {
  test(`parseTarget refuses ${why}: ${JSON.stringify(target)}`, () => {
    assert.equal(parseTarget(target), undefined);
  });
}

// --- createRouter ------------------------------------------------------------------

interface TestRoute {
  readonly path: string;
  readonly upstreamPath: string;
  readonly name: string;
}

const r = (name: string, path: string, upstreamPath = '/') => ({ name, path, upstreamPath });

function routeOf(routes: readonly TestRoute[], path: string): [name: string, upstreamPath: string] | 'ambiguous' | undefined {
  const found = createRouter(routes)(path);
  return typeof found === 'object' ? [found.route.name, found.upstreamPath] : found;
}

test('the longest matching prefix wins, whatever the order of the routes', () => {
  const routes = [r('a', '/a', '/A'), r('ab', '/a/b', '/AB'), r('abc', '/a/b/c', '/ABC')];
  for (const order of [routes, [...routes].reverse()]) {
    assert.deepEqual(routeOf(order, '/a/b/c/d'), ['abc', '/ABC/d']);
    assert.deepEqual(routeOf(order, '/a/b/c'), ['abc', '/ABC']);
    assert.deepEqual(routeOf(order, '/a/b/x'), ['ab', '/AB/x']);
    assert.deepEqual(routeOf(order, '/a/bc'), ['a', '/A/bc']);
    assert.deepEqual(routeOf(order, '/a/x/b/c'), ['a', '/A/x/b/c']);
  }
});

const BOUNDARIES: [path: string, matches: boolean][] = [
  ['/artifacts', true],
  ['/artifacts/', true],
  ['/artifacts/x', true],
  ['/artifacts/x/y', true],
  ['/artifactsx', false],
  ['/artifacts-old/x', false],
  ['/artifact', false],
  ['/', false],
  ['/other/artifacts', false],
];

for (const [path, matches] of BOUNDARIES) {
  test(`the route /artifacts ${matches ? 'matches' : 'does not match'} ${path}: prefixes end at a segment boundary`, () => {
    const found = routeOf([r('artifacts', '/artifacts')], path);
    assert.equal(found?.[0], matches ? 'artifacts' : undefined);
  });
}

test('a root route "/" catches every path no longer prefix claims, and keeps the whole path', () => {
  const routes = [r('root', '/', '/'), r('artifacts', '/artifacts', '/store/')];
  assert.deepEqual(routeOf(routes, '/'), ['root', '/']);
  assert.deepEqual(routeOf(routes, '/x'), ['root', '/x']);
  assert.deepEqual(routeOf(routes, '/x/y/'), ['root', '/x/y/']);
  assert.deepEqual(routeOf(routes, '/artifactsx'), ['root', '/artifactsx']);
  assert.deepEqual(routeOf(routes, '/artifacts/a'), ['artifacts', '/store/a']);
});

test('a root route onto an upstream sub-path prefixes every path with it', () => {
  const routes = [r('root', '/', '/api/')];
  assert.deepEqual(routeOf(routes, '/'), ['root', '/api/']);
  assert.deepEqual(routeOf(routes, '/x'), ['root', '/api/x']);
  const bare = [r('root', '/', '/api')];
  assert.deepEqual(routeOf(bare, '/'), ['root', '/api/']);
  assert.deepEqual(routeOf(bare, '/x/'), ['root', '/api/x/']);
});

test('without a root route, an unrouted path finds nothing', () => {
  const routes = [r('artifacts', '/artifacts')];
  assert.equal(routeOf(routes, '/'), undefined);
  assert.equal(routeOf(routes, '/x'), undefined);
  assert.equal(routeOf([], '/artifacts'), undefined);
});

// Route "/artifacts" (config "/artifacts/" or "/artifacts") onto each upstream path.
const REWRITES: [upstreamPath: string, request: string, upstream: string][] = [
  ['/', '/artifacts', '/'],
  ['/', '/artifacts/', '/'],
  ['/', '/artifacts/x', '/x'],
  ['/', '/artifacts/x/', '/x/'],
  ['/', '/artifacts/x/y', '/x/y'],
  ['/v1/', '/artifacts', '/v1/'],
  ['/v1/', '/artifacts/', '/v1/'],
  ['/v1/', '/artifacts/x', '/v1/x'],
  ['/v1/', '/artifacts/x/', '/v1/x/'],
  ['/v1', '/artifacts', '/v1'],
  ['/v1', '/artifacts/', '/v1/'],
  ['/v1', '/artifacts/x', '/v1/x'],
  ['/v1', '/artifacts/x/', '/v1/x/'],
  ['/v1/store', '/artifacts/x/y', '/v1/store/x/y'],
  ['/v1/store/', '/artifacts/x/y', '/v1/store/x/y'],
];

for (const [upstreamPath, request, upstream] of REWRITES) {
  test(`the route /artifacts onto upstream path ${upstreamPath} sends ${request} upstream as ${upstream}`, () => {
    assert.deepEqual(routeOf([r('artifacts', '/artifacts', upstreamPath)], request), ['artifacts', upstream]);
  });
}

test('a trailing slash on the request picks the same route as without it, and is kept upstream', () => {
  const routes = [r('a', '/a', '/A'), r('ab', '/a/b', '/AB')];
  assert.deepEqual(routeOf(routes, '/a/b/'), ['ab', '/AB/']);
  assert.deepEqual(routeOf(routes, '/a/b'), ['ab', '/AB']);
  assert.deepEqual(routeOf(routes, '/a/'), ['a', '/A/']);
  assert.deepEqual(routeOf(routes, '/a/c/'), ['a', '/A/c/']);
});

test('the router hands back the route object it was given', () => {
  const route = r('artifacts', '/artifacts', '/');
  const found = createRouter([route])('/artifacts/x');
  assert.equal(typeof found === 'object' && found.route, route);
});

test('a path that names its route in another case is ambiguous, since IIS and Express serve /ADMIN as /admin', () => {
  const routes = [r('root', '/'), r('admin', '/admin', '/A'), r('files', '/Files', '/F')];
  for (const path of ['/ADMIN', '/Admin/x', '/aDmin/', '/files/x', '/FILES', '/FiLeS/a']) assert.equal(routeOf(routes, path), 'ambiguous', path);
  // Case elsewhere in the path does not change the route: it is passed as sent.
  assert.deepEqual(routeOf(routes, '/admin/Report.PDF'), ['admin', '/A/Report.PDF']);
  assert.deepEqual(routeOf(routes, '/Files/Big.TAR'), ['files', '/F/Big.TAR']);
  assert.deepEqual(routeOf(routes, '/Other/X'), ['root', '/Other/X']);
  assert.deepEqual(routeOf(routes, '/administrator'), ['root', '/administrator']);
  // Without a root route, a path in another case would have found no route anyway: it is refused all the same.
  assert.equal(routeOf([r('admin', '/admin')], '/ADMIN/x'), 'ambiguous');
  assert.equal(routeOf([r('admin', '/admin')], '/other'), undefined);
});
