-- Start requests record what they said about their end user (`client_ip`, `client_id`)
-- and what the abuse rules made of them (`risk`) with the verification, in the same
-- statement as before: `start_verifications` of V7 with three more arrays, nothing else
-- changed.

DROP FUNCTION start_verifications(uuid[], text[], bigint[], text[], text[], jsonb[], smallint[],
                                  bytea[], integer[], float8[], uuid[], bytea[], text[],
                                  bytea[], float8, bigint);

-- Starting verifications in batches: one call, one statement, one commit for many
-- requests, idempotent ones included. Runs in the caller's transaction (its own, implicit
-- one when called alone).
--
-- The arrays hold one element per request, in the same order; the three key arrays are
-- NULL where a request has no idempotency key, the client arrays where the request did
-- not say. Returns one row per request, in that
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
    p_client_ips inet[],
    p_client_ids text[],
    p_risks jsonb[],
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
                    p_client_ips, p_client_ids, p_risks, creating, limit_waits)
             WITH ORDINALITY
             AS i (id, to_number, template_id, locale, sender, variables, code_length,
                   code_nonce, max_checks, ttl_secs, delivery_id, client_ip, client_id, risk,
                   creating, wait, ord)
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
             max_checks, status, expires_at, client_ip, client_id, risk)
        SELECT a.id, a.to_number, a.template_id, a.locale, a.sender, a.variables,
               a.code_length, a.code_nonce, a.max_checks,
               CASE WHEN a.live THEN 'pending' ELSE 'canceled' END,
               now() + make_interval(secs => a.ttl_secs), a.client_ip, a.client_id, a.risk
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
