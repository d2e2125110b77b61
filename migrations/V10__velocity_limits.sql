-- Velocity limits: at most so many sends per scope (a number, a client address, its
-- network, a client id, a number prefix, a country, an API key, everything) per window,
-- judged in the statement that records the sends, so they cost no extra round trip.
-- Also: the allow list is loaded with the rules (its changes bump their version), and
-- resends are judged like starts.

ALTER TABLE abuse_rules DROP CONSTRAINT abuse_rules_kind;
ALTER TABLE abuse_rules ADD CONSTRAINT abuse_rules_kind
    CHECK (kind IN ('number_type', 'country', 'velocity'));
-- Why the rule exists and what its figures mean, for people reading the rules.
ALTER TABLE abuse_rules ADD COLUMN reason text NOT NULL DEFAULT '' CHECK (length(reason) <= 300);

-- The defaults. Per number, client, network, client id and prefix: what practitioners
-- find normal traffic never reaches (10 codes a day to one number; 10 an hour from one
-- address or one session; 30 from one network; 20 an hour to one 10,000-number range).
-- Per country, API key and in total: cost caps, to be set for the volume expected.
INSERT INTO abuse_rules (id, kind, mode, params, reason) VALUES
    ('velocity.number', 'velocity', 'enforce',
     '{"scope": "number", "window_secs": 86400, "limit": 10, "action": "block"}',
     'At most 10 codes to one number in 24 hours (beside the send limit of 5 in 10 minutes).'),
    ('velocity.client_ip', 'velocity', 'enforce',
     '{"scope": "client_ip", "window_secs": 3600, "limit": 10, "action": "block"}',
     'At most 10 codes an hour for one end-user IP address (client_ip).'),
    ('velocity.network', 'velocity', 'enforce',
     '{"scope": "network", "window_secs": 3600, "limit": 30, "action": "block"}',
     'At most 30 codes an hour for one network: the /24 of an IPv4 client_ip, the /64 of an IPv6 one.'),
    ('velocity.client_id', 'velocity', 'enforce',
     '{"scope": "client_id", "window_secs": 3600, "limit": 10, "action": "block"}',
     'At most 10 codes an hour for one client_id (session, device or account).'),
    ('velocity.prefix', 'velocity', 'enforce',
     '{"scope": "prefix", "window_secs": 3600, "limit": 20, "action": "block"}',
     'At most 20 codes an hour to one prefix (the number without its last 4 digits): pumping walks a range.'),
    ('velocity.country', 'velocity', 'enforce',
     '{"scope": "country", "window_secs": 3600, "limit": 10000, "action": "block"}',
     'Cost cap: at most 10,000 codes an hour to one country. Set it for the volume you expect.'),
    ('velocity.api_key', 'velocity', 'enforce',
     '{"scope": "api_key", "window_secs": 86400, "limit": 100000, "action": "block"}',
     'Cost cap: at most 100,000 codes a day per API key. Set it for the volume you expect.'),
    ('velocity.global', 'velocity', 'enforce',
     '{"scope": "global", "window_secs": 86400, "limit": 1000000, "action": "block"}',
     'Cost cap: at most 1,000,000 codes a day in total. Set it for the volume you expect.');

-- The allow list is loaded with the rules, so its changes move the same version and are
-- announced the same way.
CREATE TRIGGER abuse_allow_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON abuse_allow
    FOR EACH STATEMENT EXECUTE FUNCTION bump_abuse_rules_version();

-- One row per send, under the keys of the low-volume scopes that have a rule in force
-- (NULL where none has, or the request did not say). The number is counted from
-- sms_deliveries. Only ever inserted and, past the longest window, deleted: one narrow
-- row and a partial index entry per key, nothing on sms_deliveries, whose rows are
-- updated as they move.
CREATE TABLE abuse_sends (
    created_at  timestamptz NOT NULL DEFAULT now(),
    prefix      text,
    client_ip   text,
    network     text,
    client_id   text
);
CREATE INDEX abuse_sends_prefix ON abuse_sends (prefix, created_at) WHERE prefix IS NOT NULL;
CREATE INDEX abuse_sends_client_ip ON abuse_sends (client_ip, created_at)
    WHERE client_ip IS NOT NULL;
