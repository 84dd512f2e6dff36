import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pipeline, type Readable, type Writable } from "node:stream";
import { createGunzip, createGzip } from "node:zlib";
import { readMigrationFiles } from "drizzle-orm/migrator";
import type postgres from "postgres";
import { connectPostgres } from "./postgres-url";
import { MIGRATIONS_FOLDER, migrateDatabase } from "./migrate";

/**
 * Backup and restore of all Berth data (docs/decisions/008-backup-format.md).
 *
 * The file is gzip'd JSON lines, written and read as streams (memory does not grow with the data):
 *
 *   {"format":"berth-backup","version":1,"createdAt":…,"postgres":…,"migrations":[…],"tables":[…]}
 *   {"table":"teams","columns":["id","slug","name","created_at"]}
 *   {"t":"teams","r":{…one row, as Postgres' row_to_json wrote it…}}
 *   …every table of the `public` schema in foreign-key order, then the graphile-worker jobs…
 *   {"end":{"rows":{"teams":1,…},"sha256":"…of every line above…"}}
 *
 * Rows are never parsed into JavaScript values on their way in or out: Postgres writes them with
 * row_to_json and reads them back with json_populate_recordset, so bigints, numerics, bytea (the
 * secrets' ciphertext), timestamps with microseconds and jsonb payloads come back exactly.
 */

export const BACKUP_FORMAT = "berth-backup";
export const BACKUP_VERSION = 1;
/** graphile-worker's jobs, stored as a pseudo-table and restored through graphile_worker.add_job. */
export const JOBS_TABLE = "graphile_worker.jobs";
/** Per-process liveness rows, meaningless anywhere else (decision 003); failed-login counts, which only live 15 minutes (decision 020). */
const EXCLUDED_TABLES = new Set(["worker_instances", "login_failures"]);
const JOB_COLUMNS = ["task_identifier", "payload", "queue_name", "priority", "run_at", "attempts", "max_attempts", "last_error", "key", "flags", "created_at"];
const RESTORED_REASON = "restored from a backup";
/** Sessions in these states had a sandbox (or were getting one) that does not exist where the backup is restored. */
const LIVE_SESSION_STATES = ["pending", "provisioning", "ready", "running", "idle", "reconnecting"];

/** A problem with the backup file or the target database, said in a sentence an operator can act on. */
export class BackupError extends Error {
  override name = "BackupError";
}

export type BackupHeader = {
  format: typeof BACKUP_FORMAT;
  version: number;
  createdAt: string;
  postgres: string;
  /** drizzle's __drizzle_migrations of the source, oldest first: the schema the rows fit. */
  migrations: { hash: string; createdAt: number }[];
  /** Tables in restore (foreign-key) order, the jobs pseudo-table last. */
  tables: string[];
};

export type BackupSummary = { file: string; bytes: number; rows: Record<string, number> };

const quote = (identifier: string) => `"${identifier.replace(/"/g, '""')}"`;

function connect(databaseUrl: string) {
  return connectPostgres(databaseUrl, { max: 1, onnotice: () => {}, connect_timeout: 10, connection: { application_name: "berth-backup" } });
}

// ---------------------------------------------------------------------------------------------
// Backup
// ---------------------------------------------------------------------------------------------

type TablePlan = { name: string; columns: string[]; orderBy: string[] };

