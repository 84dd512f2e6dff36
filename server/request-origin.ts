import type { TrustedProxies } from "./client-address";

/** What the same-origin check knows besides the request (server/config.ts: BERTH_PUBLIC_URL, BERTH_TRUSTED_PROXIES). */
export type OriginPolicy = { publicUrl?: string; trustedProxies?: TrustedProxies };

/** The last entry of a comma-separated forwarding header: the one the nearest proxy wrote. */
function lastEntry(value: string | null): string | undefined {
  const entry = value?.split(",").at(-1)?.trim();
  return entry ? entry : undefined;
}

/** `host` as a URL of the given scheme would spell it (lower case, the scheme's default port dropped); undefined if it is no host. */
function normalHost(protocol: string, host: string): string | undefined {
  try {
    const url = new URL(`${protocol}//${host}`);
    return url.host !== "" && url.pathname === "/" && url.username === "" && !url.search && !url.hash ? url.host : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Why a browser request does not come from Berth's own pages, or null when it does.
 * - `Sec-Fetch-Site` other than `same-origin` / `none` is refused.
 * - `Origin` must be the server's origin: BERTH_PUBLIC_URL when set; otherwise the request's own
 *   `Host` (and scheme when known). `X-Forwarded-Host` / `X-Forwarded-Proto` (their last entry) are
 *   believed only on a connection from a trusted proxy; without a trusted `X-Forwarded-Proto` the scheme
 *   is not known (TLS may end at a proxy) and only the host is compared.
 * - `Origin: null` (sandboxed frames, some redirects, `file:` pages) or anything unparsable is refused.
 * - No `Origin` at all is allowed: browsers send it on every cross-origin request and on every POST
 *   (the only method a tRPC mutation uses), so its absence means a non-browser client.
 */
export function crossOriginReason(headers: Headers, peerAddress: string | null | undefined, policy: OriginPolicy): string | null {
  const fetchSite = headers.get("sec-fetch-site");
  if (fetchSite && fetchSite !== "same-origin" && fetchSite !== "none") return "cross-site request refused";
  const origin = headers.get("origin");
  if (origin === null) return null;
  let originUrl: URL;
  try {
    originUrl = new URL(origin);
  } catch {
    return "request from an opaque or invalid origin refused";
  }
  if (originUrl.protocol !== "http:" && originUrl.protocol !== "https:") return "request from an opaque or invalid origin refused";
  if (policy.publicUrl) return originUrl.origin === policy.publicUrl ? null : "cross-origin request refused";

  const fromTrustedProxy = peerAddress != null && policy.trustedProxies?.matches(peerAddress) === true;
  const forwardedProto = fromTrustedProxy ? lastEntry(headers.get("x-forwarded-proto"))?.toLowerCase() : undefined;
  const forwardedHost = fromTrustedProxy ? lastEntry(headers.get("x-forwarded-host")) : undefined;
  const host = forwardedHost ?? headers.get("host");
  if (forwardedProto !== undefined && `${forwardedProto}:` !== originUrl.protocol) return "cross-origin request refused";
  if (!host || normalHost(originUrl.protocol, host) !== originUrl.host) return "cross-origin request refused";
  return null;
}