CREATE INDEX abuse_sends_network ON abuse_sends (network, created_at) WHERE network IS NOT NULL;
CREATE INDEX abuse_sends_client_id ON abuse_sends (client_id, created_at)
    WHERE client_id IS NOT NULL;
-- Rows arrive in time order: a block range index finds the old ones for almost nothing.
CREATE INDEX abuse_sends_created_at ON abuse_sends USING brin (created_at);

-- Sends per rule, key and time bucket, for the high-volume scopes (country, API key,
-- global): one upsert per batch and key instead of one row per send. A bucket is a
-- twelfth of the rule's window. Each session adds to its own shard (its backend pid
-- modulo 4), so concurrent batches from several API processes rarely wait for each
-- other's row lock, which is held until their commit.
CREATE TABLE abuse_counters (
    rule_id  text NOT NULL,
    key      text NOT NULL,
    bucket   timestamptz NOT NULL,
    shard    smallint NOT NULL,
    sends    bigint NOT NULL CHECK (sends >= 0),
    PRIMARY KEY (rule_id, key, bucket, shard)
) WITH (fillfactor = 70);

-- Judges a batch of sends by the velocity rules, in order, and records those it lets
-- through. Runs in the caller's transaction, after the numbers' locks are taken.
--
-- `p_active` holds one element per request: whether it is judged (it will create a send
-- unless refused here). The checks are one per request and counter, in request order:
-- `p_check_ords` the request's position, `p_check_counters` the counter's. A counter is a
-- rule applied to one key: its rule id, scope, key, window, limit, bucket width (NULL for
-- the scopes counted one row per send), whether exceeding it refuses the request, and the
-- risk entry it adds when exceeded without refusing (`detail` holds what was counted; the
-- figures are appended).
--
-- A request is refused when one of its refusing counters would exceed its limit with it:
-- sends already recorded in the window, plus the sends of this batch let through before
-- it, plus itself. Low-volume counters read at most `limit` recent sends by index, newest
-- first; the one that must leave the window before another is allowed gives the wait.
--
-- Out: per request, the 1-based position among its checks of the first refusing one
-- (`refused`), the longest wait of its refusing ones (`waits`), its checks' range in
-- `counted` (`check_from`, `check_to`) and the risk entries it gains (`hits`); per check,
-- the figure counted with the request (`counted`, NULL when it was not judged).
--
-- Counts see committed sends only, so concurrent batches may together exceed a limit by
-- what they let through meanwhile; the number scope is exact, since the numbers' locks
-- are held.
CREATE FUNCTION judge_velocity(
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
LANGUAGE plpgsql VOLATILE AS $$
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

    -- In key order, so two batches adding to the same rows wait instead of deadlocking.
    INSERT INTO abuse_counters AS t (rule_id, key, bucket, shard, sends)
    SELECT p_rules[g.c], p_keys[g.c],
           to_timestamp(floor(extract(epoch FROM now()) / p_bucket_secs[g.c])
                        * p_bucket_secs[g.c]),
           (pg_backend_pid() % 4)::smallint, used[g.c]
    FROM generate_series(1, m) AS g (c)
    WHERE p_bucket_secs[g.c] IS NOT NULL AND used[g.c] > 0
    ORDER BY 1, 2
    ON CONFLICT (rule_id, key, bucket, shard) DO UPDATE SET sends = t.sends + EXCLUDED.sends;
END
$$;

-- A verification's risk with the entries of velocity rules exceeded without refusing
-- added, and its decision raised to match (the strongest of shadow_block, monitor,
-- allow, as `Decision` orders them).
CREATE FUNCTION with_velocity_hits(p_risk jsonb, p_hits jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_hits IS NULL OR p_risk IS NULL THEN p_risk
           ELSE jsonb_set(
                    jsonb_set(p_risk, '{rules}', coalesce(p_risk -> 'rules', '[]'::jsonb) || p_hits),
                    '{decision}',
                    to_jsonb(CASE
                        WHEN p_risk ->> 'decision' = 'shadow_block'
                             OR p_hits @> '[{"outcome": "shadow_block"}]' THEN 'shadow_block'
                        WHEN p_risk ->> 'decision' = 'monitor'
                             OR p_hits @> '[{"outcome": "monitor"}]' THEN 'monitor'
                        ELSE p_risk ->> 'decision'
                    END))
           END
$$;

DROP FUNCTION start_verifications(uuid[], text[], bigint[], text[], text[], jsonb[], smallint[],
                                  bytea[], integer[], float8[], uuid[], inet[], text[], jsonb[],
                                  bytea[], text[], bytea[], float8, bigint);

-- Starting verifications in batches: one call, one statement, one commit for many
-- requests, idempotent ones included. Runs in the caller's transaction (its own, implicit
-- one when called alone).
--
-- The arrays hold one element per request, in the same order; the three key arrays are
-- NULL where a request has no idempotency key, the client arrays where the request did
-- not say. The velocity checks and counters are as `judge_velocity` takes them. Returns
-- one row per request, in that order, with its 1-based position `ord`, the figures its
-- velocity checks counted (`velocity_counted`, when they were judged) and exactly one of:
-- - `retry_after_secs`: the number is over its send limit; nothing was created;
-- - `velocity_refused` (the position of the refusing check among the request's) and
--   `velocity_retry_after_secs`: a velocity limit refuses it; nothing was created;
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
    p_max_sends bigint,
    p_check_ords integer[],
    p_check_counters integer[],
    p_counter_rules text[],
    p_counter_scopes text[],
    p_counter_keys text[],
    p_counter_window_secs float8[],
    p_counter_limits bigint[],
    p_counter_bucket_secs float8[],
    p_counter_refuses boolean[],
    p_counter_hits jsonb[]
) RETURNS TABLE (
    ord bigint,
    retry_after_secs float8,
    velocity_refused integer,
    velocity_retry_after_secs float8,
    velocity_counted bigint[],
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
    -- Per request, by position: whether it creates a verification (unless over a limit),
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
    -- The velocity verdicts, as `judge_velocity` gives them.
    v_refused integer[];
    v_waits float8[];
    v_from integer[];
    v_to integer[];
    v_hits jsonb[];
    v_counted bigint[];
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

    -- After the numbers' locks, so the number scope counts every committed send.
    SELECT j.refused, j.waits, j.check_from, j.check_to, j.hits, j.counted
    INTO v_refused, v_waits, v_from, v_to, v_hits, v_counted
    FROM judge_velocity(
        ARRAY(SELECT c.creating AND c.wait IS NULL
              FROM unnest(creating, limit_waits) WITH ORDINALITY AS c (creating, wait, ord)
              ORDER BY c.ord),
        p_check_ords, p_check_counters, p_counter_rules, p_counter_scopes, p_counter_keys,
        p_counter_window_secs, p_counter_limits, p_counter_bucket_secs, p_counter_refuses,
        p_counter_hits) AS j;

    IF any_same_as THEN
        FOR i IN 1 .. n LOOP
            CONTINUE WHEN same_as[i] IS NULL;
            IF limit_waits[same_as[i]] IS NOT NULL THEN
                limit_waits[i] := limit_waits[same_as[i]];
            ELSIF v_refused[same_as[i]] IS NOT NULL THEN
                v_refused[i] := v_refused[same_as[i]];
                v_waits[i] := v_waits[same_as[i]];
            ELSE
                replay_ids[i] := p_ids[same_as[i]];
            END IF;
        END LOOP;
    END IF;

    -- The key must not outlive a request that created nothing.
    IF true = ANY (key_taken) THEN
        DELETE FROM idempotency_keys h
        USING unnest(p_key_scopes, p_keys, key_taken, limit_waits, v_refused)
              AS r (scope, key, taken, wait, refused)
        WHERE r.taken AND (r.wait IS NOT NULL OR r.refused IS NOT NULL)
          AND h.scope = r.scope AND h.key = r.key;
    END IF;

    RETURN QUERY
    WITH input AS (
        SELECT *
        FROM unnest(p_ids, p_tos, p_template_ids, p_locales, p_senders, p_variables,
                    p_code_lengths, p_code_nonces, p_max_checks, p_ttl_secs, p_delivery_ids,
                    p_client_ips, p_client_ids, p_risks, creating, limit_waits,
                    v_refused, v_waits, v_hits, v_from, v_to)
             WITH ORDINALITY
             AS i (id, to_number, template_id, locale, sender, variables, code_length,
                   code_nonce, max_checks, ttl_secs, delivery_id, client_ip, client_id, risk,
                   creating, wait, refused, velocity_wait, hits, check_from, check_to, ord)
    ), accepted AS (
        -- Of a number's new verifications, the last is its live one.
        SELECT i.*, i.ord = max(i.ord) OVER (PARTITION BY i.to_number) AS live
        FROM input i
        WHERE i.creating AND i.wait IS NULL AND i.refused IS NULL
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
               now() + make_interval(secs => a.ttl_secs), a.client_ip, a.client_id,
               with_velocity_hits(a.risk, a.hits)
        FROM accepted a
        RETURNING new_verification.id, new_verification AS record
    ), d AS (
        INSERT INTO sms_deliveries AS new_delivery (id, verification_id, send_number, to_number)
        SELECT a.delivery_id, a.id, 1, a.to_number FROM accepted a
        RETURNING new_delivery.id, new_delivery AS record
    )
    SELECT i.ord, i.wait, i.refused, i.velocity_wait,
           v_counted[i.check_from : i.check_to],
           key_held_by_other_body[i.ord::integer], replay_ids[i.ord::integer],
           replay_responses[i.ord::integer], v.record, d.record
    FROM input i
    LEFT JOIN v ON v.id = i.id
    LEFT JOIN d ON d.id = i.delivery_id
    ORDER BY i.ord;
END
$$;

DROP FUNCTION resend_verification(uuid, uuid, float8, float8, bigint);

-- Another send of an open verification's code, under the minimum interval between sends
-- of one verification, the per-number send limit and the velocity limits (checks as
-- `judge_velocity` takes them, all of request 1). Returns no row for an unknown
-- verification, else one row: its status and whether it is unexpired, the wait the
-- interval asks for (`too_soon_secs`, positive when too soon), the limit's wait
-- (`retry_after_secs`), the velocity verdict (`velocity_refused`, its wait, the figures
-- counted) and, when all allow it, the new send (`delivery`). Velocity entries exceeded
-- without refusing join the verification's risk. The check counter is untouched:
-- resending never buys more guesses.
CREATE FUNCTION resend_verification(
    p_id uuid,
    p_delivery_id uuid,
    p_min_interval_secs float8,
    p_window_secs float8,
    p_max_sends bigint,
    p_check_ords integer[],
    p_check_counters integer[],
    p_counter_rules text[],
    p_counter_scopes text[],
    p_counter_keys text[],
    p_counter_window_secs float8[],
    p_counter_limits bigint[],
    p_counter_bucket_secs float8[],
    p_counter_refuses boolean[],
    p_counter_hits jsonb[]
) RETURNS TABLE (
    status text,
    live boolean,
    too_soon_secs float8,
    retry_after_secs float8,
    velocity_refused integer,
    velocity_retry_after_secs float8,
    velocity_counted bigint[],
    delivery sms_deliveries
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    recipient text;
    limit_wait float8;
    target record;
    v_refused integer;
    v_wait float8;
    v_hits jsonb;
    v_counted bigint[];
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
                            NULL::integer, NULL::float8, NULL::bigint[], NULL::sms_deliveries;
        RETURN;
    END IF;
    SELECT j.refused[1], j.waits[1], j.hits[1], j.counted
    INTO v_refused, v_wait, v_hits, v_counted
    FROM judge_velocity(ARRAY[true], p_check_ords, p_check_counters, p_counter_rules,
                        p_counter_scopes, p_counter_keys, p_counter_window_secs,
                        p_counter_limits, p_counter_bucket_secs, p_counter_refuses,
                        p_counter_hits) AS j;
    IF v_refused IS NOT NULL THEN
        RETURN QUERY SELECT target.status, target.live, target.too_soon_secs, limit_wait,
                            v_refused, v_wait, v_counted, NULL::sms_deliveries;
        RETURN;
    END IF;
    IF v_hits IS NOT NULL THEN
        UPDATE verifications v SET risk = with_velocity_hits(v.risk, v_hits)
        WHERE v.id = p_id;
    END IF;
    RETURN QUERY
    WITH d AS (
        INSERT INTO sms_deliveries AS new_delivery (id, verification_id, send_number, to_number)
        VALUES (p_delivery_id, p_id, coalesce(target.last_send_number, 0) + 1, recipient)
        RETURNING new_delivery AS record
    )
    SELECT target.status, target.live, target.too_soon_secs, limit_wait, NULL::integer,
           NULL::float8, v_counted, d.record FROM d;
END
$$;
