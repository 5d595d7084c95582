// Which route a request target belongs to, and its upstream path. The request line is only read as text, never handed to
// new URL, which lets `http://host/x` or `//host/x` replace the upstream's host and turns `%2e%2e` and `\` into `..` and `/`.

const UNRESERVED = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~';

/** Splits an origin-form target (RFC 9112 §3.2.1) and refuses anything that could climb or confuse. The query is everything from the first "?" on, or ''. */
export function parseTarget(url: string): { readonly path: string; readonly query: string } | undefined {
  if (url.length === 0 || url[0] !== '/' || url.startsWith('//')) return undefined;
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  // Controls, space, DEL and non-ASCII must be percent-encoded. No backslash, no path parameters (servlet containers read
  // "/admin;x/secret" as "/admin/secret"), no fragment (never in a target, RFC 9112 §3.2; URL parsers upstream drop it).
  if (/[\x00-\x20#\x7f-\uffff]/.test(url) || /[\\;]/.test(path)) return undefined;
  for (let i = path.indexOf('%'); i >= 0; i = path.indexOf('%', i + 1)) {
    const hex = path.slice(i + 1, i + 3).toLowerCase();
    if (!/^[0-9a-f]{2}$/.test(hex)) return undefined;
    // Encoded dot, slash, backslash or control byte: an upstream may decode it into a traversal.
    if (hex === '2e' || hex === '2f' || hex === '5c' || hex === '7f' || hex < '20') return undefined;
    // An encoded unreserved character (RFC 3986 §2.3) or "%" itself: "/%61dmin" or "/%2561dmin"
    // would miss the /admin route here and still reach /admin upstream, which decodes.
    if (hex === '25' || UNRESERVED.includes(String.fromCharCode(parseInt(hex, 16)))) return undefined;
  }
  if (path.split('/').some((s, i, all) => i > 0 && (s === '.' || s === '..' || (s === '' && i < all.length - 1)))) return undefined;
  return { path, query: q < 0 ? '' : url.slice(q) };
}

/** A route, and the request path with the route's prefix replaced by the upstream's path. */
export type Routed<R> = { readonly route: R; readonly upstreamPath: string };

/** Longest-prefix routing at segment boundaries, in one map look-up per path segment, matching case-blind: IIS, and Express
 *  by default, serve "/ADMIN" as "/admin", so a path that names its route in another case is 'ambiguous', never sent to "/". */
export function createRouter<R extends { readonly path: string; readonly upstreamPath: string }>(routes: readonly R[]): (path: string) => Routed<R> | 'ambiguous' | undefined {
  const byPrefix = new Map(routes.map((r) => [r.path.toLowerCase(), r]));
  return (path) => {
    const lower = path.toLowerCase();
    let prefix = lower.length > 1 && lower.endsWith('/') ? lower.slice(0, -1) : lower;
    for (;;) {
      const route = byPrefix.get(prefix);
      if (route) {
        if (!path.startsWith(route.path)) return 'ambiguous';
        const rest = path.slice(prefix === '/' ? 0 : prefix.length);
        return { route, upstreamPath: rest === '' ? route.upstreamPath : route.upstreamPath.replace(/\/$/, '') + rest };
      }
      if (prefix === '/') return undefined;
      const cut = prefix.lastIndexOf('/');
      prefix = cut === 0 ? '/' : prefix.slice(0, cut);
    }
  };
}
