-- A turn's bookkeeping in one round trip each (docs/decisions/016-turn-steps-in-one-statement.md):
-- appending events, starting the next turn, and finishing a turn were transactions of four to six
-- statements, each a round trip that wakes a database backend and the event loop in turn.

-- Appends events (a jsonb array of {type, payload, key}) to a session's log. The seqs come from the
-- session row, locked by the update, so they are gap-free per session; the NOTIFY is sent at commit.
-- A status move and a model call's usage are written to the session row by the same update. With no
-- events, only those changes are written (no seq is taken and nothing is notified).
CREATE OR REPLACE FUNCTION berth_append_events(
  p_session_id uuid,
  p_events jsonb,
  p_status session_status DEFAULT NULL,
  p_status_reason text DEFAULT NULL,
  p_prompt_tokens bigint DEFAULT 0,
  p_completion_tokens bigint DEFAULT 0,
  p_cost numeric DEFAULT 0)
RETURNS TABLE (appended_seq bigint, appended_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  v_count integer := jsonb_array_length(p_events);
BEGIN
  IF v_count = 0 THEN
    IF p_status IS NOT NULL OR p_prompt_tokens <> 0 OR p_completion_tokens <> 0 OR p_cost <> 0 THEN
      UPDATE sessions s SET updated_at = now(),
          status = coalesce(p_status, s.status),
          status_reason = CASE WHEN p_status IS NULL THEN s.status_reason ELSE p_status_reason END,
          prompt_tokens = s.prompt_tokens + p_prompt_tokens,
          completion_tokens = s.completion_tokens + p_completion_tokens,
          cost_usd = s.cost_usd + p_cost
        WHERE s.id = p_session_id;
    END IF;
    RETURN;
  END IF;
  RETURN QUERY
    WITH advanced AS (
      UPDATE sessions s SET last_seq = s.last_seq + v_count, updated_at = now(), last_activity_at = now(),
          status = coalesce(p_status, s.status),
          status_reason = CASE WHEN p_status IS NULL THEN s.status_reason ELSE p_status_reason END,
          prompt_tokens = s.prompt_tokens + p_prompt_tokens,
          completion_tokens = s.completion_tokens + p_completion_tokens,
          cost_usd = s.cost_usd + p_cost
        WHERE s.id = p_session_id
        RETURNING s.last_seq, s.team_id
    ), notified AS (
      SELECT pg_notify('berth_session_events', p_session_id::text || ':' || (SELECT a.last_seq FROM advanced a)::text)
    )
    INSERT INTO session_events AS e (session_id, team_id, seq, type, payload, idempotency_key)
    SELECT p_session_id, advanced.team_id, advanced.last_seq - v_count + batch.ord,
           (batch.item->>'type')::session_event_type, batch.item->'payload', batch.item->>'key'
      FROM advanced, notified, jsonb_array_elements(p_events) WITH ORDINALITY AS batch(item, ord)
    RETURNING e.seq, e.created_at;
END;
$$;
--> statement-breakpoint

-- A turn row as the application reads it (the camelCase keys of db/schema.ts's `turns`); the numeric
-- cost stays text, as the driver returns it. server/services/turns.test.ts checks it against a select.
CREATE OR REPLACE FUNCTION berth_turn_json(t turns) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object(
    'id', t.id, 'sessionId', t.session_id, 'teamId', t.team_id, 'userSeq', t.user_seq, 'startSeq', t.start_seq,
    'status', t.status, 'steps', t.steps, 'promptTokens', t.prompt_tokens, 'completionTokens', t.completion_tokens,
    'costUsd', t.cost_usd::text, 'abortRequestedAt', t.abort_requested_at, 'error', t.error,
    'createdAt', t.created_at, 'startedAt', t.started_at, 'finishedAt', t.finished_at)
$$;
--> statement-breakpoint

-- Resumes the session's running turn, or starts its oldest queued one (the session moves from ready or
-- idle to running, with its status event). No row: nothing to run, or the session is terminated or
-- failed, in which case its open turns are aborted.
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
    UPDATE turns t SET status = 'running', start_seq = v_session.last_seq, started_at = now()
      WHERE t.id = v_turn.id RETURNING * INTO v_turn;
  END IF;
  RETURN QUERY SELECT berth_turn_json(v_turn), v_resumed, v_status, v_session.agent_id, v_session.agent_version;
END;
$$;
--> statement-breakpoint

-- Ends a running turn: its last events, then the `usage` event with the turn's totals (always for a
-- completed turn), the `error` event for a failure, and the session back to `ready` when it was
-- `running` and no other message waits. False, and nothing written, if the turn is no longer running.
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
LANGUAGE plpgsql AS $$
DECLARE
  v_session_status session_status;
  v_has_queued boolean;
  v_prompt bigint;
  v_completion bigint;
  v_cost numeric;
  v_events jsonb := p_events;
  v_to_ready boolean;
BEGIN
  -- The session row first, as a message accept takes it.
  SELECT s.status INTO v_session_status FROM sessions s WHERE s.id = p_session_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
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
