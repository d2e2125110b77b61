-- The W3C trace of the request that asked for a send, kept with the send, so a job
-- re-published from Postgres by the outbox relay (its first publish failed) stays in its
-- trace as a job published at once does: the worker's claim reads it back.
--
-- 16 bytes and a length byte per send, written by the insert that creates the send; no
-- statement is added. Rows written before this migration have none. The check is
-- NOT VALID so that adding it does not scan the table: every existing row is NULL, and
-- new rows are checked.
ALTER TABLE sms_deliveries
    ADD COLUMN trace_id bytea,
    ADD CONSTRAINT sms_deliveries_trace_id_length
        CHECK (octet_length(trace_id) = 16) NOT VALID;

-- `start_verifications` of V12 with one more array, `p_trace_ids` (one trace id per
-- request, NULL where it has none), written to each new send. Nothing else changes.
DROP FUNCTION start_verifications(uuid[], text[], bigint[], text[], text[], jsonb[], smallint[],
                                  bytea[], integer[], float8[], uuid[], inet[], text[], jsonb[],
                                  bytea[], text[], bytea[], float8, bigint, integer[],
                                  integer[], text[], text[], text[], float8[], bigint[],
                                  float8[], boolean[], jsonb[]);

CREATE FUNCTION start_verifications(
    p_ids uuid[],
    p_tos text[],
    p_template_ids bigint[],
    p_locales text[],
    p_senders text[],
    p_variables jsonb[],
    p_code_lengths smallint[],
    p_code_nonces bytea[],
    p_max_checks integer[],
    p_ttl_secs float8[],
    p_delivery_ids uuid[],
    p_client_ips inet[],
    p_client_ids text[],
    p_risks jsonb[],
    p_key_scopes bytea[],
    p_keys text[],
    p_request_hashes bytea[],
    p_window_secs float8,
    p_max_sends bigint,
    p_check_ords integer[],
    p_check_counters integer[],
    p_counter_rules text[],
    p_counter_scopes text[],
    p_counter_keys text[],
    p_counter_window_secs float8[],
    p_counter_limits bigint[],
    p_counter_bucket_secs float8[],
    p_counter_refuses boolean[],
    p_counter_hits jsonb[],
    p_trace_ids bytea[]
) RETURNS TABLE (
    ord bigint,
    retry_after_secs float8,
    velocity_refused integer,
    velocity_retry_after_secs float8,
    velocity_counted bigint[],
    key_reused boolean,
    replay_of uuid,
    replay_response jsonb,
    verification verifications,
    delivery sms_deliveries
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    n constant integer := coalesce(cardinality(p_ids), 0);
    -- Per request, by position: whether it creates a verification (unless over a limit),
    -- whether it wrote its key, whether its key is held with another body, the
    -- verification it replays and that one's stored answer, the earlier request of this
    -- batch with the same key and body whose outcome it shares, and the limit's wait.
    creating boolean[] := array_fill(true, ARRAY[n]);
    key_taken boolean[] := array_fill(false, ARRAY[n]);
    key_held_by_other_body boolean[] := array_fill(false, ARRAY[n]);
    replay_ids uuid[] := array_fill(NULL::uuid, ARRAY[n]);
    replay_responses jsonb[] := array_fill(NULL::jsonb, ARRAY[n]);
    same_as integer[] := array_fill(NULL::integer, ARRAY[n]);
    any_same_as boolean := false;
    limit_waits float8[];
    -- The velocity verdicts, as `judge_velocity` gives them.
    v_refused integer[];
    v_waits float8[];
    v_from integer[];
    v_to integer[];
    v_hits jsonb[];
    v_counted bigint[];
    requested record;
    held record;
    first_with_key integer;
    -- The numbers the send limit judges (NULL where a request creates nothing), and the
    -- numbers of the requests that create a verification.
    limited_tos text[];
    accepted_tos text[];
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;

    IF cardinality(array_remove(p_keys, NULL)) > 0 THEN
        -- In key order, so two batches sharing keys wait for each other instead of
        -- deadlocking.
        FOR requested IN
            SELECT i.ord::integer AS ord, i.scope, i.key, i.request_hash
            FROM unnest(p_key_scopes, p_keys, p_request_hashes) WITH ORDINALITY
                 AS i (scope, key, request_hash, ord)
            WHERE i.key IS NOT NULL
            ORDER BY i.scope, i.key, i.ord
        LOOP
            creating[requested.ord] := false;
            IF first_with_key IS NOT NULL
               AND p_key_scopes[first_with_key] = requested.scope
               AND p_keys[first_with_key] = requested.key THEN
                -- The same key earlier in this batch: answered as if it had come just after.
                IF key_taken[first_with_key]
                   AND requested.request_hash = p_request_hashes[first_with_key] THEN
                    same_as[requested.ord] := first_with_key;
                    any_same_as := true;
                ELSIF key_taken[first_with_key] THEN
                    key_held_by_other_body[requested.ord] := true;
                ELSIF requested.request_hash = held.request_hash THEN
                    replay_ids[requested.ord] := held.verification_id;
                    replay_responses[requested.ord] := held.response;
                ELSE
                    key_held_by_other_body[requested.ord] := true;
                END IF;
                CONTINUE;
            END IF;
            first_with_key := requested.ord;
            -- A key older than 24 hours is taken over. A key held by a transaction in
            -- progress makes this wait for its end.
            INSERT INTO idempotency_keys AS stored (scope, key, request_hash, verification_id)
            VALUES (requested.scope, requested.key, requested.request_hash, p_ids[requested.ord])
            ON CONFLICT (scope, key) DO UPDATE
                SET request_hash = EXCLUDED.request_hash,
                    verification_id = EXCLUDED.verification_id,
                    response = NULL, created_at = now()
                WHERE stored.created_at < now() - interval '24 hours';
            IF FOUND THEN
                key_taken[requested.ord] := true;
                creating[requested.ord] := true;
            ELSE
                -- Held by a committed request. The upsert that found it left it locked
                -- until this transaction ends, so it is still there to read.
                SELECT h.request_hash, h.verification_id, h.response INTO STRICT held
                FROM idempotency_keys h
                WHERE h.scope = requested.scope AND h.key = requested.key;
                IF requested.request_hash = held.request_hash THEN
                    replay_ids[requested.ord] := held.verification_id;
                    replay_responses[requested.ord] := held.response;
                ELSE
                    key_held_by_other_body[requested.ord] := true;
                END IF;
            END IF;
        END LOOP;
    END IF;

    -- Arrays made by a query only when some request creates nothing: every query here is
    -- planned on every call, a plain assignment is not.
    IF array_position(creating, false) IS NULL THEN
        limited_tos := p_tos;
    ELSE
        limited_tos := ARRAY(SELECT CASE WHEN c.creating THEN c.to_number END
                             FROM unnest(p_tos, creating) WITH ORDINALITY
                                  AS c (to_number, creating, ord)
                             ORDER BY c.ord);
    END IF;
    SELECT array_agg(w.retry_after_secs ORDER BY w.ord) INTO limit_waits
    FROM send_limit_waits(limited_tos, p_window_secs, p_max_sends) AS w;

    IF cardinality(p_check_ords) > 0 THEN
        -- After the numbers' locks, so the number scope counts every committed send.
        SELECT j.refused, j.waits, j.check_from, j.check_to, j.hits, j.counted
        INTO v_refused, v_waits, v_from, v_to, v_hits, v_counted
        FROM judge_velocity(
            ARRAY(SELECT c.creating AND c.wait IS NULL
                  FROM unnest(creating, limit_waits) WITH ORDINALITY AS c (creating, wait, ord)
                  ORDER BY c.ord),
            p_check_ords, p_check_counters, p_counter_rules, p_counter_scopes, p_counter_keys,
            p_counter_window_secs, p_counter_limits, p_counter_bucket_secs, p_counter_refuses,
            p_counter_hits) AS j;
    END IF;

    IF any_same_as THEN
        FOR i IN 1 .. n LOOP
            CONTINUE WHEN same_as[i] IS NULL;
            IF limit_waits[same_as[i]] IS NOT NULL THEN
                limit_waits[i] := limit_waits[same_as[i]];
            ELSIF v_refused[same_as[i]] IS NOT NULL THEN
                v_refused[i] := v_refused[same_as[i]];
                v_waits[i] := v_waits[same_as[i]];
            ELSE
                replay_ids[i] := p_ids[same_as[i]];
            END IF;
        END LOOP;
    END IF;

    -- The key must not outlive a request that created nothing.
    IF true = ANY (key_taken) THEN
        DELETE FROM idempotency_keys h
        USING unnest(p_key_scopes, p_keys, key_taken, limit_waits, v_refused)
              AS r (scope, key, taken, wait, refused)
        WHERE r.taken AND (r.wait IS NOT NULL OR r.refused IS NOT NULL)
          AND h.scope = r.scope AND h.key = r.key;
    END IF;

    IF array_position(creating, false) IS NULL AND array_remove(limit_waits, NULL) = '{}'
       AND (v_refused IS NULL OR array_remove(v_refused, NULL) = '{}') THEN
        accepted_tos := p_tos;
    ELSE
        accepted_tos := ARRAY(SELECT a.to_number
                              FROM unnest(p_tos, creating, limit_waits, v_refused)
                                   AS a (to_number, creating, wait, refused)
                              WHERE a.creating AND a.wait IS NULL AND a.refused IS NULL);
    END IF;

    RETURN QUERY
    WITH input AS (
        SELECT *
        FROM unnest(p_ids, p_tos, p_template_ids, p_locales, p_senders, p_variables,
                    p_code_lengths, p_code_nonces, p_max_checks, p_ttl_secs, p_delivery_ids,
                    p_client_ips, p_client_ids, p_risks, creating, limit_waits,
                    v_refused, v_waits, v_hits, v_from, v_to, p_trace_ids)
             WITH ORDINALITY
             AS i (id, to_number, template_id, locale, sender, variables, code_length,
                   code_nonce, max_checks, ttl_secs, delivery_id, client_ip, client_id, risk,
                   creating, wait, refused, velocity_wait, hits, check_from, check_to,
                   trace_id, ord)
    ), accepted AS (
        -- Of a number's new verifications, the last is its live one.
        SELECT i.*, i.ord = max(i.ord) OVER (PARTITION BY i.to_number) AS live
        FROM input i
        WHERE i.creating AND i.wait IS NULL AND i.refused IS NULL
    ), canceled AS (
        -- The rows inserted below are not visible to this statement: only earlier ones
        -- are canceled.
        UPDATE verifications earlier SET status = 'canceled', updated_at = now()
        WHERE earlier.to_number = ANY (accepted_tos)
          AND earlier.status = 'pending' AND earlier.expires_at > now()
    ), v AS (
        INSERT INTO verifications AS new_verification
            (id, to_number, template_id, locale, sender, variables, code_length, code_nonce,
             max_checks, status, expires_at, client_ip, client_id, risk)
        SELECT a.id, a.to_number, a.template_id, a.locale, a.sender, a.variables,
               a.code_length, a.code_nonce, a.max_checks,
               CASE WHEN a.live THEN 'pending' ELSE 'canceled' END,
               now() + make_interval(secs => a.ttl_secs), a.client_ip, a.client_id,
               with_velocity_hits(a.risk, a.hits)
        FROM accepted a
        RETURNING new_verification.id, new_verification AS record
    ), d AS (
        INSERT INTO sms_deliveries AS new_delivery
            (id, verification_id, send_number, to_number, trace_id)
        SELECT a.delivery_id, a.id, 1, a.to_number, a.trace_id FROM accepted a
        RETURNING new_delivery.id, new_delivery AS record
    )
    SELECT i.ord, i.wait, i.refused, i.velocity_wait,
           v_counted[i.check_from : i.check_to],
           key_held_by_other_body[i.ord::integer], replay_ids[i.ord::integer],
           replay_responses[i.ord::integer], v.record, d.record
    FROM input i
    LEFT JOIN v ON v.id = i.id
    LEFT JOIN d ON d.id = i.delivery_id
    ORDER BY i.ord;
END
$$;
