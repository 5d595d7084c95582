// Where a tunnel or forward-proxied request may go, matched on the literal text asked for, never on what it resolves to
// (dns.lookup reads "127.1", "0x7f.0.0.1" and "2130706433" as 127.0.0.1); the resolved address is then checked on its own.
import { lookup } from 'node:dns/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockList, isIP, isIPv4 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { compileGlob, matchGlob } from './policy.js';

export interface Destination {
  /** Lower-case, without a trailing dot or IPv6 brackets. */
  readonly host: string;
  readonly port: number;
  readonly isIp: boolean;
}

/** Parses authority-form "host:port" (RFC 9112 §3.2.3): a port is required, userinfo is not allowed. */
export function parseAuthority(text: string): Destination | undefined {
  // The port's colon comes right after the first "]" of a bracketed IPv6 literal, else it is the last colon.
  const bracketed = text.startsWith('[');
  const colon = bracketed ? text.indexOf(']') + 1 : text.lastIndexOf(':');
  if (colon <= 0 || text[colon] !== ':') return undefined;
  let host = bracketed ? text.slice(1, colon - 1) : text.slice(0, colon);
  const port = text.slice(colon + 1);
  // No zone ids ("fe80::1%eth0"): they name an interface of ours, not a destination.
  if (bracketed && (isIP(host) !== 6 || host.includes('%'))) return undefined;
  if (!/^[1-9][0-9]{0,4}$/.test(port) || Number(port) > 65535) return undefined;
  host = host.toLowerCase().replace(/\.$/, '');
  const isIp = isIP(host) !== 0;
  // Host names: letters, digits, dots, dashes and underscores, in labels of 1 to 63.
  if (!isIp && (host.length > 253 || !host.split('.').every((l) => /^[a-z0-9_-]{1,63}$/.test(l)))) return undefined;
  return { host, port: Number(port), isIp };
}

export type DestinationMatcher = ReturnType<typeof compileDestinations>;

/** Compiles "host:port" patterns; `*` in the host stands for any run of characters. IP literals must be listed exactly. */
export function compileDestinations(patterns: readonly string[]) {
  const compiled = patterns.map((p) => {
    const colon = p.lastIndexOf(':');
    const host = stripBrackets(p.slice(0, colon).toLowerCase()).replace(/\.$/, '');
    return { host, glob: compileGlob(host), port: Number(p.slice(colon + 1)) };
  });
  return {
    matches: (d: Destination): boolean => compiled.some((c) => c.port === d.port && (d.isIp ? c.host === d.host : matchGlob(c.glob, d.host))),
    /** Whether this exact address and port are listed literally (which overrides the address checks). */
    listsAddress: (address: string, port: number): boolean => compiled.some((c) => c.host === address && c.port === port),
  };
}

/** A problem with one `to` pattern from the config, or undefined. */
export function checkDestinationPattern(p: string): string | undefined {
  const colon = p.lastIndexOf(':');
  const port = p.slice(colon + 1);
  if (colon <= 0 || !/^[1-9][0-9]{0,4}$/.test(port) || Number(port) > 65535) return 'expected host:port with a port from 1 to 65535';
  const host = stripBrackets(p.slice(0, colon));
  if (p.startsWith('[') && isIP(host) !== 6) return 'expected an IPv6 address inside brackets';
  // "*" only as a whole leftmost label over two labels or more: "db*:5432" would admit db.attacker.example,
  // and "*.com" any name anyone can register and point at an internal address.
  const rest = host.startsWith('*.') ? host.slice(2) : host;
  const domain = rest.endsWith('.') ? rest.slice(0, -1) : rest;
  const literal = isIP(rest) === 6 ? `[${rest}]` : rest;
  if (rest.includes('*') || (rest !== host && (isIP(domain) !== 0 || !domain.includes('.'))) || !parseAuthority(`${literal}:1`))
    return 'expected a host name, an IP address, or "*." and a domain of two labels or more such as "*.svc.internal"';
  return undefined;
}

// Addresses an allowed name must never resolve to: link-local (cloud metadata at 169.254.169.254, fe80::/10),
// other clouds' metadata services, loopback, and the unspecified addresses, which reach this host.
const NEVER = new BlockList();
for (const [net, bits] of [['0.0.0.0', 8], ['127.0.0.0', 8], ['169.254.0.0', 16]] as const) NEVER.addSubnet(net, bits, 'ipv4');
for (const ip of ['100.100.100.200', '168.63.129.16', '192.0.0.192']) NEVER.addAddress(ip, 'ipv4');
// ::/96 holds ::, ::1 and the IPv4-compatible forms of the addresses above.
for (const [net, bits] of [['::', 96], ['fe80::', 10], ['fd00:ec2::254', 128]] as const) NEVER.addSubnet(net, bits, 'ipv6');

/** Whether a resolved address may be dialled: never one of the above, nor our own listener on a local interface, unless listed literally. */
export function addressAllowed(address: string, port: number, ownPorts: readonly number[], listed: boolean): boolean {
  if (listed) return true;
  const plain = address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address;
  if (NEVER.check(plain, isIPv4(plain) ? 'ipv4' : 'ipv6')) return false;
  return !ownPorts.includes(port) || !Object.values(networkInterfaces()).some((list) => list?.some((i) => i.address === plain));
}

export type Resolved = { readonly address: string } | { readonly reason: 'connect_target_denied' | 'upstream_unreachable' | 'upstream_timeout' };

/** Resolves an admitted destination once and checks the address; the tunnel dials that address, not the name again. */
export async function resolveDestination(d: Destination, m: DestinationMatcher, ownPorts: readonly number[], timeoutMs: number): Promise<Resolved> {
  // An IP literal is its own address. An unref'd timer: the race's loser must not keep the process alive.
  const address = d.isIp ? d.host : await Promise.race([lookup(d.host).then((a) => a.address, () => undefined), sleep(timeoutMs, 'timeout' as const, { ref: false })]);
  if (address === 'timeout') return { reason: 'upstream_timeout' };
  if (address === undefined) return { reason: 'upstream_unreachable' };
  return addressAllowed(address, d.port, ownPorts, m.listsAddress(address, d.port)) ? { address } : { reason: 'connect_target_denied' };
}

const stripBrackets = (host: string) => (host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host);
