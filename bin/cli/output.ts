/** Where a command's results go: human text by default, JSON with `--json`. */
export type Output = {
  json: boolean;
  /** One JSON document (`--json`), or nothing: human output is written by the command. */
  document(value: unknown): void;
  /** One JSON line of a stream (`--json` for logs and attach). */
  jsonLine(value: unknown): void;
  /** A line of human output on stdout. */
  line(text?: string): void;
  /** Raw text on stdout (streamed assistant text). */
  write(text: string): void;
  /** A notice for the human on stderr (kept off stdout so pipes and `--json` stay clean). */
  notice(text: string): void;
  /** A spinner on stderr while `work` runs, only when stdout and stderr are terminals and not `--json`. */
  spin<T>(label: string, work: () => Promise<T>): Promise<T>;
  style: Style;
};

export type Style = { dim(text: string): string; bold(text: string): string; red(text: string): string; green(text: string): string; cyan(text: string): string; yellow(text: string): string };

function makeStyle(enabled: boolean): Style {
  const wrap = (open: number, close: number) => (text: string) => (enabled ? `\u001b[${open}m${text}\u001b[${close}m` : text);
  return { dim: wrap(2, 22), bold: wrap(1, 22), red: wrap(31, 39), green: wrap(32, 39), cyan: wrap(36, 39), yellow: wrap(33, 39) };
}

export function createOutput(options: { json: boolean; stdout?: NodeJS.WriteStream; stderr?: NodeJS.WriteStream; env?: NodeJS.ProcessEnv }): Output {
  const stdout = options.stdout ?? process.stdout;
  const stderr = options.stderr ?? process.stderr;
  const env = options.env ?? process.env;
  const interactive = Boolean(stdout.isTTY) && !options.json;
  const colors = interactive && !env.NO_COLOR && env.TERM !== "dumb";
  const style = makeStyle(colors);
  const spinnerOn = interactive && Boolean(stderr.isTTY) && env.TERM !== "dumb";
  return {
    json: options.json,
    document: (value) => {
      stdout.write(`${JSON.stringify(value, null, 2)}\n`);
    },
    jsonLine: (value) => {
      stdout.write(`${JSON.stringify(value)}\n`);
    },
    line: (text = "") => {
      stdout.write(`${text}\n`);
    },
    write: (text) => {
      stdout.write(text);
    },
    notice: (text) => {
      stderr.write(`${makeStyle(colors && Boolean(stderr.isTTY)).dim(text)}\n`);
    },
    spin: (label, work) => (spinnerOn ? withSpinner(stderr, label, work) : work()),
    style,
  };
}

const FRAMES = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/** A one-line spinner, erased when the work ends (hand-rolled: ten lines, no dependency). */
async function withSpinner<T>(stream: NodeJS.WriteStream, label: string, work: () => Promise<T>): Promise<T> {
  let frame = 0;
  const draw = () => stream.write(`\r\u001b[2K${FRAMES[frame++ % FRAMES.length]} ${label}`);
  draw();
  const timer = setInterval(draw, 80);
  try {
    return await work();
  } finally {
    clearInterval(timer);
    stream.write("\r\u001b[2K");
  }
}

/** Columns padded to the widest cell; the last column is not padded. */
export function table(rows: string[][], headers: string[], style?: Style): string {
  const all = [headers, ...rows];
  const widths = headers.map((_, column) => Math.max(...all.map((row) => visibleLength(row[column] ?? ""))));
  const format = (row: string[]) =>
    row
      .map((cell, column) => (column === row.length - 1 ? cell : cell + " ".repeat(widths[column]! - visibleLength(cell))))
      .join("  ")
      .trimEnd();
  return [style ? style.bold(format(headers)) : format(headers), ...rows.map(format)].join("\n");
}

function visibleLength(text: string): number {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\u001b\[[0-9;]*m/g, "").length;
}

/** `2025-01-31T10:00:00.000Z` → `2025-01-31 10:00:00` (UTC). */
export function formatTime(value: Date | string | null | undefined): string {
  if (!value) return "-";
  const date = value instanceof Date ? value : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}
