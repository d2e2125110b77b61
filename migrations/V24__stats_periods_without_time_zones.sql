-- The rollups' hours and days computed from the epoch instead of with
-- date_trunc(..., 'UTC'). The first use of a named time zone in a session loads it from
-- the time zone files, about 5 ms: every new pooled connection paid it on its first
-- statement that adds to the rollups, which auto_explain showed as most of the slow
-- finish statements of the workers in the first second of scripts/bench scenario c.
-- Arithmetic on the epoch needs no time zone and gives the same UTC boundaries (epoch
-- seconds have no leap seconds).

-- The start of the UTC period of p_seconds (3600: hour, 86400: day) holding p_at. STABLE,
-- as extract is for a timestamptz, so that the planner inlines it.
CREATE FUNCTION utc_period_start(p_at timestamptz, p_seconds integer) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_timestamp((floor(extract(epoch FROM p_at) / p_seconds) * p_seconds)::float8)
$$;

-- add_to_stats of V18 with those periods.
CREATE OR REPLACE FUNCTION add_to_stats(p_events stats_event[]) RETURNS void
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
    CROSS JOIN LATERAL (VALUES ('hour', utc_period_start(e.started_at, 3600)),
                               ('day', utc_period_start(e.started_at, 86400)))
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
