// The one vocabulary of refusals. The same words appear in code, in the
// response body, in the audit log, in metrics and in the README table.

/** Why a token was refused. Every failure of verification is exactly one of these. */
export type TokenReason =
  | 'token_missing'
  | 'token_malformed'
  | 'alg_not_allowed'
  | 'kid_unknown'
  | 'signature_invalid'
  | 'token_expired'
  | 'token_not_yet_valid'
  | 'issuer_mismatch'
  | 'audience_mismatch'
  | 'jwks_unavailable';

/** Every reason a request can end with. */
export type Reason =
  | TokenReason
  | 'claim_mismatch'
  | 'connect_target_denied'
  | 'bad_request'
  | 'route_unknown'
  | 'method_not_allowed'
  | 'upstream_unreachable'
  | 'upstream_timeout'
  | 'upstream_reset'
  | 'client_aborted';

/** The one table mapping a reason to its HTTP status. */
export const STATUS: Readonly<Record<Reason, number>> = {
  token_missing: 401,
  token_malformed: 401,
  alg_not_allowed: 401,
  kid_unknown: 401,
  signature_invalid: 401,
  token_expired: 401,
  token_not_yet_valid: 401,
  issuer_mismatch: 401,
  audience_mismatch: 401,
  jwks_unavailable: 503,
  claim_mismatch: 403,
  connect_target_denied: 403,
  bad_request: 400,
  route_unknown: 404,
  method_not_allowed: 405,
  upstream_unreachable: 502,
  upstream_timeout: 504,
  // Log only: by the time these happen the response head is already written.
  upstream_reset: 502,
  client_aborted: 499,
};
