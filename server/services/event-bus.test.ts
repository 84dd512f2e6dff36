import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectDatabase, type DatabaseClient } from "../../db/client";
import { createTestDatabase, dropListeningConnections, type TestDatabase } from "../../tests/helpers/database";
import { waitFor } from "../../tests/helpers/processes";
import { createLogger } from "../logger";
import { API_KEY_REVOKED_CHANNEL, DELTAS_CHANNEL, EventBus, TURN_ABORT_CHANNEL, TURN_TAKEN_OVER_CHANNEL } from "./event-bus";
import { EVENTS_CHANNEL } from "./event-log";

const logger = createLogger("silent");

describe("event bus after its listening connection drops", () => {
  let database: TestDatabase;
  let client: DatabaseClient;
  let sender: DatabaseClient;
  beforeAll(async () => {
    database = await createTestDatabase();
    client = connectDatabase(database.url, { max: 2 });
    sender = connectDatabase(database.url, { max: 2 });
  });
  afterAll(async () => {
    await client?.close();
    await sender?.close();
    await database?.drop();
  });

  it("reports every channel as missed, wakes every follower, and hears notifications again", async () => {
    const bus = new EventBus(client.sql, logger);
    await bus.start();
    try {
      const missed: string[] = [];
      bus.onNotificationsMissed((channel) => missed.push(channel));
      const woken: number[] = [];
      bus.subscribe("00000000-0000-4000-8000-000000000001", { onEvents: (lastSeq) => woken.push(lastSeq), onDelta: () => {} });
      const aborts: string[] = [];
      bus.onTurnAbort((turnId) => aborts.push(turnId));

      // Nothing is reported while the connection stays up.
      await sender.sql`select pg_notify(${TURN_ABORT_CHANNEL}, 'turn-1')`;
      await waitFor("the first abort", async () => (aborts.length === 1 ? true : undefined), 5_000);
      expect(missed).toEqual([]);
      expect(woken).toEqual([]);

      expect(await dropListeningConnections(sender.sql)).toHaveLength(1);
      await waitFor("every channel to be listened to again", async () => (missed.length === 5 ? true : undefined), 10_000);
      expect([...missed].sort()).toEqual([API_KEY_REVOKED_CHANNEL, DELTAS_CHANNEL, EVENTS_CHANNEL, TURN_ABORT_CHANNEL, TURN_TAKEN_OVER_CHANNEL].sort());
      // A follower reads the log again at once, whatever seq it is at.
      expect(woken).toEqual([Number.MAX_SAFE_INTEGER]);

      await sender.sql`select pg_notify(${TURN_ABORT_CHANNEL}, 'turn-2')`;
      await waitFor("the abort sent after the drop", async () => (aborts.length === 2 ? true : undefined), 5_000);
      expect(aborts).toEqual(["turn-1", "turn-2"]);
    } finally {
      await bus.stop();
    }
  });
});
