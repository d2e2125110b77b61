-- One row per send of a verification's code (the first send and each resend).
CREATE TABLE sms_deliveries (
    id                   uuid PRIMARY KEY,
    verification_id      uuid NOT NULL REFERENCES verifications (id) ON DELETE CASCADE,
    send_number          integer NOT NULL CHECK (send_number >= 1),
    -- Copied from the verification so the per-number send limit is one index range scan.
    to_number            text NOT NULL,
    status               text NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'sending', 'retrying', 'sent', 'failed')),
    attempts             integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- While 'sending', the claim belongs to one worker until this moment.
    lease_until          timestamptz,
    next_attempt_at      timestamptz,
    provider_message_id  text,
    last_error           text,
    -- One JSON object per provider attempt: when, outcome, error, next retry.
    attempt_log          jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz,
    -- Set once the broker confirmed the job; rows left NULL are re-published (outbox).
    published_at         timestamptz,
    UNIQUE (verification_id, send_number)
);

CREATE INDEX sms_deliveries_to_number_created_at ON sms_deliveries (to_number, created_at);

-- The outbox relay's scan: only sends whose job was never confirmed.
CREATE INDEX sms_deliveries_unpublished ON sms_deliveries (created_at) WHERE published_at IS NULL;
