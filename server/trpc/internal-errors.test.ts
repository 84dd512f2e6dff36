import postgres from "postgres";
import { TRPCClientError } from "@trpc/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestBerth, type TestBerth } from "../../tests/helpers/berth";

const KEY = "internal_errors_key_0123456789abcdefghij";

describe("an unexpected error in a procedure", () => {
  let berth: TestBerth;
  beforeAll(async () => {
    berth = await startTestBerth({ env: { BERTH_ADMIN_API_KEY: KEY } });
  });
  afterAll(async () => {
    await berth?.close();
  });

  it("answers INTERNAL_SERVER_ERROR with a generic message and no stack; the log keeps the details", async () => {
    const sql = postgres(berth.databaseUrl, { max: 1, onnotice: () => {} });
    try {
      // A broken database object: the query fails with Postgres' own text, which names the schema.
      await sql`alter table agents rename to agents_moved_away`;
      const error = await berth.client(KEY).agents.list.query({}).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(TRPCClientError);
      const trpcError = error as TRPCClientError<never>;
      expect(trpcError.data).toMatchObject({ code: "INTERNAL_SERVER_ERROR" });
      expect(trpcError.message).toBe("internal error (the server log has the details)");
      expect(JSON.stringify(trpcError.shape)).not.toMatch(/relation|does not exist|"stack"|\s{4}at /);
      expect(berth.logs()).toContain('relation \\"agents\\" does not exist');
    } finally {
      await sql`alter table if exists agents_moved_away rename to agents`;
      await sql.end();
    }
  });
});
