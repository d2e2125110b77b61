-- Abuse controls: the rules (cached by every API process), the allow list, blocks, the
-- rules' counters, and what each verification's request said about its end user.

-- One row per rule. The id names what the rule judges (`number_type.premium_rate`,
-- `country.default`, `country.NG`); the API parses ids, modes and params into typed rules
-- and refuses anything else, so these checks only guard against hand-written SQL.
CREATE TABLE abuse_rules (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z_]+\.[A-Za-z0-9_]+$'),
    kind        text NOT NULL CONSTRAINT abuse_rules_kind CHECK (kind IN ('number_type', 'country')),
    mode        text NOT NULL CHECK (mode IN ('enforce', 'shadow', 'off')),
    params      jsonb NOT NULL CHECK (jsonb_typeof(params) = 'object'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The defaults: number types that cost the sender more than a mobile message, or reach no
-- person, are refused; VoIP is allowed (set its action to block or monitor to change that);
-- every country is allowed, so a fresh install works anywhere.
INSERT INTO abuse_rules (id, kind, mode, params) VALUES
    ('number_type.premium_rate', 'number_type', 'enforce', '{"action": "block"}'),
    ('number_type.shared_cost',  'number_type', 'enforce', '{"action": "block"}'),
    ('number_type.toll_free',    'number_type', 'enforce', '{"action": "block"}'),
    ('number_type.pager',        'number_type', 'enforce', '{"action": "block"}'),
    ('number_type.voicemail',    'number_type', 'enforce', '{"action": "block"}'),
    ('number_type.uan',          'number_type', 'enforce', '{"action": "block"}'),
    ('number_type.voip',         'number_type', 'enforce', '{"action": "allow"}'),
    ('country.default',          'country',     'enforce', '{"action": "allow"}');

-- Every statement that changes the rules bumps this version in its own transaction, so a
-- process that reads a new version and then the rules sees at least that change. API
-- processes poll it (one cheap read a second); the notification lets a listener react
-- at once.
CREATE TABLE abuse_rules_version (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint NOT NULL
);
INSERT INTO abuse_rules_version (version) VALUES (1);

CREATE FUNCTION bump_abuse_rules_version() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    new_version bigint;
BEGIN
    UPDATE abuse_rules_version SET version = version + 1 RETURNING version INTO new_version;
    PERFORM pg_notify('verify_abuse_rules', new_version::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER abuse_rules_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON abuse_rules
    FOR EACH STATEMENT EXECUTE FUNCTION bump_abuse_rules_version();

-- Numbers, number prefixes and API keys that the velocity and conversion rules leave
-- alone (QA numbers, known-good traffic). Number types and countries still apply.
CREATE TABLE abuse_allow (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('number', 'prefix', 'api_key')),
    value       text NOT NULL CHECK (
                    CASE kind
                        WHEN 'api_key' THEN value ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                        WHEN 'number' THEN value ~ '^\+[1-9][0-9]{7,14}$'
                        ELSE value ~ '^\+[1-9][0-9]{0,14}$'
                    END),
    note        text NOT NULL DEFAULT '' CHECK (length(note) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, value)
);

-- Sends refused to a scope (a prefix, a country, …) until a time, with the counts that
-- tripped the block. Written by the rules that watch counters; lifting one deletes it.
CREATE TABLE abuse_blocks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope       text NOT NULL CHECK (scope IN ('number', 'prefix', 'country', 'client_ip',
                                                'network', 'client_id', 'api_key', 'global')),
    key         text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    rule_id     text NOT NULL,
    reason      text NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    until       timestamptz NOT NULL,
    counts      jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(counts) = 'object'),
    CHECK (until > since)
);

-- "Is this key blocked now?" and the list of active blocks.
CREATE INDEX abuse_blocks_scope_key_until ON abuse_blocks (scope, key, until);

-- How often each rule matched, by outcome, since the rule's first match: totals that only
-- grow, for metrics. API processes add their counts every refresh, not per request.
CREATE TABLE abuse_rule_counts (
    rule_id     text NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('block', 'shadow_block', 'monitor')),
    count       bigint NOT NULL CHECK (count >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_id, outcome)
);

-- What the start request said about its end user, and what the rules made of it. Adding
-- nullable columns without a default rewrites nothing.
ALTER TABLE verifications
    ADD COLUMN client_ip inet,
    ADD COLUMN client_id text CHECK (client_id ~ '^[!-~]{1,128}$'),
    ADD COLUMN risk jsonb CHECK (jsonb_typeof(risk) = 'object');
