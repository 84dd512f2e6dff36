import { pino, type Logger } from "pino";

export type { Logger };

/**
 * Structured JSON logs. Anything that looks like a credential is redacted by key name as a second
 * line of defence; the first is never passing secret values to the logger at all.
 */
export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service: "berth" },
      redact: {
        paths: [
          "password",
          "*.password",
          "apiKey",
          "*.apiKey",
          "secret",
          "*.secret",
          "value",
          "*.value",
          "authorization",
          "*.authorization",
          "headers.authorization",
          "req.headers.authorization",
          "req.headers.cookie",
          "databaseUrl",
          "*.databaseUrl",
        ],
        censor: "[redacted]",
      },
    },
    destination ?? pino.destination({ fd: 1, sync: false }),
  );
}
