// `oidc-gateway explain`: which routes and tunnels a token (or claims) may use and, for each rule that keeps it out, the
// first failing claim with its value and pattern side by side. The gateway's own config, verification and policy code.
import type { GatewayConfig } from './config.js';
import { compileDestinations, parseAuthority } from './destination.js';
import { createKeySet } from './jwks.js';
import { createTokenVerifier, isObject, type Claims } from './jwt.js';
import { compilePolicy, explainPolicy, type RuleMiss } from './policy.js';
import { createRouter, parseTarget } from './router.js';
import { identityOf } from './audit.js';
import { verifierOptions } from './gateway.js';

/** A token to verify (the issuers' keys are fetched once), or parsed JSON claims taken as given; and what to check. */
export interface ExplainInput { readonly token?: string; readonly claims?: unknown; readonly path?: string; readonly connect?: string }

/** Prints the report line by line; resolves with the exit code: 0 admitted, 1 refused, 2 unusable input. */
export async function explain(config: GatewayConfig, input: ExplainInput, print: (line: string) => void): Promise<number> {
  let claims: Claims;
  if (input.token !== undefined) {
    const verify = createTokenVerifier(verifierOptions(config, (i) => createKeySet({ ...i, ...config.keys }).resolveKey));
    const verified = await verify(input.token.trim());
    print(verified.ok ? 'token: verified' : `token: refused: ${verified.reason}`);
    // Keys that could not be had decide nothing: that is not a refusal.
    if (!verified.ok) return verified.reason === 'jwks_unavailable' ? 2 : 1;
    claims = verified.claims;
  } else {
    if (!isObject(input.claims)) return (print('claims: expected a JSON object'), 2);
    print('claims: taken as given, not verified');
    claims = input.claims;
  }
  print(`identity: ${Object.entries(identityOf(claims)).map(([k, v]) => `${k}=${JSON.stringify(v).slice(1, -1)}`).join(' ') || '(none)'}`);

  const routes = config.routes.map((r) => ({ ...r, upstreamPath: '', misses: explainPolicy(compilePolicy(r.allow), claims) }));
  for (const r of routes) report(`route ${r.path}${r.methods ? ` [${r.methods.join(', ')}]` : ''}`, r.misses, print);
  const tunnels = config.tunnels.map((t) => ({ ...t, destinations: compileDestinations(t.to), misses: explainPolicy(compilePolicy(t.allow), claims) }));
  for (const t of tunnels) report(`tunnel to ${t.to.join(', ')}`, t.misses, print);

  if (input.path !== undefined) {
    const target = parseTarget(input.path);
    const routed = target && createRouter(routes)(target.path);
    const allowed = typeof routed === 'object' && admits(routed.route.misses);
    const verdict = !target || routed === 'ambiguous' ? 'refused: bad_request' : !routed ? 'refused: route_unknown' : `${allowed ? 'allowed' : 'refused: claim_mismatch'} (route ${routed.route.path})`;
    print(`path ${input.path}: ${verdict}`);
    return allowed ? 0 : 1;
  }
  if (input.connect !== undefined) {
    const dest = parseAuthority(input.connect);
    const named = dest ? tunnels.filter((t) => t.destinations.matches(dest)) : [];
    const allowed = named.some((t) => admits(t.misses));
    const verdict = !dest ? 'refused: bad_request' : named.length === 0 ? 'refused: connect_target_denied' : allowed ? 'allowed' : 'refused: claim_mismatch';
    // explain resolves nothing: the address checks (loopback, metadata, our own ports) happen when a tunnel opens.
    print(`connect ${input.connect}: ${verdict}${allowed ? ' (the resolved address is checked when the tunnel opens)' : ''}`);
    return allowed ? 0 : 1;
  }
  return [...routes, ...tunnels].some((x) => admits(x.misses)) ? 0 : 1;
}

const admits = (misses: readonly (RuleMiss | null)[]) => misses.includes(null);

function report(what: string, misses: readonly (RuleMiss | null)[], print: (line: string) => void): void {
  print(`${what}: ${admits(misses) ? `allowed by rule ${misses.indexOf(null)}` : 'refused'}`);
  misses.forEach((m, i) => {
    if (!m) return print(`  rule ${i}: admits`);
    const patterns = m.patterns.map((p) => JSON.stringify(p)).join(' or ');
    print(`  rule ${i}: ${m.claim} ${m.value === undefined ? 'is not in the token' : JSON.stringify(m.value)}, needs ${patterns}`);
  });
}
