// The one vocabulary of refusals: the same words in code, in the response body, the audit log, metrics and the README table.

/** Why a token was refused, with its status. Every failure of verification is exactly one of these. */
const TOKEN_STATUS = {
  token_missing: 401, token_malformed: 401, alg_not_allowed: 401, kid_unknown: 401, signature_invalid: 401,
  token_expired: 401, token_not_yet_valid: 401, issuer_mismatch: 401, audience_mismatch: 401,
  jwks_unavailable: 503,
} as const;

/** The one table mapping every reason a request can end with to its HTTP status. */
export const STATUS = {
  ...TOKEN_STATUS,
  claim_mismatch: 403, connect_target_denied: 403,
  bad_request: 400, route_unknown: 404, method_not_allowed: 405, upstream_unreachable: 502, upstream_timeout: 504, gateway_stopping: 503,
  // Log only: by the time these happen the response head is already written.
  upstream_reset: 502, client_aborted: 499,
} as const;

export type TokenReason = keyof typeof TOKEN_STATUS;
export type Reason = keyof typeof STATUS;
