// The library surface, for host programs that embed the gateway.
export { parseConfig, DEFAULTS } from './config.js';
export type { ConfigResult, GatewayConfig, IssuerConfig, RouteConfig } from './config.js';
export { createGateway } from './gateway.js';
export type { Gateway, GatewayOptions } from './gateway.js';
export { createListeners } from './server.js';
export type { Listeners } from './server.js';
export { createTokenVerifier, VERIFIER_DEFAULTS } from './jwt.js';
export type { Claims, KeyResolver, TrustedIssuer, Verification, VerifierOptions } from './jwt.js';
export { createKeySet, KEYSET_DEFAULTS } from './jwks.js';
export type { KeySet, KeySetOptions, KeySetStatus } from './jwks.js';
export { STATUS } from './errors.js';
export type { Reason, TokenReason } from './errors.js';
