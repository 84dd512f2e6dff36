import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parse } from "smol-toml";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../server/config";

/**
 * Static checks of the deployment files (Dockerfile, fly.toml) against what the process actually
 * does: the port it listens on, the readiness endpoint, the graceful-shutdown budget
 * (server/entry.ts force-exits BERTH_SHUTDOWN_TIMEOUT_MS + 3 s after SIGTERM).
 */

const FORCED_EXIT_MARGIN_MS = 3_000;
const FLY_MAX_KILL_TIMEOUT_S = 300;

const readRepoFile = (name: string) => readFileSync(fileURLToPath(new URL(`../${name}`, import.meta.url)), "utf8");

// ---- Dockerfile ---------------------------------------------------------------------------------

type Instruction = { keyword: string; args: string; line: number };
type Stage = { from: string; name: string | undefined; instructions: Instruction[] };

/**
 * Splits a Dockerfile into instructions: comment lines (including parser directives) and blank
 * lines are dropped, even inside a continuation, as Docker does; a line ending in `\` continues.
 */
function parseDockerfile(text: string): Instruction[] {
  const instructions: Instruction[] = [];
  let pending: string[] = [];
  let startLine = 0;
  text.split(/\r?\n/).forEach((raw, index) => {
    const trimmed = raw.trim();
    if (trimmed === "" || trimmed.startsWith("#")) return;
    if (pending.length === 0) startLine = index + 1;
    const continued = /\\\s*$/.test(raw);
    pending.push(continued ? raw.replace(/\\\s*$/, "") : raw);
    if (continued) return;
    const joined = pending.map((part) => part.trim()).join(" ");
    pending = [];
    const match = /^(\S+)\s*(.*)$/s.exec(joined);
    if (match) instructions.push({ keyword: match[1]!.toUpperCase(), args: match[2]!.trim(), line: startLine });
  });
  if (pending.length > 0) throw new Error(`Dockerfile ends inside a line continuation (from line ${startLine})`);
  return instructions;
}

function splitStages(instructions: Instruction[]): Stage[] {
  const stages: Stage[] = [];
  for (const instruction of instructions) {
    if (instruction.keyword === "FROM") {
      const words = instruction.args.split(/\s+/).filter((word) => !word.startsWith("--"));
      const asIndex = words.findIndex((word) => word.toUpperCase() === "AS");
      stages.push({ from: words[0] ?? "", name: asIndex >= 0 ? words[asIndex + 1] : undefined, instructions: [] });
    } else if (stages.length > 0) {
      stages.at(-1)!.instructions.push(instruction);
    } else if (instruction.keyword !== "ARG") {
      throw new Error(`${instruction.keyword} on line ${instruction.line} comes before any FROM`);
    }
  }
  return stages;
}

/** The command of CMD/HEALTHCHECK CMD: the array of the exec form, or the shell form as one string. */
function commandOf(args: string): string[] {
  if (args.startsWith("[")) {
    const parsed: unknown = JSON.parse(args);
    if (!Array.isArray(parsed) || !parsed.every((part) => typeof part === "string")) {
      throw new Error(`not a JSON array of strings: ${args}`);
    }
    return parsed;
  }
  return ["/bin/sh", "-c", args];
}

/** `ENV A=1 B="two"` and the legacy `ENV A 1`. */
function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const { args } of stage.instructions.filter((instruction) => instruction.keyword === "ENV")) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*=/.test(args)) {
      const [name, ...value] = args.split(/\s+/);
      env[name!] = value.join(" ");
      continue;
    }
    for (const match of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|'[^']*'|\S*)/g)) {
      env[match[1]!] = match[2]!.replace(/^(["'])(.*)\1$/s, "$2");
    }
  }
  return env;
}

/** The shell commands of a RUN, split on `&&`, `||` and `;`. */
function shellCommands(args: string): string[][] {
  return args
    .split(/&&|\|\||;/)
    .map((command) => command.trim().split(/\s+/).filter(Boolean))
    .filter((words) => words.length > 0);
}

const dockerfile = readRepoFile("Dockerfile");
const stages = splitStages(parseDockerfile(dockerfile));
const finalStage = stages.at(-1)!;
const finalOf = (keyword: string) => finalStage.instructions.filter((instruction) => instruction.keyword === keyword);
const lastOf = (keyword: string) => finalOf(keyword).at(-1);

