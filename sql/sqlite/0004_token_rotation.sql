-- Token rotation (issue 21): the token an application had before its last rotation keeps working
-- until previous_token_expires_at (UTC, as every time here). NULL: no previous token.
ALTER TABLE applications ADD COLUMN previous_token TEXT;
ALTER TABLE applications ADD COLUMN previous_token_expires_at TEXT;
CREATE UNIQUE INDEX applications_previous_token ON applications (previous_token);
