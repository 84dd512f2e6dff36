#!/usr/bin/env node
// Installs the system packages Berth needs beside Node and npm, so the README's two commands are all
// a newcomer types: `npm start` runs `setup-system.mjs run` (bubblewrap, for the sandboxes) and
// `npm test` runs `setup-system.mjs test` (also chromium for the dashboard tests, curl and git that
// the egress suites run inside jails, and promtool for the alert-rule tests).
//
// Packages come from the OS package manager (apt-get or dnf), through sudo when not root. promtool is
// taken out of Debian's `prometheus` package into node_modules/.cache/berth-system rather than
// installed, which would also install and start a Prometheus server on the machine.
//
// Nothing here is fatal for `run`: a server without bubblewrap still starts and says what is missing.
// BERTH_SKIP_SYSTEM_SETUP=1 skips it all (for machines whose packages are managed another way).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const TOOLS_DIR = path.join(ROOT, "node_modules", ".cache", "berth-system");
export const PROMTOOL = path.join(TOOLS_DIR, "bin", "promtool");

/** What each purpose needs: a check, and the package that provides it per package manager. */
const NEEDS = {
  bubblewrap: { check: () => onPath("bwrap"), apt: "bubblewrap", dnf: "bubblewrap", why: "the sandboxes' jails" },
  chromium: { check: () => Boolean(process.env.BERTH_TEST_CHROMIUM) || existsSync("/usr/bin/chromium") || playwrightChromium(), apt: "chromium", dnf: "chromium", why: "the dashboard's browser tests" },
  curl: { check: () => onPath("curl"), apt: "curl", dnf: "curl", why: "the egress tests (run inside jails)" },
  git: { check: () => onPath("git"), apt: "git", dnf: "git", why: "the egress tests (run inside jails)" },
};
const PURPOSES = { run: ["bubblewrap"], test: ["bubblewrap", "chromium", "curl", "git"] };

/** A chromium playwright installed (its cache: ~/.cache/ms-playwright/chromium-<build>). */
function playwrightChromium() {
  const cache = process.env.PLAYWRIGHT_BROWSERS_PATH ?? path.join(os.homedir(), ".cache", "ms-playwright");
  try {
    return readdirSync(cache).some((name) => name.startsWith("chromium-"));
  } catch {
    return false;
  }
}

function onPath(program) {
  return spawnSync("sh", ["-c", `command -v ${program}`], { stdio: "ignore" }).status === 0;
}

function say(message) {
  process.stderr.write(`berth setup: ${message}\n`);
}

function osRelease() {
  try {
    return Object.fromEntries(
      readFileSync("/etc/os-release", "utf8")
        .split("\n")
        .filter((line) => line.includes("="))
        .map((line) => {
          const at = line.indexOf("=");
          return [line.slice(0, at), line.slice(at + 1).replace(/^"|"$/g, "")];
        }),
    );
  } catch {
    return {};
  }
}

/** How to run a command as root: directly, through sudo (asking for a password only at a terminal), or not at all. */
function privileged() {
  if (process.getuid?.() === 0) return [];
  if (!onPath("sudo")) return null;
  return process.stdin.isTTY ? ["sudo"] : ["sudo", "-n"];
}

function runAsRoot(command, env = {}) {
  const prefix = privileged();
  if (prefix === null) return false;
  const full = [...prefix, ...(Object.keys(env).length ? ["env", ...Object.entries(env).map(([k, v]) => `${k}=${v}`)] : []), ...command];
  say(`running: ${full.join(" ")}`);
  return spawnSync(full[0], full.slice(1), { stdio: ["inherit", "ignore", "inherit"] }).status === 0;
}

function aptListsPresent() {
  try {
    return readdirSync("/var/lib/apt/lists").some((name) => name.endsWith("_Packages") || name.endsWith("_Packages.lz4"));
  } catch {
    return false;
  }
}

function installPackages(manager, packages) {
  if (manager === "apt") {
    const env = { DEBIAN_FRONTEND: "noninteractive" };
    if (!aptListsPresent() && !runAsRoot(["apt-get", "update", "-qq"], env)) return false;
    const install = () => runAsRoot(["apt-get", "install", "-y", "-qq", "--no-install-recommends", ...packages], env);
    // Stale lists name package versions the mirror no longer has: refresh once and try again.
    return install() || (runAsRoot(["apt-get", "update", "-qq"], env) && install());
  }
  return runAsRoot(["dnf", "install", "-y", "-q", ...packages]);
}

