#!/usr/bin/env node
// The only module with side effects: arguments, the config file, listeners, signals.
import { readFileSync } from 'node:fs';
import { jsonLines } from './audit.js';
import { parseConfig, type GatewayConfig } from './config.js';
import { createGateway } from './gateway.js';
import type { Rule } from './policy.js';
import { createListeners } from './server.js';

export const VERSION = '0.1.0';
const DRAIN_MS = 25_000;

const USAGE = `Usage: oidc-gateway [--config FILE] [--check]

  --config FILE  the JSON config (default: $GATEWAY_CONFIG or ./gateway.config.json)
  --check        validate the config, print a summary, exit 0 (valid) or 2 (not)
  --help         this text
  --version      the version
`;

function fail(message: string): never {
  process.stderr.write(`oidc-gateway: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv: string[]): { config: string; check: boolean } {
  let config = process.env.GATEWAY_CONFIG || './gateway.config.json';
  let check = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') (process.stdout.write(USAGE), process.exit(0));
    else if (a === '--version') (process.stdout.write(`${VERSION}\n`), process.exit(0));
    else if (a === '--check') check = true;
    else if (a === '--config' && argv[i + 1] !== undefined) config = argv[++i]!;
    else if (a?.startsWith('--config=')) config = a.slice('--config='.length);
    else fail(`unknown argument ${JSON.stringify(a)}\n\n${USAGE}`);
  }
  return { config, check };
}

function loadConfig(file: string): GatewayConfig {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    fail(`${file}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const result = parseConfig(json);
  if (!result.ok) fail(`${file} is not valid:\n${result.problems.map((p) => `  ${p}`).join('\n')}`);
  return result.config;
}

function summary(c: GatewayConfig): string {
  const lines = [`listen ${c.listen.host}:${c.listen.port}, admin ${c.admin.host}:${c.admin.port}`];
  for (const i of c.issuers) lines.push(`issuer ${i.issuer} (audience ${i.audiences.join(', ')}; keys from ${i.jwksFile ?? i.jwksUri ?? 'discovery'})`);
  for (const r of c.routes) {
    lines.push(`route ${r.path} -> ${r.upstream.href}${r.methods ? ` [${r.methods.join(', ')}]` : ''}`);
    lines.push(...allowLines(r.allow));
  }
  for (const t of c.tunnels) lines.push(`tunnel to ${t.to.join(', ')}`, ...allowLines(t.allow));
  return `${lines.join('\n')}\n`;
}

function allowLines(rules: readonly Rule[]): string[] {
  return rules.map((rule) => `  allow ${Object.entries(rule).map(([k, v]) => `${k}=${[v].flat().join('|')}`).join(' and ')}`);
}

function checkRuntime(): string {
  const bun = process.versions.bun;
  if (bun === undefined) return `node ${process.versions.node}`;
  const [major = 0, minor = 0] = bun.split('.').map(Number);
  // Bun before 1.4 broke CONNECT, upgrades, keep-alive agents and server timeouts.
  if (major < 1 || (major === 1 && minor < 4)) fail(`Bun ${bun} is too old: Bun 1.4 or later is required`);
  return `bun ${bun}`;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const config = loadConfig(args.config);
  if (args.check) {
    process.stdout.write(summary(config));
    process.exit(0);
  }
  const runtime = checkRuntime();
  // A closed stdout (the log collector went away) must not take the gateway down with it.
  process.stdout.on('error', () => {});
  const log = jsonLines((text) => process.stdout.write(text));
  const gateway = createGateway(config, { log });
  const listeners = createListeners(gateway, config);
  const { port, adminPort } = await listeners.listen().catch((err: Error) => fail(`cannot listen: ${err.message}`));
  log({ kind: 'start', version: VERSION, runtime, port, adminPort, routes: config.routes.length });
  // Start-up does not wait for the issuer: unready until its keys arrive, retrying meanwhile.
  void gateway.start();

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log({ kind: 'stop', signal });
    void listeners.close(DRAIN_MS).then(async () => {
      await gateway.stop();
      process.exit(0);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

void main();
