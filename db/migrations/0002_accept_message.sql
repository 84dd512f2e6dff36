-- Accepting a user message is the hot path of the API (target: p99 under 15 ms at 50 concurrent
-- sessions). This function does the whole acceptance in one statement, so the session row is locked
-- for one round trip instead of nine: idempotency, status and busy checks, the user_message event
-- (seq from sessions.last_seq), the live notification, the turns row, and the `turn:run` job on the
-- session's own queue (payload contract: server/services/job-queue.ts). Errors use SQLSTATE P0002
-- (no such session for this team) and BT409 (conflict), mapped to NOT_FOUND and CONFLICT.
CREATE OR REPLACE FUNCTION berth_accept_message(p_team_id uuid, p_session_id uuid, p_text text, p_idempotency_key text)
RETURNS TABLE (accepted_seq bigint, accepted_turn_id uuid, was_queued boolean, was_duplicate boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_status session_status;
  v_agent_id uuid;
  v_agent_version integer;
  v_busy boolean;
  v_policy busy_policy;
  v_seq bigint;
  v_turn uuid;
BEGIN
  SELECT s.status, s.agent_id, s.agent_version INTO v_status, v_agent_id, v_agent_version
    FROM sessions s WHERE s.id = p_session_id AND s.team_id = p_team_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'session not found' USING ERRCODE = 'P0002';
  END IF;
  IF p_idempotency_key IS NOT NULL THEN
    SELECT e.seq, t.id INTO v_seq, v_turn
      FROM session_events e JOIN turns t ON t.session_id = e.session_id AND t.user_seq = e.seq
      WHERE e.session_id = p_session_id AND e.idempotency_key = p_idempotency_key;
    IF FOUND THEN
      RETURN QUERY SELECT v_seq, v_turn, false, true;
      RETURN;
    END IF;
  END IF;
  IF v_status = 'terminated' THEN
    RAISE EXCEPTION 'the session is terminated' USING ERRCODE = 'BT409';
  END IF;
  IF v_status = 'failed' THEN
    RAISE EXCEPTION 'the session failed: restart it before sending messages' USING ERRCODE = 'BT409';
  END IF;
  SELECT EXISTS (SELECT 1 FROM turns t WHERE t.session_id = p_session_id AND t.status IN ('queued', 'running')) INTO v_busy;
  IF v_busy THEN
    SELECT v.busy_policy INTO v_policy FROM agent_versions v WHERE v.agent_id = v_agent_id AND v.version = v_agent_version;
    IF v_policy = 'reject' THEN
      RAISE EXCEPTION 'a turn is running and this agent rejects messages while busy (busyPolicy: reject); try again when it finishes' USING ERRCODE = 'BT409';
    END IF;
  END IF;
  UPDATE sessions s SET last_seq = s.last_seq + 1, updated_at = now(), last_activity_at = now()
    WHERE s.id = p_session_id RETURNING s.last_seq INTO v_seq;
  INSERT INTO session_events (session_id, team_id, seq, type, payload, idempotency_key)
    VALUES (p_session_id, p_team_id, v_seq, 'user_message', jsonb_build_object('text', p_text), p_idempotency_key);
  PERFORM pg_notify('berth_session_events', p_session_id::text || ':' || v_seq::text);
  INSERT INTO turns (session_id, team_id, user_seq) VALUES (p_session_id, p_team_id, v_seq) RETURNING id INTO v_turn;
  PERFORM graphile_worker.add_job('turn:run', json_build_object('sessionId', p_session_id), queue_name => 'session:' || p_session_id::text, max_attempts => 10);
  RETURN QUERY SELECT v_seq, v_turn, v_busy, false;
END;
$$;
