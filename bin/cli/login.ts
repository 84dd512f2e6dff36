import readline from "node:readline";
import { createBerthClient } from "../../server/client";
import { configPath, normalizeUrl, readConfig, removeConfig, writeConfig } from "./config";
import { CliError, EXIT, toCliError } from "./errors";
import { output, type GlobalOptions } from "./common";

type LoginOptions = GlobalOptions & { url?: string; apiKey?: string };

/**
 * `berth login`: asks for what the flags did not give (the key without echo on a terminal; one line
 * each from a piped stdin), checks the key with a call, then stores both with mode 0600.
 */
export async function login(options: LoginOptions): Promise<void> {
  const out = output(options);
  const stored = safeRead();
  const lines = new Prompter();
  try {
    const defaultUrl = process.env.BERTH_URL || stored?.url || "http://localhost:3000";
    const urlAnswer = options.url ?? (await lines.ask(`Berth URL [${defaultUrl}]: `));
    const url = normalizeUrl(urlAnswer?.trim() || defaultUrl);
    const apiKey = (options.apiKey ?? (await lines.ask("API key: ", { hidden: true })))?.trim();
    if (!apiKey) throw new CliError(EXIT.usage, "an API key is required (--api-key, or type it when asked)");

    const client = createBerthClient({ url, apiKey });
    const { me, team } = await out
      .spin(`checking the key with ${url}`, async () => {
        const me = await client.auth.me.query();
        const team = await client.teams.get.query();
        return { me, team };
      })
      .catch((error: unknown) => {
        const failure = toCliError(error, url);
        // Not "run berth login" again: this is berth login.
        throw new CliError(failure.exitCode, failure.message.replace(/ \(run `berth login`\)$/, ""));
      });
    const file = configPath();
    writeConfig({ url, apiKey }, file);
    if (out.json) out.document({ url, teamId: me.teamId, team: team.name, role: me.role, configFile: file });
    else {
      out.line(`Logged in to ${url} as team ${out.style.bold(team.name)} (${me.role}).`);
      out.notice(`Saved to ${file} (mode 0600).${process.env.BERTH_URL || process.env.BERTH_API_KEY ? " BERTH_URL / BERTH_API_KEY in the environment still take precedence." : ""}`);
    }
  } finally {
    lines.close();
  }
}

export async function logout(options: GlobalOptions): Promise<void> {
  const out = output(options);
  const file = configPath();
  const removed = removeConfig(file);
  if (out.json) out.document({ removed, configFile: file });
  else out.line(removed ? `Logged out: removed ${file}.` : `Not logged in (no ${file}).`);
}

function safeRead() {
  try {
    return readConfig();
  } catch {
    return null;
  }
}

/** Questions on stderr; answers from stdin (hidden on a terminal when asked). */
class Prompter {
  private rl: readline.Interface | null = null;
  private readonly pending: string[] = [];
  private waiting: ((line: string | undefined) => void) | null = null;
  private ended = false;

  private reader(): readline.Interface {
    if (!this.rl) {
      this.rl = readline.createInterface({ input: process.stdin, terminal: false });
      this.rl.on("line", (line) => {
        if (this.waiting) {
          const waiting = this.waiting;
          this.waiting = null;
          waiting(line);
        } else this.pending.push(line);
      });
      this.rl.on("close", () => {
        this.ended = true;
        this.waiting?.(undefined);
        this.waiting = null;
      });
    }
    return this.rl;
  }

  async ask(question: string, options: { hidden?: boolean } = {}): Promise<string | undefined> {
    if (options.hidden && process.stdin.isTTY) return readHidden(question);
    process.stderr.write(question);
    this.reader();
    const answer = this.pending.length > 0 ? this.pending.shift() : this.ended ? undefined : await new Promise<string | undefined>((resolve) => (this.waiting = resolve));
    // A terminal echoed the answer and its Enter; a pipe did not: end the prompt's line.
    if (!process.stdin.isTTY) process.stderr.write("\n");
    return answer;
  }

  close(): void {
    this.rl?.close();
  }
}

/** Reads one line from the terminal without echoing it (raw mode; Backspace works, Ctrl-C quits). */
export function readHidden(question: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const stdin = process.stdin;
    process.stderr.write(question);
    let value = "";
    stdin.setRawMode(true);
    stdin.resume();
    stdin.setEncoding("utf8");
    const done = (error?: Error) => {
      stdin.setRawMode(false);
      stdin.pause();
      stdin.off("data", onData);
      process.stderr.write("\n");
      if (error) reject(error);
      else resolve(value);
    };
    const onData = (chunk: string) => {
      for (const char of chunk) {
        if (char === "\r" || char === "\n" || char === "\u0004") return done();
        if (char === "\u0003") return done(new CliError(130, "interrupted"));
        if (char === "\u007f" || char === "\b") value = value.slice(0, -1);
        else if (char >= " ") value += char;
      }
    };
    stdin.on("data", onData);
  });
}
