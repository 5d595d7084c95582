// Header hygiene: what a request must look like, where its token comes from, and the headers we build (never edit) for each hop.
import type { OutgoingHttpHeaders } from 'node:http';
import type { Claims } from './jwt.js';
import { claimText } from './policy.js';

// Hop-by-hop headers (RFC 9110 §7.6.1), plus Proxy-Connection, which old clients still send.
const HOP_BY_HOP = new Set(['connection', 'proxy-connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

const FRAMING = new Set(['content-length', 'transfer-encoding', 'host']);

// Never from a client: what says who it is (we do) and what overrides the method or path a route's policy judged.
const OURS_ALONE = new Set(['forwarded', 'x-request-id', 'x-real-ip', 'true-client-ip', 'x-http-method-override', 'x-http-method', 'x-method-override', 'x-original-url', 'x-rewrite-url']);

/** Whether a header has a meaning of its own to HTTP or to us, so that it cannot also carry the token. */
export function isReservedHeader(name: string): boolean {
  return HOP_BY_HOP.has(name) || FRAMING.has(name) || ['expect', 'cookie', 'authorization', 'forwarded', 'x-request-id'].includes(name) ||
    name.startsWith('proxy-') || name.startsWith('x-forwarded-') || name.startsWith('x-oidc-');
}

export interface InboundHead {
  /** Why the request cannot be forwarded safely, if it cannot. */
  readonly framing?: string;
  /** The token ('' when absent, undefined when repeated); proxyToken likewise from Proxy-Authorization, Bearer or Basic. */
  readonly token: string | undefined;
  readonly proxyToken: string | undefined;
  readonly hasBody: boolean;
  readonly bodyFraming: { readonly chunked: true } | { readonly length: string } | undefined;
}

// Both parsers accept two Host headers, and Bun two equal Content-Length headers; a proxy in front
// of us may frame differently, so anything ambiguous is refused (RFC 9112 §6.3, request smuggling).
export function inspectHead(raw: readonly string[], tokenHeader: string, httpVersion = '1.1'): InboundHead {
  let hosts = 0, lengths = 0, encodings = 0, tokens = 0, proxyAuths = 0;
  let encoding = '', length = '', token = '', proxyAuth = '', connection = '';
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    if (name === 'host') hosts++;
    else if (name === 'content-length') (lengths++, (length = value));
    else if (name === 'transfer-encoding') (encodings++, (encoding = value));
    else if (name === tokenHeader) (tokens++, (token = value));
    else if (name === 'proxy-authorization') (proxyAuths++, (proxyAuth = value));
    else if (name === 'connection') connection += `,${value.toLowerCase()}`;
  }
  let framing: string | undefined;
  if (hosts > 1) framing = 'repeated Host';
  else if (lengths > 1) framing = 'repeated Content-Length';
  else if (encodings > 1 || (encodings === 1 && encoding.toLowerCase() !== 'chunked')) framing = 'Transfer-Encoding other than chunked';
  else if (encodings === 1 && lengths === 1) framing = 'both Content-Length and Transfer-Encoding';
  else if (encodings === 1 && httpVersion === '1.0') framing = 'chunked in HTTP/1.0'; // HTTP/1.0 has no chunked coding (RFC 9112 §6.1)
  // Naming a framing header in Connection asks the next hop to lose the body's framing (RFC 9110 §7.6.1).
  else if (connection.split(',').some((n) => FRAMING.has(n.trim()))) framing = 'Connection names a framing header';
  const bodyFraming = encodings === 1 ? { chunked: true as const } : lengths === 1 && length !== '0' ? { length } : undefined;
  const proxyToken = proxyAuths > 1 ? undefined : proxyCredential(proxyAuth);
  return { framing, token: tokens > 1 ? undefined : bearer(token), proxyToken, hasBody: bodyFraming !== undefined, bodyFraming };
}

// `HTTPS_PROXY=http://x:$TOKEN@gateway:8000` makes curl, git, npm and pip send Basic (RFC 7617).
function proxyCredential(value: string): string {
  const v = value.trim();
  if (v.length <= 6 || v.slice(0, 6).toLowerCase() !== 'basic ') return bearer(v);
  const pair = Buffer.from(v.slice(6).trim(), 'base64').toString('latin1');
  const colon = pair.indexOf(':');
  return colon < 0 ? pair : pair.slice(colon + 1);
}

// Drops a "Bearer " scheme, in any case; a bare "Bearer" leaves no token.
const bearer = (value: string): string => value.trim().replace(/^bearer( |$)/i, '').trim();

/** Headers that must not cross this hop: the fixed list and those named in Connection (no allocation without them). */
function hopByHop(raw: readonly string[]): (name: string) => boolean {
  let named: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() !== 'connection') continue;
    for (const n of raw[i + 1]!.split(',')) (named ??= new Set()).add(n.trim().toLowerCase());
  }
  return named ? (name) => HOP_BY_HOP.has(name) || named!.has(name) : (name) => HOP_BY_HOP.has(name);
}

