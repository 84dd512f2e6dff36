-- A fence around each run of a turn (docs/decisions/019-turn-runs.md). Two runs of one turn can
-- overlap across replicas (decision 009: a late job-completion write that unlocks a session's queue,
-- a sweep that takes a live process for dead). Every start or resume now takes the next `run`
-- number under the session's row lock, and a turn's steps and its end are only written for the run
-- that holds the current number: the older run is refused its next write and stops, so the log never
-- records a step twice.
ALTER TABLE "turns" ADD COLUMN "run" integer DEFAULT 0 NOT NULL;
--> statement-breakpoint

CREATE OR REPLACE FUNCTION berth_turn_json(t turns) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object(
    'id', t.id, 'sessionId', t.session_id, 'teamId', t.team_id, 'userSeq', t.user_seq, 'startSeq', t.start_seq,
    'status', t.status, 'steps', t.steps, 'run', t.run, 'promptTokens', t.prompt_tokens, 'completionTokens', t.completion_tokens,
    'costUsd', t.cost_usd::text, 'abortRequestedAt', t.abort_requested_at, 'error', t.error,
    'createdAt', t.created_at, 'startedAt', t.started_at, 'finishedAt', t.finished_at)
$$;
--> statement-breakpoint

-- As in 0005, and each start or resume takes the turn's next run number.
CREATE OR REPLACE FUNCTION berth_start_turn(p_session_id uuid)
RETURNS TABLE (turn jsonb, resumed boolean, session_status session_status, agent_id uuid, agent_version integer)
LANGUAGE plpgsql AS $$
DECLARE
  v_session sessions%ROWTYPE;
  v_turn turns%ROWTYPE;
  v_resumed boolean;
  v_status session_status;
BEGIN
  SELECT * INTO v_session FROM sessions s WHERE s.id = p_session_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  SELECT * INTO v_turn FROM turns t
    WHERE t.session_id = p_session_id AND t.status IN ('running', 'queued')
    ORDER BY t.status = 'running' DESC, t.user_seq
    LIMIT 1;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  IF v_session.status IN ('terminated', 'failed') THEN
    UPDATE turns t SET status = 'aborted', error = 'the session is ' || v_session.status::text, finished_at = now()
      WHERE t.session_id = p_session_id AND t.status IN ('running', 'queued');
    RETURN;
  END IF;
  v_resumed := v_turn.status = 'running';
  v_status := v_session.status;
  IF v_turn.status = 'queued' THEN
    IF v_session.status IN ('ready', 'idle') THEN
      PERFORM berth_append_events(p_session_id,
        jsonb_build_array(jsonb_build_object('type', 'status', 'payload', jsonb_build_object('from', v_session.status, 'to', 'running'), 'key', NULL)),
        'running', NULL);
      v_status := 'running';
    END IF;
    -- The turn's events follow the session's last seq from before its status event, as they always have.
    UPDATE turns t SET status = 'running', start_seq = v_session.last_seq, started_at = now(), run = t.run + 1
      WHERE t.id = v_turn.id RETURNING * INTO v_turn;
  ELSE
    UPDATE turns t SET run = t.run + 1 WHERE t.id = v_turn.id RETURNING * INTO v_turn;
  END IF;
  RETURN QUERY SELECT berth_turn_json(v_turn), v_resumed, v_status, v_session.agent_id, v_session.agent_version;
END;
$$;
--> statement-breakpoint
ALTER FUNCTION berth_start_turn(uuid) SET plan_cache_mode = force_generic_plan;
--> statement-breakpoint

-- Records a step of a running turn for the run that holds it: events (tool calls, results), the
-- steps it adds and a model call's usage, in one statement. SQLSTATE BT410 and nothing written when
-- the turn has ended or another run has taken it. The session row is locked first, as
-- berth_start_turn takes it before the turn's, so a resume and a step never cross (the turn is read
-- after that lock, in a snapshot of its own: the function must stay VOLATILE).
CREATE OR REPLACE FUNCTION berth_append_turn_events(
  p_turn_id uuid,
  p_run integer,
  p_session_id uuid,
  p_events jsonb,
  p_steps integer,
  p_prompt_tokens bigint,
  p_completion_tokens bigint,
  p_cost numeric)
