ALTER TYPE "public"."session_event_type" ADD VALUE 'egress';--> statement-breakpoint
ALTER TABLE "agent_versions" ADD COLUMN "egress" jsonb DEFAULT '{"mode":"none","allow":[]}'::jsonb NOT NULL;--> statement-breakpoint
-- The old shorthand: an agent with network "egress" keeps reaching what it reached, now through the gateway.
UPDATE "agent_versions" SET "egress" = '{"mode":"open","allow":[]}'::jsonb WHERE "network" = 'egress';--> statement-breakpoint
ALTER TABLE "secrets" ADD COLUMN "brokered" jsonb;--> statement-breakpoint
CREATE INDEX "sandboxes_name_index" ON "sandboxes" USING btree ("name");