/** The tables of `public` (but the excluded ones) in an order where every row's references come first. */
async function planTables(sql: postgres.Sql | postgres.TransactionSql): Promise<TablePlan[]> {
  const tables = await sql<{ name: string }[]>`
    select c.relname as name from pg_class c
    where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p') and not c.relispartition
    order by c.relname`;
  const edges = await sql<{ child: string; parent: string }[]>`
    select distinct child.relname as child, parent.relname as parent
    from pg_constraint c
    join pg_class child on child.oid = c.conrelid
    join pg_class parent on parent.oid = c.confrelid
    where c.contype = 'f' and child.relnamespace = 'public'::regnamespace and parent.relnamespace = 'public'::regnamespace`;
  const names = tables.map((table) => table.name).filter((name) => !EXCLUDED_TABLES.has(name));
  const parents = new Map(names.map((name) => [name, new Set<string>()]));
  for (const edge of edges) {
    if (edge.child !== edge.parent && parents.has(edge.child) && parents.has(edge.parent)) parents.get(edge.child)!.add(edge.parent);
  }
  const ordered: string[] = [];
  const remaining = new Set(names);
  while (remaining.size > 0) {
    const ready = [...remaining].filter((name) => [...parents.get(name)!].every((parent) => !remaining.has(parent))).sort();
    if (ready.length === 0) throw new BackupError(`the foreign keys between ${[...remaining].join(", ")} form a cycle; this backup format cannot order them`);
    for (const name of ready) {
      ordered.push(name);
      remaining.delete(name);
    }
  }
  const plans: TablePlan[] = [];
  for (const name of ordered) {
    const relation = `public.${quote(name)}`;
    const columns = await sql<{ name: string }[]>`
      select attname as name from pg_attribute
      where attrelid = ${relation}::regclass and attnum > 0 and not attisdropped and attgenerated = ''
      order by attnum`;
    const key = await sql<{ name: string }[]>`
      select a.attname as name from pg_index i
      join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
      where i.indrelid = ${relation}::regclass and i.indisprimary
      order by array_position(i.indkey::int2[], a.attnum)`;
    plans.push({ name, columns: columns.map((column) => column.name), orderBy: key.map((column) => column.name) });
  }
  return plans;
}

/** Writes a chunk, waiting for the stream to drain when its buffer is full. */
function write(stream: Writable, chunk: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => reject(error);
    stream.once("error", onError);
    const done = () => {
      stream.off("error", onError);
      resolve();
    };
    if (stream.write(chunk)) done();
    else stream.once("drain", done);
  });
}

/**
 * Dumps every Berth table and the graphile-worker jobs of the database into `outFile`, from one
 * consistent snapshot (a repeatable-read, read-only transaction: a running Berth may keep writing).
 * The file appears only when complete (written beside it, then renamed), with mode 0600.
 */
