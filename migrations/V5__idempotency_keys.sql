-- Idempotency keys of verification requests: the same key and body within 24 hours
-- returns the first request's verification instead of creating another.
CREATE TABLE idempotency_keys (
    -- SHA-256 of the API key that sent the request: keys are per client.
    scope            bytea NOT NULL CHECK (length(scope) = 32),
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- SHA-256 of the route and the canonical JSON body.
    request_hash     bytea NOT NULL CHECK (length(request_hash) = 32),
    -- Deferred: the key row is written first, so concurrent duplicates queue up on it.
    verification_id  uuid NOT NULL REFERENCES verifications (id) ON DELETE CASCADE
                     DEFERRABLE INITIALLY DEFERRED,
    -- The first answer, replayed to duplicates.
    response         jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
