import type { Actor } from "./audit";
import { forbidden } from "./errors";

export type Role = "owner" | "admin" | "member";

const RANK: Record<Role, number> = { member: 0, admin: 1, owner: 2 };

/** Who is calling, for which team, with which role. Every team-bound service is built from one. */
export type Principal = {
  teamId: string;
  role: Role;
  actor: Actor;
  userId: string | null;
  via: "api_key" | "session";
  /** The login session's id (hash of its token), for logout and team switching. */
  loginSessionId?: string;
};

export function hasRole(principal: Pick<Principal, "role">, atLeast: Role): boolean {
  return RANK[principal.role] >= RANK[atLeast];
}

export function requireRole(principal: Pick<Principal, "role">, atLeast: Role, action: string): void {
  if (!hasRole(principal, atLeast)) throw forbidden(`${action} needs the ${atLeast} role or higher`);
}
