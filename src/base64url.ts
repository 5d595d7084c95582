// Strict base64url (RFC 4648 §5, unpadded, as RFC 7515 §2 requires). Buffer.from(s, 'base64url') never throws: it skips
// foreign characters and ignores non-zero trailing bits, so two strings can decode to the same bytes. A token must have
// exactly one spelling, so we check the alphabet, the length, and that the bytes encode back to the very same text.
export function decodeBase64url(text: string): Buffer | undefined {
  if (text.length % 4 === 1 || !/^[A-Za-z0-9_-]*$/.test(text)) return undefined;
  const bytes = Buffer.from(text, 'base64url');
  return bytes.toString('base64url') === text ? bytes : undefined;
}
