-- Delivery receipts: a sent message moves on to 'delivered' or 'undelivered' when its
-- provider reports it.

-- The migration holds the table's lock until it commits, including the scan that checks
-- the widened rule and the index build: on a large table, run it at a quiet hour.
ALTER TABLE sms_deliveries DROP CONSTRAINT sms_deliveries_status_check;
ALTER TABLE sms_deliveries ADD CONSTRAINT sms_deliveries_status_check
    CHECK (status IN ('queued', 'sending', 'retrying', 'sent', 'failed',
                      'delivered', 'undelivered'));

-- When the final receipt was recorded, and the provider's error code when it said
-- 'undelivered'.
ALTER TABLE sms_deliveries
    ADD COLUMN receipt_at timestamptz,
    ADD COLUMN receipt_error_code text;

-- A receipt names the provider's message id only. The worker writes the id together with
-- 'sent', so only sent sends have one.
CREATE INDEX sms_deliveries_provider_message_id ON sms_deliveries (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- Receipts whose message id no send has yet: the provider can report a delivery before
-- the worker has recorded the id it was given. Each is applied once the id is recorded,
-- and deleted after a day if it never is. The first final receipt for an id wins, as it
-- would have on the send itself.
CREATE TABLE held_receipts (
    provider_message_id  text PRIMARY KEY,
    status               text NOT NULL CHECK (status IN ('delivered', 'undelivered')),
    error_code           text,
    received_at          timestamptz NOT NULL DEFAULT now()
);
