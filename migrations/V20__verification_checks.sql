-- Each counted check of a code, for the verification's timeline
-- (`GET /v1/verifications/{id}/events`). Checks refused before they are counted (the
-- verification had already expired or closed) change nothing and are not recorded.

-- Written by check_verification in the statement that counts the check: one more row
-- insert (and its primary-key entry) per counted check, at most max_checks per
-- verification. `check_number` is the verification's checks_made after this check; the
-- guarded UPDATE counts one check at a time, so it is unique.
CREATE TABLE verification_checks (
    verification_id uuid NOT NULL REFERENCES verifications (id) ON DELETE CASCADE,
    check_number    integer NOT NULL CHECK (check_number > 0),
    -- `approved`; `wrong_code`; `locked`: the number's guess lock refused the code, right
    -- or wrong (counted as a failed check).
    outcome         text NOT NULL CHECK (outcome IN ('approved', 'wrong_code', 'locked')),
    checked_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (verification_id, check_number)
);

-- check_verification of V15, recording each counted check in verification_checks.
CREATE OR REPLACE FUNCTION check_verification(
    p_id uuid,
    p_matched boolean,
    p_budget_mode text,
    p_window_secs float8,
    p_limit bigint,
    p_lock_secs float8
) RETURNS TABLE (
    status text,
    checks_made integer,
    max_checks integer,
    lock text,
    locked_now boolean
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    recipient text;
    lock_is_shadow boolean;
    refused boolean;
    lock_outcome text;
    counted record;
    last_lift timestamptz;
    failures bigint;
BEGIN
    SELECT v.to_number INTO recipient FROM verifications v WHERE v.id = p_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_budget_mode <> 'off' THEN
        SELECT b.shadow INTO lock_is_shadow
        FROM abuse_blocks b
        WHERE b.scope = 'number' AND b.key = recipient AND b.rule_id = 'guess.number'
          AND b.lifted_at IS NULL AND b.until > now();
    END IF;
    refused := p_budget_mode = 'enforce' AND coalesce(NOT lock_is_shadow, false);
    lock_outcome := CASE WHEN lock_is_shadow IS NULL THEN NULL
                         WHEN refused THEN 'block' ELSE 'shadow_block' END;

    UPDATE verifications v
    SET checks_made = v.checks_made + 1,
        status = CASE WHEN p_matched AND NOT refused THEN 'approved'
                      WHEN v.checks_made + 1 >= v.max_checks THEN 'max_attempts_reached'
                      ELSE v.status END,
        approved_at = CASE WHEN p_matched AND NOT refused THEN now() ELSE v.approved_at END,
        updated_at = now()
    WHERE v.id = p_id AND v.status = 'pending' AND v.expires_at > now()
          AND v.checks_made < v.max_checks
    RETURNING v.status, v.checks_made, v.max_checks, v.created_at, v.expires_at INTO counted;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    INSERT INTO verification_checks (verification_id, check_number, outcome)
    VALUES (p_id, counted.checks_made,
            CASE WHEN counted.status = 'approved' THEN 'approved'
                 WHEN refused THEN 'locked'
                 ELSE 'wrong_code' END);

    IF counted.status IN ('approved', 'max_attempts_reached') THEN
        PERFORM emit_webhook_event(
            'verification.' || counted.status, p_id,
            verification_event_data(p_id, recipient, counted.status, counted.checks_made,
                                    counted.max_checks, counted.created_at,
                                    counted.expires_at));
    END IF;

    IF p_budget_mode <> 'off' AND counted.status <> 'approved' THEN
        INSERT INTO abuse_guesses (to_number) VALUES (recipient);
        SELECT max(b.lifted_at) INTO last_lift
        FROM abuse_blocks b
        WHERE b.scope = 'number' AND b.key = recipient AND b.rule_id = 'guess.number'
          AND b.lifted_at IS NOT NULL;
        SELECT count(*) INTO failures
        FROM abuse_guesses g
        WHERE g.to_number = recipient
          AND g.failed_at > greatest(now() - make_interval(secs => p_window_secs),
                                     coalesce(last_lift, '-infinity'));
        IF failures >= p_limit THEN
            INSERT INTO abuse_blocks AS b (scope, key, rule_id, reason, until, counts, shadow)
            VALUES ('number', recipient, 'guess.number',
                    format('%s wrong codes in %s seconds (the budget is %s)',
                           failures, p_window_secs, p_limit),
                    now() + make_interval(secs => p_lock_secs),
                    jsonb_build_object('failed_checks', failures,
                                       'window_secs', p_window_secs, 'limit', p_limit),
                    p_budget_mode = 'shadow')
            ON CONFLICT (scope, key, rule_id) WHERE lifted_at IS NULL DO UPDATE
                SET since = CASE WHEN b.until <= now() THEN now() ELSE b.since END,
                    until = EXCLUDED.until,
                    reason = EXCLUDED.reason,
                    counts = EXCLUDED.counts,
                    shadow = EXCLUDED.shadow;
            RETURN QUERY SELECT counted.status, counted.checks_made, counted.max_checks,
                                lock_outcome, true;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT counted.status, counted.checks_made, counted.max_checks,
                        lock_outcome, false;
END
$$;