describe("Dockerfile parser", () => {
  it("joins continuations, skips comments and splits stages", () => {
    const parsed = parseDockerfile(
      ["# syntax=docker/dockerfile:1", "FROM a AS one", "RUN x \\", "  # inside", "  && y", "", "from b", "cmd [\"z\"]"].join("\n"),
    );
    expect(parsed).toEqual([
      { keyword: "FROM", args: "a AS one", line: 2 },
      { keyword: "RUN", args: "x && y", line: 3 },
      { keyword: "FROM", args: "b", line: 7 },
      { keyword: "CMD", args: '["z"]', line: 8 },
    ]);
    expect(splitStages(parsed).map((stage) => [stage.from, stage.name, stage.instructions.length])).toEqual([
      ["a", "one", 1],
      ["b", undefined, 1],
    ]);
    expect(() => parseDockerfile("FROM a\nRUN x \\")).toThrow(/continuation/);
  });
});

describe("Dockerfile", () => {
  it("is a multi-stage build whose final stage copies the build from an earlier stage", () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const earlierNames = stages.slice(0, -1).map((stage, index) => stage.name ?? String(index));
    const copiedFrom = finalOf("COPY")
      .map((copy) => /--from=(\S+)/.exec(copy.args)?.[1])
      .filter((source): source is string => source !== undefined);
    expect(copiedFrom.length).toBeGreaterThan(0);
    for (const source of copiedFrom) expect(earlierNames).toContain(source);
    const copiedPaths = finalOf("COPY").map((copy) => copy.args);
    expect(copiedPaths.some((args) => /\/build\s/.test(args))).toBe(true);
    expect(copiedPaths.some((args) => /node_modules\s/.test(args))).toBe(true);
  });

  it("builds with npm ci and npm run build, then drops the dev dependencies", () => {
    const buildCommands = stages
      .slice(0, -1)
      .flatMap((stage) => stage.instructions.filter((instruction) => instruction.keyword === "RUN"))
      .flatMap((run) => shellCommands(run.args).map((words) => words.join(" ")));
    expect(buildCommands.some((command) => command.startsWith("npm ci"))).toBe(true);
    expect(buildCommands).toContain("npm run build");
    expect(buildCommands.some((command) => /^npm prune\b.*--omit=dev/.test(command))).toBe(true);
  });

  it("runs the final stage as a user that is not root", () => {
    const user = lastOf("USER");
    expect(user, "the final stage has no USER instruction").toBeDefined();
    const [name = "", group] = user!.args.split(":");
    expect(name).not.toBe("");
    expect(["root", "0"]).not.toContain(name);
    if (group !== undefined) expect(["root", "0"]).not.toContain(group);
  });

  it("installs bubblewrap with apt-get in the final stage, without recommends, dropping the lists", () => {
    const runs = finalOf("RUN").map((run) => shellCommands(run.args));
    const install = runs
      .flat()
      .find((words) => words[0] === "apt-get" && words.includes("install") && words.includes("bubblewrap"));
    expect(install, "no `apt-get install ... bubblewrap` in the final stage").toBeDefined();
    expect(install).toContain("--no-install-recommends");
    const sameRun = runs.find((commands) => commands.includes(install!))!;
    expect(sameRun.some((words) => words.join(" ").startsWith("rm -rf /var/lib/apt/lists"))).toBe(true);
  });

  it("has a HEALTHCHECK that requests /readyz", () => {
    const healthcheck = lastOf("HEALTHCHECK");
    expect(healthcheck, "the final stage has no HEALTHCHECK").toBeDefined();
    const match = /^(?:--\S+\s+)*CMD\s+(.*)$/is.exec(healthcheck!.args);
    expect(match, `HEALTHCHECK is not a CMD check: ${healthcheck!.args}`).not.toBeNull();
    expect(commandOf(match![1]!).join(" ")).toContain("/readyz");
  });

  it("runs build/main.js with node", () => {
    const cmd = lastOf("CMD");
    expect(cmd, "the final stage has no CMD").toBeDefined();
    const command = commandOf(cmd!.args);
    expect(command[0]).toBe("node");
    expect(command).toContain("build/main.js");
    expect(lastOf("ENTRYPOINT"), "an ENTRYPOINT would wrap the CMD").toBeUndefined();
  });

  it("stops with SIGTERM", () => {
    expect(lastOf("STOPSIGNAL")?.args).toBe("SIGTERM");
  });

  it("listens on the port it exposes and keeps its data in the volume", () => {
    const env = envOf(finalStage);
    const config = loadConfig(env);
    expect(config.nodeEnv).toBe("production");
    expect(finalOf("EXPOSE").flatMap((expose) => expose.args.split(/\s+/))).toContain(String(config.port));
    expect(env.BERTH_DATA_DIR).toBeDefined();
    const volumes = finalOf("VOLUME").flatMap((volume) =>
      volume.args.startsWith("[") ? (JSON.parse(volume.args) as string[]) : volume.args.split(/\s+/),
    );
    expect(volumes).toContain(env.BERTH_DATA_DIR);
  });
});

