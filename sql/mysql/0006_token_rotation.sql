-- Token rotation (issue 21): the token an application had before its last rotation keeps working
-- until previous_token_expires_at. NULL: no previous token. VARBINARY, as token (0002): compared
-- as exact bytes. One ALTER: re-running it after it committed fails on the duplicate column,
-- which the migration lock and schema_migrations keep from happening.
ALTER TABLE applications
    ADD COLUMN previous_token VARBINARY(64) NULL,
    ADD COLUMN previous_token_expires_at DATETIME(3) NULL,
    ADD UNIQUE KEY applications_previous_token (previous_token)
