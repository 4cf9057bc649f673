-- Per-application rate limits the admin set (issue 20); the same table as
-- sql/sqlite/0006_rate_limit_overrides.sql.
CREATE TABLE IF NOT EXISTS rate_limit_overrides (
    application_id BIGINT      NOT NULL PRIMARY KEY,
    overrides      TEXT        NOT NULL,
    updated_at     DATETIME(3) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci
