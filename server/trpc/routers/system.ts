import { publicProcedure, router } from "../init";

export const systemRouter = router({
  health: publicProcedure.query(({ ctx }) => ctx.services.health.health()),
});
