-- One row per verification. The code itself is never stored: it is derived from the
-- server secret and code_nonce when needed.
CREATE TABLE verifications (
    id            uuid PRIMARY KEY,
    to_number     text NOT NULL CHECK (to_number ~ '^\+[1-9][0-9]{7,14}$'),
    -- No foreign key on purpose: deleting a template must not rewrite history, and a send
    -- whose template disappeared fails with a clear reason instead.
    template_id   bigint,
    locale        text,
    sender        text,
    variables     jsonb NOT NULL DEFAULT '{}'::jsonb,
    code_length   smallint NOT NULL CHECK (code_length BETWEEN 4 AND 10),
    code_nonce    bytea NOT NULL CHECK (length(code_nonce) = 32),
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'approved', 'canceled', 'max_attempts_reached')),
    checks_made   integer NOT NULL DEFAULT 0 CHECK (checks_made >= 0),
    max_checks    integer NOT NULL CHECK (max_checks > 0),
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    approved_at   timestamptz
);

-- "The newest verification of this number" for checks by number.
CREATE INDEX verifications_to_number_created_at ON verifications (to_number, created_at DESC);
