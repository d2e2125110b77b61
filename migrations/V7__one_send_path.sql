-- One rule, one implementation; one write path for starts; one live code per number.
--
-- `send_limit_waits` is the only implementation of the per-number send limit: starts and
-- resends both ask it. `start_verifications` is the only way a verification is created,
-- with or without an idempotency key, and a new verification cancels its number's open
-- ones in the same statement. `resend_verification` adds a send to an open verification
-- (its code unchanged).
--
-- Lock order, the same everywhere so that no two writers wait for each other in a cycle:
-- idempotency keys (in key order), then numbers (advisory locks, in lock-key order), then
-- verification rows. Checks and cancels lock one verification row and nothing else.

-- The relay's claim on a send whose job it is publishing (see `relay_unpublished`): other
-- relays leave the send alone until this is older than their minimum age, so no row stays
-- locked while its job is published.
ALTER TABLE sms_deliveries ADD COLUMN relayed_at timestamptz;

-- The per-number send limit: at most `p_max_sends` sends to one number per window.
--
-- `p_tos` holds one number per send asked for (NULL where nothing is asked). Returns one
-- row per element, in order: its 1-based position `ord` and, for a send over the limit,
-- how long until the window lets it through (NULL: allowed). Sends asked for the same
-- number count in array order.
--
-- Takes each number's lock before counting that number's recent sends, so the count sees
-- every send committed by the lock's earlier holders: concurrent callers cannot both see
-- "4 of 5 used" and both send. Inside a VOLATILE function every statement takes a fresh
-- snapshot, so locking in one statement and counting in the next keeps that order in a
-- single call. The locks last until the caller's transaction ends, so the caller must
-- insert its sends in that transaction.
CREATE FUNCTION send_limit_waits(p_tos text[], p_window_secs float8, p_max_sends bigint)
RETURNS TABLE (ord bigint, retry_after_secs float8)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    -- Every caller takes its locks in the same order (by lock key), so two callers that
    -- share numbers wait for each other instead of deadlocking.
    PERFORM pg_advisory_xact_lock(keys.key)
    FROM (SELECT DISTINCT hashtextextended(t, 0) AS key
          FROM unnest(p_tos) AS t WHERE t IS NOT NULL ORDER BY 1) AS keys;

    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(p_tos) WITH ORDINALITY AS i (to_number, ord)
    ), recent AS (
        SELECT s.to_number, count(*) AS sends, min(s.created_at) AS oldest
        FROM sms_deliveries s
        WHERE s.to_number = ANY (p_tos)
          AND s.created_at > now() - make_interval(secs => p_window_secs)
        GROUP BY s.to_number
    ), ranked AS (
        SELECT i.ord, r.oldest,
               coalesce(r.sends, 0)
                 + row_number() OVER (PARTITION BY i.to_number ORDER BY i.ord) AS nth
        FROM input i LEFT JOIN recent r ON r.to_number = i.to_number
        WHERE i.to_number IS NOT NULL
    )
    SELECT i.ord,
           CASE WHEN r.nth > p_max_sends THEN
               -- A number over its limit only because of this call has no older send.
               extract(epoch FROM coalesce(r.oldest, now())
                                  + make_interval(secs => p_window_secs) - now())::float8
           END
    FROM input i LEFT JOIN ranked r ON r.ord = i.ord
    ORDER BY i.ord;
END
$$;

DROP FUNCTION start_verifications(uuid[], text[], bigint[], text[], text[], jsonb[], smallint[],
                                  bytea[], integer[], float8[], uuid[], float8, bigint);

