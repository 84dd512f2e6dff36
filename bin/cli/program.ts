import { Command, CommanderError, Option } from "commander";
import { createAgent, listAgents, showAgent, updateAgent } from "./agents";
import { attach } from "./attach";
import { CliError, EXIT, toCliError } from "./errors";
import { login, logout } from "./login";
import { deleteSecret, listSecrets, setSecret } from "./secrets";
import { abortTurn, execCommand, listSessions, newSession, sendMessage, sessionLogs, showSession, terminateSession } from "./sessions";
import { BERTH_VERSION as VERSION } from "../../server/version";

// Commander hands actions untyped values; each command's options type is checked where it is used.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Untyped = any;

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

const ALLOW_SYNTAX = `Egress: --egress none (no network), allowlist (only what --allow rules name) or open (any
public host); every connection goes through Berth's egress gateway and is recorded on the session.
An --allow rule is one argument: HOST[:PORT[,PORT]] [METHOD[,METHOD]] [PATH[,PATH]], e.g.
  --allow api.example.com            ports 80 and 443, any method and path
  --allow '*.github.com:443'         any name under github.com (quote the *)
  --allow 'registry.npmjs.org:443 GET /*'
  --allow '[2001:db8::1]:8080'
A path ending in * is a prefix. --allow implies --egress allowlist.`;

