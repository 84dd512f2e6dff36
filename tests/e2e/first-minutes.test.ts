import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { chromium, type Browser, type Locator, type Page } from "playwright-core";
import { TRPCClientError } from "@trpc/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEMO_FIRST_MESSAGE } from "../../server/services/demo";
import { ROOT, startTestBerth, type TestBerth } from "../helpers/berth";
import { createKeyForTeam } from "../helpers/teams";
import { chromiumPath } from "../helpers/system-tools";

/**
 * A newcomer's first minutes (docs/decisions/024-first-minutes.md), in a real browser on a fresh
 * installation: from the home page, with the admin's generated password from its file, to a running
 * session showing a command's output, in at most three clicks and without filling in a form beyond
 * the sign-in.
 */
const CHROMIUM = chromiumPath();
const SHOTS = process.env.BERTH_TEST_SCREENSHOTS ?? path.join(ROOT, "test-artifacts/screenshots");
const API_KEY = "firstminutes_key_0123456789abcdefghijk";

describe("the first minutes on a fresh installation", () => {
  let berth: TestBerth;
  let browser: Browser;
  let page: Page;
  let clicks = 0;
  let sessionId = "";

  /** Every click of the path goes through here, so the test counts them. */
  async function click(target: Locator) {
    clicks++;
    await target.click();
  }

  beforeAll(async () => {
    mkdirSync(SHOTS, { recursive: true });
    // No BERTH_ADMIN_PASSWORD: generated and saved to the data dir, as on a real first start.
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: API_KEY } });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
    page = await browser.newPage({ viewport: { width: 1366, height: 860 } });
  });

  afterAll(async () => {
    await browser?.close();
    await berth?.close();
  });

  it("has no agent until someone asks for the demo", async () => {
    const agents = await berth.client(API_KEY).agents.list.query({ limit: 10 });
    expect(agents.items).toEqual([]);
  });

  it("goes from the home page to a command's output in three clicks", async () => {
    const password = readFileSync(berth.bootstrap.passwordFile, "utf8").trim();
    expect(password.length).toBeGreaterThan(16);

    await page.goto(`${berth.url}/`);
    await page.getByRole("heading", { name: "Berth" }).waitFor();
    await page.screenshot({ path: path.join(SHOTS, "first-minutes-home.png"), fullPage: true });
    await click(page.getByRole("link", { name: "Sign in to the dashboard" }));

    await page.waitForURL(/\/login$/);
    // Typing the credentials the start-up printed (no clicks: the email field has the focus).
    await page.getByLabel("Email").fill(berth.config.adminEmail);
    await page.getByLabel("Password").fill(password);
    await click(page.getByRole("button", { name: "Sign in" }));

    await page.waitForURL(/\/sessions$/);
    await page.getByText("No sessions yet").waitFor();
    await page.screenshot({ path: path.join(SHOTS, "first-minutes-sessions-empty.png"), fullPage: true });
    await click(page.getByRole("button", { name: "Start a demo session" }));

    await page.waitForURL(/\/sessions\/[0-9a-f-]{36}$/);
    sessionId = page.url().split("/").pop()!;
    await page.getByTestId("user-message").filter({ hasText: DEMO_FIRST_MESSAGE }).waitFor();
    const call = page.getByTestId("tool-call").first();
    // uname -a, then id in the jail (the sandbox user), then the workspace.
    const output = call.getByTestId("tool-output");
    await output.filter({ hasText: "Linux" }).waitFor({ timeout: 30_000 });
    await output.filter({ hasText: "uid=1000(sandbox)" }).waitFor();
    await output.filter({ hasText: "/workspace" }).waitFor();
    await page.getByTestId("assistant-message").filter({ hasText: "The command finished" }).waitFor({ timeout: 20_000 });
    expect(await call.locator(".tool-state").textContent()).toBe("exit 0");
    expect(clicks).toBeLessThanOrEqual(3);
    await page.locator('[data-testid=session-status] [data-status="ready"]').waitFor({ timeout: 20_000 });
    await page.screenshot({ path: path.join(SHOTS, "first-minutes-session.png"), fullPage: false });
  });

  it("made one demo agent, labelled as the offline demo, and the session's history is in the log", async () => {
    const api = berth.client(API_KEY);
    const agents = await api.agents.list.query({ limit: 10 });
    expect(agents.items.map((agent) => ({ name: agent.name, model: agent.model, isDemo: agent.isDemo }))).toEqual([{ name: "demo", model: "demo", isDemo: true }]);
    const events = await api.sessions.events.query({ sessionId, afterSeq: 0, limit: 100 });
    expect(events.items.filter((event) => event.type === "user_message").map((event) => (event.payload as { text: string }).text)).toEqual([DEMO_FIRST_MESSAGE]);
  });

  it("sends a suggested message in one more click", async () => {
    await page.getByRole("group", { name: "Try with the demo model" }).getByRole("button", { name: "run: ps aux" }).click();
    await page.getByTestId("tool-call").nth(1).getByTestId("tool-output").filter({ hasText: "PID" }).waitFor({ timeout: 30_000 });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: path.join(SHOTS, "first-minutes-session-phone.png") });
    await page.setViewportSize({ width: 1366, height: 860 });
  });

  it("reuses the demo agent on the next demo session, and tells a member who cannot make one whom to ask", async () => {
    const api = berth.client(API_KEY);
    const again = await api.sessions.startDemo.mutate();
    expect(again.agentCreated).toBe(false);
    expect((await api.agents.list.query({ limit: 10 })).items).toHaveLength(1);

    // A member of a team that has a demo agent may start demo sessions; without one, only an admin can make it.
    const member = berth.client(await createKeyForTeam(berth.databaseUrl, berth.bootstrap.teamId, "member"));
    expect((await member.sessions.startDemo.mutate()).agentId).toBe(again.agentId);
    await api.agents.delete.mutate({ agentId: again.agentId });
    const refused = await member.sessions.startDemo.mutate().catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(TRPCClientError);
    expect((refused as TRPCClientError<never>).data).toMatchObject({ code: "FORBIDDEN" });
    expect((refused as Error).message).toContain("ask an admin");
  });
});
