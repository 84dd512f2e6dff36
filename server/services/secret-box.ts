import { createCipheriv, createDecipheriv, createHmac, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import path from "node:path";

const IV_LENGTH = 12;
const TAG_LENGTH = 16;

/**
 * AES-256-GCM for secrets at rest. Stored form: IV (12 bytes) || ciphertext || tag (16 bytes).
 * The secret's scope (team, agent, name) is bound as additional authenticated data, so a ciphertext
 * copied onto another row does not decrypt.
 */
export class SecretBox {
  constructor(private readonly key: Buffer) {
    if (key.length !== 32) throw new Error("the secret key must be 32 bytes");
  }

  seal(plaintext: string, associatedData: string): Buffer {
    const iv = randomBytes(IV_LENGTH);
    const cipher = createCipheriv("aes-256-gcm", this.key, iv);
    cipher.setAAD(Buffer.from(associatedData));
    const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
    return Buffer.concat([iv, body, cipher.getAuthTag()]);
  }

  /** A keyed digest of `label` (hex): stable for the key, meaningless without it. */
  mac(label: string): string {
    return createHmac("sha256", this.key).update(label).digest("hex");
  }

  open(sealed: Buffer, associatedData: string): string {
    const iv = sealed.subarray(0, IV_LENGTH);
    const tag = sealed.subarray(sealed.length - TAG_LENGTH);
    const body = sealed.subarray(IV_LENGTH, sealed.length - TAG_LENGTH);
    const decipher = createDecipheriv("aes-256-gcm", this.key, iv);
    decipher.setAAD(Buffer.from(associatedData));
    decipher.setAuthTag(tag);
    return Buffer.concat([decipher.update(body), decipher.final()]).toString("utf8");
  }
}

/** BERTH_SECRET_KEY, or a key generated once into `<data dir>/secret-key` (mode 0600). */
export function loadOrCreateSecretKey(configured: Buffer | undefined, dataDir: string): Buffer {
  if (configured) return configured;
  const file = path.join(dataDir, "secret-key");
  try {
    const stored = Buffer.from(readFileSync(file, "utf8").trim(), "base64");
    if (stored.length !== 32) throw new Error(`${file} does not hold a 32-byte base64 key`);
    return stored;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const key = randomBytes(32);
  writeFileSync(file, `${key.toString("base64")}\n`, { mode: 0o600, flag: "wx" });
  return key;
}
