-- Noticing that verifications expired (`verification.expired`) without scanning the
-- verifications table and without touching the start path.
--
-- A verification's lifetime is exact: `created_at` and `expires_at` come from the same
-- now() of the statement that inserted it. So the verifications of lifetime L expiring
-- in (a, b] are those created in (a - L, b - L], one narrow range of the BRIN index on
-- created_at. A sweep reads that range once per lifetime in use, not the whole span of
-- possible lifetimes (a day where weak codes are allowed), and learns the lifetimes in
-- use by reading each new verification once.

-- One row: how far the sweeps have got. Its row lock is also what keeps two API
-- processes from sweeping at once.
CREATE TABLE expiry_sweeps (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Every verification expiring at or before this moment has been handled.
    swept_until   timestamptz NOT NULL,
    -- Every verification created at or before this moment has had its lifetime learned.
    learned_until timestamptz NOT NULL
);
-- Verifications that expired before this migration get no event. Lifetimes are learned
-- from a day back, the longest lifetime a verification can have.
INSERT INTO expiry_sweeps (swept_until, learned_until) VALUES (now(), now() - interval '1 day');

-- The lifetimes verifications were created with, each with the newest creation time
-- seen. A lifetime is dropped once its newest verification has expired and been swept,
-- so the table holds the lifetimes of the last day at most (a handful in practice: the
-- default and the few a producer asks for).
CREATE TABLE expiry_lifetimes (
    lifetime        interval PRIMARY KEY,
    last_created_at timestamptz NOT NULL
);

-- Summarize each full block range of the created_at index soon after the table grows
-- past it (an autovacuum work item, asked for once per range of 128 pages), instead of
-- at the next VACUUM. A BRIN scan must read every range not yet summarized, whatever it
-- is looking for; without this, each sweep would read every verification created since
-- the last VACUUM, which on a busy table is minutes of them.
ALTER INDEX verifications_created_at_brin SET (autosummarize = on);

-- Sweeps once: finds the pending verifications that expired after the last sweep and
-- at or before `p_settle_secs` ago, records `verification.expired` for each endpoint
-- subscribed to it, and advances the watermark, all in the caller's transaction, so a
-- crash neither emits twice nor skips. Returns the number of each verification found
-- expired; nothing when another process holds the sweep.
--
-- The stored status stays `pending` (it reads as `expired` past expires_at): nothing can
-- change a verification after its expiry (checks, cancels and new starts all require
-- `expires_at > now()`), so the event is final without an UPDATE per verification.
--
-- The settle lag covers statements still in flight: a check whose transaction began
-- before expires_at may commit just after it, and a start's created_at is its
-- transaction's start, a little before it commits.
CREATE FUNCTION sweep_expired_verifications(p_settle_secs float8)
RETURNS SETOF text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    sweep record;
    life interval;
    horizon timestamptz := now() - make_interval(secs => p_settle_secs);
BEGIN
    SELECT s.swept_until, s.learned_until INTO sweep
    FROM expiry_sweeps s
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR horizon <= sweep.swept_until THEN
        RETURN;
    END IF;

    INSERT INTO expiry_lifetimes AS l (lifetime, last_created_at)
    SELECT v.expires_at - v.created_at, max(v.created_at)
    FROM verifications v
    WHERE v.created_at > sweep.learned_until AND v.created_at <= horizon
    GROUP BY 1
    ON CONFLICT (lifetime) DO UPDATE
        SET last_created_at = greatest(l.last_created_at, EXCLUDED.last_created_at);

    -- One query per lifetime, each with its bounds as plain values, so each is a narrow
    -- BRIN range scan; joined to the lifetimes instead, the planner hashes the whole table.
    FOR life IN SELECT l.lifetime FROM expiry_lifetimes l LOOP
        RETURN QUERY
        WITH expired AS (
            SELECT v.id, v.to_number, v.checks_made, v.max_checks, v.created_at, v.expires_at
            FROM verifications v
            WHERE v.created_at > sweep.swept_until - life
              AND v.created_at <= horizon - life
              -- Each verification under its own lifetime only.
              AND v.expires_at - v.created_at = life
              AND v.status = 'pending'
        ), webhooks AS (
            INSERT INTO webhook_deliveries
                (id, endpoint_id, event_type, payload, verification_id)
            SELECT gen_random_uuid(), e.id, 'verification.expired',
                   webhook_payload('verification.expired', verification_event_data(
                       x.id, x.to_number, 'expired', x.checks_made, x.max_checks,
                       x.created_at, x.expires_at)),
                   x.id
            FROM expired x
            JOIN webhook_endpoints e
              ON e.disabled_at IS NULL AND 'verification.expired' = ANY (e.events)
        )
        SELECT x.to_number FROM expired x;
    END LOOP;

    DELETE FROM expiry_lifetimes l WHERE l.last_created_at + l.lifetime <= horizon;
    UPDATE expiry_sweeps SET swept_until = horizon, learned_until = horizon;
END
$$;
