import { publicProcedure, router } from "../init";

export const systemRouter = router({
  health: publicProcedure.query(({ ctx }) => ctx.services.health.health()),
  /** Whether sessions can get sandboxes here (and if not, why and the fix): what the dashboard's banner shows on every page. */
  sandboxes: publicProcedure.query(({ ctx }) => ctx.services.health.sandboxes()),
});
