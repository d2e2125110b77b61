-- Rollup rows folded into shard 0 once their period has closed.
--
-- Writers spread over shards so that they never wait for each other (V18), and a reader
-- sums the shards. Under load that multiplies the rows of every key by the number of
-- concurrent writers, and the report's cost with them; once an hour or a day is over,
-- few writers still add to it (late receipts and approvals), so its shards are folded
-- into one row and the report reads one row per key and period again.

-- Where the shards to fold are, without reading the folded rows.
CREATE INDEX stats_rollups_shards ON stats_rollups (shard) WHERE shard > 0;

-- Moves the rows of one shard whose period ended before p_now into shard 0, adding them
-- to what shard 0 holds; returns how many rows moved, 0 when a writer holds the shard.
-- The shard's advisory lock keeps writers off it meanwhile (they pass on to another
-- shard); shard 0's rows are updated in key order, as the writers update them.
CREATE FUNCTION fold_stats_shard(p_shard smallint, p_now timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    moved bigint;
BEGIN
    IF p_shard < 1 OR NOT pg_try_advisory_xact_lock(1447383625, p_shard) THEN
        RETURN 0;
    END IF;
    WITH taken AS (
        DELETE FROM stats_rollups
        WHERE shard = p_shard
          AND ((period = 'hour' AND period_start < date_trunc('hour', p_now, 'UTC'))
               OR (period = 'day' AND period_start < date_trunc('day', p_now, 'UTC')))
        RETURNING *
    )
    INSERT INTO stats_rollups AS t
        (period, period_start, country, template_id, provider, shard, started, sent,
         delivered, approved, segments, start_to_sms, start_to_approval)
    SELECT period, period_start, country, template_id, provider, 0, started, sent,
           delivered, approved, segments, start_to_sms, start_to_approval
    FROM taken
    ORDER BY period, period_start, country, template_id, provider
    ON CONFLICT (period, period_start, country, template_id, provider, shard) DO UPDATE
    SET started = t.started + EXCLUDED.started,
        sent = t.sent + EXCLUDED.sent,
        delivered = t.delivered + EXCLUDED.delivered,
        approved = t.approved + EXCLUDED.approved,
        segments = t.segments + EXCLUDED.segments,
        start_to_sms = stats_histogram_sum(t.start_to_sms, EXCLUDED.start_to_sms),
        start_to_approval = stats_histogram_sum(t.start_to_approval, EXCLUDED.start_to_approval);
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;