export async function writeBackup(databaseUrl: string, outFile: string, options: { rowsPerFetch?: number } = {}): Promise<BackupSummary> {
  const target = path.resolve(outFile);
  const partial = `${target}.partial-${process.pid}`;
  await fs.access(path.dirname(target), fs.constants.W_OK).catch((error: NodeJS.ErrnoException) => {
    throw new BackupError(`cannot write into ${path.dirname(target)}: ${error.code === "ENOENT" ? "no such folder" : error.message}`);
  });
  const sql = connect(databaseUrl);
  const rows: Record<string, number> = {};
  const gzip = createGzip();
  try {
    const file = createWriteStream(partial, { mode: 0o600 });
    const finished = new Promise<void>((resolve, reject) => pipeline(gzip, file, (error) => (error ? reject(error) : resolve())));
    // A rejected `finished` is awaited below; until then it must not count as unhandled.
    finished.catch(() => {});
    const hash = createHash("sha256");
    const emit = async (lines: string[]) => {
      const chunk = lines.join("\n") + "\n";
      hash.update(chunk);
      // A failing file (disk full) ends the pipeline: stop at once instead of waiting for a drain.
      await Promise.race([write(gzip, chunk), finished]);
    };

    await sql.begin("isolation level repeatable read read only", async (tx) => {
      await tx`set local bytea_output = 'hex'`;
      await tx`set local timezone = 'UTC'`;
      const migrated = await tx<{ present: boolean }[]>`select to_regclass('drizzle.__drizzle_migrations') is not null as present`;
      if (!migrated[0]!.present) throw new BackupError("the database holds no Berth schema (no drizzle.__drizzle_migrations): nothing to back up");
      const migrations = await tx<{ hash: string; createdAt: string }[]>`select hash, created_at::text as "createdAt" from drizzle.__drizzle_migrations order by id`;
      const [version] = await tx<{ version: string }[]>`select current_setting('server_version') as version`;
      const [jobsPresent] = await tx<{ present: boolean }[]>`select to_regclass('graphile_worker._private_jobs') is not null as present`;
      const plans = await planTables(tx);
      const header: BackupHeader = {
        format: BACKUP_FORMAT,
        version: BACKUP_VERSION,
        createdAt: new Date().toISOString(),
        postgres: version!.version,
        migrations: migrations.map((migration) => ({ hash: migration.hash, createdAt: Number(migration.createdAt) })),
        tables: [...plans.map((plan) => plan.name), JOBS_TABLE],
      };
      await emit([JSON.stringify(header)]);

      const dump = async (table: string, columns: string[], query: string) => {
        await emit([JSON.stringify({ table, columns })]);
        rows[table] = 0;
        const prefix = `{"t":${JSON.stringify(table)},"r":`;
        for await (const batch of tx.unsafe<{ line: string }[]>(query).cursor(options.rowsPerFetch ?? 500)) {
          // A json (not jsonb) value may hold line breaks as whitespace; inside JSON strings they are escaped.
          await emit(batch.map(({ line }) => `${prefix}${/[\r\n]/.test(line) ? line.replace(/[\r\n]/g, " ") : line}}`));
          rows[table] += batch.length;
        }
      };
      for (const plan of plans) {
        const columns = plan.columns.map(quote).join(", ");
        const order = plan.orderBy.length > 0 ? ` order by ${plan.orderBy.map(quote).join(", ")}` : "";
        await dump(plan.name, plan.columns, `select row_to_json(x)::text as line from (select ${columns} from public.${quote(plan.name)}${order}) x`);
      }
      const jobs = jobsPresent!.present
        ? `select row_to_json(x)::text as line from (
             select t.identifier as task_identifier, j.payload, q.queue_name, j.priority, j.run_at, j.attempts,
                    j.max_attempts, j.last_error, j.key, j.flags, j.created_at
             from graphile_worker._private_jobs j
             join graphile_worker._private_tasks t on t.id = j.task_id
             left join graphile_worker._private_job_queues q on q.id = j.job_queue_id
             order by j.id) x`
        : "select null::text as line where false";
      await dump(JOBS_TABLE, JOB_COLUMNS, jobs);
    });

    const trailer = JSON.stringify({ end: { rows, sha256: hash.digest("hex") } });
    await Promise.race([write(gzip, `${trailer}\n`), finished]);
    gzip.end();
    await finished;
    await fs.rename(partial, target);
    const { size } = await fs.stat(target);
    return { file: target, bytes: size, rows };
  } catch (error) {
    gzip.destroy();
    await fs.rm(partial, { force: true });
    throw error;
  } finally {
    await sql.end({ timeout: 5 });
  }
}

// ---------------------------------------------------------------------------------------------
// Reading and validating
// ---------------------------------------------------------------------------------------------

/** The file's lines, gunzipped when it starts with the gzip magic bytes; stream errors become BackupErrors. */
async function* readLines(file: string): AsyncGenerator<string> {
  const handle = await fs.open(file).catch((error: NodeJS.ErrnoException) => {
    throw new BackupError(`cannot open ${file}: ${error.code === "ENOENT" ? "no such file" : error.message}`);
  });
  const magic = Buffer.alloc(2);
  const { bytesRead } = await handle.read(magic, 0, 2, 0);
  await handle.close();
  const gzipped = bytesRead === 2 && magic[0] === 0x1f && magic[1] === 0x8b;
  let stream: Readable = createReadStream(file);
  if (gzipped) stream = pipeline(stream, createGunzip(), () => {});
  stream.setEncoding("utf8");
  let rest = "";
  try {
    for await (const chunk of stream as AsyncIterable<string>) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      for (const part of parts) yield part;
    }
  } catch (error) {
    const detail = (error as Error).message;
    throw new BackupError(
      gzipped && /unexpected end of file/i.test(detail)
        ? "the file is truncated (its compressed data ends early)"
        : `the file is damaged (${gzipped ? "gzip: " : ""}${detail})`,
    );
  } finally {
    stream.destroy();
  }
  if (rest.length > 0) yield rest;
}

