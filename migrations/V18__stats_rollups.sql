-- Traffic figures (GET /v1/stats) kept as rollups, added to by the statements that cause
-- them, so reading them never scans the verifications.
--
-- A figure counts toward the hour and the UTC day its verification started in (a cohort):
-- a send, a receipt or an approval that comes later adds to its verification's start
-- period, so conversion and delivery rates compare like with like. Each event adds to
-- both an hour row and a day row: a window is read from whole days where it spans them
-- and from hours at its edges, so a 30-day window reads about 30 rows per key instead of
-- 720.
--
-- Writers never wait for each other here: a statement adds to the rows of the lowest
-- shard no other open transaction holds (the advisory lock pair V16 gave the start path's
-- counters; a transaction that holds one already gets it again), so rows are per
-- (period, key, shard) and readers sum the shards.
CREATE TABLE stats_rollups (
    period         text NOT NULL CHECK (period IN ('hour', 'day')),
    period_start   timestamptz NOT NULL,
    -- The number's region as the start request's risk recorded it (`unknown` without).
    country        text NOT NULL,
    -- 0 for the built-in text (no template).
    template_id    bigint NOT NULL,
    -- The provider that accepted the sends counted here; '' on the row of starts and
    -- approvals, which belong to no provider.
    provider       text NOT NULL,
    shard          smallint NOT NULL,
    started        bigint NOT NULL DEFAULT 0,
    sent           bigint NOT NULL DEFAULT 0,
    delivered      bigint NOT NULL DEFAULT 0,
    approved       bigint NOT NULL DEFAULT 0,
    segments       bigint NOT NULL DEFAULT 0,
    -- Histograms of milliseconds from start to the provider accepting the first send, and
    -- from start to approval, in the buckets of `stats_bucket`; NULL while empty.
    start_to_sms   integer[],
    start_to_approval integer[],
    PRIMARY KEY (period, period_start, country, template_id, provider, shard)
);

-- The provider that accepted a send, so its receipt counts toward the same provider.
ALTER TABLE sms_deliveries ADD COLUMN provider text;

-- The histogram bucket of a duration in milliseconds: 0 below 1 ms, then three buckets
-- per doubling (each 2^(1/3), about 1.26 times as wide as the one before: bucket b holds
-- [2^((b-1)/3), 2^(b/3)) ms) up to 2^22 ms (70 minutes), and 67 for anything longer.
-- common/src/domain/stats.rs reads the buckets with the same bounds.
CREATE FUNCTION stats_bucket(p_ms float8) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_ms < 1 THEN 0
                ELSE least(floor(ln(p_ms) / ln(2) * 3)::integer + 1, 67) END
$$;

