import type { Principal } from "../services/principal";
import type { Services } from "../services";

export const SESSION_COOKIE = "berth_session";

export type TrpcContext = {
  services: Services;
  request: Request;
  /** Headers to add to the response (login and logout set the session cookie). */
  responseHeaders: Headers;
  requestId: string;
  /** Resolved lazily, once, from the bearer key or the session cookie. */
  principal: () => Promise<Principal | null>;
};

export function readCookie(request: Request, name: string): string | undefined {
  const header = request.headers.get("cookie");
  if (!header) return undefined;
  for (const part of header.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return undefined;
}

function bearerToken(request: Request): string | undefined {
  const header = request.headers.get("authorization");
  const match = header?.match(/^Bearer\s+(\S+)\s*$/i);
  return match?.[1];
}

/** Builds the per-request context. A present but invalid credential is refused, never ignored. */
export function createContextFactory(services: Services) {
  return (request: Request, responseHeaders: Headers = new Headers()): TrpcContext => {
    let resolved: Promise<Principal | null> | undefined;
    return {
      services,
      request,
      responseHeaders,
      requestId: request.headers.get("x-request-id") ?? crypto.randomUUID(),
      principal: () => {
        resolved ??= (async () => {
          const key = bearerToken(request);
          if (key !== undefined) return services.auth.authenticateApiKey(key);
          const session = readCookie(request, SESSION_COOKIE);
          if (session) return services.auth.authenticateSession(session);
          return null;
        })();
        return resolved;
      },
    };
  };
}
