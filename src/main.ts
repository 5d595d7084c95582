#!/usr/bin/env node
// The only module with side effects: arguments, the config file, listeners, signals.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { jsonLines } from './audit.js';
import { parseConfig, type ConfigResult, type GatewayConfig } from './config.js';
import { explain } from './explain.js';
import { createGateway } from './gateway.js';
import type { Rule } from './policy.js';
import { createListeners } from './server.js';

export const VERSION = '0.1.0';

const USAGE = `Usage: oidc-gateway [--config FILE] [--check]
       oidc-gateway explain [--config FILE] (--token FILE|- | --claims FILE) [--path /x | --connect host:port]

  --config FILE  the JSON config (default: $GATEWAY_CONFIG or ./gateway.config.json)
  --check        validate the config, print a summary and warnings, exit 0 (valid) or 2 (not)
  explain        which routes and tunnels the token (verified; - reads stdin) or the claims (a JSON
                 file, taken as given) may use, and for each rule the first claim that failed;
                 exit 0 if the --path or --connect target (else anything) is admitted, 1 if not, 2 on bad input
  --help, --version

Signals: SIGTERM or SIGINT drain, then exit 0; SIGHUP reloads the config (a bad one is logged and ignored).
`;

const fail: (message: string) => never = (message) => (process.stderr.write(`oidc-gateway: ${message}\n`), process.exit(2));

interface Args { config: string; check: boolean; explain: boolean; token?: string; claims?: string; path?: string; connect?: string }

function parseArgs(argv: string[]): Args {
  const args: Args = { config: process.env.GATEWAY_CONFIG || './gateway.config.json', check: false, explain: argv[0] === 'explain' };
  const valued = { '--config': 'config', '--token': 'token', '--claims': 'claims', '--path': 'path', '--connect': 'connect' } as const;
  for (let i = args.explain ? 1 : 0; i < argv.length; i++) {
    const [a = '', inline] = argv[i]!.startsWith('--') ? argv[i]!.split(/=(.*)/s) : [argv[i]];
    const key = Object.hasOwn(valued, a) ? valued[a as keyof typeof valued] : undefined;
    if (a === '--help' || a === '-h') (process.stdout.write(USAGE), process.exit(0));
    else if (a === '--version') (process.stdout.write(`${VERSION}\n`), process.exit(0));
    else if (a === '--check' && !args.explain && inline === undefined) args.check = true;
    else if (key && (key === 'config' || args.explain) && (inline ?? argv[i + 1]) !== undefined) args[key] = inline ?? argv[++i]!;
    else fail(`unknown or incomplete argument ${JSON.stringify(argv[i])}\n\n${USAGE}`);
  }
  if (args.explain && (args.token === undefined) === (args.claims === undefined)) fail('explain needs exactly one of --token and --claims');
  if (args.path !== undefined && args.connect !== undefined) fail('give --path or --connect, not both');
  return args;
}

/** What `run` (which reads `file`) returns, or what `onError` makes of the message of what it threw. */
function attempt<T>(file: string, run: () => T, onError: (message: string) => T): T {
  try {
    return run();
  } catch (err) {
    // Node's permission model says only "Access to this API has been restricted": say which flag grants it.
    const denied = (err as NodeJS.ErrnoException | undefined)?.code === 'ERR_ACCESS_DENIED' ? ` (the permission model: allow it with --allow-fs-read=${resolve(file)})` : '';
    return onError(`${err instanceof Error ? err.message : String(err)}${denied}`);
  }
}

/** The result of `read`, or exit 2 naming the file: for explain's inputs. */
const orFail = <T>(file: string, read: () => T): T => attempt(file, read, (message) => fail(`${file}: ${message}`));

/** Reads and validates the config file: the config and its warnings, or every problem (an unreadable file or bad JSON as one). */
const readConfig = (file: string): ConfigResult =>
  attempt(file, () => parseConfig(JSON.parse(readFileSync(file, 'utf8'))), (message) => ({ ok: false, problems: [message] }));


