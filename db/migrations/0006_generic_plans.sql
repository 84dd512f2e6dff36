-- The hot SQL functions plan their statements once per connection instead of on every call
-- (docs/decisions/018-generic-plans-for-hot-functions.md). PL/pgSQL plans each statement with the
-- call's values for its first five runs, then keeps a generic plan only if that looks no dearer.
-- Statements over jsonb_array_elements() or unnest() never look so (a custom plan knows the array's
-- length), so berth_append_events and graphile_worker.add_jobs, which berth_accept_message calls,
-- were planned again on every call. The setting applies to everything the function runs,
-- graphile-worker's add_job included, and is restored when it returns. A CREATE OR REPLACE of one of
-- these functions drops it: repeat the SET there (server/services/turns.test.ts checks).
ALTER FUNCTION berth_accept_message(uuid, uuid, text, text) SET plan_cache_mode = force_generic_plan;
--> statement-breakpoint
ALTER FUNCTION berth_append_events(uuid, jsonb, session_status, text, bigint, bigint, numeric) SET plan_cache_mode = force_generic_plan;
--> statement-breakpoint
ALTER FUNCTION berth_start_turn(uuid) SET plan_cache_mode = force_generic_plan;
--> statement-breakpoint
ALTER FUNCTION berth_finish_turn(uuid, uuid, turn_status, text, jsonb, bigint, bigint, numeric) SET plan_cache_mode = force_generic_plan;