RETURNS TABLE (appended_seq bigint, appended_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  v_run integer;
  v_status turn_status;
BEGIN
  PERFORM 1 FROM sessions s WHERE s.id = p_session_id FOR UPDATE;
  SELECT t.run, t.status INTO v_run, v_status FROM turns t WHERE t.id = p_turn_id AND t.session_id = p_session_id;
  IF FOUND AND v_run <> p_run THEN
    RAISE EXCEPTION 'turn % is held by run %, not run %', p_turn_id, v_run, p_run USING ERRCODE = 'BT410';
  END IF;
  IF NOT FOUND OR v_status <> 'running' THEN
    RAISE EXCEPTION 'turn % is no longer running', p_turn_id USING ERRCODE = 'BT410';
  END IF;
  IF p_steps <> 0 OR p_prompt_tokens <> 0 OR p_completion_tokens <> 0 OR p_cost <> 0 THEN
    UPDATE turns t SET steps = t.steps + p_steps, prompt_tokens = t.prompt_tokens + p_prompt_tokens,
        completion_tokens = t.completion_tokens + p_completion_tokens, cost_usd = t.cost_usd + p_cost
      WHERE t.id = p_turn_id;
  END IF;
  RETURN QUERY SELECT * FROM berth_append_events(p_session_id, p_events, NULL, NULL, p_prompt_tokens, p_completion_tokens, p_cost);
END;
$$;
--> statement-breakpoint
ALTER FUNCTION berth_append_turn_events(uuid, integer, uuid, jsonb, integer, bigint, bigint, numeric) SET plan_cache_mode = force_generic_plan;
--> statement-breakpoint

-- As in 0005, with the run that ends the turn: SQLSTATE BT410 and nothing written when another run
-- holds it (the overtaken run must stop, not go on to the session's next turn), false when the turn
-- is no longer running. A null run is not checked (the eight-argument form below).
CREATE OR REPLACE FUNCTION berth_finish_turn(
  p_turn_id uuid,
  p_run integer,
  p_session_id uuid,
  p_status turn_status,
  p_error text,
  p_events jsonb,
  p_prompt_tokens bigint,
  p_completion_tokens bigint,
  p_cost numeric)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  v_session_status session_status;
  v_has_queued boolean;
  v_prompt bigint;
  v_completion bigint;
  v_cost numeric;
  v_events jsonb := p_events;
  v_to_ready boolean;
  v_run integer;
BEGIN
  -- The session row first, as a message accept takes it.
  SELECT s.status INTO v_session_status FROM sessions s WHERE s.id = p_session_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  SELECT t.run INTO v_run FROM turns t WHERE t.id = p_turn_id;
  IF p_run IS NOT NULL AND v_run <> p_run THEN
    RAISE EXCEPTION 'turn % is held by run %, not run %', p_turn_id, v_run, p_run USING ERRCODE = 'BT410';
  END IF;
  v_has_queued := EXISTS (SELECT 1 FROM turns t WHERE t.session_id = p_session_id AND t.status = 'queued');
  UPDATE turns t SET prompt_tokens = t.prompt_tokens + p_prompt_tokens, completion_tokens = t.completion_tokens + p_completion_tokens,
      cost_usd = t.cost_usd + p_cost, status = p_status, error = p_error, finished_at = now()
    WHERE t.id = p_turn_id AND t.status = 'running'
    RETURNING t.prompt_tokens, t.completion_tokens, t.cost_usd INTO v_prompt, v_completion, v_cost;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  IF p_status = 'completed' OR v_prompt > 0 OR v_completion > 0 THEN
    v_events := v_events || jsonb_build_array(jsonb_build_object('type', 'usage', 'key', NULL, 'payload',
      jsonb_build_object('promptTokens', v_prompt, 'completionTokens', v_completion)
        || CASE WHEN v_cost > 0 THEN jsonb_build_object('cost', v_cost::float8) ELSE '{}'::jsonb END));
  END IF;
  IF p_error IS NOT NULL THEN
    v_events := v_events || jsonb_build_array(jsonb_build_object('type', 'error', 'key', NULL, 'payload', jsonb_build_object('message', p_error)));
  END IF;
  -- With more messages queued the session stays `running`: no ready/running flip per turn.
  v_to_ready := v_session_status = 'running' AND NOT v_has_queued;
  IF v_to_ready THEN
    v_events := v_events || jsonb_build_array(jsonb_build_object('type', 'status', 'key', NULL, 'payload', jsonb_build_object('from', 'running', 'to', 'ready')));
  END IF;
  PERFORM berth_append_events(p_session_id, v_events, CASE WHEN v_to_ready THEN 'ready'::session_status END, NULL,
    p_prompt_tokens, p_completion_tokens, p_cost);
  RETURN true;
END;
$$;
--> statement-breakpoint
ALTER FUNCTION berth_finish_turn(uuid, integer, uuid, turn_status, text, jsonb, bigint, bigint, numeric) SET plan_cache_mode = force_generic_plan;
--> statement-breakpoint

-- The previous version's call, for a replica that still runs it during a rolling upgrade (unfenced,
-- as it was). Drop it in a later release.
CREATE OR REPLACE FUNCTION berth_finish_turn(
  p_turn_id uuid,
  p_session_id uuid,
  p_status turn_status,
  p_error text,
  p_events jsonb,
  p_prompt_tokens bigint,
  p_completion_tokens bigint,
  p_cost numeric)
RETURNS boolean
LANGUAGE sql AS $$
  SELECT berth_finish_turn(p_turn_id, NULL::integer, p_session_id, p_status, p_error, p_events, p_prompt_tokens, p_completion_tokens, p_cost)
$$;