/** The `berth` command line (commander). Actions return an exit code or nothing (0). */
export function buildProgram(setExitCode: (code: number) => void): Command {
  const program = new Command("berth")
    .description("Command-line client for Berth: agents, sessions, live attach.")
    .version(VERSION, "-V, --version")
    .option("--json", "machine-readable output: one JSON document (JSON lines for logs and attach)")
    .showHelpAfterError("(add --help for usage)")
    .exitOverride()
    .addHelpText(
      "after",
      `
Credentials come from \`berth login\` ($XDG_CONFIG_HOME/berth/config.json or ~/.config/berth/config.json);
BERTH_URL and BERTH_API_KEY override them.

Exit codes: 0 ok, 1 error from the server (or it cannot be reached), 2 usage error,
3 not logged in or unauthorized, 4 agent or session not found.`,
    );
  // Every subcommand inherits exitOverride (usage errors become exit code 2, see main).
  const action =
    (fn: (...args: Untyped[]) => Promise<number | void>) =>
    async (...args: unknown[]) => {
      const command = args.at(-1) as Command;
      const code = await fn(...args.slice(0, -2), command.optsWithGlobals());
      if (typeof code === "number") setExitCode(code);
    };

  program
    .command("login")
    .description("store the Berth URL and an API key, after checking the key")
    .option("--url <url>", "Berth base URL, e.g. http://localhost:3000 (asked when missing)")
    .option("--api-key <key>", "API key (asked without echo when missing; prefer the prompt over shell history)")
    .action(action((options) => login(options)));
  program
    .command("logout")
    .description("forget the stored URL and API key")
    .action(action((options) => logout(options)));

  const agents = program.command("agents").description("list, show, create and update agents");
  agents
    .command("ls")
    .alias("list")
    .description("list the team's agents")
    .option("--limit <n>", "agents per page (1-100)", "20")
    .option("--cursor <cursor>", "continue after a previous page")
    .option("--all", "every page")
    .action(action((options) => listAgents(options)));
  agents
    .command("create")
    .description("create an agent")
    .requiredOption("--name <name>", "agent name")
    .requiredOption("--model <model>", "model name at the gateway (`demo`: the offline demo model)")
    .option("--system-prompt <text>", "system prompt")
    .addOption(new Option("--network <mode>", "sandbox network (shorthand: none = --egress none, egress = --egress open)").choices(["none", "egress"]))
    .option("--idle-timeout <seconds>", "suspend the sandbox after this many idle seconds")
    .addOption(new Option("--harness <name>", "agent harness").choices(["builtin", "opencode", "claude-code", "codex"]))
    .option("--max-steps <n>", "tool steps per turn")
    .option("--warm-pool <n>", "Kubernetes backend: sandboxes kept ready in a SandboxWarmPool (0-50, default 0)")
    .option("--disk-mb <mib>", "workspace disk quota in MiB (64-1048576, default 2048)")
    .addOption(new Option("--egress <mode>", "what the sandbox may reach (default none)").choices(["none", "allowlist", "open"]))
    .option("--allow <rule>", "allow-list rule, repeatable (see below)", collect)
    .addHelpText("after", `\n${ALLOW_SYNTAX}`)
    .action(action((options) => createAgent(options)));
  agents
    .command("show")
    .alias("get")
    .description("show an agent's configuration, egress policy included")
    .argument("<agent>", "agent id or name")
    .action(action((agent, options) => showAgent(agent, options)));
  agents
    .command("update")
    .description("change an agent: writes a new version with the options given, the rest unchanged")
    .argument("<agent>", "agent id or name")
    .option("--name <name>", "rename it")
    .option("--model <model>", "model name at the gateway")
    .option("--system-prompt <text>", "system prompt")
    .addOption(new Option("--network <mode>", "sandbox network (shorthand: none = --egress none, egress = --egress open)").choices(["none", "egress"]))
    .option("--idle-timeout <seconds>", "suspend the sandbox after this many idle seconds")
    .addOption(new Option("--harness <name>", "agent harness").choices(["builtin", "opencode", "claude-code", "codex"]))
    .option("--max-steps <n>", "tool steps per turn")
    .option("--warm-pool <n>", "Kubernetes backend: sandboxes kept ready in a SandboxWarmPool (0-50)")
    .option("--disk-mb <mib>", "workspace disk quota in MiB (64-1048576)")
    .addOption(new Option("--egress <mode>", "what the sandbox may reach; alone, it keeps the agent's allow rules").choices(["none", "allowlist", "open"]))
    .option("--allow <rule>", "allow-list rule, repeatable: REPLACES the whole list (give every rule to keep)", collect)
    .option("--no-allow", "empty the allow list (in allowlist mode nothing is then reachable)")
    .addHelpText("after", `\n${ALLOW_SYNTAX}\nOn update, the --allow rules replace the agent's list; an egress change applies to running sessions at once.`)
    .action(action((agent, options) => updateAgent(agent, options)));

  const secrets = program.command("secrets").description("set, list and delete secrets (values are write-only)");
  secrets
    .command("ls")
    .alias("list")
    .description("list secrets: names, scope and how sandboxes get them, never values")
    .option("--agent <agent>", "the secrets an agent's sandboxes get (its own and the team's)")
    .option("--limit <n>", "secrets per page (1-100)", "50")
    .option("--cursor <cursor>", "continue after a previous page")
    .option("--all", "every page")
    .action(action((options) => listSecrets(options)));
  secrets
    .command("set")
    .description("create or replace a secret (the value: typed without echo, piped on stdin, or --value)")
    .argument("<name>", "environment variable name, e.g. GITHUB_TOKEN")
    .option("--agent <agent>", "only for this agent's sandboxes (default: the whole team)")
    .option("--value <value>", "the value (visible in shell history and ps: prefer stdin)")
    .option("--broker-host <host>", "broker it to this host (repeatable, or comma-separated; *.example.com allowed): the sandbox sees only a stub", collect)
    .option("--broker-header <name>", "header the gateway puts it into (default Authorization)")
    .option("--broker-template <text>", 'header content, {{value}} standing for the secret (default "Bearer {{value}}")')
    .addHelpText(
      "after",
      `
A brokered secret never enters the sandbox: its variable holds a stub (berth-stub-…), and the egress
gateway replaces the header with the real value on HTTPS requests to the --broker-host hosts only.
A stub sent anywhere else is left as it is and reported on the session. Setting a secret again
without --broker-host makes it a plain environment variable.`,
    )
    .action(action((name, options) => setSecret(name, options)));
  secrets
    .command("rm")
    .alias("delete")
    .description("delete a secret")
    .argument("<name>", "secret name (or id)")
    .option("--agent <agent>", "the agent's own secret of that name (default: the team-wide one)")
    .action(action((name, options) => deleteSecret(name, options)));

  const sessions = program.command("sessions").description("start, use and stop sessions");
  sessions
    .command("ls")
    .alias("list")
    .description("list the team's sessions, newest first")
    .addOption(new Option("--status <status>", "only sessions in this status").choices(["pending", "provisioning", "ready", "running", "idle", "suspended", "reconnecting", "failed", "terminated"]))
    .option("--agent <agent>", "only sessions of this agent (id or name)")
    .option("--limit <n>", "sessions per page (1-100)", "20")
    .option("--cursor <cursor>", "continue after a previous page")
    .option("--all", "every page")
    .action(action((options) => listSessions(options)));
  sessions
    .command("new")
    .description("start a session of an agent; prints its id")
    .requiredOption("--agent <agent>", "agent id or name")
    .option("--title <title>", "session title")
    .option("--wait", "wait until its sandbox is ready")
    .action(action((options) => newSession(options)));
  sessions
    .command("show")
    .alias("get")
    .description("show a session: status, tokens, sandbox")
    .argument("<session>", "session id")
    .action(action((id, options) => showSession(id, options)));
  sessions
    .command("send")
    .description("send a message (TEXT words are joined with spaces; - reads it from stdin)")
    .argument("<session>", "session id")
    .argument("<text...>", "the message")
    .option("--wait", "wait for the turn to finish and print the answer (exit 1 if the turn fails)")
    .option("--idempotency-key <key>", "send at most once under this key (a retry returns the first result)")
    .action(action((id, words, options) => sendMessage(id, words, options)));
  sessions
    .command("logs")
    .description("print the session's events (JSON lines with --json)")
    .argument("<session>", "session id")
    .option("-f, --follow", "keep following live events (reconnects by itself; Ctrl-C stops)")
    .option("--after <seq>", "only events after this seq", "0")
    .action(action((id, options) => sessionLogs(id, options)));
  sessions
    .command("exec")
    .description("run a command in the session's sandbox; exits with its exit code")
    .usage("[options] <session> -- <command...>")
    .argument("<session>", "session id")
    .argument("[command...]", "one argument: a shell command line; several: a command and its arguments")
    .option("--timeout <seconds>", "kill the command after this many seconds (1-3600)")
    .action(action((id, argv, options) => execCommand(id, argv, options)));
  sessions
    .command("terminate")
    .description("stop the session and its sandbox for good")
    .argument("<session>", "session id")
    .action(action((id, options) => terminateSession(id, options)));
  sessions
    .command("abort")
    .description("stop the running turn")
    .argument("<session>", "session id")
    .action(action((id, options) => abortTurn(id, options)));

  program
    .command("attach")
    .description("follow a session live and send what you type (a line is a message)")
    .argument("<session>", "session id")
    .option("--history <n>", 'recent events to print first, or "all"', "20")
    .action(action((id, options) => attach(id, options)));

  return program;
}

/** Runs the CLI; resolves to the process exit code. Never prints the API key. */
export async function main(argv: string[]): Promise<number> {
  let exitCode: number = EXIT.ok;
  const program = buildProgram((code) => (exitCode = code));
  try {
    await program.parseAsync(argv);
    return exitCode;
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version end with 0; anything commander refuses is a usage error.
      return error.code === "commander.helpDisplayed" || error.code === "commander.version" || error.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    const failure = error instanceof CliError ? error : toCliError(error);
    if (failure.message) process.stderr.write(`berth: ${failure.message}\n`);
    return failure.exitCode;
  }
}
