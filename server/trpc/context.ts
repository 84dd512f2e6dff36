import { clientAddressOf, type ClientAddressPolicy } from "../client-address";
import type { Principal } from "../services/principal";
import type { Services } from "../services";

export const SESSION_COOKIE = "berth_session";

export type TrpcContext = {
  services: Services;
  request: Request;
  /** Headers to add to the response (login and logout set the session cookie). */
  responseHeaders: Headers;
  requestId: string;
  /** The caller's IP address (server/client-address.ts); null when not known. */
  clientAddress: string | null;
  /** The address the connection comes from (a proxy, when there is one); null when not known. */
  peerAddress: string | null;
  /** Resolved lazily, once, from the bearer key or the session cookie. */
  principal: () => Promise<Principal | null>;
};

export function readCookie(request: Request | { headers: Headers }, name: string): string | undefined {
  const header = request.headers.get("cookie");
  if (!header) return undefined;
  for (const part of header.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return undefined;
}

function bearerToken(headers: Headers): string | undefined {
  const header = headers.get("authorization");
  const match = header?.match(/^Bearer\s+(\S+)\s*$/i);
  return match?.[1];
}

/** Whether the request carries a credential at all (an Authorization header or a session cookie); says nothing of its validity. */
export function hasCredential(headers: Headers): boolean {
  return headers.has("authorization") || readCookie({ headers }, SESSION_COOKIE) !== undefined;
}

/** The caller: the bearer key when there is an Authorization header, else the session cookie; null when neither is valid. */
export async function principalOf(services: Services, headers: Headers): Promise<Principal | null> {
  const key = bearerToken(headers);
  if (key !== undefined) return services.auth.authenticateApiKey(key);
  const session = readCookie({ headers }, SESSION_COOKIE);
  if (session) return services.auth.authenticateSession(session);
  return null;
}

/** What the HTTP server knows of the connection a request came on (not in a fetch Request). */
export type ConnectionInfo = {
  peerAddress?: string | null;
  /** The principal already looked up from this request's headers (server/body-limit.ts), to be reused. */
  principal?: Promise<Principal | null>;
};

/** Builds the per-request context. A present but invalid credential is refused, never ignored. */
export function createContextFactory(services: Services, options: { clientAddress?: ClientAddressPolicy } = {}) {
  return (request: Request, responseHeaders: Headers = new Headers(), connection: ConnectionInfo = {}): TrpcContext => {
    let resolved: Promise<Principal | null> | undefined;
    return {
      services,
      request,
      responseHeaders,
      requestId: request.headers.get("x-request-id") ?? crypto.randomUUID(),
      clientAddress: clientAddressOf(request.headers, connection.peerAddress, options.clientAddress ?? {}),
      peerAddress: connection.peerAddress ?? null,
      principal: () => {
        resolved ??= connection.principal ?? principalOf(services, request.headers);
        return resolved;
      },
    };
  };
}
