import postgres from "postgres";
const sql = postgres(process.argv[2]!, { max: 1 });
const S = "36ea2d80-3891-426e-8035-45c801e26b9e";
const [s] = await sql`select team_id from sessions where id = ${S}`;
async function time(label: string, f: () => Promise<unknown>, n = 30, gap = 100) {
  const t: number[] = [];
  for (let i = 0; i < n; i++) { if (gap) await new Promise(r => setTimeout(r, gap)); const a = performance.now(); await f(); t.push(performance.now() - a); }
  t.sort((a, b) => a - b); console.log(label, "p50", t[n >> 1]!.toFixed(2), "min", t[0]!.toFixed(2));
}
await time("select1 gap", () => sql`select 1`);
await time("select1 nogap", () => sql`select 1`, 200, 0);
await time("accept", () => sql`select * from berth_accept_message(${s!.team_id}::uuid, ${S}::uuid, 'x', null)`, 20, 200);
await time("add_job only", () => sql`select graphile_worker.add_job('noop_task', '{}'::json, queue_name => 'q-test', max_attempts => 1)`, 20, 100);
await time("add_job no queue", () => sql`select graphile_worker.add_job('noop_task', '{}'::json, max_attempts => 1)`, 20, 100);
await time("insert in tx", () => sql.begin(async (tx) => { await tx`create temp table if not exists zz(a int)`; await tx`insert into zz values (1)`; }), 20, 100);
await sql.end();