/** promtool, out of the distribution's prometheus package (nothing installed, no server started). */
function ensurePromtool(manager) {
  if (process.env.BERTH_PROMTOOL || onPath("promtool") || existsSync(PROMTOOL)) return true;
  if (manager !== "apt") return false;
  const scratch = mkdtempSync(path.join(os.tmpdir(), "berth-promtool-"));
  try {
    // (As root, apt warns that its _apt user cannot write to this private folder, and downloads anyway.)
    const download = () => {
      const result = spawnSync("apt-get", ["download", "-qq", "prometheus"], { cwd: scratch, encoding: "utf8" });
      if (result.status !== 0) say(`apt-get download prometheus: ${(result.stderr ?? "").trim()}`);
      return result.status === 0;
    };
    if (!download() && !(runAsRoot(["apt-get", "update", "-qq"]) && download())) return false;
    const deb = readdirSync(scratch).find((name) => name.endsWith(".deb"));
    if (!deb) return false;
    const target = path.join(TOOLS_DIR, "prometheus");
    rmSync(target, { recursive: true, force: true });
    mkdirSync(target, { recursive: true });
    if (spawnSync("dpkg-deb", ["-x", path.join(scratch, deb), target], { stdio: "inherit" }).status !== 0) return false;
    mkdirSync(path.dirname(PROMTOOL), { recursive: true });
    rmSync(PROMTOOL, { force: true });
    symlinkSync(path.join("..", "prometheus", "usr", "bin", "promtool"), PROMTOOL);
    say(`promtool taken from Debian's prometheus package into ${path.relative(ROOT, TOOLS_DIR)}`);
    return existsSync(PROMTOOL);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

function main() {
  const purpose = process.argv[2];
  if (!(purpose in PURPOSES)) {
    say("usage: setup-system.mjs run|test");
    process.exit(2);
  }
  if (process.env.BERTH_SKIP_SYSTEM_SETUP === "1" || process.platform !== "linux") return;
  const missing = PURPOSES[purpose].filter((name) => !NEEDS[name].check());
  const manager = onPath("apt-get") ? "apt" : onPath("dnf") ? "dnf" : null;
  const problems = [];

  if (missing.length > 0) {
    const release = osRelease();
    // Ubuntu's chromium package is a stub that installs a snap, which cannot run here: playwright's build instead.
    const viaPlaywright = missing.includes("chromium") && release.ID === "ubuntu";
    const packages = missing.filter((name) => !(viaPlaywright && name === "chromium")).map((name) => NEEDS[name][manager ?? "apt"]);
    say(`installing what ${purpose === "run" ? "Berth" : "the tests"} need${purpose === "run" ? "s" : ""}: ${missing.map((name) => `${name} (${NEEDS[name].why})`).join(", ")}`);
    const installed = manager !== null && packages.length > 0 ? installPackages(manager, packages) : packages.length === 0;
    if (viaPlaywright) {
      const ok = spawnSync("npx", ["--no-install", "playwright-core", "install", "--with-deps", "chromium"], { cwd: ROOT, stdio: "inherit" }).status === 0;
      if (!ok) problems.push("chromium: `npx playwright-core install --with-deps chromium` failed; set BERTH_TEST_CHROMIUM to a chromium binary");
    }
    const still = PURPOSES[purpose].filter((name) => !NEEDS[name].check());
    if (!installed || still.length > 0) {
      const names = (still.length > 0 ? still : missing).map((name) => NEEDS[name].apt);
      const how =
        manager === null
          ? `there is no apt-get or dnf here: install ${names.join(", ")} with this system's package manager`
          : privileged() === null
            ? `not root and no sudo: as root, run \`${manager === "apt" ? "apt-get install" : "dnf install"} ${names.join(" ")}\``
            : `the install did not succeed: run \`sudo ${manager === "apt" ? "apt-get install" : "dnf install"} ${names.join(" ")}\``;
      problems.push(how);
    }
  }
  let promtool = false;
  try {
    promtool = purpose !== "test" || ensurePromtool(manager);
  } catch (error) {
    say(`could not take promtool out of the prometheus package: ${error.message}`);
  }
  if (!promtool) {
    problems.push("promtool (the alert-rule tests): install Prometheus' promtool, or set BERTH_PROMTOOL to it");
  }

  if (problems.length === 0) return;
  for (const problem of problems) say(problem);
  if (purpose === "run") {
    say("starting anyway: without bubblewrap, sandboxes are unavailable (the dashboard and system.health say so)");
    return;
  }
  process.exit(1);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
