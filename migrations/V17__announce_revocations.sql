-- Every revocation is announced, however it is made. Until now only `verify-api keys
-- revoke` announced one, so a key an operator revoked or deleted in psql went on working
-- in every API process that had it cached, for up to the cache's lifetime (30 s). The
-- triggers announce on the same channel, in the same transaction, with the old hash: the
-- API processes drop that key when the change commits, and never for one rolled back.
CREATE FUNCTION announce_api_key_revocation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('verify_api_key_revoked', encode(OLD.key_hash, 'hex'));
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_announce_revocation
    AFTER UPDATE OF revoked_at, key_hash ON api_keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS NULL
          AND (NEW.revoked_at IS NOT NULL OR NEW.key_hash <> OLD.key_hash))
    EXECUTE FUNCTION announce_api_key_revocation();

CREATE TRIGGER api_keys_announce_deletion
    AFTER DELETE ON api_keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS NULL)
    EXECUTE FUNCTION announce_api_key_revocation();
