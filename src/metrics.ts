// Prometheus text format (0.0.4), written by hand. Counters are fed from the audit lines themselves, so a reason reads
// the same in the log and in a label; what the gateway holds (keys, open tunnels) is read at scrape time.
import type { Log } from './audit.js';
import type { KeySetStatus } from './jwks.js';

type Labels = Readonly<Record<string, string>>;

/** What the gateway holds at scrape time. */
export interface Snapshot {
  readonly issuers: ReadonlyMap<string, KeySetStatus>;
  readonly tunnelsOpen: number;
  readonly ready: boolean;
  readonly now: number;
  readonly tokenCache: { readonly hits: number; readonly misses: number };
}

const PREFIX = 'oidc_gateway_';
/** Request duration buckets, in seconds. */
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const COUNTERS = {
  requests_total: 'Finished requests and tunnels by kind, route, decision and reason.',
  upstream_errors_total: 'Upstream failures by reason.',
  jwks_fetches_total: 'Key set fetches by issuer and result.',
  bytes_total: 'Body and tunnel bytes: in from clients, out to clients.',
} as const;

export function createMetrics(): { observe: Log; render(held: Snapshot): string } {
  const counters = new Map<keyof typeof COUNTERS, Map<string, number>>(Object.keys(COUNTERS).map((n) => [n as keyof typeof COUNTERS, new Map()]));
  const durations = new Map<string, { buckets: number[]; sum: number; count: number }>();
  // Label text is escaped and joined once per distinct label set (a bounded number: routes times reasons), not per line.
  const labelTexts = new Map<string, string>();
  const textOf = (labels: Labels) => {
    let key = '';
    for (const name in labels) key += `${name}\n${labels[name]}\n`;
    return labelTexts.get(key) ?? labelTexts.set(key, labelText(labels)).get(key)!;
  };
  const add = (name: keyof typeof COUNTERS, labels: Labels, by = 1) => {
    const series = counters.get(name)!, key = textOf(labels);
    series.set(key, (series.get(key) ?? 0) + by);
  };

  // Counts one audit line; mount it in front of the log sink, so every line counts whatever the log level.
  function observe(line: Record<string, unknown>): void {
    const kind = String(line.kind);
    if (kind === 'keys' && line.result !== 'key_skipped') add('jwks_fetches_total', { issuer: String(line.issuer), result: String(line.result) });
    if (kind !== 'request' && kind !== 'forward' && kind !== 'tunnel') return;
    const route = String(line.route ?? ''), reason = String(line.reason ?? '');
    add('requests_total', { kind, route, decision: String(line.decision), reason });
    if (reason.startsWith('upstream_')) add('upstream_errors_total', { reason });
    add('bytes_total', { direction: 'in' }, Number(line.bytesIn ?? line.bytesUp ?? 0));
    add('bytes_total', { direction: 'out' }, Number(line.bytesOut ?? line.bytesDown ?? 0));
    // A tunnel's life is not a request's duration: it would swamp the buckets.
    if (kind === 'tunnel') return;
    const key = textOf({ route });
    const h = durations.get(key) ?? durations.set(key, { buckets: BUCKETS.map(() => 0), sum: 0, count: 0 }).get(key)!;
    const seconds = Number(line.ms) / 1000;
    for (let i = 0; i < BUCKETS.length; i++) if (seconds <= BUCKETS[i]!) h.buckets[i]!++;
    h.sum += seconds;
    h.count++;
  }

  function render(held: Snapshot): string {
    const out: string[] = [];
    // `labels` may start with a suffix: the histogram's _bucket, _sum and _count series.
    const metric = (name: string, type: string, help: string, series: Iterable<readonly [string, number]>) => {
      out.push(`# HELP ${PREFIX}${name} ${help}`, `# TYPE ${PREFIX}${name} ${type}`);
      for (const [labels, value] of series) out.push(`${PREFIX}${name}${labels} ${value}`);
    };
    for (const [name, series] of counters) metric(name, 'counter', COUNTERS[name], series);
    const histogram = [...durations].flatMap(([labels, h]) => {
      const le = (bound: number | string) => `_bucket${labels.slice(0, -1)},le="${bound}"}`;
      return [...BUCKETS.map((b, i) => [le(b), h.buckets[i]!] as const), [le('+Inf'), h.count], [`_sum${labels}`, h.sum], [`_count${labels}`, h.count]] as const;
    });
    metric('request_duration_seconds', 'histogram', 'Time from the first byte of a request to its audit line, by route.', histogram);
    const issuers = [...held.issuers].map(([issuer, k]) => [labelText({ issuer }), k] as const);
    metric('jwks_keys', 'gauge', 'Usable keys held, by issuer.', issuers.map(([l, k]) => [l, k.keys]));
    const age = (k: KeySetStatus) => (k.lastGoodFetch === undefined ? -1 : (held.now - k.lastGoodFetch) / 1000);
    metric('jwks_last_good_fetch_age_seconds', 'gauge', 'Seconds since the last good key set fetch, by issuer (-1: none yet).', issuers.map(([l, k]) => [l, age(k)]));
    metric('tunnels_open', 'gauge', 'CONNECT tunnels open now.', [['', held.tunnelsOpen]]);
    metric('ready', 'gauge', '1 when /readyz answers 200.', [['', held.ready ? 1 : 0]]);
    metric('token_cache_hits_total', 'counter', 'Tokens found in the verified-token cache.', [['', held.tokenCache.hits]]);
    metric('token_cache_misses_total', 'counter', 'Tokens verified in full (the cache on).', [['', held.tokenCache.misses]]);
    return `${out.join('\n')}\n`;
  }

  return { observe, render };
}

/** `{a="x",b="y"}`, escaped as the text format requires. */
function labelText(labels: Labels): string {
  const escape = (v: string) => v.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n');
  return `{${Object.entries(labels).map(([k, v]) => `${k}="${escape(v)}"`).join(',')}}`;
}
