import { isIP } from "node:net";
import { sql } from "drizzle-orm";
import type { Database } from "../../db/client";
import { loginFailures } from "../../db/schema";
import { DomainError } from "./errors";

/** Failed logins allowed per key in one window, before further attempts are refused until it ends. */
export type LoginLimits = {
  windowSeconds: number;
  /** One address guessing one account's password: the case to stop first. */
  perAddressAndEmail: number;
  /** One account from many addresses. Higher, as reaching it locks the account's owner out too. */
  perEmail: number;
  /** One address trying many accounts. Higher, as users behind one NAT or proxy share it. */
  perAddress: number;
};

export const DEFAULT_LOGIN_LIMITS: LoginLimits = { windowSeconds: 15 * 60, perAddressAndEmail: 10, perEmail: 50, perAddress: 100 };

type Attempt = { keys: { key: string; limit: number }[] };

/**
 * Brute-force protection for password logins, in Postgres so every replica counts the same attempts.
 * An attempt is counted before the password is checked (parallel guesses cannot slip past the
 * count) and handed back when it succeeds; a refused one is not counted. A fixed window starts at a
 * key's first counted attempt.
 * Unknown emails count like known ones, so the answers say nothing about which accounts exist.
 */
export class LoginThrottle {
  constructor(
    private readonly db: Database,
    private readonly limits: LoginLimits = DEFAULT_LOGIN_LIMITS,
  ) {}

  /** Counts an attempt; a `rate_limited` DomainError when one of its keys is over its limit. */
  async begin(email: string, clientAddress: string | null): Promise<Attempt> {
    const address = addressKey(clientAddress);
    const attempt: Attempt = {
      keys: [
        { key: `pair:${address} ${email}`, limit: this.limits.perAddressAndEmail },
        { key: `email:${email}`, limit: this.limits.perEmail },
        { key: `ip:${address}`, limit: this.limits.perAddress },
      ],
    };
    const keys = textArray(attempt.keys.map((entry) => entry.key));
    const window = sql`make_interval(secs => ${this.limits.windowSeconds})`;
    // Locked and checked before counting: a refused attempt is not counted, or an address hammering
    // one pair past its limit would push the account's count up and lock its owner out.
    const over = await this.db.transaction(async (tx) => {
      await tx.execute(sql`insert into ${loginFailures} (key, failures, window_started_at) select key, 0, now() from unnest(${keys}) as key order by key on conflict (key) do nothing`);
      const rows = await tx.execute<{ key: string; failures: number; retry_seconds: number }>(sql`
        select key, case when window_started_at <= now() - ${window} then 0 else failures end as failures,
          ceil(extract(epoch from window_started_at + ${window} - now()))::int as retry_seconds
        from ${loginFailures} where key = any(${keys}) order by key for update`);
      const full = rows.filter((row) => row.failures >= attempt.keys.find((entry) => entry.key === row.key)!.limit);
      if (full.length > 0) return full;
      await tx.execute(sql`
        update ${loginFailures} as f set
          failures = case when f.window_started_at <= now() - ${window} then 1 else f.failures + 1 end,
          window_started_at = case when f.window_started_at <= now() - ${window} then now() else f.window_started_at end
        where f.key = any(${keys})`);
      return [];
    });
    if (over.length > 0) {
      const minutes = Math.max(1, Math.ceil(Math.max(...over.map((row) => row.retry_seconds)) / 60));
      throw new DomainError("rate_limited", `too many failed logins; try again in ${minutes} minute${minutes === 1 ? "" : "s"}`);
    }
    return attempt;
  }

  /** A successful login: the address's count for this account starts over, and the attempt is handed back. */
  async succeeded(attempt: Attempt): Promise<void> {
    const [pair, ...others] = attempt.keys.map((entry) => entry.key);
    await this.db.execute(sql`
      with forgotten as (delete from ${loginFailures} where key = ${pair!})
      update ${loginFailures} set failures = greatest(failures - 1, 0) where key = any(${textArray(others)})`);
  }

  /** Drops counts whose window has ended (the maintenance cron). */
  async prune(): Promise<number> {
    const rows = await this.db.execute<{ key: string }>(
      sql`delete from ${loginFailures} where window_started_at <= now() - make_interval(secs => ${this.limits.windowSeconds}) returning key`,
    );
    return rows.length;
  }
}

/**
 * The address a client is counted under. IPv6 by its /64: one host commonly holds a whole /64 and
 * could otherwise try from a new address each time. An IPv4 address mapped into IPv6 as itself.
 */
export function addressKey(address: string | null): string {
  if (!address) return "unknown";
  const bare = address.replace(/%.*$/, "").toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(bare);
  if (mapped) return mapped[1]!;
  if (isIP(bare) !== 6) return bare.slice(0, 100);
  const [head = "", tail = ""] = bare.split("::");
  const headGroups = head ? head.split(":") : [];
  const tailGroups = bare.includes("::") ? (tail ? tail.split(":") : []) : [];
  // An IPv4 tail (::1.2.3.4) is two groups; only the first four groups matter here.
  const groups = [...headGroups, ...Array(Math.max(0, 8 - headGroups.length - tailGroups.length)).fill("0"), ...tailGroups];
  return `${groups.slice(0, 4).map((group) => Number.parseInt(group, 16).toString(16)).join(":")}::/64`;
}

/** A text[] of the values, each a parameter (drizzle would send an array as a list of them). */
function textArray(values: string[]) {
  return sql`array[${sql.join(values.map((value) => sql`${value}`), sql`, `)}]::text[]`;
}
