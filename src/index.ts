// The library surface, for host programs that embed the gateway.
export { parseConfig, DEFAULTS, type ConfigResult, type GatewayConfig, type IssuerConfig, type RouteConfig } from './config.js';
export { createGateway, type Gateway, type GatewayOptions } from './gateway.js';
export { createListeners, type Listeners } from './server.js';
export { createTokenVerifier, VERIFIER_DEFAULTS, type Claims, type KeyResolver, type TrustedIssuer, type Verification, type VerifierOptions } from './jwt.js';
export { createKeySet, KEYSET_DEFAULTS, type KeySet, type KeySetOptions, type KeySetStatus } from './jwks.js';
export { STATUS, type Reason, type TokenReason } from './errors.js';
