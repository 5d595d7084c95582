// One JSON line per decision. Redaction lives here: the token itself is never
// passed in, and of the claims only the identity below is written.
import type { Claims } from './jwt.js';
import { claimText } from './policy.js';

/** The claims that say who came in (GitHub's OIDC token claims). */
const IDENTITY_CLAIMS = [
  'iss', 'sub', 'repository', 'repository_id', 'repository_owner', 'ref', 'sha', 'workflow_ref',
  'job_workflow_ref', 'environment', 'actor', 'run_id', 'run_attempt', 'jti',
] as const;

export type Log = (line: Record<string, unknown>) => void;

export function identityOf(claims: Claims): Record<string, string> {
  const who: Record<string, string> = {};
  for (const name of IDENTITY_CLAIMS) {
    const v = claimText(claims, name);
    if (v !== undefined) who[name] = v;
  }
  return who;
}

/** A log that writes each line as JSON to `write`, stamped with the time. */
export function jsonLines(write: (text: string) => void): Log {
  return (line) => write(`${JSON.stringify({ time: new Date().toISOString(), ...line })}\n`);
}
