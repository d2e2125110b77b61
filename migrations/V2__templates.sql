-- Message templates, one per language or brand. Bodies are validated by the application
-- (they compile and render the code) before they are written.
CREATE TABLE templates (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    locale       text,
    body         text NOT NULL CHECK (length(body) BETWEEN 1 AND 1000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
