-- The webhook relay publishes and marks its deliveries in one transaction, whose row
-- locks keep other relays off them; the lease that did so before is no longer written.
ALTER TABLE webhook_deliveries DROP COLUMN relay_lease;