function summary(c: GatewayConfig): string {
  const allow = (rules: readonly Rule[]) => rules.map((rule) => `  allow ${Object.entries(rule).map(([k, v]) => `${k}=${[v].flat().join('|')}`).join(' and ')}`);
  const lines = [`listen ${c.listen.host}:${c.listen.port}, admin ${c.admin.host}:${c.admin.port}`];
  for (const i of c.issuers) lines.push(`issuer ${i.issuer} (audience ${i.audiences.join(', ')}; keys from ${i.jwksFile ?? i.jwksUri ?? 'discovery'})`);
  for (const r of c.routes) {
    const target = r.upstream?.href ?? 'forward-auth (answers itself)';
    lines.push(`route ${r.path} -> ${target}${r.methods ? ` [${r.methods.join(', ')}]` : ''}`, ...allow(r.allow));
  }
  for (const t of c.tunnels) lines.push(`tunnel to ${t.to.join(', ')}`, ...allow(t.allow));
  return `${lines.join('\n')}\n`;
}

function checkRuntime(bun = process.versions.bun): string {
  // Bun before 1.4 broke CONNECT, upgrades, keep-alive agents and server timeouts.
  if (bun !== undefined && (Number(bun.split('.')[0]) < 1 || /^1\.[0-3]\./.test(bun))) fail(`Bun ${bun} is too old: Bun 1.4 or later is required`);
  return bun === undefined ? `node ${process.versions.node}` : `bun ${bun}`;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const loaded = readConfig(args.config);
  if (!loaded.ok) fail(`${args.config} is not valid:\n${loaded.problems.map((p) => `  ${p}`).join('\n')}`);
  let { config, warnings } = loaded;
  if (args.check) {
    process.stdout.write(summary(config) + warnings.map((w) => `warning: ${w}\n`).join(''));
    process.exit(0);
  }
  if (args.explain) {
    const read = (file: string | undefined) => file && orFail(file, () => readFileSync(file === '-' ? 0 : file, 'utf8'));
    const claims = args.claims && orFail(args.claims, () => JSON.parse(read(args.claims)!) as unknown);
    const input = { token: read(args.token), claims, path: args.path, connect: args.connect };
    process.exit(await explain(config, input, (line) => process.stdout.write(`${line}\n`)));
  }
  const runtime = checkRuntime();
  // A closed stdout (the log collector went away) must not take the gateway down with it.
  process.stdout.on('error', () => {});
  // One write per event-loop turn, not per line (a write costs about what the line's JSON does); at most 64 KiB, the rest at exit.
  let pending = '';
  const flush = () => (pending !== '' && process.stdout.write(pending), (pending = ''));
  process.on('exit', flush);
  const log = jsonLines((text) => (pending === '' && setImmediate(flush), (pending += text).length > 65_536 && flush()), () => config.log.level);
  const gateway = createGateway(config, { log });
  const listeners = createListeners(gateway, config);
  // Signals are handled from here on: a SIGHUP while binding must not end the process (its default action).
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return void listeners.close(0);
    stopping = true;
    const { drainMs, drainGraceMs } = config.timeouts;
    log({ kind: 'stop', signal, drainMs, drainGraceMs });
    void listeners.close(drainMs, drainGraceMs).then(() => gateway.stop()).then(() => process.exit(0));
  };
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => stop(signal));
  process.on('SIGHUP', () => {
    const result = readConfig(args.config);
    if (!result.ok) return log({ kind: 'config', level: 'error', result: 'error', file: args.config, problems: result.problems, detail: 'kept the config in force' });
    const moved = ['listen', 'admin', 'keys'].filter((k) => JSON.stringify(result.config[k as 'keys']) !== JSON.stringify(config[k as 'keys']));
    ({ config, warnings } = result);
    gateway.reload(config);
    listeners.configure(config);
    const detail = moved.length > 0 ? `changes to ${moved.join(', ')} take effect at restart` : undefined;
    log({ kind: 'config', level: warnings.length > 0 || detail ? 'warn' : 'info', result: 'ok', file: args.config, warnings, reloaded: true, detail });
  });

  const { port, adminPort } = await listeners.listen().catch((err: Error) => fail(`cannot listen: ${err.message}`));
  log({ kind: 'start', version: VERSION, runtime, port, adminPort, routes: config.routes.length, tunnels: config.tunnels.length });
  log({ kind: 'config', level: warnings.length > 0 ? 'warn' : 'info', result: 'ok', file: args.config, warnings });
  // Start-up does not wait for the issuer: unready until its keys arrive, retrying meanwhile.
  void gateway.start();
}

void main();
