import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { CliError, EXIT } from "./errors";

/** What `berth login` stores: where Berth is and the API key to use there. */
export type StoredConfig = { url: string; apiKey: string };

export type Credentials = StoredConfig & { source: "environment" | "config file" };

/** `$XDG_CONFIG_HOME/berth/config.json`, or `~/.config/berth/config.json`. */
export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME && path.isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : path.join(env.HOME || os.homedir(), ".config");
  return path.join(base, "berth", "config.json");
}

export function readConfig(file = configPath()): StoredConfig | null {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw new CliError(EXIT.error, `cannot read ${file}: ${(error as Error).message}`);
  }
  try {
    const parsed = JSON.parse(text) as Partial<StoredConfig>;
    if (typeof parsed.url === "string" && typeof parsed.apiKey === "string") return { url: parsed.url, apiKey: parsed.apiKey };
  } catch {
    // Reported below.
  }
  throw new CliError(EXIT.unauthorized, `${file} is not a valid berth config; run \`berth login\` again`);
}

/**
 * Writes the config readable by the user only: the folder 0700, the file 0600 (written to a
 * temporary file of that mode first, then renamed, so the key is never readable by others).
 */
export function writeConfig(config: StoredConfig, file = configPath()): void {
  const dir = path.dirname(file);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const temporary = `${file}.${process.pid}.tmp`;
  writeFileSync(temporary, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  chmodSync(temporary, 0o600);
  renameSync(temporary, file);
}

export function removeConfig(file = configPath()): boolean {
  try {
    rmSync(file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
}

/** Credentials to use: `BERTH_URL` / `BERTH_API_KEY` override what `berth login` stored. */
export function resolveCredentials(env: NodeJS.ProcessEnv = process.env): Credentials {
  const stored = env.BERTH_URL && env.BERTH_API_KEY ? null : readConfig(configPath(env));
  const url = env.BERTH_URL || stored?.url;
  const apiKey = env.BERTH_API_KEY || stored?.apiKey;
  if (!url || !apiKey) {
    throw new CliError(EXIT.unauthorized, "not logged in: run `berth login` (or set BERTH_URL and BERTH_API_KEY)");
  }
  return { url: normalizeUrl(url), apiKey, source: env.BERTH_URL || env.BERTH_API_KEY ? "environment" : "config file" };
}

/** `localhost:3000` → `http://localhost:3000`; refuses anything that is not an http(s) URL. */
export function normalizeUrl(value: string): string {
  const trimmed = value.trim();
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(trimmed) ? trimmed : `http://${trimmed}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new CliError(EXIT.usage, `not a URL: ${value}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new CliError(EXIT.usage, `the URL must be http or https: ${value}`);
  return url.toString().replace(/\/+$/, "");
}
