/** Display helpers shared by the dashboard pages. */

const UNITS: Array<[Intl.RelativeTimeFormatUnit, number]> = [
  ["year", 365 * 24 * 3600],
  ["month", 30 * 24 * 3600],
  ["day", 24 * 3600],
  ["hour", 3600],
  ["minute", 60],
  ["second", 1],
];

const relative = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
const absolute = new Intl.DateTimeFormat("en", { dateStyle: "medium", timeStyle: "medium" });

export function toDate(value: Date | string | number): Date {
  return value instanceof Date ? value : new Date(value);
}

/** "3 minutes ago"; under ten seconds is "just now". */
export function timeAgo(value: Date | string | number, now = Date.now()): string {
  const seconds = Math.round((toDate(value).getTime() - now) / 1000);
  if (Math.abs(seconds) < 10) return "just now";
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size || unit === "second") return relative.format(Math.round(seconds / size), unit);
  }
  return "";
}

export function formatDateTime(value: Date | string | number): string {
  return absolute.format(toDate(value));
}

export function formatNumber(value: number): string {
  return value.toLocaleString("en");
}

/** Cost in US dollars, from the decimal string the API returns. */
export function formatCost(value: string | number | null | undefined): string {
  const amount = Number(value ?? 0);
  if (!Number.isFinite(amount) || amount === 0) return "$0";
  return amount < 0.01 ? `$${amount.toFixed(6).replace(/0+$/, "")}` : `$${amount.toFixed(4).replace(/0+$/, "").replace(/\.$/, "")}`;
}

export function shortId(id: string): string {
  return id.slice(0, 8);
}

export function formatDuration(seconds: number): string {
  if (seconds % 86_400 === 0) return `${seconds / 86_400} d`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}
