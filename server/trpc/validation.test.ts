import { TRPCClientError } from "@trpc/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../../tests/helpers/berth";

const KEY = "validation_key_0123456789abcdefghijkl";

async function fieldErrorsOf(call: Promise<unknown>): Promise<Record<string, string>> {
  try {
    await call;
  } catch (error) {
    expect(error).toBeInstanceOf(TRPCClientError);
    const data = (error as TRPCClientError<never>).data as unknown as { code: string; fieldErrors?: Record<string, string> };
    expect(data.code).toBe("BAD_REQUEST");
    expect(data.fieldErrors).toBeDefined();
    return data.fieldErrors!;
  }
  throw new Error("expected BAD_REQUEST, but the call succeeded");
}

describe("malformed input is refused at the edge with field errors, and writes nothing", () => {
  let berth: TestBerth;
  // Untyped on purpose: these calls send what the types would forbid.
  let api: any; // eslint-disable-line @typescript-eslint/no-explicit-any

  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: KEY } });
    api = berth.client(KEY);
  });
  afterAll(async () => {
    await berth?.close();
  });

  it("wrong types", async () => {
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: 42, model: "demo" }))).toHaveProperty("name");
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", idleTimeoutSeconds: "soon" }))).toHaveProperty("idleTimeoutSeconds");
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", network: "internet" }))).toHaveProperty("network");
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", warmPoolSize: 51 }))).toHaveProperty("warmPoolSize");
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", warmPoolSize: 1.5 }))).toHaveProperty("warmPoolSize");
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", diskMb: 63 }))).toEqual({ diskMb: "must be at least 64 MiB" });
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", diskMb: 1_048_577 }))).toEqual({ diskMb: "must be at most 1048576 MiB (1 TiB)" });
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", diskMb: 100.5 }))).toEqual({ diskMb: "must be a whole number of MiB" });
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", diskMb: "2G" }))).toEqual({ diskMb: "must be a whole number of MiB" });
    expect(await fieldErrorsOf(api.agents.update.mutate({ agentId: "00000000-0000-4000-8000-000000000000", diskMb: 0 }))).toEqual({ diskMb: "must be at least 64 MiB" });
    expect(await fieldErrorsOf(api.agents.get.query({ agentId: "not-a-uuid" }))).toEqual({ agentId: "must be a UUID" });
    expect(await fieldErrorsOf(api.agents.list.query({ limit: 1000 }))).toHaveProperty("limit");
    expect(await fieldErrorsOf(api.apiKeys.create.mutate({ name: "k", role: "superuser" }))).toHaveProperty("role");
    expect(await fieldErrorsOf(api.teams.invite.mutate({ email: "not an email", role: "member" }))).toHaveProperty("email");
    expect(await fieldErrorsOf(api.teams.invite.mutate({ email: "a@example.com", role: "member", password: "a long enough password" }))).toHaveProperty("input");
    expect(await fieldErrorsOf(api.invitations.signUp.mutate({ token: "short", password: "a long enough password" }))).toHaveProperty("token");
  });

  it("oversized strings and collections", async () => {
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "x".repeat(101), model: "demo" }))).toHaveProperty("name");
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", systemPrompt: "p".repeat(100_001) }))).toHaveProperty("systemPrompt");
    const env = Object.fromEntries(Array.from({ length: 101 }, (_, i) => [`VAR_${i}`, "v"]));
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", env }))).toHaveProperty("env");
    expect(await fieldErrorsOf(api.secrets.set.mutate({ name: "BIG", value: "v".repeat(65_537) }))).toEqual({ value: "must be at most 64 KiB" });
    expect(await fieldErrorsOf(api.apiKeys.create.mutate({ name: "" }))).toHaveProperty("name");
  });

  it("unknown fields", async () => {
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", teamId: "00000000-0000-4000-8000-000000000000" }))).toHaveProperty("input");
    expect(await fieldErrorsOf(api.secrets.list.query({ includeValues: true }))).toHaveProperty("input");
  });

  it("names that cannot be environment variables", async () => {
    expect(await fieldErrorsOf(api.secrets.set.mutate({ name: "BAD-NAME", value: "x" }))).toHaveProperty("name");
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", env: { "1X": "v" } }))).toHaveProperty("env.1X");
  });

  it("NUL characters, which Postgres cannot store, wherever they are (the message names the field, never the value)", async () => {
    const nul = "\u0000";
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: `a${nul}`, model: "demo" }))).toEqual({ name: "must not contain NUL characters (U+0000)" });
    expect(await fieldErrorsOf(api.agents.create.mutate({ name: "a", model: "demo", env: { X: `v${nul}` } }))).toHaveProperty(["env.X"]);
    expect(await fieldErrorsOf(api.sessions.send.mutate({ sessionId: "00000000-0000-4000-8000-000000000000", text: `hi${nul}` }))).toHaveProperty("text");
    const secret = await api.secrets.set.mutate({ name: "NUL_SECRET", value: `s3cret${nul}value` }).catch((error: unknown) => error);
    expect((secret as TRPCClientError<never>).data).toMatchObject({ code: "BAD_REQUEST", fieldErrors: { value: "must not contain NUL characters (U+0000)" } });
    expect(JSON.stringify(secret)).not.toContain("s3cret");
    expect((secret as Error).message).not.toContain("s3cret");
    // A file's content goes to the sandbox, not to Postgres: NUL is allowed there (the unknown session answers).
    const write = await api.sessions.writeFile.mutate({ sessionId: "00000000-0000-4000-8000-000000000000", path: "a.bin", content: `x${nul}y` }).catch((error: unknown) => error);
    expect((write as TRPCClientError<never>).data).toMatchObject({ code: "NOT_FOUND" });
    expect(await fieldErrorsOf(api.sessions.writeFile.mutate({ sessionId: "00000000-0000-4000-8000-000000000000", path: `a${nul}.bin`, content: "x" }))).toHaveProperty("path");
  });

  it("left nothing behind", async () => {
    expect((await api.agents.list.query({})).items).toEqual([]);
    expect((await api.secrets.list.query({})).items).toEqual([]);
    expect((await api.apiKeys.list.query({})).items.map((key: { name: string }) => key.name)).toEqual(["bootstrap"]);
  });
});
