-- Concurrent batches no longer wait for each other's counter rows. V10 spread the
-- high-volume counters (country, API key, global) over four shards by backend pid, so two
-- batches in flight at once still met on one shard about a time in four, and the second
-- then waited for the first's commit: sampled during scenario g of scripts/bench, an
-- eighth of the start statement's time went to such row-lock waits. Each batch now adds
-- to the lowest shard no open transaction holds, chosen with a transaction-level
-- advisory lock (the pair form, whose keys never meet the one-key locks on numbers).
-- The rest of `judge_velocity` is as V10 wrote it.
CREATE OR REPLACE FUNCTION judge_velocity(
    p_active boolean[],
    p_check_ords integer[],
    p_check_counters integer[],
    p_rules text[],
    p_scopes text[],
    p_keys text[],
    p_window_secs float8[],
    p_limits bigint[],
    p_bucket_secs float8[],
    p_refuses boolean[],
    p_hits jsonb[],
    OUT refused integer[],
    OUT waits float8[],
    OUT check_from integer[],
    OUT check_to integer[],
    OUT hits jsonb[],
    OUT counted bigint[]
)
LANGUAGE plpgsql VOLATILE
-- As V13 set it: the generic plans cost less to run than planning every call.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    n constant integer := coalesce(cardinality(p_active), 0);
    m constant integer := coalesce(cardinality(p_rules), 0);
    p constant integer := coalesce(cardinality(p_check_ords), 0);
    -- Per counter: sends recorded in its window (low-volume ones: at most the limit), the
    -- oldest counted bucket, where its recent send times start in `times` (less one), and
    -- the sends of this batch let through so far.
    stored bigint[];
    oldest timestamptz[];
    offsets integer[] := array_fill(0, ARRAY[greatest(m, 1)]);
    used bigint[] := array_fill(0::bigint, ARRAY[greatest(m, 1)]);
    -- The low-volume counters' recent send times, newest first, one counter after another.
    times timestamptz[];
    first_check integer;
    j integer := 1;
    k integer;
    figure bigint;
    room bigint;
    wait float8;
    shard smallint := 0;
