import { z } from "zod";
import { egressHost } from "../../egress/policy";
import { envName } from "../../services/agent-config";
import { BROKERED_DEFAULT_HEADER, BROKERED_DEFAULT_TEMPLATE } from "../../services/secrets";
import { router, teamProcedure } from "../init";
import { id, pageInput } from "../inputs";

/** Headers that frame the request or the hop: a credential cannot go there. */
const RESERVED_HEADERS = new Set(["host", "content-length", "content-type", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer", "expect", "cookie"]);

const brokered = z.strictObject({
  hosts: z.array(egressHost).min(1, "name at least one host the credential may go to").max(50, "at most 50 hosts"),
  header: z
    .string()
    .regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$/, "must be an HTTP header name, such as Authorization or X-Api-Key")
    .refine((name) => !RESERVED_HEADERS.has(name.toLowerCase()) && !name.toLowerCase().startsWith("proxy-"), "this header cannot carry a credential (it frames the request or the proxy hop)")
    .default(BROKERED_DEFAULT_HEADER),
  template: z
    .string()
    .max(1_024, "must be at most 1024 characters")
    .refine((template) => template.includes("{{value}}"), 'must contain {{value}}, where the secret goes (e.g. "Bearer {{value}}")')
    .refine((template) => !/[\r\n\0]/.test(template), "must not contain line breaks")
    .default(BROKERED_DEFAULT_TEMPLATE),
});

export const secretsRouter = router({
  /**
   * Write-only: the value goes in and never comes out of the API. With `brokered`, the sandbox sees
   * a stub and the egress gateway puts the value into `header` on HTTPS requests to `hosts` only.
   */
  set: teamProcedure
    .input(z.strictObject({ name: envName, value: z.string().max(65_536, "must be at most 64 KiB"), agentId: id.optional(), brokered: brokered.optional() }))
    .mutation(({ ctx, input }) => ctx.team.secrets.set(input)),
  list: teamProcedure
    .input(z.strictObject({ ...pageInput, agentId: id.optional() }))
    .query(({ ctx, input }) => ctx.team.secrets.list(input)),
  delete: teamProcedure.input(z.strictObject({ secretId: id })).mutation(({ ctx, input }) => ctx.team.secrets.delete(input)),
});
