-- Per-application rate limits the admin set (issue 20): the override fields as a JSON object
-- (chatd/limits/policies.py OVERRIDE_FIELDS); an application without a row has every default.
CREATE TABLE rate_limit_overrides (
    application_id INTEGER PRIMARY KEY REFERENCES applications (id),
    overrides      TEXT    NOT NULL,
    updated_at     REAL    NOT NULL
);
