import { createHash, randomBytes } from "node:crypto";

/**
 * API keys are `berth_` + 43 characters of base64url (256 random bits). Only their SHA-256 is stored:
 * with that much entropy a slow KDF adds nothing, and lookups stay one indexed equality.
 */
export const API_KEY_PREFIX = "berth_";
const VISIBLE_LENGTH = API_KEY_PREFIX.length + 8;

export function generateApiKey(): string {
  return API_KEY_PREFIX + randomBytes(32).toString("base64url");
}

export function hashApiKey(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}

/** The part of a key that may be shown and stored in clear, to recognise it in lists. */
export function visiblePrefix(key: string): string {
  return key.slice(0, VISIBLE_LENGTH);
}
