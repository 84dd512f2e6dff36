import { describe, expect, it } from "vitest";
import { workerConnectionString } from "./runner";

describe("workerConnectionString", () => {
  it("labels the job runner's connections and lets them commit without waiting for the WAL flush", () => {
    const url = new URL(workerConnectionString("postgres://berth:secret@db.internal:5432/berth"));
    expect(url.searchParams.get("application_name")).toBe("berth-worker");
    expect(url.searchParams.get("options")).toBe("-c synchronous_commit=off");
    expect(`${url.username}:${url.password}@${url.host}${url.pathname}`).toBe("berth:secret@db.internal:5432/berth");
  });

  it("keeps what the operator's DATABASE_URL already sets", () => {
    const url = new URL(workerConnectionString("postgres://db/berth?application_name=ops&options=-c%20statement_timeout%3D5000&sslmode=require"));
    expect(url.searchParams.get("application_name")).toBe("ops");
    expect(url.searchParams.get("options")).toBe("-c statement_timeout=5000 -c synchronous_commit=off");
    expect(url.searchParams.get("sslmode")).toBe("require");
  });

  it("leaves synchronous_commit to the operator when DATABASE_URL's options choose it", () => {
    const url = new URL(workerConnectionString("postgres://db/berth?options=-c%20synchronous_commit%3Don"));
    expect(url.searchParams.get("options")).toBe("-c synchronous_commit=on");
  });
});