-- The histogram of some durations in milliseconds (NULLs are not counted); NULL when none.
-- Loops rather than queries: a SQL function whose body holds a query is planned again in
-- every statement that calls it, which cost the write paths milliseconds per batch.
CREATE FUNCTION stats_histogram(p_ms float8[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    histogram integer[];
    ms float8;
    bucket integer;
BEGIN
    FOREACH ms IN ARRAY coalesce(p_ms, '{}') LOOP
        CONTINUE WHEN ms IS NULL;
        histogram := coalesce(histogram, array_fill(0, ARRAY[68], ARRAY[0]));
        bucket := stats_bucket(ms);
        histogram[bucket] := histogram[bucket] + 1;
    END LOOP;
    -- Stored from subscript 1, as arrays built by queries are.
    RETURN histogram[0:67];
END
$$;

-- Two histograms added bucket by bucket.
CREATE FUNCTION stats_histogram_sum(p_a integer[], p_b integer[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    total integer[] := p_a;
BEGIN
    IF p_a IS NULL OR p_b IS NULL THEN
        RETURN coalesce(p_a, p_b);
    END IF;
    FOR i IN 1 .. cardinality(p_b) LOOP
        total[i] := total[i] + p_b[i];
    END LOOP;
    RETURN total;
END
$$;

-- One thing that happened to a verification, as the rollups count it.
CREATE TYPE stats_event AS (
    started_at     timestamptz,
    country        text,
    template_id    bigint,
    provider       text,
    started        integer,
    sent           integer,
    delivered      integer,
    approved       integer,
    segments       integer,
    start_to_sms_ms float8,
    start_to_approval_ms float8
);

-- Adds events to the rollups: one upsert per period and key for the whole array.
CREATE FUNCTION add_to_stats(p_events stats_event[]) RETURNS void
LANGUAGE plpgsql VOLATILE
-- As V13 set it for judge_velocity: one plan serves every call.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    own_shard smallint := 0;
BEGIN
    IF coalesce(cardinality(p_events), 0) = 0 THEN
        RETURN;
    END IF;
    WHILE NOT pg_try_advisory_xact_lock(1447383625, own_shard) LOOP
        own_shard := own_shard + 1;
    END LOOP;
    -- In key order, as the counters are, should two transactions ever share a shard's rows.
    INSERT INTO stats_rollups AS t
        (period, period_start, country, template_id, provider, shard, started, sent,
         delivered, approved, segments, start_to_sms, start_to_approval)
    SELECT p.period, p.period_start, e.country, e.template_id, e.provider, own_shard,
           sum(e.started), sum(e.sent), sum(e.delivered), sum(e.approved), sum(e.segments),
           stats_histogram(array_agg(e.start_to_sms_ms)),
           stats_histogram(array_agg(e.start_to_approval_ms))
    FROM unnest(p_events) AS e
    CROSS JOIN LATERAL (VALUES ('hour', date_trunc('hour', e.started_at, 'UTC')),
                               ('day', date_trunc('day', e.started_at, 'UTC')))
         AS p (period, period_start)
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (period, period_start, country, template_id, provider, shard) DO UPDATE
    SET started = t.started + EXCLUDED.started,
        sent = t.sent + EXCLUDED.sent,
        delivered = t.delivered + EXCLUDED.delivered,
        approved = t.approved + EXCLUDED.approved,
        segments = t.segments + EXCLUDED.segments,
        start_to_sms = stats_histogram_sum(t.start_to_sms, EXCLUDED.start_to_sms),
        start_to_approval = stats_histogram_sum(t.start_to_approval, EXCLUDED.start_to_approval);
END
$$;

-- The rollups of the verifications and sends stored before this migration, one
-- statement. Sends recorded before it named no provider (`unknown`) and no segment count
-- (0); their start-to-SMS time is their first send's sent_at.
INSERT INTO stats_rollups
    (period, period_start, country, template_id, provider, shard, started, sent, delivered,
     approved, segments, start_to_sms, start_to_approval)
SELECT p.period, p.period_start, e.country, e.template_id, e.provider, 0,
       sum(e.started), sum(e.sent), sum(e.delivered), sum(e.approved), 0,
       stats_histogram(array_agg(e.start_to_sms_ms)),
       stats_histogram(array_agg(e.start_to_approval_ms))
FROM (
    SELECT v.created_at, coalesce(v.risk ->> 'country', 'unknown') AS country,
           coalesce(v.template_id, 0) AS template_id, '' AS provider, 1 AS started,
           0 AS sent, 0 AS delivered, (v.status = 'approved')::integer AS approved,
           NULL::float8 AS start_to_sms_ms,
           extract(epoch FROM v.approved_at - v.created_at)::float8 * 1000
             AS start_to_approval_ms
    FROM verifications v
    UNION ALL
    SELECT v.created_at, coalesce(v.risk ->> 'country', 'unknown'),
           coalesce(v.template_id, 0), coalesce(d.provider, 'unknown'), 0, 1,
           (d.status = 'delivered')::integer, 0,
           CASE WHEN d.send_number = 1
                THEN extract(epoch FROM d.sent_at - v.created_at)::float8 * 1000 END,
           NULL
    FROM sms_deliveries d
    JOIN verifications v ON v.id = d.verification_id
    WHERE d.sent_at IS NOT NULL
) AS e (started_at, country, template_id, provider, started, sent, delivered, approved,
        start_to_sms_ms, start_to_approval_ms)
CROSS JOIN LATERAL (VALUES ('hour', date_trunc('hour', e.started_at, 'UTC')),
                           ('day', date_trunc('day', e.started_at, 'UTC')))
     AS p (period, period_start)
GROUP BY 1, 2, 3, 4, 5;
