-- Blocks that rules write: the guess budget (wrong codes per number, across all of its
-- verifications) locks a number, and the conversion breaker blocks a prefix or a country
-- whose codes are almost never used. API processes keep the blocks in force in memory and
-- reload them when this table announces a change.

ALTER TABLE abuse_rules DROP CONSTRAINT abuse_rules_kind;
ALTER TABLE abuse_rules ADD CONSTRAINT abuse_rules_kind
    CHECK (kind IN ('number_type', 'country', 'velocity', 'guess', 'conversion'));

-- The defaults. Guesses: 10 wrong codes per number per hour, across every verification
-- and resend, lock the number for an hour. Conversion: a prefix (the E.164 number minus
-- its last four digits) or a country with at least 50 judged verifications in the last
-- hour, fewer than 20 % of them approved, gets no codes for 12 hours, renewed while the
-- pattern lasts; verifications younger than two minutes are not judged yet.
INSERT INTO abuse_rules (id, kind, mode, params, reason) VALUES
    ('guess.number', 'guess', 'enforce',
     '{"window_secs": 3600, "limit": 10, "lock_secs": 3600}',
     '10 wrong codes for one number in an hour, across its verifications and resends, lock it for an hour.'),
    ('conversion.prefix', 'conversion', 'enforce',
     '{"min_sends": 50, "min_conversion_pct": 20, "window_secs": 3600, "cooldown_secs": 43200, "grace_secs": 120}',
     'A prefix with 50 or more codes in an hour, under 20 % of them used, gets none for 12 hours.'),
    ('conversion.country', 'conversion', 'enforce',
     '{"min_sends": 50, "min_conversion_pct": 20, "window_secs": 3600, "cooldown_secs": 43200, "grace_secs": 120}',
     'A country with 50 or more codes in an hour, under 20 % of them used, gets none for 12 hours.');

-- A block written by a rule in shadow mode refuses nothing; it shows what the rule would
-- have done. Lifting a block keeps its row (with `lifted_at`), so the breaker can count
-- only what happened after the last lift and not trip again on the same sends.
ALTER TABLE abuse_blocks
    ADD COLUMN shadow boolean NOT NULL DEFAULT false,
    ADD COLUMN lifted_at timestamptz;

-- At most one open (not lifted) block per scope, key and rule: a rule that trips again
-- renews its block instead of adding another.
CREATE UNIQUE INDEX abuse_blocks_open ON abuse_blocks (scope, key, rule_id)
    WHERE lifted_at IS NULL;
DROP INDEX abuse_blocks_scope_key_until;

-- Every change to the blocks is announced once per transaction (identical notifications
-- of one transaction are folded into one by Postgres), and not at all by a statement that
-- changed no row.
CREATE FUNCTION announce_abuse_blocks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('verify_abuse_blocks', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER abuse_blocks_changed
    AFTER INSERT OR UPDATE OR DELETE ON abuse_blocks
    FOR EACH ROW EXECUTE FUNCTION announce_abuse_blocks();
CREATE TRIGGER abuse_blocks_truncated
    AFTER TRUNCATE ON abuse_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION announce_abuse_blocks();

-- One row per wrong code (or any code while the number is locked), for the guess budget.
-- Rows older than a day are deleted by the API's housekeeping; no window is longer.
CREATE TABLE abuse_guesses (
    to_number  text NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX abuse_guesses_to_number_failed_at ON abuse_guesses (to_number, failed_at);

-- The conversion breaker reads the verifications of its window by creation time. A BRIN
-- index is a few pages for millions of rows and costs inserts almost nothing, because rows
-- are appended in about the order of their creation time; a B-tree would add a page write
-- to every start.
CREATE INDEX verifications_created_at_brin ON verifications USING brin (created_at);

-- Checking a code: counts the check and applies its result atomically, as the UPDATE of
-- V3 did, and applies the guess budget in the same statement.
--
-- `p_budget_mode` is the guess rule's mode (`enforce`, `shadow`, `off`). While the number
-- has an open lock of that rule and the mode is enforce, no code approves (the right one
-- fails like a wrong one). Unless the mode is off, every check that fails is recorded,
-- and when the number's failures since the later of the window's start and its last
-- lifted lock reach `p_limit`, the lock is written (or renewed) until `p_lock_secs` from
-- now, marked shadow in shadow mode.
--
-- Returns no row when no check was counted (unknown id, or the verification is no longer
-- open), else one: the verification's status and counts after the check, `lock` (`block`
-- when an enforced lock refused the code, `shadow_block` when a shadow one would have,
-- else NULL) and whether a lock was written (`locked_now`).
CREATE FUNCTION check_verification(
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
    -- NULL when the number has no open lock.
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
    RETURNING v.status, v.checks_made, v.max_checks INTO counted;
    IF NOT FOUND THEN
        RETURN;
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