/** Adds one header, keeping repeats as an array so none is lost or merged. */
function append(out: OutgoingHttpHeaders, name: string, value: string): void {
  const prev = out[name];
  if (prev === undefined) out[name] = value;
  else if (Array.isArray(prev)) prev.push(value);
  else out[name] = [String(prev), value];
}

export interface UpstreamHeadOptions {
  readonly tokenHeader: string;
  readonly upstreamHost: string;
  /** The host the client asked for when it is not the Host header (absolute-form requests). */
  readonly requestedHost?: string;
  readonly claims: Claims;
  readonly forwardClaims: readonly string[];
  readonly clientIp: string;
  /** Whether the peer is a trusted proxy whose X-Forwarded-* we keep. */
  readonly trustedPeer: boolean;
  readonly requestId: string;
  readonly bodyFraming: InboundHead['bodyFraming'];
}

/** The head sent upstream, built from the client's raw head and our own additions. */
export function upstreamHeaders(raw: readonly string[], o: UpstreamHeadOptions): OutgoingHttpHeaders {
  const drop = hopByHop(raw);
  const out: OutgoingHttpHeaders = {};
  let forwardedFor = '', forwardedProto = '', forwardedHost = '', host = '';
  const tokenHeader = o.tokenHeader.replaceAll('_', '-');
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    if (name === 'host') host = value;
    if (o.trustedPeer && name === 'x-forwarded-for') forwardedFor = forwardedFor ? `${forwardedFor}, ${value}` : value;
    if (o.trustedPeer && name === 'x-forwarded-proto') forwardedProto ||= value;
    if (o.trustedPeer && name === 'x-forwarded-host') forwardedHost ||= value;
    // CGI-style servers (WSGI, Rack) read "X_Oidc_Repository" as X-Oidc-Repository: ours are checked in both spellings.
    const dashed = name.includes('_') ? name.replaceAll('_', '-') : name;
    if (drop(name) || dashed === tokenHeader || name === 'content-length' || name === 'host' || name === 'expect') continue;
    // Identity and forwarding headers are ours alone: a client cannot pre-set them, nor re-state the method or path we judged.
    if (dashed.startsWith('x-oidc-') || dashed.startsWith('x-forwarded-') || OURS_ALONE.has(dashed)) continue;
    append(out, name, value);
  }
  // We state the framing the parser saw: a GET whose chunked body lost its Transfer-Encoding would reach upstream as a second request.
  if (o.bodyFraming && 'chunked' in o.bodyFraming) out['transfer-encoding'] = 'chunked';
  else if (o.bodyFraming) out['content-length'] = o.bodyFraming.length;
  out.host = o.upstreamHost;
  out['x-forwarded-for'] = forwardedFor ? `${forwardedFor}, ${o.clientIp}` : o.clientIp;
  out['x-forwarded-proto'] = forwardedProto || 'http';
  out['x-forwarded-host'] = forwardedHost || o.requestedHost || host;
  out['x-request-id'] = o.requestId;
  return claimHeaders(o.claims, o.forwardClaims, out);
}

/** Adds an `x-oidc-<claim>` header for each named claim the token carries (or, if given, `missing` for the others). */
export function claimHeaders(claims: Claims, names: readonly string[], out: OutgoingHttpHeaders = {}, missing?: string): OutgoingHttpHeaders {
  for (const claim of names) {
    const value = claimText(claims, claim) ?? missing;
    if (value !== undefined) out[`x-oidc-${claim.replaceAll('_', '-').toLowerCase()}`] = headerSafe(value);
  }
  return out;
}

export function downstreamHeaders(raw: readonly string[]): OutgoingHttpHeaders {
  const drop = hopByHop(raw);
  const out: OutgoingHttpHeaders = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (!drop(name)) append(out, name, raw[i + 1]!);
  }
  return out;
}

// Printable ASCII passes; all else, and "%", becomes %XX per UTF-8 byte: real claims hold emoji,
// branch names may hold CR/LF, and neither may break a header (ERR_INVALID_CHAR) or inject one.
export function headerSafe(value: string): string {
  return value.replace(/[^\x20-\x24\x26-\x7e]+/g, (run) => Buffer.from(run, 'utf8').toString('hex').toUpperCase().replace(/../g, '%$&'));
}
