import type { IncomingMessage, ServerResponse } from "node:http";
import type express from "express";
import type { Logger } from "./logger";

/** Largest body of a request without a valid credential: enough to log in, never enough to hurt. */
export const ANONYMOUS_BODY_BYTES = 64 * 1024;

/** The error a limited body stream ends with once the request passed its limit (the 413 is already sent). */
export class BodyTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`request body larger than ${limit} bytes`);
    this.name = "BodyTooLargeError";
  }
}

export type BodyLimitOptions = {
  /** BERTH_MAX_BODY_BYTES: callers with a valid credential. */
  maxBodyBytes: number;
  anonymousBodyBytes?: number;
  /** Whether the request carries a credential at all (no I/O): without one, no lookup is made. */
  hasCredential(headers: Headers): boolean;
  /** Resolves the credential to a principal (null: invalid). The promise is kept for the tRPC context. */
  authenticate(headers: Headers): Promise<unknown>;
  /** Whether the path is tRPC's, whose clients expect refusals in tRPC's error shape. */
  isTrpcPath(path: string): boolean;
  logger: Logger;
};

const BODY = Symbol("berth.limitedBody");
const PRINCIPAL = Symbol("berth.principal");
type Marked = IncomingMessage & { [BODY]?: ReadableStream<Uint8Array>; [PRINCIPAL]?: Promise<unknown> };

/**
 * The request's body, counted against its limit as it is read (see `bodyLimit`); undefined when the
 * request has none. Every handler that reads a body reads it from here, never from the request.
 */
export function limitedBodyOf(req: IncomingMessage): ReadableStream<Uint8Array> | undefined {
  return (req as Marked)[BODY];
}

/** The principal `bodyLimit` looked up to choose the limit, if it did (so tRPC does not look it up again). */
export function principalLookedUpFor(req: IncomingMessage): Promise<unknown> | undefined {
  return (req as Marked)[PRINCIPAL];
}

function nodeHeaders(req: IncomingMessage): Headers {
  const headers = new Headers();
  for (const [key, value] of Object.entries(req.headers)) {
    if (Array.isArray(value)) for (const item of value) headers.append(key, item);
    else if (value !== undefined) headers.append(key, value);
  }
  return headers;
}

/**
 * Express middleware in front of everything that reads a request body (tRPC, Remix actions), before
 * any of it is read:
 * - A caller with a valid API key or login cookie may send `maxBodyBytes`; anyone else
 *   `anonymousBodyBytes` (64 KiB). The credential is looked up only when the body may be larger than
 *   that, and the lookup is handed to tRPC.
 * - A `Content-Length` above the caller's limit is answered 413 at once, without reading the body.
 * - Otherwise the body is handed on as a stream counted as it is read, pulled (so TCP backpressure
 *   holds the client while nobody reads); when it passes the limit it is answered 413, nothing more is
 *   read, and the connection is closed after the answer.
 */
export function bodyLimit(options: BodyLimitOptions): express.RequestHandler {
  const anonymous = options.anonymousBodyBytes ?? ANONYMOUS_BODY_BYTES;
  const refuse = (req: express.Request, res: express.Response, limit: number, authenticated: boolean) => {
    const message = authenticated
      ? `request body too large: at most ${limit} bytes (BERTH_MAX_BODY_BYTES)`
      : `request body too large: at most ${limit} bytes without a valid API key or login`;
    if (res.headersSent) {
      res.destroy();
      return;
    }
    stopReading(req);
    res.status(413).set("connection", "close");
    res.json(
      options.isTrpcPath(req.path)
        ? { error: { json: { message, code: -32013, data: { code: "PAYLOAD_TOO_LARGE", httpStatus: 413, path: null } } } }
        : { error: message },
    );
  };

  return (req, res, next) => {
    const lengthHeader = req.headers["content-length"];
    const chunked = req.headers["transfer-encoding"] !== undefined;
    const declared = lengthHeader === undefined ? undefined : Number(lengthHeader);
    if (!chunked && (declared === undefined || declared === 0)) return next();
    const headers = nodeHeaders(req);
    const credential = options.hasCredential(headers);
    if (declared !== undefined && declared > (credential ? options.maxBodyBytes : anonymous)) {
      return credential ? refuse(req, res, options.maxBodyBytes, true) : refuse(req, res, anonymous, false);
    }

    const choose = async (): Promise<{ limit: number; authenticated: boolean }> => {
      // Node stops a body at its Content-Length: one within the anonymous limit needs no lookup.
      if (!chunked && declared !== undefined && declared <= anonymous) return { limit: anonymous, authenticated: false };
      if (!credential) return { limit: anonymous, authenticated: false };
      const lookup = options.authenticate(headers);
      (req as Marked)[PRINCIPAL] = lookup;
      return (await lookup) ? { limit: options.maxBodyBytes, authenticated: true } : { limit: anonymous, authenticated: false };
    };
    choose().then(
      ({ limit, authenticated }) => {
        if (declared !== undefined && declared > limit) return refuse(req, res, limit, authenticated);
        (req as Marked)[BODY] = countedBody(req, res, limit, () => refuse(req, res, limit, authenticated));
        next();
      },
      (error: unknown) => {
        options.logger.warn({ err: error }, "could not check a request's credential to choose its body limit");
        if (!res.headersSent) res.status(503).set("connection", "close").json({ error: "could not check the credential; try again shortly" });
      },
    );
  };
}

/** How long a refused connection stays open after its answer, so the client reads the 413 before the connection is reset. */
const LINGER_MS = 1_000;

/**
 * Reads no more of a refused request, and closes its connection gently: Node would otherwise read and
 * discard the rest of the body after the answer (however long it is), and then reset the connection
 * while the client still writes, often before the client has read the 413. Here the request stays
 * paused (TCP backpressure stops the client), the answer is followed by a FIN, and the connection is
 * destroyed LINGER_MS later, or when the client closes it.
 */
function stopReading(req: IncomingMessage) {
  // read(0) marks the body as consumed, which is what keeps Node from draining it after the answer.
  req.read(0);
  req.pause();
  const socket = req.socket;
  socket.destroySoon = () => {
    socket.end();
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
  };
}

/** The request body as a pull stream that ends with BodyTooLargeError (after `tooLarge` answered) once it passes `limit`. */
function countedBody(req: IncomingMessage, res: ServerResponse, limit: number, tooLarge: () => void): ReadableStream<Uint8Array> {
  let received = 0;
  let chunks: AsyncIterator<Buffer> | undefined;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        try {
          chunks ??= req[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
          const { value, done } = await chunks.next();
          if (done) return controller.close();
          received += value.length;
          if (received > limit) {
            tooLarge();
            controller.error(new BodyTooLargeError(limit));
            return;
          }
          controller.enqueue(new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
        } catch (error) {
          controller.error(error);
        }
      },
      cancel() {
        // The handler did not want the rest: Node would read and discard it to keep the connection,
        // however long a chunked body goes on. Close the connection after the answer instead.
        if (!req.readableEnded && !res.headersSent) res.setHeader("connection", "close");
      },
    },
    { highWaterMark: 0 },
  );
}