-- Starting verifications in batches: one call, one statement, one commit for many
-- requests, idempotent ones included. Runs in the caller's transaction (its own, implicit
-- one when called alone).
--
-- The arrays hold one element per request, in the same order; the three key arrays are
-- NULL where a request has no idempotency key. Returns one row per request, in that
-- order, with its 1-based position `ord` and exactly one of:
-- - `retry_after_secs`: the number is over its send limit; nothing was created;
-- - `key_reused`: its key is held by a request with another body; nothing was created;
-- - `replay_of` (and the first answer, `replay_response`, if stored): its key is held by
--   a request with the same body, whose verification this is; nothing was created;
-- - `verification` and `delivery`: the new verification and its first send.
--
-- Idempotency keys are written first, so a concurrent request with the same key waits
-- for this one's commit and then finds the key held (or free again: a request that
-- created nothing gives its key back). A request whose key an earlier one in the same
-- batch holds gets that one's outcome (same body) or `key_reused` (another body).
--
-- One live code per number: a new verification cancels its number's open (pending,
-- unexpired) verifications, and of several new ones for a number in one batch only the
-- last stays pending. Their sends are not touched: a worker that claims one finds its
-- verification canceled and closes it without sending.
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
    p_key_scopes bytea[],
    p_keys text[],
    p_request_hashes bytea[],
    p_window_secs float8,
    p_max_sends bigint
) RETURNS TABLE (
    ord bigint,
    retry_after_secs float8,
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
    -- Per request, by position: whether it creates a verification (unless over the limit),
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
    requested record;
    held record;
    first_with_key integer;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;

    -- In key order, so two batches sharing keys wait for each other instead of deadlocking.
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
        -- A key older than 24 hours is taken over. A key held by a transaction in progress
        -- makes this wait for its end.
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
            -- Held by a committed request. The upsert that found it left it locked until
            -- this transaction ends, so it is still there to read.
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

    SELECT array_agg(w.retry_after_secs ORDER BY w.ord) INTO limit_waits
    FROM send_limit_waits(
        ARRAY(SELECT CASE WHEN c.creating THEN c.to_number END
              FROM unnest(p_tos, creating) WITH ORDINALITY AS c (to_number, creating, ord)
              ORDER BY c.ord),
        p_window_secs, p_max_sends) AS w;

    IF any_same_as THEN
        FOR i IN 1 .. n LOOP
            CONTINUE WHEN same_as[i] IS NULL;
            IF limit_waits[same_as[i]] IS NULL THEN
                replay_ids[i] := p_ids[same_as[i]];
            ELSE
                limit_waits[i] := limit_waits[same_as[i]];
            END IF;
        END LOOP;
    END IF;

    -- The key must not outlive a request that created nothing.
    IF true = ANY (key_taken) THEN
        DELETE FROM idempotency_keys h
        USING unnest(p_key_scopes, p_keys, key_taken, limit_waits) AS r (scope, key, taken, wait)
        WHERE r.taken AND r.wait IS NOT NULL AND h.scope = r.scope AND h.key = r.key;
    END IF;

    RETURN QUERY
    WITH input AS (
        SELECT *
        FROM unnest(p_ids, p_tos, p_template_ids, p_locales, p_senders, p_variables,
                    p_code_lengths, p_code_nonces, p_max_checks, p_ttl_secs, p_delivery_ids,
                    creating, limit_waits)
             WITH ORDINALITY
             AS i (id, to_number, template_id, locale, sender, variables, code_length,
                   code_nonce, max_checks, ttl_secs, delivery_id, creating, wait, ord)
    ), accepted AS (
        -- Of a number's new verifications, the last is its live one.
        SELECT i.*, i.ord = max(i.ord) OVER (PARTITION BY i.to_number) AS live
        FROM input i
        WHERE i.creating AND i.wait IS NULL
    ), canceled AS (
        -- The rows inserted below are not visible to this statement: only earlier ones
        -- are canceled.
        UPDATE verifications earlier SET status = 'canceled', updated_at = now()
        WHERE earlier.to_number IN (SELECT a.to_number FROM accepted a)
          AND earlier.status = 'pending' AND earlier.expires_at > now()
    ), v AS (
        INSERT INTO verifications AS new_verification
            (id, to_number, template_id, locale, sender, variables, code_length, code_nonce,
             max_checks, status, expires_at)
        SELECT a.id, a.to_number, a.template_id, a.locale, a.sender, a.variables,
               a.code_length, a.code_nonce, a.max_checks,
               CASE WHEN a.live THEN 'pending' ELSE 'canceled' END,
               now() + make_interval(secs => a.ttl_secs)
        FROM accepted a
        RETURNING new_verification.id, new_verification AS record
    ), d AS (
        INSERT INTO sms_deliveries AS new_delivery (id, verification_id, send_number, to_number)
        SELECT a.delivery_id, a.id, 1, a.to_number FROM accepted a
        RETURNING new_delivery.id, new_delivery AS record
    )
    SELECT i.ord, i.wait, key_held_by_other_body[i.ord::integer], replay_ids[i.ord::integer],
           replay_responses[i.ord::integer], v.record, d.record
    FROM input i
    LEFT JOIN v ON v.id = i.id
    LEFT JOIN d ON d.id = i.delivery_id
    ORDER BY i.ord;
END
$$;

-- Another send of an open verification's code, under the minimum interval between sends
-- of one verification and the per-number send limit. Returns no row for an unknown
-- verification, else one row: its status and whether it is unexpired, the wait the
-- interval asks for (`too_soon_secs`, positive when too soon), the limit's wait
-- (`retry_after_secs`) and, when all allow it, the new send (`delivery`). The check
-- counter is untouched: resending never buys more guesses.
CREATE FUNCTION resend_verification(
    p_id uuid,
    p_delivery_id uuid,
    p_min_interval_secs float8,
    p_window_secs float8,
    p_max_sends bigint
) RETURNS TABLE (
    status text,
    live boolean,
    too_soon_secs float8,
    retry_after_secs float8,
    delivery sms_deliveries
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    recipient text;
    limit_wait float8;
    target record;
BEGIN
    SELECT v.to_number INTO recipient FROM verifications v WHERE v.id = p_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- The number's lock before the verification's row, in the order starts take them.
    SELECT w.retry_after_secs INTO limit_wait
    FROM send_limit_waits(ARRAY[recipient], p_window_secs, p_max_sends) AS w;
    SELECT v.status, v.expires_at > now() AS live,
           (SELECT max(s.send_number) FROM sms_deliveries s WHERE s.verification_id = v.id)
             AS last_send_number,
           (SELECT extract(epoch FROM max(s.created_at)
                                      + make_interval(secs => p_min_interval_secs) - now())::float8
              FROM sms_deliveries s WHERE s.verification_id = v.id) AS too_soon_secs
    INTO target
    FROM verifications v WHERE v.id = p_id
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF target.status <> 'pending' OR NOT target.live OR target.too_soon_secs > 0
       OR limit_wait IS NOT NULL THEN
        RETURN QUERY SELECT target.status, target.live, target.too_soon_secs, limit_wait,
                            NULL::sms_deliveries;
        RETURN;
    END IF;
    RETURN QUERY
    WITH d AS (
        INSERT INTO sms_deliveries AS new_delivery (id, verification_id, send_number, to_number)
        VALUES (p_delivery_id, p_id, coalesce(target.last_send_number, 0) + 1, recipient)
        RETURNING new_delivery AS record
    )
    SELECT target.status, target.live, target.too_soon_secs, limit_wait, d.record FROM d;
END
$$;
