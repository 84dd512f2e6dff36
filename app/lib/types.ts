import type { inferRouterInputs, inferRouterOutputs } from "@trpc/server";
import type { AppRouter } from "../../server/trpc/router";

export type RouterOutputs = inferRouterOutputs<AppRouter>;
export type RouterInputs = inferRouterInputs<AppRouter>;

export type Me = RouterOutputs["auth"]["me"];
export type Team = RouterOutputs["teams"]["get"];
export type Role = Me["role"];
export type SessionRow = RouterOutputs["sessions"]["list"]["items"][number];
export type SessionDetail = RouterOutputs["sessions"]["get"];
export type SessionStatus = SessionRow["status"];
export type Agent = RouterOutputs["agents"]["get"];
export type AgentVersion = RouterOutputs["agents"]["versions"]["items"][number];
export type StoredEvent = RouterOutputs["sessions"]["events"]["items"][number];
export type Job = RouterOutputs["jobs"]["list"]["items"][number];

export const SESSION_STATUSES: SessionStatus[] = ["pending", "provisioning", "ready", "running", "idle", "suspended", "reconnecting", "failed", "terminated"];

const RANK: Record<Role, number> = { member: 0, admin: 1, owner: 2 };

export function atLeast(role: Role, needed: Role): boolean {
  return RANK[role] >= RANK[needed];
}
