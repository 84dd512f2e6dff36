import { sql, type AnyColumn, type SQL } from "drizzle-orm";
import { invalid } from "./errors";

/** Every list is a page: `{ items, nextCursor }`, with an opaque cursor naming the last row seen. */
export type Page<T> = { items: T[]; nextCursor: string | null };

export const DEFAULT_PAGE_SIZE = 20;
export const MAX_PAGE_SIZE = 100;

/** `at` is Postgres's own text of a timestamptz: microsecond precision, which a JS Date would lose. */
export type Cursor = { at: string; id: string };

const TIMESTAMP = /^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d{1,6})?([+-]\d\d(:?\d\d)?|Z)?$/;

/** The row's position for keyset pagination, selected alongside it. */
export const cursorAt = (column: AnyColumn) => sql<string>`${column}::text`;

/** Rows strictly after the cursor, in `order by created_at desc, id desc`. */
export function before(createdAt: AnyColumn, id: AnyColumn, cursor: string | undefined): SQL | undefined {
  if (!cursor) return undefined;
  const position = decodeCursor(cursor);
  return sql`(${createdAt}, ${id}) < (${position.at}::timestamptz, ${position.id})`;
}

export function encodeCursor(cursor: Cursor): string {
  return Buffer.from(JSON.stringify([cursor.at, cursor.id])).toString("base64url");
}

export function decodeCursor(cursor: string): Cursor {
  try {
    const [at, id] = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8")) as [unknown, unknown];
    if (typeof at !== "string" || typeof id !== "string" || !TIMESTAMP.test(at) || id.length > 64) throw new Error();
    return { at, id };
  } catch {
    throw invalid("cursor is not one this API returned");
  }
}

/** Fetch `limit + 1` rows, newest first; this trims the extra row and names the cursor for the next page. */
export function toPage<Row, Item>(
  rows: Row[],
  limit: number,
  cursorOf: (row: Row) => Cursor,
  toItem: (row: Row) => Item,
): Page<Item> {
  const pageRows = rows.slice(0, limit);
  const last = pageRows[pageRows.length - 1];
  return {
    items: pageRows.map(toItem),
    nextCursor: rows.length > limit && last ? encodeCursor(cursorOf(last)) : null,
  };
}