type Line =
  | { kind: "table"; table: string; columns: string[] }
  | { kind: "row"; table: string; raw: string }
  | { kind: "end"; rows: Record<string, number>; sha256: string };

const ROW_PREFIX = /^\{"t":("(?:[^"\\]|\\.)*"),"r":/;

/** One line after the header; rows are sliced out of the line, not parsed, unless `check` is set. */
function parseLine(line: string, number: number, check: boolean): Line {
  const row = ROW_PREFIX.exec(line);
  if (row && line.endsWith("}")) {
    if (check) {
      try {
        const parsed = JSON.parse(line) as { r?: unknown };
        if (typeof parsed.r !== "object" || parsed.r === null || Array.isArray(parsed.r)) throw new Error("not an object");
      } catch {
        throw new BackupError(`the file is damaged: line ${number} is not a valid row`);
      }
    }
    return { kind: "row", table: JSON.parse(row[1]!) as string, raw: line.slice(row[0].length, -1) };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    throw new BackupError(`the file is damaged: line ${number} is not valid JSON`);
  }
  const value = parsed as { table?: unknown; columns?: unknown; end?: { rows?: unknown; sha256?: unknown } };
  if (typeof value.table === "string" && Array.isArray(value.columns) && value.columns.every((column) => typeof column === "string")) {
    return { kind: "table", table: value.table, columns: value.columns as string[] };
  }
  if (value.end && typeof value.end.sha256 === "string" && typeof value.end.rows === "object" && value.end.rows !== null) {
    return { kind: "end", rows: value.end.rows as Record<string, number>, sha256: value.end.sha256 };
  }
  throw new BackupError(`the file is damaged: line ${number} is not part of the format`);
}

function parseHeader(line: string | undefined): BackupHeader {
  let header: Partial<BackupHeader> | undefined;
  try {
    header = line === undefined ? undefined : (JSON.parse(line) as Partial<BackupHeader>);
  } catch {
    header = undefined;
  }
  if (!header || header.format !== BACKUP_FORMAT) throw new BackupError("this is not a Berth backup (no berth-backup header on the first line)");
  if (header.version !== BACKUP_VERSION) {
    throw new BackupError(`the backup has format version ${String(header.version)}; this Berth reads version ${BACKUP_VERSION} (restore it with the Berth that made it, or a newer one)`);
  }
  if (!Array.isArray(header.migrations) || !Array.isArray(header.tables)) throw new BackupError("the file is damaged: its header lacks migrations or tables");
  return header as BackupHeader;
}

export type ValidatedBackup = { header: BackupHeader; columns: Map<string, string[]>; rows: Record<string, number> };

/**
 * Reads the whole file once without touching any database: the header, every line, the row counts
 * and the SHA-256 of the end marker. A truncated or damaged file fails here, with a sentence saying so.
 */