// ---- fly.toml -----------------------------------------------------------------------------------

/** A Go duration ("20s", "1m30s", "500ms") or a bare number of `unit`s, in milliseconds. */
function durationMs(value: unknown, unitMs: number): number {
  if (typeof value === "number" && Number.isFinite(value)) return value * unitMs;
  if (typeof value !== "string" || !/^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(value)) {
    throw new Error(`not a duration: ${JSON.stringify(value)}`);
  }
  const unitsMs: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };
  let total = 0;
  for (const match of value.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)) total += Number(match[1]) * unitsMs[match[2]!]!;
  return total;
}

type Table = Record<string, unknown>;
const isTable = (value: unknown): value is Table => typeof value === "object" && value !== null && !Array.isArray(value);
const tables = (value: unknown): Table[] => (Array.isArray(value) ? value.filter(isTable) : isTable(value) ? [value] : []);

const flyText = readRepoFile("fly.toml");
const fly = parse(flyText) as Table;
const flyEnv = Object.fromEntries(Object.entries(isTable(fly.env) ? fly.env : {}).map(([key, value]) => [key, String(value)]));
const flyConfig = loadConfig(flyEnv);
const httpService = isTable(fly.http_service) ? fly.http_service : undefined;

describe("duration parsing", () => {
  it("reads numbers in the given unit and Go durations", () => {
    expect(durationMs(20, 1_000)).toBe(20_000);
    expect(durationMs("20s", 1_000)).toBe(20_000);
    expect(durationMs("1m30s", 1_000)).toBe(90_000);
    expect(durationMs("500ms", 1_000)).toBe(500);
    expect(() => durationMs("20 seconds", 1_000)).toThrow(/not a duration/);
  });
});

describe("fly.toml", () => {
  it("stops machines with SIGTERM", () => {
    expect(fly.kill_signal).toBe("SIGTERM");
  });

  it("waits longer than the graceful shutdown before killing", () => {
    const killTimeoutMs = durationMs(fly.kill_timeout, 1_000);
    expect(killTimeoutMs).toBeGreaterThanOrEqual(flyConfig.shutdownTimeoutMs + FORCED_EXIT_MARGIN_MS);
    expect(killTimeoutMs).toBeGreaterThanOrEqual(13_000);
    expect(killTimeoutMs).toBeLessThanOrEqual(FLY_MAX_KILL_TIMEOUT_S * 1_000);
  });

  it("builds from the Dockerfile", () => {
    expect(isTable(fly.build) ? fly.build.dockerfile : undefined).toBe("Dockerfile");
  });

  it("routes to the port the process listens on", () => {
    expect(httpService, "no [http_service]").toBeDefined();
    expect(flyEnv.PORT).toBeDefined();
    expect(httpService!.internal_port).toBe(Number(flyEnv.PORT));
    expect(httpService!.internal_port).toBe(flyConfig.port);
  });

  it("checks /readyz over HTTP", () => {
    const checks = [
      ...tables(httpService?.checks),
      ...tables(fly.services).flatMap((service) => tables(service.http_checks)),
    ];
    const readiness = checks.find((check) => check.path === "/readyz");
    expect(readiness, "no http check on /readyz").toBeDefined();
    expect(String(readiness!.method ?? "get").toUpperCase()).toBe("GET");
    // Fly reads bare numbers in check settings as milliseconds.
    expect(durationMs(readiness!.timeout, 1)).toBeLessThan(durationMs(readiness!.interval, 1));
    expect(durationMs(readiness!.grace_period, 1)).toBeGreaterThanOrEqual(10_000);
  });

  it("never stops a machine for being idle: sessions and jobs run in the process", () => {
    expect(["off", false]).toContain(httpService?.auto_stop_machines);
    expect(httpService?.min_machines_running).toBeGreaterThanOrEqual(1);
  });

  it("keeps the data directory on a volume, or says to use DATABASE_URL", () => {
    const dataMount = tables(fly.mounts).find((mount) => mount.destination === flyConfig.dataDir);
    const mentionsDatabaseUrl = /\bDATABASE_URL\b/.test(flyText);
    expect(
      dataMount !== undefined || mentionsDatabaseUrl,
      `no [mounts] at ${flyConfig.dataDir} (BERTH_DATA_DIR) and no word of DATABASE_URL`,
    ).toBe(true);
    if (dataMount) expect(dataMount.source).toEqual(expect.any(String));
  });
});
