import { z } from "zod";
import { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE } from "../services/pagination";

/** Shared input pieces. Every input object is strict: an unknown field is an error, not ignored. */
export const id = z.uuid("must be a UUID");
export const role = z.enum(["owner", "admin", "member"]);
export const pageInput = {
  cursor: z.string().min(1).max(200).optional(),
  limit: z.number().int().min(1).max(MAX_PAGE_SIZE).default(DEFAULT_PAGE_SIZE),
};
export const email = z.string().trim().max(254).email("must be an email address");
export const password = z.string().min(12, "must be at least 12 characters").max(1024);
