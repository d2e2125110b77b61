-- Webhooks to producers (Standard Webhooks): endpoints, one delivery per event and
-- endpoint, and every attempt made to deliver it.

CREATE TABLE webhook_endpoints (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url         text NOT NULL CHECK (url ~ '^https?://'),
    events      text[] NOT NULL CHECK (cardinality(events) > 0),
    -- `whsec_` and the base64 of the signing key. Kept as it is because every delivery
    -- signs with it; the API shows it only in the answer that created it.
    secret      text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    -- Set when the endpoint answered 410 Gone; nothing is delivered to it afterwards.
    disabled_at timestamptz,
    disabled_reason text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One event for one endpoint. Its id is the `webhook-id` of every attempt, so a producer
-- can recognise a retry.
CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY,
    endpoint_id     bigint NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_type      text NOT NULL,
    -- The body as sent: `{type, timestamp, data}`.
    payload         jsonb NOT NULL,
    -- The verification the event is about, for its timeline.
    verification_id uuid,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed', 'abandoned')),
    attempts        integer NOT NULL DEFAULT 0,
    -- The relay publishes a delivery's first job once; until it is confirmed, a lease
    -- keeps two relays from publishing it at the same time.
    published_at    timestamptz,
    relay_lease     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX webhook_deliveries_unpublished ON webhook_deliveries (created_at)
    WHERE published_at IS NULL;
CREATE INDEX webhook_deliveries_verification ON webhook_deliveries (verification_id)
    WHERE verification_id IS NOT NULL;

CREATE TABLE webhook_attempts (
    delivery_id  uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt      integer NOT NULL CHECK (attempt > 0),
    -- NULL when no answer came (refused destination, connection error, timeout).
    status_code  integer,
    error        text,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (delivery_id, attempt)
);

-- The body of an event: `{type, timestamp, data}` (Standard Webhooks).
CREATE FUNCTION webhook_payload(p_type text, p_data jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'type', p_type,
        'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', p_data)
$$;

-- Records `p_type` for every enabled endpoint subscribed to it, in the caller's
-- transaction (the outbox: the event exists exactly when the change that caused it was
-- committed). With no such endpoint it inserts nothing: the cost is one look at a table
-- of a few rows. Returns how many deliveries were recorded. Batch statements insert into
-- webhook_deliveries themselves, with the same join, once for the whole batch.
CREATE FUNCTION emit_webhook_event(p_type text, p_verification uuid, p_data jsonb)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    recorded integer;
BEGIN
    INSERT INTO webhook_deliveries (id, endpoint_id, event_type, payload, verification_id)
    SELECT gen_random_uuid(), e.id, p_type, webhook_payload(p_type, p_data), p_verification
    FROM webhook_endpoints e
    WHERE e.disabled_at IS NULL AND p_type = ANY (e.events);
    GET DIAGNOSTICS recorded = ROW_COUNT;
    RETURN recorded;
END
$$;

-- What a verification event carries. Its fields are passed in, not read back by id: a
-- statement that changed the row in a WITH clause cannot see its own change.
CREATE FUNCTION verification_event_data(
    p_id uuid, p_to text, p_status text, p_checks_made integer, p_max_checks integer,
    p_created_at timestamptz, p_expires_at timestamptz
) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'verification_id', p_id,
        'to', p_to,
        'status', p_status,
        'checks_made', p_checks_made,
        'max_checks', p_max_checks,
        'created_at', p_created_at,
        'expires_at', p_expires_at)
$$;

-- What a send event carries (`send.sent`, `send.failed`, `send.delivered`,
-- `send.undelivered`).
CREATE FUNCTION send_event_data(
    p_id uuid, p_verification uuid, p_to text, p_status text, p_send_number integer,
    p_attempts integer, p_provider_message_id text, p_error text, p_error_code text
) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'send_id', p_id,
        'verification_id', p_verification,
        'to', p_to,
        'status', p_status,
        'send_number', p_send_number,
        'attempts', p_attempts,
        'provider_message_id', p_provider_message_id,
        'error', p_error,
        'error_code', p_error_code)
$$;

-- check_verification of V11, emitting `verification.approved` and
-- `verification.max_attempts_reached` when the check closes the verification.
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