BEGIN
    refused := array_fill(NULL::integer, ARRAY[n]);
    waits := array_fill(NULL::float8, ARRAY[n]);
    check_from := array_fill(NULL::integer, ARRAY[n]);
    check_to := array_fill(NULL::integer, ARRAY[n]);
    hits := array_fill(NULL::jsonb, ARRAY[n]);
    counted := array_fill(NULL::bigint, ARRAY[p]);
    IF p = 0 THEN
        RETURN;
    END IF;

    -- One index range scan per counter, of its scope's index, newest first and capped.
    WITH low_volume AS MATERIALIZED (
        SELECT c.*
        FROM unnest(p_scopes, p_keys, p_window_secs, p_limits, p_bucket_secs) WITH ORDINALITY
             AS c (scope, key, window_secs, lim, bucket_secs, k)
        WHERE c.bucket_secs IS NULL
    ), recent AS MATERIALIZED (
        SELECT c.k, r.at
        FROM low_volume c
        CROSS JOIN LATERAL (
            SELECT s.created_at AS at FROM sms_deliveries s
            WHERE s.to_number = c.key AND s.created_at > now() - make_interval(secs => c.window_secs)
            ORDER BY s.created_at DESC LIMIT c.lim
        ) r
        WHERE c.scope = 'number'
        UNION ALL
        SELECT c.k, r.at
        FROM low_volume c
        CROSS JOIN LATERAL (
            SELECT s.created_at AS at FROM abuse_sends s
            WHERE s.prefix = c.key AND s.created_at > now() - make_interval(secs => c.window_secs)
            ORDER BY s.created_at DESC LIMIT c.lim
        ) r
        WHERE c.scope = 'prefix'
        UNION ALL
        SELECT c.k, r.at
        FROM low_volume c
        CROSS JOIN LATERAL (
            SELECT s.created_at AS at FROM abuse_sends s
            WHERE s.client_ip = c.key AND s.created_at > now() - make_interval(secs => c.window_secs)
            ORDER BY s.created_at DESC LIMIT c.lim
        ) r
        WHERE c.scope = 'client_ip'
        UNION ALL
        SELECT c.k, r.at
        FROM low_volume c
        CROSS JOIN LATERAL (
            SELECT s.created_at AS at FROM abuse_sends s
            WHERE s.network = c.key AND s.created_at > now() - make_interval(secs => c.window_secs)
            ORDER BY s.created_at DESC LIMIT c.lim
        ) r
        WHERE c.scope = 'network'
        UNION ALL
        SELECT c.k, r.at
        FROM low_volume c
        CROSS JOIN LATERAL (
            SELECT s.created_at AS at FROM abuse_sends s
            WHERE s.client_id = c.key AND s.created_at > now() - make_interval(secs => c.window_secs)
            ORDER BY s.created_at DESC LIMIT c.lim
        ) r
        WHERE c.scope = 'client_id'
    ), per_counter AS (
        SELECT r.k, count(*) AS sends FROM recent r GROUP BY r.k
    )
    SELECT (SELECT array_agg(r.at ORDER BY r.k, r.at DESC) FROM recent r),
           (SELECT array_agg(coalesce(pc.sends, 0) ORDER BY g.k)
            FROM generate_series(1, m) AS g (k) LEFT JOIN per_counter pc ON pc.k = g.k)
    INTO times, stored;

    SELECT array_agg(CASE WHEN c.bucket_secs IS NULL THEN stored[c.k] ELSE coalesce(b.sends, 0) END
                     ORDER BY c.k),
           array_agg(b.oldest ORDER BY c.k)
    INTO stored, oldest
    FROM unnest(p_rules, p_keys, p_window_secs, p_bucket_secs) WITH ORDINALITY
         AS c (rule_id, key, window_secs, bucket_secs, k)
    LEFT JOIN LATERAL (
        SELECT sum(t.sends)::bigint AS sends, min(t.bucket) AS oldest
        FROM abuse_counters t
        WHERE c.bucket_secs IS NOT NULL AND t.rule_id = c.rule_id AND t.key = c.key
          AND t.bucket > now() - make_interval(secs => c.window_secs)
    ) b ON true;

    FOR c IN 2 .. m LOOP
        offsets[c] := offsets[c - 1]
            + CASE WHEN p_bucket_secs[c - 1] IS NULL THEN stored[c - 1]::integer ELSE 0 END;
    END LOOP;

    FOR i IN 1 .. n LOOP
        first_check := j;
        WHILE j <= p AND p_check_ords[j] = i LOOP
            j := j + 1;
        END LOOP;
        CONTINUE WHEN j = first_check OR NOT p_active[i];
        check_from[i] := first_check;
        check_to[i] := j - 1;
        FOR q IN first_check .. j - 1 LOOP
            k := p_check_counters[q];
            figure := stored[k] + used[k] + 1;
            counted[q] := figure;
            CONTINUE WHEN figure <= p_limits[k] OR NOT p_refuses[k];
            IF p_bucket_secs[k] IS NOT NULL THEN
                -- Counters drop a whole bucket at a time: the oldest one is next.
                wait := extract(epoch FROM coalesce(oldest[k], now())
                                           + make_interval(secs => p_window_secs[k]) - now());
            ELSE
                -- Room for this send needs the stored ones down to `room`; this batch's
                -- own sends leave last.
                room := p_limits[k] - 1 - used[k];
                wait := CASE WHEN room < 0 THEN p_window_secs[k]
                             ELSE extract(epoch FROM times[offsets[k] + room + 1]
                                                    + make_interval(secs => p_window_secs[k])
                                                    - now()) END;
            END IF;
            refused[i] := coalesce(refused[i], q - first_check + 1);
            waits[i] := greatest(waits[i], wait);
        END LOOP;
        CONTINUE WHEN refused[i] IS NOT NULL;
        FOR q IN first_check .. j - 1 LOOP
            k := p_check_counters[q];
            used[k] := used[k] + 1;
            IF counted[q] > p_limits[k] THEN
                hits[i] := coalesce(hits[i], '[]'::jsonb) || (p_hits[k] || jsonb_build_object(
                    'detail', format('%s: %s%s sends in the last %s s, limit %s',
                                     p_hits[k] ->> 'detail',
                                     CASE WHEN p_bucket_secs[k] IS NULL
                                               AND stored[k] >= p_limits[k]
                                          THEN 'at least ' ELSE '' END,
                                     counted[q], p_window_secs[k], p_limits[k])));
            END IF;
        END LOOP;
    END LOOP;

    -- What the rules will count of the sends let through.
    INSERT INTO abuse_sends (prefix, client_ip, network, client_id)
    SELECT max(kc.key) FILTER (WHERE kc.scope = 'prefix'),
           max(kc.key) FILTER (WHERE kc.scope = 'client_ip'),
           max(kc.key) FILTER (WHERE kc.scope = 'network'),
           max(kc.key) FILTER (WHERE kc.scope = 'client_id')
    FROM unnest(p_check_ords, p_check_counters) AS c (ord, counter)
    -- Joined, not subscripted: finding an element of a text array walks the array.
    JOIN unnest(p_scopes, p_keys) WITH ORDINALITY AS kc (scope, key, counter)
      ON kc.counter = c.counter AND kc.scope IN ('prefix', 'client_ip', 'network', 'client_id')
    JOIN unnest(p_active, refused) WITH ORDINALITY AS r (active, refusal, ord)
      ON r.ord = c.ord AND r.active AND r.refusal IS NULL
    GROUP BY c.ord;

    IF NOT EXISTS (SELECT FROM generate_series(1, m) AS g (c)
                   WHERE p_bucket_secs[g.c] IS NOT NULL AND used[g.c] > 0) THEN
        RETURN;
    END IF;
    -- The first shard no other open transaction adds to: its lock lasts until this
    -- transaction ends, as the counter rows' locks do, so concurrent batches never wait
    -- for each other's commit here.
    WHILE NOT pg_try_advisory_xact_lock(1447383625, shard) LOOP
        shard := shard + 1;
    END LOOP;
    -- In key order, so two batches adding to the same rows wait instead of deadlocking.
    INSERT INTO abuse_counters AS t (rule_id, key, bucket, shard, sends)
    SELECT p_rules[g.c], p_keys[g.c],
           to_timestamp(floor(extract(epoch FROM now()) / p_bucket_secs[g.c])
                        * p_bucket_secs[g.c]),
           shard, used[g.c]
    FROM generate_series(1, m) AS g (c)
    WHERE p_bucket_secs[g.c] IS NOT NULL AND used[g.c] > 0
    ORDER BY 1, 2
    ON CONFLICT (rule_id, key, bucket, shard) DO UPDATE SET sends = t.sends + EXCLUDED.sends;
END
$$;