export async function validateBackup(file: string): Promise<ValidatedBackup> {
  const lines = readLines(file);
  const first = await lines.next();
  const headerLine = first.done ? undefined : first.value;
  const header = parseHeader(headerLine);
  const hash = createHash("sha256").update(`${headerLine}\n`);
  const columns = new Map<string, string[]>();
  const rows: Record<string, number> = {};
  let current: string | undefined;
  let end: Extract<Line, { kind: "end" }> | undefined;
  let number = 1;
  for await (const line of lines) {
    number++;
    if (end) {
      if (line.length === 0) continue;
      throw new BackupError(`the file is damaged: line ${number} follows the end marker`);
    }
    const parsed = parseLine(line, number, true);
    if (parsed.kind === "end") {
      end = parsed;
      continue;
    }
    hash.update(`${line}\n`);
    if (parsed.kind === "table") {
      if (!header.tables.includes(parsed.table) || columns.has(parsed.table)) throw new BackupError(`the file is damaged: unexpected table ${parsed.table} at line ${number}`);
      columns.set(parsed.table, parsed.columns);
      rows[parsed.table] = 0;
      current = parsed.table;
    } else {
      if (parsed.table !== current) throw new BackupError(`the file is damaged: a row of ${parsed.table} at line ${number} is outside its table`);
      rows[current] = (rows[current] ?? 0) + 1;
    }
  }
  if (!end) throw new BackupError(`the file is truncated: it ends at line ${number} without its end marker`);
  if (end.sha256 !== hash.digest("hex")) throw new BackupError("the file is damaged: its checksum does not match its contents");
  for (const table of header.tables) {
    if (!columns.has(table)) throw new BackupError(`the file is damaged: table ${table} is missing`);
    if (end.rows[table] !== rows[table]) throw new BackupError(`the file is damaged: ${table} holds ${rows[table]} rows, its end marker says ${end.rows[table]}`);
  }
  return { header, columns, rows };
}

// ---------------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------------

/** Tables of the database that hold rows, and whether graphile-worker holds jobs: anything means "not empty". */
async function existingData(sql: postgres.Sql | postgres.TransactionSql): Promise<string[]> {
  const tables = await sql<{ name: string }[]>`
    select relname as name from pg_class where relnamespace = 'public'::regnamespace and relkind in ('r', 'p') order by relname`;
  const held: string[] = [];
  for (const { name } of tables) {
    const [row] = await sql.unsafe<{ held: boolean }[]>(`select exists (select 1 from public.${quote(name)}) as held`);
    if (row!.held) held.push(name);
  }
  const [jobs] = await sql<{ present: boolean }[]>`select to_regclass('graphile_worker._private_jobs') is not null as present`;
  if (jobs!.present) {
    const [row] = await sql<{ held: boolean }[]>`select exists (select 1 from graphile_worker._private_jobs) as held`;
    if (row!.held) held.push("graphile_worker jobs");
  }
  return held;
}

/** A copy of the migrations folder with only its first `count` migrations: the schema a backup was made with. */
async function migrationsUpTo(count: number): Promise<string> {
  const folder = await fs.mkdtemp(path.join(os.tmpdir(), "berth-restore-migrations-"));
  const journal = JSON.parse(await fs.readFile(path.join(MIGRATIONS_FOLDER, "meta", "_journal.json"), "utf8")) as { entries: { tag: string }[] };
  journal.entries = journal.entries.slice(0, count);
  await fs.mkdir(path.join(folder, "meta"));
  await fs.writeFile(path.join(folder, "meta", "_journal.json"), JSON.stringify(journal));
  for (const entry of journal.entries) await fs.copyFile(path.join(MIGRATIONS_FOLDER, `${entry.tag}.sql`), path.join(folder, `${entry.tag}.sql`));
  return folder;
}

export type RestoreSummary = {
  rows: Record<string, number>;
  /** Sessions moved to `suspended` (their sandboxes do not exist here); their next use provisions a new generation. */
  suspendedSessions: number;
  endedSandboxes: number;
  warnings: string[];
};

export type RestoreOptions = {
  /** Runs inside the restore transaction before it commits; throwing rolls everything back. */
  beforeCommit?: (tx: postgres.TransactionSql) => Promise<void>;
  /** Progress lines for an operator. */
  log?: (message: string) => void;
  rowsPerInsert?: number;
};

/**
 * Restores a backup into an EMPTY database (no rows in any table; a schema without rows is fine):
 * validates the whole file first, migrates the schema to the backup's level, inserts every row and
 * re-enqueues the jobs in one transaction, then applies this build's newer migrations, if any.
 */
