import { z } from "zod";
import { agentConfigFields, agentName } from "../../services/agent-config";
import { router, teamProcedure } from "../init";
import { id, pageInput } from "../inputs";

const optionalConfig = Object.fromEntries(Object.entries(agentConfigFields).map(([key, schema]) => [key, schema.optional()])) as {
  [K in keyof typeof agentConfigFields]: z.ZodOptional<(typeof agentConfigFields)[K]>;
};

export const agentsRouter = router({
  create: teamProcedure
    .input(z.strictObject({ name: agentName, ...optionalConfig, model: agentConfigFields.model }))
    .mutation(({ ctx, input }) => ctx.team.agents.create(input)),
  list: teamProcedure.input(z.strictObject(pageInput)).query(({ ctx, input }) => ctx.team.agents.list(input)),
  get: teamProcedure
    .input(z.strictObject({ agentId: id, version: z.number().int().min(1).optional() }))
    .query(({ ctx, input }) => ctx.team.agents.get(input)),
  versions: teamProcedure
    .input(z.strictObject({ agentId: id, cursor: z.coerce.number().int().min(1).optional(), limit: pageInput.limit }))
    .query(({ ctx, input }) => ctx.team.agents.versions(input)),
  update: teamProcedure
    .input(z.strictObject({ agentId: id, name: agentName.optional(), ...optionalConfig }))
    .mutation(({ ctx, input }) => ctx.team.agents.update(input)),
  delete: teamProcedure.input(z.strictObject({ agentId: id })).mutation(({ ctx, input }) => ctx.team.agents.delete(input)),
});
