// Summarises a V8 .cpuprofile (what `node --cpu-prof` writes, as BENCH_PROFILE=DIR asks of each gateway and bare proxy on
// Node): the functions with the most self time, merged by name and location. Also runnable on its own:
//   node --import tsx test/bench/profile.ts FILE.cpuprofile [TOP]
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

function where(url: string, line: number): string {
  if (url === '') return '';
  const path = url.startsWith('file://') ? relative(ROOT, fileURLToPath(url)) : url;
  return `${path}:${line + 1}`;
}

/** The `top` functions by self time, as lines of text; idle time is left out of the percentages. */
export function summarize(file: string, top = 15): string[] {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  let idle = 0;
  profile.samples.forEach((id, i) => {
    const us = profile.timeDeltas[i] ?? 0;
    const frame = byId.get(id)?.callFrame;
    const name = frame ? `${frame.functionName || '(anonymous)'} ${where(frame.url, frame.lineNumber)}`.trim() : '(unknown)';
    total += us;
    if (name === '(idle)') idle += us;
    else self.set(name, (self.get(name) ?? 0) + us);
  });
  const busy = total - idle;
  const lines = [`${(busy / 1e6).toFixed(1)} s busy of ${(total / 1e6).toFixed(1)} s profiled; self time, % of busy:`];
  for (const [name, us] of [...self].sort((x, y) => y[1] - x[1]).slice(0, top)) lines.push(`${((us / busy) * 100).toFixed(1).padStart(5)} %  ${name}`);
  return lines;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [file, top] = process.argv.slice(2);
  if (!file) {
    process.stderr.write('usage: profile.ts FILE.cpuprofile [TOP]\n');
    process.exit(2);
  }
  const n = Number(top ?? 15);
  process.stdout.write(`${summarize(file, Number.isInteger(n) && n > 0 ? n : 15).join('\n')}\n`);
}