export async function restoreBackup(databaseUrl: string, file: string, options: RestoreOptions = {}): Promise<RestoreSummary> {
  const log = options.log ?? (() => {});
  const warnings: string[] = [];
  const backup = await validateBackup(file);
  const total = Object.values(backup.rows).reduce((sum, count) => sum + count, 0);
  log(`backup of ${backup.header.createdAt} is complete and intact: ${total} rows in ${backup.header.tables.length} tables`);

  const shipped = readMigrationFiles({ migrationsFolder: MIGRATIONS_FOLDER });
  const level = backup.header.migrations.length;
  if (level > shipped.length) {
    throw new BackupError(`the backup was made by a newer Berth (${level} schema migrations; this one ships ${shipped.length}): restore it with that version or a newer one`);
  }
  backup.header.migrations.forEach((migration, index) => {
    if (migration.hash !== shipped[index]!.hash) {
      throw new BackupError(`the backup's schema migration ${index + 1} differs from this Berth's: it was made by a different build of Berth`);
    }
  });

  const sql = connect(databaseUrl);
  try {
    const held = await existingData(sql);
    if (held.length > 0) {
      throw new BackupError(`the target database already holds Berth data (rows in ${held.join(", ")}): restore only into an empty database, for example a new one made with "create database"`);
    }
    const [journal] = await sql<{ present: boolean }[]>`select to_regclass('drizzle.__drizzle_migrations') is not null as present`;
    const applied = journal!.present ? (await sql<{ count: number }[]>`select count(*)::int as count from drizzle.__drizzle_migrations`)[0]!.count : 0;
    const partial = level < shipped.length && applied <= level;
    if (level < shipped.length && !partial) {
      warnings.push(`the target's schema is already newer than the backup's; rows are restored into it without the data changes of migrations ${level + 1}..${shipped.length}`);
    }
    if (partial) {
      const folder = await migrationsUpTo(level);
      try {
        await migrateDatabase(databaseUrl, folder);
      } finally {
        await fs.rm(folder, { recursive: true, force: true });
      }
    } else {
      await migrateDatabase(databaseUrl);
    }
    log("schema migrated");

    const summary = await sql.begin(async (tx) => {
      await tx`set local bytea_output = 'hex'`;
      // The same lock migrations take: no replica migrates or starts its bootstrap while rows go in.
      await tx`select pg_advisory_xact_lock(${0x4265_7274})`;
      const late = await existingData(tx);
      if (late.length > 0) throw new BackupError(`the target database received data while restoring (rows in ${late.join(", ")}): is a Berth running on it? Stop it and use an empty database`);
      for (const table of backup.header.tables) {
        if (table === JOBS_TABLE) continue;
        const present = await tx<{ name: string }[]>`
          select attname as name from pg_attribute
          where attrelid = to_regclass(${`public.${quote(table)}`}) and attnum > 0 and not attisdropped and attgenerated = ''`;
        if (present.length === 0) throw new BackupError(`table ${table} of the backup does not exist in the target schema`);
        const names = new Set(present.map((column) => column.name));
        const missing = backup.columns.get(table)!.filter((column) => !names.has(column));
        if (missing.length > 0) throw new BackupError(`columns ${missing.join(", ")} of ${table} do not exist in the target schema`);
      }

      const rowsPerInsert = options.rowsPerInsert ?? 500;
      let batch: string[] = [];
      let batchBytes = 0;
      let batchTable: string | undefined;
      const flush = async () => {
        if (!batchTable || batch.length === 0) return;
        const json = `[${batch.join(",")}]`;
        batch = [];
        batchBytes = 0;
        if (batchTable === JOBS_TABLE) {
          await insertJobs(tx, json);
        } else {
          const columns = backup.columns.get(batchTable)!.map(quote).join(", ");
          const relation = `public.${quote(batchTable)}`;
          await tx.unsafe(`insert into ${relation} (${columns}) overriding system value select ${columns} from json_populate_recordset(null::${relation}, $1::text::json)`, [json]);
        }
      };
      let number = 1;
      let restoredRows = 0;
      const lines = readLines(file);
      await lines.next(); // the header
      for await (const line of lines) {
        number++;
        if (line.length === 0) continue;
        const parsed = parseLine(line, number, false);
        if (parsed.kind === "end") break;
        if (parsed.kind === "table") {
          await flush();
          batchTable = parsed.table;
          continue;
        }
        batch.push(parsed.raw);
        batchBytes += parsed.raw.length;
        restoredRows++;
        if (batch.length >= rowsPerInsert || batchBytes >= 4 * 1024 * 1024) await flush();
        if (restoredRows % 100_000 === 0) log(`${restoredRows} of ${total} rows restored`);
      }
      await flush();

      // Sandboxes do not move with a backup: end their rows, and let live sessions resume on a new generation.
      const ended = await tx<{ id: string }[]>`
        update sandboxes set status = 'stopped', ended_at = now(), end_reason = ${`${RESTORED_REASON}: the sandbox does not exist here`}
        where status in ('ready', 'provisioning') returning id`;
      const suspended = await tx<{ id: string }[]>`
        with live as (
          select id, status::text as previous from sessions where status::text in ${tx(LIVE_SESSION_STATES)}
        ), moved as (
          update sessions s set status = 'suspended', status_reason = ${RESTORED_REASON}, last_seq = s.last_seq + 1, updated_at = now()
          from live where s.id = live.id
          returning s.id, s.team_id, s.last_seq, live.previous
        )
        insert into session_events (session_id, seq, team_id, type, payload)
        select id, last_seq, team_id, 'status', jsonb_build_object('from', previous, 'to', 'suspended', 'reason', ${RESTORED_REASON}::text)
        from moved
        returning session_id as id`;

      // Sequences (bigserial audit_log ids and any other) continue after the restored rows.
      const sequences = await tx<{ table: string; column: string; sequence: string }[]>`
        select c.relname as table, a.attname as column, pg_get_serial_sequence(format('public.%I', c.relname), a.attname) as sequence
        from pg_attribute a join pg_class c on c.oid = a.attrelid
        where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p') and a.attnum > 0 and not a.attisdropped
          and pg_get_serial_sequence(format('public.%I', c.relname), a.attname) is not null`;
      for (const { table, column, sequence } of sequences) {
        if (!backup.header.tables.includes(table)) continue;
        await tx.unsafe(`select setval($1, coalesce((select max(${quote(column)}) from public.${quote(table)}), 0) + 1, false)`, [sequence]);
      }

      await options.beforeCommit?.(tx);
      return { suspendedSessions: suspended.length, endedSandboxes: ended.length };
    });
    log(`${total} rows restored in one transaction`);

    if (partial) {
      await migrateDatabase(databaseUrl);
      log(`schema migrated from the backup's level (${level}) to this Berth's (${shipped.length})`);
    }
    return { rows: backup.rows, ...summary, warnings };
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** Re-enqueues jobs through graphile_worker.add_job (the supported way in), then restores their attempts. */
async function insertJobs(tx: postgres.TransactionSql, json: string): Promise<void> {
  const added = await tx.unsafe<{ id: string; attempts: number; last_error: string | null; created_at: string }[]>(
    `select (graphile_worker.add_job(
               identifier => j->>'task_identifier',
               payload => coalesce(j->'payload', '{}'::json),
               queue_name => j->>'queue_name',
               run_at => (j->>'run_at')::timestamptz,
               max_attempts => (j->>'max_attempts')::int,
               job_key => j->>'key',
               priority => (j->>'priority')::int,
               flags => case when json_typeof(j->'flags') = 'object' then array(select json_object_keys(j->'flags')) end,
               job_key_mode => 'replace'
             )).id::text as id,
            coalesce((j->>'attempts')::int, 0) as attempts, j->>'last_error' as last_error, j->>'created_at' as created_at
     from json_array_elements($1::text::json) j`,
    [json],
  );
  await tx.unsafe(
    `update graphile_worker._private_jobs p
     set attempts = v.attempts, last_error = v.last_error, created_at = coalesce(v.created_at, p.created_at)
     from json_to_recordset($1::text::json) as v(id bigint, attempts smallint, last_error text, created_at timestamptz)
     where p.id = v.id`,
    [JSON.stringify(added)],
  );
}
