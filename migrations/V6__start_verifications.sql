-- Starting verifications in batches: one call, one statement, one commit for many requests.
--
-- The per-number send limit needs each number's lock to be granted before its recent sends
-- are counted, so that the count sees every send committed by the lock's earlier holders.
-- Inside a VOLATILE function every statement takes a fresh snapshot, so taking the locks in
-- one statement and counting and inserting in the next keeps that order within a single
-- call, which runs in the caller's transaction (its own, implicit one when called alone);
-- the locks are released when it commits.
--
-- The arrays hold one element per request, in the same order. Returns one row per request,
-- in that order: `ord` (its 1-based position), then either the limit's wait in seconds
-- (with NULL records) or the new verification and its first send (with a NULL wait). Two
-- requests for one number in the same batch count against the limit in array order.
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
    p_window_secs float8,
    p_max_sends bigint
) RETURNS TABLE (
    ord bigint,
    retry_after_secs float8,
    verification verifications,
    delivery sms_deliveries
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    -- Every caller takes its locks in the same order (by lock key), so two batches that
    -- share numbers wait for each other instead of deadlocking.
    PERFORM pg_advisory_xact_lock(keys.key)
    FROM (SELECT DISTINCT hashtextextended(t, 0) AS key FROM unnest(p_tos) AS t ORDER BY 1) AS keys;

    RETURN QUERY
    WITH input AS (
        SELECT *
        FROM unnest(p_ids, p_tos, p_template_ids, p_locales, p_senders, p_variables,
                    p_code_lengths, p_code_nonces, p_max_checks, p_ttl_secs, p_delivery_ids)
             WITH ORDINALITY
             AS i (id, to_number, template_id, locale, sender, variables, code_length,
                   code_nonce, max_checks, ttl_secs, delivery_id, ord)
    ), recent AS (
        SELECT s.to_number, count(*) AS sends, min(s.created_at) AS oldest
        FROM sms_deliveries s
        WHERE s.to_number = ANY (p_tos)
          AND s.created_at > now() - make_interval(secs => p_window_secs)
        GROUP BY s.to_number
    ), ranked AS (
        SELECT i.*, r.oldest,
               coalesce(r.sends, 0)
                 + row_number() OVER (PARTITION BY i.to_number ORDER BY i.ord) AS nth
        FROM input i LEFT JOIN recent r ON r.to_number = i.to_number
    ), v AS (
        INSERT INTO verifications AS new_verification
            (id, to_number, template_id, locale, sender, variables, code_length, code_nonce,
             max_checks, expires_at)
        SELECT id, to_number, template_id, locale, sender, variables, code_length, code_nonce,
               max_checks, now() + make_interval(secs => ttl_secs)
        FROM ranked WHERE nth <= p_max_sends
        RETURNING new_verification.id, new_verification AS record
    ), d AS (
        INSERT INTO sms_deliveries AS new_delivery (id, verification_id, send_number, to_number)
        SELECT delivery_id, id, 1, to_number FROM ranked WHERE nth <= p_max_sends
        RETURNING new_delivery.id, new_delivery AS record
    )
    SELECT r.ord,
           CASE WHEN r.nth > p_max_sends THEN
               -- A number over its limit only because of this batch has no older send.
               extract(epoch FROM coalesce(r.oldest, now())
                                  + make_interval(secs => p_window_secs) - now())::float8
           END,
           v.record,
           d.record
    FROM ranked r
    LEFT JOIN v ON v.id = r.id
    LEFT JOIN d ON d.id = r.delivery_id
    ORDER BY r.ord;
END
$$;
